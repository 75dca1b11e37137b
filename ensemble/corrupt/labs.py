"""Simulated labs: fixed acquisition settings applied to every image, to measure adaptation on.

A real lab differs from the training lab in one consistent way — its stain, its focus, its
camera's compression, its objective — not in a random corruption per image. A :class:`Lab` is
such a setting: a fixed combination of kinds of :mod:`ensemble.corrupt.kinds` (the same
functions as training and evaluation), each at one value with a small per-image jitter. The
labs here are never used in training; ``ensemble adapt`` is measured on them
(``benchmarks/simulated_labs.py`` writes a lab's copy of a split as image files and a
``path,label`` CSV).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ensemble.corrupt.kinds import EVALUATION, Strength


@dataclass(frozen=True)
class Lab:
    """One lab's fixed acquisition, applied in this order: zoom, stain, exposure, blur, JPEG.

    Attributes:
        name: the lab's name.
        zoom: the objective's scale factor (1 = as the training lab).
        stain_gains: the stain's gain on R, G and B.
        gamma: the camera's exposure gamma.
        blur_sigma_at_96px: the focus (Gaussian σ at 96 px; 0 = sharp).
        jpeg_quality: the camera's JPEG quality (100 = none).
        jitter: the relative per-image spread around each value.
    """

    name: str
    zoom: float = 1.0
    stain_gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    blur_sigma_at_96px: float = 0.0
    jpeg_quality: int = 100
    jitter: float = 0.03


#: Three labs unlike the training lab in different ways.
LABS = {
    lab.name: lab
    for lab in (
        Lab("violet-stain", stain_gains=(1.1, 0.8, 1.15), gamma=0.85, jpeg_quality=60),
        Lab("soft-focus", zoom=1.35, blur_sigma_at_96px=1.2, gamma=1.25),
        Lab("old-camera", stain_gains=(0.9, 0.95, 1.2), jpeg_quality=25, zoom=0.8),
    )
}


def _around(value: float, jitter: float) -> tuple[float, float]:
    return (value * (1 - jitter), value * (1 + jitter))


def lab_copy(images: np.ndarray, lab: Lab, seed: int = 0) -> np.ndarray:
    """``images`` (``(N, H, W, 3)`` uint8) as ``lab`` would have taken them."""
    import tensorflow as tf

    from ensemble.corrupt.acquisition import apply_kind

    batch = tf.constant(images, tf.float32)
    base: Strength = EVALUATION
    steps = []
    if lab.zoom != 1.0:
        steps.append(("zoom", replace(base, zoom_scales=((_around(lab.zoom, lab.jitter), 1.0),))))
    if lab.stain_gains != (1.0, 1.0, 1.0):
        gains = tuple(_around(gain, lab.jitter) for gain in lab.stain_gains)
        steps.append(("stain", replace(base, stain_gains=gains)))
    if lab.gamma != 1.0:
        steps.append(("exposure", replace(base, gammas=(_around(lab.gamma, lab.jitter),))))
    if lab.blur_sigma_at_96px > 0:
        sigma = lab.blur_sigma_at_96px
        steps.append(("blur", replace(base, blur_sigmas_at_96px=(sigma,))))
    if lab.jpeg_quality < 100:
        steps.append(("jpeg", replace(base, jpeg_quality=(lab.jpeg_quality,) * 2)))
    for number, (kind, strength) in enumerate(steps):
        seed_words = np.random.SeedSequence((seed, number)).generate_state(2).astype(np.int64)
        batch = apply_kind(batch, kind, tf.constant(seed_words), strength)
    return np.clip(np.asarray(batch) + 0.5, 0, 255).astype(np.uint8)
