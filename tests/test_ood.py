import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from ensemble.core.errors import ConfigError, RunError
from ensemble.refer.conformal import NotFittedError
from ensemble.refer.ood import NotCalibratedError, OodDetector

HASHES = {"member_a": "a" * 64, "member_b": "b" * 64}
LATENT, WIDTH, CLASSES = 8, 64, 4


@pytest.fixture(autouse=True)
def one_blas_thread():
    """These matrices are small: with two BLAS threads on a busy 2-core machine an eigh of
    300 x 300 takes 15 times longer than with one."""
    with threadpool_limits(1):
        yield


class World:
    """Seeded synthetic "pooled features": class clusters in an 8-dimensional latent space,
    embedded in 64 dimensions with a little isotropic noise (CNN features have a low intrinsic
    dimension). Two members see the same images through different embeddings and scales."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.means = self.rng.normal(0.0, 3.0, (CLASSES, LATENT))
        self.shape = np.eye(LATENT) + self.rng.normal(0.0, 0.3, (LATENT, LATENT))  # tied cov.
        self.embed = {
            "member_a": self.rng.normal(0.0, 1.0, (LATENT, WIDTH)),
            "member_b": 5.0 * self.rng.normal(0.0, 1.0, (LATENT, WIDTH)),
        }

    def latent(self, n, kind="clean"):
        labels = self.rng.integers(0, CLASSES, n)
        noise = self.rng.standard_normal((n, LATENT)) @ self.shape.T
        if kind == "clean":
            return self.means[labels] + noise, labels
        if kind == "wide":  # same cells, much noisier acquisition
            return self.means[labels] + 2.5 * noise, labels
        if kind == "far":  # not a cell: a cluster at right angles to every class mean
            return self.far_centre() + noise, labels
        if kind == "between":  # halfway between two classes: ambiguous
            return (self.means[labels] + self.means[(labels + 1) % CLASSES]) / 2 + noise, labels
        raise ValueError(kind)

    def far_centre(self):
        direction = self.rng.standard_normal(LATENT)
        basis, _ = np.linalg.qr(self.means.T)  # the class means' span
        direction -= basis @ (basis.T @ direction)
        return direction / np.linalg.norm(direction) * np.linalg.norm(self.means, axis=1).mean()

    def features(self, n, kind="clean"):
        latent, labels = self.latent(n, kind)
        return {
            name: latent @ embed + 0.3 * self.rng.standard_normal((n, WIDTH))
            for name, embed in self.embed.items()
        }, labels

    def logits(self, latent):
        """Linear-discriminant logits: -squared distance to each class mean / 2."""
        return -0.5 * ((latent[:, None, :] - self.means[None]) ** 2).sum(axis=2)


def auroc(clean, shifted):
    truth = np.r_[np.zeros(len(clean)), np.ones(len(shifted))]
    return roc_auc_score(truth, np.r_[clean, shifted])


def softmax(logits):
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


# kNN works on L2-normalised features, which discards their norm: noisier copies of the same
# cells ("wide") are harder for it than for Mahalanobis.
@pytest.mark.parametrize(
    ("method", "far_auroc", "wide_auroc"), [("mahalanobis", 0.95, 0.95), ("knn", 0.95, 0.8)]
)
def test_feature_scores_separate_shifted_from_clean(method, far_auroc, wide_auroc):
    world = World(0)
    fit, fit_labels = world.features(1000)
    detector = OodDetector(method, n_components=16, bank_size=500).fit(fit, fit_labels)
    clean = detector.score(world.features(1000)[0])
    assert auroc(clean, detector.score(world.features(300, "far")[0])) > far_auroc
    assert auroc(clean, detector.score(world.features(300, "wide")[0])) > wide_auroc


def test_each_member_alone_separates_too():
    world = World(0)
    fit, fit_labels = world.features(1000)
    clean, far = world.features(1000)[0], world.features(300, "far")[0]
    for member in HASHES:
        single = OodDetector(n_components=16).fit({member: fit[member]}, fit_labels)
        assert single.members_ == [member]
        assert (
            auroc(single.score({member: clean[member]}), single.score({member: far[member]})) > 0.95
        )


def test_energy_on_logits_and_max_softmax_on_probabilities():
    world = World(1)
    energy = OodDetector("energy").fit(world.logits(world.latent(2000)[0]))
    clean = energy.score(world.logits(world.latent(2000)[0]))
    for kind in ("far", "wide"):
        assert auroc(clean, energy.score(world.logits(world.latent(500, kind)[0]))) > 0.95, kind
    msp = OodDetector("max_softmax").fit(softmax(world.logits(world.latent(2000)[0])))
    clean = msp.score(softmax(world.logits(world.latent(2000)[0])))
    between = msp.score(softmax(world.logits(world.latent(500, "between")[0])))
    assert auroc(clean, between) > 0.9


def test_member_scores_are_standardised_before_averaging():
    world = World(2)
    fit, labels = world.features(1500)
    detector = OodDetector("mahalanobis", n_components=16).fit(fit, labels)
    fresh = world.features(1000)[0]
    raw = detector.member_scores(fresh)
    standardised = [
        (raw[name] - detector.member_states_[name]["median"])
        / detector.member_states_[name]["scale"]
        for name in HASHES
    ]
    assert np.allclose(detector.score(fresh), np.mean(standardised, axis=0))
    # On fit images each member's standardised scores have median 0 and MAD-scale 1.
    for name, values in detector.member_scores(fit).items():
        z = (values - detector.member_states_[name]["median"]) / detector.member_states_[name][
            "scale"
        ]
        assert abs(np.median(z)) < 1e-9
        assert 1.4826 * np.median(np.abs(z)) == pytest.approx(1.0)


def test_calibrated_threshold_refers_the_target_rate_of_fresh_clean_images():
    # The threshold logic is the same for every method; Mahalanobis is the fastest to score.
    rate, n_cal, n_test, seeds = 0.02, 2000, 10000, range(4)
    referred = []
    for seed in seeds:
        world = World(10 + seed)
        fit, labels = world.features(1500)
        detector = OodDetector("mahalanobis", n_components=16).fit(fit, labels)
        detector.calibrate(detector.score(world.features(n_cal)[0]))
        referred.append(detector.is_out_of_distribution(detector.score(world.features(n_test)[0])))
    # Conformal: r - 1/(n+1) <= E[referral] <= r; calibration (Beta) plus test (binomial) noise.
    slack = 3 * math.sqrt(rate * (1 - rate) * (1 / (n_cal + 2) + 1 / n_test) / len(seeds))
    assert rate - 1 / (n_cal + 1) - slack <= np.mean(referred) <= rate + slack
    # The rate can be chosen at predict time, from the same calibration.
    assert np.mean(
        detector.is_out_of_distribution(detector.score(world.features(n_test)[0]), 0.2)
    ) == (pytest.approx(0.2, abs=0.03))


def test_threshold_is_the_finite_sample_order_statistic():
    detector = OodDetector("max_softmax", target_referral=0.1).fit(softmax(np.eye(3) * 3))
    detector.calibrate(np.arange(1.0, 20.0))  # n = 19
    # rank ceil(20 * 0.9) = 18 -> 18.0; a score must be above it to be flagged.
    assert detector.threshold() == 18.0
    assert detector.is_out_of_distribution([18.0, 18.5]).tolist() == [False, True]
    with pytest.raises(ConfigError, match="target_referral=0.01 needs at least 99 calibration"):
        detector.threshold(0.01)


@pytest.mark.parametrize(
    ("method", "inputs"),
    [
        ("mahalanobis", "features"),
        ("knn", "features"),
        ("energy", "logits"),
        ("max_softmax", "probabilities"),
    ],
)
def test_json_round_trip_gives_equal_scores(tmp_path, method, inputs):
    world = World(3)

    def make(n, kind="clean"):
        if inputs == "features":
            return world.features(n, kind)
        latent, labels = world.latent(n, kind)
        logits = world.logits(latent)
        return (
            {"member_a": logits, "member_b": 2 * logits}
            if inputs == "logits"
            else {
                "member_a": softmax(logits),
                "member_b": softmax(logits / 2),
            }
        ), labels

    fit, labels = make(800)
    detector = OodDetector(method, n_components=16, k=5, bank_size=300).fit(fit, labels)
    detector.calibrate(detector.score(make(500)[0]))
    path = tmp_path / "ood.json"
    detector.save(path, HASHES)
    payload = json.loads(path.read_text())  # plain JSON, no pickle
    assert payload["format"] == "blood-ensemble/ood-detector"
    assert payload["member_sha256"] == HASHES and payload["params"] == detector.get_params()
    loaded = OodDetector.load(path, dict(HASHES))
    fresh = {**make(300)[0]}
    far = make(300, "far")[0]
    for batch in (fresh, far):
        assert np.array_equal(loaded.score(batch), detector.score(batch))  # bit-identical
    assert loaded.threshold() == detector.threshold()
    assert loaded.threshold(0.1) == detector.threshold(0.1)


def test_saved_file_stays_small_for_1280_dimensional_features(tmp_path):
    rng = np.random.default_rng(4)
    features = rng.standard_normal((300, 1280)).astype(np.float32)
    detector = OodDetector("mahalanobis", n_components=64).fit(features, rng.integers(0, 8, 300))
    detector.calibrate(detector.score(rng.standard_normal((100, 1280))))
    detector.save(tmp_path / "ood.json", {"features": "f" * 64})
    size = (tmp_path / "ood.json").stat().st_size
    assert size < 1.2e6  # ~64 x 1280 float32 values, one vector per line
    member = json.loads((tmp_path / "ood.json").read_text())["members"]["features"]
    assert np.asarray(member["whitening"]).shape == (64, 1280)
    assert np.asarray(member["centres"]).shape == (8, 64)


@pytest.mark.parametrize(
    ("expected", "changed"),
    [
        ({**HASHES, "member_b": "c" * 64}, "['member_b']"),
        ({"member_a": "a" * 64}, "['member_b']"),
    ],
)
def test_load_refuses_other_members(tmp_path, expected, changed):
    world = World(5)
    fit, labels = world.features(300)
    detector = OodDetector(n_components=8).fit(fit, labels)
    detector.calibrate(detector.score(world.features(100)[0]))
    path = tmp_path / "ood.json"
    detector.save(path, HASHES)
    with pytest.raises(RunError) as raised:
        OodDetector.load(path, expected)
    assert str(raised.value) == (
        f"the OOD detector in {path} was calibrated for other members (changed: {changed}). "
        "Re-run the calibration on the current members."
    )


def test_single_array_is_one_member_and_refit_drops_the_calibration():
    world = World(6)
    fit, labels = world.features(400)
    detector = OodDetector("knn", k=3, bank_size=100).fit(fit["member_a"], labels)
    assert detector.members_ == ["features"]
    detector.calibrate(detector.score(world.features(200)[0]["member_a"]))
    assert detector.threshold() > 0
    detector.fit(fit["member_a"])
    with pytest.raises(NotFittedError, match="not calibrated yet"):  # NotCalibratedError is one
        detector.threshold()


def test_not_fitted_and_not_calibrated_errors(tmp_path):
    detector = OodDetector()
    for call in (
        lambda: detector.score(np.ones((3, 4))),
        lambda: detector.member_scores(np.ones((3, 4))),
        lambda: detector.calibrate(np.ones(100)),
    ):
        with pytest.raises(NotFittedError, match=r"OodDetector is not fitted yet: call fit\(\)"):
            call()
    world = World(7)
    fit, labels = world.features(200)
    detector.fit(fit, labels)
    for call in (
        lambda: detector.threshold(),
        lambda: detector.is_out_of_distribution(np.zeros(3)),
        lambda: detector.save(tmp_path / "ood.json", HASHES),
    ):
        with pytest.raises(NotCalibratedError, match=r"OodDetector is not calibrated yet"):
            call()


FEATURES = np.random.default_rng(0).standard_normal((30, 5))
LABELS = np.arange(30) % 3


def fitted(**params):
    return OodDetector(**params).fit(FEATURES, LABELS)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: fitted(method="odin"),
            r"unknown OOD method. Choose from \['mahalanobis', 'knn', 'energy', 'max_softmax'\]. "
            r"Received: method='odin'",
        ),
        (
            lambda: fitted(target_referral=0),
            r"target_referral must be a number strictly between 0 and 1. "
            r"Received: target_referral=0",
        ),
        (lambda: fitted(target_referral=2.0), r"Received: target_referral=2.0"),
        (
            lambda: fitted().calibrate(np.arange(60.0)).threshold(1.0),
            r"Received: target_referral=1.0",
        ),
        (
            lambda: fitted(n_components=0),
            r"n_components must be an integer >= 1, or None to keep every direction. "
            r"Received: n_components=0",
        ),
        (lambda: fitted(k=0), r"k must be an integer >= 1. Received: k=0"),
        (
            lambda: fitted(method="knn", k=5, bank_size=5),
            r"bank_size must be an integer >= k \+ 1 \(6\). Received: bank_size=5",
        ),
        (
            lambda: fitted(temperature=0),
            r"temperature must be a number > 0. Received: temperature=0",
        ),
        (lambda: fitted(seed=1.5), r"seed must be an integer. Received: seed=1.5"),
        (
            lambda: OodDetector().fit(FEATURES),
            r"method='mahalanobis' needs the class labels of the fit images. Received: labels=None",
        ),
        (
            lambda: OodDetector().fit(FEATURES, LABELS[:10]),
            r"labels must be a 1-D integer array with one class per image \(30\). "
            r"Received: labels shape=\(10,\)",
        ),
        (
            lambda: OodDetector().fit(FEATURES[:, 0], LABELS),
            r"inputs of member 'features' must be a finite \(n_images, n_features\) array. "
            r"Received: shape=\(30,\)",
        ),
        (
            lambda: OodDetector().fit({"a": FEATURES, "b": FEATURES[:20]}, LABELS),
            r"every member's inputs must have one row per image. "
            r"Received: rows=\{'a': 30, 'b': 20\}",
        ),
        (lambda: OodDetector().fit({}, LABELS), r"inputs must hold at least one member"),
        (
            lambda: fitted().score({"other": FEATURES}),
            r"inputs must have the members the detector was fitted on: \['features'\]. "
            r"Received: members=\['other'\]",
        ),
        (
            lambda: fitted().score(FEATURES[:, :4]),
            r"inputs of member 'features' must have 5 columns, as at fit time. "
            r"Received: n_features=4",
        ),
        (
            lambda: OodDetector("energy").fit(softmax(FEATURES)),
            r"method='energy' needs logits, but the inputs of member 'features' are "
            r"probabilities .* Received: probabilities",
        ),
        (
            lambda: OodDetector("max_softmax").fit(np.abs(FEATURES)),
            r"each row of probabilities must sum to 1",
        ),
        (
            lambda: fitted().calibrate(np.ones(10)),
            r"calibration needs at least 49 clean images for target_referral=0.02. "
            r"Received: 10 scores",
        ),
        (
            lambda: fitted().calibrate(np.ones((60, 2))),
            r"scores must be a 1-D array of finite numbers .* Received: shape=\(60, 2\)",
        ),
    ],
)
def test_argument_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_energy_of_log_probabilities_would_be_constant():
    """Why method='energy' refuses probabilities (module docstring)."""
    logits = np.random.default_rng(8).normal(0, 3, (50, 8))
    log_probabilities = np.log(softmax(logits))
    energy = OodDetector("energy").fit(logits)
    assert np.ptp(energy.member_scores(log_probabilities)["features"]) < 1e-9
    assert np.ptp(energy.member_scores(logits)["features"]) > 1.0


def test_knn_standardisation_uses_leave_one_out_distances_in_the_bank():
    from sklearn.neighbors import NearestNeighbors

    world = World(9)
    fit, _ = world.features(400)
    detector = OodDetector("knn", n_components=16, k=5, bank_size=150).fit(fit["member_a"])
    state = detector.member_states_["features"]
    bank = state["bank"].astype(np.float64)
    assert bank.shape == (150, 16)
    # The 6th nearest including itself = the 5th nearest other bank image.
    distances, _ = NearestNeighbors(n_neighbors=6).fit(bank).kneighbors(bank)
    assert state["median"] == pytest.approx(np.median(distances[:, 5]))
    # A fresh image's score: its 5th nearest bank image.
    fresh = world.features(50)[0]["member_a"]
    projected = (fresh / np.linalg.norm(fresh, axis=1, keepdims=True) - state["mean"]) @ state[
        "components"
    ].astype(np.float64).T
    expected, _ = NearestNeighbors(n_neighbors=5).fit(bank).kneighbors(projected)
    assert detector.member_scores(fresh)["features"] == pytest.approx(expected[:, 4])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no OOD detector at"),
        ('{"format": "blood-ensemble/conformal-classifier"}', "is not a saved OOD detector"),
        (
            json.dumps(
                {
                    "format": "blood-ensemble/ood-detector",
                    "format_version": 1,
                    "member_sha256": HASHES,
                }
            ),
            r"is not a valid OOD detector \('params'\). Re-run the calibration.",
        ),
    ],
)
def test_load_refuses_missing_foreign_or_incomplete_files(tmp_path, content, match):
    path = tmp_path / "ood.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RunError, match=match):
        OodDetector.load(path, HASHES)
