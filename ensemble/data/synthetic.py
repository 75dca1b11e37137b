"""A seeded generator of small 8-class images that look like stained blood cells.

Round cells on a pale pink background, with red blood cells around them; the classes differ by
nucleus shape (round, bilobed, multi-lobed, kidney, none), granules and cytoplasm colour, as the
real classes do. It exists so that the demo and the fast tests run in seconds without the real
data. It is **not** a substitute for real data in any reported number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ensemble.core.errors import ConfigError

#: The PBC class names, so synthetic runs look like real ones.
CLASSES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

# Per class: cell radius (fraction of the image), nucleus kind, nucleus size, granule colour
# (None = no granules), cytoplasm colour.
_LOOK = {
    "basophil": (0.30, "lobed2", 0.55, (60, 20, 90), (190, 160, 200)),
    "eosinophil": (0.32, "lobed2", 0.45, (220, 90, 60), (235, 170, 150)),
    "erythroblast": (0.22, "round", 0.70, None, (200, 150, 170)),
    "ig": (0.34, "kidney", 0.60, (150, 90, 150), (215, 180, 200)),
    "lymphocyte": (0.22, "round", 0.85, None, (170, 180, 225)),
    "monocyte": (0.36, "kidney", 0.55, None, (190, 185, 215)),
    "neutrophil": (0.30, "lobed4", 0.40, (200, 160, 190), (230, 200, 215)),
    "platelet": (0.08, "none", 0.0, (120, 60, 140), (150, 100, 170)),
}
_BACKGROUND = np.array([250, 228, 210], dtype=np.float32)
_NUCLEUS = np.array([80, 40, 120], dtype=np.float32)
_RED_CELL = np.array([225, 170, 170], dtype=np.float32)


def make_image(label: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """Draw one synthetic cell image of class ``label`` as ``(size, size, 3)`` ``uint8``."""
    radius_fraction, nucleus_kind, nucleus_fraction, granules, cytoplasm = _LOOK[label]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.tile(_BACKGROUND * rng.uniform(0.95, 1.02, 3), (size, size, 1))
    for _ in range(rng.integers(6, 12)):  # red blood cells: pale discs with a lighter centre
        cy, cx = rng.uniform(0, size, 2)
        r = size * rng.uniform(0.10, 0.14)
        d = np.hypot(yy - cy, xx - cx)
        image[d < r] = _RED_CELL * rng.uniform(0.95, 1.05)
        image[d < r * 0.4] = (_RED_CELL + _BACKGROUND) / 2
    cy, cx = size / 2 + rng.uniform(-0.15, 0.15, 2) * size
    radius = size * radius_fraction * rng.uniform(0.8, 1.15)
    distance = np.hypot(yy - cy, xx - cx)
    cell = distance < radius
    image[cell] = np.array(cytoplasm, dtype=np.float32) * rng.uniform(0.92, 1.05)
    if granules is not None:
        count = 40 if label != "platelet" else 8
        gy = cy + rng.normal(0, radius / 2, count)
        gx = cx + rng.normal(0, radius / 2, count)
        for y, x in zip(gy, gx, strict=True):
            spot = np.hypot(yy - y, xx - x) < max(size / 48, 0.8)
            image[spot & cell] = granules
    if nucleus_kind != "none":
        image[_nucleus_mask(nucleus_kind, yy, xx, cy, cx, radius * nucleus_fraction, rng)] = (
            _NUCLEUS * rng.uniform(0.85, 1.1)
        )
    # Uneven illumination and sensor noise, so that no two images are near copies.
    gradient = rng.normal(0, 0.04, 2)
    image *= (1 + gradient[0] * (yy / size - 0.5) + gradient[1] * (xx / size - 0.5))[..., None]
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _nucleus_mask(kind, yy, xx, cy, cx, radius, rng) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    if kind == "round":
        return np.hypot(yy - cy, xx - cx) < radius
    if kind == "kidney":
        body = np.hypot(yy - cy, xx - cx) < radius
        notch = np.hypot(yy - cy - radius * np.sin(angle), xx - cx - radius * np.cos(angle))
        return body & (notch > radius * 0.7)
    lobes = 2 if kind == "lobed2" else 4
    mask = np.zeros_like(yy, dtype=bool)
    for lobe in range(lobes):
        theta = angle + 2 * np.pi * lobe / lobes
        ly, lx = cy + radius * 0.9 * np.sin(theta), cx + radius * 0.9 * np.cos(theta)
        mask |= np.hypot(yy - ly, xx - lx) < radius * (0.75 if lobes == 2 else 0.5)
    return mask


def make_arrays(
    per_class: int = 20, size: int = 48, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Generate ``per_class`` images of every class.

    Returns:
        ``(images, labels, classes)``: ``(N, size, size, 3)`` ``uint8``, ``(N,)`` int labels in
        class-major order, and the class names.
    """
    if per_class < 1 or size < 16:
        raise ConfigError(
            f"synthetic data needs per_class >= 1 and size >= 16. "
            f"Received: per_class={per_class}, size={size}"
        )
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index, name in enumerate(CLASSES):
        for _ in range(per_class):
            images.append(make_image(name, rng, size))
            labels.append(index)
    return np.stack(images), np.array(labels, dtype=np.int64), list(CLASSES)


def write_folder(root: Path, per_class: int = 20, size: int = 48, seed: int = 0) -> Path:
    """Write a synthetic class-folder tree ``root/<class>/<class>_<n>.png`` and return ``root``.

    Example:
        >>> write_folder(Path("/tmp/synthetic"), per_class=5)  # doctest: +SKIP
    """
    images, labels, classes = make_arrays(per_class, size, seed)
    for position, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = Path(root) / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{classes[label]}_{position:05d}.png")
    return Path(root)
