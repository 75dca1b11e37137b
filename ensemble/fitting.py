"""``ensemble fit-stacker``: fit every combiner of a run on its ``blend`` split.

Steps: each member's probabilities and pooled features on ``val`` and ``blend`` (one forward
pass, cached); one temperature per member fitted on ``val``; the voting combiners, greedy
selection and the XGBoost stacker fitted on ``blend``; the default combiner chosen by
cross-validated accuracy inside ``blend`` (an in-sample score would favour the combiners with
the most parameters). Everything is written under ``runs/NAME/combiners/`` as JSON, XGBoost's
own format and ``.npy``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ensemble.combiners import (
    GreedySelection,
    HardVote,
    SoftVote,
    TemperatureScaling,
    WeightedSoftVote,
)
from ensemble.errors import RunError
from ensemble.features import cached_member_outputs
from ensemble.fileio import atomic_write_json, atomic_write_text
from ensemble.images import file_sha256
from ensemble.stacker import Stacker, blend_folds
from ensemble.training import is_finished

#: Files fit-stacker writes whose SHA-256 is recorded in selection.json and checked on load.
COMBINER_FILES = (
    "temperatures.json",
    "hard.json",
    "soft.json",
    "weighted.json",
    "greedy.json",
    "stacker.ubj",
    "stacker_pca.npy",
    "stacker.json",
)
VOTERS = {
    "hard": HardVote,
    "soft": SoftVote,
    "weighted": WeightedSoftVote,
    "greedy": GreedySelection,
}


def trained_members(run) -> list[str]:
    """Members of the run's pipeline, all finished.

    Raises:
        RunError: a member is not trained yet (the message names it and the command to run).
    """
    names = run.manifest["members"]
    missing = [name for name in names if not is_finished(run.member_dir(name))]
    if missing:
        raise RunError(
            f"members not trained yet in {run.root}: {missing}. Run `ensemble train-members` "
            "first (and let it finish)."
        )
    return names


def member_hashes(run_root: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of each member's ``model.keras`` in the run at ``run_root``."""
    return {name: file_sha256(Path(run_root) / "members" / name / "model.keras") for name in names}


def fit_combiners(run, seed: int = 0) -> dict:
    """Fit temperatures, voting combiners, greedy selection and the stacker; choose a default.

    Returns:
        The selection summary written to ``combiners/selection.json``.
    """
    names = trained_members(run)
    outputs = {
        split: {name: cached_member_outputs(run, name, split) for name in names}
        for split in ("val", "blend")
    }
    val_labels = outputs["val"][names[0]]["labels"]
    blend = outputs["blend"]
    labels = blend[names[0]]["labels"]
    ids = [str(i) for i in blend[names[0]]["ids"]]
    folder = Path(run.root) / "combiners"
    hashes = member_hashes(run.root, names)

    scaler = TemperatureScaling().fit(
        np.stack([outputs["val"][n]["probabilities"] for n in names]), val_labels
    )
    calibrated = scaler.transform(np.stack([blend[n]["probabilities"] for n in names]))
    atomic_write_json(
        folder / "temperatures.json",
        {"members": names, "temperatures": [round(float(t), 6) for t in scaler.temperatures_]},
    )
    folds = blend_folds(labels, seed)
    cv_accuracy = {}
    for kind, cls in VOTERS.items():
        combiner = cls().fit(calibrated, labels)
        atomic_write_text(folder / f"{kind}.json", combiner.to_json() + "\n")
        correct = 0
        for fit_rows, held_rows in folds:
            fold_model = cls().fit(calibrated[:, fit_rows], labels[fit_rows])
            correct += int(
                (fold_model.predict(calibrated[:, held_rows]) == labels[held_rows]).sum()
            )
        cv_accuracy[kind] = round(correct / len(labels), 6)
    for name, member_probabilities in zip(names, calibrated, strict=True):
        cv_accuracy[name] = round(float((member_probabilities.argmax(1) == labels).mean()), 6)

    stacker = Stacker(names, with_probabilities=True, seed=seed)
    stacker.fit(
        [blend[n]["features"] for n in names],
        [blend[n]["probabilities"] for n in names],
        labels,
        ids,
        run.split.assignment,
    )
    stacker.save(folder, hashes, run.manifest["classes"])
    cv_accuracy["stack"] = max(stacker.cv_scores_.values())
    default = max(cv_accuracy, key=lambda k: (cv_accuracy[k], k in VOTERS or k == "stack"))
    selection = {
        "members": names,
        "member_model_sha256": hashes,
        "cv_accuracy_on_blend": cv_accuracy,
        "default_combiner": default,
        "n_blend": len(labels),
        "artifact_sha256": {
            path.name: file_sha256(path)
            for path in sorted(folder.iterdir())
            if path.is_file() and path.name in COMBINER_FILES
        },
    }
    atomic_write_json(folder / "selection.json", selection)  # last: marks the combiners fitted
    return selection


def load_selection(run_root: Path) -> dict:
    """The fitted combiners' summary; refuses if members changed since fitting."""
    path = Path(run_root) / "combiners" / "selection.json"
    if not path.is_file():
        raise RunError(f"no fitted combiners in {run_root}. Run `ensemble fit-stacker` first.")
    selection = json.loads(path.read_text())
    current = member_hashes(run_root, selection["members"])
    if current != selection["member_model_sha256"]:
        changed = [n for n in current if current[n] != selection["member_model_sha256"].get(n)]
        raise RunError(
            f"members changed since the combiners were fitted: {changed}. "
            "Run `ensemble fit-stacker` again."
        )
    for name, digest in selection.get("artifact_sha256", {}).items():
        artifact = Path(run_root) / "combiners" / name
        if not artifact.is_file() or file_sha256(artifact) != digest:
            raise RunError(
                f"combiner file {artifact} is missing, changed or truncated since fit-stacker "
                "wrote it. Run `ensemble fit-stacker` again."
            )
    return selection
