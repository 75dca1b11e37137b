"""The public :class:`Ensemble`: a run's members, temperatures, combiners and referral.

:meth:`Ensemble.load` is the one loader behind ``predict``, ``report`` and the Python API:
it reads the selection fit-stacker wrote, hashes each member's model once and checks it and
every combiner file against the selection, and loads the temperatures, every registered
combiner through :mod:`ensemble.combine.base`' interface (no combiner is special-cased here), the
conformal calibration of every combiner and member and the OOD detector — the last two verified
against the same member hashes. Member models are loaded on first use, in Keras safe mode.
Nothing is unpickled.

Example:
    >>> from ensemble import Ensemble
    >>> ens = Ensemble.load("runs/pbc-cpu")  # doctest: +SKIP
    >>> ens.classes_  # doctest: +SKIP
    ['basophil', 'eosinophil', 'erythroblast', 'ig', 'lymphocyte', 'monocyte', ...]
    >>> ens.predict(images)  # uint8 (N, H, W, 3), any size  # doctest: +SKIP
    array(['neutrophil', 'basophil', ...], dtype='<U12')
    >>> ens.predict_sets(images, alpha=0.05)  # (N, K) bool  # doctest: +SKIP
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.combine.base import Combiner, MemberOutputs
from ensemble.combine.registry import registered_combiners
from ensemble.combine.selection import Selection
from ensemble.combine.temperature import TemperatureScaling, calibrated_outputs
from ensemble.core.console import quiet_console
from ensemble.core.console import verbose as console_verbose
from ensemble.core.errors import ConfigError, DataError, RunError, did_you_mean
from ensemble.core.hashes import check_recorded_hashes, file_sha256
from ensemble.data.colour import ColourNormaliser
from ensemble.data.images import UnreadableImage, crop_and_resize_all, decode_image
from ensemble.members.outputs import member_model, member_outputs
from ensemble.refer.conformal import (
    ConformalClassifier,
    SmallCalibrationWarning,
    check_rate,
    minimum_calibration_size,
)
from ensemble.refer.ood import OodDetector
from ensemble.refer.rule import (
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_CONFIDENCE,
    REFER_RULES,
    agreement_referral,
    conformal_referral,
    referral_reasons,
)
from ensemble.refer.selective import SelectiveClassifier
from ensemble.run.directory import COLOUR, TEMPERATURES, RunDir

#: Images as the ensemble accepts them: uint8 ``(N, H, W, 3)`` at any size, the same images
#: already resized per input size (``{size: (N, size, size, 3)}``), or image file paths.
Images = np.ndarray | Mapping[int, np.ndarray] | Sequence[Path | str]


@dataclass(frozen=True)
class Decisions:
    """What the ensemble says about N images: class, probabilities, set, OOD score, referral.

    Attributes:
        probabilities: ``(N, K)`` the combiner's class probabilities.
        votes: ``(n_members, N)`` each member's predicted class.
        sets: ``(N, K)`` prediction sets at ``alpha`` (``None`` if the run is not calibrated).
        ood_scores: ``(N,)`` how unlike the clean images each image is (``None``: no detector).
        out_of_distribution: ``(N,)`` OOD score above the calibrated threshold (or ``None``).
        abstain: ``(N,)`` referred to a human, by the ``refer`` rule.
        refer: ``"conformal"``, ``"selective"`` or ``"agreement"``: the rule ``abstain``
            follows.
        alpha: the miss rate of the sets (``None`` if not calibrated).
        reasons: why each image was referred, in a reviewer's words (``""`` if accepted).
    """

    probabilities: np.ndarray
    votes: np.ndarray
    sets: np.ndarray | None
    ood_scores: np.ndarray | None
    out_of_distribution: np.ndarray | None
    abstain: np.ndarray
    refer: str
    alpha: float | None
    reasons: list[str] | None = None

    @property
    def predictions(self) -> np.ndarray:
        """Predicted class index per image (the argmax of :attr:`probabilities`)."""
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        """The probability of the predicted class."""
        return self.probabilities.max(axis=1)

    @property
    def agreement(self) -> np.ndarray:
        """Share of members voting for the predicted class."""
        return (self.votes == self.predictions[None, :]).mean(axis=0)


class Ensemble:
    """A fitted run — members, temperatures, combiners, referral — as one classifier.

    The one public class (``from ensemble import Ensemble``), in scikit-learn's style: build it
    with :meth:`load`; what fit-stacker learned ends in ``_``; :meth:`predict` returns class
    names, :meth:`predict_proba` their probabilities. ``predict``, ``report`` and
    ``predict --ray`` go through it too, so the numbers are the command's.

    ``images`` below is a list of image file paths (any PIL-readable format) or a ``uint8``
    array ``(N, H, W, 3)`` of RGB images at any size; each is centre-cropped to a square and
    resized to each member's input size, as ``predict`` does with files.

    Example:
        >>> ens = Ensemble.load("runs/pbc-cpu")  # doctest: +SKIP
        >>> ens.predict(["cell1.jpg", "cell2.jpg"])  # doctest: +SKIP
        array(['neutrophil', 'platelet'], dtype='<U12')

    Attributes:
        run: the run directory.
        classes_: class names, in probability-column order.
        members_: member names, in the order the combiners were fitted on.
        combiner_: the combiner (or member) whose probabilities are used.
        default_combiner_: the one fit-stacker chose on ``blend``.
        fitted_with_tta_: whether the combiners were fitted on test-time-augmented outputs.
        fitted_on_shift_copies_: how many seeded shifted copies of blend the combiners were
            fitted on besides the clean images (``fit-stacker --shift-copies``).
        temperatures_: each member's temperature scaling.
        combiners_: every fitted combiner by name (registry order).
        member_hashes_: SHA-256 of each member's model, as verified at load.
        calibration_: what fit-stacker recorded about the referral (see
            :class:`~ensemble.combine.selection.Selection`), or ``None`` for a run fitted before it.
        conformal_: the conformal calibration of every combiner and member, by name (empty when
            the run is not calibrated).
        ood_: the OOD detector, or ``None``.
        selective_: the selective thresholds of every combiner and member, by name (empty for
            runs fitted before them).
        colour_: the lab's colour normalisation applied to every image given (``None``: the
            run has none; see ``ensemble adapt --colour``).
    """

    def __init__(
        self,
        run: RunDir,
        selection: Selection,
        temperatures: TemperatureScaling,
        combiners: dict[str, Combiner],
        member_hashes: dict[str, str],
        combiner: str | None = None,
        conformal: dict[str, ConformalClassifier] | None = None,
        ood: OodDetector | None = None,
        selective: dict[str, SelectiveClassifier] | None = None,
        colour: ColourNormaliser | None = None,
    ) -> None:
        self.run = run
        self.classes_ = run.classes
        self.members_ = list(selection.members)
        self.default_combiner_ = selection.default_combiner
        self.fitted_with_tta_ = selection.tta
        self.fitted_on_shift_copies_ = selection.shift_copies
        self.temperatures_ = temperatures
        self.combiners_ = combiners
        self.member_hashes_ = member_hashes
        self.calibration_ = selection.calibration
        self.conformal_ = conformal or {}
        self.ood_ = ood
        self.selective_ = selective or {}
        self.colour_ = colour
        self.combiner_ = self._resolve(combiner or selection.default_combiner)

    @classmethod
    def load(cls, run_dir: Path | str | RunDir, combiner: str | None = None) -> Ensemble:
        """Load a run's fitted ensemble, verifying every file against fit-stacker's record.

        Args:
            run_dir: a run directory with trained members and fitted combiners.
            combiner: a combiner name, ``ovr`` (the first one-vs-rest member) or a member
                name; ``None`` = the default chosen on ``blend`` by fit-stacker.

        Returns:
            The fitted ensemble.

        Raises:
            RunError: not a run, no fitted combiners, or a member model, combiner or
                calibration file changed since fit-stacker (each message says what to run).
            ConfigError: ``combiner`` is not one of the choices (listed in the message).
        """
        if not console_verbose():
            quiet_console()  # as quiet as the command line, before TensorFlow loads a member
        run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
        selection = Selection.read(run)
        hashes = run.model_hashes(selection.members)  # once per load
        _check_unchanged(run, selection, hashes)
        saved = json.loads((run.combiners_dir / TEMPERATURES).read_text())
        temperatures = TemperatureScaling.from_temperatures(saved["temperatures"])
        registry = registered_combiners()
        unknown = [name for name in selection.combiners if name not in registry]
        if unknown:
            raise RunError(
                f"run {run.root} was fitted with combiners {unknown} that this version does not "
                "have. Run `ensemble fit-stacker` again."
            )
        combiners = {
            name: registry[name].load(run.combiners_dir, member_hashes=hashes)
            for name in selection.combiners
        }
        calibration = selection.calibration or {}
        conformal = {
            name: ConformalClassifier.load(run.combiners_dir / file, hashes)
            for name, file in (calibration.get("conformal") or {}).get("models", {}).items()
        }
        ood = None
        if calibration.get("ood"):
            ood = OodDetector.load(run.combiners_dir / calibration["ood"]["file"], hashes)
        selective = {
            name: SelectiveClassifier.load(run.combiners_dir / file, hashes)
            for name, file in (calibration.get("selective") or {}).get("models", {}).items()
        }
        return cls(
            run,
            selection,
            temperatures,
            combiners,
            hashes,
            combiner,
            conformal,
            ood,
            selective,
            _colour(run),
        )

    # What can be asked for.

    def choices(self) -> list[str]:
        """Every valid ``combiner``: the combiners, the members, and ``ovr`` if there is one."""
        ovr = ["ovr"] if self._ovr_members() else []
        return [*self.combiners_, *self.members_, *ovr]

    def __repr__(self) -> str:
        return f"Ensemble(run={str(self.run.root)!r}, combiner={self.combiner_!r})"

    def choice_summary(self) -> str:
        """The valid ``combiner`` values in one line: combiners, members, and ``ovr``."""
        combiners = list(self.combiners_)
        members = list(self.members_)
        text = f"the combiners {combiners} or a member {members}"
        if self._ovr_members():
            text += " ('ovr' = the first one-vs-rest member)"
        return text

    def input_size(self, member: str) -> int:
        """Input side in pixels of a member."""
        return self.run.input_size(member)

    def model(self, member: str):  # -> keras.Model (keras is imported lazily)
        """A member's Keras model in safe mode, loaded once per process (as fit-stacker does)."""
        return member_model(self.run.model_path(member), self.member_hashes_.get(member))

    def tta_warning(self, tta: bool) -> str | None:
        """A one-line warning when applied with another TTA setting than fitted with, else None."""
        if tta == self.fitted_with_tta_:
            return None
        fitted, applied = ("with", "without") if self.fitted_with_tta_ else ("without", "with")
        advice = "pass --tta" if self.fitted_with_tta_ else "run `ensemble fit-stacker --tta`"
        return (
            f"warning: the combiners of {self.run.root} were fitted {fitted} test-time "
            f"augmentation but are applied {applied} it; their weights and temperatures may "
            f"not fit these outputs ({advice} to match)"
        )

    # From images to probabilities.

    def member_outputs(
        self, images: Images, *, tta: bool = False, batch_size: int = 256
    ) -> MemberOutputs:
        """Every member's probabilities and pooled features on ``images``, calibrated.

        Args:
            images: see :data:`Images`; resized to each member's input size as needed.
            tta: average each member over the 8 dihedral views.
            batch_size: images per forward pass.

        Raises:
            DataError: a path cannot be decoded, or an array is not ``(N, H, W, 3)``.
        """
        by_size = self.images_by_size(images)
        probabilities, features = [], []
        for name in self.members_:
            member_probabilities, member_features = member_outputs(
                self.model(name), by_size[self.input_size(name)], batch_size, tta
            )
            probabilities.append(member_probabilities)
            features.append(member_features)
        return self.calibrate(np.stack(probabilities), features)

    def calibrate(self, probabilities: np.ndarray, features: Sequence[np.ndarray]) -> MemberOutputs:
        """Member outputs computed elsewhere (e.g. cached) with the temperatures applied.

        Args:
            probabilities: ``(n_members, N, K)`` raw member probabilities, in member order.
            features: one ``(N, F)`` array per member.
        """
        return calibrated_outputs(self.temperatures_, probabilities, features)

    def combine(self, outputs: MemberOutputs, combiner: str | None = None) -> np.ndarray:
        """Class probabilities ``(N, K)`` of one combiner or member (default: :attr:`combiner`).

        Raises:
            ConfigError: ``combiner`` is not one of :meth:`choices`.
        """
        name = self._resolve(combiner) if combiner else self.combiner_
        if name in self.combiners_:
            return self.combiners_[name].combine(outputs)
        return outputs.calibrated[self.members_.index(name)]

    def combine_all(self, outputs: MemberOutputs) -> dict[str, np.ndarray]:
        """Class probabilities of every member (calibrated), then of every combiner."""
        result = {name: outputs.calibrated[index] for index, name in enumerate(self.members_)}
        for name, combiner in self.combiners_.items():
            result[name] = combiner.combine(outputs)
        return result

    def predict_proba(
        self, images: Images, *, tta: bool = False, batch_size: int = 256
    ) -> np.ndarray:
        """Class probabilities ``(N, K)`` of :attr:`combiner` on ``images``."""
        return self.combine(self.member_outputs(images, tta=tta, batch_size=batch_size))

    def predict(self, images: Images, *, tta: bool = False, batch_size: int = 256) -> np.ndarray:
        """Predicted class name per image, ``(N,)`` strings.

        Raises:
            DataError: no images, a path that cannot be decoded, or an array that is not
                ``(N, H, W, 3)``.
        """
        indices = self.predict_proba(images, tta=tta, batch_size=batch_size).argmax(axis=1)
        return np.asarray(self.classes_)[indices]

    # Referral: prediction sets, out-of-distribution scores, the abstain rule.

    @property
    def alpha_(self) -> float | None:
        """The miss rate the sets were calibrated for by default (``None``: not calibrated)."""
        return self.default_alpha

    @property
    def ood_threshold_(self) -> float | None:
        """OOD score above which an image is referred (``None``: no detector)."""
        return self.ood_threshold

    @property
    def default_alpha(self) -> float | None:
        """The miss rate the sets were calibrated for by default (``None``: not calibrated)."""
        return next(iter(self.conformal_.values())).alpha if self.conformal_ else None

    def predict_sets(
        self,
        images: Images | MemberOutputs,
        alpha: float | None = None,
        *,
        combiner: str | None = None,
        tta: bool = False,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Conformal prediction sets ``(N, K)``: True where a class cannot be ruled out.

        If the images are like the calibration images, a set holds the true class for at
        least ``1 - alpha`` of them.

        Args:
            images: see :data:`Images`, or member outputs already computed.
            alpha: miss rate in ``(0, 1)``; ``None`` = the calibrated default (0.01).
            combiner: whose probabilities (default: :attr:`combiner`).
            tta: average each member over the 8 dihedral views.
            batch_size: images per forward pass.

        Raises:
            RunError: the run was fitted before prediction sets (run fit-stacker again).
            ConfigError: ``alpha`` outside ``(0, 1)``, or an unknown ``combiner``.
        """
        outputs = self._as_outputs(images, tta, batch_size)
        name = self._resolve(combiner) if combiner else self.combiner_
        return self.sets_from_probabilities(self.combine(outputs, name), alpha, name)

    def sets_from_probabilities(
        self, probabilities: np.ndarray, alpha: float | None = None, combiner: str | None = None
    ) -> np.ndarray:
        """Prediction sets from probabilities of ``combiner`` already computed (no forward pass).

        Raises:
            RunError: not calibrated. ConfigError: a bad ``alpha`` or ``combiner``.
        """
        conformal = self._conformal(combiner)
        with warnings.catch_warnings():  # said once by calibration_warning(), not per batch
            warnings.simplefilter("ignore", SmallCalibrationWarning)
            return conformal.predict_sets(probabilities, alpha)

    def calibration_warning(self, alpha: float | None = None) -> str | None:
        """A one-line warning when the calibration is too small for ``alpha``, else None."""
        if not self.conformal_:
            return None
        conformal = self._conformal(None)
        alpha = check_rate(conformal.alpha if alpha is None else alpha, "alpha")
        needed = minimum_calibration_size(alpha)
        n_images = len(conformal.calibration_scores_)
        if n_images < needed:
            return (
                f"warning: the prediction sets of {self.run.root} were calibrated on "
                f"{n_images} images; alpha={alpha} needs {needed}, so every set holds every "
                "class (pass a larger --alpha, or fit a run with more blend images)"
            )
        short = [self.classes_[k] for k in conformal.fallback_classes(alpha)]
        if short:
            return (
                f"warning: Mondrian prediction sets: classes {short} have fewer than {needed} "
                f"calibration images for alpha={alpha}; their thresholds fall back to "
                "conservative ones"
            )
        return None

    def referral_warnings(
        self,
        tta: bool,
        alpha: float | None,
        *,
        asked: str | None,
        rule: str,
        accepted_accuracy: float | None = None,
    ) -> list[str]:
        """What ``predict`` and the API warn about, one line each (none when all is well).

        A TTA setting other than the one the combiners were fitted with; prediction sets
        calibrated on too few images for ``alpha``; the rule that ``abstain`` fell back to.

        Args:
            tta: whether the images will be test-time augmented.
            alpha: the miss rate asked for (``None``: the calibrated default).
            asked: the rule asked for (``None``: the default).
            rule: the rule that will be used (:meth:`referral_settings`).
            accepted_accuracy: the selective rule's target asked for (``None``: the first).
        """
        lines = [self.tta_warning(tta), self.inherited_calibration_note()]
        if rule == "selective":
            lines.append(self.selective_warning(accepted_accuracy))
        elif rule == "conformal":
            lines.append(self.calibration_warning(alpha))
        elif asked is not None:  # agreement, asked for: nothing to say
            pass
        elif not self.conformal_:
            lines.append(
                f"note: run {self.run.root} was fitted before prediction sets: abstain follows "
                "member agreement and confidence (run `ensemble fit-stacker` again for sets)"
            )
        else:  # agreement as the fallback of an uncalibrated run
            small = self.calibration_warning(alpha)
            if small:
                lines.append(
                    small.removesuffix(")")
                    + "); abstain follows member agreement and confidence instead "
                    "(--refer conformal would refer every image)"
                )
        return [line for line in lines if line]

    def inherited_calibration_note(self) -> str | None:
        """A note for a run adapted without labels: its referral is its base run's."""
        record = self.run.manifest.get("adapted_from") or {}
        if not str(record.get("calibration", "")).startswith("inherited"):
            return None
        return (
            f"note: {self.run.root} was adapted without labels: its temperatures, prediction "
            f"sets, OOD threshold and selective thresholds are those of {record['run']}, fitted "
            "on the training lab's images before the adaptation; their guarantees are not "
            "re-established on this lab's images"
        )

    def selective_warning(self, accepted_accuracy: float | None = None) -> str | None:
        """A one-line warning when the selective rule accepts nothing at this target, else None."""
        selective = self._selective(None)
        target = selective.resolve_target(accepted_accuracy)
        thresholds = np.atleast_1d(np.asarray(selective.threshold(target), dtype=np.float64))
        if np.isfinite(thresholds).any():
            return None
        return (
            f"warning: the calibration images of {self.run.root} cannot show accepted accuracy "
            f"{target:g} at delta {selective.delta:g}, so every image is referred (ask "
            "fit-stacker for a lower --accepted-accuracy, or fit a run with more blend images)"
        )

    def default_refer(self, alpha: float | None = None) -> str:
        """The rule ``abstain`` follows when none is asked for.

        The rule fit-stacker chose on val — the one that refers fewer images for the same
        accepted accuracy (``calibration_["default_refer"]``) — unless an ``alpha`` is given;
        else ``conformal`` when the sets are calibrated well enough for ``alpha`` (the
        calibration has the images ``alpha`` needs, so sets are not all classes), else
        ``agreement``.
        """
        chosen = (self.calibration_ or {}).get("default_refer") or {}
        if alpha is None and chosen.get("combiner") == self.combiner_ and chosen.get("rule"):
            return chosen["rule"]
        if not self.conformal_:
            return "agreement"
        conformal = self._conformal(None)
        alpha = check_rate(conformal.alpha if alpha is None else alpha, "alpha")
        enough = len(conformal.calibration_scores_) >= minimum_calibration_size(alpha)
        return "conformal" if enough else "agreement"

    def ood_scores(
        self, images: Images | MemberOutputs, *, tta: bool = False, batch_size: int = 256
    ) -> np.ndarray:
        """How unlike the clean calibration images each image is ``(N,)``; larger = stranger.

        Raises:
            RunError: the run has no OOD detector (fit-stacker again, with an OOD method).
        """
        return self.ood_from_outputs(self._as_outputs(images, tta, batch_size))

    def ood_from_outputs(self, outputs: MemberOutputs) -> np.ndarray:
        """:meth:`ood_scores` of member outputs already computed (no forward pass)."""
        if self.ood_ is None:
            raise RunError(
                f"run {self.run.root} has no OOD detector. Run `ensemble fit-stacker` again."
            )
        if self.ood_.method == "max_softmax":
            inputs = dict(zip(self.members_, outputs.calibrated, strict=True))
        else:
            inputs = dict(zip(self.members_, outputs.features, strict=True))
        return self.ood_.score(inputs)

    @property
    def ood_threshold(self) -> float | None:
        """OOD score above which an image is referred (``None``: no detector)."""
        return None if self.ood_ is None else self.ood_.threshold()

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
        warn: bool = True,
    ) -> Decisions:
        """Everything about each image in one forward pass: class, set, OOD score, referral.

        What ``ensemble predict`` writes per file.

        Args:
            images: see :data:`Images`, or member outputs already computed.
            alpha: miss rate of the sets; ``None`` = the calibrated default.
            refer: ``"conformal"`` (refer unless the set is exactly the predicted class and the
                OOD score is under its threshold), ``"selective"`` (refer unless the confidence
                reaches the threshold calibrated for ``accepted_accuracy`` and the image is
                not out of distribution), ``"agreement"`` (refer when member agreement or
                confidence is under its minimum), ``None`` = :meth:`default_refer`.
            min_agreement: the agreement rule's minimum share of members voting for the class.
            min_confidence: the agreement rule's minimum probability.
            accepted_accuracy: the selective rule's guaranteed accuracy on accepted images,
                one of those fit-stacker calibrated; ``None`` = the one it was asked for.
            tta: average each member over the 8 dihedral views.
            batch_size: images per forward pass.
            warn: say through :mod:`warnings` what the command line says on stderr (a TTA
                setting unlike the fitted one, a calibration too small, the rule fallen back
                to); ``predict`` says it once and passes False for each chunk.

        Raises:
            ConfigError: an unknown ``refer``, a bad ``alpha`` or threshold.
            RunError: ``refer="conformal"`` on a run fitted before prediction sets.

        Over 60 lines: its arguments are documented one by one; the body applies one referral rule
        of three.
        """
        asked = refer
        refer, alpha = self.referral_settings(
            alpha, refer, min_agreement, min_confidence, accepted_accuracy
        )
        if warn:
            for line in self.referral_warnings(
                tta, alpha, asked=asked, rule=refer, accepted_accuracy=accepted_accuracy
            ):
                message = line.removeprefix("warning: ").removeprefix("note: ")
                warnings.warn(message, stacklevel=2)
        outputs = self._as_outputs(images, tta, batch_size)
        probabilities = self.combine(outputs)
        sets = None
        if self.conformal_:
            sets = self.sets_from_probabilities(probabilities, alpha)
        scores = flagged = None
        if self.ood_ is not None:
            scores = self.ood_from_outputs(outputs)
            flagged = scores > self.ood_threshold
        if refer == "conformal":
            abstain = conformal_referral(probabilities, sets, flagged)
            reasons = referral_reasons(abstain, flagged=flagged, set_sizes=sets.sum(axis=1))
        elif refer == "selective":
            confident = self._selective(None).accept(probabilities, accepted_accuracy)
            abstain = ~confident if flagged is None else ~confident | flagged
            reasons = referral_reasons(abstain, flagged=flagged, low_confidence=~confident)
        else:
            abstain = agreement_referral(
                probabilities, outputs.votes, min_agreement, min_confidence
            )
            agreement = (outputs.votes == probabilities.argmax(axis=1)[None, :]).mean(axis=0)
            reasons = referral_reasons(
                abstain,
                low_confidence=probabilities.max(axis=1) < min_confidence,
                low_agreement=agreement < min_agreement,
            )
        return Decisions(
            probabilities=probabilities,
            votes=outputs.votes,
            sets=sets,
            ood_scores=scores,
            out_of_distribution=flagged,
            abstain=abstain,
            refer=refer,
            alpha=alpha,
            reasons=reasons,
        )

    def referral_settings(
        self,
        alpha: float | None = None,
        refer: str | None = None,
        min_agreement: float = DEFAULT_MIN_AGREEMENT,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        accepted_accuracy: float | None = None,
    ) -> tuple[str, float | None]:
        """The rule and alpha :meth:`decide` will use, checked before any image is read.

        Returns:
            ``(refer, alpha)``: the rule (``None`` resolved by :meth:`default_refer`) and the
            miss rate (``None`` resolved to the calibrated default; ``None`` if not calibrated).

        Raises:
            ConfigError: an unknown ``refer``, ``alpha`` outside ``(0, 1)``, a threshold
                outside ``[0, 1]``, or an ``accepted_accuracy`` that was not calibrated.
            RunError: ``refer="conformal"`` on a run fitted before prediction sets, or
                ``refer="selective"`` on one fitted before selective thresholds.
        """
        for name, value in (("min_agreement", min_agreement), ("min_confidence", min_confidence)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1]. Received: {name}={value}")
        if refer is not None and refer not in REFER_RULES:
            raise ConfigError(
                f"unknown refer rule. Choose from {list(REFER_RULES)}. Received: refer={refer!r}"
            )
        if alpha is not None:
            check_rate(alpha, "alpha")
        refer = refer or self.default_refer(alpha)
        if refer == "selective" or accepted_accuracy is not None:
            self._selective(None).resolve_target(accepted_accuracy)
        if refer == "conformal" and not self.conformal_:
            raise RunError(
                f"run {self.run.root} has no prediction sets (fitted before them). Run "
                "`ensemble fit-stacker` again, or refer by agreement."
            )
        if not self.conformal_:
            return refer, None
        return refer, self.default_alpha if alpha is None else float(alpha)

    def images_by_size(self, images: Images) -> dict[int, np.ndarray]:
        """``images`` at every member input size: ``{size: (N, size, size, 3)}``.

        With :attr:`colour_`, the images come back colour-normalised as the members expect —
        a mapping of already resized images included: every image given is taken as raw.

        Raises:
            DataError: a path cannot be decoded, or an array is not ``(N, H, W, 3)``.
        """
        by_size = self._images_by_size(images)
        if self.colour_ is None:
            return by_size
        return {size: self.colour_.transform(batch) for size, batch in by_size.items()}

    def _images_by_size(self, images: Images) -> dict[int, np.ndarray]:
        """:meth:`images_by_size` before any colour map."""
        sizes = sorted({self.input_size(name) for name in self.members_})
        if isinstance(images, Mapping):
            missing = [size for size in sizes if size not in images]
            if missing:
                raise DataError(f"images at sizes {missing} are missing. Received: {list(images)}")
            return {size: images[size] for size in sizes}
        if len(images) == 0:
            raise DataError(
                "no images given (an empty list or array: did a folder or a glob match "
                "nothing?). Pass image paths or a uint8 array (N, H, W, 3) with N >= 1."
            )
        if not isinstance(images, np.ndarray):
            images = [_decode(path) for path in images]
        elif images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"images must be (N, H, W, 3) RGB. Received: shape={images.shape}")
        return {size: _resized(images, size) for size in sizes}

    def _as_outputs(
        self, images: Images | MemberOutputs, tta: bool, batch_size: int
    ) -> MemberOutputs:
        if isinstance(images, MemberOutputs):
            return images
        return self.member_outputs(images, tta=tta, batch_size=batch_size)

    def _conformal(self, combiner: str | None) -> ConformalClassifier:
        if not self.conformal_:
            raise RunError(
                f"run {self.run.root} has no prediction sets (fitted before them). Run "
                "`ensemble fit-stacker` again."
            )
        return self.conformal_[self._resolve(combiner) if combiner else self.combiner_]

    def _selective(self, combiner: str | None) -> SelectiveClassifier:
        if not self.selective_:
            raise RunError(
                f"run {self.run.root} has no selective thresholds (fitted before them). Run "
                "`ensemble fit-stacker` again."
            )
        return self.selective_[self._resolve(combiner) if combiner else self.combiner_]

    def _ovr_members(self) -> list[str]:
        return [name for name in self.members_ if self.run.member_spec(name).kind == "ovr"]

    def _resolve(self, combiner: str) -> str:
        choices = self.choices()
        if combiner not in choices:
            raise ConfigError(
                f"unknown combiner {combiner!r}.{did_you_mean(combiner, choices)} Choose from "
                f"{self.choice_summary()}"
            )
        return self._ovr_members()[0] if combiner == "ovr" else combiner


def _check_unchanged(run: RunDir, selection: Selection, hashes: dict[str, str]) -> None:
    """Refuse members or combiner files that changed since fit-stacker recorded them."""
    recorded = {name: selection.member_model_sha256.get(name) for name in hashes}
    check_recorded_hashes(
        recorded,
        hashes,
        "members changed since the combiners were fitted: {changed}. "
        "Run `ensemble fit-stacker` again.",
    )
    for name, digest in selection.artifact_sha256.items():
        artifact = run.combiners_dir / name
        if not artifact.is_file() or file_sha256(artifact) != digest:
            raise RunError(
                f"combiner file {artifact} is missing, changed or truncated since fit-stacker "
                "wrote it. Run `ensemble fit-stacker` again."
            )


def _resized(images: np.ndarray | list[np.ndarray], size: int) -> np.ndarray:
    """Every image centre-cropped to a square and resized to ``size`` (as when decoding)."""
    if isinstance(images, np.ndarray) and images.shape[1:3] == (size, size):
        return images.astype(np.uint8, copy=False)
    return crop_and_resize_all(images, size)


def _decode(path: Path | str) -> np.ndarray:
    try:
        return decode_image(Path(path)).pixels
    except UnreadableImage as error:
        raise DataError(f"cannot read image {path}: {error}") from None


def _colour(run: RunDir) -> ColourNormaliser | None:
    """The run's colour map, checked against the hash its manifest recorded (``None``: none).

    Raises:
        RunError: ``colour.json`` changed since ``adapt`` wrote it, or is not recorded.
    """
    if not run.colour_path.is_file():
        return None
    recorded = (run.manifest.get("adapted_from") or {}).get("colour_sha256")
    check_recorded_hashes(
        {COLOUR: recorded},
        {COLOUR: file_sha256(run.colour_path)},
        f"{{changed}} of {run.root} changed since `ensemble adapt` wrote it (or was not written "
        "by it). Run `ensemble adapt` again into a new folder.",
    )
    return ColourNormaliser.from_json(json.loads(run.colour_path.read_text()))
