import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ensemble.combine.stacker import Stacker
from ensemble.core.errors import NotFittedError, RunError
from ensemble.serve.ensemble import Ensemble
from tests.conftest import run_cli


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
    referral = [
        c for c in rows[0] if c.startswith(("proba_", "referral_", "prediction_set", "set_", "ood"))
    ]
    assert referral[:4] == ["referral_reason", "prediction_set", "set_size", "ood_score"]
    assert len([c for c in referral if c.startswith("proba_")]) == 8
    good = by_path["good.png"]
    assert sum(float(good[f"proba_{name}"]) for name in ("basophil", "platelet")) <= 1
    assert set(good["prediction_set"].split("|")) <= {c[6:] for c in rows[0] if "proba_" in c}
    assert int(good["set_size"]) == len(good["prediction_set"].split("|"))
    assert by_path["zero.jpg"]["ood_score"] == "" and by_path["zero.jpg"]["set_size"] == ""


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
    records = json.loads(out.read_text())["predictions"]
    assert len(records) == 12 and all(r["prediction"] for r in records)


def test_unknown_combiner_one_line(fitted_ci_run, synthetic_folder, capsys):
    code, _, err = run_cli(
        ["predict", synthetic_folder, "--run", fitted_ci_run, "--combiner", "best"], capsys
    )
    assert code == 2 and "unknown combiner 'best'." in err and "Choose from" in err
    assert err.count("\n") == 1


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
    assert "--split must be one of train, val, blend, test. Received: 'holdout'." in err


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
    from ensemble.data.sources import load_dataset
    from ensemble.members.outputs import cached_member_outputs
    from ensemble.run.directory import open_run

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
    import ensemble.serve.ensemble

    hashed = []
    real_hash = ensemble.run.directory.file_sha256
    monkeypatch.setattr(
        ensemble.run.directory, "file_sha256", lambda p: hashed.append(p) or real_hash(p)
    )
    fitted = Ensemble.load(fitted_ci_run, "soft")
    assert len(hashed) == 3  # each member model hashed once per load
    assert fitted.members_ == ["tiny-a", "tiny-b", "tiny-ovr"] and len(fitted.classes_) == 8
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
    assert list(predicted) == [row["prediction"] for row in csv.DictReader(out.open())]
    big = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64))) for p in paths])
    assert fitted.predict_proba(big).shape == (12, 8)  # any size: resized per member


def test_every_combiner_of_the_registry_is_loaded(fitted_ci_run):
    from ensemble.combine.registry import registered_combiners

    fitted = Ensemble.load(fitted_ci_run)
    assert list(fitted.combiners_) == list(registered_combiners())
    assert (
        fitted.combiner_
        == json.loads((fitted_ci_run / "combiners/selection.json").read_text())["default_combiner"]
    )
    assert Ensemble.load(fitted_ci_run, "ovr").combiner_ == "tiny-ovr"


def test_not_fitted_error_is_reported_as_a_bug(
    fitted_ci_run, synthetic_folder, capsys, monkeypatch
):
    """A programming error surfaces with its traceback, not as a one-line input error (exit 2)."""
    from ensemble.combine.voting import SoftVote

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
    warnings = [line for line in err.splitlines() if "test-time augmentation" in line]
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
    assert code == 0 and "test-time augmentation" not in err


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


def _predict_json(folder, run, tmp_path, capsys, *options):
    out = tmp_path / "p.json"
    code, _, err = run_cli(
        ["predict", folder, "--run", run, "--json", "--out", out, *options], capsys
    )
    assert code == 0, err
    return json.loads(out.read_text()), err


def test_json_holds_numbers_booleans_nulls_and_a_header(
    fitted_ci_run, messy_folder, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["predict", messy_folder, "--run", fitted_ci_run, "--json"], capsys)
    assert code == 3, err
    assert not (tmp_path / "predictions.csv").exists()  # --json without --out: predictions.json
    written = json.loads((tmp_path / "predictions.json").read_text())
    assert "→ predictions.json" in err
    header = written["header"]
    assert header["run"] == str(fitted_ci_run) and header["combiner"] in header["members"] + [
        "hard",
        "soft",
        "weighted",
        "greedy",
        "stack",
    ]
    assert header["alpha"] == 0.01 and header["refer"] in ("conformal", "agreement")
    assert header["n_predicted"] == 5 and header["n_skipped"] == 3
    assert isinstance(header["ood_threshold"], float) and header["tta"] is False
    rows = {row["path"]: row for row in written["predictions"]}
    good = rows["good.png"]
    assert isinstance(good["confidence"], float) and isinstance(good["agreement"], float)
    assert isinstance(good["abstain"], bool) and good["error"] is None
    assert isinstance(good["set_size"], int) and not isinstance(good["set_size"], bool)
    assert isinstance(good["ood_score"], float) and isinstance(good["out_of_distribution"], bool)
    assert list(good["probabilities"]) == header["classes"]  # JSON: an object by class
    probabilities = [good["probabilities"][name] for name in header["classes"]]
    assert all(isinstance(p, float) for p in probabilities)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert max(probabilities) == good["confidence"]
    assert good["prediction"] == header["classes"][int(np.argmax(probabilities))]
    broken = rows["zero.jpg"]
    assert broken["prediction"] is None and "empty file" in broken["error"]
    assert broken["confidence"] is None and broken["abstain"] is None
    assert broken["ood_score"] is None and broken["probabilities"] is None


def test_refer_conformal_follows_the_set_and_agreement_the_old_rule(
    fitted_ci_run, synthetic_folder, tmp_path, capsys
):
    # The ci run holds 8 calibration images: alpha 0.2 is the smallest miss rate they allow.
    conformal, _ = _predict_json(
        synthetic_folder, fitted_ci_run, tmp_path, capsys, "--refer", "conformal", "--alpha", "0.2"
    )
    assert conformal["header"]["refer"] == "conformal" and conformal["header"]["alpha"] == 0.2
    threshold = conformal["header"]["ood_threshold"]
    for row in conformal["predictions"]:
        accepted = row["prediction_set"] == [row["prediction"]] and row["ood_score"] <= threshold
        assert row["abstain"] is (not accepted)
        assert row["out_of_distribution"] is (row["ood_score"] > threshold)
    agreement, _ = _predict_json(
        synthetic_folder,
        fitted_ci_run,
        tmp_path,
        capsys,
        "--refer",
        "agreement",
        "--min-agreement",
        "0.6",
        "--min-confidence",
        "0.13",
    )
    assert agreement["header"]["refer"] == "agreement"
    for row in agreement["predictions"]:
        assert row["abstain"] is (row["agreement"] < 0.6 or row["confidence"] < 0.13)


def test_default_refer_falls_back_to_agreement_when_calibration_is_too_small(
    fitted_ci_run, synthetic_folder, tmp_path, capsys
):
    written, err = _predict_json(synthetic_folder / "platelet", fitted_ci_run, tmp_path, capsys)
    assert written["header"]["refer"] == "agreement" and written["header"]["alpha"] == 0.01
    assert "calibrated on 8 images; alpha=0.01 needs 99" in err
    assert "abstain follows member agreement and confidence" in err
    assert all(row["set_size"] == 8 for row in written["predictions"])  # every class
    written, err = _predict_json(
        synthetic_folder / "platelet", fitted_ci_run, tmp_path, capsys, "--alpha", "0.2"
    )
    assert written["header"]["refer"] == "conformal" and "warning" not in err


def test_alpha_changes_set_sizes(fitted_ci_run, synthetic_folder, tmp_path, capsys):
    # The tiny run's 8 calibration images: alpha 0.01 keeps every class, 0.9 the fewest (the
    # threshold is the smallest calibration score); 0.2 lies between.
    sets = {}
    for alpha in ("0.9", "0.2", "0.01"):
        written, _ = _predict_json(
            synthetic_folder, fitted_ci_run, tmp_path, capsys, "--alpha", alpha
        )
        sets[alpha] = [set(row["prediction_set"] or []) for row in written["predictions"]]
        assert [len(s) for s in sets[alpha]] == [r["set_size"] for r in written["predictions"]]
    for small, large in (("0.9", "0.2"), ("0.2", "0.01")):  # nested: a larger alpha, a subset
        assert all(a <= b for a, b in zip(sets[small], sets[large], strict=True))
    size = {alpha: np.mean([len(s) for s in found]) for alpha, found in sets.items()}
    assert size["0.9"] < size["0.01"] == 8


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--alpha", "0"], "alpha must be a number strictly between 0 and 1"),
        (["--alpha", "1.5"], "alpha must be a number strictly between 0 and 1"),
        (
            ["--refer", "vote"],
            "--refer must be one of conformal, selective, agreement. Received: 'vote'.",
        ),
        (["--min-agreement", "2"], "min_agreement must be in [0, 1]"),
    ],
)
def test_bad_referral_options_one_line(fitted_ci_run, synthetic_folder, capsys, options, message):
    code, _, err = run_cli(
        ["predict", synthetic_folder / "platelet", "--run", fitted_ci_run, *options], capsys
    )
    assert code == 2 and err.count("\n") == 1 and message in err


def test_fit_stacker_on_a_tiny_run_warns_and_says_how_it_calibrated(fitted_ci):
    assert fitted_ci.code == 0
    assert "warning: only 8 blend images are held out to calibrate the prediction sets" in (
        fitted_ci.err
    )
    assert "--alpha >= 0.1112" in fitted_ci.err
    assert "warning: only 16 blend images to calibrate the OOD threshold" in fitted_ci.err
    assert "prediction sets: lac, alpha 0.01, calibrated on 8 blend images" in fitted_ci.out
    selection = json.loads((fitted_ci.run / "combiners/selection.json").read_text())
    calibration = selection["calibration"]
    assert calibration["conformal"]["n_images"] == 8 and calibration["n_blend_fit"] == 8
    assert calibration["ood"]["fitted_on"] == "val" and calibration["ood"]["n_calibration"] == 16
    split = json.loads((fitted_ci.run / "combiners/calibration-split.json").read_text())
    assert not set(split["blend_fit_ids"]) & set(split["calibration_ids"])
    for name in ("calibration-split.json", "ood.json", "conformal-soft.json"):
        assert name in selection["artifact_sha256"]
