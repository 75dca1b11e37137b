"""Referral: the two rules, the blend halves behind the calibration, the report's section."""

import json

import numpy as np
import pytest

from ensemble.combine.fitting import halve_blend
from ensemble.refer.rule import agreement_referral, conformal_referral
from ensemble.report.referral import referral_metrics, render_section


def test_conformal_rule_accepts_only_a_set_of_exactly_the_prediction():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    sets = np.array(
        [
            [True, False, False],  # exactly the prediction: accepted
            [True, True, False],  # two classes: referred
            [False, True, False],  # one class, not the prediction (Mondrian): referred
            [False, False, False],  # empty: referred
        ]
    )
    assert conformal_referral(probabilities, sets).tolist() == [False, True, True, True]
    flagged = np.array([True, False, False, False])  # out of distribution: referred anyway
    assert conformal_referral(probabilities, sets, flagged).tolist() == [True, True, True, True]


def test_agreement_rule_is_the_earlier_one():
    probabilities = np.array([[0.9, 0.1], [0.55, 0.45], [0.4, 0.6]])
    votes = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 1]])  # 3 members × 3 images
    referred = agreement_referral(probabilities, votes, min_agreement=0.5, min_confidence=0.6)
    # image 0: agreement 2/3, confidence 0.9; image 1: 1/3; image 2: 1, confidence 0.6
    assert referred.tolist() == [False, True, False]


def test_halves_are_stratified_seeded_and_keep_duplicate_groups_whole():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [40, 21, 3, 1])  # a class of one image stays for fitting
    ids = [f"img{i}" for i in range(len(labels))]
    groups = [["img0", "img1", "img2"], ["img40", "img41"], ["img61", "img62"], ["nope"]]
    halves = halve_blend(ids, labels, groups, seed=0)
    assert halves.tolist() == halve_blend(ids, labels, groups, seed=0).tolist()
    assert halves.tolist() != halve_blend(ids, labels, groups, seed=1).tolist()
    for group in groups[:3]:
        rows = [ids.index(i) for i in group]
        assert len(set(halves[rows])) == 1
    for label, count in enumerate(np.bincount(labels)):
        assert halves[labels == label].sum() <= count // 2  # at most half calibrates
        assert (~halves[labels == label]).sum() >= 1  # every class fits the combiners
    assert halves[labels == 0].sum() == 20 and halves[labels == 1].sum() == 10
    shuffled = rng.permutation(len(labels))
    again = halve_blend([ids[i] for i in shuffled], labels[shuffled], groups, seed=0)
    assert again.sum() == halves.sum()


def _metrics(referral):
    return {"referral": referral}


def test_section_says_plainly_when_shifted_coverage_is_below_target():
    per_class = [{"class": "a", "n": 2, "coverage": 1.0, "mean_set_size": 1.0}]
    referral = {
        "calibrated": True,
        "combiner": "soft",
        "alpha": 0.01,
        "target_coverage": 0.99,
        "conformal": {
            "score": "lac",
            "mondrian": True,
            "n_calibration": 700,
            "n_needed": 99,
            "fallback_classes": ["a"],
        },
        "ood": {
            "method": "mahalanobis",
            "target_referral": 0.02,
            "threshold": 3.0,
            "n_calibration": 1400,
        },
        "image_sets": ["clean", "shifted"],
        "coverage": {
            "clean": {"n_images": 2, "coverage": 1.0, "mean_set_size": 1.0, "per_class": per_class},
            "shifted": {
                "n_images": 2,
                "coverage": 0.5,
                "mean_set_size": 1.0,
                "per_class": [{"class": "a", "n": 2, "coverage": 0.5, "mean_set_size": 1.0}],
            },
        },
        "trade_off": {
            name: [
                {
                    "alpha": 0.01,
                    "coverage": 1.0,
                    "mean_set_size": 1.0,
                    "referred": 0.5,
                    "accepted_accuracy": None,
                }
            ]
            for name in ("clean", "shifted")
        },
        "groups": ["clean", "blur"],
        "referral": {
            name: {
                "n_images": 2,
                "accuracy": 0.5,
                "n_wrong": 1,
                "referred": 0.5,
                "wrong_referred": 1.0,
                "accepted_accuracy": 1.0,
                "ood_referred": 0.0,
                "agreement_referred": 0.0,
                "agreement_wrong_referred": 0.0,
            }
            for name in ("clean", "blur")
        },
        "below_target": ["shifted"],
    }
    text = "\n".join(render_section(_metrics(referral)))
    assert "## Referral with a guarantee" in text
    assert (
        "**Coverage on the shifted copy (0.5000) is below the target 0.9900: the guarantee "
        "does not hold there.**" in text
    )
    assert "| shifted copy | 2 | 0.5000 (below) | 0.9900 | 1.00 |" in text
    assert "| blur | 2 | 0.5000 | 50.0% | 100.0% of 1 | 1.0000 | 0.0% | 0.0% | 0.0% of 1 |" in text
    assert "Classes a have too few calibration images" in text
    assert "- (none accepted)" in text
    assert render_section({}) == []
    assert "run `ensemble fit-stacker` again" in "\n".join(
        render_section(_metrics({"calibrated": False}))
    )


def test_referral_metrics_on_the_ci_run(fitted_ci_run, synthetic_folder):
    """From member outputs already computed (the cached blend outputs stand in for a report's)."""
    from ensemble.data.sources import load_dataset
    from ensemble.members.outputs import cached_member_outputs
    from ensemble.serve.ensemble import Ensemble

    fitted = Ensemble.load(fitted_ci_run)
    run = fitted.run.with_data(load_dataset(synthetic_folder))
    cached = {name: cached_member_outputs(run, name, "val") for name in fitted.members_}
    outputs = fitted.calibrate(
        np.stack([cached[name]["probabilities"] for name in fitted.members_]),
        [cached[name]["features"] for name in fitted.members_],
    )
    labels = cached[fitted.members_[0]]["labels"]
    kinds = ["blur", "jpeg"] * (len(labels) // 2) + ["blur"] * (len(labels) % 2)
    referral = referral_metrics(
        fitted, outputs, labels, shifted=outputs, shift_kinds=kinds, zoomed=outputs
    )
    json.dumps(referral)  # JSON-ready
    assert referral["combiner"] == fitted.combiner_ and referral["alpha"] == 0.01
    assert referral["image_sets"] == ["clean", "shifted", "zoomed"]
    assert referral["groups"] == ["clean", "blur", "jpeg", "zoom"]
    clean = referral["coverage"]["clean"]
    assert clean["n_images"] == len(labels) and clean["mean_set_size"] == 8  # 8 images: all
    assert [row["class"] for row in clean["per_class"]] == fitted.classes_
    blur = referral["referral"]["blur"]
    assert blur["n_images"] == kinds.count("blur") and blur["referred"] == 1.0
    alphas = [point["alpha"] for point in referral["trade_off"]["clean"]]
    assert alphas == sorted(alphas, reverse=True) and 0.01 in alphas
    sizes = [point["mean_set_size"] for point in referral["trade_off"]["clean"]]
    assert sizes == sorted(sizes)  # smaller alpha, larger sets
    assert referral["ood"]["method"] == "mahalanobis"
    lines = render_section({"referral": referral})
    assert any(line.startswith("| zoom |") for line in lines)


def test_report_on_the_ci_run_has_the_referral_section(
    fitted_ci_run, synthetic_folder, tmp_path, capsys
):
    from tests.conftest import run_cli

    out = tmp_path / "report"
    code, _, err = run_cli(
        ["report", "--run", fitted_ci_run, "--data", synthetic_folder, "--out", out], capsys
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    referral = metrics["referral"]
    assert referral["calibrated"] is True and "shifted" in referral["image_sets"]
    text = (out / "report.md").read_text()
    assert "## Referral with a guarantee" in text
    for group in referral["groups"]:
        assert f"| {group} | " in text
    # Rendered from metrics.json alone.
    assert "\n".join(render_section(metrics)) in text


@pytest.mark.parametrize("alpha", [0.2, 0.5])
def test_decide_sets_match_predict_sets(fitted_ci_run, synthetic_folder, alpha):
    from ensemble.serve.ensemble import Ensemble

    fitted = Ensemble.load(fitted_ci_run)
    paths = sorted((synthetic_folder / "monocyte").iterdir())[:4]
    decisions = fitted.decide(paths, alpha=alpha)
    assert decisions.refer == "conformal" and decisions.alpha == alpha
    np.testing.assert_array_equal(decisions.sets, fitted.predict_sets(paths, alpha))


def test_referral_reasons_name_each_cause_and_leave_accepted_images_blank():
    from ensemble.refer.rule import referral_reasons

    abstain = np.array([True, True, True, False, True])
    reasons = referral_reasons(
        abstain,
        flagged=np.array([True, False, False, False, False]),
        set_sizes=np.array([1, 3, 0, 1, 2]),
        low_confidence=np.array([False, False, False, True, True]),
    )
    assert reasons == [
        "unlike the training images",
        "several classes possible",
        "no class fits",
        "",
        "several classes possible; not confident enough",
    ]


@pytest.mark.parametrize("refer", ["conformal", "agreement"])
def test_every_referred_image_says_why(fitted_ci_run, synthetic_folder, refer):
    from ensemble.serve.ensemble import Ensemble

    fitted = Ensemble.load(fitted_ci_run)
    paths = sorted((synthetic_folder / "monocyte").iterdir())[:6]
    decisions = fitted.decide(paths, refer=refer, alpha=0.5, min_agreement=0.99)
    for referred, reason in zip(decisions.abstain, decisions.reasons, strict=True):
        assert bool(reason) == bool(referred)
