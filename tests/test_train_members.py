import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli


def ci_command(data, run, *extra):
    """train-members on the ci pipeline, member tiny-b only, as a subprocess command."""
    pipeline = str(REPO / "pipelines/ci.toml")
    return [
        sys.executable,
        "-m",
        "ensemble",
        "train-members",
        "--pipeline",
        pipeline,
        "--data",
        str(data),
        "--run",
        str(run),
        "--only",
        "tiny-b",
        *extra,
    ]


def train_args(data, run, *extra):
    """In-process train-members arguments for the ci pipeline."""
    return [
        "train-members",
        "--pipeline",
        REPO / "pipelines/ci.toml",
        "--data",
        data,
        "--run",
        run,
        *extra,
    ]


def test_train_members_end_to_end_and_skip(trained_ci, synthetic_folder, capsys):
    run = trained_ci.run  # trained once per session through the CLI (tests/conftest.py)
    for name in ("tiny-a", "tiny-b", "tiny-ovr"):
        member = run / "members" / name
        assert (member / "model.keras").is_file() and (member / "metrics.json").is_file()
        assert f"{name}: val accuracy" in trained_ci.out
    assert (
        len(json.loads((run / "members/tiny-ovr/thresholds.json").read_text())["thresholds"]) == 8
    )
    split = json.loads((run / "split.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["members"] == ["tiny-a", "tiny-b", "tiny-ovr"] and split["counts"]["train"] > 0
    assert manifest["data_source"] == str(synthetic_folder.resolve())  # any working directory
    # A second call trains nothing.
    code, out, err = run_cli(train_args(synthetic_folder, run), capsys)
    assert code == 0 and err.count("already trained, skipped") == 3


def test_only_unknown_member_one_line(synthetic_folder, tmp_path, capsys):
    args = train_args(synthetic_folder, tmp_path / "run", "--only", "nope")
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--members 'nope' is not a member of ci" in err and err.count("\n") == 1


def test_changed_data_refused(synthetic_folder, tmp_path, capsys):
    import shutil

    from ensemble.data.sources import load_dataset
    from ensemble.members.specs import load_pipeline
    from ensemble.run.directory import create_or_open_run

    run = tmp_path / "run"
    create_or_open_run(
        run, load_dataset(synthetic_folder), load_pipeline(REPO / "pipelines/ci.toml")
    )
    changed = tmp_path / "changed"
    shutil.copytree(synthetic_folder, changed)
    (changed / "basophil" / "basophil_00000.png").unlink()
    code, _, err = run_cli(train_args(changed, run), capsys)
    assert code == 2 and "data changed since the split" in err


@pytest.mark.large
def test_mirrored_strategy_on_two_logical_cpus(synthetic_folder, tmp_path):
    env = dict(os.environ, ENSEMBLE_CPU_REPLICAS="2")
    result = subprocess.run(
        ci_command(synthetic_folder, tmp_path / "run", "--strategy", "mirrored"),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiny-b: val accuracy" in result.stdout
    assert "MirroredStrategy with 2 replicas" in result.stderr


@pytest.mark.large
def test_sigkill_then_resume(synthetic_folder, tmp_path):
    """SIGKILL train-members once an epoch is saved; a restart redoes no saved epoch."""
    import signal
    import time

    run = tmp_path / "run"
    command = ci_command(synthetic_folder, run)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "members/tiny-b/checkpoint/state.json"
    deadline = time.time() + 300
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    survived = json.loads(state.read_text())["epoch"]  # epochs saved before the kill
    assert survived >= 1
    finished_before = (run / "members/tiny-b/metrics.json").exists()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    history = json.loads((run / "members/tiny-b/history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    for epoch in (1, 2):  # saved epochs are not redone; the rest are trained now
        trained_now = f"tiny-b epoch {epoch}/2" in result.stderr
        assert trained_now == (epoch > survived), (epoch, survived, result.stderr[-2000:])
    assert ("already trained, skipped" in result.stderr) == finished_before


def test_interrupted_save_leaves_previous_file(tmp_path, monkeypatch):
    import keras

    from ensemble.core.fileio import save_model_atomically

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    target = tmp_path / "model.keras"
    save_model_atomically(model, target)
    original = target.read_bytes()

    def dying_save(self, path, *args, **kwargs):
        with open(path, "wb") as stream:
            stream.write(b"half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        save_model_atomically(model, target)
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
