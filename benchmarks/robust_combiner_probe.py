r"""Probe: a combiner fitted on shifted copies of blend, over a clean expert and a robust member.

Fits a multinomial logistic regression on the log-probabilities of the given members over the
blend split *and* a seeded shifted and zoomed copy of it, then scores it on val (clean, shifted,
zoomed; other seeds) beside each member and their soft vote. A quick test of whether combiners
fitted on the distribution they will meet make the ensemble robust (results/recipe-ablation.md).

    PYTHONPATH=. python benchmarks/robust_combiner_probe.py --run runs/pbc-cpu \
        --members mobilenetv2-64-clean ft64-12ep-lr1e-3 --out results/robust-combiner-probe.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from benchmarks.member_robustness import SOURCE_SIZE, copies, resized
from ensemble.core.artifacts import load_keras_model
from ensemble.core.fileio import atomic_write_json
from ensemble.data.sources import load_dataset
from ensemble.members.outputs import member_outputs
from ensemble.run.directory import RunDir


def probabilities(run, models: dict, split: str, seed: int) -> dict[str, tuple[list, np.ndarray]]:
    """Each member's probabilities on the clean, shifted and zoomed versions of a split."""
    images, labels = run.images(split, SOURCE_SIZE)
    return {
        version: (members_probabilities(models, batch), labels)
        for version, batch in copies(images, seed).items()
    }


def members_probabilities(models: dict, batch: np.ndarray) -> list[np.ndarray]:
    """Each member's class probabilities on ``batch`` (resized to the member's input)."""
    return [
        member_outputs(model, resized(batch, model.input_shape[1]))[0] for model in models.values()
    ]


def log_features(per_member: list[np.ndarray]) -> np.ndarray:
    """Concatenated log-probabilities of the members."""
    return np.log(np.concatenate(per_member, axis=1) + 1e-6)


def probe_arguments(description: str) -> argparse.Namespace:
    """A probe's command line: ``--run``, ``--data``, ``--members``, ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--members", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def open_members(args: argparse.Namespace) -> tuple:
    """The run with its data, and the named members' models (in ``--members`` order)."""
    directory = RunDir.open(args.run)
    run = directory.with_data(load_dataset(directory.data_source(args.data)))
    models = {name: load_keras_model(directory.model_path(name)) for name in args.members}
    return run, models


def main() -> None:
    """Fit the probe on blend (+ copies) and write its val accuracies beside the members'."""
    args = probe_arguments(__doc__.splitlines()[0])
    run, models = open_members(args)
    blend = probabilities(run, models, "blend", seed=2)
    val = probabilities(run, models, "val", seed=1)
    features = np.concatenate([log_features(per_member) for per_member, _ in blend.values()])
    labels = np.concatenate([labels for _, labels in blend.values()])
    probe = LogisticRegression(C=1.0, max_iter=2000).fit(features, labels)
    result = {}
    for version, (per_member, labels) in val.items():
        row = {
            name: float((p.argmax(1) == labels).mean())
            for name, p in zip(models, per_member, strict=True)
        }
        row["soft vote"] = float((sum(per_member).argmax(1) == labels).mean())
        row["combiner fitted on blend + shifted + zoomed"] = float(
            (probe.predict(log_features(per_member)) == labels).mean()
        )
        result[version] = {key: round(value, 4) for key, value in row.items()}
    print(json.dumps(result, indent=1))
    atomic_write_json(args.out, {"split": "val", "members": args.members, "accuracy": result})


if __name__ == "__main__":
    main()
