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
from ensemble.report_render import render_markdown, write_plots
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
    shift_kinds: list[str] | None = None,
    tta: bool = False,
    skipped: list[dict] | None = None,
) -> dict:
    """Compute every metric, write ``report.md``, ``metrics.json`` and the PNGs into ``out``.

    Args:
        run_root: run with fitted combiners.
        outputs: member name → ``{"probabilities", "features"}`` (and optionally
            ``"images_per_second"``) on the images.
        labels: true class index of each image.
        classes: class names.
        out: output folder.
        title: first heading of ``report.md``.
        shifted: member outputs on the shifted copy of the same images, if any.
        shift_kinds: the shift applied to each image of the shifted copy.
        tta: whether the outputs were averaged over the 8 dihedral views (shown in the report).
        skipped: images left out because they could not be decoded (``{"id", "reason"}``).
    """
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
            **summary_metrics(labels, predicted, n_classes, present_only=True),
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
    shifted_models, shifted_by_kind = {}, {}
    if shifted is not None:
        shifted_probabilities = combine_outputs(run_root, shifted)
        kinds = np.array(shift_kinds if shift_kinds is not None else ["shifted"] * len(labels))
        for model, probs in shifted_probabilities.items():
            predicted = probs.argmax(1)
            shifted_models[model] = summary_metrics(labels, predicted, n_classes, present_only=True)
            shifted_by_kind[model] = {
                str(kind): float((predicted[kinds == kind] == labels[kinds == kind]).mean())
                for kind in dict.fromkeys(kinds)
            }
    timed = shifted if shifted is not None else outputs
    speeds = {
        name: round(float(timed[name]["images_per_second"]), 1)
        for name in names
        if "images_per_second" in timed[name]
    }
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
        "shifted_by_kind": shifted_by_kind,
        "tta": tta,
        "prediction_images_per_second": speeds,
        "skipped": list(skipped or []),
    }
    atomic_write_json(out / "metrics.json", metrics)
    write_plots(models, classes, out)
    atomic_write_text(out / "report.md", render_markdown(metrics, run_root))
    return metrics


def _confusion(labels, predicted, n_classes) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def report_on_split(
    run,
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
    """
    from ensemble.features import cached_member_outputs

    names = load_selection(run.root)["members"]
    sizes = {name: _member_size(run.root, name) for name in names}
    images = {}
    if tta or shifted:  # cached outputs need no pixels; TTA and the shifted copy do
        images = {size: run.images(split_name, size)[0] for size in set(sizes.values())}
    if tta:
        outputs = outputs_for_images(run.root, names, images, tta=True)
    else:
        outputs = {name: cached_member_outputs(run, name, split_name) for name in names}
    labels = run.labels(split_name)
    title = f"Run `{Path(run.root).name}`: members and combiners on the {split_name} split"
    return _report_with_shift(
        run.root,
        names,
        images,
        outputs,
        labels,
        run.manifest["classes"],
        out,
        title,
        shifted=shifted,
        shift_seed=shift_seed,
        tta=tta,
    )


def report_on_dataset(
    run_root: Path,
    dataset,
    out: Path,
    *,
    shifted: bool = False,
    shift_seed: int = 0,
    tta: bool = False,
) -> dict:
    """Report every member and combiner on every image of a separate labelled set.

    The set's class names must be classes of the run (it may have fewer). Images that cannot
    be decoded are left out and listed in the report.

    Raises:
        DataError: a class of the set is not a class of the run, or no image can be decoded.
    """
    from ensemble.errors import DataError
    from ensemble.run import read_manifest

    run_classes = read_manifest(run_root)["classes"]
    unknown = [name for name in dataset.classes if name not in run_classes]
    if unknown:
        raise DataError(
            f"classes {unknown} of {dataset.root} are not classes of the run "
            f"(run classes: {run_classes}). Rename or leave out those folders."
        )
    names = load_selection(run_root)["members"]
    sizes = {name: _member_size(run_root, name) for name in names}
    images, failures = {}, []
    for size in sorted(set(sizes.values())):
        images[size], _, failures = dataset.load_images(size, description=f"decoding {size}px")
    failed = {failure.id for failure in failures}
    keep = np.array([record.id not in failed for record in dataset.records])
    if not keep.any():
        raise DataError(f"none of the {len(keep)} images of {dataset.root} could be decoded")
    images = {size: batch[keep] for size, batch in images.items()}
    to_run = np.array([run_classes.index(name) for name in dataset.classes])
    labels = to_run[dataset.labels[keep]]
    outputs = outputs_for_images(run_root, names, images, tta=tta)
    title = f"Run `{Path(run_root).name}`: members and combiners on {dataset.root}"
    metrics = _report_with_shift(
        run_root,
        names,
        images,
        outputs,
        labels,
        run_classes,
        out,
        title,
        shifted=shifted,
        shift_seed=shift_seed,
        tta=tta,
        skipped=[{"id": f.id, "reason": f.reason} for f in failures],
    )
    return metrics


def _report_with_shift(
    run_root,
    names,
    images,
    outputs,
    labels,
    classes,
    out,
    title,
    *,
    shifted,
    shift_seed,
    tta,
    skipped=(),
) -> dict:
    shifted_outputs = shift_kinds = None
    if shifted:
        shifted_batches, shift_kinds = shifted_images(images, shift_seed)
        shifted_outputs = outputs_for_images(run_root, names, shifted_batches, tta=tta)
    return build_report(
        run_root,
        outputs,
        labels,
        classes,
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
    run_root: Path, members: list[str], images: dict[int, np.ndarray], *, tta: bool = False
) -> dict[str, dict]:
    """Each member's probabilities and pooled features on images given per input size.

    Returns:
        member name → ``{"probabilities", "features", "images_per_second"}``; the speed is
        that of this forward pass on this machine (with ``tta``, counting each image once).
    """
    import time

    from ensemble.artifacts import load_keras_model
    from ensemble.features import member_outputs

    result = {}
    for name in members:
        model = load_keras_model(Path(run_root) / "members" / name / "model.keras")
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


def _member_size(run_root: Path, name: str) -> int:
    spec = json.loads((Path(run_root) / "members" / name / "spec.json").read_text())
    if spec["kind"] == "ovr":
        return _member_size(run_root, spec["ovr"]["base_member"])
    return int(spec["input_size"])
