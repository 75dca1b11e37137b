"""The backbone registry: every CNN a member can be built on, with its own preprocessing.

The keras.applications families expect differently scaled inputs ("caffe": BGR minus the
ImageNet mean; "tf": [-1, 1]; some scale inside the model). Feeding one family the other's
scaling is a silent accuracy bug, so each entry carries its preprocessing and
:func:`build_backbone` puts it *inside* the model: every model takes raw 0–255 RGB.

Adding a backbone is one decorated function::

    @register("resnet101", preprocessing="caffe")
    def _resnet101(**kwargs):
        return keras.applications.ResNet101(**kwargs)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ensemble.core.errors import ConfigError

POOLED_FEATURES = "pooled_features"  # name of every backbone's global-average-pooled output
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
PREPROCESSING = ("caffe", "tf", "builtin")


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone."""

    name: str  # registry key, e.g. "resnet50"
    constructor: Callable  # keras.applications-style: (include_top, weights, input_shape) → Model
    preprocessing: str  # "caffe" | "tf" | "builtin" (the model scales its own input)
    min_input: int  # smallest input side the architecture accepts


_REGISTRY: dict[str, BackboneEntry] = {}


def register(name: str, *, preprocessing: str, min_input: int = 32) -> Callable:
    """Decorator: add a backbone constructor to the registry under ``name`` (unique)."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"preprocessing must be one of {PREPROCESSING}. Received: {preprocessing}")

    def decorate(constructor: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = BackboneEntry(name, constructor, preprocessing, min_input)
        return constructor

    return decorate


def available_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneEntry:
    """Return the registry entry for ``name``.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown backbone {name!r}. Choose from {available_backbones()}. "
            f"Received: backbone={name!r}"
        )
    return _REGISTRY[name]


def build_backbone(name: str, input_size: int, weights: str | Path = "none"):
    """Build a backbone that maps raw 0–255 RGB images to pooled features.

    Args:
        name: a registered backbone name (see :func:`available_backbones`).
        input_size: input side length in pixels.
        weights: ``"imagenet"`` (downloaded by Keras; needs a network), ``"none"`` (random
            initialisation, for training from scratch) or a path to a weights file.

    Returns:
        A ``keras.Model`` from ``(input_size, input_size, 3)`` float 0–255 images to a
        ``(features,)`` vector; the pooled layer is named :data:`POOLED_FEATURES`.

    Raises:
        ConfigError: unknown name, input too small, missing weights file, or ImageNet weights
            that cannot be downloaded (the message says how to train from scratch instead).

    Example:
        >>> model = build_backbone("mobilenetv2", 64, weights="none")  # doctest: +SKIP
        >>> model.output_shape  # doctest: +SKIP
        (None, 1280)
    """
    import keras

    entry = get_backbone(name)
    if input_size < entry.min_input:
        raise ConfigError(
            f"input size {input_size} is too small for {name}: at least {entry.min_input}. "
            f"Received: input_size={input_size}"
        )
    keras_weights = _resolve_weights(weights)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    try:
        network = entry.constructor(
            include_top=False, weights=keras_weights, input_shape=(input_size, input_size, 3)
        )
    except Exception as error:  # Keras raises bare Exception on a failed download
        if keras_weights == "imagenet" and _looks_like_download_failure(error):
            raise ConfigError(
                f"could not download the ImageNet weights for {name} ({error}). Without a "
                "network, pass weights='none' to train from scratch, or weights='/path/to/"
                "weights.h5' for a local copy."
            ) from None
        raise
    features = network(_preprocess(inputs, entry.preprocessing))
    pooled = keras.layers.GlobalAveragePooling2D(name=POOLED_FEATURES)(features)
    return keras.Model(inputs, pooled, name=f"{name}_backbone")


def _resolve_weights(weights: str | Path) -> str | None:
    if isinstance(weights, Path) or str(weights) not in ("imagenet", "none"):
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(
                f"weights file not found: {path}. Use 'imagenet', 'none' or an existing file. "
                f"Received: weights={str(weights)!r}"
            )
        return str(path)
    return None if weights == "none" else "imagenet"


def _looks_like_download_failure(error: Exception) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return any(word in text for word in ("url", "fetch", "download", "connection", "resolve"))


def _preprocess(inputs, mode: str):
    """Apply a family's input scaling with standard, serialisable layers (no Lambda)."""
    import keras
    import numpy as np

    if mode == "builtin":
        return inputs
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale_to_pm1")(inputs)
    # caffe: RGB → BGR and subtract the ImageNet mean, as a frozen 1×1 convolution.
    swap = np.zeros((1, 1, 3, 3), dtype="float32")
    for source, target in ((0, 2), (1, 1), (2, 0)):
        swap[0, 0, source, target] = 1.0
    bias = -np.array(IMAGENET_MEAN_RGB[::-1], dtype="float32")
    layer = keras.layers.Conv2D(3, 1, name="caffe_bgr_mean", trainable=False)
    outputs = layer(inputs)
    layer.set_weights([swap, bias])
    return outputs


def _applications():
    import keras

    return keras.applications


@register("resnet50", preprocessing="caffe")
def _resnet50(**kwargs):
    return _applications().ResNet50(**kwargs)


@register("efficientnetb0", preprocessing="builtin")
def _efficientnetb0(**kwargs):
    return _applications().EfficientNetB0(**kwargs)


@register("mobilenetv2", preprocessing="tf")
def _mobilenetv2(**kwargs):
    return _applications().MobileNetV2(**kwargs)


@register("mobilenetv3small", preprocessing="builtin")
def _mobilenetv3small(**kwargs):
    return _applications().MobileNetV3Small(**kwargs)


@register("simplecnn", preprocessing="tf", min_input=16)
def _simplecnn(include_top=False, weights=None, input_shape=(64, 64, 3)):
    """A small 4-block CNN (about 0.1 M parameters) for the demo and fast tests."""
    import keras

    if weights not in (None, "none"):
        from ensemble.core.errors import ConfigError

        raise ConfigError(
            "simplecnn has no pretrained weights. Use weights='none'. "
            f"Received: weights={weights!r}"
        )
    inputs = keras.Input(input_shape)
    x = inputs
    for index, width in enumerate((16, 32, 64, 128)):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
        if index < 3:
            x = keras.layers.MaxPooling2D(name=f"pool{index}")(x)
    return keras.Model(inputs, x, name="simplecnn")
