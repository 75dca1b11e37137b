"""``ensemble fit-stacker``: fit every combiner of a run on its ``blend`` split, then calibrate.

Steps, one function each: the members' probabilities and pooled features on ``val`` and
``blend`` (one forward pass, cached; with ``tta`` averaged over the 8 dihedral views, the same
outputs the combiners will later be applied to); one temperature per member fitted on ``val``;
``blend`` cut in two halves (:func:`halve_blend`); every registered combiner
(:func:`ensemble.combine.registry.registered_combiners`: the voting combiners, greedy selection, the
XGBoost stacker) fitted on the first half; the default combiner chosen by cross-validated
accuracy inside that half (an in-sample score would favour the combiners with the most
parameters); then the referral: split-conformal prediction sets for every combiner and member
calibrated on the second half (:class:`~ensemble.refer.conformal.ConformalClassifier`), and an
out-of-distribution detector (:class:`~ensemble.refer.ood.OodDetector`) fitted on ``val``'s pooled
features and calibrated on ``blend`` to refer about 2 % of clean images.

Why the halves: a conformal guarantee holds only if the calibration images were used to fit
nothing that produced their probabilities. ``train`` fits the members, ``val`` picks their
epochs and fits the temperatures, and a combiner fitted on all of ``blend`` would leave no clean
images. So the combiners are fitted on one half of ``blend`` and the sets calibrated on the
other; the halves are stratified by class, seeded, and never cut a duplicate group. The OOD
detector depends on the members only (not on the combiners): it is fitted on ``val`` and
calibrated on all of ``blend``, images it was not fitted on.

Everything is written under ``runs/NAME/combiners/`` as JSON, XGBoost's own format and ``.npy``;
the :class:`~.selection.Selection` (``selection.json``) is written last and vouches for
the rest with their SHA-256.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ensemble.combine.base import Blend, Combiner, MemberOutputs, blend_folds
from ensemble.combine.registry import registered_combiners
from ensemble.combine.selection import Selection
from ensemble.combine.shifted_blend import shifted_outputs, with_copies
from ensemble.combine.temperature import TemperatureScaling, cached_outputs
from ensemble.core.errors import ConfigError, RunError
from ensemble.core.fileio import atomic_write_json
from ensemble.core.hashes import file_sha256
from ensemble.core.progress import stage
from ensemble.members.outputs import cached_member_outputs
from ensemble.refer.conformal import (
    DEFAULT_ALPHA,
    DEFAULT_SCORE,
    SCORES,
    ConformalClassifier,
    SmallCalibrationWarning,
    check_rate,
    minimum_calibration_size,
)
from ensemble.refer.ood import DEFAULT_OOD_METHOD, DEFAULT_TARGET_REFERRAL, OOD_METHODS, OodDetector
from ensemble.refer.rule import conformal_referral
from ensemble.refer.selective import (
    DEFAULT_DELTA,
    DEFAULT_TARGETS,
    SELECTIVE_SCORES,
    SelectiveClassifier,
)
from ensemble.run.directory import (
    CALIBRATION_SPLIT,
    OOD,
    TEMPERATURES,
    Run,
    RunDir,
    conformal_file,
    selective_file,
)

DESIGN = (
    "conformal: combiners fitted on one half of blend, prediction sets calibrated on the other "
    "half (stratified by class, seeded, duplicate groups kept whole); members' epochs and "
    "temperatures come from val, so no calibration image fitted anything that produced its "
    "probabilities. OOD: detector fitted on val pooled features, threshold calibrated on all of "
    "blend (clean images it was not fitted on)."
)


def fit_combiners(
    run: Run,
    seed: int = 0,
    tta: bool = False,
    *,
    score: str = DEFAULT_SCORE,
    mondrian: bool = False,
    alpha: float = DEFAULT_ALPHA,
    ood_method: str | None = DEFAULT_OOD_METHOD,
    ood_referral: float = DEFAULT_TARGET_REFERRAL,
    shift_copies: int = 0,
    members: list[str] | None = None,
    accepted_accuracy: float | None = None,
    delta: float = DEFAULT_DELTA,
    selective_score: str = "confidence",
    per_class: bool = False,
    default: str | None = None,
) -> Selection:
    """Fit temperatures and every combiner on half of ``blend``; choose a default; calibrate.

    Args:
        run: the run with its data (pixels are decoded only for outputs not cached yet).
        seed: seeds the blend halves, the cross-validation folds and the combiners that draw
            numbers.
        tta: fit on member outputs averaged over the 8 dihedral views; apply them with
            ``--tta`` too.
        score: conformity score of the prediction sets (``lac``, ``aps`` or ``raps``).
        mondrian: one threshold per class (coverage per class) instead of one for all.
        alpha: the default miss rate of the prediction sets (another can be given to predict).
        ood_method: ``mahalanobis`` or ``knn`` (pooled features), ``max_softmax``; ``None``
            fits no OOD detector.
        ood_referral: share of clean images the OOD threshold refers.
        shift_copies: also fit the combiners on this many seeded shifted copies of their half
            of ``blend`` (:mod:`ensemble.combine.shifted_blend`); the calibration half stays clean.
        members: the members to combine; ``None`` = the pipeline's (``combine = true``). Name
            a pre-training stage here to let the combiners use it (a clean expert).
        accepted_accuracy: the accuracy on accepted images that the selective rule
            guarantees by default; calibrated with :data:`DEFAULT_TARGETS` beside it (predict
            ``--accepted-accuracy`` picks among them). ``None``: the first default target.
        delta: the chance that a selective guarantee fails.
        selective_score: what the selective rule thresholds: ``confidence`` or ``margin``.
        per_class: one selective threshold per predicted class.
        default: the combiner or member predict uses by default; ``None`` = the highest
            cross-validated accuracy (a distilled run names its one member).

    Returns:
        The selection written to ``combiners/selection.json``; its ``calibration["warnings"]``
        says, one line each, what a run too small for the requested calibration gets instead.

    Raises:
        RunError: a member is not trained yet.
        ConfigError: an unknown ``score`` or ``ood_method``, a rate outside ``(0, 1)``, a
            negative ``shift_copies``, or ``members`` naming no trained member of the run.

    Over 60 lines: its options are documented one by one; the body calls one function per stage.
    """
    _check_options(score, alpha, ood_method, ood_referral)
    _check_selective_options(accepted_accuracy, delta, selective_score)
    if shift_copies < 0:
        raise ConfigError(f"shift_copies must be >= 0. Received: {shift_copies}")
    directory = run.directory
    names = directory.trained_members() if members is None else _chosen_members(directory, members)
    fitting = _fit_on_half(run, names, tta, seed, shift_copies)
    if default is not None:
        if default not in fitting.cv_accuracy:
            raise ConfigError(
                f"default {default!r} is neither a combiner nor a member. Choose from "
                f"{list(fitting.cv_accuracy)}"
            )
        fitting.default = default
    notes: list[str] = []
    stage("fit-stacker", "prediction sets and the out-of-distribution detector")
    conformal = _calibrate_sets(
        directory,
        fitting,
        ConformalClassifier(score=score, mondrian=mondrian, alpha=alpha),
        notes,
    )
    fitting.files += conformal["models"].values()
    detector = None
    if ood_method is not None:
        detector = OodDetector(ood_method, target_referral=ood_referral, seed=seed)
    ood = _calibrate_ood(directory, fitting, detector, notes)
    stage("fit-stacker", "selective thresholds for the accepted accuracies")
    selective = _calibrate_selective(
        directory,
        fitting,
        SelectiveClassifier(
            _targets(accepted_accuracy), delta=delta, score=selective_score, per_class=per_class
        ),
        _flagged(fitting, detector if ood is not None else None),
        notes,
    )
    default_refer = _choose_rule(fitting, detector if ood is not None else None)
    selection = Selection(
        members=names,
        member_model_sha256=fitting.hashes,
        combiners=fitting.combiners,
        cv_accuracy_on_blend=fitting.cv_accuracy,
        default_combiner=fitting.default,
        n_blend=len(fitting.labels),
        tta=tta,
        shift_copies=shift_copies,
        artifact_sha256={
            name: file_sha256(directory.combiners_dir / name) for name in sorted(fitting.files)
        },
        calibration={
            "design": DESIGN,
            "split_file": CALIBRATION_SPLIT,
            "n_blend_fit": int((~fitting.calibration_rows).sum()),
            "conformal": conformal,
            "ood": ood,
            "selective": selective,
            "default_refer": default_refer,
            "warnings": notes,
        },
    )
    selection.write(directory)
    return selection


@dataclass
class _Fitting:
    """What fitting the combiners on half of blend hands to the referral's calibration.

    Attributes:
        names: the members combined, in order.
        hashes: each member's model hash.
        val: each member's cached outputs on val (``{"probabilities", "features", …}``).
        blend: the same on blend.
        scaler: the temperatures, fitted on val.
        labels: blend's classes; ``ids`` its image ids.
        calibration_rows: the blend rows held out to calibrate (the rest fitted the combiners).
        fitted: every fitted combiner, by name.
        cv_accuracy: every combiner's and member's cross-validated accuracy on the fitting half.
        default: the combiner chosen by that accuracy.
        combiners: every registered combiner's name.
        files: what was written in the combiners folder so far.
        conformal: every model's fitted prediction sets, by name (once calibrated).
        selective: every model's fitted selective rule, by name (once calibrated).
    """

    names: list[str]
    hashes: dict[str, str]
    val: dict[str, dict]
    blend: dict[str, dict]
    scaler: TemperatureScaling
    labels: np.ndarray
    ids: list[str]
    calibration_rows: np.ndarray
    fitted: dict[str, Combiner]
    cv_accuracy: dict[str, float]
    default: str
    combiners: list[str]
    files: list[str] = field(default_factory=list)
    conformal: dict[str, ConformalClassifier] = field(default_factory=dict)
    selective: dict[str, SelectiveClassifier] = field(default_factory=dict)

    @property
    def calibration_labels(self) -> np.ndarray:
        """The classes of the calibration half."""
        return self.labels[self.calibration_rows]

    @cached_property
    def held_out_probabilities(self) -> dict[str, np.ndarray]:
        """Every combiner's and member's probabilities on the calibration half."""
        held_out = _rows(_outputs(self.blend, self.names, self.scaler), self.calibration_rows)
        probabilities = {name: combiner.combine(held_out) for name, combiner in self.fitted.items()}
        return probabilities | dict(zip(self.names, held_out.calibrated, strict=True))

    @cached_property
    def val_probabilities(self) -> dict[str, np.ndarray]:
        """Every combiner's and member's probabilities on val (which fitted no combiner)."""
        val_outputs = _outputs(self.val, self.names, self.scaler)
        probabilities = {
            name: combiner.combine(val_outputs) for name, combiner in self.fitted.items()
        }
        return probabilities | dict(zip(self.names, val_outputs.calibrated, strict=True))


def _fit_on_half(run: Run, names: list[str], tta: bool, seed: int, shift_copies: int) -> _Fitting:
    """Temperatures on val, then every combiner on one half of blend (and its shifted copies).

    Writes the temperatures, every combiner and ``calibration-split.json``; chooses the default
    combiner by cross-validated accuracy on the fitting half.
    """
    directory = run.directory
    hashes = directory.model_hashes(names)
    stage("fit-stacker", f"outputs of {len(names)} members on val and blend{_views(tta)}")
    val = _member_outputs(run, names, "val", tta, hashes)
    blend = _member_outputs(run, names, "blend", tta, hashes)
    labels = blend[names[0]]["labels"]
    ids = [str(i) for i in blend[names[0]]["ids"]]
    scaler = TemperatureScaling().fit(_stack(val, names), val[names[0]]["labels"])
    directory.combiners_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory.combiners_dir / TEMPERATURES, {"members": names, **scaler.state()})
    stage("fit-stacker", "temperatures on val; every combiner on one half of blend")
    calibration_rows = halve_blend(ids, labels, _duplicate_groups(run, ids), seed)
    fit_rows = ~calibration_rows
    fitting_set = Blend(
        outputs=_rows(_outputs(blend, names, scaler), fit_rows),
        labels=labels[fit_rows],
        ids=[image_id for image_id, keep in zip(ids, fit_rows, strict=True) if keep],
        split_of=run.split.assignment,
        folds=blend_folds(labels[fit_rows], seed),
    )
    if shift_copies:
        copies = shifted_outputs(run, names, fit_rows, shift_copies, tta=tta, scaler=scaler)
        fitting_set = with_copies(fitting_set, copies)
    cv_accuracy, files, fitted = _fit_every_combiner(directory, fitting_set, names, hashes, seed)
    for name, member_probabilities in zip(names, fitting_set.outputs.calibrated, strict=True):
        cv_accuracy[name] = round(
            float((member_probabilities.argmax(1) == fitting_set.labels).mean()), 6
        )
    atomic_write_json(
        directory.combiners_dir / CALIBRATION_SPLIT,
        {
            "design": DESIGN,
            "seed": seed,
            "blend_fit_ids": [i for i, keep in zip(ids, fit_rows, strict=True) if keep],
            "calibration_ids": [i for i, keep in zip(ids, calibration_rows, strict=True) if keep],
        },
    )
    combiners = list(registered_combiners())
    return _Fitting(
        names=names,
        hashes=hashes,
        val=val,
        blend=blend,
        scaler=scaler,
        labels=labels,
        ids=ids,
        calibration_rows=calibration_rows,
        fitted=fitted,
        cv_accuracy=cv_accuracy,
        default=choose_default(cv_accuracy, combiners),
        combiners=combiners,
        files=[*files, CALIBRATION_SPLIT],
    )


def _calibrate_ood(
    directory: RunDir, fitting: _Fitting, detector: OodDetector | None, notes: list[str]
) -> dict | None:
    """Fit the OOD detector on val and calibrate it on blend (``None``: no detector)."""
    if detector is None:
        return None
    ood = _fit_ood(
        directory,
        _ood_inputs(detector.method, fitting.val, fitting.names, fitting.scaler),
        fitting.val[fitting.names[0]]["labels"],
        _ood_inputs(detector.method, fitting.blend, fitting.names, fitting.scaler),
        fitting.hashes,
        detector,
        notes,
    )
    if ood is not None:
        fitting.files.append(OOD)
    return ood


def _flagged(fitting: _Fitting, detector: OodDetector | None) -> np.ndarray | None:
    """The calibration half's out-of-distribution flags (``None`` without a detector)."""
    if detector is None:
        return None
    inputs = _ood_inputs(detector.method, fitting.blend, fitting.names, fitting.scaler)
    rows = fitting.calibration_rows
    return detector.score({name: values[rows] for name, values in inputs.items()}) > (
        detector.threshold()
    )


#: Miss rates the conformal rule is tried at when the default rule is chosen on val.
RULE_CHOICE_ALPHAS = (0.2, 0.1, 0.05, 0.03, 0.02, 0.015, 0.01, 0.007, 0.005, 0.003, 0.002, 0.001)


def _choose_rule(fitting: _Fitting, detector: OodDetector | None) -> dict | None:
    """The referral rule that refers fewest val images for the same accepted accuracy.

    The selective rule at its first target gives an accepted accuracy on val; the conformal
    rule is tried at :data:`RULE_CHOICE_ALPHAS` and the smallest referral reaching that
    accuracy taken. The rule that refers less becomes predict's default (``None``: the run
    is too small for either to accept anything, and the earlier default stands). Reads the
    prediction sets and selective rules calibrated before it (``fitting.conformal``,
    ``fitting.selective``).
    """
    name = fitting.default
    probabilities = fitting.val_probabilities[name]
    labels = fitting.val[fitting.names[0]]["labels"]
    correct = probabilities.argmax(axis=1) == labels
    flagged = None
    if detector is not None:
        inputs = _ood_inputs(detector.method, fitting.val, fitting.names, fitting.scaler)
        flagged = detector.score(inputs) > detector.threshold()
    selective = fitting.selective[name]
    accepted = selective.accept(probabilities, None, flagged)
    if not accepted.any():
        return None
    target_accuracy = float(correct[accepted].mean())
    result = {
        "chosen_on": "val",
        "combiner": name,
        "accepted_accuracy": selective.targets[0],
        "selective": {"referred": float(1 - accepted.mean()), "accuracy": target_accuracy},
        "conformal": None,
    }
    conformal = fitting.conformal[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        for alpha in RULE_CHOICE_ALPHAS:
            sets = conformal.predict_sets(probabilities, alpha)
            kept = ~conformal_referral(probabilities, sets, flagged)
            if kept.any() and correct[kept].mean() >= target_accuracy:
                referred = float(1 - kept.mean())
                best = result["conformal"]
                if best is None or referred < best["referred"]:
                    result["conformal"] = {
                        "alpha": alpha,
                        "referred": referred,
                        "accuracy": float(correct[kept].mean()),
                    }
    conformal_referred = (result["conformal"] or {}).get("referred", 1.0)
    result["rule"] = (
        "selective" if result["selective"]["referred"] <= conformal_referred else "conformal"
    )
    return result


def _check_selective_options(
    accepted_accuracy: float | None, delta: float, selective_score: str
) -> None:
    _targets(accepted_accuracy)
    check_rate(delta, "delta")
    if selective_score not in SELECTIVE_SCORES:
        raise ConfigError(
            f"unknown selective score. Choose from {list(SELECTIVE_SCORES)}. "
            f"Received: {selective_score!r}"
        )


def _chosen_members(directory: RunDir, members: list[str]) -> list[str]:
    """``members``, checked: each a finished member of the run, none twice."""
    known = directory.manifest["members"]
    unknown = [name for name in members if name not in known]
    if unknown or not members:
        raise ConfigError(
            f"members must name members of the run {directory.root}. Choose from {known}. "
            f"Received: {members}"
        )
    if len(set(members)) != len(members):
        raise ConfigError(f"members must not repeat a name. Received: {members}")
    unfinished = [name for name in members if not directory.is_finished(name)]
    if unfinished:
        raise RunError(
            f"members not trained yet in {directory.root}: {unfinished}. Run `ensemble "
            "train-members` first (and let it finish)."
        )
    return list(members)


def _views(tta: bool) -> str:
    return " (8 dihedral views each)" if tta else ""


def choose_default(cv_accuracy: dict[str, float], combiners: list[str]) -> str:
    """The highest cross-validated blend accuracy; ties go to a combiner, then the earlier one.

    Args:
        cv_accuracy: combiner or member name → cross-validated blend accuracy, in order.
        combiners: which of the names are combiners (the rest are members).
    """
    order = list(cv_accuracy)
    return min(order, key=lambda k: (-cv_accuracy[k], k not in combiners, order.index(k)))


def halve_blend(
    ids: list[str], labels: np.ndarray, groups: list[list[str]], seed: int
) -> np.ndarray:
    """Which ``blend`` images calibrate the prediction sets (True) rather than fit combiners.

    Units (a duplicate group, or a single image) are dealt in a seeded order, largest first; a
    unit goes to calibration while its class's calibration share stays within half of the
    class, rounded down, else to fitting. Each class present in ``blend`` thus keeps at least
    one image for the combiners (the stacker needs every class), and a duplicate group is
    never cut, so no calibration image has a copy among the images the combiners saw.

    Args:
        ids: the blend images' ids, in order.
        labels: their class indices.
        groups: duplicate groups (ids; other ids are ignored).
        seed: the same ids, labels, groups and seed give the same halves.

    Returns:
        ``(N,)`` boolean mask over ``ids``: True = calibration.
    """
    position = {image_id: index for index, image_id in enumerate(ids)}
    units, placed = [], set()
    for group in groups:
        members = sorted(position[i] for i in group if i in position and position[i] not in placed)
        if members:
            units.append(members)
            placed.update(members)
    units += [[index] for index in range(len(ids)) if index not in placed]
    order = np.random.default_rng(seed).permutation(len(units))
    order = sorted(order, key=lambda unit: -len(units[unit]))  # stable: big groups first
    totals = np.bincount(labels, minlength=int(labels.max(initial=0)) + 1)
    quota = totals // 2
    taken = np.zeros_like(totals)
    calibration = np.zeros(len(ids), dtype=bool)
    for unit in order:
        rows = units[unit]
        label = int(np.bincount(labels[rows]).argmax())
        if taken[label] + len(rows) <= quota[label]:
            calibration[rows] = True
            taken[label] += len(rows)
    return calibration


def _duplicate_groups(run: Run, ids: list[str]) -> list[list[str]]:
    """The audit's duplicate groups, and images with the same bytes, among ``ids``."""
    wanted = set(ids)
    groups: list[list[str]] = []
    audit = run.directory.audit_path
    if audit.is_file():
        saved = json.loads(audit.read_text()).get("duplicate_groups", [])
        groups += [[i for i in group if i in wanted] for group in saved]
    by_hash: dict[str, list[str]] = {}
    for record in run.dataset.records:
        if record.id in wanted:
            by_hash.setdefault(record.content_hash, []).append(record.id)
    groups += [group for group in by_hash.values() if len(group) > 1]
    return _merge_overlapping([group for group in groups if len(group) > 1])


def _merge_overlapping(groups: list[list[str]]) -> list[list[str]]:
    """Groups that share an id merged into one (union-find)."""
    parent: dict[str, str] = {}

    def root(item: str) -> str:
        while parent.setdefault(item, item) != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for group in groups:
        for other in group[1:]:
            parent[root(other)] = root(group[0])
    merged: dict[str, list[str]] = {}
    for item in sorted(parent):
        merged.setdefault(root(item), []).append(item)
    return [group for group in merged.values() if len(group) > 1]


def _calibrate_sets(
    directory: RunDir, fitting: _Fitting, template: ConformalClassifier, notes: list[str]
) -> dict:
    """One conformal classifier per combiner and member; the record for the selection.

    Each is saved to the combiners folder and kept in ``fitting.conformal``.
    """
    probabilities, labels = fitting.held_out_probabilities, fitting.calibration_labels
    models = {}
    with warnings.catch_warnings():
        # Said once below, for every model: the counts are the same for all of them.
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        for name, model_probabilities in probabilities.items():
            conformal = ConformalClassifier(**template.get_params()).fit(
                model_probabilities, labels
            )
            conformal.save(directory.combiners_dir / conformal_file(name), fitting.hashes)
            fitting.conformal[name] = conformal
            models[name] = conformal_file(name)
    alpha, n_images = template.alpha, len(labels)
    needed = minimum_calibration_size(alpha)
    if n_images < needed:
        smallest = math.ceil(1e4 / (n_images + 1)) / 1e4 if n_images else None
        notes.append(
            f"only {n_images} blend images are held out to calibrate the prediction sets; "
            f"alpha={alpha} needs {needed}: every set holds every class, so predict refers by "
            "member agreement unless given --refer conformal"
            + (f" or --alpha >= {smallest}" if smallest and smallest < 1 else "")
        )
    elif template.mondrian:
        short = [
            directory.classes[k]
            for k in range(len(directory.classes))
            if np.sum(labels == k) < needed
        ]
        if short:
            notes.append(
                f"Mondrian calibration: classes {short} have fewer than the {needed} "
                f"calibration images alpha={alpha} needs; their thresholds fall back to the "
                "larger of the overall threshold and their largest calibration score"
            )
    return {
        **template.get_params(),
        "calibrated_on": "the calibration half of blend",
        "n_images": n_images,
        "class_counts": [int(c) for c in np.bincount(labels, minlength=len(directory.classes))],
        "models": models,
    }


def _targets(accepted_accuracy: float | None) -> tuple[float, ...]:
    """The accepted accuracies to calibrate: the one asked for first, then the defaults."""
    if accepted_accuracy is None:
        return DEFAULT_TARGETS
    asked = check_rate(accepted_accuracy, "accepted_accuracy")
    return (asked, *(target for target in DEFAULT_TARGETS if target != asked))


def _calibrate_selective(
    directory: RunDir,
    fitting: _Fitting,
    template: SelectiveClassifier,
    flagged: np.ndarray | None,
    notes: list[str],
) -> dict:
    """One selective classifier per combiner and member, saved; the record for the selection.

    The thresholds are tested on the calibration half of blend in an order fixed on val
    (:mod:`ensemble.refer.selective`); the default combiner's warnings join ``notes``.
    """
    models = {}
    ordering = fitting.val_probabilities
    labels = fitting.calibration_labels
    for name, model_probabilities in fitting.held_out_probabilities.items():
        selective = SelectiveClassifier(**template.get_params()).fit(
            model_probabilities, labels, ordering[name], flagged=flagged
        )
        selective.save(directory.combiners_dir / selective_file(name), fitting.hashes)
        fitting.selective[name] = selective
        models[name] = selective_file(name)
        if name == fitting.default:
            notes.extend(f"selective rule of {name}: {line}" for line in selective.warnings_)
    fitting.files += models.values()
    return {
        **template.get_params(),
        "calibrated_on": "the calibration half of blend, out-of-distribution images never "
        "accepted; thresholds tested in an order fixed on val",
        "n_images": len(labels),
        "models": models,
    }


def _outputs(outputs: dict[str, dict], names: list[str], scaler: TemperatureScaling):
    """Cached member outputs of one split as :class:`MemberOutputs` (temperatures applied)."""
    return cached_outputs(scaler, outputs, names)


def _fit_ood(
    directory: RunDir,
    fit_inputs: dict[str, np.ndarray],
    fit_labels: np.ndarray,
    calibration_inputs: dict[str, np.ndarray],
    hashes: dict[str, str],
    detector: OodDetector,
    notes: list[str],
) -> dict | None:
    """Fit the OOD detector on val, calibrate it on blend, save it; its record (None: none)."""
    n_calibration = len(next(iter(calibration_inputs.values())))
    rate = detector.target_referral
    if n_calibration < minimum_calibration_size(rate):
        if n_calibration < 2:
            notes.append("no OOD detector: blend has fewer than 2 images to calibrate it on")
            return None
        # The smallest rate whose threshold exists with these images, rounded up.
        rate = math.ceil(1e4 / (n_calibration + 1)) / 1e4
        notes.append(
            f"only {n_calibration} blend images to calibrate the OOD threshold; "
            f"{detector.target_referral} needs {minimum_calibration_size(detector.target_referral)}"
            f": it refers about {rate:.1%} of clean images instead"
        )
        detector.target_referral = rate
    try:
        detector.fit(fit_inputs, fit_labels)
    except ConfigError as error:
        notes.append(f"no OOD detector: {error}")
        return None
    except np.linalg.LinAlgError:
        notes.append(
            f"no OOD detector: the {len(fit_labels)} val images are too few to estimate the "
            "features' covariance"
        )
        return None
    detector.calibrate(detector.score(calibration_inputs))
    detector.save(directory.combiners_dir / OOD, hashes)
    return {
        **detector.get_params(),
        "fitted_on": "val",
        "calibrated_on": "blend",
        "n_fit": len(fit_labels),
        "n_calibration": n_calibration,
        "threshold": detector.threshold(),
        "file": OOD,
    }


def _ood_inputs(
    method: str, outputs: dict[str, dict], names: list[str], scaler: TemperatureScaling
) -> dict[str, np.ndarray]:
    """What the OOD detector reads of each member: pooled features, or calibrated probabilities.

    The same as :meth:`ensemble.serve.ensemble.Ensemble.ood_from_outputs` reads at predict time.
    """
    if method == "max_softmax":
        return dict(zip(names, scaler.transform(_stack(outputs, names)), strict=True))
    return {name: outputs[name]["features"] for name in names}


def _check_options(score: str, alpha: float, ood_method: str | None, referral: float) -> None:
    if score not in SCORES:
        raise ConfigError(
            f"unknown conformity score. Choose from {list(SCORES)}. Received: {score!r}"
        )
    if ood_method is not None and ood_method not in OOD_METHODS:
        raise ConfigError(
            f"unknown OOD method. Choose from {list(OOD_METHODS)}. Received: {ood_method!r}"
        )
    for name, value in (("alpha", alpha), ("ood_referral", referral)):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{name} must be strictly between 0 and 1. Received: {name}={value}")


def _member_outputs(
    run: Run, names: list[str], split_name: str, tta: bool, hashes: dict[str, str]
) -> dict[str, dict]:
    return {
        name: cached_member_outputs(run, name, split_name, tta=tta, model_sha256=hashes[name])
        for name in names
    }


def _stack(outputs: dict[str, dict], names: list[str]) -> np.ndarray:
    return np.stack([outputs[name]["probabilities"] for name in names])


def _rows(outputs: MemberOutputs, rows: np.ndarray) -> MemberOutputs:
    return outputs.rows(rows)


def _fit_every_combiner(
    directory: RunDir, blend: Blend, names: list[str], hashes: dict[str, str], seed: int
) -> tuple[dict[str, float], list[str], dict[str, Combiner]]:
    """Fit and save each registered combiner; its cross-validated accuracy, files and itself."""
    cv_accuracy: dict[str, float] = {}
    files = [TEMPERATURES]
    fitted = {}
    for name, cls in registered_combiners().items():
        combiner = cls.create(names, seed).fit_blend(blend)
        cv_accuracy[name] = combiner.cross_validated_accuracy(blend)
        combiner.save(directory.combiners_dir, member_hashes=hashes, classes=directory.classes)
        stage("fit-stacker", f"{name}: cross-validated accuracy {cv_accuracy[name]:.4f}")
        files += cls.files()
        fitted[name] = combiner
    return cv_accuracy, files, fitted
