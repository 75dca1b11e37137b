"""Training input-pipeline efficiency: ``train-members``' path versus a bare ``model.fit``.

Usage:
    python benchmarks/train_speed.py --data ../shared/data/pbc96 --member members/cpu/mobilenetv2.toml

Both train the same member model on the same real images in one process, one after the other:
(a) through :func:`ensemble.members.training.train_member` (tf.data pipeline with the member's on-the-fly
augmentation, class weights, per-epoch validation and atomic checkpoints) and (b) with
``model.fit`` on in-memory float32 tensors (no augmentation, no checkpoints). The first epoch of
each (graph tracing) is left out; the rest are averaged. Writes results/train-speed.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ensemble.core.fileio import atomic_write_text
from ensemble.data.sources import load_dataset
from ensemble.members.specs import load_member_spec
from ensemble.members.training import (
    TrainingData,
    _compile_for_epoch,
    build_member_model,
    train_member,
)


def main() -> None:
    """Run both trainings and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pbc96"))
    parser.add_argument("--member", type=Path, default=Path("members/cpu/mobilenetv2.toml"))
    parser.add_argument("--images", type=int, default=4096, help="training images")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is not timed)")
    parser.add_argument("--out", type=Path, default=Path("results/train-speed.md"))
    args = parser.parse_args()

    import keras

    spec = load_member_spec(args.member)
    spec = replace(spec, schedule=replace(spec.schedule, epochs=args.epochs, warmup_epochs=0.0))
    dataset = load_dataset(args.data)
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(dataset.records), args.images + 512, replace=False)
    subset = dataset.subset(chosen)
    images, _, _ = subset.load_images(spec.input_size)
    labels = subset.labels
    data = TrainingData(images[:-512], labels[:-512], images[-512:], labels[-512:], 8)

    with tempfile.TemporaryDirectory() as scratch:
        train_member(spec, data, Path(scratch) / "member", verbose=0)
        history = json.loads((Path(scratch) / "member" / "history.json").read_text())
    steady = history[1:]
    pipeline_fit = np.mean([row["images_per_second"] for row in steady])
    per_epoch_wall = np.mean([r["seconds"] + r["eval_seconds"] + r["save_seconds"] for r in steady])
    pipeline_wall_rate = args.images / per_epoch_wall

    model = build_member_model(spec, 8)
    _compile_for_epoch(model, spec, 0, args.images)
    x = data.train_images.astype("float32")
    y = np.eye(8, dtype="float32")[data.train_labels]
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=spec.batch_size, epochs=args.epochs, verbose=0, callbacks=[Timer()])
    bare = args.images / np.mean(times[1:])
    ratio = pipeline_fit / bare
    text = f"""# Training speed: `train-members` versus a bare `model.fit`

Reproduce: `python benchmarks/train_speed.py --data {args.data} --member {args.member} --images {args.images} --epochs {args.epochs}`

Member `{spec.name}` ({spec.backbone}, {spec.input_size} px, batch {spec.batch_size}, augmentation:
dihedral={spec.augmentation.dihedral}, RandAugment magnitude {spec.augmentation.randaugment_magnitude}
× {spec.augmentation.randaugment_per_image}), {args.images} real training images, 2 CPU cores,
epochs 2..{args.epochs} averaged (epoch 1 traces the graph and is left out).

| path | images/s |
|---|---|
| bare `model.fit` on in-memory float32 tensors | {bare:.1f} |
| `train-members` training (tf.data, augmentation, class weights) | {pipeline_fit:.1f} |
| `train-members` wall clock incl. per-epoch validation and checkpoints | {pipeline_wall_rate:.1f} |
| **ratio training / bare** (target ≥ 0.85) | **{ratio:.3f}** |
"""
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
