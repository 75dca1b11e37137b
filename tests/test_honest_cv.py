"""Every combiner is cross-validated on the same folds, grouped by source image.

An image's shifted copies never sit on both sides of a fold: not in the folds fit-stacker gives
every combiner, not in the stacker's own choice of settings, not in its nested score.
"""

import numpy as np
import pytest

from ensemble.combine.base import Blend, MemberOutputs, blend_folds, grouped_folds
from ensemble.combine.shifted_blend import with_copies
from ensemble.combine.stacker import Stacker
from ensemble.combine.voting import SoftVote


def _no_group_on_both_sides(folds, ids):
    ids = np.asarray(ids)
    for fit, held in folds:
        both = set(ids[fit]) & set(ids[held])
        assert not both, f"copies of {sorted(both)[:3]} on both sides of a fold"


def _blend(n=24, copies=2, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    ids = [f"img{i}" for i in range(n)]

    def outputs(noise):
        features = [rng.normal(labels[:, None] * 1.0, noise, (n, 6)) for _ in range(2)]
        logits = np.stack([np.eye(3)[labels] * 2 + rng.normal(0, noise, (n, 3)) for _ in range(2)])
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
        return MemberOutputs(probabilities, probabilities, tuple(features))

    clean = Blend(outputs(0.5), labels, ids, dict.fromkeys(ids, "blend"), blend_folds(labels, 0))
    return with_copies(clean, [outputs(1.0 + copy) for copy in range(copies)])


def test_grouped_folds_keep_every_group_on_one_side_and_cover_every_row_once():
    labels = np.array([0, 1, 2] * 6 + [0, 1, 2] * 6)
    groups = [f"g{i}" for i in range(18)] * 2  # each group: an image and its copy
    folds = grouped_folds(labels, groups, seed=3)
    _no_group_on_both_sides(folds, groups)
    held = np.concatenate([held for _, held in folds])
    assert sorted(held.tolist()) == list(range(36))


def test_grouped_folds_are_the_plain_folds_when_every_row_is_its_own_group():
    labels = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2])
    plain = blend_folds(labels, 7)
    grouped = grouped_folds(labels, [str(i) for i in range(12)], 7)
    for (fit_a, held_a), (fit_b, held_b) in zip(plain, grouped, strict=True):
        assert fit_a.tolist() == fit_b.tolist() and held_a.tolist() == held_b.tolist()


def test_the_folds_every_combiner_shares_keep_copies_with_their_image():
    blend = _blend()
    _no_group_on_both_sides(blend.folds, blend.ids)


def test_the_stacker_chooses_its_settings_on_folds_grouped_by_image(monkeypatch):
    blend = _blend(n=80)  # 240 rows with the copies: enough to search the settings
    seen = []

    def record(self, standard, labels, folds, components, depth, l2):
        seen.append(folds)
        return 0.5

    monkeypatch.setattr(Stacker, "_cross_validate", record)
    Stacker.create(["a", "b"], seed=0).fit_blend(blend)
    assert seen
    for folds in seen:
        _no_group_on_both_sides(folds, blend.ids)


def test_the_stackers_score_is_nested_on_the_shared_folds(monkeypatch):
    blend = _blend()
    stacker = Stacker.create(["a", "b"], seed=0).fit_blend(blend)
    fitted_on = []
    real_fit = Stacker.fit

    def spy(self, features, probabilities, labels, ids, split_of):
        fitted_on.append(set(ids))
        return real_fit(self, features, probabilities, labels, ids, split_of)

    monkeypatch.setattr(Stacker, "fit", spy)
    score = stacker.cross_validated_accuracy(blend)
    assert len(fitted_on) == len(blend.folds)  # one fresh stacker per shared fold
    for ids, (_, held) in zip(fitted_on, blend.folds, strict=True):
        assert ids.isdisjoint(blend.ids[row] for row in held)  # never saw the fold it scores
    assert 0 <= score <= 1
    assert stacker.cross_validated_accuracy(blend) == score  # computed once


def test_stacker_and_voters_are_scored_on_the_same_rows():
    blend = _blend(copies=1)
    voter = SoftVote().fit_blend(blend)
    stacker = Stacker.create(["a", "b"], seed=0).fit_blend(blend)
    for combiner in (voter, stacker):
        score = combiner.cross_validated_accuracy(blend)
        assert score * len(blend.labels) == pytest.approx(round(score * len(blend.labels)))


def test_a_small_blend_fixes_the_settings_in_advance(monkeypatch):
    from ensemble.combine.stacker import GRID_MIN_IMAGES, SMALL_BLEND_SETTINGS

    blend = _blend(n=24)
    assert len(blend.labels) < GRID_MIN_IMAGES
    monkeypatch.setattr(Stacker, "_cross_validate", lambda *args: pytest.fail("searched"))
    stacker = Stacker.create(["a", "b"], seed=0).fit_blend(blend)
    assert stacker.settings_["max_depth"] == SMALL_BLEND_SETTINGS.max_depth
    assert stacker.settings_["l2"] == SMALL_BLEND_SETTINGS.l2
