"""The tf.data input pipeline: cached decoded images, on-the-fly augmentation, class weights.

Images are decoded and resized once (by :meth:`~ensemble.data.sources.Dataset.load_images`)
and kept in memory as ``uint8``; each training epoch then shuffles, batches, applies a random
one of the 8 dihedral symmetries, a random zoom, keras-cv RandAugment and the acquisition
corruptions of :mod:`ensemble.corrupt.acquisition` per image, and prefetches, so the model
never waits on the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble.core.errors import ConfigError
from ensemble.core.validation import check_choice, check_range
from ensemble.corrupt.acquisition import CORRUPTION_MODES, DEFAULT_ZOOM_RANGE
from ensemble.corrupt.kinds import FAMILIES

#: The report's best RandAugment setting.
DEFAULT_MAGNITUDE = 0.45
DEFAULT_AUGMENTATIONS_PER_IMAGE = 2


@dataclass(frozen=True)
class AugmentationConfig:
    """Training-time augmentation."""

    dihedral: bool = True  # random one of the 8 rotations/flips: a cell has no "up"
    randaugment_magnitude: float = DEFAULT_MAGNITUDE  # 0 disables RandAugment
    randaugment_per_image: int = DEFAULT_AUGMENTATIONS_PER_IMAGE  # keras-cv augmentations_per_image
    corruption_probability: float = 0.0  # chance of each acquisition corruption (stain, exposure,
    #   hue, rotation, blur, noise, JPEG; ensemble.corrupt.acquisition) per image; 0 disables them
    corruption_mode: str = "independent"  # "independent": each corruption with that chance;
    #   "one": with that chance an image gets exactly one, chosen uniformly (the rest stay clean)
    corruption_family: str = "standard"  # "standard" or "wide": stronger casts and gammas, plus
    #   brightness, contrast and HED stain jitter (ensemble.corrupt.kinds)
    zoom_probability: float = 0.0  # chance that an image is shown larger or smaller; 0 disables
    zoom_min: float = DEFAULT_ZOOM_RANGE[0]  # smallest scale factor (< 1: cell shown smaller)
    zoom_max: float = DEFAULT_ZOOM_RANGE[1]  # largest scale factor (2 = cell twice as large)

    def __post_init__(self) -> None:
        check_range(self, "randaugment_magnitude", 0, 1)
        check_range(self, "randaugment_per_image", 0)
        check_range(self, "corruption_probability", 0, 1)
        check_choice(self, "corruption_mode", CORRUPTION_MODES)
        check_choice(self, "corruption_family", tuple(FAMILIES))
        check_range(self, "zoom_probability", 0, 1)
        check_range(self, "zoom_min", 0, 1, low_open=True)
        check_range(self, "zoom_max", 1, 4)


def class_weights(labels: np.ndarray, n_classes: int, mode: str | dict | None) -> dict | None:
    """Keras ``class_weight`` for imbalanced classes.

    Args:
        labels: integer labels of the training images.
        n_classes: number of classes.
        mode: ``"balanced"`` (``n / (k · count_c)``, scikit-learn's rule), ``None``/``"none"``,
            or a mapping class index → weight.

    Returns:
        A mapping class index → weight, or ``None`` for no weighting.
    """
    if mode is None or mode == "none":
        return None
    if isinstance(mode, dict):
        return {int(key): float(value) for key, value in mode.items()}
    if mode != "balanced":
        raise ConfigError(
            f"class_weights must be 'balanced', 'none' or a table. Received: class_weights={mode!r}"
        )
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ConfigError(f"class index {missing} has no training images; cannot weight it")
    weights = len(labels) / (n_classes * counts)
    return {index: float(weight) for index, weight in enumerate(weights)}


def random_dihedral(images, seed):
    """Apply an independent random one of the 8 dihedral symmetries to each image of a batch.

    ``seed`` is a shape ``[2]`` integer stateless-random seed: the same seed, the same views.
    """
    import tensorflow as tf

    batch = tf.shape(images)[0]
    choice = tf.random.stateless_uniform([batch], seed, 0, 8, dtype=tf.int32)
    flipped = tf.where((choice >= 4)[:, None, None, None], tf.image.flip_left_right(images), images)
    rotations = choice % 4
    # Rotating by k·90° is a transpose and/or flip; build all four and pick per image.
    r1 = tf.image.rot90(flipped, 1)
    r2 = tf.image.rot90(flipped, 2)
    r3 = tf.image.rot90(flipped, 3)
    stacked = tf.stack([flipped, r1, r2, r3], axis=1)
    return tf.gather(stacked, rotations, axis=1, batch_dims=1)


def dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral views of a batch (NumPy), for test-time augmentation."""
    views = []
    for flip in (False, True):
        base = images[:, :, ::-1] if flip else images
        for k in range(4):
            views.append(np.ascontiguousarray(np.rot90(base, k, axes=(1, 2))))
    return views


def training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    augmentation: AugmentationConfig,
    seed: int,
    sample_weights: np.ndarray | None = None,
):
    """A shuffled, augmented, batched and prefetched ``tf.data.Dataset`` of float32 0–255 images.

    Args:
        images: ``(N, S, S, 3)`` ``uint8`` training images.
        labels: ``(N,)`` integer labels.
        batch_size: images per batch.
        augmentation: what to apply on the fly.
        seed: shuffling and augmentation seed.
        sample_weights: optional ``(N,)`` per-image weights (class weights, expanded).

    Returns:
        A dataset of ``(images, labels)`` or ``(images, labels, weights)`` batches; one pass is
        one epoch (reshuffled every pass).

    Over 60 lines: the tf.data graph (shuffle, batch, per-batch seeds, zoom, dihedral, RandAugment,
    corruptions) reads best in one place, in the order it runs.
    """
    import tensorflow as tf

    from ensemble.corrupt.acquisition import corrupt, random_zoom

    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} images but {len(labels)} labels")
    tensors = (images, labels) if sample_weights is None else (images, labels, sample_weights)
    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    randaugment = None
    if augmentation.randaugment_magnitude > 0 and augmentation.randaugment_per_image > 0:
        import keras_cv

        randaugment = keras_cv.layers.RandAugment(
            value_range=(0, 255),
            augmentations_per_image=augmentation.randaugment_per_image,
            magnitude=augmentation.randaugment_magnitude,
            seed=seed,
        )

    # One stateless seed per batch, fresh every epoch but fixed by ``seed``: the augmentation
    # does not depend on what else the process built before (other members, a resume).
    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def augment(batch, batch_seed):
        batch_images, *rest = batch
        dihedral_seed, corruption_seed = tf.unstack(
            tf.random.experimental.stateless_split(batch_seed, 2)
        )
        # Folded in rather than split three ways, so members trained before zoom existed
        # keep their dihedral and corruption draws.
        zoom_seed = tf.random.experimental.stateless_fold_in(batch_seed, 1)
        batch_images = tf.cast(batch_images, tf.float32)
        if augmentation.zoom_probability > 0:  # first: magnification happens in the optics
            zoom_range = (augmentation.zoom_min, augmentation.zoom_max)
            batch_images = random_zoom(
                batch_images, augmentation.zoom_probability, zoom_range, zoom_seed
            )
        if augmentation.dihedral:
            batch_images = random_dihedral(batch_images, dihedral_seed)
        if randaugment is not None:
            batch_images = randaugment(batch_images, training=True)
        if augmentation.corruption_probability > 0:
            batch_images = corrupt(
                batch_images,
                augmentation.corruption_probability,
                corruption_seed,
                mode=augmentation.corruption_mode,
                family=augmentation.corruption_family,
            )
        return (batch_images, *rest)

    dataset = tf.data.Dataset.zip((dataset, batch_seeds))
    dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def inference_dataset(images: np.ndarray, batch_size: int):
    """Batched, prefetched float32 images for prediction (no augmentation)."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    dataset = dataset.map(lambda batch: tf.cast(batch, tf.float32), num_parallel_calls=2)
    return dataset.prefetch(tf.data.AUTOTUNE)
