"""report.html, leaderboard.csv, the review gallery (in a real browser: test_browser.py)."""

import csv
import io
import json
import re
import shutil

import numpy as np
import pytest

from ensemble.corrupt.shifts import SHIFTS
from ensemble.report.html import read_thumbnails, render_html
from ensemble.report.leaderboard import COLUMNS, leaderboard
from ensemble.serve.gallery import GALLERY_LIMIT, prediction_cards, report_cards, thumbnail_jpeg
from tests.conftest import run_cli_captured

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="session")
def ci_report(fitted_ci_run, synthetic_folder, tmp_path_factory):
    """``ensemble report`` of a copy of the ci run on its test split (shifted and zoomed)."""
    root = tmp_path_factory.mktemp("ci-report")
    run = root / "run"
    shutil.copytree(fitted_ci_run, run)  # the report caches outputs in the run
    out = root / "report"
    code, _, err = run_cli_captured(
        ["report", "--run", run, "--data", synthetic_folder, "--out", out]
    )
    assert code == 0, err
    return out, json.loads((out / "metrics.json").read_text()), err


def test_report_writes_every_file_with_zoomed_copy_and_tests_per_copy(ci_report):
    out, metrics, err = ci_report
    for name in ("metrics.json", "report.md", "report.html", "leaderboard.csv"):
        assert (out / name).is_file(), name
    models = metrics["members"] + metrics["combiners"]
    assert set(metrics["zoomed"]) == set(models) == set(metrics["shifted"])
    best = metrics["best_combiner"]
    for copy in ("shifted", "zoomed"):
        # on each copy the best combiner meets the member that is best on that copy
        member = metrics[f"{copy}_best_member"]
        accuracy = {name: metrics[copy][name]["accuracy"] for name in metrics["members"]}
        assert accuracy[member] == max(accuracy.values())
        assert f"{best}_vs_{member}" in metrics[f"{copy}_mcnemar"]
    text = (out / "report.md").read_text()
    assert f"holds the 7 acquisition kinds ({', '.join(SHIFTS)})" in text
    assert "zoom is not among them" in text and "The zoomed copy zooms every image" in text
    assert "- On the shifted copy: " in text and "- On the zoomed copy: " in text
    assert (
        "| model | clean accuracy | shifted accuracy | shifted macro-F1 | zoomed accuracy" in text
    )
    assert "accuracy — Wilson score interval" in text and "[report.html](report.html)" in text


def test_accuracy_interval_is_wilson_and_others_bootstrap(ci_report):
    from ensemble.report.metrics import wilson_interval

    _, metrics, _ = ci_report
    assert metrics["interval_methods"]["accuracy"].startswith("Wilson")
    n = metrics["n_images"]
    for name, values in metrics["models"].items():
        right = round(values["accuracy"] * n)
        assert values["ci95"]["accuracy"] == pytest.approx(wilson_interval(right, n)), name
    assert metrics["interval_methods"]["macro_f1"].startswith("percentile bootstrap")


def test_leaderboard_csv_equals_metrics(ci_report):
    out, metrics, _ = ci_report
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert list(rows[0]) == list(COLUMNS)
    assert {row["model"] for row in rows} == set(metrics["members"] + metrics["combiners"])
    accuracies = [float(row["test_accuracy"]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    for row in rows:
        name, values = row["model"], metrics["models"][row["model"]]
        member = name in metrics["members"]
        assert row["kind"] == ("member" if member else "combiner")
        assert float(row["test_accuracy"]) == values["accuracy"]
        low, high = values["ci95"]["accuracy"]
        assert (float(row["test_accuracy_low"]), float(row["test_accuracy_high"])) == (low, high)
        assert float(row["macro_f1"]) == values["macro_f1"]
        assert float(row["ece"]) == values["calibration"]["ece"]
        assert float(row["cv_blend_accuracy"]) == metrics["cv_accuracy_on_blend"][name]
        assert float(row["shifted_accuracy"]) == metrics["shifted"][name]["accuracy"]
        assert float(row["zoomed_accuracy"]) == metrics["zoomed"][name]["accuracy"]
        if member:
            seconds = metrics["member_details"][name]["train_seconds"]
            assert float(row["train_minutes"]) == pytest.approx(seconds / 60)
            speed = metrics["prediction_images_per_second"][name]
            assert float(row["predict_images_per_second"]) == speed
        else:
            assert row["train_minutes"] == ""
    # The page shows the same rows.
    page = (out / "report.html").read_text()
    table = page[
        page.index('id="leaderboard-table"') : page.index(
            "</table>", page.index('id="leaderboard-table"')
        )
    ]
    assert table.count("<tr") == len(rows) + 1


def test_html_is_self_contained_and_rendered_from_metrics_alone(ci_report):
    out, metrics, _ = ci_report
    page = (out / "report.html").read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith(("data:", "#")) for s in sources), {
        s[:40] for s in sources if not s.startswith(("data:", "#"))
    }
    assert not re.search(r"url\(|@import|https?://(?!www\.w3\.org/2000/svg)", page)
    # The gallery: every wrong or referred image (under the limit), each with its thumbnail.
    gallery = metrics["gallery"]
    assert gallery["model"] == metrics["best_combiner"]
    assert len(gallery["cards"]) == min(GALLERY_LIMIT, gallery["counts"]["wrong_or_referred"])
    assert page.count('<div class="card ') == len(gallery["cards"]) > 0
    assert page.count("data:image/jpeg;base64,") == len(gallery["cards"])
    # Nothing but metrics.json and the thumbnails is needed to render the page again.
    again = render_html(
        json.loads((out / "metrics.json").read_text()), read_thumbnails(metrics, out)
    )
    assert again == page
    # Training curves from each CNN member's history.
    details = metrics["member_details"]
    assert details["tiny-a"]["history"] and "history" not in details["tiny-ovr"]
    assert page.count('aria-label="training curves of') == 2


def test_gallery_holds_every_error_of_each_confusion_cell(ci_report):
    _, metrics, _ = ci_report
    classes = metrics["classes"]
    matrix = metrics["models"][metrics["best_combiner"]]["confusion"]
    cards = metrics["gallery"]["cards"]
    for i, true in enumerate(classes):
        for j, predicted in enumerate(classes):
            if i != j:
                shown = [c for c in cards if (c["true"], c["predicted"]) == (true, predicted)]
                assert len(shown) == matrix[i][j], (true, predicted)


def test_report_cards_wrong_first_under_the_limit_then_by_confidence():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],  # right, sure, agreed: not shown
            [0.6, 0.3, 0.1],  # wrong (0 for 1), 0.6
            [0.2, 0.35, 0.45],  # right but unsure (0.45 < 0.5): referred
            [0.1, 0.8, 0.1],  # wrong, sure
            [0.4, 0.3, 0.3],  # wrong and unsure
            [0.1, 0.1, 0.8],  # right, sure, but members disagree: referred
        ]
    )
    votes = np.array([[0, 0, 2, 1, 0, 0], [0, 0, 2, 1, 0, 1], [0, 1, 2, 1, 0, 2]])
    ids = [f"img{i}.png" for i in range(6)]
    cards, counts = report_cards(probabilities, labels, votes, CLASSES, ["m1", "m2", "m3"], ids)
    assert counts == {"wrong": 3, "referred": 3, "wrong_or_referred": 5, "shown": 5}
    assert [c["id"] for c in cards] == ["img4.png", "img2.png", "img1.png", "img3.png", "img5.png"]
    first = cards[0]
    assert first["true"] == "b" and first["predicted"] == "a" and first["referred"]
    assert first["top3"][0] == ["a", 0.4] and len(first["top3"]) == 3
    assert first["votes"] == [["m1", "a"], ["m2", "a"], ["m3", "a"]]
    assert cards[-1]["agreement"] == pytest.approx(1 / 3, abs=1e-3)
    # Over the limit: the wrong images are kept first.
    cut, counts = report_cards(
        probabilities, labels, votes, CLASSES, ["m1", "m2", "m3"], ids, limit=3
    )
    assert counts["shown"] == 3 and all(c["true"] != c["predicted"] for c in cut)
    # The run's referral rule given: its flags replace the agreement rule's.
    conformal = np.array([False, False, False, False, False, True])
    _, counts = report_cards(
        probabilities, labels, votes, CLASSES, ["m1", "m2", "m3"], ids, referred=conformal
    )
    assert counts == {"wrong": 3, "referred": 1, "wrong_or_referred": 4, "shown": 4}


class _CalibratedRun:
    """What gallery_referral reads of a fitted ensemble: a calibrated run with an OOD detector."""

    ood_ = object()
    ood_threshold = 1.0

    def __init__(self, rule):
        self.rule = rule

    def default_refer(self):
        return self.rule

    def sets_from_probabilities(self, probabilities, alpha, combiner):
        assert alpha is None and combiner == "stack"  # the default alpha, the gallery's model
        return probabilities > 0.25

    def ood_from_outputs(self, outputs):
        return np.array([0.5, 0.5, 2.0])


@pytest.mark.parametrize(
    ("rule", "referred"),
    [
        # sets {a}, {a,b}, {a} ; image 2 is out of distribution
        ("conformal", [False, True, True]),
        # agreement: image 1 has confidence 0.45 < 0.5; members all vote a
        ("agreement", [False, True, False]),
    ],
)
def test_gallery_refers_by_the_runs_rule(rule, referred):
    from ensemble.combine.base import MemberOutputs
    from ensemble.report.build import gallery_referral

    probabilities = np.array([[0.8, 0.1, 0.1], [0.45, 0.4, 0.15], [0.9, 0.05, 0.05]])
    member = np.array([[0.9, 0.05, 0.05]] * 3)
    outputs = MemberOutputs(np.stack([member, member]), np.stack([member, member]), ())
    got_rule, flags = gallery_referral(_CalibratedRun(rule), "stack", probabilities, outputs)
    assert got_rule == rule and flags.tolist() == referred


@pytest.mark.parametrize("as_text", [True, False])
def test_prediction_cards_referred_first_then_rising_confidence(as_text):
    def row(path, prediction, confidence, abstain, probabilities=None, error=None):
        values = {
            "path": path,
            "prediction": prediction,
            "confidence": confidence,
            "agreement": 0.5,
            "abstain": abstain,
            "error": error,
            "vote_m1": prediction,
        }
        for name, p in zip(CLASSES, probabilities or [None] * 3, strict=True):
            values[f"proba_{name}"] = p
        if as_text:  # as read back from predict's CSV
            values = {
                k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in values.items()
            }
        return values

    rows = [
        row("sure.png", "a", 0.95, False, [0.95, 0.04, 0.01]),
        row("broken.png", None, None, None, error="not an image"),
        row("unsure.png", "b", 0.6, False, [0.3, 0.6, 0.1]),
        row("referred.png", "c", 0.9, True),  # no probabilities: the prediction's own only
    ]
    cards = prediction_cards(rows, CLASSES, ["m1"])
    assert [c["id"] for c in cards] == ["referred.png", "unsure.png", "sure.png"]
    assert cards[0]["top3"] == [["c", 0.9], ["a", 0.0], ["b", 0.0]]
    assert cards[1]["top3"][:2] == [["b", 0.6], ["a", 0.3]]
    assert cards[1]["true"] is None and cards[0]["referred"] and not cards[1]["referred"]


def test_report_html_of_a_1439_image_test_split_stays_small(tmp_path):
    """A gallery at its limit of real-looking cells keeps the page well under 5 MB."""
    from ensemble.data.synthetic import make_arrays

    images, _, classes = make_arrays(per_class=50, size=96, seed=3)
    thumbnails = {f"gallery/{i:05d}.jpg": thumbnail_jpeg(images[i]) for i in range(GALLERY_LIMIT)}
    n, k = 1439, len(classes)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, n)
    probabilities = rng.dirichlet(np.ones(k) * 0.3, n)
    votes = probabilities.argmax(1)[None].repeat(3, axis=0)
    cards, counts = report_cards(probabilities, labels, votes, classes, ["a", "b", "c"], range(n))
    for position, card in enumerate(cards):
        card["image"] = f"gallery/{position:05d}.jpg"
    assert counts["shown"] == GALLERY_LIMIT
    metrics = _fake_metrics(classes, n)
    metrics["gallery"] = {
        "cards": cards,
        "counts": counts,
        "model": "soft",
        "min_agreement": 0.5,
        "min_confidence": 0.5,
    }
    size = len(render_html(metrics, thumbnails).encode())
    assert size < 5_000_000, size


def test_old_metrics_json_renders_without_the_new_sections():
    """metrics.json of earlier reports (no gallery, zoomed copy or histories) still renders."""
    metrics = _fake_metrics(CLASSES, 30)
    page = render_html(metrics)
    assert "Leaderboard" in page and 'id="gallery"' not in page and "Training curves" not in page
    assert leaderboard(metrics)[0]["cv_blend_accuracy"] is None


def _fake_metrics(classes, n):
    k = len(classes)
    model = {
        "accuracy": 0.9,
        "balanced_accuracy": 0.9,
        "macro_f1": 0.9,
        "ci95": {key: [0.85, 0.95] for key in ("accuracy", "balanced_accuracy", "macro_f1")},
        "per_class": {key: [0.9] * k for key in ("precision", "recall", "f1")}
        | {"support": [1] * k},
        "calibration": {"ece": 0.02, "curve": [{"confidence": 0.9, "accuracy": 0.9, "count": n}]},
        "coverage_accuracy": [
            {"coverage": 1.0, "accuracy": 0.9},
            {"coverage": 0.5, "accuracy": 1.0},
        ],
        "confusion": (np.eye(k, dtype=int) * (n // k)).tolist(),
    }
    return {
        "title": "Run `x`: a test",
        "n_images": n,
        "classes": classes,
        "members": ["m"],
        "best_member": "m",
        "best_combiner": "soft",
        "models": {"m": model, "soft": model},
        "mcnemar": {"soft_vs_m": {"first_only": 1, "second_only": 2, "p_value": 1.0}},
        "shifted": {},
        "shifted_by_kind": {},
        "skipped": [],
        "tta": False,
    }


def test_labelling_order_puts_uncertain_and_unfamiliar_cells_first_classes_in_turn():
    from ensemble.serve.gallery import order_for_labelling

    cards = [
        {"id": "a1", "predicted": "a", "confidence": 0.99},
        {"id": "a2", "predicted": "a", "confidence": 0.6},
        {"id": "a3", "predicted": "a", "confidence": 0.95, "out_of_distribution": True},
        {"id": "b1", "predicted": "b", "confidence": 0.7},
        {"id": "b2", "predicted": "b", "confidence": 0.9},
    ]
    ordered = [card["id"] for card in order_for_labelling(cards)]
    assert ordered == ["a3", "b1", "a2", "b2", "a1"]


def test_the_review_page_says_how_many_cells_adapt_wants(
    fitted_ci_run, synthetic_folder, tmp_path, capsys
):
    from ensemble.serve.adapt import MIN_PER_CLASS
    from tests.conftest import run_cli

    page = tmp_path / "review.html"
    args = ["predict", synthetic_folder / "platelet", "--run", fitted_ci_run, "--html", page]
    code, _, err = run_cli([*args, "--review-order", "labelling"], capsys)
    assert code == 0 and "for labelling" in err
    text = " ".join(page.read_text().split())
    assert "Ordered for labelling" in text
    assert f"needs at least {MIN_PER_CLASS} reviewed cells of every class" in text
