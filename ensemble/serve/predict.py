"""``ensemble predict DIR``: classify every image under a folder with a fitted run.

Each readable image gets its predicted class, the combiner's confidence and probability per
class, every member's vote, the members' agreement (share of members voting for the
prediction), its conformal prediction set at miss rate ``alpha``, its out-of-distribution score
and an ``abstain`` flag — "refer to a human" — by one of two rules (:mod:`ensemble.refer.rule`):
``conformal`` (the default once the run is calibrated: refer unless the set is exactly the
predicted class and the OOD score is under its threshold) or ``agreement`` (agreement or
confidence under its minimum). Unreadable files get a row with an empty prediction and the
reason. The images go through :class:`ensemble.Ensemble`, the public Python API, so the numbers
are the API's. Output is written atomically: CSV, or JSON with a header (run, combiner, alpha,
rule) and rows of real numbers, booleans and nulls. Nothing is loaded through pickle:
``.keras`` with ``safe_mode``, XGBoost's own format, JSON and ``.npy``.

The command streams: :func:`prepare_prediction` checks everything before an image is decoded,
:func:`iter_prediction_rows` makes the rows a chunk at a time (or
:func:`ensemble.serve.ray_predict.iter_prediction_rows_on_ray` on a Ray cluster, with the same
:func:`rows_for_chunk`), and :func:`~.prediction_files.write_rows` writes each row as it
comes, so memory stays flat however large the folder. :func:`predict_folder` keeps the rows, for
the Python API.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble.core.errors import ConfigError
from ensemble.core.progress import progress
from ensemble.core.version import __version__
from ensemble.data.images import UnreadableImage, crop_and_resize, decode_image
from ensemble.data.sources import SYSTEM_FILES
from ensemble.refer.rule import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_CONFIDENCE
from ensemble.serve.ensemble import Decisions, Ensemble
from ensemble.serve.prediction_files import (
    RowTally,
    default_output,
    write_csv,
    write_json,
    write_rows,
)

FIXED_COLUMNS = ("path", "prediction", "confidence", "agreement", "abstain", "error")
#: After the fixed columns: the referral's evidence. Then ``proba_<class>``, ``vote_<member>``.
REFERRAL_COLUMNS = (
    "referral_reason",
    "prediction_set",
    "set_size",
    "ood_score",
    "out_of_distribution",
)

#: A file as the members take it: its pixels at every input size, or why it cannot be read.
Decoded = dict[int, np.ndarray] | str


def prediction_columns(classes: Sequence[str], members: Sequence[str]) -> list[str]:
    """Column order: fixed, referral, ``proba_<class>`` per class, ``vote_<member>``."""
    return [
        *FIXED_COLUMNS,
        *REFERRAL_COLUMNS,
        *(f"proba_{name}" for name in classes),
        *(f"vote_{name}" for name in members),
    ]


@dataclass
class Predictions:
    """Rows of a prediction run, in file order, the settings they were made with, and timing.

    Attributes:
        members: member names (one ``vote_<member>`` column each).
        classes: class names (one ``proba_<class>`` column each).
        header: run, combiner, alpha, refer rule and the other settings (JSON output's header).
        rows: one dict per file; values are str, float, int, bool or None (empty in CSV).
        seconds: time from the first file, after loading.
    """

    members: list[str]
    classes: list[str] = field(default_factory=list)
    header: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_predicted(self) -> int:
        """Rows with a prediction."""
        return sum(1 for row in self.rows if not row["error"])

    @property
    def n_skipped(self) -> int:
        """Rows without a prediction (unreadable files)."""
        return len(self.rows) - self.n_predicted

    def columns(self) -> list[str]:
        """Column order: fixed, referral, ``proba_<class>`` per class, ``vote_<member>``."""
        return prediction_columns(self.classes, self.members)

    def to_csv(self) -> str:
        """The rows as CSV text (``true``/``false``, empty for None, rounded numbers)."""
        buffer = io.StringIO()
        write_csv(self.rows, buffer, self.columns())
        return buffer.getvalue()

    def to_json(self) -> str:
        """``{"header": {...}, "predictions": [rows]}``: numbers, booleans and nulls as such."""
        buffer, tally = io.StringIO(), RowTally()
        write_json(tally.count(self.rows), buffer, self.header, tally, io.StringIO())
        return buffer.getvalue()


@dataclass
class PredictionJob:
    """A folder to predict, with the ensemble and settings, checked before any image is decoded.

    Made by :func:`prepare_prediction`; turned into rows by :func:`iter_prediction_rows` (here)
    or :func:`ensemble.serve.ray_predict.iter_prediction_rows_on_ray` (on a Ray cluster).

    Attributes:
        folder: the folder of images.
        paths: every file under it, sorted (see :func:`iter_files`), as its ``path`` column:
            relative to ``folder``, with forward slashes (strings: 100,000 files take 7 MB).
        ensemble: the loaded ensemble.
        settings: keyword arguments of :meth:`ensemble.Ensemble.decide` (refer rule resolved).
        header: how the rows are made (the JSON output's header).
    """

    folder: Path
    paths: list[str]
    ensemble: Ensemble
    settings: dict
    header: dict

    @property
    def members(self) -> list[str]:
        """Member names (one ``vote_<member>`` column each)."""
        return list(self.ensemble.members_)

    @property
    def classes(self) -> list[str]:
        """Class names (one ``proba_<class>`` column each)."""
        return list(self.ensemble.classes_)

    @property
    def sizes(self) -> list[int]:
        """The members' input sizes: each file is decoded once and resized to each of them."""
        return sorted({self.ensemble.input_size(name) for name in self.ensemble.members_})

    @property
    def chunk(self) -> int:
        """Files decoded and predicted together: fewer, larger forward passes."""
        return max(self.settings["batch_size"], 1024)

    def columns(self) -> list[str]:
        """Column order of the output (see :func:`prediction_columns`)."""
        return prediction_columns(self.classes, self.members)

    def file(self, path: str) -> Path:
        """The file of a ``path`` column value."""
        return self.folder / path


def prepare_prediction(
    folder: Path,
    run_root: Path,
    *,
    combiner: str | None = None,
    tta: bool = False,
    batch_size: int = 256,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    alpha: float | None = None,
    refer: str | None = None,
    ensemble: Ensemble | None = None,
    accepted_accuracy: float | None = None,
) -> PredictionJob:
    """List the files, load the ensemble, check the settings and print their warnings.

    Arguments as :func:`predict_folder`. Nothing is decoded yet; the warnings (TTA mismatch, a
    calibration too small, the rule fallen back to) go to stderr, one line each.

    Raises:
        As :func:`predict_folder`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"folder not found: {folder}")
    paths = [path.relative_to(folder).as_posix() for path in iter_files(folder)]
    if not paths:
        raise ConfigError(f"no files found under {folder}")
    if ensemble is None:
        ensemble = Ensemble.load(run_root, combiner)
    fitted = ensemble
    settings = {
        "alpha": alpha,
        "refer": refer,
        "min_agreement": min_agreement,
        "min_confidence": min_confidence,
        "accepted_accuracy": accepted_accuracy,
        "tta": tta,
        "batch_size": batch_size,
    }
    # Checked before any image is decoded.
    rule, resolved_alpha = fitted.referral_settings(
        alpha, refer, min_agreement, min_confidence, accepted_accuracy
    )
    settings["refer"] = rule
    for warning in fitted.referral_warnings(
        tta, alpha, asked=refer, rule=rule, accepted_accuracy=accepted_accuracy
    ):
        print(warning, file=sys.stderr)
    header = _header(fitted, resolved_alpha, rule, settings)
    return PredictionJob(folder, paths, ensemble, settings, header)


def predict_folder(
    folder: Path,
    run_root: Path,
    *,
    combiner: str | None = None,
    tta: bool = False,
    batch_size: int = 256,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    alpha: float | None = None,
    refer: str | None = None,
    ensemble: Ensemble | None = None,
    accepted_accuracy: float | None = None,
) -> Predictions:
    """Predict every file under ``folder`` (recursively); see the module docstring.

    Every row is kept in memory; ``ensemble predict`` streams them to its output instead
    (:func:`prepare_prediction`, :func:`iter_prediction_rows`,
    :func:`~.prediction_files.write_rows`).

    Args:
        folder: the images, searched recursively (folder links are not followed).
        run_root: run directory with trained members and fitted combiners.
        combiner: a combiner, ``ovr`` or a member name; ``None`` = the run's default.
        tta: average each member over the 8 dihedral views.
        batch_size: images per forward pass.
        min_agreement: the agreement rule: refer under this share of members voting for the
            prediction.
        min_confidence: the agreement rule: refer under this combiner probability.
        alpha: miss rate of the prediction sets; ``None`` = the calibrated default (0.01).
        refer: ``"conformal"``, ``"selective"`` or ``"agreement"`` (see the module docstring);
            ``None`` = conformal when the run is calibrated for ``alpha``, else agreement (with
            a warning).
        ensemble: an already loaded ensemble (``run_root`` and ``combiner`` are then ignored).
        accepted_accuracy: the selective rule's guaranteed accuracy on accepted images (one
            fit-stacker calibrated); ``None`` = the one it was asked for.

    Returns:
        One row per file; ``Predictions.seconds`` counts from the first file, after loading.

    Raises:
        ConfigError: the folder is missing or holds no files, a threshold or ``alpha`` is out
            of range, or ``refer`` is unknown.
        RunError: the run cannot be used (see :meth:`Ensemble.load`), or ``refer`` is
            ``"conformal"`` on a run fitted before prediction sets.

    Over 60 lines: its arguments are documented one by one; the body is four lines.
    """
    job = prepare_prediction(
        folder,
        run_root,
        combiner=combiner,
        tta=tta,
        batch_size=batch_size,
        min_agreement=min_agreement,
        min_confidence=min_confidence,
        alpha=alpha,
        refer=refer,
        ensemble=ensemble,
        accepted_accuracy=accepted_accuracy,
    )
    result = Predictions(job.members, job.classes, job.header)
    began = time.perf_counter()
    result.rows = list(iter_prediction_rows(job))
    result.seconds = time.perf_counter() - began
    return result


def iter_prediction_rows(job: PredictionJob) -> Iterator[dict]:
    """The rows of ``job``'s files in file order, made on this machine a chunk at a time.

    The next chunk is decoded in background threads while the members run on the current one;
    memory holds two chunks, however many files there are. Each unreadable file prints
    ``skipped PATH: reason`` on stderr as its row goes by.

    Yields:
        One row per file (see :func:`rows_for_chunk`).
    """
    for batch, outcomes in _decoded_chunks(job, job.chunk):
        yield from announce_skipped(rows_for_chunk(job.ensemble, batch, outcomes, job.settings))


def decode_file(path: Path, sizes: Sequence[int]) -> Decoded:
    """One file decoded, centre-cropped and resized to each of ``sizes``, or why it cannot be."""
    try:
        pixels = decode_image(path).pixels
    except UnreadableImage as error:
        return str(error)
    return {size: crop_and_resize(pixels, size) for size in sizes}


def rows_for_chunk(
    ensemble: Ensemble, relatives: Sequence[str], outcomes: Sequence[Decoded], settings: dict
) -> list[dict]:
    """A chunk of decoded files → their rows, in the same order; the one place rows are made.

    The readable files go through the members in one :meth:`ensemble.Ensemble.decide` call;
    an unreadable file's row has only its path and the reason in ``error``.

    Args:
        ensemble: the loaded ensemble.
        relatives: each file's ``path`` column.
        outcomes: each file as :func:`decode_file` returned it.
        settings: keyword arguments of :meth:`ensemble.Ensemble.decide`.

    Returns:
        One dict per file, keys in :func:`prediction_columns` order; values are Python str,
        float, int, bool or None.
    """
    fitted = ensemble
    columns = prediction_columns(fitted.classes_, fitted.members_)
    rows = [dict.fromkeys(columns) | {"path": relative} for relative in relatives]
    good = []
    for row, outcome in zip(rows, outcomes, strict=True):
        if isinstance(outcome, str):
            row["error"] = outcome
        else:
            good.append((row, outcome))
    if good:
        sizes = sorted(good[0][1])
        images = {size: np.stack([outcome[size] for _, outcome in good]) for size in sizes}
        decisions = ensemble.decide(images, **settings, warn=False)  # warned once, before
        for index, (row, _) in enumerate(good):
            _fill_row(row, decisions, index, fitted)
    return rows


def announce_skipped(rows: Iterable[dict]) -> Iterator[dict]:
    """Pass ``rows`` through, printing ``skipped PATH: reason`` on stderr for each error row."""
    for row in rows:
        if row["error"]:
            print(f"skipped {row['path']}: {row['error']}", file=sys.stderr)
        yield row


def _decoded_chunks(job: PredictionJob, chunk: int) -> Iterator[tuple[list[str], list[Decoded]]]:
    """``job``'s paths in chunks, each file decoded at every input size (or why it cannot be).

    The next chunk is decoded in the background while the members run on the current one.
    """
    sizes = job.sizes
    chunks = [job.paths[start : start + chunk] for start in range(0, len(job.paths), chunk)]

    def decode_all(batch: list[str]) -> list[Future]:
        return [pool.submit(decode_file, job.file(path), sizes) for path in batch]

    with ThreadPoolExecutor(max_workers=2) as pool:  # PIL decodes without holding the GIL
        upcoming = decode_all(chunks[0])
        for number, batch in enumerate(progress(chunks, desc="predicting")):
            current = upcoming
            if number + 1 < len(chunks):
                upcoming = decode_all(chunks[number + 1])
            yield batch, [future.result() for future in current]


def _fill_row(row: dict, decisions: Decisions, index: int, fitted: Ensemble) -> None:
    """One image's values, as Python numbers, booleans and strings (None where unknown)."""
    classes = fitted.classes_
    predicted = int(decisions.predictions[index])
    row["prediction"] = classes[predicted]
    row["confidence"] = float(decisions.confidence[index])
    row["agreement"] = float(decisions.agreement[index])
    row["abstain"] = bool(decisions.abstain[index])
    if decisions.reasons is not None:
        row["referral_reason"] = decisions.reasons[index]
    if decisions.sets is not None:
        members = np.flatnonzero(decisions.sets[index])
        row["prediction_set"] = "|".join(classes[k] for k in members)
        row["set_size"] = int(len(members))
    if decisions.ood_scores is not None:
        row["ood_score"] = float(decisions.ood_scores[index])
        row["out_of_distribution"] = bool(decisions.out_of_distribution[index])
    for name, probability in zip(classes, decisions.probabilities[index], strict=True):
        row[f"proba_{name}"] = float(probability)
    for name, vote in zip(fitted.members_, decisions.votes[:, index], strict=True):
        row[f"vote_{name}"] = classes[int(vote)]


def _header(fitted: Ensemble, alpha: float | None, refer: str, settings: dict) -> dict:
    """What the JSON output says about how its rows were made."""
    return {
        "run": str(fitted.run.root),
        "combiner": fitted.combiner_,
        "alpha": alpha,
        "refer": refer,
        "min_agreement": settings["min_agreement"],
        "min_confidence": settings["min_confidence"],
        "accepted_accuracy": _accepted_accuracy(fitted, refer, settings["accepted_accuracy"]),
        "ood_threshold": fitted.ood_threshold,
        "ood_method": fitted.ood_.method if fitted.ood_ is not None else None,
        "conformal_score": fitted.conformal_[fitted.combiner_].score if fitted.conformal_ else None,
        "mondrian": fitted.conformal_[fitted.combiner_].mondrian if fitted.conformal_ else None,
        "tta": settings["tta"],
        "classes": list(fitted.classes_),
        "members": list(fitted.members_),
        "package_version": __version__,
    }


def _accepted_accuracy(fitted: Ensemble, refer: str, asked: float | None) -> float | None:
    """The selective rule's guaranteed accepted accuracy (``None`` under the other rules)."""
    if refer != "selective":
        return None
    return fitted.selective_[fitted.combiner_].resolve_target(asked)


def iter_files(folder: Path) -> Iterator[Path]:
    """Every regular file under ``folder``, in sorted order; folder links are not followed."""
    for directory, subdirs, names in os.walk(folder, followlinks=False):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            if name not in SYSTEM_FILES and path.is_file():
                yield path


def write_predictions(predictions: Predictions, out: Path | None, as_json: bool) -> Path:
    """Write CSV (or JSON) atomically: an interrupted run leaves the complete file or none.

    Args:
        predictions: what :func:`predict_folder` returned.
        out: the file; ``None`` = ``predictions.json`` (JSON) or ``predictions.csv``.
        as_json: JSON with a header instead of CSV.

    Returns:
        The file written.
    """
    out = default_output(out, as_json)
    write_rows(
        predictions.rows,
        out,
        columns=predictions.columns(),
        header=predictions.header,
        as_json=as_json,
    )
    return out
