r"""Write results/recipe-ablation.md: what each training-recipe change bought, member by member.

Renders the rows that ``benchmarks/member_robustness.py`` measured (clean, shifted and zoomed
accuracy of single members on val and test, each with its recipe and training minutes, keyed
``RUN:member/split``) as one table per split. The prose around the tables is kept in
``--notes`` (a Markdown file with the placeholders ``{val_table}`` and ``{test_table}``), so the
numbers are always regenerated and never typed by hand.

    python benchmarks/recipe_ablation.py --robustness results/recipe-ablation.json \
        --notes results/recipe-ablation-notes.md --out results/recipe-ablation.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ensemble.fileio import atomic_write_text


def table(rows: dict, split: str) -> list[str]:
    """Markdown table of every measured member on one split, by run, then by minutes."""
    lines = [
        "| run | member | recipe | minutes (with its stage 1) | clean | shifted | zoomed |",
        "|---|---|---|---|---|---|---|",
    ]
    measured = []
    for key, row in rows.items():
        run, rest = key.split(":", 1)
        name, row_split, *tta = rest.split("/")
        if row_split == split and not tta:
            measured.append((run, row["minutes_total"], name, row))
    for run, total, name, row in sorted(measured, key=lambda item: item[:2]):
        lines.append(
            f"| {run} | {name} | {row['recipe']} | {row['minutes']:.1f} ({total:.1f}) | "
            f"{row['clean']:.4f} | {row['shifted']:.4f} | {row['zoomed']:.4f} |"
        )
    return lines


def main() -> None:
    """Render the ablation tables and the notes into one Markdown file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robustness", type=Path, required=True)
    parser.add_argument("--notes", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = json.loads(args.robustness.read_text())
    notes = args.notes.read_text()
    for split in ("val", "test"):
        notes = notes.replace(f"{{{split}_table}}", "\n".join(table(rows, split)))
    atomic_write_text(args.out, notes)


if __name__ == "__main__":
    main()
