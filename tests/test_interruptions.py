"""Commands SIGKILLed at the worst moment (just before an artifact is renamed into place).

No partial artifact or output is ever read later: the previous file stays, or a later command
refuses the inconsistent set with a message, and running the command again finishes the job.
"""

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train_members import ci_command

pytestmark = pytest.mark.large  # a dozen `ensemble` subprocesses, two of them training

HELPER = Path(__file__).parent / "helpers" / "kill_at_write.py"


def killed_at(file_name: str, args: list, count: int = 1) -> None:
    """Run ``ensemble ARGS``, SIGKILLed just before its ``count``-th rename onto ``file_name``."""
    command = [sys.executable, str(HELPER), file_name, str(count), "--", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def ensemble(args: list) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ensemble", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_predict_killed_mid_write_leaves_no_partial_output(
    fitted_ci_run, synthetic_folder, tmp_path
):
    images = tmp_path / "images"
    shutil.copytree(synthetic_folder / "eosinophil", images)
    out = tmp_path / "out" / "predictions.csv"
    args = ["predict", images, "--run", fitted_ci_run, "--out", out]
    killed_at("predictions.csv", args)
    assert not out.exists()
    assert ensemble(args).returncode == 0
    complete = out.read_text()
    assert len(list(csv.DictReader(complete.splitlines()))) == 12
    killed_at("predictions.csv", [*args, "--tta"])
    assert out.read_text() == complete  # the previous output, whole
    assert visible_files(out.parent) == ["predictions.csv"]


def test_fit_stacker_killed_mid_write_is_never_half_read(fitted_ci_run, synthetic_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    predict = ["predict", synthetic_folder, "--run", run, "--out", tmp_path / "p.csv"]
    assert ensemble(predict).returncode == 0
    before = (tmp_path / "p.csv").read_text()

    # Killed before its first artifact is in place: the previous combiners are untouched.
    killed_at("temperatures.json", ["fit-stacker", "--run", run, "--seed", "1"])
    assert ensemble(predict).returncode == 0
    assert (tmp_path / "p.csv").read_text() == before

    # Killed after the new stacker is in place but before selection.json vouches for it:
    # predict refuses the mixed set instead of using it.
    killed_at("selection.json", ["fit-stacker", "--run", run, "--seed", "1"])
    refused = ensemble(predict)
    assert refused.returncode == 2
    assert "is missing, changed or truncated since fit-stacker wrote it" in refused.stderr
    assert "Run `ensemble fit-stacker` again" in refused.stderr

    assert ensemble(["fit-stacker", "--run", run, "--seed", "1"]).returncode == 0
    assert ensemble(predict).returncode == 0


def test_train_members_killed_mid_save_resumes_and_predicts(synthetic_folder, tmp_path):
    from ensemble.core.artifacts import load_keras_model
    from ensemble.data.sources import load_dataset

    run = tmp_path / "run"
    command = ci_command(synthetic_folder, run)[3:]  # drop "python -m ensemble"
    killed_at("last.keras", command, count=2)  # while saving the epoch-2 checkpoint
    state = json.loads((run / "members/tiny-b/checkpoint/state.json").read_text())
    assert state["epoch"] == 1
    finished = ensemble(command)
    assert finished.returncode == 0, finished.stderr[-2000:]
    history = json.loads((run / "members/tiny-b/history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    model = load_keras_model(run / "members/tiny-b/model.keras")
    images, _, _ = load_dataset(synthetic_folder).load_images(model.input_shape[1])
    probabilities = model.predict(images[:8].astype("float32"), verbose=0)
    assert probabilities.shape == (8, 8)
