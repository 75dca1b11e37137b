import numpy as np
import pytest

from ensemble.combiners import (
    GreedySelection,
    HardVote,
    SoftVote,
    TemperatureScaling,
    WeightedSoftVote,
    combiner_from_json,
    log_loss,
)
from ensemble.errors import ConfigError


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
        (lambda: SoftVote().predict(stack([[0.5, 0.5]])), "SoftVote is not fitted yet"),
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
