"""Images that do not belong: non-cell pictures and strong colour casts.

Both scores are relative to the data set itself, so they need no reference data:

* **Colour cast** — the chromaticity (r, g, b summing to 1) of an image's background (its
  brightest 40 % of pixels) against the data set's median background. On the PBC images the
  natural stain variation (pink to lavender backgrounds) stays within 0.058 of the median; the
  default threshold 0.07 sits above it.
* **Non-cell (illegitimate) pictures** — 17 colour, brightness, saturation and texture
  statistics of the white-balanced image, scored by a robust Mahalanobis distance (minimum
  covariance determinant, which a minority of contaminating images cannot bend) and expressed
  as a robust z-score: ``(d - median(d)) / MAD(d)``.
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import MinCovDet

from ensemble.core.progress import progress_bar

BACKGROUND_FRACTION = 0.4  # the brightest 40 % of pixels stand for the smear background
FIT_SAMPLE = 4000  # images used to fit the robust covariance (cost grows with it)

#: Named directions for reporting a cast: chromaticity offsets (r, g, b), zero-sum.
CAST_DIRECTIONS = {
    "blue": (-1.0, -1.0, 2.0),
    "green": (-1.0, 2.0, -1.0),
    "red": (2.0, -1.0, -1.0),
    "yellow": (1.0, 1.0, -2.0),
    "cyan": (-2.0, 1.0, 1.0),
    "magenta": (1.0, -2.0, 1.0),
}


def background_colour(images: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Mean RGB of each image's brightest ``BACKGROUND_FRACTION`` of pixels, ``(N, 3)`` float."""
    result = np.zeros((len(images), 3), dtype=np.float64)
    for start in range(0, len(images), chunk):
        batch = images[start : start + chunk]
        pixels = batch.reshape(len(batch), -1, 3)
        pixels = pixels.astype(np.float32)
        luminance = pixels.mean(axis=-1)
        cut = int(luminance.shape[1] * (1 - BACKGROUND_FRACTION))
        threshold = np.partition(luminance, cut, axis=1)[:, cut : cut + 1]
        mask = (luminance >= threshold)[..., None]
        result[start : start + chunk] = (pixels * mask).sum(1) / np.maximum(mask.sum(1), 1)
    return result


def colour_cast_scores(images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Distance of each background chromaticity from the data set's median, and its direction.

    Returns:
        ``(distance, direction)``: a ``(N,)`` array and the name of the closest direction in
        :data:`CAST_DIRECTIONS` for each image.
    """
    background = background_colour(images)
    chroma = background / np.maximum(background.sum(axis=1, keepdims=True), 1e-6)
    offset = chroma - np.median(chroma, axis=0)
    distance = np.linalg.norm(offset, axis=1)
    names = list(CAST_DIRECTIONS)
    directions = np.array([CAST_DIRECTIONS[name] for name in names])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    closest = np.argmax(offset @ directions.T, axis=1)
    return distance, [names[index] for index in closest]


def appearance_features(images: np.ndarray, chunk: int = 512) -> np.ndarray:
    """17 statistics per image that separate stained-smear photographs from other pictures."""
    rows = []
    with progress_bar(len(images), "appearance features") as bar:
        for start in range(0, len(images), chunk):
            rows.append(_appearance_features(images[start : start + chunk]))
            bar.update(len(rows[-1]))
    return np.concatenate(rows).astype(np.float64)


def _appearance_features(batch: np.ndarray) -> np.ndarray:
    """The 17 statistics of one chunk of images."""
    pixels = batch.reshape(len(batch), -1, 3).astype(np.float32)
    background = background_colour(batch)
    balanced = np.clip(pixels / np.maximum(background[:, None, :], 1.0) * 230.0, 0, 255)
    red, green, blue = balanced[..., 0], balanced[..., 1], balanced[..., 2]
    luminance = balanced.mean(axis=-1)
    brightest, darkest = balanced.max(axis=-1), balanced.min(axis=-1)
    saturation = (brightest - darkest) / (brightest + 1e-3)
    gray = batch.astype(np.float32).mean(axis=-1)
    n = luminance.shape[1]
    lum_sorted = np.sort(luminance, axis=1)
    quantiles = lum_sorted[:, [int(n * q) for q in (0.05, 0.25, 0.5, 0.75)]]
    sat_q95 = np.partition(saturation, int(n * 0.95), axis=1)[:, int(n * 0.95)]
    return np.column_stack(
        [
            balanced.mean(axis=1),
            balanced.std(axis=1),
            quantiles,
            saturation.mean(axis=1),
            sat_q95,
            ((green > red) & (green > blue)).mean(axis=1),  # green never dominates a stain
            ((blue > red) & (luminance < 170)).mean(axis=1),  # dark violet: nuclei
            np.abs(np.diff(gray, axis=2)).mean(axis=(1, 2)),
            np.abs(np.diff(gray, axis=1)).mean(axis=(1, 2)),
            (pixels.mean(axis=-1) < 60).mean(axis=1),  # near-black pixels
        ]
    )


def non_cell_scores(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """Robust z-score of each row's robust Mahalanobis distance (higher = less like the rest).

    Args:
        features: ``(N, F)`` output of :func:`appearance_features`.
        seed: seeds the subsample and the covariance estimator, so the audit is repeatable.
    """
    if len(features) < features.shape[1] * 3:
        return np.zeros(len(features))  # too few images to model what is typical
    rng = np.random.default_rng(seed)
    sample = features[rng.choice(len(features), min(FIT_SAMPLE, len(features)), replace=False)]
    scale = sample.std(axis=0) + 1e-9  # MinCovDet is scale-equivariant; this only helps numerics
    estimator = MinCovDet(support_fraction=0.9, random_state=seed).fit(sample / scale)
    distance = np.sqrt(estimator.mahalanobis(features / scale))
    median = np.median(distance)
    spread = 1.4826 * np.median(np.abs(distance - median)) + 1e-9
    return (distance - median) / spread
