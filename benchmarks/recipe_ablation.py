r"""Write results/recipe-ablation.md: what each training-recipe change bought, member by member.

Reads the rows that ``benchmarks/member_robustness.py`` measured (clean, shifted and zoomed
accuracy of single members on val and test) and each member's training record in the run
(minutes, epochs, what it started from), and renders one table per split plus the recipe of
each row. The prose around the tables is kept from ``--notes`` (a Markdown file), so the
numbers are always regenerated and never typed by hand.

    python benchmarks/recipe_ablation.py --run runs/pbc-cpu \
        --robustness results/recipe-ablation.json --notes results/recipe-ablation-notes.md \
        --out results/recipe-ablation.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ensemble.fileio import atomic_write_text
from ensemble.run import RunDir


def minutes(run: RunDir, name: str) -> tuple[float, float]:
    """Training minutes of ``name`` alone, and including the stages it started from."""
    own = run.training_metrics(name)["train_seconds"] / 60
    spec = run.member_spec(name)
    before = (
        minutes(run, spec.init_from)[1]
        if spec.init_from and run.is_finished(spec.init_from)
        else 0.0
    )
    return own, own + before


def recipe(run: RunDir, name: str) -> str:
    """One line: size, start, epochs, rate and augmentation of a member."""
    spec = run.member_spec(name)
    augmentation = spec.augmentation
    parts = [f"{spec.backbone} {spec.input_size} px"]
    parts.append(f"from {spec.init_from}" if spec.init_from else "from scratch")
    parts.append(f"{spec.schedule.epochs} ep at {spec.schedule.learning_rate:g}")
    parts.append(f"corruptions {augmentation.corruption_probability:g}")
    parts.append(f"zoom {augmentation.zoom_probability:g}")
    if spec.early_stopping.keep == "last":
        parts.append("last epoch")
    return ", ".join(parts)


def table(run: RunDir, rows: dict, split: str) -> list[str]:
    """Markdown table of every measured member on one split."""
    lines = [
        "| member | recipe | minutes (with its stage 1) | clean | shifted | zoomed |",
        "|---|---|---|---|---|---|",
    ]
    measured = []
    for key, row in rows.items():
        name, row_split, *tta = key.split("/")
        if row_split == split and not tta:
            measured.append((minutes(run, name), name, row))
    for (own, total), name, row in sorted(measured, key=lambda item: item[0][1]):
        lines.append(
            f"| {name} | {recipe(run, name)} | {own:.1f} ({total:.1f}) | {row['clean']:.4f} | "
            f"{row['shifted']:.4f} | {row['zoomed']:.4f} |"
        )
    return lines


def main() -> None:
    """Render the ablation tables and the notes into one Markdown file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--robustness", type=Path, required=True)
    parser.add_argument("--notes", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    run = RunDir.open(args.run)
    rows = json.loads(args.robustness.read_text())
    notes = args.notes.read_text()
    for split in ("val", "test"):  # placeholders {val_table} and {test_table} in the notes
        notes = notes.replace(f"{{{split}_table}}", "\n".join(table(run, rows, split)))
    atomic_write_text(args.out, notes)


if __name__ == "__main__":
    main()
