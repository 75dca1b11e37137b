"""Exact and near-duplicate groups.

Exact duplicates share their decoded pixels (a byte copy or a lossless re-save). Near duplicates
are re-encoded, resized or slightly shifted copies: candidates come from two cheap descriptors
(a 32×32 grayscale thumbnail, and the low-frequency magnitude of its Fourier transform, which a
shift barely changes); each candidate pair is then verified by the best normalised
cross-correlation over small shifts. Measured on the 14,513 PBC images (results/audit.md):
clean neighbours rarely exceed 0.93, re-encoded, resized and shifted copies stay above 0.94.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ensemble.core.progress import progress_bar

THUMB = 32  # thumbnail side; 96 px images are averaged over 3×3 blocks
FFT_BLOCK = 8  # low-frequency block of the Fourier magnitude used as shift-tolerant descriptor
MAX_SHIFT = 2  # verification shift range in thumbnail pixels (±6 px at 96 px)


class UnionFind:
    """Disjoint sets over ``0..n-1``; :meth:`groups` lists sets of size > 1, sorted."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, item: int) -> int:
        """Return the representative of ``item``'s set."""
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, first: int, second: int) -> None:
        """Merge the sets of ``first`` and ``second``."""
        a, b = self.find(first), self.find(second)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def groups(self) -> list[list[int]]:
        """Sets with more than one member, each sorted, ordered by their smallest member."""
        members: dict[int, list[int]] = defaultdict(list)
        for item in range(len(self.parent)):
            members[self.find(item)].append(item)
        return sorted(sorted(group) for group in members.values() if len(group) > 1)


def exact_groups(pixel_hashes: Sequence[str]) -> list[list[int]]:
    """Positions that share a pixel hash (``""`` = unreadable, never grouped)."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for position, digest in enumerate(pixel_hashes):
        if digest:
            by_hash[digest].append(position)
    return sorted(group for group in by_hash.values() if len(group) > 1)


def gray_thumbnails(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """``(N, THUMB, THUMB)`` float32 grayscale thumbnails by block averaging (any size ≥ 32)."""
    # In chunks: a float32 copy of 14,513 images at 96 px would be 1.6 GB at once.
    parts = [
        _gray_thumbnails(images[start : start + chunk]) for start in range(0, len(images), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, THUMB, THUMB), np.float32)


def _gray_thumbnails(images: np.ndarray) -> np.ndarray:
    gray = images.astype(np.float32).mean(axis=-1)
    size = gray.shape[1]
    if size % THUMB:
        from PIL import Image  # only odd sizes need a real resize

        gray = np.stack(
            [np.asarray(Image.fromarray(g).resize((THUMB, THUMB), Image.BILINEAR)) for g in gray]
        )
        return gray.astype(np.float32)
    block = size // THUMB
    return gray.reshape(len(gray), THUMB, block, THUMB, block).mean(axis=(2, 4))


def near_duplicate_pairs(
    images: np.ndarray, threshold: float = 0.93, neighbours: int = 8
) -> list[tuple[int, int, float]]:
    """Find pairs of images that are near copies of each other.

    Args:
        images: ``(N, S, S, 3)`` ``uint8`` images.
        threshold: minimum shift-searched normalised cross-correlation of the thumbnails.
        neighbours: candidates per image and descriptor.

    Returns:
        ``(i, j, score)`` with ``i < j``, sorted.
    """
    if len(images) < 2:
        return []
    thumbs = gray_thumbnails(images)
    candidates: set[tuple[int, int]] = set()
    for descriptor, k, desc in (
        (_unit_rows(thumbs.reshape(len(thumbs), -1)), 3, "similar thumbnails"),
        (_fourier(thumbs), neighbours, "similar spectra"),
    ):
        for i, row in enumerate(_top_neighbours(descriptor, min(k, len(images) - 1), desc)):
            candidates.update((min(i, j), max(i, j)) for j in row)
    pairs = sorted(candidates)
    scores = shifted_correlation(thumbs, np.array(pairs, dtype=np.int64).reshape(-1, 2))
    return [(i, j, float(s)) for (i, j), s in zip(pairs, scores, strict=True) if s >= threshold]


def shifted_correlation(thumbs: np.ndarray, pairs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Best normalised cross-correlation of each thumbnail pair over shifts within ±MAX_SHIFT."""
    best = np.full(len(pairs), -1.0, dtype=np.float32)
    size = thumbs.shape[1]
    with progress_bar(len(pairs), "verifying near duplicates", unit="pair") as bar:
        for start in range(0, len(pairs), chunk):
            _best_shifted(thumbs, pairs[start : start + chunk], best[start : start + chunk], size)
            bar.update(len(pairs[start : start + chunk]))
    return best


def _best_shifted(thumbs: np.ndarray, pairs: np.ndarray, best: np.ndarray, size: int) -> None:
    """Raise ``best`` to each pair's correlation at every shift within ±MAX_SHIFT."""
    first, second = thumbs[pairs[:, 0]], thumbs[pairs[:, 1]]
    for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
        for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
            a = first[:, max(0, dy) : size + min(0, dy), max(0, dx) : size + min(0, dx)]
            b = second[:, max(0, -dy) : size + min(0, -dy), max(0, -dx) : size + min(0, -dx)]
            a = a.reshape(len(a), -1) - a.mean(axis=(1, 2))[:, None]
            b = b.reshape(len(b), -1) - b.mean(axis=(1, 2))[:, None]
            denominator = np.sqrt((a * a).sum(1) * (b * b).sum(1)) + 1e-6
            np.maximum(best, (a * b).sum(1) / denominator, out=best)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    centred = matrix - matrix.mean(axis=1, keepdims=True)
    return centred / (np.linalg.norm(centred, axis=1, keepdims=True) + 1e-6)


def _fourier(thumbs: np.ndarray) -> np.ndarray:
    centred = thumbs - thumbs.mean(axis=(1, 2), keepdims=True)
    magnitude = np.abs(np.fft.fft2(centred))[:, :FFT_BLOCK, :FFT_BLOCK]
    return _unit_rows(np.log1p(magnitude).reshape(len(thumbs), -1))


def _top_neighbours(
    descriptor: np.ndarray, k: int, desc: str = "nearest neighbours", chunk: int = 2048
) -> np.ndarray:
    """Indices of the ``k`` most similar rows (cosine) for every row, itself excluded."""
    neighbours = np.zeros((len(descriptor), k), dtype=np.int64)
    with progress_bar(len(descriptor), desc) as bar:
        for start in range(0, len(descriptor), chunk):
            similarity = descriptor[start : start + chunk] @ descriptor.T
            rows = np.arange(similarity.shape[0])
            similarity[rows, start + rows] = -np.inf
            neighbours[start : start + chunk] = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            bar.update(len(rows))
    return neighbours
