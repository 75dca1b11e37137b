"""ensemble distill: the whole fitted ensemble teaches one student, saved as a run of its own."""

# Real training (fine-tuning every member, or a student): run with the slow tests (-m large).

import hashlib
import json

import numpy as np
import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.large

SPEC = REPO / "members/ci/tiny-distilled.toml"


def _digests(folder):
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def distilled(fitted_ci_run, tmp_path_factory):
    from tests.conftest import run_cli_captured

    before = _digests(fitted_ci_run)
    out = tmp_path_factory.mktemp("distilled") / "student"
    args = ["distill", "--run", fitted_ci_run, "--out", out, "--spec", SPEC]
    code, stdout, err = run_cli_captured(args)
    assert code == 0, err
    return out, stdout, err, before


def test_the_student_is_a_run_of_one_member_with_its_own_referral(distilled, fitted_ci_run):
    out, stdout, _, _ = distilled
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["members"] == ["tiny-distilled"]
    teacher = manifest["distilled_from"]
    base_selection = json.loads((fitted_ci_run / "combiners/selection.json").read_text())
    assert teacher["combiner"] == base_selection["default_combiner"]
    assert teacher["member_sha256"] == base_selection["member_model_sha256"]
    selection = json.loads((out / "combiners/selection.json").read_text())
    assert selection["default_combiner"] == "tiny-distilled"  # the student itself, no combiner
    assert selection["calibration"]["conformal"] and selection["calibration"]["selective"]
    assert (out / "split.json").read_bytes() == (fitted_ci_run / "split.json").read_bytes()
    assert f"run {out}" in stdout


def test_the_base_run_is_only_read(distilled, fitted_ci_run):
    _, _, _, before = distilled
    assert _digests(fitted_ci_run) == before


def test_the_student_learned_from_the_ensembles_probabilities(distilled, fitted_ci_run):
    from ensemble import Ensemble

    out, _, _, _ = distilled
    with np.load(out / "teacher.npz") as cached:
        teacher, ids = cached["probabilities"], cached["ids"]
    counts = json.loads((fitted_ci_run / "split.json").read_text())["counts"]
    assert teacher.shape == (counts["train"], 8) and len(ids) == counts["train"]
    assert np.allclose(teacher.sum(axis=1), 1, atol=1e-4)
    spec = json.loads((out / "members/tiny-distilled/spec.json").read_text())
    assert spec["distill"]["teachers"] == [f"ensemble:{fitted_ci_run.name}"]
    assert spec["init_from"].endswith("members/tiny-a/model.keras")
    assert Ensemble.load(out).combiner_ == "tiny-distilled"


def test_predict_loads_the_student_like_any_run(distilled, synthetic_folder, capsys):
    out, _, _, _ = distilled
    code, stdout, err = run_cli(
        ["predict", synthetic_folder / "platelet", "--run", out, "--out", "-"], capsys
    )
    assert code == 0, err
    assert stdout.count("\n") == 13 and "vote_tiny-distilled" in stdout.splitlines()[0]


def test_a_second_call_trains_nothing_again_and_the_base_is_no_out(
    distilled, fitted_ci_run, capsys
):
    out, _, _, _ = distilled
    kept = {
        name: (out / name).read_bytes()
        for name in ("teacher.npz", "members/tiny-distilled/model.keras")
    }
    args = ["distill", "--run", fitted_ci_run, "--out", out, "--spec", SPEC]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "training images" not in err  # the teacher was not asked again
    assert all((out / name).read_bytes() == data for name, data in kept.items())
    code, _, err = run_cli(["distill", "--run", fitted_ci_run, "--out", fitted_ci_run], capsys)
    assert code == 2 and "--out must be a new run directory, not the base run" in err
