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


# --- output formats ------------------------------------------------------------------------------


def test_json_rows_are_in_natural_types(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    import json

    out = tmp_path / "p.json"
    folder = synthetic_folder / "platelet"
    code, _, err = run_cli(
        ["predict", folder, "--run", fitted_ci_run, "--json", "--out", out], capsys
    )
    assert code == 0, err
    document = json.loads(out.read_text())
    row = document["predictions"][0]
    classes, members = document["header"]["classes"], document["header"]["members"]
    assert isinstance(row["prediction_set"], list) and set(row["prediction_set"]) <= set(classes)
    assert list(row["probabilities"]) == classes
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert list(row["votes"]) == members
    assert not any(key.startswith(("proba_", "vote_")) for key in row)


def test_out_dash_streams_to_stdout(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    import json

    folder = synthetic_folder / "platelet"
    base = ["predict", folder, "--run", fitted_ci_run, "--out", "-"]
    code, out, err = run_cli([*base, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["header"]["n_predicted"] == 12 and "→ standard output" in err
    code, out, err = run_cli(base, capsys)
    assert code == 0 and out.startswith("path,prediction,confidence,") and out.count("\n") == 13


def test_html_alone_writes_only_the_page(
    fitted_ci_run, synthetic_folder, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    folder = synthetic_folder / "platelet"
    page = tmp_path / "review.html"
    code, _, err = run_cli(["predict", folder, "--run", fitted_ci_run, "--html", page], capsys)
    assert code == 0, err
    assert page.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["review.html"]


def test_every_csv_number_has_the_same_precision(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    import csv
    import re

    out = tmp_path / "p.csv"
    folder = synthetic_folder / "platelet"
    code, _, err = run_cli(["predict", folder, "--run", fitted_ci_run, "--out", out], capsys)
    assert code == 0, err
    row = next(csv.DictReader(out.open()))
    numbers = [value for key, value in row.items() if re.fullmatch(r"-?\d+\.\d+", value or "")]
    assert numbers and {len(value.split(".")[1]) for value in numbers} == {6}


# --- the Python API ----------------------------------------------------------------------------


def test_api_refuses_empty_input_in_words(fitted_ci_run):
    from ensemble import Ensemble
    from ensemble.core.errors import DataError

    ens = Ensemble.load(fitted_ci_run)
    with pytest.raises(DataError, match="no images given .*did a folder or a glob match nothing"):
        ens.predict([])


def test_api_warns_as_the_command_line_does(fitted_ci_run, synthetic_folder):
    from ensemble import Ensemble

    paths = sorted((synthetic_folder / "platelet").iterdir())[:2]
    with pytest.warns(UserWarning, match="abstain follows member agreement and confidence"):
        Ensemble.load(fitted_ci_run).decide(paths)


def test_api_is_as_quiet_as_the_command_line(fitted_ci_run, synthetic_folder):
    import subprocess
    import sys

    from tests.test_console import tensorflow_lines, user_environment

    path = sorted((synthetic_folder / "platelet").iterdir())[0]
    code = (
        "from ensemble import Ensemble\n"
        f"print(Ensemble.load({str(fitted_ci_run)!r}).predict([{str(path)!r}])[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=user_environment()
    )
    assert result.returncode == 0, result.stderr
    assert tensorflow_lines(result.stderr) == [] and "cuInit" not in result.stderr


# --- wording -------------------------------------------------------------------------------------


def test_one_image_is_not_images():
    from ensemble.report.markdown import verdict

    text = verdict("hard", "soft", {"first_only": 1, "second_only": 0, "p_value": 1.0})
    assert "(1 image right only by hard, 0 only by soft" in text


def test_sizes_read_as_words():
    from ensemble.report.build import _sizes

    assert _sizes({32}) == "32 px" and _sizes({64, 32}) == "32 and 64 px"


# --- one convention ------------------------------------------------------------------------------


def test_labelled_data_is_data_everywhere(synthetic_folder, tmp_path, capsys):
    for args in (["audit", "--data", synthetic_folder], ["audit", synthetic_folder]):
        code, _, err = run_cli([*args, "--limit", "0"], capsys)
        assert code == 0, err
    out = tmp_path / "split.json"
    code, _, err = run_cli(["split", "--data", synthetic_folder, "--out", out], capsys)
    assert code == 0 and out.is_file(), err
    code, _, err = run_cli(["audit", "--data", synthetic_folder, tmp_path], capsys)
    assert code == 2 and "give the data once" in err


def test_report_writes_into_the_run_unless_told(fitted_ci_run, tmp_path, capsys, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["report", "--run", run, "--no-shifted", "--no-zoomed"], capsys)
    assert code == 0, err
    assert (run / "report" / "report.md").is_file() and not (tmp_path / "results").exists()


def test_members_chooses_members_in_train_members_too(synthetic_folder, tmp_path, capsys):
    args = ["train-members", "--pipeline", "ci", "--data", synthetic_folder]
    code, _, err = run_cli([*args, "--run", tmp_path / "run", "--members", "tiny_a"], capsys)
    assert code == 2
    assert "error: --members 'tiny_a' is not a member of ci. Did you mean 'tiny-a'?" in err


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("predict", "Usage: ensemble predict [OPTIONS] {FOLDER}"),
        ("audit", "Usage: ensemble audit [OPTIONS] [DATA]"),
        ("train-members", "Usage: ensemble train-members [OPTIONS]"),
    ],
)
def test_usage_lines_name_their_arguments_plainly(command, usage, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and out.startswith(usage + "\n")
    assert "Over 60 lines" not in out  # the developers' note stays in the docstring
