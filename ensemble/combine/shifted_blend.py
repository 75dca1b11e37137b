"""Shifted copies of ``blend``: fit the combiners on the images they will meet, not only clean ones.

A combiner fitted on clean ``blend`` images learns how far to trust each member *on clean
images*. Where a lab's images differ (stain, focus, compression, magnification), the members
that were best on clean images may be the worst, and a combiner that never saw such images
cannot know it. ``fit-stacker --shift-copies K`` therefore fits the combiners on the fitting
half of ``blend`` *plus* ``K`` seeded shifted copies of it, each image given one acquisition
shift or a zoom (:data:`COPY_KINDS`, drawn from :mod:`ensemble.corrupt.shifts`, the report's shift
generator, with other seeds than the report's: :data:`SEED_BASE`).

The copies of an image stay in the cross-validation fold of the image itself
(:func:`with_copies`), so a combiner's cross-validated score never rests on a copy of an image
it was fitted on. The conformal calibration half of ``blend`` is left clean: the coverage
guarantee is stated for images like the calibration images, and the report measures coverage
on shifted copies apart.
"""

from __future__ import annotations

import numpy as np

from ensemble.combine.base import Blend, MemberOutputs
from ensemble.combine.temperature import TemperatureScaling, calibrated_outputs
from ensemble.core.progress import stage
from ensemble.corrupt.shifts import SHIFTS, ZOOM, shifted_images
from ensemble.run.directory import Run

#: What a copy's images get, one kind per image in turn: the acquisition shifts and zoom.
COPY_KINDS = (*SHIFTS, ZOOM)
#: Copy ``k`` (1, 2, ...) is drawn with seed ``SEED_BASE + k``; the report's copies use 0.
SEED_BASE = 1000


def shifted_outputs(
    run: Run,
    names: list[str],
    rows: np.ndarray,
    copies: int,
    *,
    tta: bool,
    scaler: TemperatureScaling,
) -> list[MemberOutputs]:
    """Every member's outputs on ``copies`` seeded shifted copies of some ``blend`` images.

    Args:
        run: the run with its data (the blend images are decoded at each member's input size).
        names: the members, in the combiners' order.
        rows: boolean mask over ``blend`` (in split order): the images to copy.
        copies: how many copies; copy ``k`` is seeded with ``SEED_BASE + k``.
        tta: average each member over the 8 dihedral views, as the combiners will be applied.
        scaler: the members' temperatures (fitted on clean ``val``).

    Returns:
        One :class:`MemberOutputs` per copy, rows in the order of ``rows``' true entries.
    """
    from ensemble.members.outputs import member_model, member_outputs

    models = {name: member_model(run.directory.model_path(name)) for name in names}
    sizes = sorted({model.input_shape[1] for model in models.values()})
    clean = {size: run.images("blend", size)[0][rows] for size in sizes}
    result = []
    for copy in range(1, copies + 1):
        stage("fit-stacker", f"shifted copy {copy}/{copies} of {int(rows.sum())} blend images")
        images, _ = shifted_images(clean, SEED_BASE + copy, kinds=COPY_KINDS)
        probabilities, features = [], []
        for model in models.values():
            member_probabilities, member_features = member_outputs(
                model, images[model.input_shape[1]], tta=tta
            )
            probabilities.append(member_probabilities)
            features.append(member_features)
        result.append(calibrated_outputs(scaler, probabilities, features))
    return result


def with_copies(blend: Blend, copies: list[MemberOutputs]) -> Blend:
    """``blend`` followed by its shifted copies, each copy in its image's fold.

    Args:
        blend: the clean fitting set (outputs, labels, ids, folds).
        copies: member outputs on copies of the same images, in the same row order.

    Returns:
        A :class:`Blend` of ``len(blend.labels) * (1 + len(copies))`` rows: the clean rows,
        then each copy's; labels and ids repeated; every fold holds an image's copies on the
        same side as the image.
    """
    if not copies:
        return blend
    n, repeats = len(blend.labels), 1 + len(copies)
    every = [blend.outputs, *copies]
    outputs = MemberOutputs(
        probabilities=np.concatenate([o.probabilities for o in every], axis=1),
        calibrated=np.concatenate([o.calibrated for o in every], axis=1),
        features=tuple(
            np.concatenate([o.features[member] for o in every])
            for member in range(len(blend.outputs.features))
        ),
    )

    def spread(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([rows + n * copy for copy in range(repeats)])

    return Blend(
        outputs=outputs,
        labels=np.tile(blend.labels, repeats),
        ids=list(blend.ids) * repeats,
        split_of=blend.split_of,
        folds=[(spread(fit), spread(held)) for fit, held in blend.folds],
    )
