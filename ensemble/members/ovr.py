"""One-vs-rest member: per class, a binary head trained on its own on a member's pooled features.

Each head sees its class as positive and every other class as negative, with its own balance
(positives and negatives weighted to count equally). The heads are then assembled, on top of
the base member's backbone, into one model whose output is the 8 per-class scores; an image's
class is the argmax, and per-class thresholds fitted on ``val`` can flag an image as matching
no class (all scores under their thresholds).
"""

from __future__ import annotations

import time

import numpy as np

from ensemble.core.artifacts import load_keras_model
from ensemble.core.errors import RunError
from ensemble.core.fileio import atomic_write_json, save_model_atomically
from ensemble.members.layout import MemberDir
from ensemble.members.outputs import member_outputs
from ensemble.members.specs import MemberSpec
from ensemble.members.training import is_finished, prepare_member_dir

SCORES = "ovr_scores"


def train_ovr_member(spec: MemberSpec, run, *, force: bool = False) -> dict:
    """Train the one-vs-rest heads of ``spec`` on its base member's features and save the member.

    Raises:
        RunError: the base member is not trained yet.
    """
    member_dir = run.member_dir(spec.name)
    finished = prepare_member_dir(spec, member_dir, force)
    if finished is not None:
        return finished
    base_dir = run.member_dir(spec.ovr.base_member)
    if not is_finished(base_dir):
        raise RunError(
            f"one-vs-rest member {spec.name!r} needs member {spec.ovr.base_member!r} trained "
            "first. Train it (train-members without --only, or --only with both)."
        )
    base = load_keras_model(MemberDir(base_dir).model)
    size = base.input_shape[1]
    began = time.perf_counter()
    train_images, train_labels = run.images("train", size)
    val_images, val_labels = run.images("val", size)
    _, train_features = member_outputs(base, train_images)
    _, val_features = member_outputs(base, val_images)
    n_classes = len(run.dataset.classes)
    heads, history = fit_heads(
        spec, train_features, train_labels, val_features, val_labels, n_classes
    )
    model = assemble(base, heads, spec.name)
    val_scores = model.predict(val_images, batch_size=256, verbose=0)
    thresholds = fit_thresholds(val_scores, val_labels)
    predicted = val_scores.argmax(axis=1)
    from sklearn.metrics import f1_score

    metrics = {
        "member": spec.name,
        "backbone": f"ovr on {spec.ovr.base_member}",
        "input_size": int(size),
        "weights": spec.weights,
        "epochs_run": spec.ovr.epochs,
        "val_accuracy": round(float((predicted == val_labels).mean()), 6),
        "val_macro_f1": round(
            float(f1_score(val_labels, predicted, average="macro", labels=list(range(n_classes)))),
            6,
        ),
        "val_no_class_rate": round(float((val_scores < thresholds).all(axis=1).mean()), 6),
        "train_seconds": round(time.perf_counter() - began, 1),
        "images_per_second": round(len(train_labels) / max(time.perf_counter() - began, 1e-9), 1),
    }
    files = MemberDir(member_dir)
    atomic_write_json(files.thresholds, {"thresholds": thresholds.tolist()})
    atomic_write_json(files.history, history)
    save_model_atomically(model, files.model)
    atomic_write_json(files.metrics, metrics)  # last: marks the member finished
    return metrics


def fit_heads(
    spec: MemberSpec,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    n_classes: int,
):
    """Train one binary head per class, each on its own with balanced positives/negatives.

    Returns:
        ``(heads, history)``: one ``keras.Sequential`` per class (features → score) and the
        per-head final training and validation losses.
    """
    import keras

    heads, history = [], []
    for index in range(n_classes):
        keras.utils.set_random_seed(spec.seed + index)
        target = (train_labels == index).astype(np.float32)
        positives = max(target.sum(), 1.0)
        negatives = max(len(target) - target.sum(), 1.0)
        weights = np.where(
            target == 1, len(target) / (2 * positives), len(target) / (2 * negatives)
        )
        normaliser = keras.layers.Normalization(name=f"ovr_norm_{index}")
        normaliser.adapt(train_features)
        layers = [keras.Input((train_features.shape[1],)), normaliser]
        if spec.ovr.hidden_units:
            layers.append(keras.layers.Dense(spec.ovr.hidden_units, activation="relu"))
        layers.append(keras.layers.Dense(1, activation="sigmoid", name=f"ovr_head_{index}"))
        head = keras.Sequential(layers, name=f"ovr_{index}")
        head.compile(keras.optimizers.Adam(spec.ovr.learning_rate), "binary_crossentropy")
        val_target = (val_labels == index).astype(np.float32)
        result = head.fit(
            train_features,
            target,
            sample_weight=weights.astype(np.float32),
            validation_data=(val_features, val_target),
            epochs=spec.ovr.epochs,
            batch_size=spec.ovr.batch_size,
            verbose=0,
            callbacks=[keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)],
        )
        heads.append(head)
        history.append(
            {
                "class_index": index,
                "epochs": len(result.history["loss"]),
                "loss": float(result.history["loss"][-1]),
                "val_loss": float(min(result.history["val_loss"])),
            }
        )
    return heads, history


def assemble(base, heads, name: str):
    """One model: base member's backbone → pooled features → every head → per-class scores."""
    import keras

    from ensemble.members.backbones import POOLED_FEATURES

    features = base.get_layer(POOLED_FEATURES).output
    scores = [head(features) for head in heads]
    output = keras.layers.Concatenate(name=SCORES)(scores)
    return keras.Model(base.input, output, name=name)


def fit_thresholds(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per class, the score threshold that maximises the binary F1 on ``val``."""
    thresholds = np.full(scores.shape[1], 0.5)
    for index in range(scores.shape[1]):
        truth = labels == index
        if not truth.any():
            continue
        candidates = np.unique(np.round(scores[:, index], 4))
        best = -1.0
        for threshold in candidates:
            predicted = scores[:, index] >= threshold
            tp = float((predicted & truth).sum())
            f1 = 2 * tp / max(predicted.sum() + truth.sum(), 1)
            if f1 > best:
                best, thresholds[index] = f1, float(threshold)
    return thresholds
