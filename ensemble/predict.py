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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble.artifacts import load_keras_model
from ensemble.combiners import TemperatureScaling, combiner_from_json
from ensemble.data import SYSTEM_FILES
from ensemble.errors import ConfigError
from ensemble.features import average_over_views, feature_model
from ensemble.fileio import atomic_write_text
from ensemble.fitting import VOTERS, load_selection
from ensemble.images import UnreadableImage, crop_and_resize, decode_image
from ensemble.progress import progress
from ensemble.run import read_manifest

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


class Predictor:
    """A fitted run, loaded once, that classifies batches of decoded images.

    Args:
        run_root: run directory with trained members and fitted combiners.
        combiner: ``stack``, ``hard``, ``soft``, ``weighted``, ``greedy``, ``ovr`` or a member
            name; ``None`` = the default chosen on ``blend`` by fit-stacker.
        tta: average each member over the 8 dihedral views.
    """

    def __init__(self, run_root: Path, combiner: str | None = None, tta: bool = False) -> None:

        self.root = Path(run_root)
        self.classes = read_manifest(self.root)["classes"]
        selection = load_selection(self.root)
        self.members = selection["members"]
        choices = [*VOTERS, "stack", *self.members]
        ovr = [m for m in self.members if _member_kind(self.root, m) == "ovr"]
        if ovr:
            choices.append("ovr")
        self.combiner = combiner or selection["default_combiner"]
        if self.combiner not in choices:
            raise ConfigError(f"unknown combiner {self.combiner!r}. Choose from {choices}")
        if self.combiner == "ovr":
            self.combiner = ovr[0]
        self.tta = tta
        self.models = {
            name: load_keras_model(self.root / "members" / name / "model.keras")
            for name in self.members
        }
        temperatures = json.loads((self.root / "combiners" / "temperatures.json").read_text())
        self.scaler = TemperatureScaling()
        self.scaler.temperatures_ = np.array(temperatures["temperatures"])
        self.voter = None
        self.stacker = None
        if self.combiner in VOTERS:
            text = (self.root / "combiners" / f"{self.combiner}.json").read_text()
            self.voter = combiner_from_json(text)
        elif self.combiner == "stack":
            from ensemble.fitting import member_hashes
            from ensemble.stacker import Stacker

            self.stacker = Stacker.load(
                self.root / "combiners", member_hashes(self.root, self.members)
            )
        self.forward = {name: feature_model(model) for name, model in self.models.items()}
        self.sizes = {name: model.input_shape[1] for name, model in self.models.items()}

    def _forward(self, name: str, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """One padded forward pass of member ``name``: ``[probabilities, pooled features]``."""
        padded = _pad_to_multiple(images, batch_size)
        outputs = self.forward[name].predict(padded, batch_size=batch_size, verbose=0)
        return [output[: len(images)] for output in outputs]

    def predict_arrays(self, images: dict[int, np.ndarray], batch_size: int = 256) -> dict:
        """Classify images already decoded at each member's size (``size → (N, S, S, 3)``).

        Returns:
            ``{"probabilities": (N, K), "votes": (members, N), "member_probabilities": ...}``.
        """
        probabilities, features = [], []
        for name in self.members:
            member_probabilities, member_features = average_over_views(
                lambda view, name=name: self._forward(name, view, batch_size),
                images[self.sizes[name]],
                self.tta,
            )
            probabilities.append(member_probabilities)
            features.append(member_features.astype(np.float32))
        stack = self.scaler.transform(np.stack(probabilities))
        if self.voter is not None:
            combined = self.voter.predict_proba(stack)
        elif self.stacker is not None:
            combined = self.stacker.predict_proba(features, probabilities)
        else:
            combined = stack[self.members.index(self.combiner)]
        return {
            "probabilities": combined,
            "votes": stack.argmax(axis=2),
            "member_probabilities": stack,
        }


def _pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    """Pad a batch with blank images to a multiple of ``multiple`` rows.

    Every forward pass then sees one batch shape, so TensorFlow traces the model once per
    process instead of once per odd-sized last batch (a trace of ResNet50 costs seconds).
    """
    missing = -len(images) % multiple
    if not missing:
        return images
    return np.concatenate([images, np.zeros((missing, *images.shape[1:]), images.dtype)])


def predict_folder(
    folder: Path,
    run_root: Path,
    *,
    combiner: str | None = None,
    tta: bool = False,
    batch_size: int = 256,
    min_agreement: float = 0.5,
    min_confidence: float = 0.5,
    predictor: Predictor | None = None,
) -> Predictions:
    """Predict every file under ``folder`` (recursively); see the module docstring.

    ``predictor`` reuses an already loaded run (``run_root``, ``combiner`` and ``tta`` are then
    ignored). ``Predictions.seconds`` counts from the first file, after the run is loaded.

    Raises:
        ConfigError: the folder is missing or holds no files, or a threshold is out of range.
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
    predictor = predictor or Predictor(run_root, combiner, tta)
    result = Predictions(predictor.members)
    began = time.perf_counter()
    sizes = sorted(set(predictor.sizes.values()))
    chunk = max(batch_size, 1024)  # fewer, larger forward passes: less per-call overhead

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
            if number + 1 < len(chunks):  # decode the next chunk while the members run
                upcoming = [pool.submit(decode, path) for path in chunks[number + 1]]
            decoded: dict[int, list[np.ndarray]] = {size: [] for size in sizes}
            good: list[int] = []
            rows = []
            for position, (path, future) in enumerate(zip(batch, current, strict=True)):
                outcome = future.result()
                relative = path.relative_to(folder).as_posix()
                row = {column: "" for column in result.columns()} | {"path": relative}
                if isinstance(outcome, str):
                    row["error"] = outcome
                    print(f"skipped {relative}: {outcome}", file=sys.stderr)
                else:
                    for size in sizes:
                        decoded[size].append(outcome[size])
                    good.append(position)
                rows.append(row)
            if good:
                arrays = {size: np.stack(decoded[size]) for size in sizes}
                outcome = predictor.predict_arrays(arrays, batch_size)
                for index, position in enumerate(good):
                    _fill_row(
                        rows[position], outcome, index, predictor, min_agreement, min_confidence
                    )
            result.rows.extend(rows)
    result.seconds = time.perf_counter() - began
    return result


def _fill_row(row, outcome, index, predictor, min_agreement, min_confidence) -> None:
    probabilities = outcome["probabilities"][index]
    predicted = int(probabilities.argmax())
    votes = outcome["votes"][:, index]
    agreement = float((votes == predicted).mean())
    confidence = float(probabilities[predicted])
    row["prediction"] = predictor.classes[predicted]
    row["confidence"] = f"{confidence:.4f}"
    row["agreement"] = f"{agreement:.3f}"
    row["abstain"] = str(agreement < min_agreement or confidence < min_confidence).lower()
    for name, vote in zip(predictor.members, votes, strict=True):
        row[f"vote_{name}"] = predictor.classes[int(vote)]


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


def _member_kind(root: Path, name: str) -> str:
    spec = root / "members" / name / "spec.json"
    return json.loads(spec.read_text()).get("kind", "cnn") if spec.is_file() else "cnn"
