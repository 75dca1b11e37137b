import pytest

from ensemble.core.artifacts import load_keras_model
from ensemble.core.errors import RunError


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


NO_PICKLE = """
import pickle, sys

def refuse(*args, **kwargs):
    raise SystemExit("pickle used on the predict path")

def audit(event, args):
    if event == "pickle.find_class":
        refuse()

sys.addaudithook(audit)
pickle.load = pickle.loads = refuse
sys.argv = ["ensemble", *sys.argv[1:]]
from ensemble.cli import main
main()
"""


def test_predict_path_never_unpickles(fitted_ci_run, synthetic_folder, tmp_path):
    """Predict with the stacker (it loads every member, the PCA and XGBoost) while any use of
    pickle would abort the process."""
    import subprocess
    import sys

    out = tmp_path / "stack.csv"
    command = [sys.executable, "-c", NO_PICKLE, "predict", str(synthetic_folder / "basophil")]
    command += ["--run", str(fitted_ci_run), "--combiner", "stack", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 1 + 12
