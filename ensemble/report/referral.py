"""The report's "Referral" section: what the referral rule buys on the report's images.

:func:`referral_metrics` measures both rules (:mod:`ensemble.refer.rule`) on a report's images —
clean, each kind of shift, and the zoomed copy — from member outputs the report already
computed (no forward pass), and :func:`render_section` writes the Markdown section from that
dict alone.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ensemble.refer.conformal import minimum_calibration_size, per_class_coverage, set_sizes
from ensemble.refer.rule import (
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_CONFIDENCE,
    agreement_referral,
    conformal_referral,
)

if TYPE_CHECKING:
    from ensemble.combine.base import MemberOutputs
    from ensemble.serve.ensemble import Ensemble

#: Miss rates of the report's trade-off table: accuracy on accepted images vs referral rate.
ALPHAS = (0.2, 0.1, 0.05, 0.02, 0.01, 0.005)


def referral_metrics(
    ensemble: Ensemble,
    clean: MemberOutputs,
    labels: np.ndarray,
    *,
    shifted: MemberOutputs | None = None,
    shift_kinds: list[str] | None = None,
    zoomed: MemberOutputs | None = None,
    zoom_kind: str = "zoom",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
) -> dict:
    """Coverage, set sizes and referral of the ensemble's combiner on a report's images.

    Args:
        ensemble: the fitted ensemble (its default combiner, sets and OOD detector are used).
        clean: member outputs on the report's images.
        labels: their true classes.
        shifted: member outputs on the shifted copy of the same images (same labels), if any.
        shift_kinds: the shift applied to each image of the shifted copy.
        zoomed: member outputs on the zoomed copy of the same images, if any.
        zoom_kind: the name of the zoomed copy's kind of shift.
        min_agreement: the agreement rule's threshold, for comparison.
        min_confidence: the agreement rule's threshold, for comparison.

    Returns:
        A JSON-ready dict (lists in class and group order, as ``metrics.json`` sorts keys):
        ``calibrated`` (False and nothing else for a run fitted before prediction sets),
        ``combiner``, ``alpha``, ``target_coverage``, ``conformal`` and ``ood`` settings,
        ``coverage`` (per image set: clean, shifted, zoomed; overall and per class),
        ``trade_off`` (per image set, per alpha: coverage, set size, referral, accepted
        accuracy), ``referral`` (per group: clean, each shift kind, zoom; share of all images
        and of the wrong answers referred, by either rule) and ``below_target`` (image sets
        whose coverage falls below the target), ``selective`` (``None`` for a run fitted
        before it: see :func:`_selective_settings` and :func:`_add_selective`).

    Over 60 lines: its arguments and the returned dict are documented key by key; each image set is
    scored by :func:`_score_image_set`.
    """
    if not ensemble.conformal_:
        return {"calibrated": False}
    alpha = ensemble.default_alpha
    conformal = ensemble.conformal_[ensemble.combiner_]
    calibration = ensemble.calibration_ or {}
    image_sets = {"clean": (clean, labels, ["clean"] * len(labels))}
    if shifted is not None:
        kinds = list(shift_kinds) if shift_kinds is not None else ["shifted"] * len(labels)
        image_sets["shifted"] = (shifted, labels, kinds)
    if zoomed is not None:
        image_sets["zoomed"] = (zoomed, labels, [zoom_kind] * len(labels))
    result = {
        "calibrated": True,
        "combiner": ensemble.combiner_,
        "alpha": alpha,
        "target_coverage": 1.0 - alpha,
        "conformal": {
            "score": conformal.score,
            "mondrian": conformal.mondrian,
            "n_calibration": len(conformal.calibration_scores_),
            "n_needed": minimum_calibration_size(alpha),
            "fallback_classes": [ensemble.classes_[k] for k in conformal.fallback_classes(alpha)],
            "design": calibration.get("design", ""),
        },
        "ood": None,
        "image_sets": list(image_sets),
        "coverage": {},
        "trade_off": {},
        "groups": [],
        "referral": {},
        "below_target": [],
    }
    if ensemble.ood_ is not None:
        result["ood"] = {
            "method": ensemble.ood_.method,
            "target_referral": ensemble.ood_.target_referral,
            "threshold": ensemble.ood_threshold,
            "n_calibration": len(ensemble.ood_.calibration_scores_),
        }
    result["selective"] = _selective_settings(ensemble)
    for name, (outputs, truth, kinds) in image_sets.items():
        _score_image_set(
            result, name, ensemble, outputs, truth, np.asarray(kinds), min_agreement, min_confidence
        )
    return result


def _score_image_set(
    result: dict,
    name: str,
    ensemble: Ensemble,
    outputs: MemberOutputs,
    truth: np.ndarray,
    kinds: np.ndarray,
    min_agreement: float,
    min_confidence: float,
) -> None:
    """Add one image set's coverage, trade-off, referral per kind and selective rule."""
    alpha = result["alpha"]
    probabilities = ensemble.combine(outputs)
    flagged = None
    if ensemble.ood_ is not None:
        flagged = ensemble.ood_from_outputs(outputs) > ensemble.ood_threshold
    if result["selective"] is not None:
        _add_selective(result["selective"], name, ensemble, outputs, probabilities, truth, flagged)
    sets = ensemble.sets_from_probabilities(probabilities, alpha)
    result["coverage"][name] = _coverage(sets, truth, ensemble.classes_)
    result["trade_off"][name] = [
        _accepted(
            probabilities,
            ensemble.sets_from_probabilities(probabilities, a),
            flagged,
            truth,
            alpha=a,
        )
        for a in sorted({*ALPHAS, alpha}, reverse=True)
    ]
    referred = conformal_referral(probabilities, sets, flagged)
    by_agreement = agreement_referral(probabilities, outputs.votes, min_agreement, min_confidence)
    for kind in dict.fromkeys(kinds.tolist()):
        rows = kinds == kind
        result["groups"].append(kind)
        result["referral"][kind] = _referral(
            probabilities[rows],
            truth[rows],
            referred[rows],
            by_agreement[rows],
            None if flagged is None else flagged[rows],
        )
    if result["coverage"][name]["coverage"] < 1.0 - alpha:
        result["below_target"].append(name)


#: Shares of images referred at which the referral curves are drawn.
REFERRAL_SHARES = tuple(round(0.01 * step, 2) for step in range(51))


def _selective_settings(ensemble: Ensemble) -> dict | None:
    """The selective rule of the default combiner as calibrated: targets, bounds, thresholds."""
    if not ensemble.selective_:
        return None
    selective = ensemble.selective_[ensemble.combiner_]
    targets = []
    for target in selective.targets:
        calibration = selective.calibration_[target]
        rows = calibration if selective.per_class else [calibration]
        n_accepted = sum(row["n_accepted"] for row in rows)
        n_wrong = sum(row["n_wrong"] for row in rows)
        targets.append(
            {
                "target": target,
                "calibration_n": sum(row["n"] for row in rows),
                "calibration_accepted": n_accepted,
                "calibration_accuracy": _number(1 - n_wrong / n_accepted) if n_accepted else None,
                "guaranteed": [
                    _number(1 - row["error_bound"]) if row["n_accepted"] else None for row in rows
                ],
                "image_sets": {},
            }
        )
    return {
        "combiner": ensemble.combiner_,
        "delta": selective.delta,
        "score": selective.score,
        "per_class": selective.per_class,
        "targets": targets,
        "curves": {},
    }


def _add_selective(
    record: dict,
    image_set: str,
    ensemble: Ensemble,
    outputs: MemberOutputs,
    probabilities: np.ndarray,
    labels: np.ndarray,
    flagged: np.ndarray | None,
) -> None:
    """What the selective rule did on one image set, and every model's referral curve there.

    Per target: the share referred, the accuracy on accepted images, the share of wrong
    answers referred, and per predicted class the same. The curves: for every combiner and
    member, the accuracy on the images kept when the least confident ``share`` are referred.
    ``probabilities`` are the default combiner's on ``outputs``, as the caller computed them.
    """
    selective = ensemble.selective_[ensemble.combiner_]
    predicted = probabilities.argmax(axis=1)
    correct = predicted == labels
    for entry in record["targets"]:
        accepted = selective.accept(probabilities, entry["target"], flagged)
        per_class = []
        for index, name in enumerate(ensemble.classes_):
            rows = predicted == index
            per_class.append(
                {
                    "class": name,
                    "n_predicted": int(rows.sum()),
                    "referred": _ratio(rows & ~accepted, rows),
                    "accepted_accuracy": _ratio(rows & accepted & correct, rows & accepted),
                }
            )
        entry["image_sets"][image_set] = {
            "n_images": int(len(labels)),
            "referred": float(1 - accepted.mean()),
            "accepted_accuracy": _ratio(accepted & correct, accepted),
            "wrong_referred": _ratio(~correct & ~accepted, ~correct),
            "per_class": per_class,
        }
    record["curves"][image_set] = {
        name: _curve(model_probabilities, labels)
        for name, model_probabilities in ensemble.combine_all(outputs).items()
    }


def _curve(probabilities: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Accuracy on the images kept when the least confident ``share`` are referred."""
    order = np.argsort(-probabilities.max(axis=1), kind="stable")
    correct = (probabilities.argmax(axis=1) == labels)[order]
    points = []
    for share in REFERRAL_SHARES:
        kept = max(1, int(round(len(labels) * (1 - share))))
        points.append({"referred": share, "accuracy": float(correct[:kept].mean())})
    return points


def _ratio(part: np.ndarray, whole: np.ndarray) -> float | None:
    """``part.sum() / whole.sum()``, ``None`` for an empty whole."""
    total = int(np.sum(whole))
    return float(np.sum(part) / total) if total else None


def _coverage(sets: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    sizes = set_sizes(sets)
    covered = per_class_coverage(sets, labels)
    per_class = []
    for index, name in enumerate(classes):
        rows = labels == index
        per_class.append(
            {
                "class": name,
                "n": int(rows.sum()),
                "coverage": _number(covered[index]),
                "mean_set_size": _number(sizes[rows].mean()) if rows.any() else None,
            }
        )
    return {
        "n_images": int(len(labels)),
        "coverage": float(sets[np.arange(len(labels)), labels].mean()),
        "mean_set_size": float(sizes.mean()),
        "per_class": per_class,
    }


def _accepted(probabilities, sets, flagged, labels, *, alpha: float) -> dict:
    referred = conformal_referral(probabilities, sets, flagged)
    correct = probabilities.argmax(axis=1) == labels
    accepted = ~referred
    return {
        "alpha": alpha,
        "coverage": float(sets[np.arange(len(labels)), labels].mean()),
        "mean_set_size": float(set_sizes(sets).mean()),
        "referred": float(referred.mean()),
        "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
    }


def _referral(probabilities, labels, referred, by_agreement, flagged) -> dict:
    wrong = probabilities.argmax(axis=1) != labels
    n_wrong = int(wrong.sum())
    accepted = ~referred
    return {
        "n_images": int(len(labels)),
        "accuracy": float((~wrong).mean()),
        "n_wrong": n_wrong,
        "referred": float(referred.mean()),
        "wrong_referred": float(referred[wrong].mean()) if n_wrong else None,
        "accepted_accuracy": float((~wrong[accepted]).mean()) if accepted.any() else None,
        "ood_referred": None if flagged is None else float(flagged.mean()),
        "agreement_referred": float(by_agreement.mean()),
        "agreement_wrong_referred": float(by_agreement[wrong].mean()) if n_wrong else None,
    }


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


# --- Markdown -----------------------------------------------------------------------------------

_IMAGE_SET_NAMES = {"clean": "clean", "shifted": "shifted copy", "zoomed": "zoomed copy"}


def render_section(metrics: dict) -> list[str]:
    """The report's "Referral with a guarantee" section from ``metrics["referral"]`` alone."""
    referral = metrics.get("referral")
    if not referral:
        return []
    lines = ["", "## Referral with a guarantee: prediction sets and out-of-distribution scores", ""]
    if not referral.get("calibrated"):
        return lines + [
            "The run's combiners were fitted before prediction sets existed: run "
            "`ensemble fit-stacker` again to see coverage and referral here."
        ]
    lines += render_selective(referral.get("selective"))
    alpha, target = referral["alpha"], referral["target_coverage"]
    conformal, ood = referral["conformal"], referral["ood"]
    mondrian = ", one threshold per class (Mondrian)" if conformal["mondrian"] else ""
    lines.append(
        f"Prediction sets of **{referral['combiner']}** at alpha = {alpha:g} (target coverage "
        f"{target:.1%}): {conformal['score'].upper()} score{mondrian}, calibrated on "
        f"{conformal['n_calibration']} blend images that fitted neither the members nor the "
        "combiners."
        + (
            f" Out-of-distribution score: {ood['method']}, threshold calibrated to refer "
            f"{ood['target_referral']:.1%} of {ood['n_calibration']} clean blend images."
            if ood
            else " No out-of-distribution detector."
        )
        + " An image is accepted only when its set is exactly the predicted class"
        + (" and its OOD score is under the threshold" if ood else "")
        + "; every other image is referred to a human."
    )
    if conformal["n_calibration"] < conformal.get("n_needed", 0):
        lines += [
            "",
            f"**Too few calibration images for alpha = {alpha:g}** ({conformal['n_calibration']}"
            f", {conformal['n_needed']} needed): every set holds every class and every image is "
            "referred. The tables show what that means; a larger run, or a larger alpha, "
            "gives useful sets.",
        ]
    elif conformal["fallback_classes"]:
        lines += [
            "",
            f"Classes {', '.join(conformal['fallback_classes'])} have too few calibration "
            "images for their own threshold at this alpha; theirs falls back to a conservative "
            "one.",
        ]
    return (
        lines
        + _coverage_lines(referral)
        + _per_class_lines(referral)
        + _who_is_referred_lines(referral)
        + _trade_off_lines(referral)
    )


def _coverage_lines(referral: dict) -> list[str]:
    """Coverage per image set against the target, and what it means when it falls below."""
    lines: list[str] = []
    alpha, target = referral["alpha"], referral["target_coverage"]
    names = [name for name in referral["image_sets"] if name in referral["coverage"]]
    lines += [
        "",
        "| images | n | coverage | target | mean set size |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        values = referral["coverage"][name]
        below = " (below)" if name in referral["below_target"] else ""
        lines.append(
            f"| {_IMAGE_SET_NAMES.get(name, name)} | {values['n_images']} | "
            f"{values['coverage']:.4f}{below} | {target:.4f} | {values['mean_set_size']:.2f} |"
        )
    for name in referral["below_target"]:
        value = referral["coverage"][name]["coverage"]
        if name == "clean":
            n = referral["coverage"][name]["n_images"]
            noise = math.sqrt(alpha * (1 - alpha) / max(n, 1))
            lines += [
                "",
                f"**Coverage on the clean images ({value:.4f}) is below the target {target:.4f}.** "
                f"On {n} images the coverage itself varies by about ±{noise:.4f} (one standard "
                "error), and the guarantee holds on average over calibration sets, not for each.",
            ]
        else:
            lines += [
                "",
                f"**Coverage on the {_IMAGE_SET_NAMES.get(name, name)} ({value:.4f}) is below the "
                f"target {target:.4f}: the guarantee does not hold there.** It assumes images "
                "exchangeable with the calibration images, and these are not. Their protection "
                "is the out-of-distribution referral below, which has no guarantee.",
            ]
    return lines


def _per_class_lines(referral: dict) -> list[str]:
    """Coverage per class on every image set."""
    lines: list[str] = []
    names = [name for name in referral["image_sets"] if name in referral["coverage"]]
    lines += [
        "",
        "Coverage per class:",
        "",
        "| class | " + " | ".join(_IMAGE_SET_NAMES.get(n, n) for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for index, row in enumerate(referral["coverage"]["clean"]["per_class"]):
        cells = []
        for name in names:
            entry = referral["coverage"][name]["per_class"][index]
            cells.append(
                "-"
                if entry["coverage"] is None
                else f"{entry['coverage']:.4f} (n={entry['n']}, size {entry['mean_set_size']:.2f})"
            )
        lines.append(f"| {row['class']} | " + " | ".join(cells) + " |")
    return lines


def _who_is_referred_lines(referral: dict) -> list[str]:
    """Who is referred, by kind of image, beside the agreement rule."""
    lines: list[str] = []
    lines += [
        "",
        "Who is referred, by kind of image: the share of all images referred, the share of the "
        "wrong answers referred (higher is better), and the accuracy on the images accepted; "
        "beside them the agreement rule (refer under 50 % member agreement or confidence).",
        "",
        "| images | n | accuracy | referred | wrong answers referred | accuracy on accepted "
        "| referred by OOD | agreement rule: referred | agreement rule: wrong referred |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group in referral["groups"]:
        values = referral["referral"][group]
        lines.append(
            f"| {group} | {values['n_images']} | {values['accuracy']:.4f} | "
            f"{values['referred']:.1%} | {_share(values['wrong_referred'], values['n_wrong'])} | "
            f"{_maybe(values['accepted_accuracy'])} | {_percent(values['ood_referred'])} | "
            f"{values['agreement_referred']:.1%} | "
            f"{_share(values['agreement_wrong_referred'], values['n_wrong'])} |"
        )
    return lines


def _trade_off_lines(referral: dict) -> list[str]:
    """Accuracy on accepted images against the referral rate, as alpha varies."""
    lines: list[str] = []
    alpha = referral["alpha"]
    names = [name for name in referral["image_sets"] if name in referral["coverage"]]
    lines += [
        "",
        "Accuracy on the accepted images against the referral rate, as alpha varies (an alpha "
        "above the error rate gives the least typical images an empty set, which is referred: "
        "the referral is smallest near the error rate):",
        "",
        "| images | alpha | coverage | mean set size | referred | accuracy on accepted |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        for point in referral["trade_off"][name]:
            bold = "**" if point["alpha"] == alpha else ""
            lines.append(
                f"| {_IMAGE_SET_NAMES.get(name, name)} | {bold}{point['alpha']:g}{bold} | "
                f"{point['coverage']:.4f} | {point['mean_set_size']:.2f} | "
                f"{point['referred']:.1%} | {_maybe(point['accepted_accuracy'])} |"
            )
    return lines


def _share(value: float | None, n_wrong: int) -> str:
    return "- (none wrong)" if value is None else f"{value:.1%} of {n_wrong}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _maybe(value: float | None) -> str:
    return "- (none accepted)" if value is None else f"{value:.4f}"


def render_selective(selective: dict | None) -> list[str]:
    """The lab's question first: how many accepted answers are wrong, how many are referred.

    One row per calibrated accepted accuracy: the guaranteed accuracy (the lower
    ``1 − delta`` bound from the calibration images), and the realised share referred and
    accuracy on accepted images on each image set; then the default target per predicted class.
    """
    if not selective:
        return []
    image_sets = (
        list(next(iter(selective["targets"]))["image_sets"]) if selective["targets"] else []
    )
    lines = [
        "### Accept only what is right: the selective rule",
        "",
        f"`--refer selective` accepts an image when **{selective['combiner']}**'s "
        f"{selective['score']} reaches a threshold calibrated so that the accuracy on accepted "
        f"images is at least the target with probability {1 - selective['delta']:g} "
        "(exact binomial tests in a fixed sequence on the calibration half of blend, the order "
        "fixed on val; out-of-distribution images are never accepted)"
        + (", one threshold per predicted class" if selective["per_class"] else "")
        + ". *Guaranteed* is the lower bound the calibration images give; the other columns "
        "are what happened on this report's images.",
        "",
        "| target | guaranteed (calibration) | calibration accepted | "
        + " | ".join(f"{name}: referred | {name}: accuracy on accepted" for name in image_sets)
        + " |",
        "|---|---|---|" + "---|---|" * len(image_sets),
    ]
    for entry in selective["targets"]:
        guaranteed = [value for value in entry["guaranteed"] if value is not None]
        cells = [
            f"{entry['target']:g}",
            _maybe(min(guaranteed)) if guaranteed else "-",
            f"{entry['calibration_accepted']} of {entry['calibration_n']}",
        ]
        for name in image_sets:
            values = entry["image_sets"][name]
            cells += [_percent(values["referred"]), _maybe(values["accepted_accuracy"])]
        lines.append("| " + " | ".join(cells) + " |")
    first = selective["targets"][0] if selective["targets"] else None
    if first and "clean" in first["image_sets"]:
        lines += [
            "",
            f"Per predicted class at target {first['target']:g}, clean images:",
            "",
            "| predicted class | n | referred | accuracy on accepted |",
            "|---|---|---|---|",
        ]
        for row in first["image_sets"]["clean"]["per_class"]:
            lines.append(
                f"| {row['class']} | {row['n_predicted']} | {_percent(row['referred'])} | "
                f"{_maybe(row['accepted_accuracy'])} |"
            )
    return lines + [""]
