"""Train every member of a pipeline into a run directory (``ensemble train-members``)."""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ensemble.core.errors import ConfigError, RunError, did_you_mean
from ensemble.core.fileio import atomic_write_json
from ensemble.data.sources import Dataset
from ensemble.members.layout import MemberDir
from ensemble.members.specs import FitSpec, MemberSpec, PipelineSpec
from ensemble.members.training import TrainingData, is_finished, train_member
from ensemble.run.claims import (
    DEFAULT_HEARTBEAT,
    DEFAULT_TIMEOUT,
    describe,
    is_stale,
    read_claim,
    try_claim,
)
from ensemble.run.directory import Run, create_or_open_run


def train_pipeline_members(
    pipeline: PipelineSpec,
    dataset: Dataset,
    run_dir: Path,
    *,
    only: list[str] | None = None,
    force: bool = False,
    strategy: str = "default",
    claim_timeout: float = DEFAULT_TIMEOUT,
    heartbeat_every: float = DEFAULT_HEARTBEAT,
    poll_seconds: float = 2.0,
) -> dict[str, dict]:
    """Create or reuse the run's split, then train each member in turn.

    Finished members are skipped (unless ``force``); an interrupted member resumes after its
    last completed epoch. ``only`` restricts training to named members. Several drivers (on
    one machine or several, sharing the run directory) can run at once: each member is
    claimed before training (:mod:`ensemble.run.claims`), so no two train the same member; a
    driver waits for members claimed by another, and takes over a stale claim.

    Returns:
        Member name → metrics, for the members trained or found finished.

    Raises:
        ConfigError: ``only`` names a member that is not in the pipeline.
    """
    selected = select_members(pipeline, only)
    run = create_or_open_run(run_dir, dataset, pipeline)
    record_pipeline_members(run, pipeline)
    outcomes = train_run_members(
        run,
        pipeline,
        selected,
        force=force,
        strategy=strategy,
        claim_timeout=claim_timeout,
        heartbeat_every=heartbeat_every,
        poll_seconds=poll_seconds,
    )
    return {name: outcome.metrics for name, outcome in outcomes.items()}


def select_members(pipeline: PipelineSpec, only: list[str] | None) -> list[str]:
    """The pipeline's members that ``only`` names (all if ``None``), in pipeline order.

    Raises:
        ConfigError: ``only`` names a member that is not in the pipeline.
    """
    names = [member.name for member in pipeline.members]
    for name in only or []:
        if name not in names:
            raise ConfigError(
                f"--members {name!r} is not a member of {pipeline.name}."
                f"{did_you_mean(name, names)} Members: {names}"
            )
    return [name for name in names if not only or name in only]


@dataclass(frozen=True)
class MemberOutcome:
    """What became of one member in a train-members call."""

    name: str
    metrics: dict  # the member's metrics.json
    status: str  # "trained", "already trained" or "trained by another worker"
    seconds: float  # wall time this call spent training it (0 if it did not)
    host: str  # the host that trained it in this call (this one, or the other worker's)


def dependencies(spec: MemberSpec, names: list[str]) -> list[str]:
    """Members of the pipeline ``spec`` needs: its one-vs-rest base, ``init_from``, teachers."""
    found = []
    if spec.kind == "ovr":
        found.append(spec.ovr.base_member)
    if spec.init_from and spec.init_from in names:
        found.append(spec.init_from)
    found.extend(teacher for teacher in spec.distill.teachers if teacher not in found)
    return found


def train_run_members(
    run: Run,
    pipeline: PipelineSpec,
    selected: list[str],
    *,
    force: bool = False,
    strategy: str = "default",
    claim_timeout: float = DEFAULT_TIMEOUT,
    heartbeat_every: float = DEFAULT_HEARTBEAT,
    poll_seconds: float = 2.0,
) -> dict[str, MemberOutcome]:
    """Train the ``selected`` members of an opened run, each under a claim.

    A member is trained only once its dependencies (:func:`dependencies`) are finished; one
    claimed by a live worker elsewhere is waited for, one whose claim went stale is taken
    over (training resumes from its checkpoint). A dependency that is neither selected,
    finished nor claimed fails as before (``RunError`` naming the member to train first).

    Returns:
        Member name → :class:`MemberOutcome`, in pipeline order.

    Over 60 lines: the claim loop (train, wait for another worker, take over a stale claim) reads
    best in one place.
    """
    names = [member.name for member in pipeline.members]
    distribute = _strategy(strategy)
    pending = [spec for spec in pipeline.members if spec.name in selected]
    outcomes: dict[str, MemberOutcome] = {}
    seen_elsewhere: dict[str, dict] = {}
    while pending:
        progressed = False
        for spec in list(pending):
            member_dir = run.member_dir(spec.name)
            if is_finished(member_dir) and (not force or spec.name in seen_elsewhere):
                outcomes[spec.name] = _found_finished(spec.name, member_dir, seen_elsewhere)
                pending.remove(spec)
                progressed = True
                continue
            if _waits_for_dependency(spec, run, names, [p.name for p in pending], claim_timeout):
                continue
            claim = try_claim(
                run.root, spec.name, timeout=claim_timeout, heartbeat_every=heartbeat_every
            )
            if claim is None:
                holder = read_claim(run.root, spec.name)
                if holder is not None and spec.name not in seen_elsewhere:
                    print(
                        f"{spec.name}: being trained by {describe(holder)}; waiting",
                        file=sys.stderr,
                    )
                    seen_elsewhere[spec.name] = holder
                continue
            with claim:
                if claim.taken_over is not None:
                    print(
                        f"{spec.name}: took over the stale claim of "
                        f"{describe(claim.taken_over)}; resuming",
                        file=sys.stderr,
                    )
                if is_finished(member_dir) and (not force or spec.name in seen_elsewhere):
                    outcome = _found_finished(spec.name, member_dir, seen_elsewhere)
                else:
                    outcome = _train_claimed(spec, run, names, force, distribute)
                if claim.lost:
                    print(
                        f"warning: {spec.name}: another worker took over this member's "
                        "claim while it trained (no heartbeat within the timeout)",
                        file=sys.stderr,
                    )
            outcomes[spec.name] = outcome
            pending.remove(spec)
            progressed = True
        if pending and not progressed:
            time.sleep(poll_seconds)
    return {name: outcomes[name] for name in names if name in outcomes}


def _waits_for_dependency(
    spec: MemberSpec, run: Run, names: list[str], pending: list[str], timeout: float
) -> bool:
    """True if a member ``spec`` starts from is still to be trained here or by another worker."""
    for source in dependencies(spec, names):
        if is_finished(run.member_dir(source)):
            continue
        if source in pending:
            return True
        holder = read_claim(run.root, source)
        if holder is not None and not is_stale(holder, timeout):
            return True  # trained elsewhere right now
    return False


def _train_claimed(spec: MemberSpec, run: Run, names, force: bool, distribute) -> MemberOutcome:
    print(f"{spec.name}: training ({_describe(spec)})", file=sys.stderr)
    began = time.perf_counter()
    metrics = _train_one(spec, run, names, force=force, strategy=distribute)
    seconds = time.perf_counter() - began
    print(f"{spec.name}: done in {seconds:.0f} s", file=sys.stderr)
    return MemberOutcome(spec.name, metrics, "trained", seconds, socket.gethostname())


def _found_finished(name: str, member_dir: Path, seen_elsewhere: dict) -> MemberOutcome:
    metrics = json.loads(MemberDir(member_dir).metrics.read_text())
    if name in seen_elsewhere:
        host = seen_elsewhere[name].get("host", "?")
        print(f"{name}: trained by another worker ({host})", file=sys.stderr)
        return MemberOutcome(name, metrics, "trained by another worker", 0.0, host)
    print(f"{name}: already trained, skipped (--force retrains)", file=sys.stderr)
    return MemberOutcome(name, metrics, "already trained", 0.0, "")


def _describe(spec: MemberSpec) -> str:
    if spec.kind == "ovr":
        return f"one-vs-rest heads on {spec.ovr.base_member}"
    start = f"from {spec.init_from}" if spec.init_from else f"weights {spec.weights}"
    return f"{spec.backbone}, {spec.input_size} px, {start}"


def _train_one(spec: MemberSpec, run: Run, names: list[str], *, force: bool, strategy) -> dict:
    """Train one member of the run (a CNN on its split's images, or one-vs-rest heads)."""
    if spec.kind == "ovr":
        from ensemble.members.ovr import train_ovr_member

        return train_ovr_member(spec, run, force=force)
    train_images, train_labels = run.images("train", spec.input_size)
    val_images, val_labels = run.images("val", spec.input_size)
    n_classes = len(run.dataset.classes)
    teachers = _teacher_probabilities(spec, run)
    data = TrainingData(train_images, train_labels, val_images, val_labels, n_classes, teachers)
    return train_member(
        spec,
        data,
        run.member_dir(spec.name),
        force=force,
        strategy=strategy,
        init_weights=_init_weights(spec, run, names),
    )


def _teacher_probabilities(spec: MemberSpec, run: Run):
    """A student's teachers' tempered mean probabilities on the clean training images.

    Returns ``None`` for a member without teachers, and for a finished member (nothing to
    train). Raises ``RunError`` naming the teacher to train first when one is unfinished.
    """
    if not spec.distill.teachers or is_finished(run.member_dir(spec.name)):
        return None
    from ensemble.core.artifacts import load_keras_model
    from ensemble.members.distillation import teacher_probabilities, temper

    models, images = [], []
    for teacher in spec.distill.teachers:
        teacher_dir = run.member_dir(teacher)
        if not is_finished(teacher_dir):
            raise RunError(
                f"member {spec.name!r} learns from teacher {teacher!r}, which has not finished "
                f"training in {run.root}. Train it first: --members {teacher}"
            )
        teacher_spec = run.directory.member_spec(teacher)
        models.append(load_keras_model(MemberDir(teacher_dir).model))
        images.append(run.images("train", teacher_spec.input_size)[0])
    print(
        f"{spec.name}: teachers {', '.join(spec.distill.teachers)} on "
        f"{len(images[0])} clean training images"
        + (" (8 dihedral views each)" if spec.distill.teacher_tta else ""),
        file=sys.stderr,
    )
    probabilities = teacher_probabilities(models, images, tta=spec.distill.teacher_tta)
    return temper(probabilities, spec.distill.temperature)


def record_pipeline_members(run: Run, pipeline: PipelineSpec) -> None:
    """Add members that the pipeline gained since the run was created to its manifest.

    A recipe can grow (e.g. a robust fine-tuning stage after a clean one) without a new split:
    the manifest keeps its members in order and appends the new ones. A pipeline with a
    ``[fit]`` table records it as the manifest's ``fit`` (fit-stacker's defaults for the run).
    """
    listed = list(run.manifest.get("members", []))
    added = [member.name for member in pipeline.members if member.name not in listed]
    fit = json.loads(json.dumps(asdict(pipeline.fit))) if pipeline.fit != FitSpec() else None
    fit_changed = fit is not None and fit != run.manifest.get("fit")
    if added:
        run.manifest["members"] = listed + added
    if fit_changed:
        run.manifest["fit"] = fit
    if added or fit_changed:
        atomic_write_json(run.directory.manifest_path, run.manifest)


def _init_weights(spec: MemberSpec, run: Run, names: list[str]) -> Path | None:
    """The model file a member starts from: an earlier member's ``model.keras``, or a file.

    Raises:
        RunError: ``init_from`` names a member of the pipeline that has not finished training
            (e.g. left out with ``--members``).
    """
    if not spec.init_from:
        return None
    if spec.init_from not in names:
        return Path(spec.init_from)  # a weights file, checked when the pipeline was loaded
    source = run.member_dir(spec.init_from)
    if not is_finished(source):
        raise RunError(
            f"member {spec.name!r} starts from {spec.init_from!r}, which has not finished "
            f"training in {run.root}. Train it first: --members {spec.init_from}"
        )
    return MemberDir(source).model


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
