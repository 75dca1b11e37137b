"""``ensemble report``: every member and every combiner on the same held-out images.

For each model: accuracy, balanced accuracy and macro-F1 with bootstrap 95 % intervals,
per-class precision / recall / F1, expected calibration error, a confusion matrix (counts and
row-normalised); McNemar's test for hard voting vs stacking and for each combiner vs the best
single member; the coverage–accuracy curve when images with low member agreement are referred
to a human; a summary table in the spirit of the report's Table 1. Written as ``report.md``,
``metrics.json`` and PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ensemble.combiners import TemperatureScaling, combiner_from_json
from ensemble.fileio import atomic_write_json, atomic_write_text
from ensemble.fitting import VOTERS, load_selection, member_hashes
from ensemble.metrics import (
    bootstrap_intervals,
    calibration,
    coverage_accuracy,
    mcnemar,
    per_class_metrics,
    summary_metrics,
)
from ensemble.stacker import Stacker

COMBINERS = (*VOTERS, "stack")


def combine_outputs(run_root: Path, outputs: dict[str, dict]) -> dict[str, np.ndarray]:
    """Probabilities of every member (temperature-scaled) and every fitted combiner.

    Args:
        run_root: run with fitted combiners.
        outputs: member name → ``{"probabilities", "features"}`` on the same images.
    """
    selection = load_selection(run_root)
    names = selection["members"]
    folder = Path(run_root) / "combiners"
    scaler = TemperatureScaling()
    scaler.temperatures_ = np.array(
        json.loads((folder / "temperatures.json").read_text())["temperatures"]
    )
    raw = [outputs[name]["probabilities"] for name in names]
    stack = scaler.transform(np.stack(raw))
    result = {name: stack[index] for index, name in enumerate(names)}
    for kind in VOTERS:
        result[kind] = combiner_from_json((folder / f"{kind}.json").read_text()).predict_proba(
            stack
        )
    stacker = Stacker.load(folder, member_hashes(run_root, names))
    result["stack"] = stacker.predict_proba([outputs[n]["features"] for n in names], raw)
    return result


def build_report(
    run_root: Path,
    outputs: dict[str, dict],
    labels: np.ndarray,
    classes: list[str],
    out: Path,
    title: str,
    shifted: dict[str, dict] | None = None,
) -> dict:
    """Compute every metric, write ``report.md``, ``metrics.json`` and the PNGs into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selection = load_selection(run_root)
    names = selection["members"]
    probabilities = combine_outputs(run_root, outputs)
    n_classes = len(classes)
    votes = np.stack([probabilities[name].argmax(1) for name in names])
    models = {}
    for model, probs in probabilities.items():
        predicted = probs.argmax(1)
        agreement = (votes == predicted).mean(axis=0)
        models[model] = {
            **summary_metrics(labels, predicted, n_classes),
            "ci95": bootstrap_intervals(labels, predicted, n_classes),
            "per_class": per_class_metrics(labels, predicted, n_classes),
            "calibration": calibration(labels, probs),
            "coverage_accuracy": coverage_accuracy(labels, predicted, agreement, probs.max(1)),
            "confusion": _confusion(labels, predicted, n_classes).tolist(),
        }
    best_member = max(names, key=lambda name: models[name]["accuracy"])
    best_combiner = max(COMBINERS, key=lambda name: models[name]["accuracy"])
    tests = {
        "hard_vs_stack": mcnemar(
            labels, probabilities["hard"].argmax(1), probabilities["stack"].argmax(1)
        ),
        **{
            f"{kind}_vs_{best_member}": mcnemar(
                labels, probabilities[kind].argmax(1), probabilities[best_member].argmax(1)
            )
            for kind in COMBINERS
        },
    }
    shifted_models = {}
    if shifted is not None:
        shifted_probabilities = combine_outputs(run_root, shifted)
        for model, probs in shifted_probabilities.items():
            shifted_models[model] = summary_metrics(labels, probs.argmax(1), n_classes)
    metrics = {
        "title": title,
        "n_images": int(len(labels)),
        "classes": classes,
        "members": names,
        "best_member": best_member,
        "best_combiner": best_combiner,
        "models": models,
        "mcnemar": tests,
        "shifted": shifted_models,
    }
    atomic_write_json(out / "metrics.json", metrics)
    _plots(models, classes, out)
    atomic_write_text(out / "report.md", _markdown(metrics, run_root))
    return metrics


def _confusion(labels, predicted, n_classes) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def _plots(models: dict, classes: list[str], out: Path) -> None:
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


def _markdown(metrics: dict, run_root: Path) -> str:
    models = metrics["models"]
    names = metrics["members"]
    lines = [
        f"# {metrics['title']}",
        "",
        f"{metrics['n_images']} held-out images; every model below is scored on the same ones.",
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
    lines += [
        "",
        "## Members (in the spirit of the report's Table 1)",
        "",
        "| member | backbone | augmentation | weights / fine-tuning | training min "
        "| test accuracy |",
        "|---|---|---|---|---|---|",
    ]
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
            f"{models[name]['accuracy']:.4f} |"
        )
    lines += [
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
    lines += ["", "## Confusion matrices", ""]
    lines += [f"![{model}](confusion_{model}.png)" for model in models]
    lines.append("")
    return "\n".join(lines)


def report_on_split(
    run, split_name: str, out: Path, *, shifted: bool = False, shift_seed: int = 0
) -> dict:
    """Report every member and combiner on one split of the run (cached features)."""
    from ensemble.features import cached_member_outputs

    selection = load_selection(run.root)
    outputs = {name: cached_member_outputs(run, name, split_name) for name in selection["members"]}
    labels = outputs[selection["members"][0]]["labels"]
    shifted_outputs = None
    if shifted:
        images = {}
        for name in selection["members"]:
            size = _member_size(run.root, name)
            if size not in images:
                images[size] = run.images(split_name, size)[0]
        shifted_outputs = outputs_for_images(run.root, selection["members"], images, shift_seed)
    title = f"Run `{Path(run.root).name}`: members and combiners on the {split_name} split"
    return build_report(
        run.root, outputs, labels, run.manifest["classes"], out, title, shifted_outputs
    )


def outputs_for_images(
    run_root: Path, members: list[str], images: dict[int, np.ndarray], shift_seed: int | None = None
) -> dict[str, dict]:
    """Each member's probabilities and features on images given per input size.

    With ``shift_seed``, the images are first replaced by their seeded shifted copy
    (:func:`ensemble.shifts.shifted_copy`), made at the largest size and resized, so every
    member sees the same shifted pictures.
    """
    from ensemble.artifacts import load_keras_model
    from ensemble.features import member_outputs
    from ensemble.images import crop_and_resize
    from ensemble.shifts import shifted_copy

    if shift_seed is not None:
        largest = max(images)
        shifted, _ = shifted_copy(images[largest], shift_seed)
        images = {
            size: np.stack([crop_and_resize(image, size) for image in shifted]) for size in images
        }
    result = {}
    for name in members:
        model = load_keras_model(Path(run_root) / "members" / name / "model.keras")
        probabilities, features = member_outputs(model, images[model.input_shape[1]])
        result[name] = {"probabilities": probabilities, "features": features}
    return result


def _member_size(run_root: Path, name: str) -> int:
    spec = json.loads((Path(run_root) / "members" / name / "spec.json").read_text())
    if spec["kind"] == "ovr":
        return _member_size(run_root, spec["ovr"]["base_member"])
    return int(spec["input_size"])
