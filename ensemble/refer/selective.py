"""Selective classification with a guarantee: "accept only what is right 99.5 % of the time".

A lab asks how many of the cells the tool answers alone can be wrong, and how many it will have
to look at. :class:`SelectiveClassifier` answers the first with a guarantee and minimises the
second: it accepts an image when its score (the combiner's confidence, or the margin between
its two most probable classes) is at least a threshold, and chooses the threshold on
calibration images so that

    P( accuracy on accepted images ≥ target ) ≥ 1 − delta

for images exchangeable with the calibration ones (Learn-then-Test, Angelopoulos et al. 2021).

How (Learn-then-Test with fixed-sequence testing): candidate thresholds are the quantiles of
the score on another split (``val``) at acceptance rates 2 %, 4 %, … 100 %. For each candidate
the null hypothesis "the error rate among accepted images exceeds 1 − target" is tested with
the exact binomial test on the calibration images it accepts (``k`` wrong of ``n`` accepted:
p = P(Bin(n, 1 − target) ≤ k)). The candidates are tested in a fixed order, from a starting
point towards looser thresholds, and the loosest one before the first failed test is chosen;
fixed-sequence testing controls the chance of any false acceptance at ``delta`` without a
multiplicity correction, as long as the order is fixed without the calibration labels. The
start is the strictest candidate expected to accept twice the fewest images that can pass at
all (:func:`minimum_accepted`, from the calibration set's size alone): stricter candidates
accept too few images to show anything. When even the first test fails (too few calibration
images for the target), nothing is accepted, and :attr:`SelectiveClassifier.warnings_` says so.

Per class (``per_class=True``): one threshold per *predicted* class, each chosen the same way
on the calibration images predicted as that class, so a rare class (basophil, monocyte) gets
its own guarantee — each at ``1 − delta``; all classes at once hold with ``1 − K·delta``.

An image that the out-of-distribution detector flags is never accepted; the flags are part of
the acceptance rule on calibration images too, so the guarantee is for the combined rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.core.errors import ConfigError, NotFittedError
from ensemble.core.fileio import atomic_write_json
from ensemble.core.version import FORMAT_VERSION
from ensemble.refer.conformal import (
    check_member_hashes,
    check_probabilities,
    check_rate,
    read_fitted_json,
)

FORMAT = "blood-ensemble/selective-classifier"

#: Scores an image is accepted on: the top probability, or its lead over the runner-up.
SELECTIVE_SCORES = ("confidence", "margin")

#: Accepted accuracies calibrated by default, the default rule's first (fit-stacker puts the
#: one it is asked for first).
DEFAULT_TARGETS = (0.995, 0.99, 0.999)
DEFAULT_DELTA = 0.1

#: The first threshold tested accepts about this many times the fewest images that can pass.
START_MARGIN = 2.0

#: Acceptance rates on the ordering split at which candidate thresholds are placed.
ACCEPTANCE_GRID = tuple(round(0.02 * step, 2) for step in range(1, 51))


def selective_score(probabilities: np.ndarray, score: str) -> np.ndarray:
    """``(N,)`` how sure the combiner is of its prediction; larger = more likely accepted."""
    if score not in SELECTIVE_SCORES:
        raise ConfigError(
            f"unknown selective score. Choose from {list(SELECTIVE_SCORES)}. Received: {score!r}"
        )
    ordered = np.sort(probabilities, axis=1)
    if score == "confidence":
        return ordered[:, -1]
    return ordered[:, -1] - ordered[:, -2]


def binomial_p_value(wrong: int, accepted: int, error_rate: float) -> float:
    """P(Bin(accepted, error_rate) ≤ wrong): small when the true error rate is below ``error_rate``.

    The exact test of "the error rate among accepted images is above ``error_rate``"; 1 when
    nothing is accepted (nothing can be shown).
    """
    if accepted == 0:
        return 1.0
    from scipy.stats import binom

    return float(binom.cdf(wrong, accepted, error_rate))


def error_upper_bound(wrong: int, accepted: int, delta: float) -> float:
    """Clopper–Pearson upper ``1 − delta`` bound of the error rate among accepted images."""
    if accepted == 0:
        return 1.0
    if wrong >= accepted:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(1.0 - delta, wrong + 1, accepted - wrong))


def threshold_sequence(
    ordering_scores: np.ndarray, target: float, delta: float, n_calibration: int
) -> np.ndarray:
    """Candidate thresholds in the order they are tested, fixed on the ordering split alone.

    Args:
        ordering_scores: ``(M,)`` scores on the ordering split (``val``).
        target: the accepted accuracy to guarantee.
        delta: the chance the guarantee may fail.
        n_calibration: how many calibration images there are (their labels are not used).

    Returns:
        Thresholds, strictest first: from the starting point (see the module docstring) to the
        loosest candidate.
    """
    if not len(ordering_scores):
        return np.array([])
    rates = np.array(ACCEPTANCE_GRID)
    thresholds = np.quantile(ordering_scores, 1.0 - rates)
    enough = rates * n_calibration >= START_MARGIN * minimum_accepted(target, delta)
    start = int(np.argmax(enough)) if enough.any() else len(rates) - 1
    sequence = thresholds[start:]
    keep = np.concatenate([[True], np.diff(sequence) < 0])  # drop repeated quantiles
    return sequence[keep]


def fixed_sequence_threshold(
    scores: np.ndarray,
    correct: np.ndarray,
    candidates: np.ndarray,
    target: float,
    delta: float,
) -> dict[str, Any]:
    """The loosest candidate whose accepted images pass the binomial test, in sequence.

    Args:
        scores: ``(N,)`` calibration scores (``-inf`` for an image that may never be accepted,
            such as one flagged out of distribution).
        correct: ``(N,)`` whether the prediction was right.
        candidates: thresholds in test order (:func:`threshold_sequence`), fixed without the
            calibration images.
        target: the accepted accuracy to guarantee.
        delta: the chance the guarantee may fail.

    Returns:
        ``threshold`` (``inf``: accept nothing), and on the calibration images ``n``,
        ``n_accepted``, ``n_wrong``, ``accepted_accuracy``, the ``error_bound`` (upper
        ``1 − delta`` bound of the error rate at that threshold) and ``p_value``.
    """
    error_rate = 1.0 - target
    chosen = {"threshold": math.inf, "n_accepted": 0, "n_wrong": 0, "p_value": 1.0}
    for threshold in candidates:
        accepted = scores >= threshold
        n_accepted = int(accepted.sum())
        n_wrong = int((accepted & ~correct).sum())
        p_value = binomial_p_value(n_wrong, n_accepted, error_rate)
        if p_value > delta:
            break
        chosen = {
            "threshold": float(threshold),
            "n_accepted": n_accepted,
            "n_wrong": n_wrong,
            "p_value": p_value,
        }
    n_accepted, n_wrong = chosen["n_accepted"], chosen["n_wrong"]
    return chosen | {
        "n": int(len(scores)),
        "accepted_accuracy": (1.0 - n_wrong / n_accepted) if n_accepted else None,
        "error_bound": error_upper_bound(n_wrong, n_accepted, delta),
    }


class SelectiveClassifier:
    """Accept an image only where the accepted accuracy is guaranteed at ``1 − delta``.

    scikit-learn style: ``__init__`` stores its arguments; :meth:`fit` learns the thresholds
    (``thresholds_``: target → threshold; per class: target → one per class); :meth:`accept`
    applies them.

    Args:
        targets: the accepted accuracies to calibrate (any of them can be asked for later).
        delta: the chance that a guarantee fails.
        score: ``"confidence"`` or ``"margin"`` (:func:`selective_score`).
        per_class: one threshold per predicted class.
    """

    def __init__(
        self,
        targets: Sequence[float] = DEFAULT_TARGETS,
        delta: float = DEFAULT_DELTA,
        score: str = "confidence",
        per_class: bool = False,
    ) -> None:
        self.targets = tuple(targets)
        self.delta = delta
        self.score = score
        self.per_class = per_class

    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments."""
        return {
            "targets": list(self.targets),
            "delta": self.delta,
            "score": self.score,
            "per_class": self.per_class,
        }

    def _check_params(self) -> None:
        if not self.targets:
            raise ConfigError("targets must list at least one accepted accuracy")
        for target in self.targets:
            check_rate(target, "accepted accuracy")
        check_rate(self.delta, "delta")
        selective_score(np.full((1, 2), 0.5), self.score)

    def fit(
        self,
        probabilities: np.ndarray,
        labels: np.ndarray,
        ordering_probabilities: np.ndarray,
        *,
        flagged: np.ndarray | None = None,
    ) -> SelectiveClassifier:
        """Choose each target's threshold on calibration images.

        Args:
            probabilities: ``(N, K)`` the combiner's probabilities on the calibration images.
            labels: ``(N,)`` their true classes.
            ordering_probabilities: ``(M, K)`` the combiner's probabilities on another split
                (``val``): the candidate thresholds are quantiles of its scores, fixed without
                the calibration images.
            flagged: ``(N,)`` out-of-distribution flags of the calibration images (never
                accepted), or ``None``.
        """
        self._check_params()
        probabilities = check_probabilities(probabilities)
        ordering = check_probabilities(ordering_probabilities, probabilities.shape[1])
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(probabilities),):
            raise ConfigError(
                f"labels must have one class per image ({len(probabilities)}). "
                f"Received: shape {labels.shape}"
            )
        self.n_classes_ = probabilities.shape[1]
        predicted = probabilities.argmax(axis=1)
        correct = predicted == labels
        scores = selective_score(probabilities, self.score)
        if flagged is not None:
            scores = np.where(np.asarray(flagged, bool), -np.inf, scores)
        ordering_scores = selective_score(ordering, self.score)
        ordering_predicted = ordering.argmax(axis=1)
        self.thresholds_: dict[float, Any] = {}
        self.calibration_: dict[float, Any] = {}
        self.warnings_: list[str] = []
        for target in self.targets:
            if not self.per_class:
                sequence = threshold_sequence(ordering_scores, target, self.delta, len(scores))
                result = fixed_sequence_threshold(scores, correct, sequence, target, self.delta)
                self.thresholds_[target] = result["threshold"]
                self.calibration_[target] = result
            else:
                results = []
                for k in range(self.n_classes_):
                    mine, ordering_mine = predicted == k, ordering_predicted == k
                    sequence = threshold_sequence(
                        ordering_scores[ordering_mine], target, self.delta, int(mine.sum())
                    )
                    results.append(
                        fixed_sequence_threshold(
                            scores[mine], correct[mine], sequence, target, self.delta
                        )
                    )
                self.thresholds_[target] = [result["threshold"] for result in results]
                self.calibration_[target] = results
            self._warn_if_nothing_accepted(target)
        return self

    def _warn_if_nothing_accepted(self, target: float) -> None:
        thresholds = self.thresholds_[target]
        if self.per_class:
            refused = [k for k, threshold in enumerate(thresholds) if not np.isfinite(threshold)]
            if refused:
                self.warnings_.append(
                    f"accepted accuracy {target}: the calibration images of classes {refused} "
                    f"cannot show it at delta {self.delta}; those classes are always referred"
                )
        elif not np.isfinite(thresholds):
            n = self.calibration_[target]["n"]
            self.warnings_.append(
                f"accepted accuracy {target}: {n} calibration images cannot show it at delta "
                f"{self.delta} (with no error at all, at least "
                f"{minimum_accepted(target, self.delta)} accepted images are needed); every "
                "image is referred"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "thresholds_"):
            raise NotFittedError("SelectiveClassifier")

    def threshold(self, target: float | None = None) -> float | list[float]:
        """Return the threshold (one per class with ``per_class``) of a calibrated target.

        ``None``: the first target calibrated.
        """
        self._check_fitted()
        target = self.resolve_target(target)
        return self.thresholds_[target]

    def resolve_target(self, target: float | None) -> float:
        """Return ``target`` checked against the calibrated ones.

        ``None``: the first target calibrated (the one fit-stacker was asked for).

        Raises:
            ConfigError: a target that was not calibrated; the message lists those that were.
        """
        self._check_fitted()
        if target is None:
            return self.targets[0]
        for calibrated in self.thresholds_:
            if math.isclose(float(target), calibrated, rel_tol=0, abs_tol=1e-12):
                return calibrated
        raise ConfigError(
            f"accepted accuracy {target} was not calibrated. Calibrated: "
            f"{sorted(self.thresholds_)}; run fit-stacker --accepted-accuracy {target} to add it"
        )

    def accept(
        self,
        probabilities: np.ndarray,
        target: float | None = None,
        flagged: np.ndarray | None = None,
    ) -> np.ndarray:
        """``(N,)`` True where the image is answered alone at accepted accuracy ``target``."""
        self._check_fitted()
        probabilities = check_probabilities(probabilities, self.n_classes_)
        thresholds = self.threshold(target)
        scores = selective_score(probabilities, self.score)
        if self.per_class:
            needed = np.asarray(thresholds, dtype=np.float64)[probabilities.argmax(axis=1)]
        else:
            needed = np.full(len(scores), float(thresholds))
        accepted = scores >= needed
        if flagged is not None:
            accepted &= ~np.asarray(flagged, bool)
        return accepted

    def save(self, path: Path | str, member_hashes: dict[str, str]) -> None:
        """Write the fitted thresholds and their calibration record as JSON (atomically)."""
        self._check_fitted()
        atomic_write_json(
            path,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "params": self.get_params(),
                "n_classes": int(self.n_classes_),
                "member_sha256": dict(member_hashes),
                "calibrated": [
                    {
                        "target": target,
                        "threshold": _json_threshold(self.thresholds_[target]),
                        "calibration": _json_threshold(self.calibration_[target]),
                    }
                    for target in self.targets
                ],
                "warnings": list(self.warnings_),
            },
        )

    @classmethod
    def load(cls, path: Path | str, expected_hashes: dict[str, str]) -> SelectiveClassifier:
        """Read a classifier written by :meth:`save`, refusing one fitted for other members."""
        payload = read_fitted_json(path, FORMAT, "selective calibration")
        check_member_hashes(
            path, payload["member_sha256"], expected_hashes, "selective calibration"
        )
        params = payload["params"]
        classifier = cls(
            targets=[float(t) for t in params["targets"]],
            delta=float(params["delta"]),
            score=params["score"],
            per_class=bool(params["per_class"]),
        )
        classifier.n_classes_ = int(payload["n_classes"])
        classifier.thresholds_ = {
            float(row["target"]): _python_threshold(row["threshold"])
            for row in payload["calibrated"]
        }
        classifier.calibration_ = {
            float(row["target"]): _python_threshold(row["calibration"])
            for row in payload["calibrated"]
        }
        classifier.warnings_ = list(payload.get("warnings", []))
        return classifier


def minimum_accepted(target: float, delta: float) -> int:
    """Fewest accepted calibration images that can show ``target`` at ``delta`` (with no error).

    With ``n`` accepted and none wrong, the test passes when ``target ** n ≤ delta``.
    """
    return math.ceil(math.log(delta) / math.log(target))


def _json_threshold(value: Any) -> Any:
    """Infinite thresholds as the string ``"inf"`` (JSON has no infinity)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, list):
        return [_json_threshold(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_threshold(item) for key, item in value.items()}
    return value


def _python_threshold(value: Any) -> Any:
    if value == "inf":
        return math.inf
    if isinstance(value, list):
        return [_python_threshold(item) for item in value]
    if isinstance(value, dict):
        return {key: _python_threshold(item) for key, item in value.items()}
    return value
