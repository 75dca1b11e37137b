"""Every member and combiner on MedMNIST-C: a peer's corruption suite, every kind and severity.

    pip install 'blood-ensemble[eval]'    # medmnistc (and ImageMagick for its motion blur)
    python benchmarks/medmnistc_suite.py --run runs/pbc-cpu --split test --per-class 60 \
        --out results/medmnistc.json --markdown results/medmnistc.md

The suite (:mod:`ensemble.corrupt.medmnistc`) is applied to a seeded, class-stratified sample
of the split (``--per-class`` images of each class), each kind at each of its 5 severities;
the members' outputs are computed once per corrupted copy (without test-time augmentation:
the suite has 55 copies) and every combiner is scored on them. The project never trains on
these corruptions: the table shows how far robustness learned from its own family carries.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ensemble import Ensemble
from ensemble.core.fileio import atomic_write_json, atomic_write_text
from ensemble.corrupt.medmnistc import SEVERITIES, Suite
from ensemble.data.sources import load_dataset


def stratified(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` positions of each class, seeded, in ascending order."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == label), min(per_class, (labels == label).sum()), False)
        for label in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def accuracies(ens: Ensemble, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of every member and combiner on ``images`` (one forward pass per member)."""
    outputs = ens.member_outputs(images)
    return {
        name: float((probabilities.argmax(axis=1) == labels).mean())
        for name, probabilities in ens.combine_all(outputs).items()
    }


def main() -> None:
    """Measure every kind × severity not yet in ``--out``; rewrite the Markdown after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["_command"] = "python benchmarks/medmnistc_suite.py " + " ".join(sys.argv[1:])
    ens = Ensemble.load(args.run)
    run = ens.run.with_data(load_dataset(ens.run.data_source()))
    images, labels = run.images(args.split, 96)
    chosen = stratified(labels, args.per_class, args.seed)
    images, labels = images[chosen], labels[chosen]
    results["n_images"] = int(len(labels))
    results["default_combiner"] = ens.default_combiner_
    if "clean" not in results:
        results["clean"] = accuracies(ens, images, labels)
    with Suite() as suite:
        results["kinds"] = suite.kinds()
        for kind in results["kinds"]:
            for severity in SEVERITIES:
                key = f"{kind}/{severity}"
                if key in results:
                    continue
                copy = suite.corrupt(images, kind, severity, args.seed)
                results[key] = accuracies(ens, copy, labels)
                atomic_write_json(args.out, results)
                if args.markdown:
                    atomic_write_text(args.markdown, render(results))
                print(key, f"{results[key][ens.default_combiner_]:.4f}", flush=True)
    atomic_write_json(args.out, results)
    if args.markdown:
        atomic_write_text(args.markdown, render(results))


def render(results: dict) -> str:
    """The Markdown page: mean over kinds per severity, then per kind at each severity."""
    clean = results["clean"]
    models = list(clean)
    suite = results.get("kinds", [])
    default = results.get("default_combiner")
    lines = [
        "# MedMNIST-C: a corruption suite the project did not write",
        "",
        f"Command: `{results.get('_command', '')}`",
        "",
        f"{results.get('n_images')} images of the test split (stratified by class), no "
        "test-time augmentation; BloodMNIST settings of Di Salvo et al. (2024), applied at "
        f"224 px. Default combiner: **{default}**.",
        "",
        "## Mean accuracy over the kinds, per severity",
        "",
        "| model | clean | " + " | ".join(f"severity {s}" for s in SEVERITIES) + " | mean |",
        "|---|---|" + "---|" * (len(SEVERITIES) + 1),
    ]
    for model in models:
        means = [_mean(results, suite, severity, model) for severity in SEVERITIES]
        known = [value for value in means if value is not None]
        cells = ["—" if value is None else f"{value:.4f}" for value in means]
        overall = f"{np.mean(known):.4f}" if known else "—"
        lines.append(f"| {model} | {clean[model]:.4f} | " + " | ".join(cells) + f" | {overall} |")
    lines += [
        "",
        "## Accuracy per kind (mean over the 5 severities)",
        "",
        "| model | " + " | ".join(suite) + " |",
        "|---|" + "---|" * len(suite),
    ]
    for model in models:
        cells = []
        for kind in suite:
            values = [results[f"{kind}/{s}"][model] for s in SEVERITIES if f"{kind}/{s}" in results]
            cells.append(f"{np.mean(values):.4f}" if values else "—")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean(results: dict, suite: list[str], severity: int, model: str) -> float | None:
    values = [
        results[f"{kind}/{severity}"][model] for kind in suite if f"{kind}/{severity}" in results
    ]
    return float(np.mean(values)) if len(values) == len(suite) else None


if __name__ == "__main__":
    main()
