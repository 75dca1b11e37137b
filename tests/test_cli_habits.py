"""The command line behaves the way its users' habits expect (help, global options, messages)."""

import pytest

from ensemble.cli import global_flags_first
from tests.conftest import run_cli


def test_ensemble_alone_prints_the_help_and_succeeds(capsys):
    code, out, err = run_cli([], capsys)
    assert code == 0 and not err
    assert out.startswith("Usage: ensemble [OPTIONS] COMMAND [ARGS]...")
    assert "\n  predict " in out  # one command per line, not squashed
    assert "error:" not in out


def test_global_options_are_accepted_after_the_subcommand(tmp_path, capsys):
    code, _, err = run_cli(["predict", tmp_path / "none", "--run", tmp_path, "--verbose"], capsys)
    assert code == 2 and "error: folder not found" in err


def test_debug_after_the_subcommand_shows_the_exception(tmp_path, capsys):
    from ensemble.core.errors import ConfigError

    with pytest.raises(ConfigError, match="folder not found"):
        run_cli(["predict", tmp_path / "none", "--run", tmp_path, "--debug"], capsys)


def test_global_flags_move_in_front_but_not_past_a_double_dash():
    assert global_flags_first(["predict", "d", "--verbose", "--", "--debug"]) == [
        "--verbose",
        "predict",
        "d",
        "--",
        "--debug",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--refer", "vote"],
            "error: --refer must be one of conformal, selective, agreement. Received: 'vote'.",
        ),
        (
            ["--refer", "conformall"],
            "Received: 'conformall'. Did you mean 'conformal'?",
        ),
        (["--alpha", "abc"], "error: --alpha must be a number. Received: 'abc'"),
        (["--batch-size", "x"], "error: --batch-size must be a whole number. Received: 'x'"),
        (["--batch-size", "0"], "error: --batch-size must be >= 1. Received: 0"),
    ],
)
def test_bad_option_values_are_one_line_in_our_words(args, message, tmp_path, capsys):
    code, _, err = run_cli(["predict", tmp_path, "--run", tmp_path, *args], capsys)
    assert code == 2
    assert message in err and "Value error" not in err and "Input should" not in err
    assert err.count("\n") == 1


def test_shift_copies_below_zero(tmp_path, capsys):
    code, _, err = run_cli(["fit-stacker", "--run", tmp_path, "--shift-copies", "-1"], capsys)
    assert code == 2
    assert "error: --shift-copies must be at least 0. Received: '-1'" in err


def test_an_unknown_combiner_gets_a_close_match(fitted_ci_run, synthetic_folder, capsys):
    folder = synthetic_folder / "platelet"
    code, _, err = run_cli(
        ["predict", folder, "--run", fitted_ci_run, "--combiner", "stak"], capsys
    )
    assert code == 2
    assert "error: unknown combiner 'stak'. Did you mean 'stack'? Choose from the combiners" in err
    assert "('ovr' = the first one-vs-rest member)" in err
