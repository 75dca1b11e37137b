import json
import math
import warnings

import numpy as np
import pytest

from ensemble.core.errors import ConfigError, EnsembleError, RunError
from ensemble.refer.conformal import (
    DEFAULT_ALPHA,
    ConformalClassifier,
    NotFittedError,
    SmallCalibrationWarning,
    conformal_quantile,
    coverage,
    mean_set_size,
    minimum_calibration_size,
    per_class_coverage,
    referral_summary,
    set_sizes,
)

# Five classes of very different difficulty: class 0 is rarely given much probability, class 4
# usually is. With probabilities drawn from a Dirichlet and labels drawn from the probabilities
# themselves, the probabilities are calibrated and calibration and test images exchangeable.
CONCENTRATION = (0.2, 0.5, 1.0, 2.0, 4.0)
N_CAL, N_TEST = 1000, 5000
SEEDS = range(20)
HASHES = {"member_a": "a" * 64, "member_b": "b" * 64}
CONFIGS = [
    {"score": "lac"},
    {"score": "aps"},
    {"score": "raps", "raps_lambda": 0.05, "raps_k_reg": 1},
    {"score": "aps", "randomized": True, "seed": 3},
    {"score": "raps", "randomized": True},
]


def draw(rng, n, concentration=CONCENTRATION):
    probabilities = rng.dirichlet(concentration, n)
    cumulative = probabilities.cumsum(axis=1)
    cumulative[:, -1] = 1.0  # a last cumsum of 0.9999999 must not miss a draw of 0.99999995
    labels = (cumulative > rng.random((n, 1))).argmax(axis=1)
    return probabilities, labels


def tolerance(alpha, n_cal, n_test, n_seeds):
    """Three standard errors of a coverage averaged over seeds.

    Given its calibration set, coverage is Beta-distributed with variance about
    alpha(1 - alpha)/(n_cal + 2); the test images add binomial noise alpha(1 - alpha)/n_test.
    """
    return 3 * math.sqrt(alpha * (1 - alpha) * (1 / (n_cal + 2) + 1 / n_test) / n_seeds)


def ids(config):
    return "-".join(f"{k}={v}" for k, v in config.items())


@pytest.mark.parametrize("alpha", [0.1, 0.05])
@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_marginal_coverage_is_at_least_one_minus_alpha_and_not_much_more(config, alpha):
    covered = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        p_cal, y_cal = draw(rng, N_CAL)
        p_test, y_test = draw(rng, N_TEST)
        conformal = ConformalClassifier(**config).fit(p_cal, y_cal)
        covered.append(coverage(conformal.predict_sets(p_test, alpha=alpha), y_test))
    slack = tolerance(alpha, N_CAL, N_TEST, len(SEEDS))
    # Split conformal with continuous scores: 1 - alpha <= E[coverage] <= 1 - alpha + 1/(n+1).
    assert 1 - alpha - slack <= np.mean(covered) <= 1 - alpha + 1 / (N_CAL + 1) + slack


@pytest.mark.parametrize("alpha", [0.1, 0.05])
@pytest.mark.parametrize("score", ["lac", "aps"])
def test_mondrian_covers_every_class_where_marginal_does_not(score, alpha):
    n_cal = 2000  # the rarest class gets about 50 calibration images
    marginal, mondrian, class_counts = [], [], []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        p_cal, y_cal = draw(rng, n_cal)
        p_test, y_test = draw(rng, N_TEST)
        for mondrian_flag, results in ((False, marginal), (True, mondrian)):
            with warnings.catch_warnings():
                warnings.simplefilter("error", SmallCalibrationWarning)  # none expected here
                conformal = ConformalClassifier(score, mondrian=mondrian_flag, alpha=alpha)
                conformal.fit(p_cal, y_cal)
            sets = conformal.predict_sets(p_test)
            results.append(per_class_coverage(sets, y_test))
        class_counts.append((np.bincount(y_cal, minlength=5), np.bincount(y_test, minlength=5)))
    cal_counts = np.min([c for c, _ in class_counts], axis=0)
    test_counts = np.min([t for _, t in class_counts], axis=0)
    mondrian_mean = np.mean(mondrian, axis=0)
    for k in range(5):
        slack = tolerance(alpha, cal_counts[k], test_counts[k], len(SEEDS))
        assert mondrian_mean[k] >= 1 - alpha - slack, (k, mondrian_mean)
    # The point of Mondrian: one marginal threshold leaves the hard class far below 1 - alpha.
    assert np.mean(marginal, axis=0)[0] < 1 - alpha - 0.15


def test_lac_sets_are_no_larger_on_average_than_aps_sets():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        p_cal, y_cal = draw(rng, N_CAL)
        p_test, _ = draw(rng, N_TEST)
        lac = ConformalClassifier("lac").fit(p_cal, y_cal)
        aps = ConformalClassifier("aps").fit(p_cal, y_cal)
        for alpha in (0.2, 0.1, 0.05):
            assert mean_set_size(lac.predict_sets(p_test, alpha)) <= mean_set_size(
                aps.predict_sets(p_test, alpha)
            )


@pytest.mark.parametrize("mondrian", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_smaller_alpha_gives_nested_larger_sets(config, mondrian):
    rng = np.random.default_rng(7)
    p_cal, y_cal = draw(rng, N_CAL)
    p_test, _ = draw(rng, 2000)
    # Mondrian at alpha 0.005 is short of images for the rare classes: their fallback must
    # keep the sets nested too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCalibrationWarning)
        conformal = ConformalClassifier(**config, mondrian=mondrian).fit(p_cal, y_cal)
        alphas = [0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005]
        sets = [conformal.predict_sets(p_test, alpha=a) for a in alphas]
    sizes = [mean_set_size(s) for s in sets]
    for larger_alpha, smaller_alpha in zip(sets, sets[1:], strict=False):
        assert np.all(smaller_alpha >= larger_alpha)  # every class kept stays in
    assert sizes == sorted(sizes)
    assert sizes[-1] > sizes[0] + 1


def test_default_alpha_is_001_and_used_when_none():
    rng = np.random.default_rng(0)
    p_cal, y_cal = draw(rng, N_CAL)
    p_test, _ = draw(rng, 500)
    conformal = ConformalClassifier().fit(p_cal, y_cal)
    assert DEFAULT_ALPHA == conformal.alpha == 0.01
    assert np.array_equal(conformal.thresholds(), conformal.thresholds(0.01))
    assert np.array_equal(conformal.predict_sets(p_test), conformal.predict_sets(p_test, 0.01))
    other = ConformalClassifier(alpha=0.2).fit(p_cal, y_cal)
    assert np.array_equal(other.predict_sets(p_test), conformal.predict_sets(p_test, 0.2))


def two_class(true_probabilities):
    """Two-class probabilities whose true class (0) has the given probabilities."""
    p = np.asarray(true_probabilities, dtype=np.float64)
    return np.stack([p, 1 - p], axis=1), np.zeros(len(p), dtype=np.int64)


def test_threshold_is_the_finite_sample_order_statistic():
    # LAC scores 0.05, 0.15, ..., 0.95 (n = 10).
    p_cal, y_cal = two_class(1 - (np.arange(10) + 0.5) / 10)
    conformal = ConformalClassifier("lac", alpha=0.1).fit(p_cal, y_cal)
    assert np.allclose(conformal.calibration_scores_, (np.arange(10) + 0.5) / 10)
    # alpha 0.2: rank ceil(11 * 0.8) = 9 -> the 9th smallest, 0.85
    assert conformal.thresholds(0.2) == pytest.approx([0.85, 0.85])
    # alpha 0.1: rank ceil(11 * 0.9) = 10 -> the largest, 0.95
    assert conformal.thresholds(0.1) == pytest.approx([0.95, 0.95])
    # alpha 0.05 needs 19 images: infinite threshold, every class in every set, and a warning.
    with pytest.warns(
        SmallCalibrationWarning, match="only 10 calibration images, fewer than the 19"
    ):
        assert np.all(np.isinf(conformal.thresholds(0.05)))
    with pytest.warns(SmallCalibrationWarning):
        assert conformal.predict_sets(np.array([[0.999, 0.001]]), alpha=0.05).all()


@pytest.mark.parametrize(
    ("alpha", "needed"), [(0.5, 1), (0.2, 4), (0.1, 9), (0.05, 19), (0.02, 49), (0.01, 99)]
)
def test_minimum_calibration_size_matches_the_quantile(alpha, needed):
    assert minimum_calibration_size(alpha) == needed
    assert math.isfinite(conformal_quantile(np.arange(needed, dtype=float), alpha))
    assert math.isinf(conformal_quantile(np.arange(needed - 1, dtype=float), alpha))


def test_aps_score_is_the_mass_ranked_at_or_above_the_class():
    aps = ConformalClassifier("aps", alpha=0.5).fit(*two_class([0.9, 0.8]))
    assert aps.conformity_scores([[0.3, 0.7]]) == pytest.approx(np.array([[1.0, 0.7]]))
    raps = ConformalClassifier("raps", alpha=0.5, raps_lambda=0.1, raps_k_reg=0)
    raps.fit(*two_class([0.9, 0.8]))
    # rank 1 pays 0.1 * (1 - 0), rank 2 pays 0.1 * (2 - 0)
    assert raps.conformity_scores([[0.3, 0.7]]) == pytest.approx(np.array([[1.2, 0.8]]))


def test_empty_sets_are_allowed_and_referred():
    # Calibration: the true class always has 0.9 -> every LAC score is 0.1.
    conformal = ConformalClassifier("lac", alpha=0.1).fit(*two_class(np.full(40, 0.9)))
    probabilities = np.array([[0.5, 0.5], [0.95, 0.05], [0.05, 0.95]])
    sets = conformal.predict_sets(probabilities)
    # A coin-flip image is not forced into a singleton: its set is empty (see the docstring).
    assert sets.tolist() == [[False, False], [True, False], [False, True]]
    summary = referral_summary(sets, np.array([0, 0, 0]))
    assert summary == {
        "n_images": 3,
        "n_accepted": 2,
        "n_empty": 1,
        "referral_rate": pytest.approx(1 / 3),
        "accepted_accuracy": 0.5,
    }


def test_evaluation_helpers_on_a_hand_example():
    sets = np.array(
        [
            [True, False, False],  # size 1, right
            [True, True, False],  # size 2, covers
            [False, False, True],  # size 1, wrong (label 1)
            [False, False, False],  # empty
        ]
    )
    labels = np.array([0, 1, 1, 0])
    assert set_sizes(sets).tolist() == [1, 2, 1, 0]
    assert coverage(sets, labels) == 0.5
    assert mean_set_size(sets) == 1.0
    per_class = per_class_coverage(sets, labels)
    assert per_class[:2].tolist() == [0.5, 0.5] and math.isnan(per_class[2])  # no class-2 image
    summary = referral_summary(sets, labels)
    assert summary["referral_rate"] == 0.5 and summary["accepted_accuracy"] == 0.5
    assert referral_summary(sets[[1, 3]], labels[[1, 3]])["accepted_accuracy"] is None


def test_mondrian_reports_a_class_too_small_for_alpha_and_falls_back():
    rng = np.random.default_rng(0)
    p_cal, y_cal = draw(rng, 600, concentration=(1.0, 1.0, 1.0))
    keep = (y_cal != 2) | (np.cumsum(y_cal == 2) <= 5)  # class 2 keeps only 5 images
    p_cal, y_cal = p_cal[keep], y_cal[keep]
    with pytest.warns(
        SmallCalibrationWarning,
        match=r"classes \[2\] have \[5\] calibration images, fewer than the 19 that alpha=0.05",
    ):
        conformal = ConformalClassifier("lac", mondrian=True, alpha=0.05).fit(p_cal, y_cal)
    assert conformal.fallback_classes_ == [2]
    assert conformal.class_counts_[2] == 5
    with pytest.warns(SmallCalibrationWarning):
        thresholds = conformal.thresholds(0.05)
    marginal = ConformalClassifier("lac").fit(p_cal, y_cal).thresholds(0.05)[0]
    own_largest = conformal.calibration_scores_[conformal.calibration_labels_ == 2].max()
    assert thresholds[2] == max(marginal, own_largest)
    # Large enough at alpha 0.2 (needs 4): its own threshold, and no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallCalibrationWarning)
        assert conformal.fallback_classes(0.2) == []
        conformal.thresholds(0.2)
    assert ConformalClassifier("lac", mondrian=False).fit(p_cal, y_cal).fallback_classes_ == []


def test_mondrian_class_without_calibration_images_uses_the_marginal_threshold():
    p_cal, y_cal = draw(np.random.default_rng(1), 400, concentration=(1.0, 1.0, 1.0))
    p_cal, y_cal = p_cal[y_cal != 1], y_cal[y_cal != 1]
    with pytest.warns(SmallCalibrationWarning, match=r"classes \[1\] have \[0\]"):
        conformal = ConformalClassifier("aps", mondrian=True, alpha=0.1).fit(p_cal, y_cal)
    with pytest.warns(SmallCalibrationWarning):
        thresholds = conformal.thresholds()
    assert thresholds[1] == ConformalClassifier("aps").fit(p_cal, y_cal).thresholds(0.1)[1]


@pytest.mark.filterwarnings(
    "ignore::ensemble.refer.conformal.SmallCalibrationWarning"
)  # alpha 0.02
@pytest.mark.parametrize("mondrian", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_json_round_trip_gives_identical_sets(tmp_path, config, mondrian):
    rng = np.random.default_rng(11)
    p_cal, y_cal = draw(rng, 800)
    p_test, _ = draw(rng, 1000)
    conformal = ConformalClassifier(**config, mondrian=mondrian, alpha=0.05).fit(p_cal, y_cal)
    path = tmp_path / "conformal.json"
    conformal.save(path, HASHES)
    payload = json.loads(path.read_text())  # plain JSON, no pickle
    assert payload["format"] == "blood-ensemble/conformal-classifier"
    assert payload["member_sha256"] == HASHES
    assert payload["params"] == conformal.get_params()
    loaded = ConformalClassifier.load(path, dict(HASHES))
    assert loaded.get_params() == conformal.get_params()
    assert np.array_equal(loaded.calibration_scores_, conformal.calibration_scores_)
    for alpha in (None, 0.2, 0.1, 0.02):
        assert np.array_equal(
            loaded.predict_sets(p_test, alpha), conformal.predict_sets(p_test, alpha)
        )


@pytest.mark.parametrize(
    ("expected", "changed"),
    [
        ({**HASHES, "member_b": "c" * 64}, "['member_b']"),
        ({"member_a": "a" * 64}, "['member_b']"),
        ({**HASHES, "soft.json": "d" * 64}, "['soft.json']"),
    ],
)
def test_load_refuses_other_members(tmp_path, expected, changed):
    path = tmp_path / "conformal.json"
    ConformalClassifier().fit(*draw(np.random.default_rng(0), 200)).save(path, HASHES)
    with pytest.raises(RunError) as raised:
        ConformalClassifier.load(path, expected)
    message = str(raised.value)
    assert "\n" not in message
    assert message == (
        f"the conformal calibration in {path} was calibrated for other members "
        f"(changed: {changed}). Re-run the calibration on the current members."
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no conformal calibration at"),
        ("{not json", "is not valid JSON"),
        ('{"format": "something-else"}', "is not a saved conformal calibration"),
        (
            '{"format": "blood-ensemble/conformal-classifier", "format_version": 99}',
            "has format_version 99; this version reads 1",
        ),
        (
            json.dumps(
                {
                    "format": "blood-ensemble/conformal-classifier",
                    "format_version": 1,
                    "member_sha256": HASHES,
                    "params": {"score": "lac", "magic": 1},
                }
            ),
            r"is not a valid conformal calibration \(.*magic.*\). Re-run the calibration.",
        ),
    ],
)
def test_load_refuses_missing_or_foreign_files(tmp_path, content, match):
    path = tmp_path / "conformal.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RunError, match=match):
        ConformalClassifier.load(path, HASHES)


def test_randomized_sets_are_reproducible_and_depend_on_the_seed():
    rng = np.random.default_rng(5)
    p_cal, y_cal = draw(rng, N_CAL)
    p_test, _ = draw(rng, 2000)
    first = ConformalClassifier("aps", randomized=True, seed=1).fit(p_cal, y_cal)
    again = ConformalClassifier("aps", randomized=True, seed=1).fit(p_cal, y_cal)
    other = ConformalClassifier("aps", randomized=True, seed=2).fit(p_cal, y_cal)
    assert np.array_equal(first.predict_sets(p_test, 0.1), again.predict_sets(p_test, 0.1))
    assert np.array_equal(first.predict_sets(p_test, 0.1), first.predict_sets(p_test, 0.1))
    assert not np.array_equal(first.predict_sets(p_test, 0.1), other.predict_sets(p_test, 0.1))


def test_not_fitted_error():
    conformal = ConformalClassifier()
    for call in (
        lambda: conformal.predict_sets([[0.5, 0.5]]),
        lambda: conformal.thresholds(0.1),
        lambda: conformal.conformity_scores([[0.5, 0.5]]),
        lambda: conformal.save("unused.json", HASHES),
    ):
        with pytest.raises(
            NotFittedError, match=r"ConformalClassifier is not fitted yet: call fit\(\)"
        ):
            call()
    # A bug in the calling code, not bad input: not an EnsembleError (no one-line CLI message).
    assert issubclass(NotFittedError, RuntimeError) and not issubclass(
        NotFittedError, EnsembleError
    )


P3 = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
Y3 = np.array([2, 0])


def fitted(**params):
    return ConformalClassifier(**{"alpha": 0.5, **params}).fit(P3, Y3)  # 2 images suffice


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: fitted(alpha=0),
            r"alpha must be a number strictly between 0 and 1. Received: alpha=0",
        ),
        (lambda: fitted(alpha=1.5), r"Received: alpha=1.5"),
        (lambda: fitted(alpha="0.1"), r"Received: alpha='0.1'"),
        (lambda: fitted().predict_sets(P3, alpha=-0.1), r"Received: alpha=-0.1"),
        (lambda: fitted().thresholds(alpha=1.0), r"Received: alpha=1.0"),
        (
            lambda: fitted(score="hinge"),
            r"unknown conformity score. Choose from \['lac', 'aps', 'raps'\]. "
            r"Received: score='hinge'",
        ),
        (
            lambda: fitted(score="lac", randomized=True),
            r"randomized applies to the 'aps' and 'raps' scores only .* "
            r"Received: score='lac', randomized=True",
        ),
        (
            lambda: fitted(mondrian="yes"),
            r"mondrian must be True or False. Received: mondrian='yes'",
        ),
        (
            lambda: fitted(raps_lambda=-1),
            r"raps_lambda must be a number >= 0. Received: raps_lambda=-1",
        ),
        (
            lambda: fitted(raps_k_reg=1.5),
            r"raps_k_reg must be an integer >= 0. Received: raps_k_reg=1.5",
        ),
        (lambda: fitted(seed=None), r"seed must be an integer. Received: seed=None"),
        (
            lambda: ConformalClassifier().fit([[0.5, 0.4, 0.3]], [0]),
            r"each row of probabilities must sum to 1 \(within 0.001\); 1 rows do not. "
            r"Received: row 0 sums to 1.2",
        ),
        (
            lambda: ConformalClassifier().fit([[1.2, -0.2]], [0]),
            r"probabilities must be finite and non-negative. Received: row 0 = \[1.2, -0.2\]",
        ),
        (
            lambda: ConformalClassifier().fit([[np.nan, 1.0]], [0]),
            r"must be finite and non-negative",
        ),
        (
            lambda: ConformalClassifier().fit([0.5, 0.5], [0]),
            r"probabilities must have shape \(n_images, n_classes\) with at least 2 classes. "
            r"Received: shape=\(2,\)",
        ),
        (
            lambda: fitted().predict_sets([[0.5, 0.5]]),
            r"probabilities must have 3 columns, one per class seen at fit time. "
            r"Received: n_classes=2",
        ),
        (
            lambda: ConformalClassifier().fit(P3, [2, 0, 1]),
            r"labels must be a 1-D array with one class index per image \(2\). "
            r"Received: labels shape=\(3,\)",
        ),
        (
            lambda: ConformalClassifier().fit(P3, [2, 3]),
            r"labels must be class indices in \[0, 3\). Received: label=3",
        ),
        (
            lambda: ConformalClassifier().fit(P3, [2.0, 0.0]),
            r"labels must be integer class indices. Received: labels dtype=float64",
        ),
        (
            lambda: coverage(np.ones((2, 3)), Y3),
            r"sets must be a boolean mask \(n_images, n_classes\), as predict_sets returns. "
            r"Received: shape=\(2, 3\), dtype=float64",
        ),
        (lambda: coverage(np.ones((2, 3), bool), [0]), r"Received: labels shape=\(1,\)"),
        (lambda: minimum_calibration_size(0.0), r"Received: alpha=0.0"),
    ],
)
def test_argument_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_lac_sets_and_aps_scores_match_mapie():
    pytest.importorskip(
        "mapie", reason="MAPIE is not installed (pip install mapie): cross-check skipped"
    )
    from mapie.classification import SplitConformalClassifier
    from mapie.conformity_scores import APSConformityScore
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Identity(ClassifierMixin, BaseEstimator):
        """A prefit classifier whose input already is the class probabilities."""

        def __init__(self, n_classes=5):
            self.n_classes = n_classes

        def fit(self, x, y=None):
            self.classes_ = np.arange(self.n_classes)
            self.n_features_in_ = self.n_classes
            return self

        def predict_proba(self, x):
            return np.asarray(x)

        def predict(self, x):
            return np.asarray(x).argmax(axis=1)

    rng = np.random.default_rng(21)
    p_cal, y_cal = draw(rng, N_CAL)
    p_test, _ = draw(rng, 2000)
    alphas = [0.2, 0.1, 0.05, 0.02]
    mapie = SplitConformalClassifier(
        Identity().fit(p_cal), confidence_level=[1 - a for a in alphas], prefit=True
    )
    mapie.conformalize(p_cal, y_cal)
    _, mapie_sets = mapie.predict_set(p_test)
    ours = ConformalClassifier("lac").fit(p_cal, y_cal)
    for i, alpha in enumerate(alphas):
        assert np.array_equal(ours.predict_sets(p_test, alpha), mapie_sets[:, :, i])
    # APS: MAPIE randomises its own calibration scores, so compare the deterministic part, the
    # cumulative mass up to and including the true class.
    mapie_aps, _ = APSConformityScore().get_true_label_cumsum_proba(y_cal, p_cal, np.arange(5))
    aps = ConformalClassifier("aps").fit(p_cal, y_cal)
    assert np.allclose(
        aps.conformity_scores(p_cal)[np.arange(N_CAL), y_cal], mapie_aps.ravel(), atol=1e-12
    )
