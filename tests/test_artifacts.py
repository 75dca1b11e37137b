import pytest

from ensemble.artifacts import load_keras_model
from ensemble.errors import RunError


def test_lambda_layer_refused(tmp_path):
    import keras

    inputs = keras.Input((2,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = tmp_path / "evil.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(RunError, match="refusing to load .*evil.keras: it contains a Lambda layer"):
        load_keras_model(path)


def test_truncated_model_refused(tmp_path):
    import keras

    path = tmp_path / "m.keras"
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(RunError, match="m.keras is truncated or not a .keras archive"):
        load_keras_model(path)


def test_missing_model(tmp_path):
    with pytest.raises(RunError, match="model file not found"):
        load_keras_model(tmp_path / "none.keras")
