r"""Probe: a combiner that routes between clean experts and robust members by image statistics.

The robust members lose 2-3 clean points to the clean experts they were fine-tuned from, and the
clean experts collapse on shifted and zoomed images. A combiner that knew which kind of image it
is looking at could take the best of both. This probe fits three combiners on the blend split
*and* a seeded shifted and zoomed copy of it, over the log-probabilities of the given members,
and scores them on val (clean, shifted, zoomed; other seeds than blend's):

- ``logistic``: a multinomial logistic regression (as ``robust_combiner_probe.py``);
- ``xgboost``: gradient-boosted trees on the same inputs;
- ``xgboost + image statistics``: the same trees, also given 17 cheap statistics of each image
  (colour means and spreads, saturation and hue, sharpness, noise, JPEG blockiness, the share of
  dark, stained pixels — how large the cell appears — and border against centre), so that
  they can tell a clean image from a shifted or zoomed one and trust the right members.

    PYTHONPATH=. python benchmarks/routing_probe.py --run runs/pbc-cpu \
        --members mobilenetv2-64-clean mobilenetv2-64b-clean mobilenetv2-64 mobilenetv2-64b \
        --out results/routing-probe.json
"""

from __future__ import annotations

import json

import numpy as np
from sklearn.linear_model import LogisticRegression
from xgboost import XGBClassifier

from benchmarks.member_robustness import SOURCE_SIZE, copies
from benchmarks.robust_combiner_probe import (
    log_features,
    members_probabilities,
    open_members,
    probe_arguments,
)
from ensemble.core.fileio import atomic_write_json

STATISTICS = (
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation", "hue_cos", "hue_sin",
    "sharpness", "high_frequency", "noise", "blockiness", "dark_share", "stained_share",
    "border_mean", "border_minus_centre",
)  # fmt: skip


def image_statistics(images: np.ndarray) -> np.ndarray:
    """``(N, len(STATISTICS))`` cheap per-image statistics of ``(N, S, S, 3)`` uint8 images."""
    pixels = images.astype(np.float32)
    grey = pixels.mean(axis=3)
    means = pixels.mean(axis=(1, 2))
    spreads = pixels.std(axis=(1, 2))
    top, bottom = pixels.max(axis=3), pixels.min(axis=3)
    saturation = ((top - bottom) / np.maximum(top, 1.0)).mean(axis=(1, 2))
    red, green, blue = (pixels[..., channel] for channel in range(3))
    hue = np.arctan2(np.sqrt(3.0) * (green - blue), 2 * red - green - blue)
    hue_cos, hue_sin = np.cos(hue).mean(axis=(1, 2)), np.sin(hue).mean(axis=(1, 2))
    laplacian = (
        4 * grey[:, 1:-1, 1:-1]
        - grey[:, :-2, 1:-1]
        - grey[:, 2:, 1:-1]
        - grey[:, 1:-1, :-2]
        - grey[:, 1:-1, 2:]
    )
    sharpness = np.abs(laplacian).mean(axis=(1, 2))
    flat = laplacian.reshape(len(images), -1)
    noise = np.median(np.abs(flat - np.median(flat, axis=1, keepdims=True)), axis=1)
    horizontal = np.abs(np.diff(grey, axis=2))
    high_frequency = horizontal.mean(axis=(1, 2)) / (spreads.mean(axis=1) + 1e-3)
    at_blocks = horizontal[:, :, 7::8].mean(axis=(1, 2))
    blockiness = at_blocks / (horizontal.mean(axis=(1, 2)) + 1e-3)
    dark_share = (grey < 110).mean(axis=(1, 2))
    stained_share = ((top - bottom) > 60).mean(axis=(1, 2))  # strongly coloured: stained
    size = images.shape[1]
    border = np.concatenate(
        [grey[:, :4].reshape(len(images), -1), grey[:, -4:].reshape(len(images), -1)], axis=1
    ).mean(axis=1)
    quarter = size // 4
    centre = grey[:, quarter:-quarter, quarter:-quarter].mean(axis=(1, 2))
    columns = [
        *means.T, *spreads.T, saturation, hue_cos, hue_sin, sharpness, high_frequency, noise,
        blockiness, dark_share, stained_share, border, border - centre,
    ]  # fmt: skip
    return np.stack(columns, axis=1)


def outputs(run, models: dict, split: str, seed: int) -> dict[str, tuple]:
    """Per version (clean, shifted, zoomed): members' probabilities, image statistics, labels."""
    images, labels = run.images(split, SOURCE_SIZE)
    return {
        version: (members_probabilities(models, batch), image_statistics(batch), labels)
        for version, batch in copies(images, seed).items()
    }


def main() -> None:
    """Fit the three combiners on blend (+ copies); write their val accuracies beside the members'."""
    args = probe_arguments(__doc__.splitlines()[0])
    run, models = open_members(args)
    blend = outputs(run, models, "blend", seed=2)
    val = outputs(run, models, "val", seed=1)

    def inputs(per_member, statistics, with_statistics: bool) -> np.ndarray:
        features = log_features(per_member)
        return np.concatenate([features, statistics], axis=1) if with_statistics else features

    labels = np.concatenate([labels for _, _, labels in blend.values()])
    combiners = {}
    for name, with_statistics, make in (
        ("logistic", False, lambda: LogisticRegression(C=1.0, max_iter=2000)),
        ("xgboost", False, lambda: XGBClassifier(n_estimators=300, max_depth=4, n_jobs=2)),
        (
            "xgboost + image statistics",
            True,
            lambda: XGBClassifier(n_estimators=300, max_depth=4, n_jobs=2),
        ),
    ):
        features = np.concatenate(
            [inputs(p, s, with_statistics) for p, s, _ in blend.values()], axis=0
        )
        combiners[name] = (with_statistics, make().fit(features, labels))
    result = {}
    for version, (per_member, statistics, labels) in val.items():
        row = {
            name: float((p.argmax(1) == labels).mean())
            for name, p in zip(models, per_member, strict=True)
        }
        row["soft vote"] = float((sum(per_member).argmax(1) == labels).mean())
        for name, (with_statistics, model) in combiners.items():
            predicted = model.predict(inputs(per_member, statistics, with_statistics))
            row[name] = float((np.asarray(predicted) == labels).mean())
        result[version] = {key: round(value, 4) for key, value in row.items()}
    print(json.dumps(result, indent=1))
    record = {
        "split": "val",
        "fitted_on": "blend + its shifted and zoomed copies (seed 2)",
        "members": args.members,
        "statistics": list(STATISTICS),
        "accuracy": result,
    }
    atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
