"""Batch-normalisation statistics re-estimated on a lab's unlabelled images.

A CNN's batch-normalisation layers keep the mean and variance of their inputs on the training
images; a lab whose stain or focus differs shifts those statistics, and every later layer sees
inputs off the scale it learned. Re-estimating them on the lab's own images, without labels,
is the simplest test-time adaptation (Li et al. 2016, "AdaBN"; Schneider et al. 2020). It
assumes the lab's folder holds the classes in roughly the training mix: on a folder of one
class the statistics describe that class, not the lab, and accuracy can fall
(:func:`class_balance_warning` says so from the model's own predictions).
"""

from __future__ import annotations

import numpy as np

#: Images per forward pass while re-estimating.
BATCH_SIZE = 64
#: Largest share of one predicted class before the folder is called unbalanced.
UNBALANCED_SHARE = 0.5


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included."""
    import keras

    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def reestimate_batchnorm(model, images: np.ndarray, batch_size: int = BATCH_SIZE) -> int:
    """Replace ``model``'s batch-norm moving statistics by those of ``images`` (in place).

    Each layer's moving mean and variance become the average over the batches of
    ``images``, each batch weighted by its size, computed in one pass in training mode. Layers
    frozen for fine-tuning are re-estimated too (Keras updates statistics only of trainable
    layers, so each is made trainable for the pass and restored). No weight is trained;
    dropout is active during the pass and changes nothing that is kept.

    Args:
        model: a Keras model taking uint8 images at its input size.
        images: ``(N, size, size, 3)`` uint8 images of the lab, N >= 2.
        batch_size: images per pass (larger gives steadier batch statistics).

    Returns:
        The number of batch-norm layers updated (0: the model has none).

    Raises:
        ValueError: fewer than two images (a variance needs two).
    """
    if len(images) < 2:
        raise ValueError(f"re-estimating batch norm needs >= 2 images. Received: {len(images)}")
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    try:
        for layer in layers:
            layer.trainable = True
        seen = 0
        for start in range(0, len(images) - 1, batch_size):  # a last batch of one: no variance
            batch = np.asarray(images[start : start + batch_size])
            for layer in layers:
                layer.momentum = seen / (seen + len(batch))
            model(batch, training=True)
            seen += len(batch)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved, strict=True):
            layer.momentum, layer.trainable = momentum, trainable
    return len(layers)


def class_balance_warning(predicted: np.ndarray, classes: list[str]) -> str | None:
    """A warning when one predicted class holds over :data:`UNBALANCED_SHARE` of a folder."""
    counts = np.bincount(np.asarray(predicted, int), minlength=len(classes))
    top = int(counts.argmax())
    share = counts[top] / max(int(counts.sum()), 1)
    if share <= UNBALANCED_SHARE:
        return None
    return (
        f"warning: {share:.0%} of the unlabelled images are predicted {classes[top]!r}; "
        "batch-norm statistics of a folder this unbalanced describe that class rather than "
        "the lab, and re-estimating them is known to lower accuracy there. Give a folder "
        "with the classes mixed as in routine work, or leave --batchnorm off."
    )
