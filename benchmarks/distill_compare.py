"""The distilled student against the ensemble that taught it: accuracy and images per second.

    ensemble distill --run runs/pbc-cpu --out runs/pbc-cpu-distilled
    python benchmarks/distill_compare.py --ensemble runs/pbc-cpu \
        --student runs/pbc-cpu-distilled --split test --out results/distill.json \
        --markdown results/distill.md

On the run's ``--split`` (the student shares the ensemble's split, so it never saw it) and on
the report's seeded shifted and zoomed copies of it (``--shift-seed``, the report's default),
each model is scored with and without 8-view test-time augmentation: accuracy, and McNemar's
exact test of the student against the ensemble's default combiner on the same images. Speed is
``Ensemble.predict`` on ``--speed-images`` decoded images held in memory (resizing, every
member's forward pass, combining), after one warm-up pass, best of ``--repeats``; run it alone
on the machine (another job on the cores changes the figure, not the ratio's meaning).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ensemble import Ensemble
from ensemble.core.fileio import atomic_write_json, atomic_write_text
from ensemble.corrupt.shifts import ZOOM, shifted_images
from ensemble.data.sources import load_dataset
from ensemble.report.metrics import mcnemar

#: The copies scored, in table order.
COPIES = ("clean", "shifted", "zoomed")


def copies(images: dict[int, np.ndarray], seed: int) -> dict[str, dict[int, np.ndarray]]:
    """The clean images and the report's seeded shifted and zoomed copies, per input size."""
    return {
        "clean": images,
        "shifted": shifted_images(images, seed)[0],
        "zoomed": shifted_images(images, seed, kinds=(ZOOM,))[0],
    }


def images_per_second(model: Ensemble, images: np.ndarray, tta: bool, repeats: int) -> float:
    """``model.predict`` throughput on in-memory images: one warm-up, then best of ``repeats``."""
    model.predict(images[:64], tta=tta)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(images, tta=tta)
        best = min(best, time.perf_counter() - started)
    return len(images) / best


def main() -> None:
    """Score both runs on every copy, with and without TTA, then time them; write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensemble", type=Path, required=True, help="the teacher run")
    parser.add_argument("--student", type=Path, required=True, help="the run ensemble distill made")
    parser.add_argument("--split", default="test")
    parser.add_argument("--shift-seed", type=int, default=0)
    parser.add_argument("--speed-images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    teacher, student = Ensemble.load(args.ensemble), Ensemble.load(args.student)
    run = teacher.run.with_data(load_dataset(teacher.run.data_source()))
    sizes = {m.input_size(name) for m in (teacher, student) for name in m.members_}
    by_size = {}
    for size in sorted(sizes):
        by_size[size], labels = run.images(args.split, size)
    results: dict = {
        "_command": "python benchmarks/distill_compare.py " + " ".join(sys.argv[1:]),
        "ensemble": {"run": str(args.ensemble), "combiner": teacher.combiner_},
        "student": {"run": str(args.student), "members": list(student.members_)},
        "split": args.split,
        "n": int(len(labels)),
        "same_split": student.run.split_path.read_bytes() == teacher.run.split_path.read_bytes(),
        "accuracy": {},
    }
    for copy, images in copies(by_size, args.shift_seed).items():
        for tta in (False, True):
            predicted = {
                name: model.predict_proba(images, tta=tta).argmax(axis=1)
                for name, model in (("ensemble", teacher), ("student", student))
            }
            key = f"{copy}/{'tta' if tta else 'single'}"
            results["accuracy"][key] = {
                "ensemble": float((predicted["ensemble"] == labels).mean()),
                "student": float((predicted["student"] == labels).mean()),
                "mcnemar": mcnemar(labels, predicted["ensemble"], predicted["student"]),
            }
            print(key, json.dumps(results["accuracy"][key]), flush=True)
    largest = by_size[max(by_size)][: args.speed_images]
    results["speed"] = {"images": int(len(largest)), "cpus": os.cpu_count()}
    for tta in (False, True):
        for name, model in (("ensemble", teacher), ("student", student)):
            key = f"{name}/{'tta' if tta else 'single'}"
            results["speed"][key] = images_per_second(model, largest, tta, args.repeats)
            print(key, f"{results['speed'][key]:.1f} img/s", flush=True)
    atomic_write_json(args.out, results)
    if args.markdown:
        atomic_write_text(args.markdown, render(results))


def render(results: dict) -> str:
    """The Markdown page of ``results``."""
    lines = [
        "# The distilled student against its ensemble",
        "",
        f"Command: `{results['_command']}`",
        "",
        f"Teacher: run `{results['ensemble']['run']}`, its default combiner "
        f"`{results['ensemble']['combiner']}`. Student: run `{results['student']['run']}` "
        f"(`{', '.join(results['student']['members'])}`), made by `ensemble distill`. Scored "
        f"on the {results['n']} images of the `{results['split']}` split"
        + (
            ", which neither saw (the student's run shares the ensemble's split)"
            if results.get("same_split")
            else ""
        )
        + ", and on the report's seeded shifted and zoomed copies of them.",
        "",
        "| images | TTA | ensemble | student | student − ensemble | only ensemble right | "
        "only student right | McNemar p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for copy in COPIES:
        for mode in ("single", "tta"):
            row = results["accuracy"][f"{copy}/{mode}"]
            test = row["mcnemar"]
            lines.append(
                f"| {copy} | {'8 views' if mode == 'tta' else 'no'} | {row['ensemble']:.4f} | "
                f"{row['student']:.4f} | {100 * (row['student'] - row['ensemble']):+.2f} pt | "
                f"{test['first_only']} | {test['second_only']} | {test['p_value']:.3g} |"
            )
    speed = results["speed"]
    lines += [
        "",
        f"Speed: `Ensemble.predict` on {speed['images']} decoded images in memory, "
        f"{speed.get('cpus', 'all')} CPU cores, after a warm-up pass, best of the repeats.",
        "",
        "| TTA | ensemble img/s | student img/s | student ÷ ensemble |",
        "|---|---|---|---|",
    ]
    for mode in ("single", "tta"):
        ensemble, student = speed[f"ensemble/{mode}"], speed[f"student/{mode}"]
        lines.append(
            f"| {'8 views' if mode == 'tta' else 'no'} | {ensemble:.0f} | {student:.0f} | "
            f"{student / ensemble:.1f}× |"
        )
    lines.append(
        f"| student without TTA vs ensemble with it | {speed['ensemble/tta']:.0f} | "
        f"{speed['student/single']:.0f} | {speed['student/single'] / speed['ensemble/tta']:.1f}× |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
