"""``ensemble audit``: find what should not be trained on, and write a clean manifest.

It finds unreadable files, exact and near duplicates, label conflicts, non-cell pictures and
colour casts.

The audit never modifies the user's files. Its result, :class:`AuditReport`, is also what the
split uses to keep every duplicate group inside one split.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ensemble.core.errors import ConfigError
from ensemble.core.fileio import atomic_write_text
from ensemble.core.progress import stage
from ensemble.data.duplicates import UnionFind, exact_groups, near_duplicate_pairs
from ensemble.data.outliers import appearance_features, colour_cast_scores, non_cell_scores
from ensemble.data.sources import Dataset

#: Finding kinds, in the order the report lists them.
KINDS = (
    "unreadable",
    "label_conflict",
    "exact_duplicate",
    "near_duplicate",
    "non_cell",
    "colour_cast",
)


BLANK_STD = 3.0  # max per-channel pixel standard deviation (0-255) of a structureless image


@dataclass(frozen=True)
class AuditThresholds:
    """Decision thresholds of the audit; defaults measured on the PBC data (results/audit.md)."""

    near_duplicate: float = 0.93  # min shift-searched correlation of 32 px thumbnails
    colour_cast: float = 0.07  # max background chromaticity distance from the data's median
    non_cell: float = 12.0  # max robust z-score of the appearance Mahalanobis distance
    size: int = 96  # side length the images are compared at

    def __post_init__(self) -> None:
        if not 0.0 < self.near_duplicate <= 1.0:
            raise ConfigError(
                f"near-duplicate threshold must be in (0, 1]. Received: {self.near_duplicate}"
            )
        if self.colour_cast <= 0:
            raise ConfigError(f"colour-cast threshold must be > 0. Received: {self.colour_cast}")
        if self.non_cell <= 0:
            raise ConfigError(f"non-cell threshold must be > 0. Received: {self.non_cell}")
        if self.size < 32:
            raise ConfigError(f"audit image size must be >= 32. Received: {self.size}")


@dataclass(frozen=True)
class Finding:
    """One problem: its kind, the images involved and a human-readable detail."""

    kind: str
    ids: tuple[str, ...]
    detail: str
    score: float | None = None


@dataclass
class AuditReport:
    """Everything the audit found.

    Attributes:
        source: the data source that was audited.
        n_images: files considered (readable or not).
        classes: class names.
        findings: every finding, ordered by kind then by first id.
        groups: duplicate groups (exact or near), each a sorted list of ids.
        thresholds: the thresholds used.
    """

    source: str
    n_images: int
    classes: list[str]
    findings: list[Finding]
    groups: list[list[str]]
    thresholds: AuditThresholds
    labels: dict[str, str] = field(default_factory=dict, repr=False)

    def counts(self) -> dict[str, int]:
        """Number of images involved in each kind of finding."""
        counts = Counter()
        for finding in self.findings:
            counts[finding.kind] += len(finding.ids)
        return {kind: counts.get(kind, 0) for kind in KINDS}

    def excluded_ids(self) -> set[str]:
        """Ids a clean manifest leaves out.

        Unreadable, non-cell and colour-cast images; every copy of a group whose labels
        conflict (no copy can be trusted); all but the first copy of a same-label group.
        """
        excluded = set()
        for finding in self.findings:
            if finding.kind in ("unreadable", "non_cell", "colour_cast", "label_conflict"):
                excluded.update(finding.ids)
        for group in self.groups:
            excluded.update(group[1:])
        return excluded

    def to_json(self) -> str:
        """The report as deterministic JSON (same data and thresholds → same bytes)."""
        payload = {
            "source": self.source,
            "n_images": self.n_images,
            "classes": self.classes,
            "thresholds": asdict(self.thresholds),
            "counts": self.counts(),
            "n_excluded_by_clean_manifest": len(self.excluded_ids()),
            "findings": [asdict(finding) | {"ids": list(finding.ids)} for finding in self.findings],
            "duplicate_groups": self.groups,
        }
        return json.dumps(payload, indent=1, sort_keys=True) + "\n"

    def summary(self, limit: int = 5) -> str:
        """A readable table of counts, then the first ``limit`` findings of each kind."""
        lines = [f"Audit of {self.source}: {self.n_images} files, {len(self.classes)} classes"]
        lines.append(f"{'finding':<18}{'images':>8}")
        for kind, count in self.counts().items():
            lines.append(f"{kind:<18}{count:>8}")
        lines.append(f"{'clean manifest':<18}{self.n_images - len(self.excluded_ids()):>8}  kept")
        for kind in KINDS:
            of_kind = [finding for finding in self.findings if finding.kind == kind]
            for finding in of_kind[:limit]:
                shown = ", ".join(finding.ids[:4]) + (" …" if len(finding.ids) > 4 else "")
                lines.append(f"  {kind}: {shown} — {finding.detail}")
            if len(of_kind) > limit:
                lines.append(f"  {kind}: … and {len(of_kind) - limit} more (see --json)")
        return "\n".join(lines)

    def write_clean_manifest(self, path: Path) -> int:
        """Write a ``path,label`` CSV of the kept images; returns how many rows it has."""
        excluded = self.excluded_ids()
        kept = sorted(
            (image_id, label) for image_id, label in self.labels.items() if image_id not in excluded
        )
        lines = ["path,label"]
        for image_id, label in kept:
            lines.append(_csv_row(image_id, label))
        atomic_write_text(path, "\n".join(lines) + "\n")
        return len(kept)


def run_audit(
    dataset: Dataset, thresholds: AuditThresholds | None = None, seed: int = 0
) -> AuditReport:
    """Audit a data set.

    Args:
        dataset: the images to audit (see :func:`ensemble.data.sources.load_dataset`).
        thresholds: decision thresholds; defaults suit 96 px PBC-like images.
        seed: seeds the non-cell model's subsample (same seed → same report).

    Returns:
        The report. Nothing on disk is changed. Each stage prints one line on stderr (see
        :mod:`ensemble.core.progress`).

    Example:
        >>> report = run_audit(load_dataset("../shared/data/pbc96"))  # doctest: +SKIP
        >>> print(report.summary())  # doctest: +SKIP
    """
    thresholds = thresholds or AuditThresholds()
    records = dataset.records
    stage("audit", f"decoding {len(records)} images at {thresholds.size} px")
    images, pixel_hashes, failures = dataset.load_images(thresholds.size, description="decoding")
    findings = [Finding("unreadable", (item.id,), item.reason) for item in dataset.skipped]
    findings += [Finding("unreadable", (item.id,), item.reason) for item in failures]
    readable = np.array([bool(digest) for digest in pixel_hashes])
    labels = {record.id: record.label for record in records}
    for item in dataset.skipped:
        labels.setdefault(item.id, "")

    union, duplicate_findings = _duplicates(records, images, pixel_hashes, readable, thresholds)
    findings += duplicate_findings
    groups = union.groups()
    # Score each distinct picture once: hundreds of copies of one non-cell image must not
    # pull the model of a typical image towards it.
    distinct = np.array([i for i in range(len(records)) if readable[i] and union.find(i) == i])
    if len(distinct):
        stage("audit", f"non-cell pictures and colour casts among {len(distinct)} pictures")
        findings += _non_cells(records, images, union, distinct, thresholds, seed)
        findings += _colour_casts(records, images, readable, thresholds)
    findings.sort(key=lambda finding: (KINDS.index(finding.kind), finding.ids))
    return AuditReport(
        source=str(dataset.root),
        n_images=len(records) + len(dataset.skipped),
        classes=list(dataset.classes),
        findings=findings,
        groups=[[records[i].id for i in group] for group in groups],
        thresholds=thresholds,
        labels=labels,
    )


def _duplicates(records, images, pixel_hashes, readable, thresholds) -> tuple[UnionFind, list]:
    """Exact and near-duplicate groups (joined in one union-find), and their findings.

    Near duplicates are searched among one representative per exact group; a group whose
    images carry more than one label is also a label conflict.
    """
    union = UnionFind(len(records))
    exact = exact_groups(pixel_hashes)
    for group in exact:
        for member in group[1:]:
            union.union(group[0], member)
    representatives = np.array(
        [i for i in range(len(records)) if readable[i] and union.find(i) == i], dtype=np.int64
    )
    stage("audit", f"near duplicates among {len(representatives)} distinct images")
    near = near_duplicate_pairs(images[representatives], thresholds.near_duplicate)
    for i, j, _ in near:
        union.union(int(representatives[i]), int(representatives[j]))
    exact_roots = {union.find(group[0]) for group in exact}
    near_roots = {union.find(int(representatives[i])) for i, _, _ in near}
    findings = []
    for group in union.groups():
        ids = tuple(records[i].id for i in group)
        root = union.find(group[0])
        group_labels = sorted({records[i].label for i in group})
        kind = "near_duplicate" if root in near_roots else "exact_duplicate"
        detail = f"{len(group)} copies"
        if kind == "near_duplicate":
            exact_note = ", some identical" if root in exact_roots else ""
            detail += f" (re-encoded, resized or shifted{exact_note})"
        findings.append(Finding(kind, ids, detail))
        if len(group_labels) > 1:
            findings.append(
                Finding("label_conflict", ids, f"the same image labelled {', '.join(group_labels)}")
            )
    return union, findings


def _non_cells(records, images, union, distinct, thresholds, seed) -> list:
    """Pictures unlike a stained smear (robust z-score), and blank ones; one finding per group.

    A picture with (almost) no structure, such as a flat colour, is never a smear, however
    typical its colour; the appearance model alone can mistake it for a colour cast.
    """
    z = non_cell_scores(appearance_features(images[distinct]), seed=seed)
    spatial_std = images[distinct].reshape(len(distinct), -1, 3).std(axis=1).max(axis=1)
    blank = spatial_std < BLANK_STD
    members = _members_by_root(union, len(records))
    findings = []
    for position in np.flatnonzero((z > thresholds.non_cell) | blank):
        root = int(distinct[position])
        ids = tuple(records[i].id for i in members[root])
        detail = (
            "blank: no structure"
            if blank[position]
            else f"not like a stained smear (robust z={z[position]:.1f})"
        )
        findings.append(Finding("non_cell", ids, detail, round(float(z[position]), 3)))
    return findings


def _colour_casts(records, images, readable, thresholds) -> list:
    """Strong colour casts of the background, on every readable image.

    Non-cell ones too: a strongly cast cell can also look unlike a smear, and then both
    findings are true.
    """
    candidates = np.flatnonzero(readable)
    if not len(candidates):
        return []
    distance, direction = colour_cast_scores(images[candidates])
    return [
        Finding(
            "colour_cast",
            (records[int(candidates[position])].id,),
            f"strong {direction[position]} cast (background chromaticity "
            f"{distance[position]:.3f} from the median)",
            round(float(distance[position]), 4),
        )
        for position in np.flatnonzero(distance > thresholds.colour_cast)
    ]


def _members_by_root(union: UnionFind, n: int) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {}
    for item in range(n):
        members.setdefault(union.find(item), []).append(item)
    return members


def _csv_row(image_id: str, label: str) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([image_id, label])
    return buffer.getvalue()
