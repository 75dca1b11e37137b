"""Evaluation metrics with uncertainty: bootstrap intervals, McNemar's test, calibration.

Plain functions on label and probability arrays, checked against scikit-learn in the tests.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support

from ensemble.combine.voting import HardVote, SoftVote


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


#: What each interval of :func:`intervals` is, as the report states it.
INTERVAL_METHODS = {
    "accuracy": "Wilson score interval (binomial)",
    "balanced_accuracy": "percentile bootstrap over images, 1000 resamples",
    "macro_f1": "percentile bootstrap over images, 1000 resamples",
}


def intervals(
    labels: np.ndarray, predicted: np.ndarray, n_classes: int, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """The report's 95 % intervals (:data:`INTERVAL_METHODS`): Wilson for accuracy, else bootstrap.

    Accuracy is a binomial proportion, so its Wilson interval is exact enough and, unlike the
    bootstrap, does not collapse to a point at 0 or 100 % (40/40 right gives 0.912–1.0).
    """
    result = bootstrap_intervals(labels, predicted, n_classes, seed=seed)
    result["accuracy"] = wilson_interval(int((labels == predicted).sum()), len(labels))
    return result


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / total`` (95 % for the default ``z``).

    Example:
        >>> [round(bound, 4) for bound in wilson_interval(40, 40)]
        [0.9124, 1.0]
    """
    if total <= 0:
        return (0.0, 1.0)
    share = successes / total
    denominator = 1 + z**2 / total
    centre = (share + z**2 / (2 * total)) / denominator
    half = z * np.sqrt(share * (1 - share) / total + z**2 / (4 * total**2)) / denominator
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def bootstrap_intervals(
    labels: np.ndarray,
    predicted: np.ndarray,
    n_classes: int,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95 % percentile-bootstrap intervals of :func:`summary_metrics` (images resampled).

    Vectorised: each resample becomes a confusion matrix (one ``bincount`` for all of them), and
    the three metrics are computed from the matrices at once. The resamples are drawn exactly
    as one ``rng.integers`` call per resample, so the intervals equal those of the earlier
    per-resample loop over scikit-learn (``tests/test_metrics.py`` checks it).
    """
    labels, predicted = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
    n_classes = max(n_classes, int(labels.max(initial=-1)) + 1, int(predicted.max(initial=-1)) + 1)
    rng = np.random.default_rng(seed)
    count = len(labels)
    pairs = labels * n_classes + predicted  # a confusion-matrix cell per image
    cells = n_classes * n_classes
    draws = {name: np.empty(resamples) for name in ("accuracy", "balanced_accuracy", "macro_f1")}
    chunk = max(1, 4_000_000 // max(count, 1))  # resamples per bincount: bounded memory
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        # One call per resample, as before: a single larger call would draw other numbers.
        rows = np.stack([rng.integers(0, count, count) for _ in range(start, stop)])
        offsets = np.arange(stop - start)[:, None] * cells
        matrices = np.bincount((pairs[rows] + offsets).ravel(), minlength=(stop - start) * cells)
        for name, values in _metrics_of_confusions(
            matrices.reshape(stop - start, n_classes, n_classes)
        ).items():
            draws[name][start:stop] = values
    return {
        name: (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
        for name, values in draws.items()
    }


def _metrics_of_confusions(matrices: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`summary_metrics` (``present_only=True``) of a stack of confusion matrices.

    A class counts when the resample holds an image of it (its row is not empty): balanced
    accuracy is the mean recall over those classes, macro-F1 the mean F1 over them (a class
    missing from a resample would otherwise count as F1 = 0 and drag the interval down).
    """
    matrices = matrices.astype(np.float64)
    true_positives = np.diagonal(matrices, axis1=1, axis2=2)
    actual = matrices.sum(axis=2)
    predicted = matrices.sum(axis=1)
    present = actual > 0
    n_present = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, true_positives / actual, 0.0)
        f1_denominator = actual + predicted  # 2 TP + FP + FN
        f1 = np.where(present, 2 * true_positives / f1_denominator, 0.0)
    return {
        "accuracy": true_positives.sum(axis=1) / matrices.sum(axis=(1, 2)),
        "balanced_accuracy": recall.sum(axis=1) / n_present,
        "macro_f1": f1.sum(axis=1) / n_present,
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


def error_overlap(
    probabilities: dict[str, np.ndarray], labels: np.ndarray, names: list[str]
) -> dict:
    """How often the models' errors coincide: why an ensemble of them gains or does not.

    Voting helps only where errors differ. For every ordered pair of models (rows ``a``,
    columns ``b``), ``repeated[a][b]`` is the share of ``a``'s errors that ``b`` also makes
    (1 on the diagonal), and ``kappa[a][b]`` Cohen's kappa of their error indicators (1:
    they err on the same images; 0: no more overlap than chance).

    Args:
        probabilities: model name → ``(N, K)`` class probabilities on the same images.
        labels: ``(N,)`` true classes.
        names: the models, in table order.

    Returns:
        ``{"names", "errors": [count per model], "repeated", "kappa"}`` (None where a model
        makes no error, or kappa is undefined).
    """
    wrong = {name: probabilities[name].argmax(axis=1) != labels for name in names}
    repeated, kappa = [], []
    for first in names:
        repeated_row, kappa_row = [], []
        for second in names:
            a, b = wrong[first], wrong[second]
            repeated_row.append(float((a & b).sum() / a.sum()) if a.any() else None)
            kappa_row.append(_kappa(a, b))
        repeated.append(repeated_row)
        kappa.append(kappa_row)
    return {
        "names": list(names),
        "errors": [int(wrong[name].sum()) for name in names],
        "repeated": repeated,
        "kappa": kappa,
    }


def member_contributions(
    stacks: dict[str, np.ndarray], labels: np.ndarray, names: list[str]
) -> dict:
    """What each member buys: hard and soft voting with every member, and without each one.

    Voting needs no fitting, so leaving a member out is exact (the fitted combiners would have
    to be refitted on blend). A member whose removal lowers the vote's accuracy on a copy
    earns its place there; one whose removal raises it costs accuracy.

    Args:
        stacks: copy name (``"clean"``, ``"shifted"``, …) → the members' calibrated
            probabilities ``(n_members, N, K)`` on that copy of the same images.
        labels: ``(N,)`` true classes.
        names: the members, in stack order.

    Returns:
        ``{copy: {"hard" | "soft": {"all": accuracy, "without": {member: accuracy}}}}``;
        ``{}`` with fewer than 3 members (leaving one out of two is no vote).
    """
    if len(names) < 3:
        return {}
    result: dict = {}
    for copy, stack in stacks.items():
        result[copy] = {}
        for vote in (HardVote, SoftVote):

            def accuracy(members: np.ndarray, vote=vote) -> float:
                # voting learns nothing from its fit (it records the member count only)
                fitted = vote().fit(members, labels)
                return float((fitted.predict_proba(members).argmax(axis=1) == labels).mean())

            result[copy][vote.name] = {
                "all": accuracy(stack),
                "without": {
                    name: accuracy(np.delete(stack, index, axis=0))
                    for index, name in enumerate(names)
                },
            }
    return result


def _kappa(first: np.ndarray, second: np.ndarray) -> float | None:
    """Cohen's kappa of two boolean indicators (``None`` when both are constant alike)."""
    observed = float((first == second).mean())
    p1, p2 = float(first.mean()), float(second.mean())
    expected = p1 * p2 + (1 - p1) * (1 - p2)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)
