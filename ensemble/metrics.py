"""Evaluation metrics with uncertainty: bootstrap intervals, McNemar's test, calibration.

Plain functions on label and probability arrays, checked against scikit-learn in the tests.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support


def summary_metrics(
    labels: np.ndarray, predicted: np.ndarray, n_classes: int, present_only: bool = False
) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 (over all classes, or those in ``labels``).

    Balanced accuracy is the mean recall over the classes present in ``labels`` (scikit-learn's
    definition); predictions of absent classes count as errors without a warning.
    """
    import warnings

    classes = sorted(set(labels.tolist())) if present_only else list(range(n_classes))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(labels, predicted))
    return {
        "accuracy": float((labels == predicted).mean()),
        "balanced_accuracy": balanced,
        "macro_f1": float(
            f1_score(labels, predicted, average="macro", labels=classes, zero_division=0)
        ),
    }


def per_class_metrics(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict:
    """Precision, recall, F1 and support per class index."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(range(n_classes)), zero_division=0
    )
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
    }


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``(n_classes, n_classes)``: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def bootstrap_intervals(
    labels: np.ndarray,
    predicted: np.ndarray,
    n_classes: int,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95 % percentile-bootstrap intervals of :func:`summary_metrics` (images resampled)."""
    import warnings

    rng = np.random.default_rng(seed)
    draws = {name: [] for name in ("accuracy", "balanced_accuracy", "macro_f1")}
    with warnings.catch_warnings():
        # A resample of a small set can miss a class; scikit-learn warns, the value stays valid.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(resamples):
            rows = rng.integers(0, len(labels), len(labels))
            # Macro-F1 over the classes the resample holds: a class missing from a resample
            # would otherwise count as F1 = 0 and drag the interval down.
            sample = summary_metrics(labels[rows], predicted[rows], n_classes, present_only=True)
            for name, value in sample.items():
                draws[name].append(value)
    return {
        name: (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
        for name, values in draws.items()
    }


def mcnemar(labels: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """Exact McNemar test of two classifiers on the same images.

    Returns:
        ``first_only`` (images only the first gets right), ``second_only`` and the two-sided
        exact binomial p-value on the discordant pairs (1.0 when there are none).
    """
    first_right = first == labels
    second_right = second == labels
    b = int((first_right & ~second_right).sum())
    c = int((~first_right & second_right).sum())
    p_value = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return {"first_only": b, "second_only": c, "p_value": p_value}


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> dict[str, object]:
    """Expected calibration error (equal-width confidence bins) and the reliability curve."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    curve = []
    for index in range(bins):
        members = which == index
        if not members.any():
            continue
        accuracy, mean_confidence = (
            float(correct[members].mean()),
            float(confidence[members].mean()),
        )
        ece += members.mean() * abs(accuracy - mean_confidence)
        curve.append(
            {"confidence": mean_confidence, "accuracy": accuracy, "count": int(members.sum())}
        )
    return {"ece": float(ece), "curve": curve}


def coverage_accuracy(
    labels: np.ndarray, predicted: np.ndarray, agreement: np.ndarray, confidence: np.ndarray
) -> list[dict[str, float]]:
    """Accuracy on the images kept when the least certain are referred to a human.

    Images are ordered by member agreement, then confidence; each point keeps the top share.
    """
    order = np.lexsort((-confidence, -agreement))
    correct = (predicted == labels)[order]
    points = []
    for coverage in (1.0, 0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5):
        kept = max(1, int(round(coverage * len(labels))))
        points.append({"coverage": coverage, "accuracy": float(correct[:kept].mean())})
    return points
