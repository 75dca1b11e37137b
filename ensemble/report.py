"""``ensemble report``: every member and every combiner on the same held-out images.

For each model: accuracy, balanced accuracy and macro-F1 with bootstrap 95 % intervals,
per-class precision / recall / F1, expected calibration error, a confusion matrix (counts and
row-normalised); McNemar's test for hard voting vs stacking and for each combiner vs the best
single member; the coverage–accuracy curve when images with low member agreement are referred
to a human; a summary table in the spirit of the report's Table 1. Written as ``metrics.json``
(everything, including what the member table shows) and, rendered from it alone by
:mod:`ensemble.report_render`, ``report.md`` and PNGs.

The steps, in order: what is scored (:func:`report_on_split`, :func:`report_on_dataset`), the
members' outputs on it (cached, or :func:`outputs_for_images`), the seeded shifted copy
(:func:`shifted_images`), the scores (:func:`score_models`, :func:`significance_tests`,
:func:`score_shifted`), the members' details (:func:`member_details`), and the files
(:func:`build_report`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ensemble.combiners import MemberOutputs
from ensemble.data import Dataset
from ensemble.errors import DataError
from ensemble.fileio import atomic_write_json, atomic_write_text
from ensemble.fitted import FittedEnsemble
from ensemble.metrics import (
    bootstrap_intervals,
    calibration,
    confusion_matrix,
    coverage_accuracy,
    mcnemar,
    per_class_metrics,
    summary_metrics,
)
from ensemble.referral import referral_metrics
from ensemble.report_render import render_markdown, write_plots
from ensemble.run import Run, RunDir

#: The comparison the report leads with: plain voting against the stacker.
HEADLINE = ("hard", "stack")


def report_on_split(
    run: Run,
    split_name: str,
    out: Path,
    *,
    shifted: bool = False,
    shift_seed: int = 0,
    tta: bool = False,
) -> dict:
    """Report every member and combiner on one split of the run.

    Args:
        run: an opened run with fitted combiners.
        split_name: ``"test"``, ``"blend"``, ``"val"`` or ``"train"``.
        out: output folder.
        shifted: also score a seeded shifted copy of the same images.
        shift_seed: seed of the shifted copy.
        tta: average each member over the 8 dihedral views (clean and shifted images).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        RunError: the run has no fitted combiners, or they do not match its members.
    """
    from ensemble.features import cached_member_outputs

    ensemble = _load(run.directory, tta)
    images = {}
    if tta or shifted:  # cached outputs need no pixels; TTA and the shifted copy do
        sizes = {ensemble.input_size(name) for name in ensemble.members}
        images = {size: run.images(split_name, size)[0] for size in sizes}
    if tta:
        outputs = outputs_for_images(ensemble, images, tta=True)
    else:
        outputs = {
            name: cached_member_outputs(
                run, name, split_name, model_sha256=ensemble.member_hashes[name]
            )
            for name in ensemble.members
        }
    title = f"Run `{Path(run.root).name}`: members and combiners on the {split_name} split"
    return _report_with_shift(
        ensemble,
        images,
        outputs,
        run.labels(split_name),
        out,
        title,
        shifted=shifted,
        shift_seed=shift_seed,
        tta=tta,
    )


def report_on_dataset(
    run_root: Path,
    dataset: Dataset,
    out: Path,
    *,
    shifted: bool = False,
    shift_seed: int = 0,
    tta: bool = False,
) -> dict:
    """Report every member and combiner on every image of a separate labelled set.

    The set's class names must be classes of the run (it may have fewer). Images that cannot
    be decoded are left out and listed in the report.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        DataError: a class of the set is not a class of the run, or no image can be decoded.
        RunError: the run has no fitted combiners, or they do not match its members.
    """
    ensemble = _load(RunDir.open(run_root), tta)
    run_classes = ensemble.classes
    unknown = [name for name in dataset.classes if name not in run_classes]
    if unknown:
        raise DataError(
            f"classes {unknown} of {dataset.root} are not classes of the run "
            f"(run classes: {run_classes}). Rename or leave out those folders."
        )
    images, failures = {}, []
    for size in sorted({ensemble.input_size(name) for name in ensemble.members}):
        images[size], _, failures = dataset.load_images(size, description=f"decoding {size}px")
    failed = {failure.id for failure in failures}
    keep = np.array([record.id not in failed for record in dataset.records])
    if not keep.any():
        raise DataError(f"none of the {len(keep)} images of {dataset.root} could be decoded")
    images = {size: batch[keep] for size, batch in images.items()}
    to_run = np.array([run_classes.index(name) for name in dataset.classes])
    labels = to_run[dataset.labels[keep]]
    outputs = outputs_for_images(ensemble, images, tta=tta)
    title = f"Run `{Path(run_root).name}`: members and combiners on {dataset.root}"
    return _report_with_shift(
        ensemble,
        images,
        outputs,
        labels,
        out,
        title,
        shifted=shifted,
        shift_seed=shift_seed,
        tta=tta,
        skipped=[{"id": f.id, "reason": f.reason} for f in failures],
    )


def _load(run: RunDir, tta: bool) -> FittedEnsemble:
    ensemble = FittedEnsemble.load(run)
    warning = ensemble.tta_warning(tta)
    if warning:
        print(warning, file=sys.stderr)
    return ensemble


def _report_with_shift(
    ensemble, images, outputs, labels, out, title, *, shifted, shift_seed, tta, skipped=()
) -> dict:
    shifted_outputs = shift_kinds = None
    if shifted:
        shifted_batches, shift_kinds = shifted_images(images, shift_seed)
        shifted_outputs = outputs_for_images(ensemble, shifted_batches, tta=tta)
    return build_report(
        ensemble,
        outputs,
        labels,
        out,
        title,
        shifted=shifted_outputs,
        shift_kinds=shift_kinds,
        tta=tta,
        skipped=list(skipped),
    )


def shifted_images(
    images: dict[int, np.ndarray], seed: int
) -> tuple[dict[int, np.ndarray], list[str]]:
    """The seeded shifted copy (:func:`ensemble.shifts.shifted_copy`) of images given per size.

    The copy is made at the largest size and resized, so every member sees the same shifted
    pictures. Returns the shifted images per size and the shift applied to each image.
    """
    from ensemble.images import crop_and_resize
    from ensemble.shifts import shifted_copy

    largest = max(images)
    shifted, kinds = shifted_copy(images[largest], seed)
    by_size = {
        size: shifted if size == largest else np.stack([crop_and_resize(i, size) for i in shifted])
        for size in images
    }
    return by_size, kinds


def outputs_for_images(
    ensemble: FittedEnsemble, images: dict[int, np.ndarray], *, tta: bool = False
) -> dict[str, dict]:
    """Each member's probabilities and pooled features on images given per input size.

    Returns:
        member name → ``{"probabilities", "features", "images_per_second"}``; the speed is
        that of this forward pass on this machine (with ``tta``, counting each image once).
    """
    from ensemble.features import member_outputs

    result = {}
    for name in ensemble.members:
        model = ensemble.model(name)
        batch = images[model.input_shape[1]]
        start = time.perf_counter()
        probabilities, features = member_outputs(model, batch, tta=tta)
        seconds = time.perf_counter() - start
        result[name] = {
            "probabilities": probabilities,
            "features": features,
            "images_per_second": len(batch) / seconds if seconds > 0 else float("nan"),
        }
    return result


def build_report(
    ensemble: FittedEnsemble,
    outputs: dict[str, dict],
    labels: np.ndarray,
    out: Path,
    title: str,
    shifted: dict[str, dict] | None = None,
    shift_kinds: list[str] | None = None,
    tta: bool = False,
    skipped: list[dict] | None = None,
) -> dict:
    """Compute every metric, write ``metrics.json``, the PNGs and ``report.md`` into ``out``.

    Args:
        ensemble: the run's fitted ensemble.
        outputs: member name → ``{"probabilities", "features"}`` (and optionally
            ``"images_per_second"``) on the images.
        labels: true class index of each image.
        out: output folder.
        title: first heading of ``report.md``.
        shifted: member outputs on the shifted copy of the same images, if any.
        shift_kinds: the shift applied to each image of the shifted copy.
        tta: whether the outputs were averaged over the 8 dihedral views (shown in the report).
        skipped: images left out because they could not be decoded (``{"id", "reason"}``).

    Returns:
        The metrics written to ``metrics.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, classes = ensemble.members, ensemble.classes
    member_stack = _as_member_outputs(ensemble, outputs)
    probabilities = ensemble.combine_all(member_stack)
    models = score_models(probabilities, labels, member_stack.votes, len(classes))
    best_member = max(names, key=lambda name: models[name]["accuracy"])
    best_combiner = max(ensemble.combiners, key=lambda name: models[name]["accuracy"])
    shifted_models, shifted_by_kind = {}, {}
    if shifted is not None:
        shifted_models, shifted_by_kind = score_shifted(
            ensemble.combine_all(_as_member_outputs(ensemble, shifted)),
            labels,
            shift_kinds,
            len(classes),
        )
    timed = shifted if shifted is not None else outputs
    metrics = {
        "title": title,
        "n_images": int(len(labels)),
        "classes": classes,
        "members": names,
        "combiners": list(ensemble.combiners),
        "member_details": member_details(ensemble.run, names),
        "best_member": best_member,
        "best_combiner": best_combiner,
        "models": models,
        "mcnemar": significance_tests(probabilities, labels, list(ensemble.combiners), best_member),
        "shifted": shifted_models,
        "shifted_by_kind": shifted_by_kind,
        "shift_kinds": list(next(iter(shifted_by_kind.values()), {})),
        "tta": tta,
        "combiners_fitted_with_tta": ensemble.fitted_with_tta,
        "prediction_images_per_second": {
            name: round(float(timed[name]["images_per_second"]), 1)
            for name in names
            if "images_per_second" in timed[name]
        },
        "skipped": list(skipped or []),
    }
    # Prediction sets and OOD referral of the default combiner (ensemble.referral).
    metrics["referral"] = referral_metrics(
        ensemble,
        member_stack,
        labels,
        shifted=_as_member_outputs(ensemble, shifted) if shifted is not None else None,
        shift_kinds=shift_kinds,
    )
    atomic_write_json(out / "metrics.json", metrics)
    write_plots(models, classes, out)
    atomic_write_text(out / "report.md", render_markdown(metrics))
    return metrics


def score_models(
    probabilities: dict[str, np.ndarray], labels: np.ndarray, votes: np.ndarray, n_classes: int
) -> dict[str, dict]:
    """Every model's scores on the same images.

    Args:
        probabilities: model name → class probabilities ``(N, K)``.
        labels: true class index of each image.
        votes: each member's predicted class ``(n_members, N)``, for the agreement.
        n_classes: number of classes of the run.

    Returns:
        model name → summary metrics, bootstrap intervals, per-class scores, calibration,
        coverage–accuracy points and the confusion matrix.
    """
    models = {}
    for model, probs in probabilities.items():
        predicted = probs.argmax(1)
        agreement = (votes == predicted).mean(axis=0)
        models[model] = {
            **summary_metrics(labels, predicted, n_classes, present_only=True),
            "ci95": bootstrap_intervals(labels, predicted, n_classes),
            "per_class": per_class_metrics(labels, predicted, n_classes),
            "calibration": calibration(labels, probs),
            "coverage_accuracy": coverage_accuracy(labels, predicted, agreement, probs.max(1)),
            "confusion": confusion_matrix(labels, predicted, n_classes).tolist(),
        }
    return models


def significance_tests(
    probabilities: dict[str, np.ndarray],
    labels: np.ndarray,
    combiners: list[str],
    best_member: str,
) -> dict[str, dict]:
    """McNemar's test of hard voting vs stacking, and of each combiner vs the best member."""
    first, second = HEADLINE
    tests = {}
    if first in probabilities and second in probabilities:
        tests[f"{first}_vs_{second}"] = mcnemar(
            labels, probabilities[first].argmax(1), probabilities[second].argmax(1)
        )
    for kind in combiners:
        tests[f"{kind}_vs_{best_member}"] = mcnemar(
            labels, probabilities[kind].argmax(1), probabilities[best_member].argmax(1)
        )
    return tests


def score_shifted(
    probabilities: dict[str, np.ndarray],
    labels: np.ndarray,
    shift_kinds: list[str] | None,
    n_classes: int,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every model's summary scores on the shifted copy, and its accuracy per kind of shift."""
    kinds = np.array(shift_kinds if shift_kinds is not None else ["shifted"] * len(labels))
    summaries, by_kind = {}, {}
    for model, probs in probabilities.items():
        predicted = probs.argmax(1)
        summaries[model] = summary_metrics(labels, predicted, n_classes, present_only=True)
        by_kind[model] = {
            str(kind): float((predicted[kinds == kind] == labels[kinds == kind]).mean())
            for kind in dict.fromkeys(kinds)
        }
    return summaries, by_kind


def member_details(run: RunDir, names: list[str]) -> dict[str, dict]:
    """What the report's member table shows, from each member's spec and training metrics.

    Stored in ``metrics.json`` so that rendering needs nothing but that file.
    """
    details = {}
    for name in names:
        spec = run.member_spec(name)
        details[name] = {
            "kind": spec.kind,
            "backbone": spec.backbone,
            "input_size": spec.input_size,
            "weights": spec.weights,
            "init_from": getattr(spec, "init_from", ""),
            "base_member": spec.ovr.base_member if spec.kind == "ovr" else "",
            "augmentation": asdict(spec.augmentation),
            "train_seconds": run.training_metrics(name)["train_seconds"],
        }
    return details


def _as_member_outputs(ensemble: FittedEnsemble, outputs: dict[str, dict]) -> MemberOutputs:
    names = ensemble.members
    return ensemble.calibrate(
        np.stack([outputs[name]["probabilities"] for name in names]),
        [outputs[name]["features"] for name in names],
    )
