"""A seeded generator of realistic acquisition shifts, to test robustness.

Real smears differ from the training data in stain, focus, exposure and compression. Each
image gets one shift drawn from :data:`SHIFTS` (seeded per image, so the same images and seed
always give the same shifted copy): a blue colour cast, blur, JPEG compression, sensor noise,
under/over-exposure, a rotation by an arbitrary angle, or a hue shift.

Magnification is a kind of its own, :data:`ZOOM`, kept out of :data:`SHIFTS` so that the
shifted copy measures the same thing as before it existed; the report scores a separate zoomed
copy in which every image is zoomed: two out of three shown larger (1.25–2×: a tighter crop or
a stronger objective), one in three smaller (0.7–0.85×, the border filled by reflection).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from ensemble.data.images import crop_and_resize

SHIFTS = ("blue_cast", "blur", "jpeg", "noise", "exposure", "rotation", "hue")
ZOOM = "zoom"
ZOOM_IN_RANGE = (1.25, 2.0)
ZOOM_OUT_RANGE = (0.7, 0.85)


def shift_image(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one named shift to an ``(H, W, 3)`` ``uint8`` image."""
    pixels = image.astype(np.float32)
    if kind == "blue_cast":
        gains = np.array([rng.uniform(0.75, 0.9), rng.uniform(0.85, 0.95), rng.uniform(1.1, 1.3)])
        return _clip(pixels * gains)
    if kind == "blur":
        radius = rng.uniform(0.8, 1.6) * image.shape[0] / 96
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
    if kind == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=int(rng.integers(10, 30)))
        return np.asarray(Image.open(buffer).convert("RGB"))
    if kind == "noise":
        return _clip(pixels + rng.normal(0, rng.uniform(8, 16), pixels.shape))
    if kind == "exposure":
        return _clip(
            255.0 * (pixels / 255.0) ** rng.choice([rng.uniform(0.55, 0.75), rng.uniform(1.4, 1.8)])
        )
    if kind == "rotation":
        angle = rng.uniform(15, 75)
        return np.asarray(
            Image.fromarray(image).rotate(
                angle, resample=Image.Resampling.BILINEAR, fillcolor=_edge(image)
            )
        )
    if kind == "hue":
        hsv = np.asarray(Image.fromarray(image).convert("HSV")).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(10, 25)) * rng.choice([-1, 1])) % 256
        return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))
    if kind == ZOOM:
        zoom_range = ZOOM_IN_RANGE if rng.uniform() < 2 / 3 else ZOOM_OUT_RANGE
        return zoom_image(image, float(np.exp(rng.uniform(*np.log(zoom_range)))))
    raise ValueError(f"unknown shift {kind!r}. Choose from {[*SHIFTS, ZOOM]}")


def zoom_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Show an ``(H, W, 3)`` ``uint8`` image ``scale`` times larger (> 1) or smaller (< 1).

    Zooming in crops the centre and enlarges it; zooming out shrinks the whole image and fills
    the border by reflection. Bicubic resampling; the output has the input's size.
    """
    height, width = image.shape[:2]
    if scale >= 1:
        crop_h, crop_w = height / scale, width / scale
        top, left = (height - crop_h) / 2, (width - crop_w) / 2
        box = (left, top, left + crop_w, top + crop_h)
        return np.asarray(
            Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC, box=box)
        )
    small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
    small = np.asarray(Image.fromarray(image).resize((small_w, small_h), Image.Resampling.BICUBIC))
    top, left = (height - small_h) // 2, (width - small_w) // 2
    padding = ((top, height - small_h - top), (left, width - small_w - left), (0, 0))
    return np.pad(small, padding, mode="reflect")


def shifted_copy(
    images: np.ndarray, seed: int = 0, kinds: tuple[str, ...] = SHIFTS
) -> tuple[np.ndarray, list[str]]:
    """A shifted copy of a batch: image ``i`` gets shift ``kinds[i % len(kinds)]``.

    Returns:
        ``(shifted images, shift name per image)``; deterministic for a given seed.
    """
    result = np.empty_like(images)
    names = []
    for index, image in enumerate(images):
        kind = kinds[index % len(kinds)]
        rng = np.random.default_rng([seed, index])
        result[index] = shift_image(image, kind, rng)
        names.append(kind)
    return result, names


def shifted_images(
    images: dict[int, np.ndarray], seed: int, kinds: tuple[str, ...] = SHIFTS
) -> tuple[dict[int, np.ndarray], list[str]]:
    """The seeded shifted copy (:func:`shifted_copy`) of images given per size.

    The copy is made at the largest size and resized, so every member sees the same shifted
    pictures. ``kinds=(ZOOM,)`` makes the zoomed copy (every image zoomed). Returns the shifted
    images per size and the shift applied to each image.
    """
    largest = max(images)
    shifted, kinds = shifted_copy(images[largest], seed, kinds=kinds)
    by_size = {
        size: shifted if size == largest else np.stack([crop_and_resize(i, size) for i in shifted])
        for size in images
    }
    return by_size, kinds


def _clip(pixels: np.ndarray) -> np.ndarray:
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


def _edge(image: np.ndarray) -> tuple[int, int, int]:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return tuple(int(v) for v in np.median(border, axis=0))
