"""The voting combiners: hard, soft and weighted voting and greedy ensemble selection.

They read only the members' temperature-scaled probabilities, a stack of shape
``(n_members, n_images, n_classes)``; each is one decorated class (:func:`register`), and
learned state round-trips through JSON (:func:`combiner_from_json`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from scipy.optimize import minimize

from ensemble.combine.base import (
    VotingCombiner,
    check_stack,
    log_loss,
    register,
    registered_so_far,
)
from ensemble.core.errors import ConfigError, RunError


@register
class HardVote(VotingCombiner):
    """Majority vote; ties broken by the members' mean probability.

    Its probabilities are the vote counts plus half the mean probability, normalised: the
    mean adds less than half a vote, so the winner is always the majority (the mean only
    orders tied classes), and the scores stay continuous — a class no member voted for still
    has the probability the members gave it, which the prediction sets and the selective
    rule need (bare vote shares put every image's runners-up at exactly 0, and a set that
    must hold a 0-vote true class 1 % of the time holds every class).
    """

    name = "hard"

    def votes(self, stack: np.ndarray) -> np.ndarray:
        """Vote counts ``(n_images, n_classes)``."""
        stack = check_stack(stack)
        n_classes = stack.shape[2]
        choices = stack.argmax(axis=2)  # (members, images)
        return np.stack([(choices == c).sum(axis=0) for c in range(n_classes)], axis=1)

    def predict_proba(self, stack: np.ndarray) -> np.ndarray:
        """Votes plus half the mean probability, normalised to sum to one per image."""
        stack = self._check_fitted(stack)
        scores = self.votes(stack).astype(np.float64) + 0.5 * stack.mean(axis=0)
        return scores / scores.sum(axis=1, keepdims=True)

    def state(self) -> dict[str, Any]:
        """The member count and the version of the scores (see :data:`SCORES`)."""
        return super().state() | {"scores": self.SCORES}

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        if state.get("scores") != self.SCORES:
            raise RunError(
                "hard voting was fitted when its scores were bare vote shares; its prediction "
                "sets and selective thresholds do not fit today's scores. Run `ensemble "
                "fit-stacker` again."
            )

    #: The scores' version: 2 = votes plus half the mean probability (1, unrecorded: shares).
    SCORES = 2


@register
class SoftVote(VotingCombiner):
    """Mean of the members' probabilities."""

    name = "soft"

    def predict_proba(self, stack: np.ndarray) -> np.ndarray:
        """Mean probability over members."""
        return self._check_fitted(stack).mean(axis=0)


@register
class WeightedSoftVote(VotingCombiner):
    """Weighted mean; weights on the simplex minimising the log loss on ``blend``."""

    name = "weighted"

    def fit(self, stack: np.ndarray, labels: np.ndarray) -> WeightedSoftVote:
        """Fit the weights (softmax-parametrised, L-BFGS)."""
        super().fit(stack, labels)
        stack = check_stack(stack)

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
        stack = self._check_fitted(stack)
        return np.tensordot(self.weights_, stack, axes=1)

    def state(self) -> dict[str, Any]:
        """Weights, one per member."""
        return super().state() | {"weights": [round(float(w), 6) for w in self.weights_]}

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        self.weights_ = np.array(state["weights"], dtype=np.float64)


@register
class GreedySelection(VotingCombiner):
    """Caruana et al. (2004) ensemble selection with replacement.

    Args:
        rounds: members added in total (with repetition); the weights are their multiplicities
            divided by ``rounds``.
    """

    name = "greedy"
    _PARAMS = ("rounds",)

    def __init__(self, rounds: int = 25) -> None:
        self.rounds = rounds

    def fit(self, stack: np.ndarray, labels: np.ndarray) -> GreedySelection:
        """Add, ``rounds`` times, the member that most lowers the running ensemble's log loss."""
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1. Received: rounds={self.rounds}")
        super().fit(stack, labels)
        stack = check_stack(stack)
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
        stack = self._check_fitted(stack)
        return np.tensordot(self.weights_, stack, axes=1)

    def state(self) -> dict[str, Any]:
        """Chosen members' multiplicities and the resulting weights."""
        return super().state() | {
            "counts": [int(c) for c in self.counts_],
            "weights": [round(float(w), 6) for w in self.weights_],
        }

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        self.counts_ = np.array(state["counts"], dtype=np.int64)
        self.weights_ = np.array(state["weights"], dtype=np.float64)


def combiner_from_json(text: str) -> VotingCombiner:
    """Rebuild a fitted voting combiner from :meth:`VotingCombiner.to_json` output.

    Raises:
        ConfigError: the JSON names no registered voting combiner.
    """
    payload = json.loads(text)
    kind = payload.get("kind")
    voting = {
        name: cls for name, cls in registered_so_far().items() if issubclass(cls, VotingCombiner)
    }
    if kind not in voting:
        raise ConfigError(f"unknown combiner {kind!r}. Choose from {sorted(voting)}")
    return voting[kind].from_state(payload)
