"""Prediction throughput: ``ensemble predict`` versus the bare members' ``model.predict``.

Usage:
    python benchmarks/predict_speed.py --run runs/pbc-cpu --data ../shared/data/pbc96 --images 2000

Both sides run in one process on the same real images: (a) :func:`ensemble.serve.predict.predict_folder`
on a folder of JPEG files, with the given combiner (decoding, resizing, one forward pass per
member for probabilities and pooled features, temperature scaling, the combiner, the CSV rows);
(b) each member's ``model.predict`` on the same images already decoded in memory as float32.
Each side is timed on its second full pass; the first (cold) pass is reported too. Writes results/predict-speed.md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ensemble.core.artifacts import load_keras_model
from ensemble.core.fileio import atomic_write_text
from ensemble.data.sources import load_dataset
from ensemble.serve.ensemble import Ensemble
from ensemble.serve.predict import predict_folder


def main() -> None:
    """Time both sides and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/pbc-cpu"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pbc96"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--combiner", default="stack")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("results/predict-speed.md"))
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    chosen = np.random.default_rng(0).choice(len(dataset.records), args.images, replace=False)
    records = [dataset.records[i] for i in sorted(chosen)]
    began = time.perf_counter()
    ensemble = Ensemble.load(args.run, args.combiner)  # once, as `ensemble predict` does
    load_seconds = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        for record in records:
            target = folder / record.id
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record.path, target)
        # Same warm-up on both sides: one full pass first (TensorFlow and oneDNN get faster over
        # the first passes of a process); each side is timed on its second pass.
        began = time.perf_counter()
        predict_folder(folder, args.run, batch_size=args.batch_size, ensemble=ensemble)
        cold_seconds = time.perf_counter() - began
        began = time.perf_counter()
        result = predict_folder(folder, args.run, batch_size=args.batch_size, ensemble=ensemble)
        tool_seconds = time.perf_counter() - began
    assert result.n_predicted == args.images, "every image must be predicted"

    subset = dataset.subset(sorted(chosen))
    member_seconds, bare_cold = {}, {}
    for name in ensemble.members_:
        model = load_keras_model(ensemble.run.model_path(name))
        images, _, _ = subset.load_images(model.input_shape[1])
        x = images.astype("float32")
        began = time.perf_counter()
        model.predict(x, batch_size=args.batch_size, verbose=0)  # warm-up: traces every shape
        bare_cold[name] = time.perf_counter() - began
        began = time.perf_counter()
        model.predict(x, batch_size=args.batch_size, verbose=0)
        member_seconds[name] = time.perf_counter() - began
    bare_seconds = sum(member_seconds.values())
    ratio = bare_seconds / tool_seconds
    rows = "\n".join(
        f"| `{name}`.predict | {seconds:.1f} | {args.images / seconds:.0f} |"
        for name, seconds in member_seconds.items()
    )
    text = f"""# Prediction speed: `ensemble predict` versus the bare members

Reproduce: `python benchmarks/predict_speed.py --run {args.run} --data {args.data} --images {args.images} --combiner {args.combiner}`

{args.images} real JPEG images from `{args.data}`, run `{args.run}` ({len(ensemble.members_)} members:
{", ".join(ensemble.members_)}), combiner `{args.combiner}`, no TTA, batch {args.batch_size}, 2 CPU cores.

| path | seconds | images/s |
|---|---|---|
{rows}
| all members' bare `model.predict`, in memory | {bare_seconds:.1f} | {args.images / bare_seconds:.0f} |
| `ensemble predict` on the folder (decode, features, combiner, rows) | {tool_seconds:.1f} | {args.images / tool_seconds:.0f} |
| **ratio** (target ≥ 0.85) | | **{ratio:.3f}** |

First (cold) pass in this process: `ensemble predict` {cold_seconds:.1f} s, bare members
{sum(bare_cold.values()):.1f} s.
Loading the run (hashing and checking every file, temperatures, combiners) takes {load_seconds:.1f} s once
per `ensemble predict` call; the `.keras` members then load in safe mode on first use (the cold pass).
Neither is in the per-image figures above.
"""
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
