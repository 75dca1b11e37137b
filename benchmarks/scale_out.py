"""Scale-out benchmark: train a pipeline's members plainly vs as Ray tasks on a local cluster.

    python benchmarks/scale_out.py --pipeline ci --per-class 12 --out results/scale-out.json

Each variant trains every member of the pipeline from scratch into its own fresh run directory
(the same split), on the built-in synthetic cells; wall time includes the split, TensorFlow's
start-up in each Ray worker and writing every artifact. Peak memory is the sum of the peak
resident sets of this process and of its (Ray) children.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def _peak_mb() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"driver_peak_mb": round(own, 1), "largest_child_peak_mb": round(children, 1)}


def main() -> None:
    """Run both variants and write the timings as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="ci")
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--num-cpus", type=float, default=1, help="CPUs per Ray member task")
    parser.add_argument("--cluster-cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/scale-out.json"))
    args = parser.parse_args()

    import ray

    from ensemble.data.sources import load_dataset
    from ensemble.data.synthetic import write_folder
    from ensemble.members.specs import load_pipeline
    from ensemble.recipes import resolve_pipeline
    from ensemble.run.ray_train import summary, train_members_on_ray
    from ensemble.run.train import train_pipeline_members

    pipeline = load_pipeline(resolve_pipeline(args.pipeline))
    results = {"pipeline": pipeline.name, "members": [m.name for m in pipeline.members]}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder = write_folder(scratch / "cells", per_class=args.per_class, size=48)
        dataset = load_dataset(folder)
        results["images"] = len(dataset.records)

        began = time.perf_counter()
        train_pipeline_members(pipeline, dataset, scratch / "plain")
        results["plain_seconds"] = round(time.perf_counter() - began, 1)

        began = time.perf_counter()
        ray.init(num_cpus=args.cluster_cpus, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter() - began
        trained = train_members_on_ray(pipeline, dataset, scratch / "ray", num_cpus=args.num_cpus)
        results["ray_seconds"] = round(time.perf_counter() - began, 1)
        results["ray_cluster_start_seconds"] = round(started, 1)
        results["ray_summary"] = summary(trained)
        results["ray_member_seconds"] = {n: r.seconds for n, r in trained.items()}
        ray.shutdown()
    results |= _peak_mb()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
