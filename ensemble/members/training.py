"""Train one CNN member: build the model, run its schedule, checkpoint every epoch, resume.

The member's files (:class:`~ensemble.members.layout.MemberDir`) are each written to a temporary
name and renamed, so a process killed at any moment (even SIGKILL mid-save) leaves only complete
files; a restart continues after the last completed epoch.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.core.artifacts import load_keras_model
from ensemble.core.errors import ConfigError, RunError
from ensemble.core.fileio import atomic_write_json, atomic_write_with
from ensemble.core.hashes import file_sha256
from ensemble.members.inputs import class_weights, training_dataset
from ensemble.members.layout import MemberDir
from ensemble.members.specs import MemberSpec, member_spec_from_dict


@dataclass(frozen=True)
class TrainingData:
    """Decoded training and validation images of one member's input size."""

    train_images: np.ndarray  # (N, S, S, 3) uint8
    train_labels: np.ndarray  # (N,) int
    val_images: np.ndarray  # (M, S, S, 3) uint8
    val_labels: np.ndarray  # (M,) int
    n_classes: int
    teacher_probabilities: np.ndarray | None = None  # (N, K): a student's teachers on the clean
    #   training images (ensemble.members.distillation), tempered; None = labels only


def build_member_model(spec: MemberSpec, n_classes: int):
    """Backbone + classification head; input raw 0–255 RGB, output class probabilities.

    The pooled-feature layer keeps its name (``pooled_features``) in the member model, so one
    forward pass can return both probabilities and features.
    """
    import keras

    from ensemble.members.backbones import build_backbone

    keras.utils.set_random_seed(spec.seed)
    backbone = build_backbone(spec.backbone, spec.input_size, spec.weights)
    if not spec.pretrained:
        for layer in _all_layers(backbone):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = spec.schedule.bn_momentum
    x = backbone.output
    if spec.head.dropout:
        x = keras.layers.Dropout(spec.head.dropout, name="head_dropout_in")(x)
    if spec.head.dense_units:
        x = keras.layers.Dense(spec.head.dense_units, activation="relu", name="head_dense")(x)
        if spec.head.batch_norm:
            x = keras.layers.BatchNormalization(name="head_bn")(x)
        if spec.head.dropout:
            x = keras.layers.Dropout(spec.head.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(backbone.input, outputs, name=spec.name)


def is_finished(member_dir: Path) -> bool:
    """True if the member in ``member_dir`` completed training."""
    return MemberDir(member_dir).is_finished()


def train_member(
    spec: MemberSpec,
    data: TrainingData,
    member_dir: Path,
    *,
    force: bool = False,
    strategy=None,
    verbose: int = 1,
    stop_after_epochs: int | None = None,
    init_weights: Path | None = None,
) -> dict:
    """Train (or resume, or skip) one CNN member.

    One ``model.fit`` call per training phase (one phase from scratch; head then fine-tuning
    with pretrained weights); after every epoch a callback evaluates on val, saves the
    checkpoint and the best model atomically, and prints one line.

    Args:
        spec: the member spec.
        data: its training and validation images.
        member_dir: where its files go (created).
        force: discard earlier progress and start again.
        strategy: an optional ``tf.distribute.Strategy`` to build and train under.
        verbose: 1 prints one line per epoch on stderr (loss, accuracy, validation accuracy,
            images per second, time left); 0 prints nothing.
        stop_after_epochs: stop (as if killed) after this many epochs in this call; for tests
            and for splitting a long run over sessions. The member stays unfinished.
        init_weights: a ``.keras`` model of the same architecture to start from (the spec's
            ``init_from``, resolved by the caller); ignored when resuming.

    Returns:
        The member's metrics (``metrics.json``); for an unfinished member, its last state.

    Raises:
        RunError: ``member_dir`` holds a member trained from a different spec (use ``force``).
        ConfigError: ``init_weights`` does not fit the member's architecture.

    Over 60 lines: its arguments are documented one by one; the body is the one ``fit`` loop over
    training phases.
    """
    import keras

    member_dir = Path(member_dir)
    finished = prepare_member_dir(spec, member_dir, force)
    if finished is not None:
        return finished

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    state = _load_state(member_dir)
    with scope:
        if state is not None:
            if spec.distill.teachers:
                import ensemble.members.distillation  # noqa: F401  registers the student's loss

            model = load_keras_model(MemberDir(member_dir).checkpoint, compile=True)
        else:
            model = build_member_model(spec, data.n_classes)
            if init_weights is not None:
                _copy_weights(model, Path(init_weights), spec)
            _compile_for_epoch(model, spec, 0, len(data.train_labels))
            state = {"epoch": 0, "best_val_accuracy": -1.0, "history": [], "stale_epochs": 0}
            if init_weights is not None:
                state["init_from"] = {
                    "path": str(init_weights),
                    "sha256": file_sha256(init_weights),
                }

    from ensemble.members.epoch_checkpoint import EpochCheckpoint

    train = _make_training_dataset(spec, data)
    epoch_end = EpochCheckpoint(
        name=spec.name,
        evaluate=lambda model: _evaluate(model, data),
        n_train=len(data.train_labels),
        member_dir=member_dir,
        state=state,
        total_epochs=_total_epochs(spec),
        phase_of=lambda epoch: _phase(spec, epoch),
        patience=spec.early_stopping.patience,
        min_delta=spec.early_stopping.min_delta,
        verbose=verbose,
        stop_after_epochs=stop_after_epochs,
    )
    logs = str(MemberDir(member_dir).tensorboard)
    callbacks = [epoch_end, keras.callbacks.TensorBoard(log_dir=logs)]
    for phase_end in _phase_ends(spec):
        if state["epoch"] >= phase_end:
            continue
        if spec.pretrained and state["epoch"] == spec.finetune.head_epochs > 0:
            with scope:  # phase 2: unfreeze and fine-tune at a low learning rate
                _compile_for_epoch(model, spec, state["epoch"], len(data.train_labels))
        model.fit(
            train,
            epochs=phase_end,
            initial_epoch=state["epoch"],
            verbose=0,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles
        )
        if epoch_end.interrupted:
            return state
        if epoch_end.stopped_early:
            break
    return _finish(spec, member_dir, state)


def _phase_ends(spec: MemberSpec) -> list[int]:
    """The epoch at which each training phase ends (one ``fit`` call each)."""
    if spec.pretrained and spec.finetune.head_epochs:
        return [spec.finetune.head_epochs, _total_epochs(spec)]
    return [_total_epochs(spec)]


def _copy_weights(model, source_path: Path, spec: MemberSpec) -> None:
    """Start ``model`` from every weight of a trained model of the same architecture."""
    source = load_keras_model(source_path)
    try:
        model.set_weights(source.get_weights())
    except ValueError as error:
        raise ConfigError(
            f"member {spec.name!r}: init_from {str(source_path)!r} does not fit its architecture "
            f"({spec.backbone}, head {spec.head.dense_units} units): {error}. Start from a "
            "member with the same backbone and head."
        ) from None


def prepare_member_dir(spec: MemberSpec, member_dir: Path, force: bool) -> dict | None:
    """Create (or, with ``force``, empty) a member directory and check its saved spec.

    Returns:
        The member's metrics if it is already finished, else ``None``.

    Raises:
        RunError: the directory holds a member trained from a different spec.
    """
    if force and member_dir.exists():
        shutil.rmtree(member_dir)
    member_dir.mkdir(parents=True, exist_ok=True)
    _check_or_write_spec(spec, member_dir)
    if is_finished(member_dir):
        return json.loads(MemberDir(member_dir).metrics.read_text())
    return None


def _finish(spec: MemberSpec, member_dir: Path, state: dict) -> dict:
    history = state["history"]
    train_seconds = sum(row["seconds"] for row in history)
    images = sum(row["seconds"] * row["images_per_second"] for row in history)
    best = max(history, key=lambda row: row["val_accuracy"])
    keep_last = spec.early_stopping.keep == "last"
    kept = history[-1] if keep_last else best
    metrics = {
        "member": spec.name,
        "backbone": spec.backbone,
        "input_size": spec.input_size,
        "weights": spec.weights,
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "kept_epoch": kept["epoch"],
        "val_accuracy": kept["val_accuracy"],
        "val_macro_f1": kept["val_macro_f1"],
        "train_seconds": round(train_seconds, 1),
        "images_per_second": round(images / max(train_seconds, 1e-9), 1),
    }
    if "init_from" in state:
        metrics["init_from"] = state["init_from"]
    files = MemberDir(member_dir)
    atomic_write_json(files.history, history)
    _atomic_copy(files.checkpoint if keep_last else files.best, files.model)
    atomic_write_json(files.metrics, metrics)  # last: marks the member finished
    return metrics


def _total_epochs(spec: MemberSpec) -> int:
    if spec.pretrained:
        return spec.finetune.head_epochs + spec.finetune.epochs
    return spec.schedule.epochs


def _phase(spec: MemberSpec, epoch: int) -> str:
    if not spec.pretrained:
        return "scratch"
    return "head" if epoch < spec.finetune.head_epochs else "finetune"


def _compile_for_epoch(model, spec: MemberSpec, epoch: int, n_train: int) -> None:
    import keras

    steps_per_epoch = int(np.ceil(n_train / spec.batch_size))
    backbone_layers = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if spec.pretrained:
        head_phase = epoch < spec.finetune.head_epochs
        for network in backbone_layers:
            network.trainable = not head_phase
            if not head_phase and spec.finetune.unfreeze_from:
                _freeze_before(network, spec.finetune.unfreeze_from)
        rate = spec.finetune.head_learning_rate if head_phase else spec.finetune.learning_rate
        optimizer = keras.optimizers.Adam(rate)
    else:
        schedule = spec.schedule
        total = schedule.epochs * steps_per_epoch
        warmup = int(schedule.warmup_epochs * steps_per_epoch)
        if warmup:  # linear from 1 % of the peak to the peak, then cosine decay to 1 %
            rate = keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=schedule.learning_rate * 0.01,
                decay_steps=max(total - warmup, 1),
                alpha=0.01,
                warmup_target=schedule.learning_rate,
                warmup_steps=warmup,
            )
        else:
            rate = keras.optimizers.schedules.CosineDecay(schedule.learning_rate, total, alpha=0.01)
        optimizer = keras.optimizers.AdamW(rate, weight_decay=schedule.weight_decay)
    smoothing = spec.schedule.label_smoothing
    if spec.distill.teachers:
        from ensemble.members.distillation import DistillationLoss, accuracy_metric

        loss = DistillationLoss(
            model.output_shape[-1],
            weight=spec.distill.weight,
            temperature=spec.distill.temperature,
            label_smoothing=smoothing,
        )
        model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy_metric()])
        return
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def _freeze_before(network, layer_name: str) -> None:
    from ensemble.core.errors import ConfigError

    names = [layer.name for layer in network.layers]
    if layer_name not in names:
        raise ConfigError(
            f"finetune.unfreeze_from={layer_name!r} is not a layer of {network.name}. "
            f"Layers include: {names[:3]} … {names[-3:]}"
        )
    index = names.index(layer_name)
    for layer in network.layers[:index]:
        layer.trainable = False


def _make_training_dataset(spec: MemberSpec, data: TrainingData):
    weights_table = class_weights(data.train_labels, data.n_classes, spec.class_weights)
    sample_weights = None
    if weights_table is not None:
        sample_weights = np.array([weights_table[int(c)] for c in data.train_labels], np.float32)
    targets = np.eye(data.n_classes, dtype=np.float32)[data.train_labels]
    if spec.distill.teachers:
        from ensemble.members.distillation import packed_targets

        if data.teacher_probabilities is None:
            raise ValueError(f"member {spec.name!r} is a student: pass its teachers' probabilities")
        targets = packed_targets(targets, data.teacher_probabilities)
    return training_dataset(
        data.train_images,
        targets,
        batch_size=spec.batch_size,
        augmentation=spec.augmentation,
        seed=spec.seed,
        sample_weights=sample_weights,
    )


def _evaluate(model, data: TrainingData) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    from ensemble.members.inputs import inference_dataset

    if not len(data.val_labels):
        return 0.0, 0.0
    probabilities = model.predict(inference_dataset(data.val_images, 256), verbose=0)
    predicted = probabilities.argmax(axis=1)
    accuracy = float((predicted == data.val_labels).mean())
    f1 = float(
        f1_score(
            data.val_labels,
            predicted,
            average="macro",
            labels=list(range(data.n_classes)),
            zero_division=0,
        )
    )
    return round(accuracy, 6), round(f1, 6)


#: Spec fields that do not change what a member learns (whether the combiners use it, what a
#: Ray task reserves for it): changing them later does not make a trained member stale.
NOT_TRAINING_FIELDS = ("combine", "num_cpus", "num_gpus")


def _check_or_write_spec(spec: MemberSpec, member_dir: Path) -> None:
    path = MemberDir(member_dir).spec
    resolved = json.loads(json.dumps(spec.to_dict()))
    if path.is_file():
        saved = _resolved_saved_spec(path)
        changed = sorted(
            key
            for key in set(resolved) | set(saved)
            if key not in NOT_TRAINING_FIELDS and saved.get(key) != resolved.get(key)
        )
        if changed:
            raise RunError(
                f"member {spec.name!r} in {member_dir} was trained from a different spec "
                f"(changed: {changed}). Pass --force to retrain it, or use another run directory."
            )
        if saved != resolved:  # only fields that do not affect training: record the new ones
            atomic_write_json(path, resolved)
        return
    atomic_write_json(path, resolved)


def _resolved_saved_spec(path: Path) -> dict:
    """The saved spec with defaults filled in.

    Fields added to the package since the spec was written (at their default values) then do
    not count as changes.
    """
    saved = json.loads(path.read_text())
    try:
        return json.loads(json.dumps(member_spec_from_dict(saved, source=str(path)).to_dict()))
    except ConfigError:
        return saved


def _load_state(member_dir: Path) -> dict | None:
    files = MemberDir(member_dir)
    if files.state.is_file() and files.checkpoint.is_file():
        return json.loads(files.state.read_text())
    return None


def _atomic_copy(source: Path, target: Path) -> None:
    atomic_write_with(target, lambda temporary: shutil.copyfile(source, temporary))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
