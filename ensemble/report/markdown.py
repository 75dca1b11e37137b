"""How ``ensemble report`` looks: ``report.md`` (readable on GitHub, images inline) and PNGs.

(``report.html``, the same report as one offline page with a review gallery, is rendered by
:mod:`ensemble.report.html`.)

Everything here renders the metrics :func:`ensemble.report.build.build_report` computed and wrote to
``metrics.json``, and nothing else: a report can be re-rendered from that file without the run
or its models. ``report.md`` is built section by section, one function each, in page order
(:data:`SECTIONS`). Row and column orders come from the lists in the metrics (``members``,
``combiners``, ``shift_kinds``), never from the order of a JSON object's keys, which
``metrics.json`` stores sorted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ensemble.report.adapted import render_section as _adapted
from ensemble.report.referral import render_section as _referral


def verdict(first: str, second: str, test: dict, alpha: float = 0.05) -> str:
    """One sentence saying which of two models wins on the same images, with the evidence."""
    first_only = test["first_only"]
    evidence = (
        f"{first_only} image{'' if first_only == 1 else 's'} right only by {first}, "
        f"{test['second_only']} only by {second}, McNemar p = {test['p_value']:.3g}"
    )
    if test["p_value"] >= alpha:
        return f"No significant difference between {first} and {second} ({evidence})."
    winner = first if test["first_only"] > test["second_only"] else second
    return f"**{winner[0].upper() + winner[1:]} wins** ({evidence})."


def _speed(images_per_second: float | None) -> str:
    return "-" if images_per_second is None else f"{images_per_second:.0f}"


def write_plots(models: dict, classes: list[str], out: Path) -> None:
    """Confusion matrices (counts and row-normalised) per model, reliability and coverage plots.

    Over 60 lines: the report's PNG figures, one after the other.
    """
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


def render_markdown(metrics: dict) -> str:
    """``report.md`` from the computed ``metrics`` (the content of ``metrics.json``).

    Args:
        metrics: what :func:`ensemble.report.build.build_report` returned or wrote. Files written
            before the member details were recorded render their member table with ``-``.

    Returns:
        The markdown text, every section of :data:`SECTIONS` in order.
    """
    lines: list[str] = []
    for section in SECTIONS:
        lines += section(metrics)
    lines.append("")
    return "\n".join(lines)


def model_names(metrics: dict) -> list[str]:
    """Every scored model in report order: the members, then the combiners.

    Files written before the combiners were listed give them in ``metrics.json``'s key order.
    """
    members = metrics["members"]
    combiners = metrics.get("combiners") or [m for m in metrics["models"] if m not in members]
    return [*members, *combiners]


def comparison_names(metrics: dict) -> list[str]:
    """McNemar comparisons in report order: hard vs stack, then each combiner vs best member."""
    tests = metrics["mcnemar"]
    best = metrics["best_member"]
    ordered = [name for name in ("hard_vs_stack",) if name in tests]
    ordered += [f"{c}_vs_{best}" for c in model_names(metrics) if f"{c}_vs_{best}" in tests]
    return ordered + [name for name in tests if name not in ordered]


def _summary(metrics: dict) -> list[str]:
    """The summary table of every model.

    Over 60 lines: one table with its notes, in page order.
    """
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
    ]
    fitted_with_tta = metrics.get("combiners_fitted_with_tta", metrics.get("tta"))
    if bool(fitted_with_tta) != bool(metrics.get("tta")):
        fitted, applied = ("with", "without") if fitted_with_tta else ("without", "with")
        advice = "report with `--tta`" if fitted_with_tta else "`ensemble fit-stacker --tta`"
        lines += [
            "",
            f"Note: the combiners were fitted {fitted} test-time augmentation and are applied "
            f"here {applied} it, so their temperatures and weights were fitted on other outputs "
            f"than the ones they combine here ({advice} to match).",
        ]
    copies = metrics.get("combiners_fitted_on_shift_copies", 0)
    if copies:
        lines += [
            "",
            f"The combiners were fitted on their half of blend plus {copies} seeded shifted "
            f"cop{'y' if copies == 1 else 'ies'} of it (acquisition shifts and zoom, other draws "
            "than the shifted and zoomed copies scored below).",
        ]
    lines += [
        "",
        "| model | accuracy (95% CI) | balanced accuracy (95% CI) | macro-F1 (95% CI) | ECE |",
        "|---|---|---|---|---|",
    ]
    for model in model_names(metrics):
        values = metrics["models"][model]
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
    ]
    methods = metrics.get("interval_methods")
    if methods:
        lines += [
            "",
            f"95% intervals: accuracy — {methods['accuracy']}; balanced accuracy and macro-F1 — "
            f"{methods['macro_f1']}.",
        ]
    if metrics.get("gallery") is not None:
        lines += [
            "",
            "The same report as one page that opens offline, with a leaderboard, charts and a "
            "gallery of the images the best combiner got wrong or would refer: "
            "[report.html](report.html); the leaderboard as [leaderboard.csv](leaderboard.csv).",
        ]
    return lines


def _significance(metrics: dict) -> list[str]:
    lines = [
        "",
        "## McNemar's exact test (same images)",
        "",
        "| comparison | only first right | only second right | p-value |",
        "|---|---|---|---|",
    ]
    tests = metrics["mcnemar"]
    for name in comparison_names(metrics):
        test = tests[name]
        lines.append(
            f"| {name.replace('_vs_', ' vs ')} | {test['first_only']} | {test['second_only']} | "
            f"{test['p_value']:.4g} |"
        )
    best, member = metrics["best_combiner"], metrics["best_member"]
    lines.append("")
    if "hard_vs_stack" in tests:
        lines.append("- " + verdict("hard voting", "stacking", tests["hard_vs_stack"]))
    lines.append(
        "- "
        + verdict(
            f"the best combiner ({best})",
            f"the best single member ({member})",
            tests[f"{best}_vs_{member}"],
        )
    )
    for copy, title in COPY_TITLES.items():
        copy_tests = metrics.get(f"{copy}_mcnemar") or {}
        copy_member = copy_best_member(metrics, copy)
        if f"{best}_vs_{copy_member}" in copy_tests:
            lines.append(
                f"- On the {title} copy: "
                + verdict(
                    f"the best combiner ({best})",
                    f"the best single member on it ({copy_member})",
                    copy_tests[f"{best}_vs_{copy_member}"],
                )
            )
        if "hard_vs_stack" in copy_tests:
            lines.append(
                f"- On the {title} copy: "
                + verdict("hard voting", "stacking", copy_tests["hard_vs_stack"])
            )
    return lines


CONTRIBUTIONS_NOTE = (
    "Voting needs no fitting, so each member can be left out exactly. Each cell: the change in "
    "accuracy, in points, of hard / soft voting when that member is left out; a negative change "
    "means the member earns its place on those images, a positive one that it costs accuracy "
    "there. The fitted combiners would have to be refitted to be measured this way. With three "
    "members, leaving one out leaves a two-member vote whose disagreements are ties, decided by "
    "the members' mean probability (soft voting in effect)."
)


def contribution_table(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """What each member buys, as text: the header and one row per member (all members first).

    Empty when the report has no contributions (fewer than 3 members, or an older report).
    """
    contributions = metrics.get("member_contributions") or {}
    if not contributions:
        return [], []
    copies = [copy for copy in ("clean", *COPY_TITLES) if copy in contributions]
    head = ["left out", *(COPY_TITLES.get(copy, copy) for copy in copies)]
    rows = [
        [
            "nothing (all members: hard / soft accuracy)",
            *(
                f"{contributions[c]['hard']['all']:.4f} / {contributions[c]['soft']['all']:.4f}"
                for c in copies
            ),
        ]
    ]
    for member in metrics["members"]:
        cells = [member]
        for copy in copies:
            changes = [
                100 * (votes["without"][member] - votes["all"])
                for votes in (contributions[copy]["hard"], contributions[copy]["soft"])
            ]
            cells.append(" / ".join(f"{change:+.2f}" for change in changes))
        rows.append(cells)
    return head, rows


def _contributions(metrics: dict) -> list[str]:
    """What each member buys: voting without each member, on every copy."""
    head, rows = contribution_table(metrics)
    if not rows:
        return []
    return [
        "",
        "## What each member buys",
        "",
        CONTRIBUTIONS_NOTE,
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _error_overlap(metrics: dict) -> list[str]:
    """Why the ensemble gains or does not: how often the members' errors coincide."""
    overlap = metrics.get("error_overlap")
    if not overlap:
        return []
    names = overlap["names"]
    lines = [
        "",
        "## Do the members err on the same images?",
        "",
        "Voting can only fix an image that most members get right. Each row: the share of that "
        "model's errors that the column's model repeats (Cohen's kappa of their errors in "
        "brackets: 1 = the same images, 0 = no more overlap than chance).",
        "",
        "| errors of ↓ repeated by → | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for row, name in enumerate(names):
        cells = []
        for column in range(len(names)):
            share, kappa = overlap["repeated"][row][column], overlap["kappa"][row][column]
            if row == column:
                cells.append(f"{overlap['errors'][row]} errors")
            elif share is None:
                cells.append("-")
            else:
                cells.append(f"{share:.0%}" + ("" if kappa is None else f" ({kappa:.2f})"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def copy_best_member(metrics: dict, copy: str) -> str:
    """The member the combiners are tested against on a copy: the best member on that copy.

    Reports written before it was recorded compared with the best member on clean images.
    """
    if copy == "clean":
        return metrics["best_member"]
    return metrics.get(f"{copy}_best_member", metrics["best_member"])


def _shifted(metrics: dict) -> list[str]:
    copies = [copy for copy in ("shifted", "zoomed", "medmnistc") if metrics.get(copy)]
    if not copies:
        return []
    models = metrics["models"]
    named = " and ".join(COPY_TITLES[copy] for copy in copies) + (
        " copies" if len(copies) > 1 else " copy"
    )
    lines = ["", f"## Clean versus {named} of the same images", ""]
    kinds = shift_kinds(metrics)
    if "shifted" in copies and kinds:
        lines.append(
            f"The shifted copy holds the {len(kinds)} acquisition kinds ({', '.join(kinds)}), "
            "one per image in turn, seeded; zoom is not among them (it has its own copy)."
        )
    if "zoomed" in copies:
        lines.append(
            "The zoomed copy zooms every image (two in three shown 1.25–2× larger, one in three "
            "0.7–0.85× smaller), seeded like the shifted copy."
        )
    if "medmnistc" in copies:
        suite = suite_kinds(metrics)
        lines.append(
            "The MedMNIST-C copy applies the corruption suite of Di Salvo et al. (2024) for "
            f"BloodMNIST at severity 3 of 5, its {len(suite)} kinds one per image in turn: a "
            "family of corruptions the project did not write and never trains on."
        )
    header = ["clean accuracy"]
    for copy in copies:
        header += [f"{COPY_TITLES[copy]} accuracy", f"{COPY_TITLES[copy]} macro-F1"]
    lines += [
        "",
        "| model | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(header),
    ]
    for model in model_names(metrics):
        cells = [f"{models[model]['accuracy']:.4f}"]
        for copy in copies:
            values = metrics[copy].get(model)
            cells += (
                [f"{values['accuracy']:.4f}", f"{values['macro_f1']:.4f}"] if values else ["-", "-"]
            )
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    by_kind = metrics.get("shifted_by_kind", {})
    if by_kind:
        kinds = metrics.get("shift_kinds") or list(next(iter(by_kind.values())))
        caption = "Accuracy on the shifted copy, by shift (each image gets one shift, in turn):"
        lines += _by_kind_table(metrics, caption, by_kind, kinds)
    suite_by_kind = metrics.get("medmnistc_by_kind", {})
    if suite_by_kind:
        caption = "Accuracy on the MedMNIST-C copy, by kind:"
        lines += _by_kind_table(metrics, caption, suite_by_kind, suite_kinds(metrics))
    return lines


def _by_kind_table(metrics: dict, caption: str, by_kind: dict, kinds: list[str]) -> list[str]:
    """A copy's accuracy per kind of corruption, one row per model that has it."""
    lines = [
        "",
        caption,
        "",
        "| model | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for model in [m for m in model_names(metrics) if m in by_kind]:
        values = by_kind[model]
        lines.append(f"| {model} | " + " | ".join(f"{values[k]:.4f}" for k in kinds) + " |")
    return lines


def suite_kinds(metrics: dict) -> list[str]:
    """The MedMNIST-C kinds in the suite's order (metrics.json's objects come back sorted)."""
    by_kind = metrics.get("medmnistc_by_kind") or {}
    return list(metrics.get("medmnistc_kinds") or next(iter(by_kind.values()), {}))


#: How the report names each copy of the images.
COPY_TITLES = {"shifted": "shifted", "zoomed": "zoomed", "medmnistc": "MedMNIST-C"}


def shift_kinds(metrics: dict) -> list[str]:
    """The kinds of shift of the shifted copy, in order (from the per-kind scores if unlisted)."""
    by_kind = metrics.get("shifted_by_kind") or {}
    return list(metrics.get("shift_kinds") or next(iter(by_kind.values()), {}))


def _members(metrics: dict) -> list[str]:
    lines = [
        "",
        "## Members (in the spirit of the report's Table 1)",
        "",
        "| member | backbone | augmentation | weights / fine-tuning | training min "
        "| predict img/s | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    speeds = metrics.get("prediction_images_per_second", {})
    details = metrics.get("member_details", {})
    for name in metrics["members"]:
        backbone, aug, tuning, minutes = member_cells(details.get(name))
        lines.append(
            f"| {name} | {backbone} | {aug} | {tuning} | {minutes} | "
            f"{_speed(speeds.get(name))} | {metrics['models'][name]['accuracy']:.4f} |"
        )
    lines += [
        "",
        "Training minutes as measured by `train-members`; prediction speed as measured by this "
        "report's own forward pass on this machine"
        + (" (8 views per image)." if metrics.get("tta") else "."),
    ]
    return lines


def member_cells(details: dict | None) -> tuple[str, str, str, str]:
    """Backbone, augmentation, weights / fine-tuning and training minutes of one member."""
    if details is None:
        return "-", "-", "-", "-"
    minutes = f"{details['train_seconds'] / 60:.1f}"
    if details["kind"] == "ovr":
        return f"one-vs-rest on {details['base_member']}", "-", "heads only", minutes
    augmentation = details["augmentation"]
    aug = "dihedral" if augmentation["dihedral"] else "none"
    magnitude, per_image = (
        augmentation["randaugment_magnitude"],
        augmentation["randaugment_per_image"],
    )
    if magnitude > 0 and per_image > 0:
        aug += f" + RandAugment {magnitude}×{per_image}"
    if augmentation.get("corruption_probability", 0) > 0:
        aug += f" + corruptions p={augmentation['corruption_probability']}"
    if details.get("init_from"):
        tuning = f"from {details['init_from']}"
    elif details["weights"] == "none":
        tuning = "from scratch"
    else:
        tuning = f"{details['weights']}, fine-tuned"
    return f"{details['backbone']} {details['input_size']} px", aug, tuning, minutes


def _per_class(metrics: dict) -> list[str]:
    lines = [
        "",
        "## Per class (best combiner)",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    per_class = metrics["models"][metrics["best_combiner"]]["per_class"]
    for index, name in enumerate(metrics["classes"]):
        lines.append(
            f"| {name} | {per_class['precision'][index]:.4f} | {per_class['recall'][index]:.4f} | "
            f"{per_class['f1'][index]:.4f} | {per_class['support'][index]} |"
        )
    return lines


def _abstention(metrics: dict) -> list[str]:
    models = {name: metrics["models"][name] for name in model_names(metrics)}
    lines = [
        "",
        "## Abstention and calibration",
        "",
        "![reliability and coverage–accuracy](calibration_and_abstention.png)",
        "",
        "| coverage | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for index, point in enumerate(models[metrics["members"][0]]["coverage_accuracy"]):
        lines.append(
            f"| {point['coverage']:.2f} | "
            + " | ".join(f"{models[m]['coverage_accuracy'][index]['accuracy']:.4f}" for m in models)
            + " |"
        )
    return lines


def _skipped(metrics: dict) -> list[str]:
    if not metrics.get("skipped"):
        return []
    lines = ["", "## Images left out (could not be decoded)", ""]
    return lines + [f"- `{item['id']}`: {item['reason']}" for item in metrics["skipped"]]


def _confusions(metrics: dict) -> list[str]:
    lines = ["", "## Confusion matrices", ""]
    return lines + [f"![{model}](confusion_{model}.png)" for model in model_names(metrics)]


#: The sections of ``report.md``, in page order.
SECTIONS: tuple[Callable[[dict], list[str]], ...] = (
    _summary,
    _adapted,  # an adapted run beside its base: ensemble.report.adapted
    _significance,
    _error_overlap,
    _contributions,
    _shifted,
    _members,
    _per_class,
    _abstention,
    _referral,  # prediction sets and OOD referral: ensemble.report.referral
    _skipped,
    _confusions,
)
