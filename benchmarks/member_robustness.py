r"""Accuracy of single members on one split of a run: clean, shifted copy, zoomed copy.

The quick check behind results/recipe-ablation.md: how much clean accuracy a training recipe
keeps and how much robustness it buys, member by member, before any combiner is fitted. The
shifted copy is :func:`ensemble.corrupt.shifts.shifted_copy` (one acquisition shift per image, seeded);
the zoomed copy zooms every image (:data:`ensemble.corrupt.shifts.ZOOM`). Both are made at 96 px, the
images' own size, and resized to each member's input size.

    python benchmarks/member_robustness.py --run runs/pbc-cpu --data ../shared/data/pbc96 \
        --split val --members mobilenetv2-64-clean mobilenetv2-64 --out results/robustness-val.json

With ``--medmnistc`` (the ``[eval]`` extra), a fourth copy: the report's MedMNIST-C copy
(:func:`ensemble.corrupt.medmnistc.suite_copy`: severity 3, one of the suite's kinds per image
in turn), a corruption family the project did not write and never trains on; the row then also
holds the accuracy per kind.

Each row is keyed ``LABEL:member/split`` (``--label``, default the run folder's name) and
records, beside the accuracies, the member's recipe in one line and its training minutes (alone
and with the stages it started from), so that results/recipe-ablation.md can be rendered from
the JSON alone after the run directory is gone. ``--describe-only`` adds those two to rows
measured before they were recorded, without measuring again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ensemble.core.artifacts import load_keras_model
from ensemble.core.fileio import atomic_write_json
from ensemble.corrupt.medmnistc import suite_copy
from ensemble.corrupt.shifts import ZOOM, shifted_copy
from ensemble.data.images import crop_and_resize
from ensemble.data.sources import load_dataset
from ensemble.members.outputs import member_outputs
from ensemble.run.directory import RunDir

SOURCE_SIZE = 96


def copies(images: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The clean, shifted and zoomed versions of ``images`` (all at their own size)."""
    shifted, _ = shifted_copy(images, seed)
    zoomed, _ = shifted_copy(images, seed, kinds=(ZOOM,))
    return {"clean": images, "shifted": shifted, "zoomed": zoomed}


def resized(images: np.ndarray, size: int) -> np.ndarray:
    """``images`` at ``size`` px (Lanczos), as every member's input is made."""
    if images.shape[1] == size:
        return images
    return np.stack([crop_and_resize(image, size) for image in images])


def minutes(run: RunDir, name: str) -> tuple[float, float]:
    """Training minutes of ``name`` alone, and including the stages it started from."""
    own = run.training_metrics(name)["train_seconds"] / 60
    spec = run.member_spec(name)
    start = spec.ovr.base_member if spec.kind == "ovr" else spec.init_from
    before = minutes(run, start)[1] if start and run.is_finished(start) else 0.0
    return own, own + before


def recipe(run: RunDir, name: str) -> str:
    """One line: size, start, epochs, rate and augmentation of a member."""
    spec = run.member_spec(name)
    if spec.kind == "ovr":
        return f"one-vs-rest heads on {spec.ovr.base_member}'s features, seed {spec.seed}"
    augmentation = spec.augmentation
    parts = [f"{spec.backbone} {spec.input_size} px"]
    parts.append(f"from {spec.init_from}" if spec.init_from else "from scratch")
    parts.append(f"{spec.schedule.epochs} ep at {spec.schedule.learning_rate:g}")
    one = " (one per image)" if augmentation.corruption_mode == "one" else ""
    wide = " of the wide family" if augmentation.corruption_family == "wide" else ""
    parts.append(f"corruptions {augmentation.corruption_probability:g}{one}{wide}")
    parts.append(f"zoom {augmentation.zoom_probability:g}")
    if spec.early_stopping.keep == "last":
        parts.append("last epoch")
    if spec.distill.teachers:
        views = ", teacher over 8 views" if spec.distill.teacher_tta else ""
        parts.append(
            f"taught by {'+'.join(spec.distill.teachers)} (weight {spec.distill.weight:g}{views})"
        )
    parts.append(f"seed {spec.seed}")
    return ", ".join(parts)


def describe(run: RunDir, name: str) -> dict:
    """What the ablation table shows of a member beside its accuracies."""
    own, total = minutes(run, name)
    return {"recipe": recipe(run, name), "minutes": round(own, 1), "minutes_total": round(total, 1)}


def main() -> None:
    """Score the named members and add their rows to the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--split", default="val")
    parser.add_argument("--members", nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=1, help="seed of the shifted/zoomed copies")
    parser.add_argument("--tta", action="store_true", help="average the 8 dihedral views")
    parser.add_argument("--out", type=Path, required=True, help="JSON file (updated, not replaced)")
    parser.add_argument("--label", default=None, help="row key prefix (default: the run's name)")
    parser.add_argument("--describe-only", action="store_true", help="add recipe and minutes")
    parser.add_argument(
        "--medmnistc", action="store_true", help="add the MedMNIST-C copy (the [eval] extra)"
    )
    args = parser.parse_args()

    directory = RunDir.open(args.run)
    label = args.label or directory.root.name
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.describe_only:
        for name in args.members:
            for key in results:
                if key.startswith(f"{label}:{name}/"):
                    results[key] |= describe(directory, name)
        atomic_write_json(args.out, results)
        return
    run = directory.with_data(load_dataset(directory.data_source(args.data)))
    images, labels = run.images(args.split, SOURCE_SIZE)
    versions = copies(images, args.seed)
    suite_kinds: list[str] = []
    if args.medmnistc:
        corrupted, suite_kinds = suite_copy({SOURCE_SIZE: images}, args.seed)
        versions["medmnistc"] = corrupted[SOURCE_SIZE]
    for name in args.members:
        model = load_keras_model(directory.model_path(name))
        size = model.input_shape[1]
        row = {"split": args.split, "tta": args.tta, "n_images": int(len(labels))}
        began = time.perf_counter()
        for version, batch in versions.items():
            probabilities, _ = member_outputs(model, resized(batch, size), tta=args.tta)
            right = probabilities.argmax(1) == labels
            row[version] = round(float(right.mean()), 4)
            if version == "medmnistc":
                applied = np.array(suite_kinds)
                row["medmnistc_kinds"] = {
                    kind: round(float(right[applied == kind].mean()), 4)
                    for kind in dict.fromkeys(suite_kinds)
                }
        row["seconds"] = round(time.perf_counter() - began, 1)
        row |= describe(directory, name)
        results[f"{label}:{name}/{args.split}{'/tta' if args.tta else ''}"] = row
        print(name, row, flush=True)
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
