"""`ensemble report`: test-time augmentation, shifts by kind, and separate labelled sets."""

import json
import shutil

import pytest

from ensemble.corrupt.shifts import SHIFTS
from ensemble.data.synthetic import write_folder
from tests.conftest import run_cli, run_cli_captured


@pytest.mark.large
def test_report_with_tta_shows_shift_kinds_and_speed(
    fitted_ci_run, synthetic_folder, tmp_path, capsys
):
    out = tmp_path / "tta"
    code, _, err = run_cli(
        ["report", "--run", fitted_ci_run, "--data", synthetic_folder, "--out", out, "--tta"],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tta"] is True
    assert set(metrics["shifted_by_kind"]["soft"]) == set(SHIFTS)
    speeds = metrics["prediction_images_per_second"]
    assert set(speeds) == {"tiny-a", "tiny-b", "tiny-ovr"} and min(speeds.values()) > 0
    text = (out / "report.md").read_text()
    assert "test-time augmentation" in text
    assert "| model | " + " | ".join(SHIFTS) + " |" in text
    # The combiners were fitted without TTA: said once on stderr, and noted in the report.
    assert metrics["combiners_fitted_with_tta"] is False
    assert err.count("fitted without test-time augmentation but are applied with it") == 1
    assert "Note: the combiners were fitted without test-time augmentation" in text
    # what each member buys: voting without each of the three, on the clean and both copies
    contributions = metrics["member_contributions"]
    assert {"clean", "shifted", "zoomed"} <= set(contributions)  # MedMNIST-C where installed
    assert set(contributions["shifted"]["hard"]["without"]) == {"tiny-a", "tiny-b", "tiny-ovr"}
    assert "## What each member buys" in text and "| left out | clean | shifted | zoomed " in text
    assert 'id="contributions"' in (out / "report.html").read_text()


def test_report_on_separate_labelled_folder(fitted_ci_run, tmp_path, capsys):
    other = write_folder(tmp_path / "other", per_class=3, size=48, seed=7)
    for name in ("basophil", "platelet"):  # a set may hold fewer classes than the run
        shutil.rmtree(other / name)
    (other / "monocyte" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "report"
    code, _, err = run_cli(
        ["report", "--run", fitted_ci_run, "--data", other, "--out", out, "--no-shifted"], capsys
    )
    assert code == 0, err
    assert "is not the data of run" in err and "scoring all of its" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 18  # 6 classes × 3; the broken file is left out
    assert [item["id"] for item in metrics["skipped"]] == ["monocyte/broken.png"]
    classes = metrics["classes"]
    confusion = metrics["models"]["soft"]["confusion"]
    assert sum(confusion[classes.index("basophil")]) == 0
    assert sum(confusion[classes.index("monocyte")]) == 3
    assert "monocyte/broken.png" in (out / "report.md").read_text()


def test_report_on_folder_with_unknown_class(fitted_ci_run, tmp_path, capsys):
    other = write_folder(tmp_path / "other", per_class=2, size=48, seed=8)
    (other / "monocyte").rename(other / "macrophage")
    code, _, err = run_cli(["report", "--run", fitted_ci_run, "--data", other], capsys)
    assert code == 2
    assert "classes ['macrophage']" in err and "are not classes of the run" in err


def test_report_warns_when_images_were_trained_on(
    fitted_ci_run, synthetic_folder, tmp_path, capsys
):
    other = tmp_path / "other"
    shutil.copytree(synthetic_folder, other)
    next((other / "neutrophil").iterdir()).unlink()  # not the run's data any more
    code, _, err = run_cli(
        [
            "report",
            "--run",
            fitted_ci_run,
            "--data",
            other,
            "--out",
            tmp_path / "r",
            "--no-shifted",
        ],
        capsys,
    )
    assert code == 0, err
    assert "are byte-identical to images the run trained or fitted on" in err


def test_report_is_rendered_from_metrics_json_alone(fitted_ci_run, synthetic_folder, tmp_path):
    from ensemble.report.markdown import render_markdown

    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)
    out = tmp_path / "report"
    code, _, err = run_cli_captured(
        ["report", "--run", run, "--data", synthetic_folder, "--out", out, "--no-shifted"]
    )
    assert code == 0, err
    assert "Note:" not in (out / "report.md").read_text()  # fitted and applied without TTA
    shutil.rmtree(run)  # nothing of the run is needed to render again
    metrics = json.loads((out / "metrics.json").read_text())
    assert render_markdown(metrics) == (out / "report.md").read_text()
    details = metrics["member_details"]
    assert details["tiny-ovr"]["kind"] == "ovr" and details["tiny-ovr"]["base_member"] == "tiny-a"
    assert details["tiny-a"]["backbone"] == "simplecnn"
    assert "| tiny-a | simplecnn 32 px | dihedral + RandAugment 0.2×1 | from scratch |" in (
        render_markdown(metrics)
    )
    # metrics.json written before the details were recorded: the member table says "-".
    del metrics["member_details"]
    assert "| tiny-b | - | - | - | - |" in render_markdown(metrics)


def test_verdict_names_the_winner_only_when_significant():
    from ensemble.report.markdown import verdict

    won = verdict("hard voting", "stacking", {"first_only": 13, "second_only": 3, "p_value": 0.02})
    assert won.startswith("**Hard voting wins** (13 images right only by hard voting, 3 only")
    lost = verdict(
        "hard voting", "stacking", {"first_only": 1, "second_only": 12, "p_value": 0.003}
    )
    assert lost.startswith("**Stacking wins**")
    tie = verdict("a", "b", {"first_only": 5, "second_only": 3, "p_value": 0.73})
    assert tie.startswith("No significant difference between a and b") and "p = 0.73" in tie


def test_report_without_copies_prints_a_line_per_step(
    fitted_ci_run, synthetic_folder, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("ENSEMBLE_PROGRESS", "auto")
    run = tmp_path / "run"
    shutil.copytree(fitted_ci_run, run)  # the report caches member outputs in the run
    out = tmp_path / "report"
    code, stdout, err = run_cli(
        [
            "report",
            "--run",
            run,
            "--data",
            synthetic_folder,
            "--out",
            out,
            "--no-shifted",
            "--no-zoomed",
            "--no-medmnistc",
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["shifted"] == {} and metrics["zoomed"] == {}
    assert "shifted_mcnemar" not in metrics and "zoomed_mcnemar" not in metrics
    assert "Clean versus" not in (out / "report.md").read_text()
    assert f"{out}/report.html" in stdout and (out / "leaderboard.csv").is_file()
    for line in (
        "report: members' cached outputs on the test split",
        "report: scoring ",
        "report: gallery: thumbnails of",
        "report: writing report.md, report.html, leaderboard.csv and plots",
    ):
        assert line in err, line
