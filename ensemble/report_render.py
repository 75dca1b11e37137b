"""How ``ensemble report`` looks: ``report.md`` (readable on GitHub, images inline) and PNGs.

Everything here renders metrics already computed by :func:`ensemble.report.build_report`; the
member specs and training metrics are read from the run for the summary table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def verdict(first: str, second: str, test: dict, alpha: float = 0.05) -> str:
    """One sentence saying which of two models wins on the same images, with the evidence."""
    evidence = (
        f"{test['first_only']} images right only by {first}, {test['second_only']} only by "
        f"{second}, McNemar p = {test['p_value']:.3g}"
    )
    if test["p_value"] >= alpha:
        return f"No significant difference between {first} and {second} ({evidence})."
    winner = first if test["first_only"] > test["second_only"] else second
    return f"**{winner[0].upper() + winner[1:]} wins** ({evidence})."


def _speed(images_per_second: float | None) -> str:
    return "-" if images_per_second is None else f"{images_per_second:.0f}"


def write_plots(models: dict, classes: list[str], out: Path) -> None:
    """Confusion matrices (counts and row-normalised) per model, reliability and coverage plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for model, values in models.items():
        matrix = np.array(values["confusion"])
        normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        figure, axes = plt.subplots(1, 2, figsize=(12, 5))
        for axis, data, title, fmt in (
            (axes[0], matrix, "counts", "d"),
            (axes[1], normalised, "row-normalised (recall)", ".2f"),
        ):
            axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
            for i in range(len(classes)):
                for j in range(len(classes)):
                    axis.text(
                        j,
                        i,
                        format(data[i, j], fmt),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if normalised[i, j] > 0.6 else "black",
                    )
            axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
            axis.set_yticks(range(len(classes)), classes, fontsize=8)
            axis.set_xlabel("predicted")
            axis.set_ylabel("true")
            axis.set_title(f"{model}: {title}")
        figure.tight_layout()
        figure.savefig(out / f"confusion_{model}.png", dpi=90)
        plt.close(figure)
    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    axes[0].plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    for model, values in models.items():
        curve = values["calibration"]["curve"]
        axes[0].plot(
            [p["confidence"] for p in curve],
            [p["accuracy"] for p in curve],
            marker=".",
            label=f"{model} (ECE {values['calibration']['ece']:.3f})",
        )
        points = values["coverage_accuracy"]
        axes[1].plot(
            [p["coverage"] for p in points],
            [p["accuracy"] for p in points],
            marker=".",
            label=model,
        )
    axes[0].set_xlabel("confidence")
    axes[0].set_ylabel("accuracy")
    axes[0].set_title("reliability")
    axes[0].legend(fontsize=7)
    axes[1].invert_xaxis()
    axes[1].set_xlabel("coverage (share of images not referred)")
    axes[1].set_ylabel("accuracy on covered images")
    axes[1].set_title("abstention: refer low-agreement images")
    axes[1].legend(fontsize=7)
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "calibration_and_abstention.png", dpi=90)
    plt.close(figure)


def render_markdown(metrics: dict, run_root: Path) -> str:
    """``report.md`` from the computed ``metrics`` (see :func:`ensemble.report.build_report`)."""
    models = metrics["models"]
    names = metrics["members"]
    lines = [
        f"# {metrics['title']}",
        "",
        f"{metrics['n_images']} held-out images; every model below is scored on the same ones."
        + (
            " Each member's outputs are averaged over the 8 dihedral views of every image "
            "(test-time augmentation)."
            if metrics.get("tta")
            else ""
        ),
        "",
        "| model | accuracy (95% CI) | balanced accuracy (95% CI) | macro-F1 (95% CI) | ECE |",
        "|---|---|---|---|---|",
    ]
    for model, values in models.items():
        ci = values["ci95"]
        cells = [
            f"{values[key]:.4f} ({ci[key][0]:.4f}–{ci[key][1]:.4f})"
            for key in ("accuracy", "balanced_accuracy", "macro_f1")
        ]
        bold = "**" if model == metrics["best_combiner"] or model == metrics["best_member"] else ""
        lines.append(
            f"| {bold}{model}{bold} | "
            + " | ".join(cells)
            + f" | {values['calibration']['ece']:.4f} |"
        )
    lines += [
        "",
        f"Best single member: **{metrics['best_member']}**; best combiner: "
        f"**{metrics['best_combiner']}**.",
        "",
        "## McNemar's exact test (same images)",
        "",
        "| comparison | only first right | only second right | p-value |",
        "|---|---|---|---|",
    ]
    for name, test in metrics["mcnemar"].items():
        lines.append(
            f"| {name.replace('_vs_', ' vs ')} | {test['first_only']} | {test['second_only']} | "
            f"{test['p_value']:.4g} |"
        )
    best, member = metrics["best_combiner"], metrics["best_member"]
    lines += [
        "",
        "- " + verdict("hard voting", "stacking", metrics["mcnemar"]["hard_vs_stack"]),
        "- "
        + verdict(
            f"the best combiner ({best})",
            f"the best single member ({member})",
            metrics["mcnemar"][f"{best}_vs_{member}"],
        ),
    ]
    if metrics["shifted"]:
        lines += [
            "",
            "## Clean versus shifted copy of the same images",
            "",
            "| model | clean accuracy | shifted accuracy | shifted macro-F1 |",
            "|---|---|---|---|",
        ]
        for model, values in metrics["shifted"].items():
            lines.append(
                f"| {model} | {models[model]['accuracy']:.4f} | {values['accuracy']:.4f} | "
                f"{values['macro_f1']:.4f} |"
            )
        by_kind = metrics.get("shifted_by_kind", {})
        if by_kind:
            kinds = list(next(iter(by_kind.values())))
            lines += [
                "",
                "Accuracy on the shifted copy, by shift (each image gets one shift, in turn):",
                "",
                "| model | " + " | ".join(kinds) + " |",
                "|---|" + "---|" * len(kinds),
            ]
            for model, values in by_kind.items():
                lines.append(f"| {model} | " + " | ".join(f"{values[k]:.4f}" for k in kinds) + " |")
    lines += [
        "",
        "## Members (in the spirit of the report's Table 1)",
        "",
        "| member | backbone | augmentation | weights / fine-tuning | training min "
        "| predict img/s | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    speeds = metrics.get("prediction_images_per_second", {})
    for name in names:
        spec = json.loads((Path(run_root) / "members" / name / "spec.json").read_text())
        trained = json.loads((Path(run_root) / "members" / name / "metrics.json").read_text())
        augmentation = spec["augmentation"]
        aug = "dihedral" if augmentation["dihedral"] else "none"
        magnitude, per_image = (
            augmentation["randaugment_magnitude"],
            augmentation["randaugment_per_image"],
        )
        if magnitude > 0 and per_image > 0:
            aug += f" + RandAugment {magnitude}×{per_image}"
        if augmentation.get("corruption_probability", 0) > 0:
            aug += f" + corruptions p={augmentation['corruption_probability']}"
        if spec["kind"] == "ovr":
            backbone, aug, tuning = (
                f"one-vs-rest on {spec['ovr']['base_member']}",
                "-",
                "heads only",
            )
        else:
            backbone = f"{spec['backbone']} {spec['input_size']} px"
            tuning = (
                "from scratch" if spec["weights"] == "none" else f"{spec['weights']}, fine-tuned"
            )
        lines.append(
            f"| {name} | {backbone} | {aug} | {tuning} | {trained['train_seconds'] / 60:.1f} | "
            f"{_speed(speeds.get(name))} | {models[name]['accuracy']:.4f} |"
        )
    lines += [
        "",
        "Training minutes as measured by `train-members`; prediction speed as measured by this "
        "report's own forward pass on this machine"
        + (" (8 views per image)." if metrics.get("tta") else "."),
        "",
        "## Per class (best combiner)",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    per_class = models[metrics["best_combiner"]]["per_class"]
    for index, name in enumerate(metrics["classes"]):
        lines.append(
            f"| {name} | {per_class['precision'][index]:.4f} | {per_class['recall'][index]:.4f} | "
            f"{per_class['f1'][index]:.4f} | {per_class['support'][index]} |"
        )
    lines += [
        "",
        "## Abstention and calibration",
        "",
        "![reliability and coverage–accuracy](calibration_and_abstention.png)",
        "",
        "| coverage | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for index, point in enumerate(models[names[0]]["coverage_accuracy"]):
        lines.append(
            f"| {point['coverage']:.2f} | "
            + " | ".join(f"{models[m]['coverage_accuracy'][index]['accuracy']:.4f}" for m in models)
            + " |"
        )
    if metrics.get("skipped"):
        lines += ["", "## Images left out (could not be decoded)", ""]
        lines += [f"- `{item['id']}`: {item['reason']}" for item in metrics["skipped"]]
    lines += ["", "## Confusion matrices", ""]
    lines += [f"![{model}](confusion_{model}.png)" for model in models]
    lines.append("")
    return "\n".join(lines)
