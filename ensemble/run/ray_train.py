"""Train a pipeline's members as Ray tasks on a cluster (``train-members --ray``).

The driver makes (or verifies) the split and audit once, then submits one Ray task per member
with the resources it needs. A one-vs-rest member, or one with ``init_from`` another member,
is submitted with that member's task as an argument, so Ray starts it only once its source has
finished. Every task writes into the one run directory, which must be on storage that every
node mounts at the same path. Inside a task the member is trained under a claim
(:mod:`ensemble.run.claims`), so a member that another driver is training is waited for, not
trained twice. A task whose worker dies (SIGKILL, a lost node) is retried by Ray up to
``max_retries`` times and resumes from the member's last epoch checkpoint.

Each task runs in a fresh worker process (``max_calls=1``) whose TensorFlow uses as many
threads as the task has CPUs, and which frees the task's memory when it ends.

Ray is an optional dependency: ``pip install 'blood-ensemble[ray]'``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from ensemble.core.errors import ConfigError, EnsembleError, RunError
from ensemble.data.sources import Dataset
from ensemble.members.specs import MemberSpec, PipelineSpec
from ensemble.run.claims import (
    DEFAULT_HEARTBEAT,
    DEFAULT_TIMEOUT,
    describe,
    is_stale,
    read_claim,
)
from ensemble.run.directory import create_or_open_run
from ensemble.run.train import (
    dependencies,
    record_pipeline_members,
    select_members,
    train_run_members,
)


@dataclass(frozen=True)
class RayMemberResult:
    """What one member's Ray task did, for the end summary."""

    name: str
    metrics: dict  # the member's metrics.json
    status: str  # "trained", "already trained" or "trained by another worker"
    node: str  # hostname (IP) of the node whose task handled the member
    seconds: float  # wall time the task spent training it
    num_cpus: float  # CPUs the task held
    num_gpus: float  # GPUs the task held
    threads: int  # TensorFlow intra-op threads in the task


def require_ray():
    """Import Ray, or say how to install it.

    Raises:
        ConfigError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray needs Ray, an optional dependency: pip install 'blood-ensemble[ray]'"
        ) from None
    return ray


def connect(address: str = "local", num_cpus: int | None = None) -> None:
    """Connect to a Ray cluster, or start a local one; nothing if already connected.

    Args:
        address: ``local`` starts a cluster on this machine; ``auto`` joins the cluster this
            node belongs to (``ray start``); anything else is a cluster address
            (``HOST:6379`` or ``ray://HOST:10001``).
        num_cpus: CPUs of a ``local`` cluster (default: all of them).
    """
    ray = require_ray()
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address=address, log_to_driver=True)


def member_resources(
    spec: MemberSpec, num_cpus: float | None, num_gpus: float | None
) -> tuple[float, float]:
    """``(num_cpus, num_gpus)`` of a member's task: its spec's, else the command line's.

    A member spec may carry ``num_cpus`` / ``num_gpus`` (what that member needs); the command
    line's values apply to the members whose spec does not say. Defaults: 1 CPU, no GPU.
    """
    cpus = getattr(spec, "num_cpus", None)
    gpus = getattr(spec, "num_gpus", None)
    cpus = cpus if cpus is not None else (num_cpus if num_cpus is not None else 1)
    gpus = gpus if gpus is not None else (num_gpus if num_gpus is not None else 0)
    if cpus <= 0 or gpus < 0:
        raise ConfigError(
            f"member {spec.name!r}: num_cpus must be > 0 and num_gpus >= 0. "
            f"Received: num_cpus={cpus}, num_gpus={gpus}"
        )
    return float(cpus), float(gpus)


def train_members_on_ray(
    pipeline: PipelineSpec,
    dataset: Dataset,
    run_dir: Path,
    *,
    address: str = "local",
    only: list[str] | None = None,
    force: bool = False,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    max_retries: int = 3,
    claim_timeout: float = DEFAULT_TIMEOUT,
    heartbeat_every: float = DEFAULT_HEARTBEAT,
    poll_seconds: float = 2.0,
) -> dict[str, RayMemberResult]:
    """Split once on the driver, then train each selected member as a Ray task.

    Args:
        pipeline: the pipeline spec.
        dataset: its data, at a path every node can read.
        run_dir: the run directory, on storage every node mounts at the same path.
        address: the cluster (see :func:`connect`).
        only: train only these members (the others must be finished or trained elsewhere).
        force: retrain finished members (their folders are emptied first, on the driver, so
            that a retried task resumes instead of starting again).
        num_cpus: CPUs of each member's task, unless its spec says otherwise (default 1).
        num_gpus: GPUs of each member's task, unless its spec says otherwise (default 0).
        max_retries: how often Ray reruns a task whose worker died; each rerun resumes from
            the member's last completed epoch.
        claim_timeout: seconds without a heartbeat before a claim is stale (see
            :func:`ensemble.run.claims.try_claim`).
        heartbeat_every: seconds between a claim's heartbeats.
        poll_seconds: how often a task waiting for another worker's member looks again.

    Returns:
        Member name → :class:`RayMemberResult`, in pipeline order.

    Raises:
        ConfigError: Ray is missing, ``only`` names an unknown member, or a member needs more
            CPUs or GPUs than any node of the cluster has.
        RunError: ``force`` would discard a member another worker is training; or as
            :func:`ensemble.run.train.train_run_members`.

    Over 60 lines: its arguments are documented one by one; the body submits, waits and reports in
    one place so that a failed task's error reaches the driver as itself.
    """
    ray = require_ray()
    selected = select_members(pipeline, only)
    run = create_or_open_run(run_dir, dataset, pipeline)  # split and audit: once, here
    record_pipeline_members(run, pipeline)
    if force:
        _discard_for_force(run, selected, claim_timeout)
    connect(address, None)
    names = [spec.name for spec in pipeline.members]
    specs = {spec.name: spec for spec in pipeline.members}
    resources = {name: member_resources(specs[name], num_cpus, num_gpus) for name in selected}
    _check_fits(resources, ray)
    pipeline_ref, dataset_ref = ray.put(pipeline), ray.put(dataset)
    task = _remote_task(ray)
    refs = {}
    for name in selected:
        cpus, gpus = resources[name]
        after = [refs[source] for source in dependencies(specs[name], names) if source in refs]
        threads = max(int(cpus), 1)
        refs[name] = task.options(
            num_cpus=cpus,
            num_gpus=gpus,
            max_retries=max_retries,
            retry_exceptions=False,  # a user error fails the same way again
            name=f"train-member {name}",
            runtime_env={"env_vars": thread_env(threads)},
        ).remote(
            pipeline_ref,
            dataset_ref,
            str(Path(run.root).resolve()),
            name,
            {"cpus": cpus, "gpus": gpus, "threads": threads},
            {"claim_timeout": claim_timeout, "heartbeat_every": heartbeat_every,
             "poll_seconds": poll_seconds},
            *after,
        )  # fmt: skip
        print(f"{name}: submitted ({cpus:g} CPU, {gpus:g} GPU)", file=sys.stderr)
    results = {}
    waiting = {ref: name for name, ref in refs.items()}
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=1)
        name = waiting.pop(ready[0])
        results[name] = _result(ray, ready[0])
        done = results[name]
        print(f"{name}: {done.status} on {done.node} in {done.seconds:.0f} s", file=sys.stderr)
    return {name: results[name] for name in names if name in results}


def summary(results: dict[str, RayMemberResult]) -> str:
    """One line per member: which node handled it, how, how long, with what resources."""
    lines = [f"{'member':<20} {'node':<28} {'status':<26} {'minutes':>7}  resources"]
    for result in results.values():
        lines.append(
            f"{result.name:<20} {result.node:<28} {result.status:<26} "
            f"{result.seconds / 60:>7.1f}  {result.num_cpus:g} CPU ({result.threads} TF "
            f"threads), {result.num_gpus:g} GPU"
        )
    return "\n".join(lines)


def _train_task(pipeline, dataset, run_root, name, resources, claims, *after) -> dict:
    """Body of one member's Ray task (in a fresh worker process)."""
    threads = limit_tensorflow_threads(resources["threads"])
    from ensemble.run.directory import open_run

    run = open_run(run_root, dataset)
    outcome = train_run_members(run, pipeline, [name], **claims)[name]
    import ray

    host = socket.gethostname()
    node = f"{host} ({ray.util.get_node_ip_address()})"
    if outcome.status == "trained by another worker":
        node = f"{outcome.host} (another driver)"
    return {
        "name": name,
        "metrics": outcome.metrics,
        "status": outcome.status,
        "node": node,
        "seconds": round(outcome.seconds, 1),
        "num_cpus": resources["cpus"],
        "num_gpus": resources["gpus"],
        "threads": threads,
    }


_REMOTE = {}


def _remote_task(ray):
    """The task, registered once; ``max_calls=1``: a fresh worker (and TF runtime) per member."""
    if "task" not in _REMOTE:
        _REMOTE["task"] = ray.remote(max_calls=1)(_train_task)
    return _REMOTE["task"]


def thread_env(threads: int) -> dict[str, str]:
    """Read by TensorFlow when its runtime starts: its thread pools fit the task's CPUs."""
    return {
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_NUM_INTEROP_THREADS": str(min(threads, 2)),
        "OMP_NUM_THREADS": str(threads),
    }


def limit_tensorflow_threads(threads: int) -> int:
    """Set TensorFlow's thread pools to ``threads``; returns the intra-op count in effect."""
    for key, value in thread_env(threads).items():
        os.environ.setdefault(key, value)
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # the runtime already started: the environment variables applied
        pass
    return tf.config.threading.get_intra_op_parallelism_threads() or threads


def _result(ray, ref) -> RayMemberResult:
    """The task's result; a user error inside it is raised as itself (one line, exit 2)."""
    try:
        return RayMemberResult(**ray.get(ref))
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, EnsembleError | OSError):
            raise cause from None
        raise


def _discard_for_force(run, selected: list[str], timeout: float) -> None:
    for name in selected:
        holder = read_claim(run.root, name)
        if holder is not None and not is_stale(holder, timeout):
            raise RunError(
                f"--force would discard member {name!r}, which {describe(holder)} is training. "
                "Wait for it, or stop that worker first."
            )
        shutil.rmtree(run.member_dir(name), ignore_errors=True)


def _check_fits(resources: dict[str, tuple[float, float]], ray) -> None:
    """Refuse a member that no node can run (Ray would wait for it forever)."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    most_cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    most_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    for name, (cpus, gpus) in resources.items():
        if cpus > most_cpus or gpus > most_gpus:
            raise ConfigError(
                f"member {name!r} needs {cpus:g} CPUs and {gpus:g} GPUs, but the largest node "
                f"of the cluster has {most_cpus:g} CPUs and {most_gpus:g} GPUs. Lower "
                "--num-cpus/--num-gpus (or the member spec's num_cpus/num_gpus)."
            )
