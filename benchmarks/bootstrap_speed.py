"""How much faster the report's vectorised bootstrap is than the per-resample loop it replaced.

Usage:
    python benchmarks/bootstrap_speed.py --images 1439 --classes 8 --out results/bootstrap-speed.md

On seeded labels and predictions of the test split's size (about 97 % right), times
:func:`ensemble.report.metrics.bootstrap_intervals` (one ``bincount`` over all resamples) against the
reference loop of ``tests/test_metrics.py`` (one scikit-learn call per resample, as the report
did before), 1,000 resamples each, best of ``--repeats``; checks that both give the same
intervals, and writes a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the reference loop's tests/

from ensemble.core.fileio import atomic_write_text  # noqa: E402
from ensemble.report.metrics import bootstrap_intervals  # noqa: E402
from tests.test_metrics import _loop_bootstrap  # noqa: E402


def best_seconds(function, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``function()``, in seconds."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    """Time both implementations and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1439)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, args.images)
    wrong = rng.random(args.images) >= 0.97
    predicted = np.where(wrong, rng.integers(0, args.classes, args.images), labels)
    vectorised = bootstrap_intervals(labels, predicted, args.classes, args.resamples)
    loop = _loop_bootstrap(labels, predicted, args.classes, args.resamples)
    same = all(np.allclose(vectorised[name], loop[name], atol=1e-12) for name in loop)
    fast = best_seconds(
        lambda: bootstrap_intervals(labels, predicted, args.classes, args.resamples), args.repeats
    )
    slow = best_seconds(
        lambda: _loop_bootstrap(labels, predicted, args.classes, args.resamples), args.repeats
    )
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = [
        "# Bootstrap intervals: vectorised against the per-resample loop",
        "",
        f"{args.images} images, {args.classes} classes, {args.resamples} resamples, best of "
        f"{args.repeats} (load average at the end: {load} on {os.cpu_count()} CPUs). Made by",
        f"`python benchmarks/bootstrap_speed.py --images {args.images} --classes {args.classes} "
        f"--out {args.out}`.",
        "",
        "| implementation | seconds | speed-up |",
        "|---|---|---|",
        f"| loop: one scikit-learn call per resample (the report before) | {slow:.3f} | 1× |",
        f"| vectorised: one bincount for every resample "
        f"(`ensemble.report.metrics.bootstrap_intervals`) | {fast:.4f} | {slow / fast:.0f}× |",
        "",
        f"Same intervals (accuracy, balanced accuracy, macro-F1, to 1e-12): {same}.",
        "",
    ]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
