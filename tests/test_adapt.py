"""ensemble adapt: a fitted run fine-tuned on a lab's reviewed cells, into a new run."""

# Real training (fine-tuning every member, or a student): run with the slow tests (-m large).

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.large


def _lab(folder, synthetic_folder, per_class=8, rename=None):
    """A simulated lab: synthetic cells of every class under one fixed stain cast."""
    from ensemble.corrupt.shifts import shift_batch

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label"]
    for class_folder in sorted(p for p in synthetic_folder.iterdir() if p.is_dir()):
        for number, path in enumerate(sorted(class_folder.iterdir())[:per_class]):
            pixels = np.asarray(Image.open(path).convert("RGB"))
            cast = shift_batch(pixels[None], "stain", (7, number))[0]
            name = f"{class_folder.name}_{number}.png"
            Image.fromarray(cast).save(folder / name)
            label = (rename or {}).get(class_folder.name, class_folder.name)
            lines.append(f"{name},{label}")
    (folder / "reviewed.csv").write_text("\n".join(lines) + "\n")
    return folder / "reviewed.csv"


def _digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def adapted(fitted_ci_run, synthetic_folder, tmp_path_factory):
    from tests.conftest import run_cli_captured

    reviewed = _lab(tmp_path_factory.mktemp("lab"), synthetic_folder)
    lab_folder = str(reviewed.parent.resolve())
    before = _digests(fitted_ci_run)
    out = tmp_path_factory.mktemp("adapted") / "run"
    args = ["adapt", "--run", fitted_ci_run, "--labelled", reviewed, "--out", out, "--epochs", "1"]
    code, stdout, err = run_cli_captured(args)
    assert code == 0, err
    return out, stdout, before, lab_folder


def test_the_adapted_run_mixes_the_labs_cells_with_a_replay_and_holds_some_out(adapted):
    out, stdout, _, lab_folder = adapted
    manifest = json.loads((out / "manifest.json").read_text())
    recorded = manifest["adapted_from"]
    assert recorded["labelled"] == 64 and recorded["replayed"] > 0
    assert recorded["calibration_replayed"] > 0
    split = json.loads((out / "split.json").read_text())
    lab = [r for r in split["records"] if r["id"].startswith(lab_folder)]
    parts = {r["split"] for r in lab}
    assert parts == {"train", "val", "blend"}  # fine-tune, watch, hold out
    replayed = [r for r in split["records"] if not r["id"].startswith(lab_folder)]
    counts = {p: sum(r["split"] == p for r in replayed) for p in ("train", "val", "blend")}
    # base training images replayed to fine-tune, base val and blend images to watch and
    # calibrate on
    assert counts == {
        "train": recorded["replayed"],
        "val": recorded["validation_replayed"],
        "blend": recorded["calibration_replayed"],
    }
    assert len(replayed) == sum(counts.values())
    assert f"adapted run: {out}" in stdout


def test_members_start_from_the_base_and_the_base_is_only_read(adapted, fitted_ci_run):
    out, _, before, _ = adapted
    assert _digests(fitted_ci_run) == before
    spec = json.loads((out / "members/tiny-a/spec.json").read_text())
    assert spec["init_from"] == str(fitted_ci_run / "members/tiny-a/model.keras")
    assert spec["schedule"]["epochs"] == 1
    selection = json.loads((out / "combiners/selection.json").read_text())
    assert selection["calibration"]["conformal"]["n_images"] > 0  # recalibrated on the lab


def test_the_adapted_run_predicts_like_any_run(adapted, synthetic_folder, capsys):
    out, _, _, _ = adapted
    code, stdout, err = run_cli(
        ["predict", synthetic_folder / "platelet", "--run", out, "--out", "-"], capsys
    )
    assert code == 0, err
    assert stdout.count("\n") == 13


@pytest.mark.parametrize(
    ("rename", "per_class", "message"),
    [
        ({"platelet": "platelets"}, 8, "label 'platelets' of the reviewed cells is not a class"),
        ({"platelet": "platelets"}, 8, "Did you mean 'platelet'?"),
        ({}, 2, "too few reviewed cells for classes"),
    ],
)
def test_bad_reviews_are_refused_in_one_line(
    rename, per_class, message, fitted_ci_run, synthetic_folder, tmp_path, capsys
):
    reviewed = _lab(tmp_path / "lab", synthetic_folder, per_class, rename)
    args = ["adapt", "--run", fitted_ci_run, "--labelled", reviewed, "--out", tmp_path / "out"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_the_adapted_runs_report_shows_its_base_beside_it(adapted, tmp_path, capsys):
    out, _, _, lab_folder = adapted
    code, _, err = run_cli(
        ["report", "--run", out, "--data", f"{lab_folder}/reviewed.csv", "--out", tmp_path / "r"],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "r/metrics.json").read_text())
    comparison = metrics["adapted"]
    assert comparison["base_changed"] is False and comparison["labelled"] == 64
    assert set(comparison["rows"]) == {"base", "adapted"}
    test = comparison["mcnemar"]
    base_right = round(comparison["rows"]["base"]["accuracy"] * 64)
    adapted_right = round(comparison["rows"]["adapted"]["accuracy"] * 64)
    assert adapted_right - base_right == test["second_only"] - test["first_only"]
    report = (tmp_path / "r/report.md").read_text()
    assert "## Adapted run and its base on these images" in report
    assert "McNemar, base vs adapted:" in report
    assert 'id="adapted"' in (tmp_path / "r/report.html").read_text()


def test_colour_mapped_fine_tuning_maps_the_cells_and_every_image_after(
    fitted_ci_run, synthetic_folder, tmp_path
):
    """--labelled with --colour: fine-tuned on mapped cells; the new run maps what it is given."""
    from ensemble import Ensemble
    from ensemble.data.colour import ColourNormaliser
    from tests.conftest import run_cli_captured

    reviewed = _lab(tmp_path / "lab", synthetic_folder)
    more = tmp_path / "more"
    more.mkdir()
    for path in sorted((tmp_path / "lab").glob("*.png"))[:30]:
        (more / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "run"
    args = ["adapt", "--run", fitted_ci_run, "--labelled", reviewed, "--out", out]
    args += ["--colour", "reinhard", "--unlabelled", more, "--epochs", "1"]
    code, _, err = run_cli_captured(args)
    assert code == 0, err
    recorded = json.loads((out / "manifest.json").read_text())["adapted_from"]
    assert recorded["colour"] == "reinhard"
    colour_file = (out / "colour.json").read_bytes()
    assert recorded["colour_sha256"] == hashlib.sha256(colour_file).hexdigest()
    normaliser = ColourNormaliser.from_json(json.loads((out / "colour.json").read_text()))
    # the data the members were fine-tuned and calibrated on lists the mapped cells, not the raw
    data = (out / "data.csv").read_text()
    assert str(tmp_path / "lab") not in data and str(out / "lab-cells") in data
    mapped = sorted((out / "lab-cells").glob("*.png"))
    assert len(mapped) == 64
    first_raw = sorted((tmp_path / "lab").glob("*.png"))[0]
    raw = np.asarray(Image.open(first_raw).convert("RGB"))
    stored = np.asarray(Image.open(mapped[0]).convert("RGB"))
    np.testing.assert_array_equal(stored, normaliser.transform(raw))
    # the mapped cells carry the training images' colour statistics
    from ensemble.data.colour import channel_statistics

    cells = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in mapped])
    mean, _ = channel_statistics(cells)
    np.testing.assert_allclose(mean, normaliser.reference_mean, atol=0.05)
    ensemble = Ensemble.load(out)
    assert ensemble.colour_ is not None
    by_size = ensemble.images_by_size(raw[None])
    size = next(iter(by_size))
    assert by_size[size].shape[0] == 1
    # and a rerun resumes: nothing is mapped again
    before = _digests(out)
    code, _, err = run_cli_captured(args)
    assert code == 0, err
    after = _digests(out)
    for name in ("colour.json", "lab-cells.csv", "data.csv", "split.json"):
        assert after[name] == before[name]
    assert {k: v for k, v in after.items() if k.startswith("lab-cells/")} == {
        k: v for k, v in before.items() if k.startswith("lab-cells/")
    }
    # a rerun that asks for another colour map, or other cells, is refused in words
    code, _, err = run_cli_captured(args[: args.index("--colour")] + ["--epochs", "1"])
    assert code == 2 and "holds an adapt begun with --colour reinhard" in err
    fewer = tmp_path / "fewer.csv"
    lines = reviewed.read_text().splitlines()
    fewer.write_text("\n".join(lines[:-1]) + "\n")
    code, _, err = run_cli_captured([*args[:4], fewer, "--data-root", tmp_path / "lab", *args[5:]])
    assert code == 2 and "was adapted from other reviewed cells" in err
