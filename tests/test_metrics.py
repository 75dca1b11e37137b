import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_score

from ensemble.report.metrics import (
    INTERVAL_METHODS,
    bootstrap_intervals,
    calibration,
    coverage_accuracy,
    intervals,
    mcnemar,
    per_class_metrics,
    summary_metrics,
    wilson_interval,
)

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 4, 300)
PREDICTED = np.where(RNG.random(300) < 0.8, LABELS, RNG.integers(0, 4, 300))


def test_summary_and_per_class_match_scikit_learn():
    values = summary_metrics(LABELS, PREDICTED, 4)
    assert values["accuracy"] == pytest.approx(accuracy_score(LABELS, PREDICTED))
    assert values["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(LABELS, PREDICTED))
    assert values["macro_f1"] == pytest.approx(f1_score(LABELS, PREDICTED, average="macro"))
    per_class = per_class_metrics(LABELS, PREDICTED, 4)
    assert per_class["precision"] == pytest.approx(
        precision_score(LABELS, PREDICTED, average=None).tolist()
    )
    assert sum(per_class["support"]) == 300


def test_bootstrap_interval_contains_point_and_narrows_with_size():
    ci = bootstrap_intervals(LABELS, PREDICTED, 4, resamples=300)
    point = summary_metrics(LABELS, PREDICTED, 4)
    for name, (low, high) in ci.items():
        assert low <= point[name] <= high
    big = np.tile(LABELS, 10), np.tile(PREDICTED, 10)
    wide = ci["accuracy"][1] - ci["accuracy"][0]
    narrow = bootstrap_intervals(*big, 4, resamples=300)["accuracy"]
    assert narrow[1] - narrow[0] < wide / 2


def test_bootstrap_is_deterministic_and_perfect_is_degenerate():
    assert bootstrap_intervals(LABELS, PREDICTED, 4, 100, seed=3) == bootstrap_intervals(
        LABELS, PREDICTED, 4, 100, seed=3
    )
    perfect = bootstrap_intervals(LABELS, LABELS, 4, 100)
    assert perfect["macro_f1"] == (1.0, 1.0) and perfect["accuracy"] == (1.0, 1.0)


def _loop_bootstrap(labels, predicted, n_classes, resamples=1000, seed=0):
    """The bootstrap as it was: one scikit-learn call per resample (the reference)."""
    import warnings

    rng = np.random.default_rng(seed)
    draws = {name: [] for name in ("accuracy", "balanced_accuracy", "macro_f1")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(resamples):
            rows = rng.integers(0, len(labels), len(labels))
            sample = summary_metrics(labels[rows], predicted[rows], n_classes, present_only=True)
            for name, value in sample.items():
                draws[name].append(value)
    return {
        name: (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
        for name, values in draws.items()
    }


@pytest.mark.parametrize(
    ("size", "n_classes", "right", "seed"),
    [(300, 4, 0.8, 0), (41, 8, 0.7, 1), (25, 8, 0.5, 2), (57, 3, 0.95, 3)],
)
def test_vectorised_bootstrap_equals_the_loop(size, n_classes, right, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size)
    predicted = np.where(rng.random(size) < right, labels, rng.integers(0, n_classes, size))
    expected = _loop_bootstrap(labels, predicted, n_classes, resamples=200, seed=seed)
    received = bootstrap_intervals(labels, predicted, n_classes, resamples=200, seed=seed)
    for name, bounds in expected.items():
        assert received[name] == pytest.approx(bounds, abs=1e-12), name


def test_wilson_interval_does_not_collapse_at_the_extremes():
    low, high = wilson_interval(40, 40)
    assert low == pytest.approx(0.9124, abs=1e-4) and high == 1.0
    low, high = wilson_interval(0, 40)
    assert low == 0.0 and high == pytest.approx(0.0876, abs=1e-4)
    low, high = wilson_interval(96, 100)  # textbook value: 0.9016-0.9843
    assert (low, high) == pytest.approx((0.9016, 0.9843), abs=1e-4)
    labels = np.arange(40) % 8
    perfect = intervals(labels, labels, 8)
    assert perfect["accuracy"][0] < 0.95 and perfect["accuracy"][1] == 1.0
    assert set(perfect) == set(INTERVAL_METHODS)


def test_mcnemar_known_cases():
    labels = np.zeros(20, dtype=int)
    first = np.zeros(20, dtype=int)
    second = np.zeros(20, dtype=int)
    second[:10] = 1  # the second is wrong on 10 images the first gets right
    result = mcnemar(labels, first, second)
    assert (result["first_only"], result["second_only"]) == (10, 0)
    assert result["p_value"] == pytest.approx(2 * 0.5**10)
    assert mcnemar(labels, first, first)["p_value"] == 1.0


def test_calibration_perfect_and_overconfident():
    labels = np.array([0, 1, 0, 1])
    sure_right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert calibration(labels, sure_right)["ece"] == pytest.approx(0.0)
    sure_wrong = sure_right[:, ::-1]
    assert calibration(labels, sure_wrong)["ece"] == pytest.approx(1.0)


def test_coverage_accuracy_refers_least_agreed_first():
    labels = np.array([0, 0, 0, 0])
    predicted = np.array([0, 0, 0, 1])
    agreement = np.array([1.0, 1.0, 0.9, 0.2])  # the wrong one has the lowest agreement
    points = {
        p["coverage"]: p["accuracy"]
        for p in coverage_accuracy(labels, predicted, agreement, np.ones(4))
    }
    assert points[1.0] == 0.75 and points[0.7] == 1.0


def test_error_overlap_counts_repeated_errors_and_kappa():
    from ensemble.report.metrics import error_overlap

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    right = np.eye(2)[labels]
    a = right.copy()
    a[[0, 1]] = np.eye(2)[[1, 1]]  # wrong on images 0 and 1
    b = right.copy()
    b[[1, 2]] = np.eye(2)[[1, 1]]  # wrong on 1 and 2: repeats one of a's two errors
    same = a.copy()
    overlap = error_overlap({"a": a, "b": b, "same": same}, labels, ["a", "b", "same"])
    assert overlap["errors"] == [2, 2, 2]
    assert overlap["repeated"][0][1] == 0.5 and overlap["repeated"][0][2] == 1.0
    assert overlap["kappa"][0][2] == pytest.approx(1.0)
    # kappa of a and b: observed agreement 6/8, expected 0.25*0.25 + 0.75*0.75 = 0.625
    assert overlap["kappa"][0][1] == pytest.approx((0.75 - 0.625) / 0.375)
    perfect = error_overlap({"p": right, "a": a}, labels, ["p", "a"])
    assert perfect["repeated"][0][1] is None  # no errors to repeat


def test_member_contributions_leave_each_member_out_of_the_vote():
    from ensemble.report.metrics import member_contributions

    labels = np.zeros(4, dtype=int)
    right = np.tile([0.6, 0.4], (4, 1))  # right, not sure
    also_right = np.tile([0.7, 0.3], (4, 1))
    wrong = np.tile([0.1, 0.9], (4, 1))  # wrong, sure of it
    stack = np.stack([right, also_right, wrong])
    result = member_contributions({"clean": stack}, labels, ["a", "b", "c"])
    hard, soft = result["clean"]["hard"], result["clean"]["soft"]
    assert hard["all"] == 1.0  # two votes against one
    # without a, b and c tie; c's confidence breaks the tie its way: a earns its place
    assert hard["without"] == {"a": 0.0, "b": 0.0, "c": 1.0}
    # soft: all three average to 0.467 for the true class; without c the two right ones win
    assert soft["all"] == 0.0 and soft["without"]["c"] == 1.0
    assert member_contributions({"clean": stack[:2]}, labels, ["a", "b"]) == {}
