r"""Write results/recipe-ablation.md: what each training-recipe change bought, member by member.

Renders the rows that ``benchmarks/member_robustness.py`` measured (clean, shifted and zoomed
accuracy of single members on val and test, each with its recipe and training minutes, keyed
``RUN:member/split``) as one table per split. The prose around the tables is kept in
``--notes`` (a Markdown file with the placeholders ``{val_table}`` and ``{test_table}``), so the
numbers are always regenerated and never typed by hand. ``{spread_table}`` becomes the
seed-to-seed spread of ``--spread-run``'s members: members whose recipes differ only in their
seed (and in which earlier stage of the same recipe they started from) form one group.
Rows measured with ``--medmnistc`` fill the MedMNIST-C column (others show "—"), and
``{medmnistc_table}`` becomes their accuracy per MedMNIST-C kind.

    python benchmarks/recipe_ablation.py --robustness results/recipe-ablation.json \
        --notes results/recipe-ablation-notes.md --out results/recipe-ablation.md
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from ensemble.core.fileio import atomic_write_text


def table(rows: dict, split: str) -> list[str]:
    """Markdown table of every measured member on one split, by run, then by minutes."""
    lines = [
        "| run | member | recipe | minutes (with its stage 1) | clean | shifted | zoomed "
        "| MedMNIST-C |",
        "|---|---|---|---|---|---|---|---|",
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
            f"{row['clean']:.4f} | {row['shifted']:.4f} | {row['zoomed']:.4f} | "
            f"{_medmnistc(row)} |"
        )
    return lines


def _medmnistc(row: dict) -> str:
    return f"{row['medmnistc']:.4f}" if "medmnistc" in row else "—"


def medmnistc_table(rows: dict, split: str) -> list[str]:
    """Accuracy per MedMNIST-C kind of every member measured with ``--medmnistc`` on a split."""
    measured = {
        key: row
        for key, row in rows.items()
        if "medmnistc_kinds" in row and key.split("/")[1:] == [split]
    }
    if not measured:
        return [f"(no member measured with --medmnistc on {split})"]
    kinds = list(next(iter(measured.values()))["medmnistc_kinds"])
    lines = [
        "| run | member | " + " | ".join(kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for key, row in measured.items():
        run, rest = key.split(":", 1)
        accuracies = " | ".join(f"{row['medmnistc_kinds'].get(kind, 0):.3f}" for kind in kinds)
        lines.append(f"| {run} | {rest.split('/')[0]} | {accuracies} |")
    return lines


def recipe_without_seed(recipe: str) -> str:
    """A recipe line with its seed left out, its start and teachers named generically."""
    recipe = re.sub(r", seed \d+$", "", recipe)
    recipe = re.sub(r"taught by [^ ]+ ", "taught by it ", recipe)
    return re.sub(r"from (?!scratch)[^,]+", "from its clean stage", recipe)


def spread_table(rows: dict, run: str) -> list[str]:
    """Seed-to-seed spread of one run's members on val and test, one line per recipe group."""
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for key, row in rows.items():
        row_run, rest = key.split(":", 1)
        name, split, *tta = rest.split("/")
        if row_run == run and not tta:
            groups.setdefault((recipe_without_seed(row["recipe"]), split), []).append((name, row))
    lines = [
        "| recipe (seeds differ) | split | members | clean | shifted | zoomed |",
        "|---|---|---|---|---|---|",
    ]
    for (recipe, split), members in sorted(groups.items(), key=lambda item: item[0]):
        if len(members) < 2:
            continue
        cells = []
        for copy in ("clean", "shifted", "zoomed"):
            values = [row[copy] for _, row in members]
            cells.append(f"{statistics.mean(values):.4f} ({min(values):.4f}–{max(values):.4f})")
        names = ", ".join(name for name, _ in members)
        lines.append(f"| {recipe} | {split} | {names} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    """Render the ablation tables and the notes into one Markdown file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robustness", type=Path, required=True)
    parser.add_argument("--notes", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--spread-run", default=None, help="run label of {spread_table}")
    args = parser.parse_args()
    rows = json.loads(args.robustness.read_text())
    notes = args.notes.read_text()
    for split in ("val", "test"):
        notes = notes.replace(f"{{{split}_table}}", "\n".join(table(rows, split)))
    notes = notes.replace("{medmnistc_table}", "\n".join(medmnistc_table(rows, "val")))
    if args.spread_run:
        notes = notes.replace("{spread_table}", "\n".join(spread_table(rows, args.spread_run)))
    atomic_write_text(args.out, notes)


if __name__ == "__main__":
    main()
