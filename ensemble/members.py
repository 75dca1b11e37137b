"""Train every member of a pipeline into a run directory (``ensemble train-members``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ensemble.data import Dataset
from ensemble.errors import ConfigError, RunError
from ensemble.fileio import atomic_write_json
from ensemble.run import Run, create_or_open_run
from ensemble.specs import MemberSpec, PipelineSpec
from ensemble.training import FINISHED, TrainingData, is_finished, train_member


def train_pipeline_members(
    pipeline: PipelineSpec,
    dataset: Dataset,
    run_dir: Path,
    *,
    only: list[str] | None = None,
    force: bool = False,
    strategy: str = "default",
) -> dict[str, dict]:
    """Create or reuse the run's split, then train each member in turn.

    Finished members are skipped (unless ``force``); an interrupted member resumes after its
    last completed epoch. ``only`` restricts training to named members, so separate machines
    can train different members into one shared run directory.

    Returns:
        Member name → metrics, for the members trained or found finished.

    Raises:
        ConfigError: ``only`` names a member that is not in the pipeline.
    """
    names = [member.name for member in pipeline.members]
    for name in only or []:
        if name not in names:
            raise ConfigError(
                f"--only {name!r} is not a member of {pipeline.name}. Members: {names}"
            )
    run = create_or_open_run(run_dir, dataset, pipeline)
    record_pipeline_members(run, pipeline)
    distribute = _strategy(strategy)
    results = {}
    for spec in pipeline.members:
        if only and spec.name not in only:
            continue
        member_dir = run.member_dir(spec.name)
        if is_finished(member_dir) and not force:
            print(f"{spec.name}: already trained, skipped (--force retrains)", file=sys.stderr)
            results[spec.name] = json.loads((member_dir / FINISHED).read_text())
            continue
        print(f"{spec.name}: training ({_describe(spec)})", file=sys.stderr)
        began = time.perf_counter()
        results[spec.name] = _train_one(spec, run, names, force=force, strategy=distribute)
        print(f"{spec.name}: done in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    return results


def _describe(spec: MemberSpec) -> str:
    if spec.kind == "ovr":
        return f"one-vs-rest heads on {spec.ovr.base_member}"
    start = f"from {spec.init_from}" if spec.init_from else f"weights {spec.weights}"
    return f"{spec.backbone}, {spec.input_size} px, {start}"


def _train_one(spec: MemberSpec, run: Run, names: list[str], *, force: bool, strategy) -> dict:
    """Train one member of the run (a CNN on its split's images, or one-vs-rest heads)."""
    if spec.kind == "ovr":
        from ensemble.ovr import train_ovr_member

        return train_ovr_member(spec, run, force=force)
    train_images, train_labels = run.images("train", spec.input_size)
    val_images, val_labels = run.images("val", spec.input_size)
    n_classes = len(run.dataset.classes)
    data = TrainingData(train_images, train_labels, val_images, val_labels, n_classes)
    return train_member(
        spec,
        data,
        run.member_dir(spec.name),
        force=force,
        strategy=strategy,
        init_weights=_init_weights(spec, run, names),
    )


def record_pipeline_members(run: Run, pipeline: PipelineSpec) -> None:
    """Add members that the pipeline gained since the run was created to its manifest.

    A recipe can grow (e.g. a robust fine-tuning stage after a clean one) without a new split:
    the manifest keeps its members in order and appends the new ones.
    """
    listed = list(run.manifest.get("members", []))
    added = [member.name for member in pipeline.members if member.name not in listed]
    if added:
        run.manifest["members"] = listed + added
        atomic_write_json(run.root / "manifest.json", run.manifest)


def _init_weights(spec: MemberSpec, run: Run, names: list[str]) -> Path | None:
    """The model file a member starts from: an earlier member's ``model.keras``, or a file.

    Raises:
        RunError: ``init_from`` names a member of the pipeline that has not finished training
            (e.g. left out with ``--only``).
    """
    if not spec.init_from:
        return None
    if spec.init_from not in names:
        return Path(spec.init_from)  # a weights file, checked when the pipeline was loaded
    source = run.member_dir(spec.init_from)
    if not is_finished(source):
        raise RunError(
            f"member {spec.name!r} starts from {spec.init_from!r}, which has not finished "
            f"training in {run.root}. Train it first: --only {spec.init_from}"
        )
    return source / "model.keras"


def _strategy(name: str):
    if name == "default":
        return None
    if name == "mirrored":
        return _mirrored_strategy()
    raise ConfigError(f"strategy must be 'default' or 'mirrored'. Received: strategy={name!r}")


def _mirrored_strategy():
    """MirroredStrategy over the GPUs, or else over the CPU's logical devices.

    ``ENSEMBLE_CPU_REPLICAS=N`` splits the CPU into N logical devices first (it must be set
    before TensorFlow starts its runtime), which is how the tests exercise two replicas on one
    CPU.
    """
    import os

    import tensorflow as tf

    replicas = int(os.environ.get("ENSEMBLE_CPU_REPLICAS", "0") or 0)
    cpus = tf.config.list_physical_devices("CPU")
    if replicas > 1:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    if tf.config.list_physical_devices("GPU"):
        strategy = tf.distribute.MirroredStrategy()
    else:
        devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    print(f"MirroredStrategy with {strategy.num_replicas_in_sync} replicas", file=sys.stderr)
    return strategy
