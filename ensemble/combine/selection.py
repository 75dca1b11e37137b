"""The record fit-stacker writes last (``combiners/selection.json``) and every loader checks.

It names the members the combiners were fitted on with their model hashes, the fitted
combiners, each one's cross-validated blend accuracy, the default, whether the combiners were
fitted with test-time augmentation, how the referral was calibrated (conformal prediction sets
and the OOD detector: settings, images, files), and the SHA-256 of every file written beside
it. Written by :func:`ensemble.combine.fitting.fit_combiners`, read by
:meth:`ensemble.serve.ensemble.Ensemble.load`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ensemble.core.errors import RunError
from ensemble.core.fileio import atomic_write_json
from ensemble.run.directory import SELECTION, RunDir

#: The combiners of runs fitted before selection.json listed them.
EARLIER_COMBINERS = ("hard", "soft", "weighted", "greedy", "stack")


@dataclass(frozen=True)
class Selection:
    """What fit-stacker recorded in ``combiners/selection.json``.

    Attributes:
        members: the members the combiners were fitted on, in order.
        member_model_sha256: each member's ``model.keras`` hash at fitting time.
        combiners: the fitted combiners' names, in registry order.
        cv_accuracy_on_blend: cross-validated blend accuracy of every combiner and member.
        default_combiner: the one ``predict`` uses when none is named.
        n_blend: images in the blend split.
        tta: whether the combiners were fitted on test-time-augmented outputs.
        shift_copies: how many seeded shifted copies of their half of blend the combiners
            were fitted on besides the clean images (0: clean only).
        artifact_sha256: hash of every file written beside it, checked when loading.
        calibration: how the referral was calibrated: ``design`` (one paragraph),
            ``split_file``, ``n_blend_fit``, ``conformal`` (settings, ``n_images``, ``models``:
            model name → file), ``ood`` (settings, threshold, ``file``; ``None`` without a
            detector), ``selective`` (targets, delta, score, ``models``: model name → file;
            absent in runs fitted before it) and ``warnings``; ``None`` for runs fitted before
            prediction sets.
    """

    members: list[str]
    member_model_sha256: dict[str, str]
    combiners: list[str]
    cv_accuracy_on_blend: dict[str, float]
    default_combiner: str
    n_blend: int
    tta: bool
    artifact_sha256: dict[str, str]
    calibration: dict | None = None
    shift_copies: int = 0

    @classmethod
    def read(cls, run: RunDir) -> Selection:
        """Read a run's selection (files of earlier versions: no TTA, the five combiners).

        Raises:
            RunError: the run has no fitted combiners.
        """
        path = run.combiners_dir / SELECTION
        if not path.is_file():
            raise RunError(f"no fitted combiners in {run.root}. Run `ensemble fit-stacker` first.")
        saved = json.loads(path.read_text())
        return cls(
            members=saved["members"],
            member_model_sha256=saved["member_model_sha256"],
            combiners=saved.get("combiners", list(EARLIER_COMBINERS)),
            cv_accuracy_on_blend=saved["cv_accuracy_on_blend"],
            default_combiner=saved["default_combiner"],
            n_blend=saved["n_blend"],
            tta=bool(saved.get("tta", False)),
            artifact_sha256=saved.get("artifact_sha256", {}),
            calibration=saved.get("calibration"),
            shift_copies=int(saved.get("shift_copies", 0)),
        )

    def write(self, run: RunDir) -> None:
        """Write ``selection.json`` (last: it marks the combiners as fitted)."""
        atomic_write_json(run.combiners_dir / SELECTION, asdict(self))
