"""Command-line failures: one line and an exit code by default, the traceback with --debug."""

import errno
import shutil

import pytest

import ensemble.serve.prediction_files
from ensemble import __version__
from tests.conftest import run_cli


def test_bad_value_is_one_line_and_debug_shows_the_traceback(synthetic_folder, tmp_path, capsys):
    args = ["split", synthetic_folder, "--out", tmp_path / "s.json", "--fractions", "1,1,1,1"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(Exception, match="split fraction train=1.0 must be in"):
        run_cli(["--debug", *args], capsys)


def test_predict_on_an_empty_folder(fitted_ci_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["predict", tmp_path / "empty", "--run", fitted_ci_run], capsys)
    assert code == 2 and f"no files found under {tmp_path / 'empty'}" in err


def test_disk_full_while_writing_predictions(
    fitted_ci_run, synthetic_folder, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "predictions.csv"
    out.write_text("previous predictions\n")

    def full_disk(rows, stream, columns):
        stream.write(",".join(columns) + "\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    # The disk fills up while the rows stream into the temporary file.
    monkeypatch.setattr(ensemble.serve.prediction_files, "write_csv", full_disk)
    code, _, err = run_cli(
        ["predict", synthetic_folder / "platelet", "--run", fitted_ci_run, "--out", out], capsys
    )
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith(f"error: No space left on device ({out})")
    assert "Files written before are intact" in err
    assert out.read_text() == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["report", "--run", "nowhere", "--split", "nope"],
            "error: --split must be one of train, val, blend, test. Received: 'nope'.",
        ),
        (
            ["report", "--run", "nowhere", "--split", "tset"],
            "Received: 'tset'. Did you mean 'test'?",
        ),
        (["demo", "--per-class", "3"], "error: --per-class must be at least 12. Received: '3'"),
        (["audit", "{data}", "--limit", "-1"], "error: --limit must be at least 0. Received: '-1'"),
        (
            ["train-members", "--pipeline", "ci", "--data", "{data}", "--strategy", "fast"],
            "error: --strategy must be one of default, mirrored. Received: 'fast'.",
        ),
        (
            ["train-members", "--pipeline", "nope", "--data", "{data}"],
            "error: pipeline not found: give a pipeline TOML file or the name of a built-in "
            "pipeline ['an2dl', 'ci', 'demo', 'pbc-cpu', 'pbc-cpu-ablation', "
            "'pbc-cpu-students']. Received: pipeline='nope'",
        ),
        (
            ["train-members", "--pipeline", "ci", "--data", "{data}", "--only", "tiny-a,nope"],
            "error: --members 'nope' is not a member of ci. Members: "
            "['tiny-a', 'tiny-b', 'tiny-ovr']",
        ),
        (
            ["split", "{data}", "--fractions", "0.5,x,0,0"],
            "error: --fractions must be 4 numbers (train,val,blend,test). Received: '0.5,x,0,0'",
        ),
        (
            ["split", "{data}", "--fractions", "0.5,0.5"],
            "error: --fractions must be 4 numbers (train,val,blend,test). Received: '0.5,0.5'",
        ),
    ],
)
def test_bad_option_values(args, message, synthetic_folder, capsys):
    args = [str(arg).format(data=synthetic_folder) for arg in args]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert message in err


def test_version(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out == f"blood-ensemble {__version__}\n"


@pytest.mark.parametrize(
    ("only", "trained"),
    [
        (["--only", "tiny-a,tiny-ovr"], ["tiny-a", "tiny-ovr"]),
        (["--only", "tiny-b", "--only", "tiny-a"], ["tiny-a", "tiny-b"]),
        (["--only", " tiny-b , tiny-ovr,", "--only", "tiny-b"], ["tiny-b", "tiny-ovr"]),
    ],
)
def test_only_takes_a_list_or_repeats(
    only, trained, fitted_ci_run, synthetic_folder, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)  # finished members: reported, not retrained
    args = ["train-members", "--pipeline", "ci", "--data", synthetic_folder, "--run", run, *only]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines()[:-1]] == trained
