"""The public Python API: :class:`Ensemble`, a fitted run as a scikit-learn-style classifier.

``ensemble predict`` goes through the same object, so the numbers are the same as the
command's on the same files.

Example:
    >>> from ensemble import Ensemble
    >>> ens = Ensemble.load("runs/pbc-cpu")  # doctest: +SKIP
    >>> ens.classes_  # doctest: +SKIP
    ['basophil', 'eosinophil', 'erythroblast', 'ig', 'lymphocyte', 'monocyte', ...]
    >>> ens.predict(["cell1.jpg", "cell2.jpg"])  # doctest: +SKIP
    array(['neutrophil', 'platelet'], dtype='<U12')
    >>> ens.predict_sets(images, alpha=0.01)  # (N, K) bool  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ensemble.combine.base import MemberOutputs
from ensemble.core.console import quiet_console
from ensemble.refer.rule import DEFAULT_MIN_AGREEMENT, DEFAULT_MIN_CONFIDENCE
from ensemble.run.directory import RunDir
from ensemble.serve.fitted import Decisions, FittedEnsemble, Images


class Ensemble:
    """A fitted run: members, combiner, prediction sets and out-of-distribution referral.

    Build it with :meth:`load`. ``images`` below is a list of image file paths (any
    PIL-readable format) or a ``uint8`` array ``(N, H, W, 3)`` of RGB images at any size; each
    is centre-cropped to a square and resized to each member's input size, as ``predict`` does
    with files.

    Attributes:
        classes_: class names, in probability-column order.
        combiner_: the combiner (or member) whose probabilities are used.
        members_: the members, in the order the combiners were fitted on.
        alpha_: the default miss rate of :meth:`predict_sets` (``None``: run not calibrated).
        fitted_: the underlying :class:`~ensemble.serve.fitted.FittedEnsemble` (every combiner,
            member outputs, temperatures).
    """

    def __init__(self, fitted: FittedEnsemble) -> None:
        self.fitted_ = fitted

    @classmethod
    def load(cls, run_dir: Path | str | RunDir, combiner: str | None = None) -> Ensemble:
        """Load a run trained by ``train-members`` and fitted by ``fit-stacker``.

        Args:
            run_dir: the run directory.
            combiner: ``stack``, ``hard``, ``soft``, ``weighted``, ``greedy``, ``ovr`` or a
                member name; ``None`` = the one fit-stacker chose on ``blend``.

        Raises:
            RunError: not a run, not fitted, or a file changed since fit-stacker (the message
                says what to run).
            ConfigError: an unknown ``combiner`` (the message lists the choices).
        """
        if not os.environ.get("ENSEMBLE_VERBOSE"):
            quiet_console()  # as quiet as the command line, before TensorFlow loads a member
        return cls(FittedEnsemble.load(run_dir, combiner))

    @property
    def classes_(self) -> list[str]:
        """Class names, in probability-column order."""
        return list(self.fitted_.classes)

    @property
    def combiner_(self) -> str:
        """The combiner (or member) whose probabilities are used."""
        return self.fitted_.combiner

    @property
    def members_(self) -> list[str]:
        """The members, in the order the combiners were fitted on."""
        return list(self.fitted_.members)

    @property
    def alpha_(self) -> float | None:
        """The default miss rate of the prediction sets (``None``: not calibrated)."""
        return self.fitted_.default_alpha

    def predict(self, images: Images, *, tta: bool = False, batch_size: int = 256) -> np.ndarray:
        """Predicted class name per image, ``(N,)`` strings.

        Raises:
            DataError: a path cannot be decoded, or the array is not ``(N, H, W, 3)``.
        """
        indices = self.predict_proba(images, tta=tta, batch_size=batch_size).argmax(axis=1)
        return np.asarray(self.classes_)[indices]

    def predict_proba(
        self, images: Images, *, tta: bool = False, batch_size: int = 256
    ) -> np.ndarray:
        """Class probabilities ``(N, K)``, columns in :attr:`classes_` order.

        Raises:
            DataError: a path cannot be decoded, or the array is not ``(N, H, W, 3)``.
        """
        return self.fitted_.predict_proba(images, tta=tta, batch_size=batch_size)

    def predict_sets(
        self,
        images: Images,
        alpha: float | None = None,
        *,
        tta: bool = False,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Conformal prediction sets ``(N, K)`` bool: True where a class cannot be ruled out.

        For images like the run's clean images (exchangeable with its calibration images), a
        set holds the true class for at least ``1 - alpha`` of them. A set of exactly one class
        is a confident answer; anything else is a reason to refer the image. Class names of
        row ``i``: ``[ens.classes_[k] for k in np.flatnonzero(sets[i])]``.

        Args:
            images: paths or ``(N, H, W, 3)`` uint8.
            alpha: miss rate in ``(0, 1)``; ``None`` = the calibrated default (0.01). Below
                ``1 / (n + 1)`` for ``n`` calibration images every set holds every class.
            tta: average each member over the 8 dihedral views.
            batch_size: images per forward pass.

        Raises:
            RunError: the run was fitted before prediction sets (run fit-stacker again).
            ConfigError: ``alpha`` outside ``(0, 1)``.
        """
        return self.fitted_.predict_sets(images, alpha, tta=tta, batch_size=batch_size)

    def ood_scores(self, images: Images, *, tta: bool = False, batch_size: int = 256) -> np.ndarray:
        """How unlike the run's clean images each image is, ``(N,)``; larger = stranger.

        Above :attr:`ood_threshold_` an image is referred.

        Raises:
            RunError: the run has no OOD detector.
        """
        return self.fitted_.ood_scores(images, tta=tta, batch_size=batch_size)

    @property
    def ood_threshold_(self) -> float | None:
        """OOD score above which an image is referred (``None``: no detector)."""
        return self.fitted_.ood_threshold

    def decide(
        self,
        images: Images | MemberOutputs,
        *,
        alpha: float | None = None,
        refer: str | None = None,
        min_agreement: float = DEFAULT_MIN_AGREEMENT,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        accepted_accuracy: float | None = None,
        tta: bool = False,
        batch_size: int = 256,
    ) -> Decisions:
        """Class, probabilities, set, OOD score and referral of each image in one forward pass.

        What ``ensemble predict`` writes per file. ``refer="conformal"`` (the default once the
        run is calibrated for ``alpha``) refers every image whose set is not exactly the
        predicted class or whose OOD score is above the threshold; ``refer="selective"`` refers
        every image whose confidence is under the threshold that guarantees
        ``accepted_accuracy`` on the accepted ones (one fit-stacker calibrated; ``None``: the
        one it was asked for); ``refer="agreement"`` refers by member agreement and confidence.

        Returns:
            :class:`~ensemble.serve.fitted.Decisions`: ``probabilities``, ``predictions``, ``sets``,
            ``ood_scores``, ``out_of_distribution``, ``abstain``, ``agreement``,
            ``confidence``, ``refer``, ``alpha``.

        Raises:
            ConfigError: an unknown ``refer``, a bad ``alpha`` or threshold.
            RunError: ``refer="conformal"`` on a run fitted before prediction sets.
        """
        rule, _ = self.fitted_.referral_settings(
            alpha, refer, min_agreement, min_confidence, accepted_accuracy
        )
        self._warn(tta, alpha, asked=refer, rule=rule)
        return self.fitted_.decide(
            images,
            alpha=alpha,
            refer=refer,
            min_agreement=min_agreement,
            min_confidence=min_confidence,
            accepted_accuracy=accepted_accuracy,
            tta=tta,
            batch_size=batch_size,
        )

    def _warn(self, tta: bool, alpha: float | None, *, asked: str | None, rule: str) -> None:
        """The command line's warnings (TTA mismatch, small calibration, rule fallen back to)."""
        for line in self.fitted_.referral_warnings(tta, alpha, asked=asked, rule=rule):
            warnings.warn(line.removeprefix("warning: ").removeprefix("note: "), stacklevel=3)

    def __repr__(self) -> str:
        return f"Ensemble(run={str(self.fitted_.run.root)!r}, combiner={self.combiner_!r})"
