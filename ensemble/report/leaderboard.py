"""The leaderboard: one row per model of a report, best test accuracy first (``leaderboard.csv``).

Built from ``metrics.json`` alone, like the rest of the report, with the columns AutoGluon users
look for: the model, its kind, its cross-validated blend score (what fit-stacker chose the
default combiner by), test accuracy with its 95 % interval, macro-F1, calibration error,
training time and prediction speed; then the accuracy on the shifted, zoomed and MedMNIST-C
copies.
"""

from __future__ import annotations

import csv
import io

#: Columns of ``leaderboard.csv``, in order (empty cells where a value does not apply).
COLUMNS = (
    "model",
    "kind",  # member or combiner
    "cv_blend_accuracy",  # fit-stacker's cross-validated accuracy on the blend split
    "test_accuracy",
    "test_accuracy_low",  # 95 % interval (Wilson score)
    "test_accuracy_high",
    "macro_f1",
    "ece",  # expected calibration error, 15 equal-width bins
    "train_minutes",  # members only, as measured by train-members
    "predict_images_per_second",  # this report's forward pass; combiners: all members in turn
    "shifted_accuracy",
    "zoomed_accuracy",
    "medmnistc_accuracy",  # with the eval extra: a corruption suite the project did not write
)


def leaderboard(metrics: dict) -> list[dict]:
    """The rows of the leaderboard, best test accuracy first (members before combiners on ties).

    Args:
        metrics: the content of a report's ``metrics.json``.

    Returns:
        One dict per model with the keys of :data:`COLUMNS`; numbers as floats, ``None`` where
        a value does not apply or was not recorded.
    """
    members = metrics["members"]
    combiners = metrics.get("combiners") or [m for m in metrics["models"] if m not in members]
    details = metrics.get("member_details", {})
    speeds = metrics.get("prediction_images_per_second", {})
    cv = metrics.get("cv_accuracy_on_blend", {})
    copies = {name: metrics.get(name) or {} for name in ("shifted", "zoomed", "medmnistc")}
    all_members = _combined_speed([speeds.get(name) for name in members])
    rows = []
    for name in [*members, *combiners]:
        values = metrics["models"][name]
        low, high = values["ci95"]["accuracy"]
        is_member = name in members
        seconds = details.get(name, {}).get("train_seconds") if is_member else None
        rows.append(
            {
                "model": name,
                "kind": "member" if is_member else "combiner",
                "cv_blend_accuracy": cv.get(name),
                "test_accuracy": values["accuracy"],
                "test_accuracy_low": low,
                "test_accuracy_high": high,
                "macro_f1": values["macro_f1"],
                "ece": values["calibration"]["ece"],
                "train_minutes": None if seconds is None else seconds / 60,
                "predict_images_per_second": speeds.get(name) if is_member else all_members,
                "shifted_accuracy": copies["shifted"].get(name, {}).get("accuracy"),
                "zoomed_accuracy": copies["zoomed"].get(name, {}).get("accuracy"),
                "medmnistc_accuracy": copies["medmnistc"].get(name, {}).get("accuracy"),
            }
        )
    rows.sort(key=lambda row: (-row["test_accuracy"], row["kind"] != "member"))
    return rows


def leaderboard_csv(metrics: dict) -> str:
    """:func:`leaderboard` as CSV text (full precision; empty cells for ``None``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in leaderboard(metrics):
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return buffer.getvalue()


def _combined_speed(speeds: list[float | None]) -> float | None:
    """Images per second of running every member in turn (a combiner needs them all)."""
    if not speeds or any(not speed for speed in speeds):
        return None
    return round(1.0 / sum(1.0 / speed for speed in speeds), 1)
