"""One forward pass per member gives both its class probabilities and its pooled features."""

from __future__ import annotations

import numpy as np

from ensemble.backbones import POOLED_FEATURES


def feature_model(model):
    """A model returning ``[probabilities, pooled_features]`` from one pass through ``model``."""
    import keras

    return keras.Model(model.input, [model.output, model.get_layer(POOLED_FEATURES).output])


def member_outputs(
    model, images: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, K)`` and pooled features ``(N, F)`` of ``images`` (uint8)."""
    from ensemble.pipeline import inference_dataset

    probabilities, features = feature_model(model).predict(
        inference_dataset(images, batch_size), verbose=0
    )
    return probabilities.astype(np.float32), features.astype(np.float32)
