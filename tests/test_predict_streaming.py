"""``predict`` writes its rows as they are made: the same bytes as before, whole or not at all."""

import csv
import io
import json
import tracemalloc

import pytest

from ensemble.serve.predict import Predictions, predict_folder, prediction_columns
from ensemble.serve.prediction_files import json_row, write_rows
from tests.conftest import run_cli

CLASSES = ["basophil", "platelet"]
MEMBERS = ["tiny-a", "tiny-b"]
COLUMNS = prediction_columns(CLASSES, MEMBERS)
HEADER = {"run": "runs/x", "combiner": "soft", "alpha": 0.01, "classes": CLASSES}


def _row(number: int) -> dict:
    """A row like predict's: every few an unreadable file (Nones and an error)."""
    row = dict.fromkeys(COLUMNS) | {"path": f"nested/café №{number}.png"}
    if number % 5 == 3:
        return row | {"error": "not an image (no known image format)"}
    p = (number % 97) / 97
    return row | {
        "prediction": "platelet" if p > 0.5 else "basophil",
        "confidence": max(p, 1 - p),
        "agreement": 0.5,
        "abstain": p < 0.3,
        "prediction_set": "basophil|platelet",
        "set_size": 2,
        "ood_score": 12.345678 * number,
        "out_of_distribution": False,
        "proba_basophil": 1 - p,
        "proba_platelet": p,
        "vote_tiny-a": "platelet",
        "vote_tiny-b": "basophil",
    }


def _csv_as_before(rows: list[dict]) -> str:
    """The CSV as ``Predictions.to_csv`` writes it in one go: every number to 6 decimals."""

    def cell(column, value):
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return f"{value:.6f}"
        return str(value)

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: cell(key, value) for key, value in row.items()} for row in rows)
    return buffer.getvalue()


def _natural(row: dict) -> dict:
    """A row in JSON's natural types, written out by hand: the set a list, two objects."""
    plain = {k: v for k, v in row.items() if not k.startswith(("proba_", "vote_"))}
    if plain["prediction_set"] is not None:
        plain["prediction_set"] = plain["prediction_set"].split("|")
    readable = row["error"] is None
    plain["probabilities"] = {c: row[f"proba_{c}"] for c in CLASSES} if readable else None
    plain["votes"] = {m: row[f"vote_{m}"] for m in MEMBERS} if readable else None
    return plain


def _json_as_before(rows: list[dict], header: dict) -> str:
    """The JSON as ``json.dumps`` would write the whole document at once."""
    skipped = sum(1 for row in rows if row["error"])
    counts = {"n_predicted": len(rows) - skipped, "n_skipped": skipped}
    document = {"header": header | counts, "predictions": [_natural(row) for row in rows]}
    return json.dumps(document, indent=1) + "\n"


@pytest.mark.parametrize("count", [0, 1, 7])
def test_streamed_files_are_byte_for_byte_the_old_ones(tmp_path, count):
    rows = [_row(number) for number in range(count)]
    skipped = sum(1 for row in rows if row["error"])
    tally = write_rows(iter(rows), tmp_path / "p.csv", columns=COLUMNS, header=HEADER)
    assert (tmp_path / "p.csv").read_text(encoding="utf-8") == _csv_as_before(rows)
    assert (tally.n_predicted, tally.n_skipped, tally.rows) == (count - skipped, skipped, None)
    write_rows(iter(rows), tmp_path / "p.json", columns=COLUMNS, header=HEADER, as_json=True)
    assert (tmp_path / "p.json").read_text(encoding="utf-8") == _json_as_before(rows, HEADER)
    predictions = Predictions(MEMBERS, CLASSES, HEADER, rows)
    assert predictions.to_csv() == _csv_as_before(rows)
    assert predictions.to_json() == _json_as_before(rows, HEADER)


@pytest.mark.parametrize("as_json", [False, True])
def test_rows_reach_the_disk_while_they_are_made_and_are_not_kept(tmp_path, as_json):
    """20,000 rows: written as they come (the file grows meanwhile), memory stays small."""
    sizes = []

    def rows():
        for number in range(20_000):
            if number == 15_000:  # the rows so far are on disk (a hidden file), not in memory
                sizes.append(sum(p.stat().st_size for p in tmp_path.iterdir()))
            yield _row(number)

    tracemalloc.start()
    try:
        out = tmp_path / "p.out"
        tally = write_rows(rows(), out, columns=COLUMNS, header=HEADER, as_json=as_json)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tally.n_predicted + tally.n_skipped == 20_000
    written = (tmp_path / "p.out").stat().st_size
    if not as_json:  # JSON rows wait in an unnamed spool file (not listed in the folder)
        assert sizes[0] > 0.5 * written
    # Holding the 20,000 rows would take 13 MB (measured with tracemalloc).
    assert peak < 2_000_000, f"peak {peak / 1e6:.1f} MB while writing"
    assert [p.name for p in tmp_path.iterdir()] == ["p.out"]  # no temporary file left


@pytest.mark.parametrize("as_json", [False, True])
def test_interrupted_write_leaves_the_previous_file_and_no_partial_one(tmp_path, as_json):
    out = tmp_path / "predictions.out"
    out.write_text("the previous run's output\n")

    def interrupted():
        yield _row(0)
        yield _row(1)
        raise KeyboardInterrupt  # Ctrl-C while the third chunk is predicted

    with pytest.raises(KeyboardInterrupt):
        write_rows(interrupted(), out, columns=COLUMNS, header=HEADER, as_json=as_json)
    assert out.read_text() == "the previous run's output\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.out"]
    with pytest.raises(KeyboardInterrupt):
        write_rows(interrupted(), tmp_path / "new.csv", columns=COLUMNS, header=HEADER)
    assert not (tmp_path / "new.csv").exists()


def test_command_output_equals_the_python_api_rows(fitted_ci_run, messy_folder, tmp_path, capsys):
    """``predict`` streams; ``predict_folder`` keeps the rows: the same file either way."""
    kept = predict_folder(messy_folder, fitted_ci_run)
    capsys.readouterr()
    args = ["predict", messy_folder, "--run", fitted_ci_run, "--out"]
    code, _, err = run_cli([*args, tmp_path / "p.csv"], capsys)
    assert code == 3, err
    assert (tmp_path / "p.csv").read_text(encoding="utf-8") == kept.to_csv()
    assert err.count("skipped ") == 3 and "5 predicted, 3 skipped" in err
    code, _, err = run_cli([*args, tmp_path / "p.json", "--json"], capsys)
    assert code == 3, err
    written = json.loads((tmp_path / "p.json").read_text())
    natural = [json_row(row) for row in kept.rows]
    assert written["predictions"] == natural  # every value, exactly (the same process)
    assert written["header"] == kept.header | {"n_predicted": 5, "n_skipped": 3}


def test_num_cpus_without_ray_is_refused(tmp_path, capsys):
    code, _, err = run_cli(
        ["predict", tmp_path, "--run", tmp_path / "run", "--num-cpus", "2"], capsys
    )
    assert code == 2 and "--num-cpus applies with --ray only" in err
