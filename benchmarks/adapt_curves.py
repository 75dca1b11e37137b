"""Adaptation to simulated labs: before, after the unsupervised options, after ``adapt``.

    python benchmarks/simulated_labs.py --run runs/pbc-cpu --split val --lab LAB \
        --out labs/LAB-val --seed 1          # the lab's reviewable (and unlabelled) cells
    python benchmarks/simulated_labs.py --run runs/pbc-cpu --split test --lab LAB \
        --out labs/LAB-test --seed 2         # the lab's cells scored here, never seen
    python benchmarks/adapt_curves.py --run runs/pbc-cpu --labs labs --work adapt-runs \
        --out results/adapt.json --markdown results/adapt.md

For each lab of :mod:`ensemble.corrupt.labs` (its copies of the run's val and test splits
written beforehand), on the lab's test copy with the run's fitted TTA setting and default
referral rule:

- ``base``: the base run as it is;
- ``colour``: the lab's images colour-normalised to the training images (Reinhard, statistics
  from the lab's val copy, unlabelled);
- ``batchnorm``: every member's batch-norm statistics re-estimated on the lab's val copy;
- ``colour+batchnorm``: both;
- ``adapt-N-sS``: ``ensemble adapt`` with N reviewed cells drawn from the lab's val copy (equal
  per class, as the labelling review order spreads them), seed S; the adapted run is also
  scored on the clean test split at ``--forgetting-at`` reviewed cells (does it forget the
  training lab?);
- ``colour+adapt-N-sS`` (for N in ``--colour-sizes``): the same cells, fine-tuned on after the
  lab's colour is mapped onto the training images' (``adapt --labelled --colour reinhard
  --unlabelled LAB-val``: the map's statistics from the lab's whole val copy, unlabelled).

Each entry is saved as soon as it is measured; a rerun skips what ``--out`` already holds.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ensemble import Ensemble
from ensemble.core.artifacts import load_keras_model
from ensemble.core.fileio import atomic_write_json, atomic_write_text
from ensemble.data.colour import ColourNormaliser
from ensemble.data.sources import load_dataset
from ensemble.members.batchnorm import reestimate_batchnorm
from ensemble.members.outputs import member_outputs
from ensemble.report.adapted import decision_scores
from ensemble.serve.adapt import adapt


def read_lab(folder: Path, classes: list[str]) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """A lab copy's paths, images and label indices, in ``labels.csv`` order."""
    with (folder / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    paths = [folder / row["path"] for row in rows]
    images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])
    labels = np.array([classes.index(row["label"]) for row in rows])
    return paths, images, labels


def scores(ens: Ensemble, outputs, labels: np.ndarray) -> dict:
    """Accuracy, share referred, wrong answers referred, accuracy on accepted (default rule)."""
    return {"n": int(len(labels)), **decision_scores(ens, ens.decide(outputs, warn=False), labels)}


def outputs_with_batchnorm(ens: Ensemble, unlabelled: np.ndarray, images: np.ndarray, tta: bool):
    """Member outputs after each member's batch norm is re-estimated on ``unlabelled``."""
    by_size = ens.images_by_size(images)
    unlabelled_by_size = ens.images_by_size(unlabelled)
    probabilities, features = [], []
    for name in ens.members_:
        model = load_keras_model(ens.run.model_path(name))  # a fresh copy, not the cached one
        size = ens.input_size(name)
        reestimate_batchnorm(model, unlabelled_by_size[size])
        member_probabilities, member_features = member_outputs(model, by_size[size], tta=tta)
        probabilities.append(member_probabilities)
        features.append(member_features)
    return ens.calibrate(np.stack(probabilities), features)


def balanced_sample(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` positions, as equal per class as ``count`` allows, seeded."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = np.full(len(classes), count // len(classes))
    per_class[rng.permutation(len(classes))[: count % len(classes)]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == label), size=take, replace=False)
        for label, take in zip(classes, per_class, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def main() -> None:
    """Measure every entry not yet in ``--out``; rewrite the Markdown after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--labs", type=Path, required=True, help="folder of LAB-val, LAB-test")
    parser.add_argument("--lab", action="append", help="only these labs (default: all found)")
    parser.add_argument("--work", type=Path, required=True, help="where adapted runs go")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--colour-sizes",
        type=int,
        nargs="*",
        default=[100],
        help="reviewed cells at which adapt is also measured on colour-mapped cells",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument(
        "--forgetting-at", type=int, default=100, help="reviewed cells of the run also scored clean"
    )
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    ens = Ensemble.load(args.run)
    tta = ens.fitted_with_tta_
    run = ens.run.with_data(load_dataset(ens.run.data_source()))

    def save(key: str, value: dict) -> None:
        results[key] = value
        results["_command"] = " ".join(["python benchmarks/adapt_curves.py", *_argv()])
        atomic_write_json(args.out, results)
        if args.markdown:
            atomic_write_text(args.markdown, render(results))
        print(key, json.dumps(value), flush=True)

    if "clean/base" not in results:
        images, labels = run.images("test", 96)
        save("clean/base", scores(ens, ens.member_outputs(images, tta=tta), labels))
    clean_images, clean_labels = run.images("test", 96)
    labs = args.lab or sorted(p.name[: -len("-test")] for p in args.labs.glob("*-test"))
    lab_data = {}
    for lab in labs:
        _, val_images, val_labels = read_lab(args.labs / f"{lab}-val", ens.classes_)
        _, test_images, test_labels = read_lab(args.labs / f"{lab}-test", ens.classes_)
        lab_data[lab] = (val_images, val_labels, test_images, test_labels)
        if f"{lab}/base" not in results:
            save(f"{lab}/base", scores(ens, ens.member_outputs(test_images, tta=tta), test_labels))
        normaliser = None
        if f"{lab}/colour" not in results or f"{lab}/colour+batchnorm" not in results:
            reference, _ = run.images("train", 96)
            sample = np.random.default_rng(0).choice(len(reference), 2000, replace=False)
            normaliser = ColourNormaliser.fit(val_images, reference[sample])
        if f"{lab}/colour" not in results:
            outputs = ens.member_outputs(normaliser.transform(test_images), tta=tta)
            save(f"{lab}/colour", scores(ens, outputs, test_labels))
        if f"{lab}/batchnorm" not in results:
            outputs = outputs_with_batchnorm(ens, val_images, test_images, tta)
            save(f"{lab}/batchnorm", scores(ens, outputs, test_labels))
        if f"{lab}/colour+batchnorm" not in results:
            outputs = outputs_with_batchnorm(
                ens, normaliser.transform(val_images), normaliser.transform(test_images), tta
            )
            save(f"{lab}/colour+batchnorm", scores(ens, outputs, test_labels))
    for seed in args.seeds:
        for lab in labs:
            _, val_labels, test_images, test_labels = lab_data[lab]
            steps = [("adapt", count) for count in args.sizes]
            steps += [("colour+adapt", count) for count in args.colour_sizes]
            for step, count in steps:
                key = f"{lab}/{step}-{count}-s{seed}"
                if key in results:
                    continue
                paths, _, _ = read_lab(args.labs / f"{lab}-val", ens.classes_)
                chosen = balanced_sample(val_labels, count, seed)
                prefix = "colour-" if step == "colour+adapt" else ""
                out = args.work / f"{prefix}{lab}-{count}-s{seed}"
                out.mkdir(parents=True, exist_ok=True)
                reviewed = out.parent / f"{out.name}.csv"
                rows = [f"{paths[i].resolve()},{ens.classes_[val_labels[i]]}" for i in chosen]
                reviewed.write_text("path,label\n" + "\n".join(rows) + "\n")
                colour = {}
                if step == "colour+adapt":
                    colour = {"colour": "reinhard", "unlabelled": args.labs / f"{lab}-val"}
                started = time.perf_counter()
                adapt(args.run, reviewed, out, seed=seed, **colour)
                minutes = (time.perf_counter() - started) / 60
                adapted = Ensemble.load(out)
                # the adapted run maps the lab's colour itself (images_by_size), as predict does
                lab_outputs = adapted.member_outputs(test_images, tta=tta)
                entry = scores(adapted, lab_outputs, test_labels)
                entry["minutes"] = minutes
                entry["labelled"] = int(count)
                if step == "adapt" and seed == args.seeds[0] and count == args.forgetting_at:
                    clean = adapted.member_outputs(clean_images, tta=tta)
                    entry["clean"] = scores(adapted, clean, clean_labels)
                save(key, entry)


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


def render(results: dict) -> str:
    """The Markdown page of ``results``: one table per lab, then the learning curves."""
    clean = results.get("clean/base")
    lines = [
        "# Adapting to a simulated lab",
        "",
        "Written by `benchmarks/adapt_curves.py` (see its docstring for how the lab copies "
        "are made). Every figure is on the lab's copy of the run's **test** split, which no "
        "step saw; `adapt` draws its reviewed cells from the lab's copy of the val split.",
        "",
        f"Command: `{results.get('_command', '')}`",
        "",
    ]
    if clean:
        lines += [
            f"Base run on the clean test split: accuracy {clean['accuracy']:.4f}, "
            f"{clean['referred']:.1%} referred, accepted {_pct(clean['accepted_accuracy'])} "
            f"right ({clean['rule']} rule).",
            "",
        ]
    labs = sorted({key.split("/")[0] for key in results if "/" in key} - {"clean"})
    header = (
        "| step | accuracy | referred | wrong answers referred | accepted right | "
        "clean accuracy after | minutes |"
    )
    for lab in labs:
        lines += [f"## Lab `{lab}`", "", header, "|---|---|---|---|---|---|---|"]
        for key in sorted((k for k in results if k.startswith(f"{lab}/")), key=_step_order):
            entry = results[key]
            after = entry.get("clean", {}).get("accuracy")
            minutes = entry.get("minutes")
            lines.append(
                f"| {key.split('/', 1)[1]} | {entry['accuracy']:.4f} | {entry['referred']:.1%} "
                f"| {_pct(entry['wrong_referred'], 1)} | {_pct(entry['accepted_accuracy'])} | "
                f"{'' if after is None else f'{after:.4f}'} | "
                f"{'' if minutes is None else f'{minutes:.1f}'} |"
            )
        lines += ["", *_curve(results, lab, clean), ""]
    return "\n".join(lines) + "\n"


def _step_order(key: str) -> tuple:
    """Base, the unsupervised steps, then adapt by number of reviewed cells and seed."""
    step = key.split("/", 1)[1]
    unsupervised = ["base", "colour", "batchnorm", "colour+batchnorm"]
    if step in unsupervised:
        return (0, unsupervised.index(step), 0)
    kind, count, seed = step.split("-")
    return (1 + (kind != "adapt"), int(count), int(seed.removeprefix("s")))


def _curve(results: dict, lab: str, clean: dict | None) -> list[str]:
    """Mean (min–max over seeds) accuracy and referral per number of reviewed cells."""
    by_count: dict[int, list[dict]] = {}
    for key, entry in results.items():
        if key.startswith(f"{lab}/adapt-"):
            by_count.setdefault(int(entry["labelled"]), []).append(entry)
    if not by_count:
        return []
    lines = [
        "Learning curve (mean over seeds, min–max in brackets)"
        + (f"; clean accuracy of the base run {clean['accuracy']:.4f}:" if clean else ":"),
        "",
        "| reviewed cells | seeds | accuracy | referred |",
        "|---|---|---|---|",
    ]
    for count in sorted(by_count):
        accuracy = [entry["accuracy"] for entry in by_count[count]]
        referred = [entry["referred"] for entry in by_count[count]]
        lines.append(
            f"| {count} | {len(accuracy)} | {np.mean(accuracy):.4f} ({min(accuracy):.4f}–"
            f"{max(accuracy):.4f}) | {np.mean(referred):.1%} ({min(referred):.1%}–"
            f"{max(referred):.1%}) |"
        )
    return lines


def _pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}%}"


if __name__ == "__main__":
    main()
