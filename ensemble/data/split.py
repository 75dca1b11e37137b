"""Leak-free, stratified, seeded split into train / val / blend / test, saved as JSON.

* ``train`` fits the members, ``val`` early-stops and calibrates them, ``blend`` fits voting
  weights and the stacker, ``test`` is only for reports.
* Every duplicate group (exact or near copies, from the audit) lands in one split, so a copy of
  a training image never inflates a test score.
* The file records each image's id, content hash, label and split, and a fingerprint of the
  data; :func:`load_split` refuses a split whose data changed underneath it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.core.errors import ConfigError, RunError
from ensemble.core.fileio import atomic_write_json
from ensemble.core.progress import stage
from ensemble.core.version import FORMAT_VERSION
from ensemble.data.sources import Dataset

SPLITS = ("train", "val", "blend", "test")
EXCLUDED = "excluded"  # split name of images the audit keeps out of every split
DEFAULT_FRACTIONS = {"train": 0.70, "val": 0.10, "blend": 0.10, "test": 0.10}


@dataclass(frozen=True)
class Split:
    """The split of a data set: ``assignment[id] = split name``."""

    assignment: dict[str, str]
    seed: int
    fractions: dict[str, float]
    fingerprint: str

    def ids(self, name: str) -> list[str]:
        """Sorted ids of one split."""
        if name not in (*SPLITS, EXCLUDED):
            raise ConfigError(f"unknown split {name!r}. Choose from {list(SPLITS)}")
        return sorted(image_id for image_id, split in self.assignment.items() if split == name)

    def positions(self, dataset: Dataset, name: str) -> np.ndarray:
        """Positions in ``dataset.records`` of the images in split ``name``."""
        return np.array(
            [
                i
                for i, record in enumerate(dataset.records)
                if self.assignment.get(record.id) == name
            ],
            dtype=np.int64,
        )


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    """Validate split fractions: all four splits, each in [0, 1), summing to 1."""
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise ConfigError(f"unknown split name {unknown[0]!r}. Valid names: {list(SPLITS)}")
    resolved = {name: float(fractions.get(name, 0.0)) for name in SPLITS}
    for name, value in resolved.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"split fraction {name}={value} must be in [0, 1)")
    total = sum(resolved.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1. Received: {resolved} (sum {total:.4f})")
    if resolved["train"] == 0.0:
        raise ConfigError("split fraction train must be > 0")
    return resolved


def make_split(
    dataset: Dataset,
    groups: Sequence[Sequence[str]] = (),
    fractions: dict[str, float] | None = None,
    seed: int = 0,
    excluded: Sequence[str] = (),
) -> Split:
    """Assign every image to a split, keeping duplicate groups together.

    Groups are dealt in a seeded random order (largest first) to the split that is furthest
    below its target count for the group's label, which stratifies by class while never
    cutting a group.

    Args:
        dataset: the images.
        groups: duplicate groups as lists of ids (``AuditReport.groups``).
        fractions: split name → fraction; default 0.70 / 0.10 / 0.10 / 0.10.
        seed: the same data, groups and seed give the same split.
        excluded: ids to keep out of every split (the audit's findings); they are saved with
            split ``"excluded"`` so the file still accounts for every image.

    Returns:
        The split.

    Over 60 lines: the stratified group split, step by step, is one algorithm.
    """
    fractions = check_fractions(fractions or DEFAULT_FRACTIONS)
    excluded_set = set(excluded)
    label_of = {r.id: r.label for r in dataset.records if r.id not in excluded_set}
    grouped: set[str] = set()
    units: list[list[str]] = []
    for group in groups:
        members = sorted(
            image_id for image_id in group if image_id in label_of and image_id not in grouped
        )
        if members:
            units.append(members)
            grouped.update(members)
    stage(
        "split",
        f"{len(label_of)} images into {', '.join(SPLITS)} "
        f"({sum(len(unit) > 1 for unit in units)} duplicate groups kept together, "
        f"{len(dataset.records) - len(label_of)} excluded)",
    )
    units += [[image_id] for image_id in sorted(label_of) if image_id not in grouped]

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(units))
    order = sorted(order, key=lambda index: -len(units[index]))  # stable: big groups first
    class_totals: dict[str, int] = {}
    for label in label_of.values():
        class_totals[label] = class_totals.get(label, 0) + 1
    filled = {(name, label): 0 for name in SPLITS for label in class_totals}
    assignment: dict[str, str] = {
        image_id: EXCLUDED for image_id in sorted(excluded_set & {r.id for r in dataset.records})
    }
    for index in order:
        unit = units[index]
        label = max(
            sorted({label_of[i] for i in unit}), key=lambda lb: sum(label_of[i] == lb for i in unit)
        )
        deficits = [
            fractions[name] * class_totals[label] - filled[(name, label)] for name in SPLITS
        ]
        chosen = SPLITS[int(np.argmax(deficits))]
        for image_id in unit:
            assignment[image_id] = chosen
            filled[(chosen, label_of[image_id])] += 1
    return Split(assignment, seed, fractions, dataset.fingerprint())


def save_split(split: Split, dataset: Dataset, path: Path) -> None:
    """Write the split as JSON; the same split and data give the same bytes."""
    records = [
        {"id": r.id, "hash": r.content_hash, "label": r.label, "split": split.assignment[r.id]}
        for r in sorted(dataset.records, key=lambda item: item.id)
    ]
    atomic_write_json(
        path,
        {
            "format_version": FORMAT_VERSION,
            "seed": split.seed,
            "fractions": split.fractions,
            "data_fingerprint": split.fingerprint,
            "classes": list(dataset.classes),
            "counts": {name: len(split.ids(name)) for name in (*SPLITS, EXCLUDED)},
            "records": records,
        },
    )


def load_split(path: Path, dataset: Dataset) -> Split:
    """Read a saved split and check that ``dataset`` is the data it was made from.

    Raises:
        RunError: the file is from another format version, or images were added, removed,
            changed or relabelled since the split was made (the message counts each).
    """
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(f"cannot read split file {path}: {error}") from None
    if payload.get("format_version") != FORMAT_VERSION:
        raise RunError(
            f"split file {path} has format version {payload.get('format_version')}, this "
            f"version of blood-ensemble reads {FORMAT_VERSION}. Start a new run directory."
        )
    saved = {row["id"]: (row["hash"], row["label"]) for row in payload["records"]}
    current = {record.id: (record.content_hash, record.label) for record in dataset.records}
    if payload["data_fingerprint"] != dataset.fingerprint():
        added = sorted(set(current) - set(saved))
        removed = sorted(set(saved) - set(current))
        changed = sorted(i for i in set(saved) & set(current) if saved[i] != current[i])
        example = (added or removed or changed or ["?"])[0]
        raise RunError(
            f"the data changed since the split in {path} was made: {len(added)} added, "
            f"{len(removed)} removed, {len(changed)} changed or relabelled (e.g. {example}). "
            "Use the original data, or start a new run directory to make a new split."
        )
    assignment = {row["id"]: row["split"] for row in payload["records"]}
    return Split(assignment, payload["seed"], payload["fractions"], payload["data_fingerprint"])


def trained_on_hashes(path: Path) -> set[str]:
    """Content hashes of the images a run trained or fitted on (train, val and blend splits).

    Used to warn when a "separate" evaluation set shares files with them.
    """
    payload = json.loads(Path(path).read_text())
    return {row["hash"] for row in payload["records"] if row["split"] in ("train", "val", "blend")}
