"""``ensemble report``: every member and every combiner on the same held-out images.

For each model: accuracy (Wilson 95 % interval), balanced accuracy and macro-F1 (bootstrap 95 %
intervals), per-class precision / recall / F1, expected calibration error, a confusion matrix;
McNemar's test for hard voting vs stacking and for each combiner vs the best single member, on
the clean images and on the shifted and zoomed copies; the coverage–accuracy curve when images
with low member agreement are referred to a human; a summary table in the spirit of the
report's Table 1; the images the best combiner got wrong or would refer, with thumbnails.
Written as ``metrics.json`` (everything, including what the member table and the training
curves show) and ``gallery/*.jpg``; rendered from those alone: ``report.md`` and PNGs
(:mod:`ensemble.report.markdown`), ``report.html`` (:mod:`ensemble.report.html`) and
``leaderboard.csv`` (:mod:`ensemble.report.leaderboard`).

The steps, in order: what is scored (:func:`report_on_split`, :func:`report_on_dataset`), the
members' outputs on it (cached, or :func:`outputs_for_images`), the seeded shifted and zoomed
copies (:func:`ensemble.corrupt.shifts.shifted_images`), the scores (:func:`score_models`,
:func:`significance_tests`, :func:`score_shifted`), the members' details
(:func:`member_details`), the gallery (:func:`write_gallery`), and the files
(:func:`build_report`). Each long step prints a line on stderr
(:func:`~ensemble.core.progress.stage`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ensemble.combine.base import MemberOutputs
from ensemble.combine.temperature import cached_outputs
from ensemble.core.errors import DataError
from ensemble.core.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from ensemble.core.progress import stage
from ensemble.corrupt.shifts import SHIFTS, ZOOM, shifted_images
from ensemble.data.sources import Dataset
from ensemble.refer.rule import (
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_CONFIDENCE,
    agreement_referral,
    conformal_referral,
)
from ensemble.report.adapted import base_comparison
from ensemble.report.html import read_thumbnails, render_html
from ensemble.report.leaderboard import leaderboard_csv
from ensemble.report.markdown import render_markdown, write_plots
from ensemble.report.metrics import (
    INTERVAL_METHODS,
    calibration,
    confusion_matrix,
    coverage_accuracy,
    error_overlap,
    intervals,
    mcnemar,
    member_contributions,
    per_class_metrics,
    summary_metrics,
)
from ensemble.report.referral import referral_metrics
from ensemble.run.directory import Run, RunDir
from ensemble.serve.ensemble import Ensemble
from ensemble.serve.gallery import report_cards, thumbnail_jpeg

#: The comparison the report leads with: plain voting against the stacker.
HEADLINE = ("hard", "stack")
#: Where the gallery's thumbnails go, inside the report's folder.
GALLERY_DIR = "gallery"
#: The epoch fields of a member's history that the report keeps (for its training curves).
HISTORY_FIELDS = ("epoch", "phase", "loss", "accuracy", "val_accuracy", "val_macro_f1")

#: Reads one scored image at its native size, by its position among the scored images.
ReadImage = Callable[[int], np.ndarray]


def report_on_split(
    run: Run,
    split_name: str,
    out: Path,
    *,
    shifted: bool = False,
    shift_seed: int = 0,
    zoomed: bool = False,
    tta: bool = False,
    medmnistc: bool = False,
) -> dict:
    """Report every member and combiner on one split of the run.

    Args:
        run: an opened run with fitted combiners.
        split_name: ``"test"``, ``"blend"``, ``"val"`` or ``"train"``.
        out: output folder.
        shifted: also score a seeded shifted copy of the same images (the acquisition shifts).
        shift_seed: seed of the shifted and zoomed copies.
        zoomed: also score a seeded copy in which every image is zoomed.
        tta: average each member over the 8 dihedral views (every copy).
        medmnistc: also score a MedMNIST-C copy (:mod:`ensemble.corrupt.medmnistc`; needs the
            ``eval`` extra).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        RunError: the run has no fitted combiners, or they do not match its members.
    """
    from ensemble.members.outputs import cached_member_outputs

    ensemble = _load(run.directory, tta)
    images = {}
    adapted = bool(run.directory.manifest.get("adapted_from"))  # its base needs the pixels
    if tta or shifted or zoomed or medmnistc or adapted:  # cached outputs need no pixels
        sizes = {ensemble.input_size(name) for name in ensemble.members_}
        stage("report", f"decoding the {split_name} split at {_sizes(sizes)}")
        images = {size: run.images(split_name, size)[0] for size in sizes}
    if tta:
        outputs = outputs_for_images(ensemble, images, tta=True)
    else:
        stage("report", f"members' cached outputs on the {split_name} split")
        outputs = {
            name: cached_member_outputs(
                run, name, split_name, model_sha256=ensemble.member_hashes_[name]
            )
            for name in ensemble.members_
        }
    title = f"Members and combiners of run `{run.root}` on the {split_name} split"
    records = [run.dataset.records[i] for i in run.split.positions(run.dataset, split_name)]
    return _report_with_shift(
        ensemble,
        images,
        outputs,
        run.labels(split_name),
        out,
        title,
        shifted=shifted,
        shift_seed=shift_seed,
        zoomed=zoomed,
        tta=tta,
        ids=[record.id for record in records],
        read_image=lambda index: run.dataset.decode(records[index], None).pixels,
        medmnistc=medmnistc,
    )


def report_on_dataset(
    run_root: Path,
    dataset: Dataset,
    out: Path,
    *,
    shifted: bool = False,
    shift_seed: int = 0,
    zoomed: bool = False,
    tta: bool = False,
    medmnistc: bool = False,
) -> dict:
    """Report every member and combiner on every image of a separate labelled set.

    The set's class names must be classes of the run (it may have fewer). Images that cannot
    be decoded are left out and listed in the report. Options as :func:`report_on_split`.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        DataError: a class of the set is not a class of the run, or no image can be decoded.
        RunError: the run has no fitted combiners, or they do not match its members.
    """
    ensemble = _load(RunDir.open(run_root), tta)
    run_classes = ensemble.classes_
    unknown = [name for name in dataset.classes if name not in run_classes]
    if unknown:
        raise DataError(
            f"classes {unknown} of {dataset.root} are not classes of the run "
            f"(run classes: {run_classes}). Rename or leave out those folders."
        )
    images, failures = {}, []
    for size in sorted({ensemble.input_size(name) for name in ensemble.members_}):
        images[size], _, failures = dataset.load_images(size, description=f"decoding {size}px")
    failed = {failure.id for failure in failures}
    keep = np.array([record.id not in failed for record in dataset.records])
    if not keep.any():
        raise DataError(f"none of the {len(keep)} images of {dataset.root} could be decoded")
    images = {size: batch[keep] for size, batch in images.items()}
    to_run = np.array([run_classes.index(name) for name in dataset.classes])
    labels = to_run[dataset.labels[keep]]
    # images from outside the run: a run that maps a lab's colour maps them (copies too)
    outputs = outputs_for_images(ensemble, ensemble.images_by_size(images), tta=tta)
    title = f"Members and combiners of run `{run_root}` on {dataset.root}"
    records = [record for record, kept in zip(dataset.records, keep, strict=True) if kept]
    return _report_with_shift(
        ensemble,
        images,
        outputs,
        labels,
        out,
        title,
        shifted=shifted,
        shift_seed=shift_seed,
        zoomed=zoomed,
        tta=tta,
        skipped=[{"id": f.id, "reason": f.reason} for f in failures],
        ids=[record.id for record in records],
        read_image=lambda index: dataset.decode(records[index], None).pixels,
        prepare=ensemble.images_by_size,
        medmnistc=medmnistc,
    )


def _load(run: RunDir, tta: bool) -> Ensemble:
    ensemble = Ensemble.load(run)
    warning = ensemble.tta_warning(tta)
    if warning:
        print(warning, file=sys.stderr)
    return ensemble


def _report_with_shift(
    ensemble,
    images,
    outputs,
    labels,
    out,
    title,
    *,
    shifted,
    shift_seed,
    zoomed,
    tta,
    skipped=(),
    ids=None,
    read_image=None,
    prepare=None,
    medmnistc=False,
) -> dict:
    """Score the copies, set an adapted run's base beside it, then :func:`build_report`.

    Each copy is made from ``images`` as given and then ``prepare``-d as the clean images were
    (a run that maps a lab's colour maps the corrupted images, as predict would).
    """
    prepare = prepare or (lambda batches: batches)
    shifted_outputs = shift_kinds = zoomed_outputs = suite_outputs = suite_kinds = None
    if shifted:
        stage("report", f"shifted copy of {len(labels)} images ({', '.join(SHIFTS)})")
        shifted_batches, shift_kinds = shifted_images(images, shift_seed)
        shifted_outputs = outputs_for_images(
            ensemble, prepare(shifted_batches), tta=tta, copy="shifted"
        )
    if zoomed:
        stage("report", f"zoomed copy of {len(labels)} images")
        zoomed_batches, _ = shifted_images(images, shift_seed, kinds=(ZOOM,))
        zoomed_outputs = outputs_for_images(
            ensemble, prepare(zoomed_batches), tta=tta, copy="zoomed"
        )
    if medmnistc:
        from ensemble.corrupt.medmnistc import REPORT_SEVERITY, suite_copy

        stage("report", f"MedMNIST-C copy of {len(labels)} images (severity {REPORT_SEVERITY})")
        suite_batches, suite_kinds = suite_copy(images, shift_seed)
        suite_outputs = outputs_for_images(
            ensemble, prepare(suite_batches), tta=tta, copy="MedMNIST-C"
        )
    adapted = None
    if ensemble.run.manifest.get("adapted_from"):
        member_stack = _as_member_outputs(ensemble, outputs)
        adapted = base_comparison(ensemble, member_stack, images, labels, tta)  # unmapped
    return build_report(
        ensemble,
        outputs,
        labels,
        out,
        title,
        shifted=shifted_outputs,
        shift_kinds=shift_kinds,
        zoomed=zoomed_outputs,
        tta=tta,
        skipped=list(skipped),
        ids=ids,
        read_image=read_image,
        adapted=adapted,
        medmnistc=(suite_outputs, suite_kinds) if suite_outputs is not None else None,
    )


def outputs_for_images(
    ensemble: Ensemble,
    images: dict[int, np.ndarray],
    *,
    tta: bool = False,
    copy: str = "clean",
) -> dict[str, dict]:
    """Each member's probabilities and pooled features on images given per input size.

    Args:
        ensemble: the fitted ensemble.
        images: the same images at every member input size.
        tta: average over the 8 dihedral views.
        copy: which images these are, for the progress line (``clean``, ``shifted``…).

    Returns:
        member name → ``{"probabilities", "features", "images_per_second"}``; the speed is
        that of this forward pass on this machine (with ``tta``, counting each image once).
    """
    from ensemble.members.outputs import member_outputs

    result = {}
    for name in ensemble.members_:
        model = ensemble.model(name)
        batch = images[model.input_shape[1]]
        views = " × 8 views" if tta else ""
        stage("report", f"{name} on {len(batch)} {copy} images{views}")
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
    ensemble: Ensemble,
    outputs: dict[str, dict],
    labels: np.ndarray,
    out: Path,
    title: str,
    shifted: dict[str, dict] | None = None,
    shift_kinds: list[str] | None = None,
    tta: bool = False,
    skipped: list[dict] | None = None,
    zoomed: dict[str, dict] | None = None,
    ids: Sequence[str] | None = None,
    read_image: ReadImage | None = None,
    adapted: dict | None = None,
    medmnistc: tuple[dict[str, dict], list[str]] | None = None,
) -> dict:
    """Compute every metric and write the report into ``out``.

    Files: ``metrics.json``, ``gallery/*.jpg``, then rendered from those alone ``report.md``,
    the PNGs, ``report.html`` and ``leaderboard.csv``.

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
        zoomed: member outputs on the zoomed copy of the same images, if any.
        ids: each image's id, shown in the gallery (default: its position).
        read_image: reads an image at its native size by position, for the gallery's
            thumbnails (default: no thumbnails).
        adapted: an adapted run's comparison with its base on the same images
            (:func:`ensemble.report.adapted.base_comparison`).
        medmnistc: member outputs on the MedMNIST-C copy of the images and the kind applied
            to each (:func:`ensemble.corrupt.medmnistc.suite_copy`), if any.

    Returns:
        The metrics written to ``metrics.json``.

    Over 60 lines: its arguments are documented one by one; the body is the list of what
    ``metrics.json`` holds, each part computed by a helper.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, classes = ensemble.members_, ensemble.classes_
    stage(
        "report",
        f"scoring {len(names) + len(ensemble.combiners_)} models on {len(labels)} images",
    )
    member_stack = _as_member_outputs(ensemble, outputs)
    probabilities = ensemble.combine_all(member_stack)
    models = score_models(probabilities, labels, member_stack.votes, len(classes))
    best_member = max(names, key=lambda name: models[name]["accuracy"])
    best_combiner = max(ensemble.combiners_, key=lambda name: models[name]["accuracy"])
    combiners = list(ensemble.combiners_)
    copies = _copies(ensemble, shifted, zoomed, medmnistc[0] if medmnistc else None)
    shifted_models, shifted_by_kind = {}, {}
    if "shifted" in copies:
        shifted_models, shifted_by_kind = score_shifted(
            copies["shifted"][1], labels, shift_kinds, len(classes)
        )
    zoomed_models = {}
    if "zoomed" in copies:
        zoomed_models, _ = score_shifted(copies["zoomed"][1], labels, None, len(classes))
    suite_models, suite_by_kind = {}, {}
    if "medmnistc" in copies:
        suite_models, suite_by_kind = score_shifted(
            copies["medmnistc"][1], labels, medmnistc[1], len(classes)
        )
    timed = shifted if shifted is not None else outputs
    ids = [str(i) for i in range(len(labels))] if ids is None else list(ids)
    gallery = _gallery(
        ensemble, out, best_combiner, probabilities, member_stack, labels, ids, read_image
    )
    metrics = {
        "title": title,
        "n_images": int(len(labels)),
        "classes": classes,
        "members": names,
        "combiners": combiners,
        "member_details": member_details(ensemble.run, names),
        "cv_accuracy_on_blend": _cv_accuracy_on_blend(ensemble),
        "best_member": best_member,
        "best_combiner": best_combiner,
        "default_combiner": ensemble.default_combiner_,
        "interval_methods": INTERVAL_METHODS,
        "models": models,
        "mcnemar": significance_tests(probabilities, labels, combiners, best_member),
        "error_overlap": error_overlap(probabilities, labels, [*names, best_combiner]),
        "member_contributions": member_contributions(
            {"clean": member_stack.calibrated}
            | {copy: stack.calibrated for copy, (stack, _) in copies.items()},
            labels,
            names,
        ),
        "shifted": shifted_models,
        "shifted_by_kind": shifted_by_kind,
        "shift_kinds": list(next(iter(shifted_by_kind.values()), {})),
        "zoomed": zoomed_models,
        "medmnistc": suite_models,
        "medmnistc_by_kind": suite_by_kind,
        "medmnistc_kinds": list(next(iter(suite_by_kind.values()), {})),
        "tta": tta,
        "combiners_fitted_with_tta": ensemble.fitted_with_tta_,
        "combiners_fitted_on_shift_copies": ensemble.fitted_on_shift_copies_,
        "prediction_images_per_second": {
            name: round(float(timed[name]["images_per_second"]), 1)
            for name in names
            if "images_per_second" in timed[name]
        },
        "skipped": list(skipped or []),
        "gallery": gallery,
        "adapted": adapted,
    }
    for copy, (_, copy_probabilities) in copies.items():
        metrics |= _copy_significance(metrics, copy, copy_probabilities, labels, combiners)
    # Prediction sets and OOD referral of the default combiner (ensemble.report.referral).
    metrics["referral"] = referral_metrics(
        ensemble,
        member_stack,
        labels,
        shifted=copies["shifted"][0] if "shifted" in copies else None,
        shift_kinds=shift_kinds,
        zoomed=copies["zoomed"][0] if "zoomed" in copies else None,
    )
    atomic_write_json(out / "metrics.json", metrics)
    write_report_files(metrics, out)
    return metrics


def _copies(
    ensemble: Ensemble,
    shifted: dict[str, dict] | None,
    zoomed: dict[str, dict] | None,
    medmnistc: dict[str, dict] | None = None,
) -> dict[str, tuple[MemberOutputs, dict[str, np.ndarray]]]:
    """Copy name → (member outputs, every model's probabilities), for the copies given."""
    copies = {}
    for copy, copy_outputs in (("shifted", shifted), ("zoomed", zoomed), ("medmnistc", medmnistc)):
        if copy_outputs is not None:
            stack = _as_member_outputs(ensemble, copy_outputs)
            copies[copy] = (stack, ensemble.combine_all(stack))
    return copies


def _gallery(
    ensemble: Ensemble,
    out: Path,
    best_combiner: str,
    probabilities: dict[str, np.ndarray],
    member_stack: MemberOutputs,
    labels: np.ndarray,
    ids: list[str],
    read_image: ReadImage | None,
) -> dict:
    """The review gallery of the best combiner: thumbnails written, cards returned."""
    rule, referred = gallery_referral(
        ensemble, best_combiner, probabilities[best_combiner], member_stack
    )
    gallery = write_gallery(
        out,
        probabilities[best_combiner],
        labels,
        member_stack.votes,
        ensemble.classes_,
        ensemble.members_,
        ids,
        read_image,
        referred,
    )
    return gallery | {"rule": rule, "model": best_combiner}


def _copy_significance(
    metrics: dict,
    copy: str,
    probabilities: dict[str, np.ndarray],
    labels: np.ndarray,
    combiners: list[str],
) -> dict:
    """McNemar on a copy: the best combiner against the strongest member on *these* images.

    A member that is best on clean images may be the weakest on shifted ones.
    """
    best = max(metrics["members"], key=lambda name: metrics[copy][name]["accuracy"])
    return {
        f"{copy}_best_member": best,
        f"{copy}_mcnemar": significance_tests(probabilities, labels, combiners, best),
    }


def write_report_files(metrics: dict, out: Path) -> None:
    """Render ``report.md``, the PNGs, ``report.html`` and ``leaderboard.csv`` into ``out``.

    Everything comes from ``metrics`` (the content of ``metrics.json``) and the gallery's
    thumbnails under ``out``: a report can be rendered again without its run.
    """
    out = Path(out)
    stage("report", f"writing report.md, report.html, leaderboard.csv and plots to {out}")
    write_plots(metrics["models"], metrics["classes"], out)
    atomic_write_text(out / "report.md", render_markdown(metrics))
    atomic_write_text(out / "leaderboard.csv", leaderboard_csv(metrics))
    atomic_write_text(out / "report.html", render_html(metrics, read_thumbnails(metrics, out)))


def gallery_referral(
    ensemble: Ensemble, combiner: str, probabilities: np.ndarray, outputs: MemberOutputs
) -> tuple[str, np.ndarray]:
    """Which images ``predict`` would refer with ``combiner``, by the run's default rule.

    The selective rule (not confident enough for the calibrated accepted accuracy, or out of
    distribution) or the conformal rule (the set is not exactly the prediction, or the OOD
    score is over its threshold), whichever fit-stacker chose; the agreement rule at
    ``predict``'s default thresholds for a run not calibrated well enough.

    Returns:
        ``(rule, referred)``: the rule's name and a ``(N,)`` boolean mask.
    """
    rule = ensemble.default_refer()
    if rule in ("conformal", "selective"):
        flagged = None
        if ensemble.ood_ is not None:
            flagged = ensemble.ood_from_outputs(outputs) > ensemble.ood_threshold
        if rule == "selective":
            return rule, ~ensemble.selective_[combiner].accept(probabilities, None, flagged)
        sets = ensemble.sets_from_probabilities(probabilities, None, combiner)
        return rule, conformal_referral(probabilities, sets, flagged)
    return rule, agreement_referral(
        probabilities, outputs.votes, DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_CONFIDENCE
    )


def write_gallery(
    out: Path,
    probabilities: np.ndarray,
    labels: np.ndarray,
    votes: np.ndarray,
    classes: list[str],
    members: list[str],
    ids: Sequence[str],
    read_image: ReadImage | None,
    referred: np.ndarray | None = None,
) -> dict:
    """The cards of the images a model got wrong or would refer, and their thumbnails.

    ``referred`` flags the images the run's referral rule refers (:func:`gallery_referral`);
    ``None`` = the agreement rule at ``predict``'s default thresholds.

    Thumbnails are written as ``out/gallery/<position>.jpg`` (earlier ones removed first) when
    ``read_image`` is given; each card's ``image`` names its file.

    Returns:
        ``{"cards", "counts", "min_agreement", "min_confidence"}`` (see
        :func:`ensemble.serve.gallery.report_cards`).
    """
    cards, counts = report_cards(
        probabilities, labels, votes, classes, members, ids, referred=referred
    )
    folder = Path(out) / GALLERY_DIR
    if folder.is_dir():
        for old in folder.glob("*.jpg"):
            old.unlink()
    if read_image is not None and cards:
        stage("report", f"gallery: thumbnails of {len(cards)} wrong or referred images")
        folder.mkdir(parents=True, exist_ok=True)
        for card in cards:
            name = f"{GALLERY_DIR}/{card['index']:05d}.jpg"
            try:
                atomic_write_bytes(Path(out) / name, thumbnail_jpeg(read_image(card["index"])))
            except Exception as error:  # a file that vanished: the card stays, without a picture
                print(f"gallery: no thumbnail for {card['id']}: {error}", file=sys.stderr)
                continue
            card["image"] = name
    return {
        "cards": cards,
        "counts": counts,
        "min_agreement": DEFAULT_MIN_AGREEMENT,
        "min_confidence": DEFAULT_MIN_CONFIDENCE,
    }


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
            "ci95": intervals(labels, predicted, n_classes),
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
    """What the report's member table and training curves show, from each member's files.

    Stored in ``metrics.json`` so that rendering needs nothing but that file. ``history`` is
    the member's accuracy per epoch (CNN members); ``history_before``, that of the member it
    started from when ``init_from`` names a member of the run.
    """
    details = {}
    for name in names:
        spec = run.member_spec(name)
        init_from = getattr(spec, "init_from", "")
        details[name] = {
            "kind": spec.kind,
            "backbone": spec.backbone,
            "input_size": spec.input_size,
            "weights": spec.weights,
            "init_from": init_from,
            "base_member": spec.ovr.base_member if spec.kind == "ovr" else "",
            "augmentation": asdict(spec.augmentation),
            "train_seconds": run.training_metrics(name)["train_seconds"],
        }
        if spec.kind != "ovr":  # one-vs-rest heads train per class: no shared epochs
            details[name]["history"] = _epochs(run.member(name).history)
            if init_from:
                details[name]["history_before"] = _epochs(run.member(init_from).history)
    return details


def _epochs(path: Path) -> list[dict]:
    """The :data:`HISTORY_FIELDS` of each epoch in a ``history.json`` (empty if absent)."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [
        {key: row[key] for key in HISTORY_FIELDS if key in row}
        for row in rows
        if isinstance(row, dict) and "epoch" in row
    ]


def _cv_accuracy_on_blend(ensemble: Ensemble) -> dict[str, float]:
    """fit-stacker's cross-validated blend accuracy of every combiner and member."""
    from ensemble.combine.selection import Selection

    return dict(Selection.read(ensemble.run).cv_accuracy_on_blend)


def _as_member_outputs(ensemble: Ensemble, outputs: dict[str, dict]) -> MemberOutputs:
    return cached_outputs(ensemble.temperatures_, outputs, ensemble.members_)


def _sizes(sizes) -> str:
    """``{32}`` → ``"32 px"``; ``{32, 64}`` → ``"32 and 64 px"``."""
    ordered = [str(size) for size in sorted(sizes)]
    if len(ordered) == 1:
        return f"{ordered[0]} px"
    return f"{', '.join(ordered[:-1])} and {ordered[-1]} px"
