import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli


@pytest.fixture(scope="module")
def ci_run(synthetic_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "ci"
    return run


def test_train_members_end_to_end_and_skip(synthetic_folder, ci_run, capsys):
    args = [
        "train-members",
        "--pipeline",
        REPO / "pipelines/ci.toml",
        "--data",
        synthetic_folder,
        "--run",
        ci_run,
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    for name in ("tiny-a", "tiny-b", "tiny-ovr"):
        member = ci_run / "members" / name
        assert (member / "model.keras").is_file() and (member / "metrics.json").is_file()
        assert f"{name}: val accuracy" in out
    assert (
        len(json.loads((ci_run / "members/tiny-ovr/thresholds.json").read_text())["thresholds"])
        == 8
    )
    split = json.loads((ci_run / "split.json").read_text())
    manifest = json.loads((ci_run / "manifest.json").read_text())
    assert manifest["members"] == ["tiny-a", "tiny-b", "tiny-ovr"] and split["counts"]["train"] > 0
    # A second call trains nothing.
    code, out, err = run_cli(args, capsys)
    assert code == 0 and err.count("already trained, skipped") == 3


def test_only_unknown_member_one_line(synthetic_folder, ci_run, capsys):
    args = [
        "train-members",
        "--pipeline",
        REPO / "pipelines/ci.toml",
        "--data",
        synthetic_folder,
        "--run",
        ci_run,
        "--only",
        "nope",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--only 'nope' is not a member of ci" in err and err.count("\n") == 1


def test_changed_data_refused(synthetic_folder, ci_run, tmp_path, capsys):
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(synthetic_folder, changed)
    (changed / "basophil" / "basophil_00000.png").unlink()
    args = [
        "train-members",
        "--pipeline",
        REPO / "pipelines/ci.toml",
        "--data",
        changed,
        "--run",
        ci_run,
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "data changed since the split" in err


def test_mirrored_strategy_on_two_logical_cpus(synthetic_folder, tmp_path):
    env = dict(os.environ, ENSEMBLE_CPU_REPLICAS="2")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensemble",
            "train-members",
            "--pipeline",
            str(REPO / "pipelines/ci.toml"),
            "--data",
            str(synthetic_folder),
            "--run",
            str(tmp_path / "run"),
            "--only",
            "tiny-b",
            "--strategy",
            "mirrored",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiny-b: val accuracy" in result.stdout
    assert "MirroredStrategy with 2 replicas" in result.stderr
