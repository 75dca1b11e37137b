"""Combiners: how the members' class probabilities become one prediction.

Every combiner works on a stack of member probabilities ``P`` of shape
``(n_members, n_images, n_classes)`` and follows scikit-learn's conventions: ``__init__`` only
stores its arguments, ``fit(P, y)`` learns (on the ``blend`` split), learned state ends in ``_``,
``predict_proba`` / ``predict`` refuse to run before ``fit``. Learned state round-trips through
readable JSON (:meth:`to_json` / :func:`combiner_from_json`) — no pickle.

* :class:`HardVote` — majority of the members' argmax votes; ties broken by the mean probability
  of the tied classes.
* :class:`SoftVote` — mean probability.
* :class:`WeightedSoftVote` — weighted mean, weights (on the simplex) minimising the blend log
  loss.
* :class:`GreedySelection` — Caruana et al. (2004) ensemble selection with replacement, as in
  AutoGluon's weighted ensemble: repeatedly add the member that most lowers the blend log loss.
* :class:`TemperatureScaling` — one temperature per member fitted on ``val``, applied before any
  averaging, because averaging assumes calibrated probabilities.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from ensemble.errors import ConfigError

EPSILON = 1e-12


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0))))


def _check_stack(stack: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim != 3:
        raise ConfigError(
            "member probabilities must have shape (n_members, n_images, n_classes). "
            f"Received: shape={stack.shape}"
        )
    if labels is not None and len(labels) != stack.shape[1]:
        raise ConfigError(f"{stack.shape[1]} images but {len(labels)} labels")
    return stack


class _Combiner:
    """Shared ``predict`` and fitted-state checks."""

    name = "combiner"

    def fit(self, stack: np.ndarray, labels: np.ndarray) -> _Combiner:
        """Learn from the members' probabilities on the ``blend`` split."""
        _check_stack(stack, labels)
        self.n_members_ = stack.shape[0]
        return self

    def predict(self, stack: np.ndarray) -> np.ndarray:
        """Predicted class index per image."""
        return self.predict_proba(stack).argmax(axis=1)

    def _check_fitted(self, stack: np.ndarray) -> np.ndarray:
        if not hasattr(self, "n_members_"):
            raise ConfigError(f"{type(self).__name__} is not fitted yet: call fit() first")
        stack = _check_stack(stack)
        if stack.shape[0] != self.n_members_:
            raise ConfigError(
                f"{type(self).__name__} was fitted on {self.n_members_} members. "
                f"Received: {stack.shape[0]}"
            )
        return stack

    def state(self) -> dict[str, Any]:
        """The learned state as JSON-ready values."""
        return {"n_members": self.n_members_}

    def to_json(self) -> str:
        """Readable JSON of the combiner's kind and learned state."""
        return json.dumps({"kind": self.name, **self.state()}, indent=1, sort_keys=True)


class HardVote(_Combiner):
    """Majority vote; ties broken by the mean probability of the tied classes."""

    name = "hard"

    def votes(self, stack: np.ndarray) -> np.ndarray:
        """Vote counts ``(n_images, n_classes)``."""
        stack = _check_stack(stack)
        n_classes = stack.shape[2]
        choices = stack.argmax(axis=2)  # (members, images)
        return np.stack([(choices == c).sum(axis=0) for c in range(n_classes)], axis=1)

    def predict_proba(self, stack: np.ndarray) -> np.ndarray:
        """Vote shares; the tie-break adds less than one vote, so it only orders tied classes."""
        stack = self._check_fitted(stack)
        votes = self.votes(stack).astype(np.float64)
        mean = stack.mean(axis=0)
        top = votes.max(axis=1, keepdims=True)
        tie_break = np.where(votes == top, mean * 0.5, 0.0)  # < 1 vote: orders tied classes only
        scores = votes + tie_break
        return scores / scores.sum(axis=1, keepdims=True)


class SoftVote(_Combiner):
    """Mean of the members' probabilities."""

    name = "soft"

    def predict_proba(self, stack: np.ndarray) -> np.ndarray:
        """Mean probability over members."""
        return self._check_fitted(stack).mean(axis=0)


class WeightedSoftVote(_Combiner):
    """Weighted mean; weights on the simplex minimising the log loss on ``blend``."""

    name = "weighted"

    def fit(self, stack: np.ndarray, labels: np.ndarray) -> WeightedSoftVote:
        """Fit the weights (softmax-parametrised, L-BFGS)."""
        super().fit(stack, labels)
        stack = _check_stack(stack)

        def loss(logits: np.ndarray) -> float:
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
            return log_loss(np.tensordot(weights, stack, axes=1), labels)

        result = minimize(loss, np.zeros(stack.shape[0]), method="L-BFGS-B")
        weights = np.exp(result.x - result.x.max())
        self.weights_ = weights / weights.sum()
        return self

    def predict_proba(self, stack: np.ndarray) -> np.ndarray:
        """Weighted mean probability."""
        return np.tensordot(self.weights_, self._check_fitted(stack), axes=1)

    def state(self) -> dict[str, Any]:
        """Weights, one per member."""
        return super().state() | {"weights": [round(float(w), 6) for w in self.weights_]}


class GreedySelection(_Combiner):
    """Caruana et al. (2004) ensemble selection with replacement.

    Args:
        rounds: members added in total (with repetition); the weights are their multiplicities
            divided by ``rounds``.
    """

    name = "greedy"

    def __init__(self, rounds: int = 25) -> None:
        self.rounds = rounds

    def fit(self, stack: np.ndarray, labels: np.ndarray) -> GreedySelection:
        """Add, ``rounds`` times, the member that most lowers the running ensemble's log loss."""
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1. Received: rounds={self.rounds}")
        super().fit(stack, labels)
        stack = _check_stack(stack)
        counts = np.zeros(stack.shape[0], dtype=np.int64)
        running = np.zeros(stack.shape[1:])
        for step in range(1, self.rounds + 1):
            losses = [log_loss((running * (step - 1) + member) / step, labels) for member in stack]
            best = int(np.argmin(losses))  # first minimum: deterministic
            counts[best] += 1
            running = (running * (step - 1) + stack[best]) / step
        self.counts_ = counts
        self.weights_ = counts / counts.sum()
        return self

    def predict_proba(self, stack: np.ndarray) -> np.ndarray:
        """Weighted mean with the selection's multiplicities."""
        return np.tensordot(self.weights_, self._check_fitted(stack), axes=1)

    def state(self) -> dict[str, Any]:
        """Chosen members' multiplicities and the resulting weights."""
        return super().state() | {
            "rounds": self.rounds,
            "counts": [int(c) for c in self.counts_],
            "weights": [round(float(w), 6) for w in self.weights_],
        }


class TemperatureScaling:
    """One temperature per member: ``softmax(log p / T)``, ``T`` minimising the val log loss."""

    def fit(self, stack: np.ndarray, labels: np.ndarray) -> TemperatureScaling:
        """Fit each member's temperature on the ``val`` split."""
        stack = _check_stack(stack, labels)
        temperatures = []
        for member in stack:
            logits = np.log(np.clip(member, EPSILON, 1.0))
            result = minimize_scalar(
                lambda log_t, z=logits: log_loss(_softmax(z / np.exp(log_t)), labels),
                bounds=(np.log(0.05), np.log(20.0)),
                method="bounded",
            )
            temperatures.append(float(np.exp(result.x)))
        self.temperatures_ = np.array(temperatures)
        return self

    def transform(self, stack: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, same shape as ``stack``."""
        if not hasattr(self, "temperatures_"):
            raise ConfigError("TemperatureScaling is not fitted yet: call fit() first")
        stack = _check_stack(stack)
        if stack.shape[0] != len(self.temperatures_):
            raise ConfigError(
                f"TemperatureScaling was fitted on {len(self.temperatures_)} members. "
                f"Received: {stack.shape[0]}"
            )
        logits = np.log(np.clip(stack, EPSILON, 1.0))
        return _softmax(logits / self.temperatures_[:, None, None])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


COMBINERS = {cls.name: cls for cls in (HardVote, SoftVote, WeightedSoftVote, GreedySelection)}


def combiner_from_json(text: str) -> _Combiner:
    """Rebuild a fitted combiner from :meth:`_Combiner.to_json` output."""
    payload = json.loads(text)
    kind = payload.get("kind")
    if kind not in COMBINERS:
        raise ConfigError(f"unknown combiner {kind!r}. Choose from {sorted(COMBINERS)}")
    combiner = COMBINERS[kind]() if kind != "greedy" else GreedySelection(payload["rounds"])
    combiner.n_members_ = payload["n_members"]
    if "weights" in payload:
        combiner.weights_ = np.array(payload["weights"], dtype=np.float64)
    if "counts" in payload:
        combiner.counts_ = np.array(payload["counts"], dtype=np.int64)
    return combiner
