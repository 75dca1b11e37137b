"""Two-stage training: a member that starts from another (init_from), keeps its last epoch,
and prints one line per epoch from a single fit call."""

import hashlib
import json

import numpy as np
import pytest

from ensemble.core.errors import ConfigError
from ensemble.data.synthetic import make_arrays
from ensemble.members.specs import member_spec_from_dict
from ensemble.members.training import TrainingData, build_member_model, train_member
from tests.test_training import TINY as TRAINING_TINY

TINY = TRAINING_TINY | {
    "name": "stage-1",
    "schedule": {"epochs": 2, "learning_rate": 0.003, "warmup_epochs": 0},
}
STAGE_2 = TINY | {
    "name": "stage-2",
    "init_from": "stage-1",
    "augmentation": {
        "dihedral": True,
        "randaugment_magnitude": 0.0,
        "corruption_probability": 0.5,
        "zoom_probability": 0.5,
    },
    "schedule": {"epochs": 2, "learning_rate": 0.0005, "warmup_epochs": 0},
    "early_stopping": {"patience": 0, "keep": "last"},
}


@pytest.fixture(scope="module")
def data():
    train_images, train_labels, _ = make_arrays(per_class=4, size=32, seed=0)
    val_images, val_labels, _ = make_arrays(per_class=2, size=32, seed=1)
    return TrainingData(train_images, train_labels, val_images, val_labels, 8)


@pytest.fixture(scope="module")
def stage_one(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage-1")
    train_member(member_spec_from_dict(TINY), data, folder, verbose=0)
    return folder


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_copy_weights_starts_from_every_weight_of_the_source(stage_one):
    import keras

    from ensemble.members.training import _copy_weights

    spec = member_spec_from_dict(STAGE_2)
    model = build_member_model(spec, 8)
    _copy_weights(model, stage_one / "model.keras", spec)
    source = keras.models.load_model(stage_one / "model.keras", safe_mode=True)
    pairs = list(zip(model.get_weights(), source.get_weights(), strict=True))
    assert pairs and all(np.array_equal(mine, theirs) for mine, theirs in pairs)


def test_stage_two_records_its_source_and_keeps_its_last_epoch(data, stage_one, tmp_path):
    spec = member_spec_from_dict(STAGE_2)
    metrics = train_member(
        spec, data, tmp_path / "m", verbose=0, init_weights=stage_one / "model.keras"
    )
    assert metrics["init_from"]["sha256"] == _sha256(stage_one / "model.keras")
    assert metrics["kept_epoch"] == 2 and metrics["epochs_run"] == 2
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert metrics["val_accuracy"] == history[-1]["val_accuracy"]
    assert _sha256(tmp_path / "m" / "model.keras") == _sha256(
        tmp_path / "m" / "checkpoint" / "last.keras"
    )


def test_init_from_another_architecture_is_refused(data, stage_one, tmp_path):
    other = member_spec_from_dict(STAGE_2 | {"head": {"dense_units": 32, "dropout": 0.0}})
    with pytest.raises(ConfigError, match="init_from .* does not fit its architecture"):
        train_member(other, data, tmp_path / "m", verbose=0, init_weights=stage_one / "model.keras")


def test_one_line_per_epoch_and_no_keras_epoch_lines(data, tmp_path, capsys):
    spec = member_spec_from_dict(TINY | {"schedule": {"epochs": 3, "warmup_epochs": 0}})
    train_member(spec, data, tmp_path / "m", verbose=1)
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    epoch_lines = [line for line in lines if "stage-1 epoch" in line]
    assert [line.split(":")[0].strip() for line in epoch_lines] == [
        "stage-1 epoch 1/3",
        "stage-1 epoch 2/3",
        "stage-1 epoch 3/3",
    ]
    assert all(
        "val accuracy" in line and "img/s" in line and "min left" in line for line in epoch_lines
    )
    assert not any(line.startswith("Epoch ") for line in lines)
