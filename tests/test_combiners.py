import numpy as np
import pytest

from ensemble.combine.base import Combiner, VotingCombiner, log_loss, register
from ensemble.combine.registry import registered_combiners
from ensemble.combine.stacker import Settings, Stacker, tie_break
from ensemble.combine.temperature import TemperatureScaling
from ensemble.combine.voting import (
    GreedySelection,
    HardVote,
    SoftVote,
    WeightedSoftVote,
    combiner_from_json,
)
from ensemble.core.errors import ConfigError, EnsembleError, NotFittedError


def stack(*members):
    return np.array(members, dtype=np.float64)


def test_hard_vote_majority():
    p = stack(
        [[0.6, 0.3, 0.1]],
        [[0.5, 0.4, 0.1]],
        [[0.1, 0.2, 0.7]],
    )
    assert HardVote().fit(p, [0]).predict(p).tolist() == [0]


def test_hard_vote_tie_broken_by_mean_probability_of_tied_classes():
    # Two members vote class 0, two vote class 1; class 1's mean probability is higher.
    p = stack(
        [[0.51, 0.49, 0.0]],
        [[0.52, 0.48, 0.0]],
        [[0.05, 0.95, 0.0]],
        [[0.10, 0.90, 0.0]],
    )
    hard = HardVote().fit(p, [1])
    assert hard.votes(p).tolist() == [[2, 2, 0]]
    assert hard.predict(p).tolist() == [1]
    # The tie-break never overturns a real majority: one more vote for class 0 wins.
    p5 = np.concatenate([p, stack([[0.9, 0.1, 0.0]])])
    assert HardVote().fit(p5, [0]).predict(p5).tolist() == [0]


def test_hard_vote_scores_classes_without_votes_by_their_mean_probability():
    # Every member votes class 0; class 2 is a close runner-up, class 1 is not.
    p = stack([[0.6, 0.0, 0.4]], [[0.55, 0.05, 0.4]], [[0.7, 0.0, 0.3]])
    probabilities = HardVote().fit(p, [0]).predict_proba(p)[0]
    assert probabilities.sum() == pytest.approx(1.0)
    assert probabilities[2] > probabilities[1] > 0.0  # continuous below the winner
    expected = (np.array([3, 0, 0]) + 0.5 * p.mean(axis=0)[0]) / (3 + 0.5)
    assert probabilities == pytest.approx(expected)


def test_hard_vote_winner_is_always_the_majority_class():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4) * 0.3, size=(5, 400))
    hard = HardVote().fit(p, np.zeros(400, int))
    votes = hard.votes(p)
    winners = hard.predict(p)
    assert (votes[np.arange(400), winners] == votes.max(axis=1)).all()


def test_soft_and_weighted_vote():
    p = stack([[0.9, 0.1], [0.2, 0.8]], [[0.4, 0.6], [0.6, 0.4]])
    labels = np.array([0, 1])
    assert SoftVote().fit(p, labels).predict_proba(p) == pytest.approx(
        np.array([[0.65, 0.35], [0.4, 0.6]])
    )
    weighted = WeightedSoftVote().fit(p, labels)
    assert weighted.weights_[0] > 0.9  # member 0 is right on both images, member 1 on neither
    assert weighted.weights_.sum() == pytest.approx(1.0)


def test_greedy_selection_prefers_the_better_member_and_round_trips():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    good = np.full((200, 3), 0.1)
    good[np.arange(200), labels] = 0.8
    noise = rng.dirichlet(np.ones(3), 200)
    p = stack(good, noise)
    greedy = GreedySelection(rounds=10).fit(p, labels)
    assert greedy.counts_.tolist() == [10, 0]
    again = combiner_from_json(greedy.to_json())
    assert np.array_equal(again.predict_proba(p), greedy.predict_proba(p))


def test_temperature_scaling_lowers_log_loss_of_overconfident_member():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4))
    logits[np.arange(400), labels] += 1.0
    overconfident = np.exp(logits * 6) / np.exp(logits * 6).sum(1, keepdims=True)
    p = stack(overconfident)
    scaler = TemperatureScaling().fit(p, labels)
    assert scaler.temperatures_[0] > 2
    assert log_loss(scaler.transform(p)[0], labels) < log_loss(overconfident, labels)
    assert np.array_equal(scaler.transform(p).argmax(-1), p.argmax(-1))  # order is kept


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: SoftVote().fit(np.zeros((2, 3)), [0, 1]),
            "must have shape \\(n_members, n_images, n_classes\\)",
        ),
        (lambda: SoftVote().fit(stack([[0.5, 0.5]]), [0, 1]), "1 images but 2 labels"),
        (
            lambda: (
                SoftVote().fit(stack([[0.5, 0.5]]), [0]).predict(stack([[0.5, 0.5]], [[0.5, 0.5]]))
            ),
            "fitted on 1 members. Received: 2",
        ),
        (lambda: GreedySelection(rounds=0).fit(stack([[0.5, 0.5]]), [0]), "rounds must be >= 1"),
        (lambda: combiner_from_json('{"kind": "magic"}'), "unknown combiner 'magic'"),
    ],
)
def test_combiner_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: SoftVote().predict(stack([[0.5, 0.5]])), "SoftVote"),
        (lambda: GreedySelection().predict_proba(stack([[0.5, 0.5]])), "GreedySelection"),
        (lambda: TemperatureScaling().transform(stack([[0.5, 0.5]])), "TemperatureScaling"),
        (lambda: TemperatureScaling().state(), "TemperatureScaling"),
        (lambda: Stacker(["m"]).predict_proba([np.zeros((1, 2))], [np.ones((1, 2))]), "Stacker"),
    ],
)
def test_use_before_fit_is_a_bug_not_bad_input(call, name):
    with pytest.raises(NotFittedError, match=f"{name} is not fitted yet.*This is a bug") as caught:
        call()
    assert not isinstance(caught.value, EnsembleError)  # the CLI must not blame the input


def test_registry_holds_every_combiner_once_in_fitting_order():
    registry = registered_combiners()
    assert list(registry) == ["hard", "soft", "weighted", "greedy", "stack"]
    assert all(issubclass(cls, Combiner) and registry[cls.name] is cls for cls in registry.values())
    with pytest.raises(ValueError, match="combiner 'soft' is already registered"):

        @register
        class Again(VotingCombiner):
            name = "soft"

            def predict_proba(self, stack):
                return stack.mean(axis=0)


@pytest.mark.parametrize(
    "combiner",
    [HardVote(), SoftVote(), WeightedSoftVote(), GreedySelection(rounds=7)],
    ids=lambda c: c.name,
)
def test_every_voting_combiner_round_trips_through_json(combiner):
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(4), (3, 50))
    labels = rng.integers(0, 4, 50)
    combiner.fit(p, labels)
    again = combiner_from_json(combiner.to_json())
    assert type(again) is type(combiner) and again.state() == combiner.state()
    assert np.allclose(again.predict_proba(p), combiner.predict_proba(p), atol=1e-5)


def test_temperatures_from_saved_values_transform_like_the_fitted_scaler():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(3) * 0.3, (2, 40))
    fitted = TemperatureScaling().fit(p, rng.integers(0, 3, 40))
    loaded = TemperatureScaling.from_temperatures(fitted.temperatures_)
    assert np.array_equal(loaded.transform(p), fitted.transform(p))
    with pytest.raises(ConfigError, match="temperatures must be positive"):
        TemperatureScaling.from_temperatures([1.0, 0.0])


def test_stacker_grid_tie_break_prefers_weaker_l2_then_fewer_components_then_depth():
    tied = [
        Settings(96, 2, 1.0),
        Settings(32, 4, 10.0),
        Settings(32, 4, 1.0),
        Settings(32, 2, 10.0),
    ]
    assert min(tied, key=tie_break) == Settings(32, 4, 1.0)
    assert sorted(tied, key=tie_break) == [
        Settings(32, 4, 1.0),
        Settings(96, 2, 1.0),
        Settings(32, 2, 10.0),
        Settings(32, 4, 10.0),
    ]


def test_stacker_grid_is_keyed_by_settings_and_saved_as_records(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 20)
    features = [rng.normal(labels[:, None], 1.0, (60, 6)) for _ in range(2)]
    probabilities = [np.eye(3)[labels] * 0.6 + 0.4 / 3 for _ in range(2)]
    ids = [str(i) for i in range(60)]
    stacker = Stacker(["a", "b"]).fit(
        features, probabilities, labels, ids, dict.fromkeys(ids, "blend")
    )
    assert all(isinstance(point, Settings) for point in stacker.cv_scores_)
    best = max(stacker.cv_scores_.values())
    winner = min((p for p, s in stacker.cv_scores_.items() if s == best), key=tie_break)
    assert stacker.settings_ == winner._asdict()
    stacker.save(tmp_path, member_hashes={"a": "1", "b": "2"}, classes=["x", "y", "z"])
    loaded = Stacker.load(tmp_path, member_hashes={"a": "1", "b": "2"})
    assert loaded.cv_scores_ == stacker.cv_scores_
    assert np.array_equal(
        loaded.predict_proba(features, probabilities),
        stacker.predict_proba(features, probabilities),
    )


def test_hard_vote_fitted_before_continuous_scores_is_refused():
    import json

    from ensemble.combine.voting import combiner_from_json
    from ensemble.core.errors import RunError

    p = stack([[0.6, 0.4]], [[0.3, 0.7]], [[0.8, 0.2]])
    saved = json.loads(HardVote().fit(p, [0]).to_json())
    assert saved["scores"] == 2
    del saved["scores"]  # as written before the scores were continuous
    with pytest.raises(RunError, match="Run `ensemble fit-stacker` again"):
        combiner_from_json(json.dumps(saved))
