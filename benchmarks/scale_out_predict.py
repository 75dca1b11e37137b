"""Scale-out benchmark for prediction: ``predict`` plain vs on a local Ray cluster, 10k and 100k.

    python benchmarks/scale_out_predict.py --images 10000 100000 --work /tmp/scale-out-predict

Images: synthetic cells (:mod:`ensemble.data.synthetic`, 48 px PNG, every one drawn afresh), written
once under ``--work`` (default: a temporary folder) in subfolders of 1,000; the folder of N images is hard links to the first
N, so the variants and later invocations read the same files. The run: ``--run``, or the tiny
``ci`` pipeline trained and fitted once into ``--work``.

Each variant runs in a fresh process (this script with ``--child``), on the code path of
``ensemble predict`` — :func:`ensemble.serve.predict.prepare_prediction`, then
:func:`ensemble.serve.predict.iter_prediction_rows` (plain) or
:func:`ensemble.serve.ray_predict.iter_prediction_rows_on_ray` on a cluster it starts with
``ray.init(num_cpus=--cluster-cpus)`` (ray), streamed by
:func:`ensemble.serve.prediction_files.write_rows` into a CSV. Recorded per variant: the seconds from
the first file to the last row written (Ray: including the actors' start and model loading),
images/s, the whole process's wall time, and resident memory sampled every 0.2 s over the
process tree: the predict process (the driver), the largest Ray worker, and all processes
together. The two variants' CSVs are compared (same predictions, largest probability gap).
Writes ``--out`` (default ``results/scale-out-predict.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PER_FOLDER = 1000
SAMPLE_SECONDS = 0.2


def main() -> None:
    """Parse the arguments; run one variant (``--child``) or the whole benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--run", type=Path, help="a fitted run (default: train the ci pipeline)")
    parser.add_argument("--work", type=Path, help="keeps the images and run for later runs")
    parser.add_argument("--cluster-cpus", type=int, default=2)
    parser.add_argument("--num-cpus", type=float, default=1, help="CPUs per Ray actor")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--variants", nargs="+", default=["plain", "ray"])
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the images and the run under --work, measure nothing (e.g. while the "
        "machine is busy with other work; the measurements want it idle)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/scale-out-predict.json"))
    parser.add_argument("--child", choices=["plain", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if args.work is None:
        with tempfile.TemporaryDirectory() as scratch:
            _benchmark(args, Path(scratch))
    else:
        _benchmark(args, args.work)


def _benchmark(args: argparse.Namespace, work: Path) -> None:
    """Every variant on every folder size; writes ``args.out``."""
    work.mkdir(parents=True, exist_ok=True)
    run = args.run or _ci_run(work)
    results = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "run": str(run),
        "cluster_cpus": args.cluster_cpus,
        "cpus_per_actor": args.num_cpus,
        "batch_size": args.batch_size,
        "variants": [],
        "agreement": {},
    }
    began = time.perf_counter()
    _write_images(work / "all", max(args.images))
    results["image_generation_seconds"] = round(time.perf_counter() - began, 1)
    if args.prepare_only:
        for count in args.images:
            _linked_folder(work, count)
        return
    for count in args.images:
        folder = _linked_folder(work, count)
        outputs = {}
        for variant in args.variants:
            outputs[variant] = work / f"{variant}-{count}.csv"
            measured = _measure(args, variant, folder, run, outputs[variant])
            results["variants"].append({"images": count, "variant": variant, **measured})
            print(json.dumps(results["variants"][-1]), file=sys.stderr)
        if {"plain", "ray"} <= set(outputs):
            results["agreement"][str(count)] = _compare(outputs["plain"], outputs["ray"])
        for path in outputs.values():
            path.unlink(missing_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1), file=sys.stderr)


def _ci_run(work: Path) -> Path:
    """The ci pipeline trained and fitted on 96 synthetic images (once per ``work``)."""
    run = work / "ci-run"
    if (run / "combiners" / "selection.json").is_file():
        return run
    from ensemble.data.synthetic import write_folder

    data = write_folder(work / "ci-data", per_class=12, size=48)
    for command in (
        ["train-members", "--pipeline", "ci", "--data", str(data), "--run", str(run)],
        ["fit-stacker", "--run", str(run)],
    ):
        subprocess.run([sys.executable, "-m", "ensemble", *command], check=True)
    return run


def _write_images(root: Path, count: int) -> None:
    """``count`` synthetic cells as PNG, ``root/NNN/cell-NNNNNN.png``; those present are kept."""
    import numpy as np
    from PIL import Image

    from ensemble.data.synthetic import CLASSES, make_image

    for number in range(count):
        path = _image_path(root, number)
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(number)  # image n is the same whatever the count
        pixels = make_image(CLASSES[number % len(CLASSES)], rng, size=48)
        temporary = path.with_suffix(".tmp")
        Image.fromarray(pixels).save(temporary, format="PNG")
        temporary.replace(path)


def _image_path(root: Path, number: int) -> Path:
    return root / f"{number // PER_FOLDER:03d}" / f"cell-{number:06d}.png"


def _linked_folder(work: Path, count: int) -> Path:
    """A folder of the first ``count`` images, as hard links (copies across file systems)."""
    folder = work / f"n{count}"
    for number in range(count):
        source, target = _image_path(work / "all", number), _image_path(folder, number)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            target.write_bytes(source.read_bytes())
    return folder


def _measure(args, variant: str, folder: Path, run: Path, out: Path) -> dict:
    """Run one variant in a fresh process, sampling the memory of its process tree."""
    import psutil

    result_file = out.with_suffix(".result.json")
    command = [
        sys.executable, __file__, "--child", variant, "--folder", str(folder), "--run", str(run),
        "--csv", str(out), "--result", str(result_file), "--cluster-cpus", str(args.cluster_cpus),
        "--num-cpus", str(args.num_cpus), "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    environment = {**os.environ, "ENSEMBLE_PROGRESS": "0"}
    began = time.perf_counter()
    child = subprocess.Popen(command, env=environment)
    driver = psutil.Process(child.pid)
    peaks = {"driver": 0, "worker": 0, "all": 0}
    while child.poll() is None:
        try:
            rss = {"driver": driver.memory_info().rss, "worker": 0, "all": 0}
            rss["all"] = rss["driver"]
            for process in driver.children(recursive=True):
                try:
                    size = process.memory_info().rss
                    title = " ".join(process.cmdline())
                except psutil.Error:
                    continue
                rss["all"] += size
                if "ray::" in title or "default_worker" in title:
                    rss["worker"] = max(rss["worker"], size)
        except psutil.Error:
            break  # the process just ended
        peaks = {key: max(peaks[key], rss[key]) for key in peaks}
        time.sleep(SAMPLE_SECONDS)
    child.wait()
    wall = time.perf_counter() - began
    if child.returncode not in (0, 3):
        raise SystemExit(f"{variant} on {folder} failed (exit {child.returncode})")
    reported = json.loads(result_file.read_text())
    result_file.unlink()
    return {
        **reported,
        "images_per_second": round(reported["predicted"] / reported["seconds"], 1),
        "process_wall_seconds": round(wall, 1),
        "driver_peak_mb": round(peaks["driver"] / 2**20, 1),
        "largest_worker_peak_mb": round(peaks["worker"] / 2**20, 1) if variant == "ray" else None,
        "all_processes_peak_mb": round(peaks["all"] / 2**20, 1),
    }


def _child(args: argparse.Namespace) -> None:
    """One variant, in this process: the code path of ``ensemble predict [--ray]``."""
    from ensemble.core.console import quiet_console

    quiet_console()
    began = time.perf_counter()
    started = 0.0
    if args.child == "ray":
        import ray

        ray.init(num_cpus=args.cluster_cpus, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter() - began
    from ensemble.serve.predict import iter_prediction_rows, prepare_prediction
    from ensemble.serve.prediction_files import write_rows

    job = prepare_prediction(args.folder, args.run, batch_size=args.batch_size)
    loaded = time.perf_counter() - began
    if args.child == "ray":
        from ensemble.serve.ray_predict import iter_prediction_rows_on_ray

        rows = iter_prediction_rows_on_ray(job, num_cpus=args.num_cpus)
    else:
        rows = iter_prediction_rows(job)
    tally = write_rows(rows, args.csv, columns=job.columns(), header=job.header)
    args.result.write_text(
        json.dumps(
            {
                "predicted": tally.n_predicted,
                "skipped": tally.n_skipped,
                "seconds": round(tally.seconds, 2),
                "cluster_start_seconds": round(started, 1),
                "list_and_load_seconds": round(loaded - started, 1),
            }
        )
    )


def _compare(plain: Path, ray: Path) -> dict:
    """How far the Ray variant's CSV is from the plain one's: predictions, probabilities."""
    same = total = 0
    largest_gap = 0.0
    with plain.open(newline="") as mine, ray.open(newline="") as theirs:
        for left, right in zip(csv.DictReader(mine), csv.DictReader(theirs), strict=True):
            total += 1
            same += left["path"] == right["path"] and left["prediction"] == right["prediction"]
            for column, value in left.items():
                if column.startswith("proba_") and value:
                    largest_gap = max(largest_gap, abs(float(value) - float(right[column])))
    return {"rows": total, "same_path_and_prediction": same, "largest_probability_gap": largest_gap}


if __name__ == "__main__":
    main()
