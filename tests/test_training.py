import json

import numpy as np
import pytest

from ensemble.core.artifacts import load_keras_model
from ensemble.core.errors import RunError
from ensemble.data.synthetic import make_arrays
from ensemble.members.specs import member_spec_from_dict
from ensemble.members.training import TrainingData, build_member_model, is_finished, train_member

TINY = {
    "name": "tiny",
    "backbone": "simplecnn",
    "input_size": 32,
    "batch_size": 16,
    "head": {"dense_units": 16, "dropout": 0.0},
    "augmentation": {"dihedral": True, "randaugment_magnitude": 0.0},
    "schedule": {"epochs": 3, "learning_rate": 0.003, "warmup_epochs": 0},
    "early_stopping": {"patience": 0},
}


@pytest.fixture(scope="module")
def data():
    train_images, train_labels, _ = make_arrays(per_class=6, size=32, seed=0)
    val_images, val_labels, _ = make_arrays(per_class=2, size=32, seed=1)
    return TrainingData(train_images, train_labels, val_images, val_labels, 8)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """TINY trained to the end once for the tests that only read its files (do not modify)."""
    member_dir = tmp_path_factory.mktemp("finished") / "m"
    metrics = train_member(member_spec_from_dict(TINY), data, member_dir, verbose=0)
    return member_dir, metrics


def test_loss_falls(finished):
    member_dir, metrics = finished
    history = json.loads((member_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert metrics == json.loads((member_dir / "metrics.json").read_text())
    assert set(metrics) >= {"val_accuracy", "val_macro_f1", "train_seconds", "images_per_second"}
    assert (member_dir / "tensorboard").is_dir()


def test_finished_member_is_its_best_epoch(data, finished):
    """model.keras, loaded in safe mode, scores on val exactly what training recorded for it."""
    member_dir, metrics = finished
    model = load_keras_model(member_dir / "model.keras")
    predicted = model.predict(data.val_images.astype("float32"), verbose=0).argmax(axis=1)
    assert round(float((predicted == data.val_labels).mean()), 6) == metrics["val_accuracy"]
    history = json.loads((member_dir / "history.json").read_text())
    best = max(history, key=lambda row: row["val_accuracy"])
    assert metrics["best_epoch"] == best["epoch"]


def test_no_temporary_files_left(finished):
    leftovers = [p.name for p in finished[0].rglob(".*") if p.is_file()]
    assert leftovers == []


def test_member_model_round_trips_in_safe_mode(tmp_path):
    """A member saved and loaded back gives the in-memory model's outputs and pooled features."""
    import keras

    from ensemble.members.backbones import POOLED_FEATURES
    from ensemble.members.outputs import feature_model

    keras.utils.set_random_seed(0)
    # a Keras application (builtin preprocessing, nested model) rather than the tests' CNN
    model = build_member_model(member_spec_from_dict(TINY | {"backbone": "mobilenetv3small"}), 8)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # as if trained: an untrained member's outputs are uniform
        value = np.asarray(weight.numpy())
        if np.issubdtype(value.dtype, np.floating):
            noise = rng.normal(0, 0.3, value.shape).astype(value.dtype)
            weight.assign(value * np.exp(noise) if "variance" in weight.path else value + noise)
    x = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    assert expected.std(axis=0).max() > 0.01  # images get different outputs
    model.save(tmp_path / "m.keras")
    loaded = load_keras_model(tmp_path / "m.keras")
    assert np.array_equal(loaded.predict(x, verbose=0), expected)
    probabilities, features = feature_model(loaded).predict(x, verbose=0)
    assert np.array_equal(probabilities, expected)
    width = loaded.get_layer(POOLED_FEATURES).output.shape[-1]  # raises if the layer is gone
    assert width > 0 and features.shape == (6, width)


def test_interrupted_member_resumes_after_last_epoch(data, tmp_path):
    spec = member_spec_from_dict(TINY)
    state = train_member(spec, data, tmp_path / "m", verbose=0, stop_after_epochs=1)
    assert state["epoch"] == 1 and not is_finished(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())
    assert saved["epoch"] == 1
    train_member(spec, data, tmp_path / "m", verbose=0)
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[0] == saved["history"][0]  # the first epoch was not redone
    assert is_finished(tmp_path / "m")
    # Finished: another call does nothing and returns the same metrics.
    before = (tmp_path / "m" / "metrics.json").read_text()
    assert train_member(spec, data, tmp_path / "m", verbose=0) == json.loads(before)


@pytest.mark.large
def test_changed_spec_refused_unless_forced(data, tmp_path):
    spec = member_spec_from_dict(TINY | {"schedule": {"epochs": 1, "warmup_epochs": 0}})
    train_member(spec, data, tmp_path / "m", verbose=0, stop_after_epochs=1)
    changed = member_spec_from_dict(
        TINY | {"seed": 5, "schedule": {"epochs": 1, "warmup_epochs": 0}}
    )
    with pytest.raises(
        RunError, match="trained from a different spec \\(changed: \\['seed'\\]\\).*--force"
    ):
        train_member(changed, data, tmp_path / "m", verbose=0)
    train_member(changed, data, tmp_path / "m", verbose=0, force=True)
    assert json.loads((tmp_path / "m" / "spec.json").read_text())["seed"] == 5


def test_from_scratch_batch_norm_momentum_is_short():
    import keras

    model = build_member_model(member_spec_from_dict(TINY), 8)
    momenta = {
        layer.momentum
        for network in model.layers
        for layer in getattr(network, "layers", [network])
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert momenta == {0.9}


@pytest.mark.large
def test_pretrained_two_phases_freeze_then_unfreeze(data, tmp_path):
    """A local weights file stands in for ImageNet: phase 1 keeps the backbone fixed."""
    import keras

    from ensemble.members.backbones import build_backbone

    backbone = build_backbone("mobilenetv3small", 32)
    network = next(layer for layer in backbone.layers if isinstance(layer, keras.Model))
    weights = tmp_path / "local.weights.h5"
    network.save_weights(weights)
    spec = member_spec_from_dict(
        TINY
        | {
            "backbone": "mobilenetv3small",  # a Keras application: the small CNN has no weights
            "weights": str(weights),
            "finetune": {"head_epochs": 1, "epochs": 1, "learning_rate": 8e-5},
        }
    )
    state = train_member(spec, data, tmp_path / "m", verbose=0, stop_after_epochs=1)
    assert [row["phase"] for row in state["history"]] == ["head"]
    after_head = keras.models.load_model(tmp_path / "m/checkpoint/last.keras", safe_mode=True)
    inner = next(layer for layer in after_head.layers if isinstance(layer, keras.Model))
    reference = keras.Model.from_config(network.get_config())
    reference.load_weights(weights)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(inner.get_weights(), reference.get_weights(), strict=True)
    )
    train_member(spec, data, tmp_path / "m", verbose=0)
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert [row["phase"] for row in history] == ["head", "finetune"]
    tuned = keras.models.load_model(tmp_path / "m/checkpoint/last.keras", safe_mode=True)
    inner = next(layer for layer in tuned.layers if isinstance(layer, keras.Model))
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(inner.get_weights(), reference.get_weights(), strict=True)
    )


@pytest.mark.large
def test_same_seed_trains_to_the_same_metrics(data, tmp_path):
    """Same data and seed: metrics within the tolerance stated in results/reliability.md."""
    spec = member_spec_from_dict(TINY | {"schedule": {"epochs": 2, "warmup_epochs": 0}})
    other_seed = member_spec_from_dict(TINY | {"seed": 9, "schedule": {"epochs": 2}})
    for name, member in (("a", spec), ("b", spec), ("c", other_seed)):
        train_member(member, data, tmp_path / name, verbose=0)

    def history(name):
        return json.loads((tmp_path / name / "history.json").read_text())

    for first, second in zip(history("a"), history("b"), strict=True):
        assert abs(first["loss"] - second["loss"]) <= 1e-3
        assert abs(first["val_accuracy"] - second["val_accuracy"]) <= 0.02
    assert history("a")[0]["loss"] != history("c")[0]["loss"]  # the seed does matter


def test_old_spec_without_new_fields_is_accepted(data, tmp_path):
    """A member trained before a spec field existed is not "changed" by the field's default."""
    spec = member_spec_from_dict(TINY | {"schedule": {"epochs": 1, "warmup_epochs": 0}})
    train_member(spec, data, tmp_path / "m", verbose=0, stop_after_epochs=1)
    saved = json.loads((tmp_path / "m" / "spec.json").read_text())
    del saved["augmentation"]["corruption_probability"]  # as written by an older version
    (tmp_path / "m" / "spec.json").write_text(json.dumps(saved))
    train_member(spec, data, tmp_path / "m", verbose=0)
    with pytest.raises(RunError, match="changed: \\['augmentation'\\]"):
        train_member(
            member_spec_from_dict(
                TINY
                | {
                    "augmentation": {"corruption_probability": 0.5},
                    "schedule": {"epochs": 1, "warmup_epochs": 0},
                }
            ),
            data,
            tmp_path / "m",
            verbose=0,
        )
