"""The referral rule: which images go to a human, decided once for predict, the API and report.

* ``conformal`` — an image is accepted only when its prediction set (at miss rate ``alpha``) is
  exactly the predicted class and its out-of-distribution score is not above the calibrated
  threshold; every other image is referred. An accepted image is wrong only if its set missed
  the true class, so at most ``alpha`` of all exchangeable images are accepted *and* wrong
  (of the accepted ones, at most ``alpha / (1 - referral rate)``).
* ``selective`` — an image is accepted only when the combiner's confidence (or margin) is at
  least the threshold calibrated for the accuracy asked of accepted images
  (:mod:`ensemble.refer.selective`: at least that accuracy with probability ``1 − delta``) and
  it is not out of distribution; every other image is referred.
* ``agreement`` — the rule from before prediction sets: referred when the share of members
  voting for the prediction is under ``min_agreement`` or the combiner's probability is under
  ``min_confidence``. No number bounds the wrong answers it lets through.
"""

from __future__ import annotations

import numpy as np

REFER_RULES = ("conformal", "selective", "agreement")

#: The agreement rule's default minimum share of members voting for the prediction, and its
#: default minimum probability of the predicted class.
DEFAULT_MIN_AGREEMENT = 0.5
DEFAULT_MIN_CONFIDENCE = 0.5


def conformal_referral(
    probabilities: np.ndarray, sets: np.ndarray, out_of_distribution: np.ndarray | None = None
) -> np.ndarray:
    """``(N,)`` True = refer: the set is not exactly the predicted class, or the image is OOD.

    Args:
        probabilities: ``(N, K)`` the combiner's probabilities (the prediction is the argmax).
        sets: ``(N, K)`` boolean prediction sets from the same probabilities.
        out_of_distribution: ``(N,)`` OOD flags, or ``None`` (no detector).
    """
    predicted = probabilities.argmax(axis=1)
    accepted = (sets.sum(axis=1) == 1) & sets[np.arange(len(predicted)), predicted]
    if out_of_distribution is not None:
        accepted &= ~out_of_distribution
    return ~accepted


def agreement_referral(
    probabilities: np.ndarray, votes: np.ndarray, min_agreement: float, min_confidence: float
) -> np.ndarray:
    """``(N,)`` True = refer: member agreement or confidence under its minimum.

    Args:
        probabilities: ``(N, K)`` the combiner's probabilities.
        votes: ``(n_members, N)`` each member's predicted class.
        min_agreement: minimum share of members voting for the predicted class.
        min_confidence: minimum probability of the predicted class.
    """
    predicted = probabilities.argmax(axis=1)
    agreement = (votes == predicted[None, :]).mean(axis=0)
    return (agreement < min_agreement) | (probabilities.max(axis=1) < min_confidence)
