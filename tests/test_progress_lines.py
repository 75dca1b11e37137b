"""What long commands say while they work: one line per epoch, one line per fit-stacker stage."""

import re
import shutil

from ensemble.members.specs import load_pipeline
from tests.conftest import REPO, run_cli_captured


def test_train_members_prints_one_line_per_epoch(trained_ci):
    lines = trained_ci.err.splitlines()
    for spec in load_pipeline(REPO / "pipelines/ci.toml").members:
        if spec.kind != "cnn":
            continue
        epochs = [line for line in lines if re.match(rf"\s+{spec.name} epoch \d+/", line)]
        total = spec.schedule.epochs
        assert [line.split(":")[0].strip() for line in epochs] == [
            f"{spec.name} epoch {epoch}/{total}" for epoch in range(1, total + 1)
        ]
    assert not any(line.startswith("Epoch ") for line in lines)  # no Keras progress of its own


def test_fit_stacker_says_what_it_is_doing(trained_ci, tmp_path, monkeypatch):
    run = tmp_path / "ci"
    shutil.copytree(trained_ci.run, run)
    monkeypatch.setenv("ENSEMBLE_PROGRESS", "auto")  # the suite silences progress by default
    code, _, err = run_cli_captured(["fit-stacker", "--run", run])
    assert code == 0, err
    stages = [line for line in err.splitlines() if line.startswith("fit-stacker: ")]
    assert stages[:2] == [
        "fit-stacker: outputs of 3 members on val and blend",
        "fit-stacker: temperatures on val; every combiner on one half of blend",
    ]
    scores = [line.split(":")[1].strip() for line in stages[2:7]]
    assert scores == ["hard", "soft", "weighted", "greedy", "stack"]  # one line per combiner
    assert all("cross-validated accuracy" in line for line in stages[2:7])
    assert stages[7:] == [
        "fit-stacker: prediction sets and the out-of-distribution detector",
        "fit-stacker: selective thresholds for the accepted accuracies",
    ]
