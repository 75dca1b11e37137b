import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ensemble.errors import NotFittedError, RunError
from ensemble.fitted import FittedEnsemble
from ensemble.stacker import Stacker
from tests.conftest import run_cli


@pytest.fixture()
def messy_folder(synthetic_folder, tmp_path):
    folder = tmp_path / "incoming"
    (folder / "nested").mkdir(parents=True)
    source = (
        synthetic_folder
        / "lymphocyte"
        / sorted(p.name for p in (synthetic_folder / "lymphocyte").iterdir())[0]
    )
    shutil.copy(source, folder / "good.png")
    pixels = np.asarray(Image.open(source).convert("RGB"))
    Image.fromarray(pixels).convert("L").save(folder / "nested" / "gray.png")
    rgba = np.dstack([pixels, np.full(pixels.shape[:2], 200, np.uint8)])
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(np.tile(pixels, (4, 4, 1))).save(folder / "big.jpg", quality=90)  # not 32 px
    (folder / "zero.jpg").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(np.tile(pixels, (3, 3, 1))).save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])
    (folder / "text.jpg").write_text("I am not an image")
    shutil.copy(source, folder / "nested" / "café cell №1.png")  # spaces and non-ASCII
    (folder / "nested" / "loop").symlink_to(folder)  # a symlink loop
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # OS clutter: not an image, ignored
    return folder


def test_predict_mixed_folder(fitted_ci_run, messy_folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    code, _, err = run_cli(["predict", messy_folder, "--run", fitted_ci_run, "--out", out], capsys)
    assert code == 3  # documented: some files could not be read
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:6] == [
        "path",
        "prediction",
        "confidence",
        "agreement",
        "abstain",
        "error",
    ]
    assert [c for c in rows[0] if c.startswith("vote_")] == [
        "vote_tiny-a",
        "vote_tiny-b",
        "vote_tiny-ovr",
    ]
    by_path = {row["path"]: row for row in rows}
    assert set(by_path) == {
        "good.png",
        "nested/gray.png",
        "rgba.png",
        "big.jpg",
        "zero.jpg",
        "truncated.jpg",
        "text.jpg",
        "nested/café cell №1.png",
    }
    for good in ("good.png", "nested/gray.png", "rgba.png", "big.jpg", "nested/café cell №1.png"):
        assert by_path[good]["prediction"] and not by_path[good]["error"]
        assert 0 <= float(by_path[good]["confidence"]) <= 1
        assert by_path[good]["abstain"] in ("true", "false")
    assert "empty file" in by_path["zero.jpg"]["error"]
    assert (
        "truncated" in by_path["truncated.jpg"]["error"]
        or "corrupt" in by_path["truncated.jpg"]["error"]
    )
    assert "not an image" in by_path["text.jpg"]["error"]
    for bad in ("zero.jpg", "truncated.jpg", "text.jpg"):
        assert by_path[bad]["prediction"] == "" and f"skipped {bad}" in err
    assert "5 predicted, 3 skipped" in err


@pytest.mark.parametrize(
    "combiner", ["hard", "soft", "weighted", "greedy", "stack", "ovr", "tiny-a"]
)
def test_every_combiner_predicts_json(fitted_ci_run, synthetic_folder, tmp_path, capsys, combiner):
    folder = tmp_path / "few"
    shutil.copytree(synthetic_folder / "platelet", folder)
    out = tmp_path / "p.json"
    code, _, err = run_cli(
        ["predict", folder, "--run", fitted_ci_run, "--combiner", combiner, "--json", "--out", out],
        capsys,
    )
    assert code == 0, err
    records = json.loads(out.read_text())
    assert len(records) == 12 and all(r["prediction"] for r in records)


def test_unknown_combiner_one_line(fitted_ci_run, synthetic_folder, capsys):
    code, _, err = run_cli(
        ["predict", synthetic_folder, "--run", fitted_ci_run, "--combiner", "best"], capsys
    )
    assert code == 2 and "unknown combiner 'best'. Choose from" in err and err.count("\n") == 1


def test_changed_member_refused(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    shutil.copy(run / "members/tiny-a/model.keras", run / "members/tiny-b/model.keras")
    code, _, err = run_cli(["predict", synthetic_folder, "--run", run], capsys)
    assert code == 2 and "members changed since the combiners were fitted: ['tiny-b']" in err


def test_stacker_refuses_other_members(fitted_ci_run):
    with pytest.raises(RunError, match="fitted on other members \\(changed: \\['tiny-a'\\]\\)"):
        hashes = json.loads((fitted_ci_run / "combiners/selection.json").read_text())[
            "member_model_sha256"
        ]
        Stacker.load(fitted_ci_run / "combiners", member_hashes=hashes | {"tiny-a": "0" * 64})


def test_stacker_leakage_guard():
    stacker = Stacker(["m"])
    features, probabilities = [np.zeros((4, 3))], [np.full((4, 2), 0.5)]
    split_of = {"a": "blend", "b": "blend", "c": "train", "d": "blend"}
    with pytest.raises(
        RunError, match="only be fitted on the blend split; 1 images .*c in 'train'"
    ):
        stacker.fit(features, probabilities, np.array([0, 1, 0, 1]), ["a", "b", "c", "d"], split_of)


def test_predict_before_fit_stacker(synthetic_folder, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "members").mkdir(parents=True)
    (run / "manifest.json").write_text(
        json.dumps({"format_version": 1, "classes": ["a"], "members": []})
    )
    code, _, err = run_cli(["predict", synthetic_folder, "--run", run], capsys)
    assert code == 2 and "Run `ensemble fit-stacker` first" in err


def test_fit_stacker_before_train_members(synthetic_folder, tmp_path, capsys):
    code, _, err = run_cli(
        ["fit-stacker", "--run", tmp_path / "nothing", "--data", synthetic_folder], capsys
    )
    assert code == 2 and "not a run directory" in err


def test_report_on_ci_run(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    out = tmp_path / "report"
    code, stdout, err = run_cli(
        ["report", "--run", fitted_ci_run, "--data", synthetic_folder, "--out", out], capsys
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {
        "tiny-a",
        "tiny-b",
        "tiny-ovr",
        "hard",
        "soft",
        "weighted",
        "greedy",
        "stack",
    }
    assert set(metrics["shifted"]) == set(metrics["models"])
    text = (out / "report.md").read_text()
    for model, values in metrics["models"].items():
        assert f"{values['accuracy']:.4f}" in text
        assert (out / f"confusion_{model}.png").is_file()
    assert (out / "calibration_and_abstention.png").is_file()
    assert "hard vs stack" in text and "best combiner" in stdout


def test_report_bad_split_one_line(fitted_ci_run, capsys):
    code, _, err = run_cli(["report", "--run", fitted_ci_run, "--split", "holdout"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "'holdout' is not one of 'test', 'blend', 'val', 'train'" in err


@pytest.mark.parametrize("artifact", ["stacker.ubj", "weighted.json", "temperatures.json"])
def test_changed_or_truncated_combiner_file_refused(
    fitted_ci_run, synthetic_folder, tmp_path, capsys, artifact
):
    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    path = run / "combiners" / artifact
    path.write_bytes(path.read_bytes()[:-10])
    code, _, err = run_cli(["predict", synthetic_folder, "--run", run], capsys)
    assert code == 2 and f"combiner file {path} is missing, changed or truncated" in err


def test_run_from_other_format_version_refused(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["format_version"] = 0
    (run / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["predict", synthetic_folder, "--run", run], capsys)
    assert code == 2 and "written by format version 0" in err


def test_tta_predicts(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    folder = tmp_path / "few"
    shutil.copytree(synthetic_folder / "monocyte", folder)
    code, _, err = run_cli(
        ["predict", folder, "--run", fitted_ci_run, "--tta", "--out", tmp_path / "p.csv"], capsys
    )
    assert code == 0, err
    assert len(list(csv.DictReader((tmp_path / "p.csv").open()))) == 12


def test_feature_cache_reused_and_invalidated(fitted_ci_run, synthetic_folder, tmp_path):
    from ensemble.data import load_dataset
    from ensemble.features import cached_member_outputs
    from ensemble.run import open_run

    run_dir = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run_dir)
    run = open_run(run_dir, load_dataset(synthetic_folder))
    data_file = run_dir / "features/tiny-a/blend.npz"
    key_file = run_dir / "features/tiny-a/blend.json"
    before = data_file.stat().st_mtime_ns
    first = cached_member_outputs(run, "tiny-a", "blend")
    assert data_file.stat().st_mtime_ns == before  # reused, not recomputed
    key = json.loads(key_file.read_text())
    key["model_sha256"] = "0" * 64  # as if the member had been retrained
    key_file.write_text(json.dumps(key))
    second = cached_member_outputs(run, "tiny-a", "blend")
    assert data_file.stat().st_mtime_ns != before
    assert json.loads(key_file.read_text())["model_sha256"] != "0" * 64
    assert np.allclose(first["probabilities"], second["probabilities"], atol=1e-5)
    assert list(first["ids"]) == run.split.ids("blend")


def test_fitted_ensemble_loads_once_and_predicts_like_the_command(
    fitted_ci_run, synthetic_folder, tmp_path, capsys, monkeypatch
):
    import ensemble.fitted

    hashed = []
    real_hash = ensemble.run.file_sha256
    monkeypatch.setattr(ensemble.run, "file_sha256", lambda p: hashed.append(p) or real_hash(p))
    fitted = FittedEnsemble.load(fitted_ci_run, "soft")
    assert len(hashed) == 3  # each member model hashed once per load
    assert fitted.members == ["tiny-a", "tiny-b", "tiny-ovr"] and len(fitted.classes) == 8
    assert fitted.choices() == [
        *("hard", "soft", "weighted", "greedy", "stack"),
        *("tiny-a", "tiny-b", "tiny-ovr", "ovr"),
    ]
    paths = sorted((synthetic_folder / "platelet").iterdir())
    out = tmp_path / "p.csv"
    code, _, err = run_cli(
        ["predict", synthetic_folder / "platelet", "--run", fitted_ci_run, "--out", out]
        + ["--combiner", "soft"],
        capsys,
    )
    assert code == 0, err
    predicted = fitted.predict(paths)  # decoded and resized to each member's size inside
    assert [fitted.classes[i] for i in predicted] == [
        row["prediction"] for row in csv.DictReader(out.open())
    ]
    from PIL import Image

    big = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64))) for p in paths])
    assert fitted.predict_proba(big).shape == (12, 8)  # any size: resized per member


def test_every_combiner_of_the_registry_is_loaded(fitted_ci_run):
    from ensemble.combiners import registered_combiners

    fitted = FittedEnsemble.load(fitted_ci_run)
    assert list(fitted.combiners) == list(registered_combiners())
    assert (
        fitted.combiner
        == json.loads((fitted_ci_run / "combiners/selection.json").read_text())["default_combiner"]
    )
    assert FittedEnsemble.load(fitted_ci_run, "ovr").combiner == "tiny-ovr"


def test_not_fitted_error_is_reported_as_a_bug(
    fitted_ci_run, synthetic_folder, capsys, monkeypatch
):
    """A programming error surfaces with its traceback, not as a one-line input error (exit 2)."""
    from ensemble.combiners import SoftVote

    def broken(self, stack):
        raise NotFittedError("SoftVote")

    monkeypatch.setattr(SoftVote, "predict_proba", broken)
    args = ["predict", synthetic_folder / "platelet", "--run", fitted_ci_run, "--combiner", "soft"]
    with pytest.raises(NotFittedError, match="This is a bug"):
        run_cli(args, capsys)


def test_tta_mismatch_warns_once_on_stderr(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    folder = tmp_path / "few"
    shutil.copytree(synthetic_folder / "monocyte", folder)
    out = tmp_path / "p.csv"
    code, _, err = run_cli(["predict", folder, "--run", fitted_ci_run, "--out", out], capsys)
    assert code == 0 and "test-time augmentation" not in err  # fitted and applied without
    code, _, err = run_cli(
        ["predict", folder, "--run", fitted_ci_run, "--tta", "--out", out], capsys
    )
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: the combiners of {fitted_ci_run} were fitted without test-time augmentation "
        "but are applied with it; their weights and temperatures may not fit these outputs "
        "(run `ensemble fit-stacker --tta` to match)"
    ]


@pytest.mark.large  # refits every combiner, the stacker grid included, on 8-view outputs
def test_fit_stacker_with_tta_records_it(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    code, out, err = run_cli(["fit-stacker", "--run", run, "--tta"], capsys)
    assert code == 0, err
    assert "default combiner:" in out
    selection = json.loads((run / "combiners/selection.json").read_text())
    assert selection["tta"] is True
    assert (run / "features/tiny-a/blend-tta.npz").is_file()  # the plain cache is kept apart
    assert json.loads((run / "features/tiny-a/blend-tta.json").read_text())["tta"] is True
    plain = np.load(run / "features/tiny-a/blend.npz")["features"]
    augmented = np.load(run / "features/tiny-a/blend-tta.npz")["features"]
    assert plain.shape == augmented.shape and not np.array_equal(plain, augmented)
    folder = tmp_path / "few"
    shutil.copytree(synthetic_folder / "monocyte", folder)
    code, _, err = run_cli(["predict", folder, "--run", run, "--out", tmp_path / "p.csv"], capsys)
    assert code == 0 and "fitted with test-time augmentation but are applied without" in err
    assert "(pass --tta to match)" in err
    code, _, err = run_cli(
        ["predict", folder, "--run", run, "--tta", "--out", tmp_path / "p.csv"], capsys
    )
    assert code == 0 and "warning" not in err


def test_fit_stacker_output_lists_every_combiner_and_member(fitted_ci):
    lines = fitted_ci.out.splitlines()
    names = [line.split()[0] for line in lines if "cross-validated blend accuracy" in line]
    assert names == ["hard", "soft", "weighted", "greedy", "stack", "tiny-a", "tiny-b", "tiny-ovr"]
    default = json.loads((fitted_ci.run / "combiners/selection.json").read_text())
    assert lines[-1].startswith(f"default combiner: {default['default_combiner']} ")


def test_moved_data_names_the_recorded_path(fitted_ci_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["data_source"] = str(tmp_path / "moved-away")
    (run / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["fit-stacker", "--run", run], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"is not at {tmp_path / 'moved-away'}, the path its manifest records" in err
    assert "Pass --data with the data's current location" in err
