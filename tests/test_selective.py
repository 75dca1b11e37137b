"""Selective classification with a guarantee: thresholds checked against the exact binomial test."""

import math

import numpy as np
import pytest

from ensemble.core.errors import ConfigError, RunError
from ensemble.refer.selective import (
    SelectiveClassifier,
    error_upper_bound,
    fixed_sequence_threshold,
    minimum_accepted,
    selective_score,
    threshold_sequence,
)


def _binomial_cdf(k, n, p):
    """P(Bin(n, p) <= k) by direct summation, independent of scipy."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def _draw(n, rng):
    """Scores uniform on (0, 1); an image with score s is wrong with chance 0.1 (1 - s)^3."""
    scores = rng.uniform(0, 1, n)
    correct = rng.uniform(0, 1, n) >= 0.1 * (1 - scores) ** 3
    return scores, correct


def _true_risk(threshold):
    """Error rate among images with score >= threshold under :func:`_draw`: 0.025 (1 - t)^3.

    Below 1 % while fewer than 73.7 % of the images are accepted.
    """
    return 0.025 * (1 - threshold) ** 3


def test_the_chosen_threshold_is_the_last_one_passing_the_exact_binomial_test_in_sequence():
    rng = np.random.default_rng(0)
    scores, correct = _draw(1500, rng)
    target, delta = 0.99, 0.1
    val_scores, val_correct = _draw(800, rng)
    candidates = threshold_sequence(val_scores, target, delta, len(scores))
    chosen = fixed_sequence_threshold(scores, correct, candidates, target, delta)
    expected = math.inf
    for threshold in candidates:
        accepted = scores >= threshold
        n, k = int(accepted.sum()), int((accepted & ~correct).sum())
        if _binomial_cdf(k, n, 1 - target) > delta:
            break
        expected = threshold
    assert chosen["threshold"] == expected and np.isfinite(expected)
    accepted = scores >= expected
    assert chosen["n_accepted"] == accepted.sum()
    assert chosen["n_wrong"] == (accepted & ~correct).sum()
    assert chosen["p_value"] == pytest.approx(
        _binomial_cdf(chosen["n_wrong"], chosen["n_accepted"], 0.01), rel=1e-9
    )


def test_the_guarantee_holds_over_repeated_calibration_sets():
    """The chosen threshold's true error rate exceeds 1 - target in at most ~delta of draws."""
    rng = np.random.default_rng(1)
    target, delta, draws = 0.99, 0.1, 200
    violations, coverage = 0, []
    val_scores, val_correct = _draw(2000, np.random.default_rng(2))
    candidates = threshold_sequence(val_scores, target, delta, 2000)
    for _ in range(draws):
        scores, correct = _draw(2000, rng)
        threshold = fixed_sequence_threshold(scores, correct, candidates, target, delta)[
            "threshold"
        ]
        violations += _true_risk(threshold) > 1 - target
        coverage.append(0.0 if math.isinf(threshold) else 1 - threshold)
    assert violations / draws <= delta + 0.04  # binomial noise of 200 draws
    assert np.mean(coverage) > 0.5  # and not trivially conservative (the best is 0.737)


def test_clopper_pearson_bound_and_the_smallest_sample_that_can_pass():
    assert error_upper_bound(0, 100, 0.1) == pytest.approx(1 - 0.1 ** (1 / 100), rel=1e-9)
    assert error_upper_bound(0, 0, 0.1) == 1.0
    n = minimum_accepted(0.995, 0.1)
    assert 0.995**n <= 0.1 < 0.995 ** (n - 1)


def test_too_few_calibration_images_accept_nothing_and_say_so():
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(3) * 0.3, size=40)
    labels = probabilities.argmax(axis=1)  # all right, but 40 images cannot show 99.5 %
    selective = SelectiveClassifier(targets=[0.995]).fit(probabilities, labels, probabilities)
    assert selective.threshold() == math.inf
    assert not selective.accept(probabilities).any()
    assert "40 calibration images cannot show it" in selective.warnings_[0]
    assert f"at least {minimum_accepted(0.995, 0.1)} accepted images" in selective.warnings_[0]


def _calibration(n=3000, seed=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 4))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(axis=1)
    wrong = rng.uniform(0, 1, n) < 0.3 * (1 - probabilities.max(axis=1))
    labels = np.where(wrong, (predicted + 1) % 4, predicted)
    return probabilities, labels


def test_accept_applies_the_thresholds_and_flags_are_never_accepted():
    probabilities, labels = _calibration()
    selective = SelectiveClassifier(targets=[0.98, 0.95]).fit(
        probabilities[:2000], labels[:2000], probabilities[2000:]
    )
    strict, loose = selective.accept(probabilities, 0.98), selective.accept(probabilities, 0.95)
    assert strict.sum() <= loose.sum() and strict.any()
    assert (strict <= loose).all()
    flagged = np.zeros(len(probabilities), bool)
    flagged[:10] = True
    assert not selective.accept(probabilities, 0.95, flagged)[:10].any()


def test_per_class_thresholds_each_pass_on_their_own_class():
    probabilities, labels = _calibration()
    selective = SelectiveClassifier(targets=[0.97], per_class=True).fit(
        probabilities[:2000], labels[:2000], probabilities[2000:]
    )
    thresholds = selective.threshold(0.97)
    assert len(thresholds) == 4
    predicted = probabilities[:2000].argmax(axis=1)
    confidence = selective_score(probabilities[:2000], "confidence")
    for k, threshold in enumerate(thresholds):
        accepted = (predicted == k) & (confidence >= threshold)
        n, wrong = int(accepted.sum()), int((accepted & (labels[:2000] != k)).sum())
        assert _binomial_cdf(wrong, n, 0.03) <= 0.1 or not np.isfinite(threshold)


def test_round_trip_and_refusals(tmp_path):
    probabilities, labels = _calibration()
    selective = SelectiveClassifier(targets=[0.98], score="margin").fit(
        probabilities[:2000], labels[:2000], probabilities[2000:]
    )
    selective.save(tmp_path / "s.json", {"a": "1"})
    loaded = SelectiveClassifier.load(tmp_path / "s.json", {"a": "1"})
    assert (loaded.accept(probabilities) == selective.accept(probabilities)).all()
    with pytest.raises(RunError, match="calibrated for other members"):
        SelectiveClassifier.load(tmp_path / "s.json", {"a": "2"})
    with pytest.raises(ConfigError, match=r"accepted accuracy 0.999 was not calibrated"):
        loaded.accept(probabilities, 0.999)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"targets": [1.5]}, "accepted accuracy must be a number strictly between 0 and 1"),
        ({"delta": 0}, "delta must be a number strictly between 0 and 1"),
        ({"score": "entropy"}, "unknown selective score"),
        ({"targets": []}, "targets must list at least one"),
    ],
)
def test_bad_settings_are_refused_with_their_value(params, message):
    probabilities, labels = _calibration(200)
    with pytest.raises(ConfigError, match=message):
        SelectiveClassifier(**params).fit(probabilities, labels, probabilities)


# --- through fit-stacker, predict and the Python API, on the ci run ----------------------------


@pytest.fixture(scope="module")
def selective_run(fitted_ci_run, tmp_path_factory):
    """A copy of the ci run fitted with a low accepted accuracy that its small blend can show."""
    import shutil

    from tests.conftest import run_cli_captured

    run = tmp_path_factory.mktemp("selective") / "run"
    shutil.copytree(fitted_ci_run, run)
    code, out, err = run_cli_captured(
        ["fit-stacker", "--run", run, "--accepted-accuracy", "0.6", "--delta", "0.2"]
    )
    assert code == 0, err
    return run, out


def test_fit_stacker_reports_each_calibrated_target(selective_run):
    _, out = selective_run
    for target in ("0.6", "0.995", "0.99", "0.999"):
        assert f"accepted accuracy >= {target} with probability 0.8" in out


def test_predict_and_the_api_refer_by_the_selective_thresholds(selective_run, synthetic_folder):
    from ensemble import Ensemble

    run, _ = selective_run
    paths = sorted((synthetic_folder / "lymphocyte").iterdir())[:6]
    fitted = Ensemble.load(run)
    decisions = Ensemble.load(run).decide(paths, refer="selective", accepted_accuracy=0.6)
    selective = fitted.selective_[fitted.combiner_]
    expected = ~selective.accept(decisions.probabilities, 0.6, decisions.out_of_distribution)
    assert decisions.refer == "selective"
    np.testing.assert_array_equal(decisions.abstain, expected)
    strict = fitted.decide(paths, refer="selective", accepted_accuracy=0.999)
    assert strict.abstain.all()  # 0.999 cannot be shown on the ci run's few images


def test_predict_cli_selective_and_an_uncalibrated_target(selective_run, synthetic_folder, capsys):
    import json

    from tests.conftest import run_cli

    run, _ = selective_run
    folder = synthetic_folder / "platelet"
    out = run / "p.json"
    args = ["predict", folder, "--run", run, "--refer", "selective"]
    code, _, err = run_cli([*args, "--accepted-accuracy", "0.6", "--json", "--out", out], capsys)
    assert code == 0, err
    header = json.loads(out.read_text())["header"]
    assert header["refer"] == "selective" and header["accepted_accuracy"] == 0.6
    code, _, err = run_cli([*args, "--accepted-accuracy", "0.97"], capsys)
    assert code == 2
    assert "accepted accuracy 0.97 was not calibrated. Calibrated: [0.6, 0.99, 0.995, 0.999]" in err


def test_the_default_rule_is_the_one_that_refers_fewer_val_images():
    """fit-stacker's choice on val, checked against both rules computed by hand."""
    from types import SimpleNamespace

    from ensemble.combine.fitting import RULE_CHOICE_ALPHAS, _choose_rule
    from ensemble.refer.conformal import ConformalClassifier
    from ensemble.refer.rule import conformal_referral

    probabilities, labels = _calibration(4000, seed=9)
    calibration, val = slice(0, 2000), slice(2000, 4000)
    selective = SelectiveClassifier(targets=[0.95]).fit(
        probabilities[calibration], labels[calibration], probabilities[val]
    )
    conformal = ConformalClassifier(alpha=0.05).fit(probabilities[calibration], labels[calibration])
    fitting = SimpleNamespace(
        default="soft",
        val_probabilities={"soft": probabilities[val]},
        val={"m": {"labels": labels[val]}},
        names=["m"],
        selective={"soft": selective},
        conformal={"soft": conformal},
    )
    chosen = _choose_rule(fitting, None)

    correct = probabilities[val].argmax(axis=1) == labels[val]
    accepted = selective.accept(probabilities[val])
    assert chosen["selective"]["referred"] == pytest.approx(1 - accepted.mean())
    target = correct[accepted].mean()
    best = None
    for alpha in RULE_CHOICE_ALPHAS:
        kept = ~conformal_referral(
            probabilities[val], conformal.predict_sets(probabilities[val], alpha)
        )
        if kept.any() and correct[kept].mean() >= target:
            best = min(best or 1.0, 1 - kept.mean())
    assert (chosen["conformal"] or {}).get("referred") == (
        None if best is None else pytest.approx(best)
    )
    expected = "selective" if best is None or 1 - accepted.mean() <= best else "conformal"
    assert chosen["rule"] == expected


def test_predict_uses_the_rule_fit_stacker_chose(selective_run):
    import json

    from ensemble import Ensemble

    run, _ = selective_run
    calibration = json.loads((run / "combiners/selection.json").read_text())["calibration"]
    chosen = calibration["default_refer"]
    ens = Ensemble.load(run)
    if chosen is None:  # the tiny ci run's selective rule accepts nothing on val
        assert ens.default_refer() in ("conformal", "agreement")
    else:
        assert ens.default_refer() == chosen["rule"]
    assert ens.default_refer(alpha=0.5) == "conformal"  # an alpha asks for prediction sets


@pytest.mark.large  # starts a Ray cluster (~1 min)
def test_ray_predict_refers_by_the_selective_rule_too(selective_run, synthetic_folder):
    ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra)")
    from ensemble.serve.predict import iter_prediction_rows, prepare_prediction
    from ensemble.serve.ray_predict import iter_prediction_rows_on_ray

    run, _ = selective_run
    job = prepare_prediction(
        synthetic_folder / "platelet", run, refer="selective", accepted_accuracy=0.6
    )
    local = list(iter_prediction_rows(job))
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = list(iter_prediction_rows_on_ray(job, chunk=4))
    finally:
        if started:
            ray.shutdown()
    assert [row["abstain"] for row in remote] == [row["abstain"] for row in local]
    assert [row["referral_reason"] for row in remote] == [row["referral_reason"] for row in local]
