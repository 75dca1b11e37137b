"""A run directory: the manifest, the saved split, and access to each split's images.

::

    runs/NAME/manifest.json      format version, classes, data fingerprint, pipeline, versions
    runs/NAME/audit.json         the audit the split was cleaned with
    runs/NAME/split.json         the split (see ensemble.split)
    runs/NAME/members/<member>/  one trained member (see ensemble.training)

Every later command opens the run with :func:`open_run`, which refuses a run written by another
format version or made from other data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ensemble import FORMAT_VERSION, __version__
from ensemble.data import Dataset
from ensemble.errors import RunError
from ensemble.fileio import atomic_write_json, atomic_write_text
from ensemble.specs import PipelineSpec
from ensemble.split import Split, load_split, make_split, save_split


@dataclass
class Run:
    """An opened run directory with its data and split."""

    root: Path
    dataset: Dataset
    split: Split
    manifest: dict
    _cache: dict = field(default_factory=dict, repr=False)

    def member_dir(self, name: str) -> Path:
        """Directory of member ``name``."""
        return self.root / "members" / name

    def labels(self, split_name: str) -> np.ndarray:
        """Class index of every image of one split (no pixels decoded)."""
        return self.dataset.labels[self.split.positions(self.dataset, split_name)]

    def images(self, split_name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded ``(images, labels)`` of one split at ``size`` px, cached per size.

        Raises:
            RunError: an image of the split can no longer be decoded.
        """
        if size not in self._cache:
            images, _, failures = self.dataset.load_images(size, description=f"decoding {size}px")
            used = {i for name in ("train", "val", "blend", "test") for i in self.split.ids(name)}
            broken = [f for f in failures if f.id in used]
            if broken:
                raise RunError(
                    f"image {broken[0].id} of the split cannot be read: {broken[0].reason}"
                )
            self._cache[size] = images
        positions = self.split.positions(self.dataset, split_name)
        return self._cache[size][positions], self.dataset.labels[positions]


def create_or_open_run(root: Path, dataset: Dataset, pipeline: PipelineSpec) -> Run:
    """Open the run at ``root``, or create it: audit (if the pipeline cleans), split, manifest.

    Raises:
        RunError: the run exists but was made from other data, classes or format version.
    """
    root = Path(root)
    if (root / "manifest.json").is_file():
        return open_run(root, dataset)
    root.mkdir(parents=True, exist_ok=True)
    excluded: list[str] = []
    groups: list[list[str]] = []
    if pipeline.clean:
        from ensemble.audit import run_audit

        report = run_audit(dataset)
        atomic_write_text(root / "audit.json", report.to_json())
        excluded = sorted(report.excluded_ids())
        groups = report.groups
    split = make_split(dataset, groups, pipeline.fractions, pipeline.split_seed, excluded)
    save_split(split, dataset, root / "split.json")
    manifest = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "pipeline": pipeline.name,
        "classes": list(dataset.classes),
        "data_source": str(dataset.root),
        "data_fingerprint": dataset.fingerprint(),
        "members": [member.name for member in pipeline.members],
    }
    atomic_write_json(root / "manifest.json", manifest)  # last: marks the run as created
    return Run(root, dataset, split, manifest)


def read_manifest(root: Path) -> dict:
    """Read a run's manifest, refusing a missing one or one of another format version.

    Raises:
        RunError: ``root`` is not a run directory, or was written by another format version.
    """
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise RunError(
            f"{root} is not a run directory (no manifest.json). Run train-members first."
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RunError(
            f"run {root} was written by format version {manifest.get('format_version')} "
            f"(blood-ensemble {manifest.get('package_version')}); this version reads "
            f"{FORMAT_VERSION}. Start a new run directory."
        )
    return manifest


def open_run(root: Path, dataset: Dataset) -> Run:
    """Open an existing run and check that ``dataset`` is the data it was made from."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest["classes"] != list(dataset.classes):
        raise RunError(
            f"run {root} has classes {manifest['classes']} but the data has {dataset.classes}"
        )
    split = load_split(root / "split.json", dataset)
    return Run(root, dataset, split, manifest)
