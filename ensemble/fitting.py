"""``ensemble fit-stacker``: fit every combiner of a run on its ``blend`` split.

Steps, one function each: the members' probabilities and pooled features on ``val`` and
``blend`` (one forward pass, cached; with ``tta`` averaged over the 8 dihedral views, the same
outputs the combiners will later be applied to); one temperature per member fitted on ``val``;
every registered combiner (:func:`ensemble.combiners.registered_combiners`: the voting
combiners, greedy selection, the XGBoost stacker) fitted on ``blend``; the default combiner
chosen by cross-validated accuracy inside ``blend`` (an in-sample score would favour the
combiners with the most parameters). Everything is written under ``runs/NAME/combiners/`` as
JSON, XGBoost's own format and ``.npy``; the :class:`~ensemble.selection.Selection`
(``selection.json``) is written last and vouches for the rest with their SHA-256.
"""

from __future__ import annotations

import numpy as np

from ensemble.combiners import Blend, MemberOutputs, TemperatureScaling, registered_combiners
from ensemble.features import cached_member_outputs
from ensemble.fileio import atomic_write_json
from ensemble.images import file_sha256
from ensemble.run import Run, RunDir
from ensemble.selection import TEMPERATURES, Selection
from ensemble.stacker import blend_folds


def fit_combiners(run: Run, seed: int = 0, tta: bool = False) -> Selection:
    """Fit temperatures and every registered combiner on ``blend``; choose a default.

    Args:
        run: the run with its data (pixels are decoded only for outputs not cached yet).
        seed: seeds the blend cross-validation folds and the combiners that draw numbers.
        tta: fit on member outputs averaged over the 8 dihedral views; apply them with
            ``--tta`` too.

    Returns:
        The selection written to ``combiners/selection.json``.

    Raises:
        RunError: a member is not trained yet.
    """
    directory = run.directory
    names = directory.trained_members()
    hashes = directory.model_hashes(names)
    val = _member_outputs(run, names, "val", tta, hashes)
    blend = _member_outputs(run, names, "blend", tta, hashes)
    val_labels = val[names[0]]["labels"]
    labels = blend[names[0]]["labels"]

    scaler = TemperatureScaling().fit(_stack(val, names), val_labels)
    directory.combiners_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory.combiners_dir / TEMPERATURES, {"members": names, **scaler.state()})
    raw = _stack(blend, names)
    fitting_set = Blend(
        outputs=MemberOutputs(
            probabilities=raw,
            calibrated=scaler.transform(raw),
            features=tuple(blend[name]["features"] for name in names),
        ),
        labels=labels,
        ids=[str(i) for i in blend[names[0]]["ids"]],
        split_of=run.split.assignment,
        folds=blend_folds(labels, seed),
    )
    cv_accuracy, files = _fit_every_combiner(directory, fitting_set, names, hashes, seed)
    for name, member_probabilities in zip(names, fitting_set.outputs.calibrated, strict=True):
        cv_accuracy[name] = round(float((member_probabilities.argmax(1) == labels).mean()), 6)
    combiners = list(registered_combiners())
    selection = Selection(
        members=names,
        member_model_sha256=hashes,
        combiners=combiners,
        cv_accuracy_on_blend=cv_accuracy,
        default_combiner=choose_default(cv_accuracy, combiners),
        n_blend=len(labels),
        tta=tta,
        artifact_sha256={
            name: file_sha256(directory.combiners_dir / name) for name in sorted(files)
        },
    )
    selection.write(directory)
    return selection


def choose_default(cv_accuracy: dict[str, float], combiners: list[str]) -> str:
    """The highest cross-validated blend accuracy; ties go to a combiner, then the earlier one.

    Args:
        cv_accuracy: combiner or member name → cross-validated blend accuracy, in order.
        combiners: which of the names are combiners (the rest are members).
    """
    order = list(cv_accuracy)
    return min(order, key=lambda k: (-cv_accuracy[k], k not in combiners, order.index(k)))


def _member_outputs(
    run: Run, names: list[str], split_name: str, tta: bool, hashes: dict[str, str]
) -> dict[str, dict]:
    return {
        name: cached_member_outputs(run, name, split_name, tta=tta, model_sha256=hashes[name])
        for name in names
    }


def _stack(outputs: dict[str, dict], names: list[str]) -> np.ndarray:
    return np.stack([outputs[name]["probabilities"] for name in names])


def _fit_every_combiner(
    directory: RunDir, blend: Blend, names: list[str], hashes: dict[str, str], seed: int
) -> tuple[dict[str, float], list[str]]:
    """Fit and save each registered combiner; its cross-validated accuracy and files."""
    cv_accuracy: dict[str, float] = {}
    files = [TEMPERATURES]
    for name, cls in registered_combiners().items():
        combiner = cls.create(names, seed).fit_blend(blend)
        combiner.save(directory.combiners_dir, member_hashes=hashes, classes=directory.classes)
        cv_accuracy[name] = combiner.cross_validated_accuracy(blend)
        files += cls.files()
    return cv_accuracy, files
