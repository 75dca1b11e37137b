"""ensemble adapt --unlabelled: colour normalisation and batch-norm statistics, no labels."""

import hashlib
import json

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.test_adapt import _digests, _lab


@pytest.fixture(scope="module")
def lab(synthetic_folder, tmp_path_factory):
    """64 synthetic cells under one stain cast, with a path,label CSV beside them."""
    reviewed = _lab(tmp_path_factory.mktemp("lab"), synthetic_folder)
    return reviewed.parent


def _images(folder):
    from PIL import Image

    paths = sorted(folder.glob("*.png"))
    return paths, np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def test_colour_only_keeps_the_members_and_maps_every_image(fitted_ci_run, lab, tmp_path, capsys):
    from ensemble import Ensemble
    from ensemble.data.colour import ColourNormaliser

    before = _digests(fitted_ci_run)
    out = tmp_path / "run"
    args = ["adapt", "--run", fitted_ci_run, "--unlabelled", lab, "--colour", "reinhard"]
    code, stdout, err = run_cli([*args, "--out", out], capsys)
    assert code == 0, err
    assert "colour (reinhard) from 64 lab images" in stdout
    assert _digests(fitted_ci_run) == before  # the base is only read
    for name in ("tiny-a", "tiny-b", "tiny-ovr"):
        assert (out / f"members/{name}/model.keras").read_bytes() == (
            fitted_ci_run / f"members/{name}/model.keras"
        ).read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    recorded = manifest["adapted_from"]
    assert recorded | {"member_sha256": None} == {
        "run": str(fitted_ci_run.resolve()),
        "member_sha256": None,
        "unlabelled": 64,
        "colour": "reinhard",
        "colour_sha256": hashlib.sha256((out / "colour.json").read_bytes()).hexdigest(),
        "batchnorm": False,
        "calibration": "inherited: the base run's, fitted on its own members' outputs",
    }
    assert not (out / ".adapt-incomplete").exists()
    base, adapted = Ensemble.load(fitted_ci_run), Ensemble.load(out)
    normaliser = ColourNormaliser.from_json(json.loads((out / "colour.json").read_text()))
    assert adapted.colour_ == normaliser and base.colour_ is None
    _, images = _images(lab)
    resized = base.images_by_size(images)  # the map applies at each member's input size
    mapped = {size: normaliser.transform(batch) for size, batch in resized.items()}
    np.testing.assert_allclose(adapted.predict_proba(images), base.predict_proba(mapped), atol=1e-6)
    assert not np.allclose(adapted.predict_proba(images), base.predict_proba(images), atol=1e-3)


def test_batchnorm_changes_only_the_cnn_members_and_the_run_still_verifies(
    fitted_ci_run, lab, tmp_path, capsys
):
    from ensemble import Ensemble

    out = tmp_path / "run"
    args = ["adapt", "--run", fitted_ci_run, "--unlabelled", lab, "--batchnorm", "--out", out]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "batch-norm statistics from 64 lab images" in stdout

    def same(name):
        new, old = out / f"members/{name}/model.keras", fitted_ci_run / f"members/{name}"
        return new.read_bytes() == (old / "model.keras").read_bytes()

    # the one-vs-rest member holds a copy of its base's backbone: re-estimated too
    assert not same("tiny-a") and not same("tiny-b") and not same("tiny-ovr")
    adapted = Ensemble.load(out)  # every recorded hash was rewritten: the loader's checks pass
    assert adapted.member_hashes_ != Ensemble.load(fitted_ci_run).member_hashes_
    paths, _ = _images(lab)
    assert len(adapted.predict(paths)) == 64
    selection = json.loads((out / "combiners/selection.json").read_text())
    assert selection["member_model_sha256"] == adapted.member_hashes_


def test_the_report_sets_the_unlabelled_adaptation_beside_its_base(
    fitted_ci_run, lab, tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["adapt", "--run", fitted_ci_run, "--unlabelled", lab, "--colour", "reinhard"]
    assert run_cli([*args, "--out", out], capsys)[0] == 0
    code, _, err = run_cli(
        ["report", "--run", out, "--data", lab / "reviewed.csv", "--out", tmp_path / "r"], capsys
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "r/metrics.json").read_text())["adapted"]["rows"]
    assert set(rows) == {"base", "adapted"}
    assert "## Adapted run and its base on these images" in (tmp_path / "r/report.md").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--unlabelled needs something to do with the images: --colour reinhard"),
        (["--colour", "macenko"], "unknown colour normalisation 'macenko'. Choose from"),
        (
            ["--colour", "reinhard", "--epochs", "3"],
            "--epochs sets how reviewed cells are fine-tuned on; without --labelled nothing is",
        ),
        (
            ["--colour", "reinhard", "--replay", "1", "--learning-rate", "0.001"],
            "--learning-rate, --replay set how reviewed cells are fine-tuned on",
        ),
        (
            ["--colour", "reinhard", "--data-root", "."],
            "--data-root is the folder the --labelled CSV's relative paths start from",
        ),
        (
            ["--batchnorm", "--labelled", "x.csv"],
            "with --labelled cells the fine-tuning re-estimates them on the lab's cells itself",
        ),
        (["--labelled", "x.csv"], "add --colour reinhard, or leave --unlabelled out"),
        (["--colour", "hed", "--labelled", "x.csv"], "unknown colour normalisation 'hed'"),
        (["--colour", "reinhard", "--out-is-base"], "not the base run"),
    ],
)
def test_bad_requests_are_refused_in_one_line(extra, message, fitted_ci_run, lab, tmp_path, capsys):
    out = fitted_ci_run if "--out-is-base" in extra else tmp_path / "out"
    extra = [item for item in extra if item != "--out-is-base"]
    args = ["adapt", "--run", fitted_ci_run, "--unlabelled", lab, "--out", out, *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_too_few_images_and_no_cells_at_all(fitted_ci_run, lab, tmp_path, capsys):
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(lab.glob("*.png"))[:5]:
        (few / path.name).write_bytes(path.read_bytes())
    (few / "notes.txt").write_text("not an image")
    args = ["adapt", "--run", fitted_ci_run, "--unlabelled", few, "--colour", "reinhard"]
    code, _, err = run_cli([*args, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "holds 5 readable images; the lab's statistics need at least 20" in err
    assert "1 unreadable files left out" in err and "notes.txt" in err
    code, _, err = run_cli(["adapt", "--run", fitted_ci_run, "--out", tmp_path / "o"], capsys)
    assert code == 2 and "adapt needs the lab's cells: --labelled reviewed.csv" in err


def test_a_changed_colour_map_is_refused_and_the_inherited_referral_is_said(
    fitted_ci_run, lab, tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["adapt", "--run", fitted_ci_run, "--unlabelled", lab, "--colour", "reinhard"]
    assert run_cli([*args, "--out", out], capsys)[0] == 0
    code, _, err = run_cli(["predict", lab, "--run", out, "--out", tmp_path / "p.csv"], capsys)
    assert code == 3, err  # 64 cells predicted; reviewed.csv is not an image
    assert f"note: {out} was adapted without labels: its temperatures, prediction sets" in err
    record = json.loads((out / "colour.json").read_text())
    record["source_mean"][0] += 0.1
    (out / "colour.json").write_text(json.dumps(record))
    code, _, err = run_cli(["predict", lab, "--run", out, "--out", tmp_path / "q.csv"], capsys)
    assert code == 2 and "['colour.json'] of" in err and "changed since `ensemble adapt`" in err


def test_out_must_be_a_new_folder(fitted_ci_run, lab, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    args = ["adapt", "--run", fitted_ci_run, "--unlabelled", lab, "--colour", "reinhard"]
    code, _, err = run_cli([*args, "--out", busy], capsys)
    assert code == 2 and f"--out {busy} is a folder with files in it" in err
    assert (busy / "keep.txt").read_text() == "mine"  # never emptied
    code, _, err = run_cli([*args, "--out", fitted_ci_run.parent], capsys)
    assert code == 2 and "would hold the base run" in err


def test_a_cell_both_reviewed_and_unlabelled_counts_once_in_the_colour_statistics(monkeypatch):
    from ensemble.core.errors import DataError
    from ensemble.serve import lab_colour

    rng = np.random.default_rng(0)
    first, second = (rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(2))
    same_pixels_other_shape = first.reshape(10, 40, 3)
    distinct = lab_colour.distinct_images([first, second, first.copy(), same_pixels_other_shape])
    assert [image.shape for image in distinct] == [(20, 20, 3), (20, 20, 3), (10, 40, 3)]
    assert np.array_equal(distinct[0], first) and np.array_equal(distinct[1], second)

    fitted = {}
    monkeypatch.setattr(lab_colour, "reference_images", lambda base, seed: "reference")
    monkeypatch.setattr(
        lab_colour.ColourNormaliser, "fit", lambda lab, reference, seed: fitted.update(n=len(lab))
    )
    monkeypatch.setattr(lab_colour, "MIN_IMAGES", 2)
    lab_colour.fit_lab_colour(None, [first, second, first, first], seed=0)
    assert fitted["n"] == 2
    with pytest.raises(DataError, match="1 distinct lab images .* too few"):
        lab_colour.fit_lab_colour(None, [first, first, first], seed=0)
