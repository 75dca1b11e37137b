"""Batch-norm statistics re-estimated on a lab's unlabelled images (ensemble.members.batchnorm)."""

import numpy as np
import pytest

from ensemble.members.batchnorm import (
    batchnorm_layers,
    class_balance_warning,
    reestimate_batchnorm,
)


def _model():
    """Images → BN (straight on the pixels) → a nested block with its own BN → 3 classes."""
    import keras

    inner_input = keras.Input((8, 8, 4))
    inner = keras.Model(
        inner_input, keras.layers.BatchNormalization(name="inner_bn")(inner_input), name="block"
    )
    images = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(images)
    x = keras.layers.BatchNormalization(name="pixel_bn")(x)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = inner(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)
    return keras.Model(images, keras.layers.Dense(3, activation="softmax")(x))


def test_the_moving_statistics_become_the_labs():
    model = _model()
    rng = np.random.default_rng(0)
    images = rng.integers(100, 200, (130, 8, 8, 3)).astype(np.uint8)
    assert len(batchnorm_layers(model)) == 2  # the nested block's layer is found too
    momenta = [layer.momentum for layer in batchnorm_layers(model)]
    model.get_layer("pixel_bn").trainable = False  # frozen for fine-tuning: re-estimated too
    before = {weight.path: np.array(weight.numpy()) for weight in model.weights}
    assert reestimate_batchnorm(model, images, batch_size=32) == 2
    pixel_bn = model.get_layer("pixel_bn")
    pixels = images.reshape(-1, 3) / 255
    # the batches' means and variances, each weighted by its size (the last holds 2 images)
    batches = [pixels[start * 64 : (start + 32) * 64] for start in range(0, 129, 32)]
    weights = [len(b) for b in batches]
    expected_mean = np.average([b.mean(axis=0) for b in batches], axis=0, weights=weights)
    np.testing.assert_allclose(np.asarray(pixel_bn.moving_mean), expected_mean, rtol=1e-4)
    expected_var = np.average([b.var(axis=0) for b in batches], axis=0, weights=weights)
    np.testing.assert_allclose(np.asarray(pixel_bn.moving_variance), expected_var, rtol=2e-2)
    assert [layer.momentum for layer in batchnorm_layers(model)] == momenta
    assert pixel_bn.trainable is False
    after = {weight.path: np.array(weight.numpy()) for weight in model.weights}
    assert set(after) == set(before)
    changed = sorted(path for path in before if not np.array_equal(before[path], after[path]))
    assert len(changed) == 4, changed  # two moving means, two moving variances; nothing trained
    assert all("moving_" in path for path in changed)


def test_two_images_at_least():
    with pytest.raises(ValueError, match="needs >= 2 images. Received: 1"):
        reestimate_batchnorm(_model(), np.zeros((1, 8, 8, 3), np.uint8))


def test_an_unbalanced_folder_is_warned_about():
    classes = ["a", "b", "c"]
    assert class_balance_warning(np.array([0, 1, 2, 0, 1, 2]), classes) is None
    message = class_balance_warning(np.array([1, 1, 1, 1, 0, 2]), classes)
    assert message.startswith("warning: 67% of the unlabelled images are predicted 'b'")
    assert "leave --batchnorm off" in message
