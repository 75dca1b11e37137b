"""The public Python API: `from ensemble import Ensemble`, the same numbers as `predict`."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ensemble.core.errors import RunError
from tests.conftest import REPO, run_cli


@pytest.fixture(scope="module")
def platelets(synthetic_folder):
    return sorted((synthetic_folder / "platelet").iterdir())


def test_import_ensemble_stays_light_and_exports_ensemble():
    code = (
        "import sys, ensemble\n"
        "assert 'numpy' not in sys.modules and 'tensorflow' not in sys.modules\n"
        "from ensemble import Ensemble\n"
        "assert Ensemble.__module__ == 'ensemble.serve.ensemble'\n"
        "assert 'Ensemble' in ensemble.__all__\n"
        "try:\n    ensemble.Nothing\nexcept AttributeError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "module 'ensemble' has no attribute 'Nothing'" in done.stdout


def test_readme_example_runs(fitted_ci_run, synthetic_folder):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    example = (
        example.replace('"runs/pbc-cpu"', repr(str(fitted_ci_run)))
        .replace('"new-cells"', repr(str(synthetic_folder / "platelet")))
        .replace('"*.jpg"', '"*.png"')
    )
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    ens = namespace["ens"]
    assert ens.classes_ == json.loads((fitted_ci_run / "manifest.json").read_text())["classes"]
    assert namespace["predicted"].shape == (12,)
    assert set(namespace["predicted"]) <= set(ens.classes_)
    assert namespace["probabilities"].shape == (12, 8)
    assert namespace["sets"].shape == (12, 8) and namespace["sets"].dtype == bool
    assert namespace["scores"].shape == (12,) and namespace["referred"].dtype == bool


def test_api_gives_the_numbers_of_the_command(fitted_ci_run, platelets, tmp_path, capsys):
    from ensemble import Ensemble

    out = tmp_path / "p.json"
    folder = platelets[0].parent
    code, _, err = run_cli(
        ["predict", folder, "--run", fitted_ci_run, "--json", "--out", out]
        + ["--alpha", "0.2", "--refer", "conformal"],
        capsys,
    )
    assert code == 0, err
    written = json.loads(out.read_text())
    rows = {row["path"]: row for row in written["predictions"]}
    ens = Ensemble.load(fitted_ci_run)
    assert written["header"]["combiner"] == ens.combiner_
    cli = {
        "proba": np.array(
            [[rows[p.name]["probabilities"][c] for c in ens.classes_] for p in platelets]
        ),
        "sets": np.array(
            [[c in rows[p.name]["prediction_set"] for c in ens.classes_] for p in platelets]
        ),
        "ood": np.array([rows[p.name]["ood_score"] for p in platelets]),
        "abstain": np.array([rows[p.name]["abstain"] for p in platelets]),
        "predicted": [rows[p.name]["prediction"] for p in platelets],
    }
    np.testing.assert_allclose(ens.predict_proba(platelets), cli["proba"], rtol=0, atol=1e-6)
    assert list(ens.predict(platelets)) == cli["predicted"]
    np.testing.assert_array_equal(ens.predict_sets(platelets, alpha=0.2), cli["sets"])
    np.testing.assert_allclose(ens.ood_scores(platelets), cli["ood"], rtol=0, atol=1e-6)
    decisions = ens.decide(platelets, alpha=0.2, refer="conformal")
    np.testing.assert_array_equal(decisions.abstain, cli["abstain"])
    # The same images as one uint8 array at their own size: the same numbers again.
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in platelets])
    np.testing.assert_allclose(ens.predict_proba(pixels), cli["proba"], rtol=0, atol=1e-6)


def test_api_with_a_named_combiner_and_alpha(fitted_ci_run, platelets):
    from ensemble import Ensemble

    ens = Ensemble.load(fitted_ci_run, combiner="soft")
    assert ens.combiner_ == "soft" and ens.alpha_ == 0.01
    assert "soft" in repr(ens)
    loose, tight = ens.predict_sets(platelets, alpha=0.9), ens.predict_sets(platelets)
    assert (loose <= tight).all() and tight.all()  # 8 calibration images: 0.01 keeps every class
    assert loose.sum() < tight.sum()
    with pytest.raises(Exception, match="alpha must be a number strictly between 0 and 1"):
        ens.predict_sets(platelets, alpha=1.0)


@pytest.mark.parametrize("artifact", ["conformal-soft.json", "ood.json"])
def test_calibration_file_refuses_other_members(fitted_ci_run, tmp_path, artifact):
    """A calibration file from other members is refused by its own hashes, not only by the
    selection's record of the file (which a copied-in file would also fail)."""
    from ensemble import Ensemble
    from ensemble.core.hashes import file_sha256

    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    path = run / "combiners" / artifact
    saved = json.loads(path.read_text())
    saved["member_sha256"]["tiny-b"] = "0" * 64  # as if calibrated for another tiny-b
    path.write_text(json.dumps(saved))
    with pytest.raises(RunError, match=f"combiner file {re.escape(str(path))} is missing, changed"):
        Ensemble.load(run)
    selection_path = run / "combiners/selection.json"
    selection = json.loads(selection_path.read_text())
    selection["artifact_sha256"][artifact] = file_sha256(path)  # vouched for: only its own check
    selection_path.write_text(json.dumps(selection))
    with pytest.raises(RunError, match=r"calibrated for other members \(changed: \['tiny-b'\]\)"):
        Ensemble.load(run)


def test_run_fitted_before_prediction_sets_still_predicts(
    fitted_ci_run, platelets, tmp_path, capsys
):
    from ensemble import Ensemble

    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    selection_path = run / "combiners/selection.json"
    selection = json.loads(selection_path.read_text())
    del selection["calibration"]
    selection_path.write_text(json.dumps(selection))
    ens = Ensemble.load(run)
    assert ens.alpha_ is None and ens.ood_threshold_ is None
    assert ens.predict_proba(platelets).shape == (12, 8)
    with pytest.raises(RunError, match="has no prediction sets .* Run `ensemble fit-stacker`"):
        ens.predict_sets(platelets)
    out = tmp_path / "p.json"
    code, _, err = run_cli(
        ["predict", platelets[0].parent, "--run", run, "--json", "--out", out], capsys
    )
    assert code == 0 and "was fitted before prediction sets" in err
    written = json.loads(out.read_text())
    assert written["header"]["refer"] == "agreement" and written["header"]["alpha"] is None
    assert all(row["set_size"] is None for row in written["predictions"])
    code, _, err = run_cli(
        ["predict", platelets[0].parent, "--run", run, "--refer", "conformal"], capsys
    )
    assert code == 2 and "has no prediction sets" in err


def test_ood_ranks_noise_and_solid_colours_above_clean_cells(fitted_ci_run, synthetic_folder):
    """On the trained tiny run: pictures that are not cells score above every clean val cell."""
    from ensemble import Ensemble
    from ensemble.data.sources import load_dataset
    from ensemble.members.outputs import cached_member_outputs

    ens = fitted = Ensemble.load(fitted_ci_run)
    run = fitted.run.with_data(load_dataset(synthetic_folder))
    cached = {name: cached_member_outputs(run, name, "blend") for name in fitted.members_}
    clean = fitted.ood_from_outputs(
        fitted.calibrate(
            np.stack([cached[name]["probabilities"] for name in fitted.members_]),
            [cached[name]["features"] for name in fitted.members_],
        )
    )
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
    solid = np.broadcast_to(rng.integers(0, 256, (6, 1, 1, 3), dtype=np.uint8), (6, 48, 48, 3))
    strange = ens.ood_scores(np.concatenate([noise, solid]))
    assert strange.min() > clean.max()
    assert (strange > ens.ood_threshold_).all()
    decisions = ens.decide(np.concatenate([noise, solid]), alpha=0.5, refer="conformal")
    assert decisions.out_of_distribution.all() and decisions.abstain.all()
