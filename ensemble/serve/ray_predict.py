"""``ensemble predict DIR --ray``: the files through Ray Data, rows back in file order.

The driver lists the files as the local path does (sorted, folder links not followed) and makes
a dataset of their paths (Arrow tables), a chunk of files per block. ``map_batches`` hands each
chunk to one actor of a fixed pool — one actor per ``num_cpus`` CPUs of the cluster — that
loaded and verified the ensemble once (:meth:`ensemble.Ensemble.load`) with TensorFlow's thread
pools sized to its CPUs. The actor reads and decodes its files itself (so the folder, like the
run directory, must be on storage every node mounts at the same path) and turns the chunk into
rows with :func:`ensemble.serve.predict.rows_for_chunk`, the function the local path uses: the same
columns, the same error rows for unreadable files, the same values up to the float noise of a
different batch composition. Rows travel back as JSON text (exact floats, booleans and nulls).

The driver iterates the blocks in file order (Ray Data's ``preserve_order``) and yields the
rows one by one, so :func:`ensemble.serve.prediction_files.write_rows` streams them to the output.
The driver holds the file list (as strings: 7 MB per 100,000 files) and the blocks in flight,
not the rows: memory stays flat however large the folder.

Ray is an optional dependency: ``pip install 'blood-ensemble[ray]'``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ensemble.core.console import QUIET_ENVIRONMENT, quiet_console
from ensemble.core.errors import ConfigError, DataError, EnsembleError, RunError
from ensemble.core.progress import bars_enabled
from ensemble.run.ray_train import (
    connect,
    limit_tensorflow_threads,
    require_ray,
    thread_env,
)
from ensemble.serve.ensemble import Ensemble
from ensemble.serve.predict import PredictionJob, announce_skipped, decode_file, rows_for_chunk


class ChunkPredictor:
    """A Ray Data actor: the loaded ensemble, turning a chunk of file paths into rows.

    A user error (:class:`~ensemble.core.errors.EnsembleError`: say, a node that does not see the
    run on shared storage) is not raised here: Ray would hand the driver only its text, inside
    a long traceback. It goes back in the ``failure`` column as ``[class name, message]``, and
    the driver raises it as itself (one line, exit 2).

    Args:
        run_root: the run directory (absolute, the same path on every node).
        combiner: the combiner the driver resolved.
        folder: the folder of images (absolute, the same path on every node).
        settings: keyword arguments of :meth:`ensemble.Ensemble.decide`.
        sizes: the members' input sizes.
        threads: TensorFlow threads (the actor's CPUs).
        quiet: hide TensorFlow's start-up lines, as the ``ensemble`` command does.
    """

    def __init__(
        self,
        run_root: str,
        combiner: str,
        folder: str,
        settings: dict,
        sizes: list[int],
        threads: int,
        quiet: bool = True,
    ) -> None:
        if quiet:
            quiet_console()
        limit_tensorflow_threads(threads)
        self.folder = Path(folder)
        self.settings = settings
        self.sizes = sizes
        self.ensemble: Ensemble | None = None
        self.failure: EnsembleError | None = None
        try:
            self.ensemble = Ensemble.load(run_root, combiner)
        except EnsembleError as error:
            self.failure = error

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"path"}`` of a chunk of files → ``{"row", "failure"}``, JSON text each."""
        paths = [str(path) for path in batch["path"]]
        texts = np.full(len(paths), "", dtype=object)
        failures = np.full(len(paths), "", dtype=object)
        try:
            if self.failure is not None:
                raise self.failure
            outcomes = [decode_file(self.folder / path, self.sizes) for path in paths]
            rows = rows_for_chunk(self.ensemble, paths, outcomes, self.settings)
            texts[:] = [json.dumps(row) for row in rows]
        except EnsembleError as error:
            failures[:] = json.dumps([type(error).__name__, str(error)])
        return {"row": texts, "failure": failures}


def iter_prediction_rows_on_ray(
    job: PredictionJob,
    *,
    address: str = "local",
    num_cpus: float | None = None,
    chunk: int | None = None,
) -> Iterator[dict]:
    """The rows of ``job``'s files, made by actors on a Ray cluster, in file order.

    Connects (or starts a local cluster) now; the rows are made as the iterator is consumed.
    Each unreadable file prints ``skipped PATH: reason`` on stderr as its row goes by, as
    locally.

    Args:
        job: what :func:`ensemble.serve.predict.prepare_prediction` checked and loaded.
        address: ``local``, ``auto`` or a cluster address (see
            :func:`ensemble.run.ray_train.connect`).
        num_cpus: CPUs per actor (default 1); the pool has one actor per ``num_cpus`` CPUs of
            the cluster.
        chunk: files per block (one ``decide`` call); default ``job.chunk``, smaller when there
            are too few files to give every actor one.

    Returns:
        An iterator over the rows, one dict per file, equal to
        :func:`ensemble.serve.predict.iter_prediction_rows`'s.

    Raises:
        ConfigError: Ray is missing, or ``num_cpus`` is more than any node of the cluster has.

    Over 60 lines: the Ray Data pipeline (actors, blocks, ordering, error passing) reads best in one
    place.
    """
    ray = require_ray()
    import pyarrow  # Ray Data's own dependency

    connect(address, None)
    cpus = float(num_cpus) if num_cpus is not None else 1.0
    actors = actor_count(ray, cpus)
    threads = max(int(cpus), 1)
    # The actors are as quiet as this process (the command is, unless --verbose).
    quiet = all(os.environ.get(key) == value for key, value in QUIET_ENVIRONMENT.items())
    chunk = chunk or max(1, min(job.chunk, math.ceil(len(job.paths) / actors)))
    blocks = [  # one block per chunk: the unit an actor takes
        pyarrow.table({"path": job.paths[start : start + chunk]})
        for start in range(0, len(job.paths), chunk)
    ]
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True  # blocks come out in file order
    context.enable_progress_bars = bars_enabled()  # else a status block every 10 s in a log
    try:  # a dataset keeps a copy of the context it was made with
        dataset = ray.data.from_arrow(blocks).map_batches(
            ChunkPredictor,
            batch_size=chunk,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={
                "run_root": str(Path(job.ensemble.run.root).resolve()),
                "combiner": job.ensemble.combiner_,
                "folder": str(job.folder.resolve()),
                "settings": job.settings,
                "sizes": job.sizes,
                "threads": threads,
                "quiet": quiet,
            },
            num_cpus=cpus,
            runtime_env={"env_vars": thread_env(threads)},
        )
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
    return announce_skipped(_rows_in_order(dataset, job.paths))


def actor_count(ray, cpus_per_actor: float) -> int:
    """Actors of the pool: one per ``cpus_per_actor`` CPUs of the cluster, at least one.

    Raises:
        ConfigError: no node of the cluster has ``cpus_per_actor`` CPUs (Ray would wait for
            the actor forever).
    """
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    largest = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    if cpus_per_actor > largest:
        raise ConfigError(
            f"--num-cpus {cpus_per_actor:g} is more than the largest node of the cluster has "
            f"({largest:g} CPUs). Lower --num-cpus."
        )
    return max(1, sum(int(node.get("CPU", 0.0) // cpus_per_actor) for node in nodes))


def _rows_in_order(dataset, paths: list[str]) -> Iterator[dict]:
    """The dataset's rows, decoded from JSON, checked to come one per path in ``paths`` order.

    Raises:
        EnsembleError: an actor could not predict (raised as the class the actor raised).
    """
    expected = 0
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for text, failure in zip(batch["row"], batch["failure"], strict=True):
            if failure:
                raise _user_error(*json.loads(failure))
            row = json.loads(text)
            if expected >= len(paths) or row["path"] != paths[expected]:  # a bug, not user error
                raise RuntimeError(f"Ray Data returned {row['path']!r} as row {expected}")
            expected += 1
            yield row
    if expected != len(paths):
        raise RuntimeError(f"Ray Data returned {expected} rows for {len(paths)} files")


def _user_error(kind: str, message: str) -> EnsembleError:
    """An actor's user error, as its own class (one of :mod:`ensemble.core.errors`)."""
    known = {cls.__name__: cls for cls in (ConfigError, DataError, RunError)}
    return known.get(kind, EnsembleError)(message)
