import csv
import json
import os
import subprocess
import sys

import pytest

from tests.test_console import tensorflow_lines

pytestmark = pytest.mark.large  # trains the demo pipeline in a subprocess: minutes


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    """``ensemble demo`` run once for this module (as a user would: a separate process)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    command = [sys.executable, "-m", "ensemble", "demo", "--out", str(out), "--per-class", "24"]
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stdout, result.stderr


def test_demo_runs_the_whole_flow(demo_output):
    out, stdout, err = demo_output
    for name in ("data", "run", "predictions", "report"):
        assert f"  {name}" in stdout
    assert tensorflow_lines(err) == []
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 17  # 16 new images and one broken file
    assert sum(1 for row in rows if row["error"]) == 1
    assert "skipped broken.jpg" in err
    assert (out / "run/combiners/stacker.ubj").is_file()


def test_report_renders_on_the_demo_run(demo_output):
    """All files exist and the tables hold the computed values."""
    folder = demo_output[0] / "report"
    metrics = json.loads((folder / "metrics.json").read_text())
    lines = (folder / "report.md").read_text().splitlines()
    assert set(metrics["models"]) == {
        "small-cnn",
        "small-cnn-b",
        "ovr-small-cnn",
        "hard",
        "soft",
        "weighted",
        "greedy",
        "stack",
    }

    def row(first_cell):
        return [line for line in lines if line.replace("**", "").startswith(f"| {first_cell} |")]

    for model, values in metrics["models"].items():
        low, high = values["ci95"]["accuracy"]
        assert f"| {values['accuracy']:.4f} ({low:.4f}–{high:.4f}) |" in row(model)[0]
        shifted = metrics["shifted"][model]["accuracy"]
        clean_and_shifted = f"| {model} | {values['accuracy']:.4f} | {shifted:.4f} |"
        assert any(line.startswith(clean_and_shifted) for line in row(model))
        assert (folder / f"confusion_{model}.png").stat().st_size > 1000
    assert (folder / "calibration_and_abstention.png").stat().st_size > 1000
    test = metrics["mcnemar"]["hard_vs_stack"]
    assert row("hard vs stack")[0].startswith(
        f"| hard vs stack | {test['first_only']} | {test['second_only']} |"
    )


def test_demo_ends_with_a_short_summary(demo_output):
    out, stdout, _ = demo_output
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    lines = stdout.splitlines()
    assert len(lines) <= 12  # not the whole report.md
    assert lines[0] == (
        f"Test accuracy on {metrics['n_images']} held-out images (95 % interval), and on a "
        "shifted copy:"
    )
    rows = lines[1:5]
    for name, role in (
        (metrics["best_combiner"], "best combiner"),
        (metrics["best_member"], "best member"),
    ):
        (row,) = [row for row in rows if row.startswith(f"  {name} ({role})")]
        values = metrics["models"][name]
        low, high = values["ci95"]["accuracy"]
        shifted = metrics["shifted"][name]["accuracy"]
        assert row.endswith(
            f"{values['accuracy']:.4f} ({low:.4f}–{high:.4f})  shifted {shifted:.4f}"
        )
    accuracies = [float(row.split("(")[-2].split()[-1]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert f"  report       {out / 'report' / 'report.md'}  " in stdout
    assert f"  page         {out / 'report' / 'report.html'}  " in stdout
