"""``ensemble predict DIR``: classify every image under a folder with a fitted run.

Each readable image gets its predicted class, the combiner's confidence and probability per
class, every member's vote, the members' agreement (share of members voting for the
prediction), its conformal prediction set at miss rate ``alpha``, its out-of-distribution score
and an ``abstain`` flag — "refer to a human" — by one of two rules (:mod:`ensemble.referral`):
``conformal`` (the default once the run is calibrated: refer unless the set is exactly the
predicted class and the OOD score is under its threshold) or ``agreement`` (agreement or
confidence under its minimum). Unreadable files get a row with an empty prediction and the
reason. The images go through :class:`ensemble.Ensemble`, the public Python API, so the numbers
are the API's. Output is written atomically: CSV, or JSON with a header (run, combiner, alpha,
rule) and rows of real numbers, booleans and nulls. Nothing is loaded through pickle:
``.keras`` with ``safe_mode``, XGBoost's own format, JSON and ``.npy``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble import __version__
from ensemble.api import Ensemble
from ensemble.data import SYSTEM_FILES
from ensemble.errors import ConfigError
from ensemble.fileio import atomic_write_text
from ensemble.fitted import Decisions, FittedEnsemble
from ensemble.images import UnreadableImage, crop_and_resize, decode_image
from ensemble.progress import progress

FIXED_COLUMNS = ("path", "prediction", "confidence", "agreement", "abstain", "error")
#: After the fixed columns: the referral's evidence. Then ``proba_<class>``, ``vote_<member>``.
REFERRAL_COLUMNS = ("prediction_set", "set_size", "ood_score", "out_of_distribution")
#: Decimals of each number in the CSV (JSON keeps every digit).
_CSV_DECIMALS = {"confidence": 4, "agreement": 3, "ood_score": 4}
_PROBABILITY_DECIMALS = 6


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
        return [
            *FIXED_COLUMNS,
            *REFERRAL_COLUMNS,
            *(f"proba_{name}" for name in self.classes),
            *(f"vote_{name}" for name in self.members),
        ]

    def to_csv(self) -> str:
        """The rows as CSV text (``true``/``false``, empty for None, rounded numbers)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {key: _csv_value(key, value) for key, value in row.items()} for row in self.rows
        )
        return buffer.getvalue()

    def to_json(self) -> str:
        """``{"header": {...}, "predictions": [rows]}``: numbers, booleans and nulls as such."""
        header = self.header | {"n_predicted": self.n_predicted, "n_skipped": self.n_skipped}
        return json.dumps({"header": header, "predictions": self.rows}, indent=1) + "\n"


def predict_folder(
    folder: Path,
    run_root: Path,
    *,
    combiner: str | None = None,
    tta: bool = False,
    batch_size: int = 256,
    min_agreement: float = 0.5,
    min_confidence: float = 0.5,
    alpha: float | None = None,
    refer: str | None = None,
    ensemble: Ensemble | FittedEnsemble | None = None,
) -> Predictions:
    """Predict every file under ``folder`` (recursively); see the module docstring.

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
        refer: ``"conformal"`` or ``"agreement"`` (see the module docstring); ``None`` =
            conformal when the run is calibrated for ``alpha``, else agreement (with a warning).
        ensemble: an already loaded ensemble (``run_root`` and ``combiner`` are then ignored).

    Returns:
        One row per file; ``Predictions.seconds`` counts from the first file, after loading.

    Raises:
        ConfigError: the folder is missing or holds no files, a threshold or ``alpha`` is out
            of range, or ``refer`` is unknown.
        RunError: the run cannot be used (see :meth:`FittedEnsemble.load`), or ``refer`` is
            ``"conformal"`` on a run fitted before prediction sets.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"folder not found: {folder}")
    files = list_files(folder)
    if not files:
        raise ConfigError(f"no files found under {folder}")
    if ensemble is None:
        ensemble = Ensemble.load(run_root, combiner)
    elif isinstance(ensemble, FittedEnsemble):
        ensemble = Ensemble(ensemble)
    fitted = ensemble.fitted_
    settings = {
        "alpha": alpha,
        "refer": refer,
        "min_agreement": min_agreement,
        "min_confidence": min_confidence,
        "tta": tta,
        "batch_size": batch_size,
    }
    # Checked before any image is decoded.
    rule, resolved_alpha = fitted.referral_settings(alpha, refer, min_agreement, min_confidence)
    settings["refer"] = rule
    for warning in _warnings(fitted, tta, alpha, asked=refer, rule=rule):
        print(warning, file=sys.stderr)
    result = Predictions(
        fitted.members, list(fitted.classes), _header(fitted, resolved_alpha, rule, settings)
    )
    began = time.perf_counter()
    sizes = sorted({fitted.input_size(name) for name in fitted.members})
    chunk = max(batch_size, 1024)  # fewer, larger forward passes: less per-call overhead
    for batch, outcomes in _decoded_chunks(files, sizes, chunk):
        rows = [_row(result, path.relative_to(folder).as_posix()) for path in batch]
        good = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if isinstance(outcome, str):
                row["error"] = outcome
                print(f"skipped {row['path']}: {outcome}", file=sys.stderr)
            else:
                good.append((row, outcome))
        if good:
            images = {size: np.stack([outcome[size] for _, outcome in good]) for size in sizes}
            decisions = ensemble.decide(images, **settings)
            for index, (row, _) in enumerate(good):
                _fill_row(row, decisions, index, fitted)
        result.rows.extend(rows)
    result.seconds = time.perf_counter() - began
    return result


def _decoded_chunks(
    files: list[Path], sizes: list[int], chunk: int
) -> Iterator[tuple[list[Path], list[dict[int, np.ndarray] | str]]]:
    """Files in chunks, each decoded at every size (or the reason it cannot be).

    The next chunk is decoded in the background while the members run on the current one.
    """

    def decode(path: Path) -> dict[int, np.ndarray] | str:
        try:
            pixels = decode_image(path).pixels
        except UnreadableImage as error:
            return str(error)
        return {size: crop_and_resize(pixels, size) for size in sizes}

    chunks = [files[start : start + chunk] for start in range(0, len(files), chunk)]
    with ThreadPoolExecutor(max_workers=2) as pool:  # PIL decodes without holding the GIL
        upcoming = [pool.submit(decode, path) for path in chunks[0]]
        for number, batch in enumerate(progress(chunks, desc="predicting")):
            current = upcoming
            if number + 1 < len(chunks):
                upcoming = [pool.submit(decode, path) for path in chunks[number + 1]]
            yield batch, [future.result() for future in current]


def _row(result: Predictions, relative: str) -> dict:
    return {column: None for column in result.columns()} | {"path": relative}


def _fill_row(row: dict, decisions: Decisions, index: int, fitted: FittedEnsemble) -> None:
    """One image's values, as Python numbers, booleans and strings (None where unknown)."""
    classes = fitted.classes
    predicted = int(decisions.predictions[index])
    row["prediction"] = classes[predicted]
    row["confidence"] = float(decisions.confidence[index])
    row["agreement"] = float(decisions.agreement[index])
    row["abstain"] = bool(decisions.abstain[index])
    if decisions.sets is not None:
        members = np.flatnonzero(decisions.sets[index])
        row["prediction_set"] = "|".join(classes[k] for k in members)
        row["set_size"] = int(len(members))
    if decisions.ood_scores is not None:
        row["ood_score"] = float(decisions.ood_scores[index])
        row["out_of_distribution"] = bool(decisions.out_of_distribution[index])
    for name, probability in zip(classes, decisions.probabilities[index], strict=True):
        row[f"proba_{name}"] = float(probability)
    for name, vote in zip(fitted.members, decisions.votes[:, index], strict=True):
        row[f"vote_{name}"] = classes[int(vote)]


def _header(fitted: FittedEnsemble, alpha: float | None, refer: str, settings: dict) -> dict:
    """What the JSON output says about how its rows were made."""
    return {
        "run": str(fitted.run.root),
        "combiner": fitted.combiner,
        "alpha": alpha,
        "refer": refer,
        "min_agreement": settings["min_agreement"],
        "min_confidence": settings["min_confidence"],
        "ood_threshold": fitted.ood_threshold,
        "ood_method": fitted.ood.method if fitted.ood is not None else None,
        "conformal_score": fitted.conformal[fitted.combiner].score if fitted.conformal else None,
        "mondrian": fitted.conformal[fitted.combiner].mondrian if fitted.conformal else None,
        "tta": settings["tta"],
        "classes": list(fitted.classes),
        "members": list(fitted.members),
        "package_version": __version__,
    }


def _warnings(
    fitted: FittedEnsemble, tta: bool, alpha: float | None, *, asked: str | None, rule: str
) -> list[str]:
    """One line each: TTA mismatch, a calibration too small, the rule it fell back to."""
    lines = [fitted.tta_warning(tta)]
    if rule == "conformal":
        lines.append(fitted.calibration_warning(alpha))
    elif asked is None and not fitted.conformal:
        lines.append(
            f"note: run {fitted.run.root} was fitted before prediction sets: abstain follows "
            "member agreement and confidence (run `ensemble fit-stacker` again for sets)"
        )
    elif asked is None:
        lines.append(fitted.calibration_warning(alpha))
        lines.append(
            "warning: so abstain follows member agreement and confidence (--refer conformal "
            "refers every image instead)"
        )
    return [line for line in lines if line]


def _csv_value(column: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        decimals = _CSV_DECIMALS.get(column, _PROBABILITY_DECIMALS)
        return f"{value:.{decimals}f}"
    return str(value)


def list_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder``, sorted; folder links are not followed (no loops)."""
    found = []
    for directory, subdirs, names in os.walk(folder, followlinks=False):
        subdirs.sort()
        for name in sorted(names):
            path = Path(directory) / name
            if name not in SYSTEM_FILES and path.is_file():
                found.append(path)
    return found


def write_predictions(predictions: Predictions, out: Path | None, as_json: bool) -> Path:
    """Write CSV (or JSON) atomically: an interrupted run leaves the complete file or none.

    Args:
        predictions: what :func:`predict_folder` returned.
        out: the file; ``None`` = ``predictions.json`` (JSON) or ``predictions.csv``.
        as_json: JSON with a header instead of CSV.

    Returns:
        The file written.
    """
    out = (
        Path(out) if out is not None else Path("predictions.json" if as_json else "predictions.csv")
    )
    atomic_write_text(out, predictions.to_json() if as_json else predictions.to_csv())
    return out
