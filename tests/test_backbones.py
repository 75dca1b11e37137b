import numpy as np
import pytest

from ensemble.core.errors import ConfigError
from ensemble.members.backbones import (
    POOLED_FEATURES,
    available_backbones,
    build_backbone,
    get_backbone,
    register,
)

FEATURES = {
    "resnet50": 2048,
    "efficientnetb0": 1280,
    "mobilenetv2": 1280,
    "mobilenetv3small": 576,
    "simplecnn": 128,
}


def test_registry_has_required_backbones():
    assert set(FEATURES) <= set(available_backbones())


@pytest.mark.parametrize("name", available_backbones())
def test_every_backbone_builds_from_scratch(name):
    model = build_backbone(name, 32, weights="none")
    out = model.predict(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)), verbose=0)
    assert out.shape == (2, FEATURES[name])
    assert model.get_layer(POOLED_FEATURES) is not None


def test_caffe_preprocessing_is_bgr_minus_mean():
    import keras

    model = build_backbone("resnet50", 32)
    layer = model.get_layer("caffe_bgr_mean")
    probe = keras.Model(model.input, layer.output)
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32").repeat(32, 1).repeat(32, 2)
    out = probe.predict(pixel, verbose=0)[0, 0, 0]
    assert out == pytest.approx([30 - 103.939, 20 - 116.779, 10 - 123.68], abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "vgg99", "input_size": 32}, "unknown backbone 'vgg99'. Choose from \\["),
        ({"name": "mobilenetv2", "input_size": 8}, "input size 8 is too small"),
        (
            {"name": "mobilenetv2", "input_size": 32, "weights": "/no/such.h5"},
            "weights file not found",
        ),
    ],
)
def test_bad_backbone_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_backbone(**kwargs)


def test_imagenet_offline_fails_with_advice(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example/weights.h5: [Errno -3] resolve")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.mobilenet_v2.file_utils.get_file", offline)
    with pytest.raises(
        ConfigError, match="could not download the ImageNet weights.*weights='none'"
    ):
        build_backbone("mobilenetv2", 96, weights="imagenet")


def test_local_weights_file_round_trip(tmp_path):
    first = build_backbone("mobilenetv3small", 32)
    inner = first.layers[1] if first.layers[1].name != "image" else first.layers[2]
    path = tmp_path / "w.weights.h5"
    inner.save_weights(path)
    second = build_backbone("mobilenetv3small", 32, weights=path)
    x = np.random.default_rng(1).uniform(0, 255, (1, 32, 32, 3))
    assert np.allclose(first.predict(x, verbose=0), second.predict(x, verbose=0), atol=1e-5)


def test_duplicate_registration_refused():
    with pytest.raises(ValueError, match="already registered"):
        register("resnet50", preprocessing="caffe")(lambda **k: None)
    assert get_backbone("resnet50").preprocessing == "caffe"
