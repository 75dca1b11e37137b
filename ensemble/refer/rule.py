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


#: Why an image was referred, in the words a reviewer reads on its card.
UNLIKE_TRAINING = "unlike the training images"
SEVERAL_CLASSES = "several classes possible"
NO_CLASS = "no class fits"
NOT_CONFIDENT = "not confident enough"
MEMBERS_DISAGREE = "members disagree"


def referral_reasons(
    abstain: np.ndarray,
    *,
    flagged: np.ndarray | None = None,
    set_sizes: np.ndarray | None = None,
    low_confidence: np.ndarray | None = None,
    low_agreement: np.ndarray | None = None,
) -> list[str]:
    """For each image, why it was referred (``""`` for an accepted one), reasons joined by "; ".

    Args:
        abstain: ``(N,)`` which images were referred.
        flagged: ``(N,)`` out of distribution (the OOD score above its threshold).
        set_sizes: ``(N,)`` classes in each prediction set (the conformal rule).
        low_confidence: ``(N,)`` confidence under what the rule needs (selective, agreement).
        low_agreement: ``(N,)`` member agreement under its minimum (the agreement rule).
    """
    checks = []
    if flagged is not None:
        checks.append((np.asarray(flagged, bool), UNLIKE_TRAINING))
    if set_sizes is not None:
        checks.append((np.asarray(set_sizes) > 1, SEVERAL_CLASSES))
        checks.append((np.asarray(set_sizes) == 0, NO_CLASS))
    if low_confidence is not None:
        checks.append((np.asarray(low_confidence, bool), NOT_CONFIDENT))
    if low_agreement is not None:
        checks.append((np.asarray(low_agreement, bool), MEMBERS_DISAGREE))
    return [
        "; ".join(reason for mask, reason in checks if mask[index]) if referred else ""
        for index, referred in enumerate(np.asarray(abstain, bool))
    ]
