"""Temperature scaling: one temperature per member, fitted on ``val`` before any combiner.

Averaging probabilities assumes they are calibrated; ``softmax(log p / T)`` with ``T``
minimising the val log loss makes them so without changing any member's argmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from ensemble.combine.base import EPSILON, MemberOutputs, check_stack, log_loss
from ensemble.core.errors import ConfigError, NotFittedError


class TemperatureScaling:
    """One temperature per member: ``softmax(log p / T)``, ``T`` minimising the val log loss.

    Build it with :meth:`fit`, or from saved values with :meth:`from_temperatures`.
    """

    def fit(self, stack: np.ndarray, labels: np.ndarray) -> TemperatureScaling:
        """Fit each member's temperature on the ``val`` split."""
        stack = check_stack(stack, labels)
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

    @classmethod
    def from_temperatures(cls, temperatures: list[float] | np.ndarray) -> TemperatureScaling:
        """A fitted scaler with the given temperatures (one per member, each > 0).

        Raises:
            ConfigError: a temperature is not positive.
        """
        values = np.asarray(temperatures, dtype=np.float64)
        if values.ndim != 1 or not (values > 0).all():
            raise ConfigError(f"temperatures must be positive numbers. Received: {temperatures}")
        scaler = cls()
        scaler.temperatures_ = values
        return scaler

    def state(self) -> dict[str, Any]:
        """The temperatures as JSON-ready values (rounded to 6 decimals)."""
        if not hasattr(self, "temperatures_"):
            raise NotFittedError(type(self).__name__)
        return {"temperatures": [round(float(t), 6) for t in self.temperatures_]}

    def transform(self, stack: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, same shape as ``stack``."""
        if not hasattr(self, "temperatures_"):
            raise NotFittedError(type(self).__name__)
        stack = check_stack(stack)
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


def calibrated_outputs(
    scaler: TemperatureScaling,
    probabilities: np.ndarray | Sequence[np.ndarray],
    features: Sequence[np.ndarray],
) -> MemberOutputs:
    """The one way member outputs become :class:`MemberOutputs`: temperatures applied.

    Args:
        scaler: the members' temperatures.
        probabilities: ``(n_members, N, K)`` raw member probabilities (or one array per
            member), in member order.
        features: one ``(N, F)`` pooled-feature array per member.
    """
    raw = np.stack([np.asarray(member) for member in probabilities])
    return MemberOutputs(
        probabilities=raw, calibrated=scaler.transform(raw), features=tuple(features)
    )


def cached_outputs(
    scaler: TemperatureScaling, cached: Mapping[str, Mapping], names: Sequence[str]
) -> MemberOutputs:
    """:func:`calibrated_outputs` of each member's cached outputs, in ``names`` order.

    ``cached`` maps a member's name to ``{"probabilities", "features", …}``, as
    :func:`ensemble.members.outputs.cached_member_outputs` returns them.
    """
    return calibrated_outputs(
        scaler,
        [cached[name]["probabilities"] for name in names],
        [cached[name]["features"] for name in names],
    )
