"""Training determinism: the same member, data and seed trained twice, and how far apart they are.

Usage:
    python benchmarks/determinism.py --data ../shared/data/pbc96 --member members/cpu/mobilenetv2.toml

Trains the member three times on the same real images in separate processes: twice with its
own seed and once with another seed (the yardstick for "different"). Reports the per-epoch
validation accuracy and loss of each, the largest same-seed difference, whether the final
weights are bit-identical, and the prediction agreement on the validation images. Writes
results/determinism.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ensemble.core.fileio import atomic_write_text


def train_once(args, seed: int, out: Path) -> dict:
    """Train in a fresh process (no state shared between runs) and return its summary."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--data",
        str(args.data),
        "--member",
        str(args.member),
        "--images",
        str(args.images),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(seed),
        "--scratch",
        str(out),
    ]
    subprocess.run(command, check=True)
    return json.loads((out / "summary.json").read_text())


def worker(args) -> None:
    """One training run: writes history, validation predictions and a weights digest."""
    import hashlib
    from dataclasses import replace

    from ensemble.core.artifacts import load_keras_model
    from ensemble.data.sources import load_dataset
    from ensemble.members.specs import load_member_spec
    from ensemble.members.training import TrainingData, train_member

    spec = load_member_spec(args.member)
    spec = replace(spec, seed=args.seed, schedule=replace(spec.schedule, epochs=args.epochs))
    dataset = load_dataset(args.data)
    chosen = np.random.default_rng(0).choice(len(dataset.records), args.images + 1024, False)
    subset = dataset.subset(chosen)
    images, _, _ = subset.load_images(spec.input_size)
    labels = subset.labels
    data = TrainingData(images[:-1024], labels[:-1024], images[-1024:], labels[-1024:], 8)
    member_dir = args.scratch / "member"
    train_member(spec, data, member_dir, verbose=0)
    model = load_keras_model(member_dir / "model.keras")
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    predicted = model.predict(data.val_images.astype("float32"), verbose=0).argmax(1)
    history = json.loads((member_dir / "history.json").read_text())
    summary = {
        "history": [
            {key: row[key] for key in ("epoch", "loss", "val_accuracy", "val_macro_f1")}
            for row in history
        ],
        "weights_sha256": digest.hexdigest(),
        "val_predictions": predicted.tolist(),
    }
    (args.scratch / "summary.json").write_text(json.dumps(summary))


def main() -> None:
    """Run the three trainings and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pbc96"))
    parser.add_argument("--member", type=Path, default=Path("members/cpu/mobilenetv2.toml"))
    parser.add_argument("--images", type=int, default=3000, help="training images")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/determinism.md"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    with tempfile.TemporaryDirectory() as scratch:
        runs = {}
        for label, seed in (("A", args.seed), ("B", args.seed), ("C", args.seed + 1)):
            folder = Path(scratch) / label
            folder.mkdir()
            runs[label] = train_once(args, seed, folder)
    a, b, c = runs["A"], runs["B"], runs["C"]

    def largest_gap(first, second, key):
        return max(
            abs(x[key] - y[key]) for x, y in zip(first["history"], second["history"], strict=True)
        )

    def agreement(first, second):
        return float(np.mean(np.equal(first["val_predictions"], second["val_predictions"])))

    rows = "\n".join(
        f"| {ra['epoch']} | {ra['loss']:.4f} / {rb['loss']:.4f} / {rc['loss']:.4f} | "
        f"{ra['val_accuracy']:.4f} / {rb['val_accuracy']:.4f} / {rc['val_accuracy']:.4f} |"
        for ra, rb, rc in zip(a["history"], b["history"], c["history"], strict=True)
    )
    text = f"""# Training determinism

Reproduce: `python benchmarks/determinism.py --data {args.data} --member {args.member} --images {args.images} --epochs {args.epochs} --seed {args.seed}`

Member `{args.member}` trained three times in separate processes on the same {args.images} real
training images (1024 validation images), {args.epochs} epochs, 2 CPU cores: runs A and B with
seed {args.seed}, run C with seed {args.seed + 1}.

| epoch | training loss A / B / C | val accuracy A / B / C |
|---|---|---|
{rows}

| comparison | largest val-accuracy gap | largest loss gap | same val predictions | weights bit-identical |
|---|---|---|---|---|
| A vs B (same seed) | {largest_gap(a, b, "val_accuracy"):.4f} | {largest_gap(a, b, "loss"):.4f} | {agreement(a, b):.4f} | {a["weights_sha256"] == b["weights_sha256"]} |
| A vs C (other seed) | {largest_gap(a, c, "val_accuracy"):.4f} | {largest_gap(a, c, "loss"):.4f} | {agreement(a, c):.4f} | {a["weights_sha256"] == c["weights_sha256"]} |
"""
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
