"""The seeded shifted and zoomed copies that measure robustness (report, fit-stacker).

Each image of a copy gets one kind of :mod:`ensemble.corrupt.kinds` — the same functions the
robust members train with (:func:`ensemble.corrupt.acquisition.apply_kind`), at the
:data:`~ensemble.corrupt.kinds.EVALUATION` strengths and with seeds of their own: image ``i``
of a copy gets ``kinds[i % len(kinds)]``, so the same images and seed always give the same
copy. :data:`SHIFTS` are the kinds of the shifted copy (a blue stain cast, blur, JPEG, noise,
exposure, rotation, hue); magnification is a kind of its own, :data:`ZOOM`, scored in a
separate zoomed copy in which every image is zoomed (two in three shown 1.25–2× larger, one in
three 0.7–0.85× smaller, the border filled by reflection).
"""

from __future__ import annotations

import numpy as np

from ensemble.corrupt.kinds import CORRUPTIONS, EVALUATION, KINDS
from ensemble.data.images import crop_and_resize_all

#: The kinds of the shifted copy, in the order images are given them.
SHIFTS = ("stain", "blur", "jpeg", "noise", "exposure", "rotation", "hue")
ZOOM = "zoom"
assert set(SHIFTS) == set(CORRUPTIONS) and ZOOM in KINDS


def shift_image(image: np.ndarray, kind: str, seed: int | tuple[int, ...] = 0) -> np.ndarray:
    """One ``(H, W, 3)`` ``uint8`` image with one kind applied at the evaluation strength."""
    return shift_batch(image[None], kind, seed)[0]


def shift_batch(images: np.ndarray, kind: str, seed: int | tuple[int, ...]) -> np.ndarray:
    """A ``(B, H, W, 3)`` ``uint8`` batch with one kind applied to every image.

    Raises:
        ValueError: an unknown kind.
    """
    import tensorflow as tf

    from ensemble.corrupt.acquisition import apply_kind

    if kind not in KINDS:
        raise ValueError(f"unknown shift {kind!r}. Choose from {list(KINDS)}")
    seed_words = np.random.SeedSequence(seed).generate_state(2).astype(np.int64)
    shifted = apply_kind(tf.constant(images, tf.float32), kind, tf.constant(seed_words), EVALUATION)
    return np.clip(np.asarray(shifted) + 0.5, 0, 255).astype(np.uint8)


def shifted_copy(
    images: np.ndarray, seed: int = 0, kinds: tuple[str, ...] = SHIFTS
) -> tuple[np.ndarray, list[str]]:
    """A shifted copy of a batch: image ``i`` gets kind ``kinds[i % len(kinds)]``.

    The images of one kind are shifted together (one seed per kind and copy).

    Returns:
        ``(shifted images, kind per image)``; deterministic for a given seed.
    """
    names = [kinds[index % len(kinds)] for index in range(len(images))]
    result = np.empty_like(images)
    for number, kind in enumerate(kinds):
        rows = [index for index, name in enumerate(names) if name == kind]
        if rows:
            result[rows] = shift_batch(images[rows], kind, (seed, number))
    return result, names


def shifted_images(
    images: dict[int, np.ndarray], seed: int, kinds: tuple[str, ...] = SHIFTS
) -> tuple[dict[int, np.ndarray], list[str]]:
    """The seeded shifted copy (:func:`shifted_copy`) of images given per size.

    The copy is made at the largest size and resized, so every member sees the same shifted
    pictures. ``kinds=(ZOOM,)`` makes the zoomed copy (every image zoomed). Returns the shifted
    images per size and the shift applied to each image.
    """
    shifted, kinds = shifted_copy(images[max(images)], seed, kinds=kinds)
    return at_every_size(shifted, images), kinds


def at_every_size(copy: np.ndarray, sizes) -> dict[int, np.ndarray]:
    """A copy made at the largest of ``sizes``, resized to each of them (itself at the largest).

    Every copy of the report (shifted, zoomed, MedMNIST-C) is made once, at the largest member
    input size, so every member sees the same pictures.
    """
    largest = max(sizes)
    return {size: copy if size == largest else crop_and_resize_all(copy, size) for size in sizes}
