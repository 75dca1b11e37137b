"""``ensemble predict DIR``: classify every image under a folder with a fitted run.

Each readable image gets its predicted class, the combiner's confidence, every member's vote,
the members' agreement (share of members voting for the prediction) and an ``abstain`` flag when
agreement or confidence is under its threshold — meaning "refer to a human", not a statistical
interval. Unreadable files get a row with an empty prediction and the reason. Output is written
atomically. Nothing is loaded through pickle: ``.keras`` with ``safe_mode``, XGBoost's own
format, JSON and ``.npy``.
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

from ensemble.data import SYSTEM_FILES
from ensemble.errors import ConfigError
from ensemble.fileio import atomic_write_text
from ensemble.fitted import FittedEnsemble
from ensemble.images import UnreadableImage, crop_and_resize, decode_image
from ensemble.progress import progress

FIXED_COLUMNS = ("path", "prediction", "confidence", "agreement", "abstain", "error")


@dataclass
class Predictions:
    """Rows of a prediction run, in file order, and timing."""

    members: list[str]
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
        """CSV column order: fixed columns, then one ``vote_<member>`` per member."""
        return [*FIXED_COLUMNS, *(f"vote_{name}" for name in self.members)]

    def to_csv(self) -> str:
        """The rows as CSV text."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def to_json(self) -> str:
        """The rows as a JSON array."""
        return json.dumps(self.rows, indent=1) + "\n"


def predict_folder(
    folder: Path,
    run_root: Path,
    *,
    combiner: str | None = None,
    tta: bool = False,
    batch_size: int = 256,
    min_agreement: float = 0.5,
    min_confidence: float = 0.5,
    ensemble: FittedEnsemble | None = None,
) -> Predictions:
    """Predict every file under ``folder`` (recursively); see the module docstring.

    Args:
        folder: the images, searched recursively (folder links are not followed).
        run_root: run directory with trained members and fitted combiners.
        combiner: a combiner, ``ovr`` or a member name; ``None`` = the run's default.
        tta: average each member over the 8 dihedral views.
        batch_size: images per forward pass.
        min_agreement: abstain under this share of members voting for the prediction.
        min_confidence: abstain under this combiner probability.
        ensemble: an already loaded ensemble (``run_root`` and ``combiner`` are then ignored).

    Returns:
        One row per file; ``Predictions.seconds`` counts from the first file, after loading.

    Raises:
        ConfigError: the folder is missing or holds no files, or a threshold is out of range.
        RunError: the run cannot be used (see :meth:`FittedEnsemble.load`).
    """
    for name, value in (("min_agreement", min_agreement), ("min_confidence", min_confidence)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1]. Received: {name}={value}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"folder not found: {folder}")
    files = list_files(folder)
    if not files:
        raise ConfigError(f"no files found under {folder}")
    ensemble = ensemble or FittedEnsemble.load(run_root, combiner)
    warning = ensemble.tta_warning(tta)
    if warning:
        print(warning, file=sys.stderr)
    result = Predictions(ensemble.members)
    began = time.perf_counter()
    sizes = sorted({ensemble.input_size(name) for name in ensemble.members})
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
            outputs = ensemble.member_outputs(images, tta=tta, batch_size=batch_size)
            probabilities = ensemble.combine(outputs)
            for index, (row, _) in enumerate(good):
                _fill_row(
                    row,
                    probabilities[index],
                    outputs.votes[:, index],
                    ensemble,
                    min_agreement,
                    min_confidence,
                )
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


def _row(result: Predictions, relative: str) -> dict[str, str]:
    return {column: "" for column in result.columns()} | {"path": relative}


def _fill_row(
    row: dict[str, str],
    probabilities: np.ndarray,
    votes: np.ndarray,
    ensemble: FittedEnsemble,
    min_agreement: float,
    min_confidence: float,
) -> None:
    predicted = int(probabilities.argmax())
    agreement = float((votes == predicted).mean())
    confidence = float(probabilities[predicted])
    row["prediction"] = ensemble.classes[predicted]
    row["confidence"] = f"{confidence:.4f}"
    row["agreement"] = f"{agreement:.3f}"
    row["abstain"] = str(agreement < min_agreement or confidence < min_confidence).lower()
    for name, vote in zip(ensemble.members, votes, strict=True):
        row[f"vote_{name}"] = ensemble.classes[int(vote)]


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


def write_predictions(predictions: Predictions, out: Path, as_json: bool) -> None:
    """Write CSV (or JSON) atomically: an interrupted run leaves the complete file or none."""
    atomic_write_text(out, predictions.to_json() if as_json else predictions.to_csv())
