"""``predict``'s output file: CSV or JSON, written row by row into a file that appears whole.

Rows are written as they arrive, so memory does not grow with the folder. CSV rows go straight
to a temporary file beside the output. JSON's header counts the predicted and skipped files,
known only at the end, so its rows go first to an unnamed spool file in the same folder (it
disappears when closed, even after SIGKILL); the header and then the spooled rows are copied
into the temporary file. The temporary file is renamed to the output last
(:func:`ensemble.core.fileio.atomic_write_with`): an interrupted run leaves the complete file or
none. The bytes are those of ``json.dumps({"header": ..., "predictions": rows}, indent=1)``, the
rows in JSON's natural types (:func:`json_row`). ``out = "-"`` writes to standard output.

Example:
    >>> tally = write_rows(rows, Path("p.csv"), columns=columns, header=header)  # doctest: +SKIP
    >>> tally.n_predicted, tally.n_skipped  # doctest: +SKIP
    (14511, 2)
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ensemble.core.fileio import atomic_write_with

#: Decimals of every number in the CSV (JSON keeps every digit).
CSV_DECIMALS = 6
#: ``out`` that means standard output.
STDOUT = "-"


@dataclass
class RowTally:
    """What went through the writer.

    Attributes:
        n_predicted: rows with a prediction.
        n_skipped: rows without one (unreadable files).
        seconds: from the first row asked for to the last one written.
        rows: every row, if asked to keep them (e.g. for the review page), else ``None``.
    """

    n_predicted: int = 0
    n_skipped: int = 0
    seconds: float = 0.0
    rows: list[dict] | None = None

    def count(self, rows: Iterable[dict]) -> Iterator[dict]:
        """Pass ``rows`` through, counting them (and keeping them if :attr:`rows` is a list)."""
        began = time.perf_counter()
        for row in rows:
            if row["error"]:
                self.n_skipped += 1
            else:
                self.n_predicted += 1
            if self.rows is not None:
                self.rows.append(row)
            yield row
        self.seconds = time.perf_counter() - began


def default_output(out: Path | None, as_json: bool) -> Path:
    """``out``, or ``predictions.json`` (JSON) / ``predictions.csv`` in the current folder."""
    if out is not None:
        return Path(out)
    return Path("predictions.json" if as_json else "predictions.csv")


def write_rows(
    rows: Iterable[dict],
    out: Path,
    *,
    columns: Sequence[str],
    header: dict,
    as_json: bool = False,
    keep_rows: bool = False,
) -> RowTally:
    """Write ``rows`` to ``out`` as they arrive, atomically (see the module docstring).

    Args:
        rows: one dict per file, keys = ``columns``; consumed once, lazily.
        out: the CSV or JSON file; ``"-"``: standard output.
        columns: column order (CSV; JSON rows keep their own key order).
        header: JSON only: how the rows were made; ``n_predicted`` and ``n_skipped`` are added.
        as_json: JSON instead of CSV.
        keep_rows: also keep every row in :attr:`RowTally.rows` (memory grows with the rows).

    Returns:
        The counts and time, and the rows if kept.
    """
    tally = RowTally(rows=[] if keep_rows else None)
    if str(out) == STDOUT:
        _write_stdout(rows, columns=columns, header=header, as_json=as_json, tally=tally)
        return tally
    out = Path(out)

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            if not as_json:
                write_csv(tally.count(rows), stream, columns)
                return
            with tempfile.TemporaryFile("w+", encoding="utf-8", dir=out.parent) as spool:
                write_json(tally.count(rows), stream, header, tally, spool)

    atomic_write_with(out, write)
    return tally


def _write_stdout(
    rows: Iterable[dict], *, columns: Sequence[str], header: dict, as_json: bool, tally: RowTally
) -> None:
    """:func:`write_rows` to standard output (CSV rows as they come; JSON after the last)."""
    import sys

    if not as_json:
        write_csv(tally.count(rows), sys.stdout, columns)
    else:
        with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
            write_json(tally.count(rows), sys.stdout, header, tally, spool)
    sys.stdout.flush()


def write_csv(rows: Iterable[dict], stream: TextIO, columns: Sequence[str]) -> None:
    """CSV: a header line, then one line per row (``true``/``false``, empty for None)."""
    writer = csv.DictWriter(stream, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: csv_value(key, value) for key, value in row.items()})


def write_json(
    rows: Iterable[dict], stream: TextIO, header: dict, tally: RowTally, spool: TextIO
) -> None:
    """``{"header": {...}, "predictions": [rows]}``, indented by one space per level.

    Args:
        rows: the rows, already passing through ``tally.count`` (the header needs its counts).
        stream: where the document goes.
        header: how the rows were made.
        tally: counts ``rows``; read once ``rows`` is exhausted.
        spool: a readable and writable text file holding the rows until the header is known.
    """
    for number, row in enumerate(rows):
        spool.write(("  " if number == 0 else ",\n  ") + _nested(json_row(row), depth=2))
    counts = {"n_predicted": tally.n_predicted, "n_skipped": tally.n_skipped}
    stream.write('{\n "header": ' + _nested(header | counts, depth=1) + ',\n "predictions": ')
    if spool.tell() == 0:
        stream.write("[]")
    else:
        stream.write("[\n")
        spool.seek(0)
        shutil.copyfileobj(spool, stream)
        stream.write("\n ]")
    stream.write("\n}\n")


def csv_value(column: str, value) -> str:
    """One CSV cell: empty for None, ``true``/``false``, numbers to :data:`CSV_DECIMALS`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{CSV_DECIMALS}f}"
    return str(value)


def json_row(row: dict) -> dict:
    """A row in JSON's natural types: the set a list, probabilities and votes objects.

    ``prediction_set`` ``"a|b"`` becomes ``["a", "b"]``; the ``proba_<class>`` columns become
    ``"probabilities": {class: p}`` and the ``vote_<member>`` ones ``"votes": {member: class}``
    (both ``null`` for an unreadable file), in column order.

    Example:
        >>> json_row({"path": "a.png", "prediction_set": "x|y", "proba_x": 0.6, "proba_y": 0.4})
        {'path': 'a.png', 'prediction_set': ['x', 'y'], 'probabilities': {'x': 0.6, 'y': 0.4}}
    """
    result, probabilities, votes = {}, {}, {}
    for key, value in row.items():
        if key.startswith("proba_"):
            probabilities[key[len("proba_") :]] = value
        elif key.startswith("vote_"):
            votes[key[len("vote_") :]] = value
        elif key == "prediction_set":
            result[key] = None if value is None else [name for name in value.split("|") if name]
        else:
            result[key] = value
    if probabilities:
        has_values = any(value is not None for value in probabilities.values())
        result["probabilities"] = probabilities if has_values else None
    if votes:
        result["votes"] = votes if any(value is not None for value in votes.values()) else None
    return result


def _nested(value, depth: int) -> str:
    """``json.dumps(value, indent=1)`` as it reads ``depth`` levels down in an indented document."""
    return json.dumps(value, indent=1).replace("\n", "\n" + " " * depth)
