"""Write a simulated lab's copy of one split of a run's data: image files and a path,label CSV.

    python benchmarks/simulated_labs.py --run runs/pbc-cpu --split test --lab violet-stain \
        --out labs/violet-stain

The copy is what ``ensemble predict``, ``report --data`` and ``adapt --labelled`` read: one PNG
per image under ``OUT/<class>/``, and ``OUT/labels.csv``. The labs are those of
:mod:`ensemble.corrupt.labs`, never used in training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from ensemble.corrupt.labs import LABS, lab_copy
from ensemble.data.sources import load_dataset
from ensemble.run.directory import RunDir


def main() -> None:
    """Write the lab's copy of the split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--lab", choices=sorted(LABS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=96, help="image side written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    directory = RunDir.open(args.run)
    run = directory.with_data(load_dataset(directory.data_source()))
    images, labels = run.images(args.split, args.size)
    copy = lab_copy(images, LABS[args.lab], args.seed)
    lines = ["path,label"]
    for number, (image, label) in enumerate(zip(copy, labels, strict=True)):
        name = directory.classes[int(label)]
        relative = Path(name) / f"{args.lab}_{number:05d}.png"
        (args.out / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(args.out / relative)
        lines.append(f"{relative.as_posix()},{name}")
    (args.out / "labels.csv").write_text("\n".join(lines) + "\n")
    print(f"{len(copy)} images of {args.lab} → {args.out}")


if __name__ == "__main__":
    main()
