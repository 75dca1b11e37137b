"""Per-member training report of a run: time, speed, validation accuracy and macro-F1 per epoch.

Usage:
    python benchmarks/members_report.py --run runs/pbc-cpu --out results/members-pbc-cpu.md

Reads each member's ``history.json`` and ``metrics.json`` (written by ``ensemble
train-members``) and writes a markdown table plus a PNG of validation accuracy and macro-F1 per
epoch beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ensemble.core.fileio import atomic_write_text


def main() -> None:
    """Write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/pbc-cpu"))
    parser.add_argument("--out", type=Path, default=Path("results/members-pbc-cpu.md"))
    parser.add_argument("--command", default="", help="the command that produced the run")
    parser.add_argument("--note", default="", help="a paragraph on how the run was made")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = json.loads((args.run / "manifest.json").read_text())
    split = json.loads((args.run / "split.json").read_text())
    rows, curves = [], {}
    total_seconds = 0.0
    for name in manifest["members"]:
        member = args.run / "members" / name
        if not (member / "metrics.json").is_file():
            rows.append(f"| {name} | not finished | | | | | |")
            continue
        metrics = json.loads((member / "metrics.json").read_text())
        history = json.loads((member / "history.json").read_text())
        seconds = metrics["train_seconds"] + sum(
            row.get("eval_seconds", 0) + row.get("save_seconds", 0)
            for row in history
            if isinstance(row, dict) and "epoch" in row
        )
        total_seconds += seconds
        if history and "val_accuracy" in history[0]:
            curves[name] = history
        target = "yes" if metrics["val_accuracy"] >= 0.95 else "**no**"
        rows.append(
            f"| {name} | {metrics['backbone']} | {metrics['input_size']} | "
            f"{metrics['epochs_run']} (best {metrics.get('best_epoch', '-')}) | "
            f"{seconds / 60:.1f} | {metrics['images_per_second']:.0f} | "
            f"{metrics['val_accuracy']:.4f} / {metrics['val_macro_f1']:.4f} {target} |"
        )

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, history in curves.items():
        epochs = [row["epoch"] for row in history]
        axes[0].plot(epochs, [row["val_accuracy"] for row in history], marker=".", label=name)
        axes[1].plot(epochs, [row["val_macro_f1"] for row in history], marker=".", label=name)
    for axis, title in zip(axes, ("validation accuracy", "validation macro-F1"), strict=True):
        axis.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.set_ylim(0.5, 1.0)
        axis.grid(alpha=0.3)
        axis.legend()
    plot = args.out.with_suffix(".png")
    figure.tight_layout()
    figure.savefig(plot, dpi=110)

    per_epoch = []
    for name, history in curves.items():
        per_epoch.append(
            f"\n### {name}\n\n| epoch | loss | train acc | val acc | val macro-F1 | s | img/s |\n|---|---|---|---|---|---|---|"
        )
        for row in history:
            per_epoch.append(
                f"| {row['epoch']} | {row['loss']:.4f} | {row['accuracy']:.4f} | "
                f"{row['val_accuracy']:.4f} | {row['val_macro_f1']:.4f} | {row['seconds']:.0f} | "
                f"{row['images_per_second']:.0f} |"
            )
    text = "\n".join(
        [
            f"# Members of `{args.run.name}`: training on this 2-core CPU",
            "",
            f"Reproduce: `{args.command or 'ensemble train-members --pipeline pipelines/' + manifest['pipeline'] + '.toml --data ../shared/data/pbc96 --run ' + str(args.run)}`, "
            f"then `python benchmarks/members_report.py --run {args.run} --out {args.out}`.",
            "",
            "Split (seeded, duplicate groups kept together, audit-flagged images excluded): "
            + ", ".join(f"{k} {v}" for k, v in split["counts"].items()),
            "",
            "| member | backbone | px | epochs | minutes | train img/s | best val accuracy / macro-F1 ≥ 0.95 |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"All members: {total_seconds / 60:.1f} minutes of training (budget: 120).",
            "",
            args.note,
            "",
            f"![validation accuracy and macro-F1 per epoch]({plot.name})",
            "",
            "## Per epoch",
            *per_epoch,
            "",
        ]
    )
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
