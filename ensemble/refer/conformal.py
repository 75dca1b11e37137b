"""Split-conformal prediction sets on precomputed class probabilities.

A :class:`ConformalClassifier` turns the ensemble's class probabilities ``(N, K)`` into a
*prediction set* per image: every class that cannot be ruled out at miscoverage ``alpha``. If
the calibration images and a new image are exchangeable, the set holds the true class with
probability at least ``1 - alpha`` (Vovk et al. 2005; Angelopoulos & Bates 2021). A set of one
class is a confident prediction; a larger (or empty) set is a reason to refer the image to a
human (:func:`referral_summary`).

Conformity scores (larger = stranger for that candidate class):

* ``"lac"`` — ``1 - p[y]`` (Sadinle et al. 2019). Smallest sets on average when the
  probabilities are calibrated; coverage can be uneven across classes.
* ``"aps"`` — the probability mass of every class ranked at or above ``y`` (Romano et al. 2020):
  sets adapt to how spread out the probabilities are.
* ``"raps"`` — APS plus ``raps_lambda * max(0, rank(y) - raps_k_reg)`` (Angelopoulos et al.
  2021): penalises long tails of unlikely classes, so sets stay small.

``randomized=True`` (APS and RAPS only) replaces the mass of ``y`` itself by a uniform fraction
``u * p[y]`` of it, which makes coverage exactly ``1 - alpha`` instead of at least; ``u`` comes
from a generator seeded by ``seed``, so the same call gives the same sets.

Decisions, and why:

* **Alpha at predict time.** The fitted object keeps every calibration score (sorted), so
  :meth:`ConformalClassifier.predict_sets` and :meth:`ConformalClassifier.thresholds` work for any
  ``alpha`` without refitting; the threshold is the ``ceil((n + 1)(1 - alpha))``-th smallest
  score (the finite-sample correction). With fewer than ``1/alpha - 1`` images that rank does not
  exist: the threshold is infinite and every class is in every set (with a
  :class:`SmallCalibrationWarning`).
* **Empty sets are allowed.** When no class's score is under the threshold (all probabilities
  low under LAC, or one dominant class above a low APS threshold at a *large* alpha) the set is
  empty. Forcing the argmax in would turn the least typical images into singletons that
  :func:`referral_summary` would accept; an empty set is instead referred like any set that is
  not a singleton, and the coverage guarantee stays exact rather than inflated.
* **Mondrian (class-conditional) calibration** (``mondrian=True``): each class gets its own
  threshold from the calibration images of that class, so coverage holds per class. A class
  with fewer calibration images than ``alpha`` needs (:func:`minimum_calibration_size`) cannot
  have its own threshold; it falls back to the larger of the marginal threshold and its own
  largest calibration score (still non-decreasing as ``alpha`` shrinks, so sets stay nested),
  is listed by :meth:`ConformalClassifier.fallback_classes` (``fallback_classes_`` for the
  default alpha) and a :class:`SmallCalibrationWarning` names it.

Why not MAPIE or crepes: both were checked. MAPIE 1.x (``SplitConformalClassifier``) needs an
estimator shim for precomputed probabilities, fixes the confidence levels at calibration time,
always randomises its APS calibration scores, has no class-conditional mode, and saves only by
pickle. crepes fits precomputed scores cleanly (``ConformalClassifier`` on non-conformity
scores, Mondrian via ``bins``) but saves by pickle and pulls in pandas. The core here is a sort
and an order statistic, so it is written in numpy, saved as readable JSON with the SHA-256 of
the members it was calibrated for, and cross-checked against MAPIE's LAC sets and APS scores in
``tests/test_conformal.py``.

Example:
    >>> conformal = ConformalClassifier(score="aps", mondrian=True).fit(p_cal, y_cal)
    >>> sets = conformal.predict_sets(p_test, alpha=0.05)   # (N, K) bool
    >>> coverage(sets, y_test), mean_set_size(sets)
    >>> conformal.save("runs/NAME/combiners/conformal-soft.json", member_hashes)
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ensemble.core.errors import ConfigError, NotFittedError, RunError
from ensemble.core.fileio import atomic_write_json
from ensemble.core.hashes import check_recorded_hashes
from ensemble.core.version import FORMAT_VERSION

SCORES = ("lac", "aps", "raps")
#: The conformity score fit-stacker uses unless told otherwise.
DEFAULT_SCORE = "lac"
DEFAULT_ALPHA = 0.01
FORMAT = "blood-ensemble/conformal-classifier"
#: Probability rows may sum to 1 within this: float32 softmax outputs and averaged test-time
#: views are off by ~1e-6; anything further off is not a probability row.
ROW_SUM_TOLERANCE = 1e-3
#: Guards ceil() against products such as 1000 * 0.9 = 900.0000000000001 in floating point.
_RANK_SLACK = 1e-9


class SmallCalibrationWarning(UserWarning):
    """Too few calibration images for the requested ``alpha``: some thresholds are not exact."""


def minimum_calibration_size(alpha: float) -> int:
    """Fewest calibration images that give a finite threshold at ``alpha``.

    The threshold is the ``ceil((n + 1)(1 - alpha))``-th smallest of ``n`` scores, which exists
    only when ``n >= 1/alpha - 1``: 9 images for ``alpha = 0.1``, 19 for 0.05, 99 for 0.01.

    Raises:
        ConfigError: ``alpha`` is not strictly between 0 and 1.
    """
    alpha = check_rate(alpha, "alpha")
    return max(0, math.ceil(1.0 / alpha - 1.0 - _RANK_SLACK))


def conformal_quantile(sorted_scores: np.ndarray, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest score; ``inf`` when ``n`` is too small."""
    n = len(sorted_scores)
    rank = math.ceil((n + 1) * (1.0 - alpha) - _RANK_SLACK)
    return float(sorted_scores[rank - 1]) if 0 < rank <= n else math.inf


class ConformalClassifier:
    """Split-conformal prediction sets on precomputed class probabilities.

    Args:
        score: conformity score: ``"lac"``, ``"aps"`` or ``"raps"`` (see the module docstring).
        mondrian: one threshold per class (class-conditional coverage) instead of one for all.
        alpha: default miscoverage when ``predict_sets`` / ``thresholds`` get ``alpha=None``.
        randomized: APS/RAPS only: randomise the mass of the candidate class itself (exact
            rather than conservative coverage; sets then depend on ``seed``).
        seed: seeds the uniform draws of ``randomized``.
        raps_lambda: RAPS penalty per rank beyond ``raps_k_reg`` (ignored by LAC and APS).
        raps_k_reg: RAPS: ranks up to this one are not penalised.

    Attributes (after :meth:`fit`):
        n_classes_: number of classes ``K`` (the probability columns).
        calibration_scores_: every calibration image's score for its true class, ascending.
        calibration_labels_: the true class of each score in ``calibration_scores_``.
        class_counts_: calibration images per class.
        fallback_classes_: Mondrian classes too small for the default ``alpha`` (empty when
            ``mondrian`` is off).

    Example:
        >>> conformal = ConformalClassifier(score="lac").fit(p_cal, y_cal)
        >>> conformal.predict_sets(p_test, alpha=0.05).sum(axis=1)   # set sizes
    """

    def __init__(
        self,
        score: str = "lac",
        mondrian: bool = False,
        alpha: float = DEFAULT_ALPHA,
        randomized: bool = False,
        seed: int = 0,
        raps_lambda: float = 0.01,
        raps_k_reg: int = 1,
    ) -> None:
        self.score = score
        self.mondrian = mondrian
        self.alpha = alpha
        self.randomized = randomized
        self.seed = seed
        self.raps_lambda = raps_lambda
        self.raps_k_reg = raps_k_reg

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (what :meth:`save` writes and :meth:`load` rebuilds from)."""
        return {
            "score": self.score,
            "mondrian": self.mondrian,
            "alpha": self.alpha,
            "randomized": self.randomized,
            "seed": self.seed,
            "raps_lambda": self.raps_lambda,
            "raps_k_reg": self.raps_k_reg,
        }

    def fit(self, probabilities: ArrayLike, labels: ArrayLike) -> ConformalClassifier:
        """Score the calibration images and keep the scores, sorted.

        The calibration images must not have been used to fit the members or the combiner
        that produced ``probabilities``; otherwise their scores are optimistic and the sets
        under-cover.

        Args:
            probabilities: ``(N, K)`` class probabilities of the calibration images.
            labels: ``(N,)`` their true class indices in ``[0, K)``.

        Returns:
            ``self``, fitted.

        Raises:
            ConfigError: an invalid constructor argument, probabilities that are not rows
                summing to 1, or labels that do not match them.

        Warns:
            SmallCalibrationWarning: too few images (overall, or for a class with
                ``mondrian``) for the default ``alpha``.
        """
        self._check_params()
        probabilities = check_probabilities(probabilities)
        n_images, n_classes = probabilities.shape
        labels = _check_labels(labels, n_images, n_classes)
        uniforms = self._uniforms(n_images, stream=0)
        scores = self._scores(probabilities, uniforms)[np.arange(n_images), labels]
        order = np.argsort(scores, kind="stable")
        self.n_classes_ = n_classes
        self.calibration_scores_ = scores[order]
        self.calibration_labels_ = labels[order]
        self.class_counts_ = np.bincount(labels, minlength=n_classes)
        self.fallback_classes_ = self.fallback_classes(self.alpha)
        self.thresholds(self.alpha)  # warns now, at calibration, if the default alpha is short
        return self

    def thresholds(self, alpha: float | None = None) -> np.ndarray:
        """Score threshold per class at miscoverage ``alpha``.

        Class ``k`` is in an image's set when its conformity score is at most ``thresholds[k]``.

        Args:
            alpha: miscoverage in ``(0, 1)``; ``None`` uses the constructor's ``alpha``.

        Returns:
            ``(K,)`` thresholds (all equal unless ``mondrian``); ``inf`` where the calibration
            set is too small for ``alpha``.

        Raises:
            NotFittedError: before :meth:`fit`.
            ConfigError: ``alpha`` outside ``(0, 1)``.

        Warns:
            SmallCalibrationWarning: naming the classes (or the whole set) that are too small.
        """
        alpha = self._resolve_alpha(alpha)
        needed = minimum_calibration_size(alpha)
        marginal = conformal_quantile(self.calibration_scores_, alpha)
        if math.isinf(marginal):
            warnings.warn(
                f"only {len(self.calibration_scores_)} calibration images, fewer than the "
                f"{needed} that alpha={alpha} needs: every class is in every set",
                SmallCalibrationWarning,
                stacklevel=2,
            )
        if not self.mondrian:
            return np.full(self.n_classes_, marginal)
        thresholds = np.empty(self.n_classes_)
        for k in range(self.n_classes_):
            # A subset of an ascending array is ascending: no sort needed per class.
            own = self.calibration_scores_[self.calibration_labels_ == k]
            if len(own) >= needed:
                thresholds[k] = conformal_quantile(own, alpha)
            else:
                # max() keeps thresholds non-decreasing as alpha shrinks, so sets stay nested.
                thresholds[k] = max(marginal, float(own[-1]) if len(own) else -math.inf)
        short = self.fallback_classes(alpha)
        if short:
            warnings.warn(
                f"Mondrian calibration: classes {short} have "
                f"{[int(self.class_counts_[k]) for k in short]} calibration images, fewer than "
                f"the {needed} that alpha={alpha} needs; their thresholds fall back to the "
                "larger of the marginal threshold and their largest calibration score",
                SmallCalibrationWarning,
                stacklevel=2,
            )
        return thresholds

    def fallback_classes(self, alpha: float | None = None) -> list[int]:
        """Classes whose Mondrian threshold falls back at ``alpha`` (always ``[]`` if marginal).

        Raises:
            NotFittedError: before :meth:`fit`.
            ConfigError: ``alpha`` outside ``(0, 1)``.
        """
        alpha = self._resolve_alpha(alpha)
        if not self.mondrian:
            return []
        needed = minimum_calibration_size(alpha)
        return [k for k in range(self.n_classes_) if self.class_counts_[k] < needed]

    def conformity_scores(self, probabilities: ArrayLike) -> np.ndarray:
        """Every candidate class's conformity score ``(N, K)``; larger = less plausible.

        With ``randomized`` the uniform draws come from a generator seeded by ``seed``, one per
        row in order: the same array gives the same scores.

        Raises:
            NotFittedError: before :meth:`fit`.
            ConfigError: probabilities that are not ``K`` columns of rows summing to 1.
        """
        self._check_fitted()
        probabilities = check_probabilities(probabilities, self.n_classes_)
        return self._scores(probabilities, self._uniforms(len(probabilities), stream=1))

    def predict_sets(self, probabilities: ArrayLike, alpha: float | None = None) -> np.ndarray:
        """Prediction sets: ``sets[i, k]`` is True when class ``k`` is plausible for image ``i``.

        Args:
            probabilities: ``(N, K)`` class probabilities, from the same members and combiner
                as the calibration probabilities.
            alpha: miscoverage in ``(0, 1)``; ``None`` uses the constructor's ``alpha``
                (default 0.01: sets hold the true class for at least 99 % of images).

        Returns:
            ``(N, K)`` boolean mask; a row may be empty (see the module docstring).

        Raises:
            NotFittedError: before :meth:`fit`.
            ConfigError: bad ``alpha`` or probabilities.

        Example:
            >>> sets = conformal.predict_sets(p_test, alpha=0.05)
            >>> referred = sets.sum(axis=1) != 1
        """
        thresholds = self.thresholds(alpha)
        return self.conformity_scores(probabilities) <= thresholds[None, :]

    def save(self, path: Path | str, member_hashes: dict[str, str]) -> None:
        """Write the fitted state as JSON (atomically), with the hashes it was calibrated for.

        Args:
            path: the ``.json`` file to write.
            member_hashes: SHA-256 of every model file the probabilities came from, by name
                (the members and, for a fitted combiner, its file); :meth:`load` refuses the file
                unless it is given the same.

        Raises:
            NotFittedError: before :meth:`fit`.

        The format (``format_version`` 1)::

            {"format": "blood-ensemble/conformal-classifier", "format_version": 1,
             "params": {constructor arguments}, "n_classes": K,
             "member_sha256": {name: sha256},
             "calibration_scores": [ascending floats], "calibration_labels": [ints]}
        """
        self._check_fitted()
        atomic_write_json(
            path,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "params": self.get_params(),
                "n_classes": int(self.n_classes_),
                "member_sha256": dict(member_hashes),
                # repr() of a float round-trips exactly: the loaded sets equal these.
                "calibration_scores": [float(s) for s in self.calibration_scores_],
                "calibration_labels": [int(y) for y in self.calibration_labels_],
            },
        )

    @classmethod
    def load(cls, path: Path | str, expected_hashes: dict[str, str]) -> ConformalClassifier:
        """Read a classifier written by :meth:`save`, refusing one calibrated for other members.

        Args:
            path: the JSON file.
            expected_hashes: SHA-256 of the current members (and combiner), by name.

        Raises:
            RunError: no such file, not a conformal calibration file, or calibrated for other
                members (the message names the file and says to re-run the calibration).
        """
        payload = read_fitted_json(path, FORMAT, "conformal calibration")
        check_member_hashes(
            path, payload["member_sha256"], expected_hashes, "conformal calibration"
        )
        try:
            conformal = cls(**payload["params"])
            conformal._check_params()
            scores = np.asarray(payload["calibration_scores"], dtype=np.float64)
            labels = np.asarray(payload["calibration_labels"], dtype=np.int64)
            n_classes = int(payload["n_classes"])
        except (KeyError, TypeError, ValueError, ConfigError) as error:
            raise RunError(
                f"{path} is not a valid conformal calibration ({error}). Re-run the calibration."
            ) from None
        if (
            scores.shape != labels.shape
            or labels.min(initial=0) < 0
            or labels.max(initial=0) >= n_classes
        ):
            raise RunError(
                f"{path} is not a valid conformal calibration (scores and labels do not match). "
                "Re-run the calibration."
            )
        conformal.n_classes_ = n_classes
        conformal.calibration_scores_ = scores
        conformal.calibration_labels_ = labels
        conformal.class_counts_ = np.bincount(labels, minlength=n_classes)
        conformal.fallback_classes_ = conformal.fallback_classes(conformal.alpha)
        return conformal

    def _check_params(self) -> None:
        if self.score not in SCORES:
            raise ConfigError(
                f"unknown conformity score. Choose from {list(SCORES)}. "
                f"Received: score={self.score!r}"
            )
        check_rate(self.alpha, "alpha")
        for name in ("mondrian", "randomized"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"{name} must be True or False. Received: {name}={getattr(self, name)!r}"
                )
        if self.randomized and self.score == "lac":
            raise ConfigError(
                "randomized applies to the 'aps' and 'raps' scores only (LAC scores need no "
                "tie-breaking). Received: score='lac', randomized=True"
            )
        if not isinstance(self.seed, int | np.integer) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer. Received: seed={self.seed!r}")
        if not is_real_number(self.raps_lambda) or not self.raps_lambda >= 0:
            raise ConfigError(
                f"raps_lambda must be a number >= 0. Received: raps_lambda={self.raps_lambda!r}"
            )
        if not isinstance(self.raps_k_reg, int | np.integer) or self.raps_k_reg < 0:
            raise ConfigError(
                f"raps_k_reg must be an integer >= 0. Received: raps_k_reg={self.raps_k_reg!r}"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "calibration_scores_"):
            raise NotFittedError(type(self).__name__)

    def _resolve_alpha(self, alpha: float | None) -> float:
        self._check_fitted()
        return check_rate(self.alpha if alpha is None else alpha, "alpha")

    def _uniforms(self, n_images: int, stream: int) -> np.ndarray | None:
        # Separate streams for calibration (0) and prediction (1): the draws of a test image
        # must not be the draws of the calibration image in the same position.
        if not self.randomized:
            return None
        return np.random.default_rng([self.seed, stream]).random(n_images)

    def _scores(self, probabilities: np.ndarray, uniforms: np.ndarray | None) -> np.ndarray:
        if self.score == "lac":
            return 1.0 - probabilities
        n_classes = probabilities.shape[1]
        # Stable sort on -p: tied classes are ranked by index, the same at calibration and test.
        order = np.argsort(-probabilities, axis=1, kind="stable")
        ranked = np.take_along_axis(probabilities, order, axis=1)
        cumulative = np.cumsum(ranked, axis=1)
        if uniforms is None:
            ranked_scores = np.minimum(cumulative, 1.0)  # rounding may push the last sum past 1
        else:
            ranked_scores = cumulative - ranked + uniforms[:, None] * ranked
        if self.score == "raps":
            ranks = np.arange(1, n_classes + 1)
            ranked_scores = ranked_scores + self.raps_lambda * np.maximum(
                0, ranks - self.raps_k_reg
            )
        scores = np.empty_like(ranked_scores)
        np.put_along_axis(scores, order, ranked_scores, axis=1)
        return scores


# --- empirical evaluation ---------------------------------------------------------------------


def set_sizes(sets: ArrayLike) -> np.ndarray:
    """Number of classes in each prediction set, ``(N,)``."""
    return _check_sets(sets).sum(axis=1)


def coverage(sets: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of images whose set holds their true class.

    Raises:
        ConfigError: ``sets`` is not a 2-D mask, or ``labels`` does not match it.
    """
    sets = _check_sets(sets)
    labels = _check_labels(labels, *sets.shape)
    return float(sets[np.arange(len(labels)), labels].mean()) if len(labels) else math.nan


def mean_set_size(sets: ArrayLike) -> float:
    """Mean number of classes per prediction set."""
    sizes = set_sizes(sets)
    return float(sizes.mean()) if len(sizes) else math.nan


def per_class_coverage(sets: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Coverage among the images of each true class, ``(K,)``; NaN for a class with none."""
    sets = _check_sets(sets)
    labels = _check_labels(labels, *sets.shape)
    covered = sets[np.arange(len(labels)), labels]
    counts = np.bincount(labels, minlength=sets.shape[1])
    hits = np.bincount(labels, weights=covered, minlength=sets.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def referral_summary(sets: ArrayLike, labels: ArrayLike) -> dict[str, float | int | None]:
    """Accept an image when its set is a single class, refer it otherwise.

    Returns:
        ``n_images``, ``n_accepted``, ``n_empty`` (empty sets, referred), ``referral_rate``,
        and ``accepted_accuracy`` (how often the single class is the true one; ``None`` when
        no image is accepted). JSON-ready.

    Example:
        >>> referral_summary(conformal.predict_sets(p_test, alpha=0.05), y_test)
        {'n_images': 1439, 'n_accepted': 1391, 'n_empty': 0, 'referral_rate': 0.033, ...}
    """
    sets = _check_sets(sets)
    labels = _check_labels(labels, *sets.shape)
    sizes = sets.sum(axis=1)
    accepted = sizes == 1
    n_accepted = int(accepted.sum())
    correct = sets[np.arange(len(labels)), labels] & accepted
    return {
        "n_images": len(labels),
        "n_accepted": n_accepted,
        "n_empty": int((sizes == 0).sum()),
        "referral_rate": float(1.0 - n_accepted / len(labels)) if len(labels) else math.nan,
        "accepted_accuracy": float(correct.sum() / n_accepted) if n_accepted else None,
    }


# --- argument checks, shared with ensemble.refer.ood ----------------------------------------


def check_probabilities(probabilities: ArrayLike, n_classes: int | None = None) -> np.ndarray:
    """``probabilities`` as float64 ``(N, K)`` rows of non-negative numbers summing to 1.

    Raises:
        ConfigError: wrong shape, wrong width (when ``n_classes`` is given), non-finite or
            negative values, or a row whose sum is off by more than ``ROW_SUM_TOLERANCE``.
    """
    try:
        probabilities = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            "probabilities must be a numeric array (n_images, n_classes). "
            f"Received: type={type(probabilities).__name__}"
        ) from None
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ConfigError(
            "probabilities must have shape (n_images, n_classes) with at least 2 classes. "
            f"Received: shape={probabilities.shape}"
        )
    if n_classes is not None and probabilities.shape[1] != n_classes:
        raise ConfigError(
            f"probabilities must have {n_classes} columns, one per class seen at fit time. "
            f"Received: n_classes={probabilities.shape[1]}"
        )
    if not np.all(np.isfinite(probabilities)) or np.any(probabilities < 0):
        row = int(np.flatnonzero(~np.all(np.isfinite(probabilities) & (probabilities >= 0), 1))[0])
        raise ConfigError(
            "probabilities must be finite and non-negative. "
            f"Received: row {row} = {probabilities[row].tolist()}"
        )
    sums = probabilities.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
    if len(off):
        raise ConfigError(
            f"each row of probabilities must sum to 1 (within {ROW_SUM_TOLERANCE}); "
            f"{len(off)} rows do not. Received: row {int(off[0])} sums to {sums[off[0]]:.6g}"
        )
    return probabilities


def _check_labels(labels: ArrayLike, n_images: int, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n_images:
        raise ConfigError(
            f"labels must be a 1-D array with one class index per image ({n_images}). "
            f"Received: labels shape={labels.shape}"
        )
    if n_images and not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"labels must be integer class indices. Received: labels dtype={labels.dtype}"
        )
    labels = labels.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if len(bad):
        raise ConfigError(
            f"labels must be class indices in [0, {n_classes}). Received: label={int(bad[0])}"
        )
    return labels


def _check_sets(sets: ArrayLike) -> np.ndarray:
    sets = np.asarray(sets)
    if sets.ndim != 2 or sets.dtype != np.bool_:
        raise ConfigError(
            "sets must be a boolean mask (n_images, n_classes), as predict_sets returns. "
            f"Received: shape={sets.shape}, dtype={sets.dtype}"
        )
    return sets


def is_real_number(value: Any) -> bool:
    """True for an int or float (numpy's too), False for bool and anything else."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def check_rate(value: Any, name: str) -> float:
    """``value`` as a float strictly between 0 and 1, or a ConfigError naming ``name``."""
    if not is_real_number(value) or not 0.0 < float(value) < 1.0:
        raise ConfigError(
            f"{name} must be a number strictly between 0 and 1. Received: {name}={value!r}"
        )
    return float(value)


# --- fitted-state files, shared with ensemble.refer.ood -------------------------------------


def read_fitted_json(path: Path | str, format_name: str, what: str) -> dict[str, Any]:
    """The JSON payload of a fitted-state file, checked for its ``format`` and version.

    Raises:
        RunError: no such file, not JSON, or another format or version (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no {what} at {path}. Run the calibration first.")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path} is not valid JSON ({error}). Re-run the calibration.") from None
    if not isinstance(payload, dict) or payload.get("format") != format_name:
        raise RunError(f"{path} is not a saved {what} (format {format_name!r} expected).")
    if payload.get("format_version") != FORMAT_VERSION:
        raise RunError(
            f"{path} has format_version {payload.get('format_version')!r}; this version reads "
            f"{FORMAT_VERSION}. Re-run the calibration."
        )
    if not isinstance(payload.get("member_sha256"), dict):
        raise RunError(f"{path} is not a valid {what} (no member_sha256). Re-run the calibration.")
    return payload


def check_member_hashes(
    path: Path | str, saved: dict[str, str], expected: dict[str, str], what: str
) -> None:
    """Refuse a fitted state calibrated for other members (or another combiner).

    Raises:
        RunError: one line naming the file, the names whose hash differs, and what to do.
    """
    check_recorded_hashes(
        saved,
        expected,
        f"the {what} in {path} was calibrated for other members (changed: {{changed}}). "
        "Re-run the calibration on the current members.",
    )
