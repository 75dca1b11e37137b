import csv

from tests.conftest import run_cli


def test_demo_runs_the_whole_flow(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--out", tmp_path / "demo", "--per-class", "24"], capsys)
    assert code == 0, err
    for name in ("data", "run", "predictions", "report"):
        assert f"  {name}" in out
    rows = list(csv.DictReader((tmp_path / "demo/predictions.csv").open()))
    assert len(rows) == 17  # 16 new images and one broken file
    assert sum(1 for row in rows if row["error"]) == 1
    assert "skipped broken.jpg" in err
    report = (tmp_path / "demo/report.md").read_text()
    for model in ("small-cnn", "hard", "soft", "weighted", "greedy", "stack"):
        assert f"| {model} |" in report
    assert (tmp_path / "demo/run/combiners/stacker.ubj").is_file()
