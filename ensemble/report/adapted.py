"""The report of an adapted run: the run and its base side by side on the same images.

A run made by ``ensemble adapt`` records its base run and that run's member hashes. Its report
scores the base run's default combiner with its default referral on the same images, so a lab
sees what adapting bought: accuracy, share referred, wrong answers referred, accuracy on the
accepted images, and McNemar's test of the two. Report it on cells neither saw (the lab's own
labelled folder, ``report --data``); on the adapted run's ``blend`` split the adapted numbers
are optimistic, since its combiners and referral were fitted there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ensemble.combine.base import MemberOutputs
from ensemble.core.errors import EnsembleError
from ensemble.core.progress import stage
from ensemble.report.metrics import mcnemar
from ensemble.run.directory import MANIFEST
from ensemble.serve.ensemble import Decisions, Ensemble


def base_comparison(
    ensemble: Ensemble,
    outputs: MemberOutputs,
    images: dict[int, np.ndarray],
    labels: np.ndarray,
    tta: bool,
) -> dict | None:
    """The adapted run and its base on the same images; ``None`` for a run not adapted.

    Args:
        ensemble: the adapted run.
        outputs: its member outputs on ``images`` (calibrated).
        images: the images at every input size of both runs' members.
        labels: their true class indices.
        tta: average each member over the 8 dihedral views (as the report does).

    Returns:
        ``{"base_run", "base_changed", "rows": {"base", "adapted"}, "mcnemar"}`` (McNemar's
        "first" is the base), or ``{"base_run", "missing": True}`` when the base run is gone.
    """
    record = ensemble.run.manifest.get("adapted_from")
    if not record:
        return None
    base_root = Path(record["run"])
    if not (base_root / MANIFEST).is_file():
        return {"base_run": str(base_root), "missing": True}
    stage("report", f"the base run {base_root} on the same {len(labels)} images")
    try:
        base = Ensemble.load(base_root)
    except EnsembleError as error:
        return {"base_run": str(base_root), "unloadable": str(error)}
    base_decisions = base.decide(images, tta=tta, warn=False)
    adapted_decisions = ensemble.decide(outputs, warn=False)
    return {
        "base_run": str(base_root),
        "base_changed": base.member_hashes_ != record["member_sha256"],
        "labelled": record.get("labelled"),
        "unlabelled": record.get("unlabelled"),
        "colour": record.get("colour"),
        "batchnorm": record.get("batchnorm"),
        "rows": {
            "base": decision_scores(base, base_decisions, labels),
            "adapted": decision_scores(ensemble, adapted_decisions, labels),
        },
        "mcnemar": mcnemar(labels, base_decisions.predictions, adapted_decisions.predictions),
    }


def decision_scores(ensemble: Ensemble, decisions: Decisions, labels: np.ndarray) -> dict:
    """How a run's decisions did on labelled images.

    Returns:
        ``{"combiner", "rule", "accuracy", "referred", "wrong_referred",
        "accepted_accuracy"}``: shares of all images, of the wrong answers, and of the
        accepted images (``None`` where there are none).
    """
    correct = decisions.predictions == labels
    accepted = ~decisions.abstain
    return {
        "combiner": ensemble.combiner_,
        "rule": decisions.refer,
        "accuracy": float(correct.mean()),
        "referred": float(decisions.abstain.mean()),
        "wrong_referred": float(decisions.abstain[~correct].mean()) if (~correct).any() else None,
        "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
    }


HEAD = [
    "run",
    "combiner",
    "rule",
    "accuracy",
    "referred",
    "wrong answers referred",
    "accepted right",
]


def comparison_rows(comparison: dict) -> list[list[str]]:
    """The table's rows, base first, as text (the Markdown and the HTML page show them)."""
    rows = []
    for name in ("base", "adapted"):
        row = comparison["rows"][name]
        rows.append(
            [
                name,
                row["combiner"],
                row["rule"],
                f"{row['accuracy']:.4f}",
                f"{row['referred']:.1%}",
                _share(row["wrong_referred"]),
                _share(row["accepted_accuracy"], 2),
            ]
        )
    return rows


def comparison_notes(comparison: dict) -> list[str]:
    """What to read the table with: a missing or changed base, McNemar, where it is scored."""
    if comparison.get("missing"):
        return [f"The base run {comparison['base_run']} is no longer there."]
    if comparison.get("unloadable"):
        return [f"The base run could not be loaded: {comparison['unloadable']}"]
    notes = []
    if comparison["base_changed"]:
        notes.append(
            f"Warning: the members of the base run {comparison['base_run']} changed since "
            "this run was adapted from them; the base row is today's base."
        )
    test = comparison["mcnemar"]
    verdict = (
        f"McNemar, base vs adapted: {test['first_only']} images right only by the base, "
        f"{test['second_only']} only by the adapted run, p = {test['p_value']:.3g}."
    )
    if comparison.get("labelled") is not None:
        mapped = (
            f", after a colour map ({comparison['colour']}) that it applies to every image"
            if comparison.get("colour")
            else ""
        )
        how = (
            f" The adapted run learned from {comparison['labelled']} reviewed cells{mapped}; on "
            "its own blend split these figures flatter it (its combiners and referral were "
            "fitted there)"
            + (", and the base is shown the colour-mapped cells." if mapped else ".")
        )
    else:
        steps = [f"colour map ({comparison['colour']})"] * bool(comparison.get("colour"))
        steps += ["batch-norm statistics"] * bool(comparison.get("batchnorm"))
        how = (
            f" The adapted run was made from {comparison.get('unlabelled')} unlabelled images "
            f"({' and '.join(steps) or 'no change'}); its referral is the base run's."
        )
    return [*notes, verdict + how]


def render_section(metrics: dict) -> list[str]:
    """The Markdown section (empty for a run not adapted)."""
    comparison = metrics.get("adapted")
    if not comparison:
        return []
    lines = ["## Adapted run and its base on these images", ""]
    if not comparison.get("missing") and not comparison.get("unloadable"):
        lines += [
            "| " + " | ".join(HEAD) + " |",
            "|" + "---|" * len(HEAD),
            *("| " + " | ".join(row) + " |" for row in comparison_rows(comparison)),
            "",
        ]
    for note in comparison_notes(comparison):
        lines += [note, ""]
    return lines


def _share(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}%}"
