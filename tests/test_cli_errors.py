"""Command-line failures: one line and an exit code by default, the traceback with --debug."""

import errno
from pathlib import Path

import pytest

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

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)  # how atomic writes fill their file
    code, _, err = run_cli(
        ["predict", synthetic_folder / "platelet", "--run", fitted_ci_run, "--out", out], capsys
    )
    assert code == 1 and err.count("\n") == 1
    assert f"error: No space left on device ({out})" in err
    assert "Files written before are intact" in err
    assert out.read_text() == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
