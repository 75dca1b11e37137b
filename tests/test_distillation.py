"""Teacher–student training: the loss, the spec's [distill] table, a student trained and resumed."""

import json

import numpy as np
import pytest

from ensemble.core.errors import ConfigError
from ensemble.members.distillation import DistillationLoss, packed_targets, temper
from ensemble.members.specs import load_pipeline, member_spec_from_dict
from ensemble.members.training import TrainingData, train_member
from tests.test_staged_training import STAGE_2, TINY

STUDENT = STAGE_2 | {
    "name": "student",
    "distill": {"teachers": ["stage-1"], "weight": 0.5, "temperature": 2.0},
}


def _cross_entropy(target, probabilities):
    return -(target * np.log(np.clip(probabilities, 1e-7, 1))).sum(axis=1)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    student = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    teacher = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    one_hot = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 6)]
    return one_hot, teacher, student


def test_weight_zero_is_cross_entropy_to_the_label(batch):
    one_hot, teacher, student = batch
    loss = DistillationLoss(4, weight=0.0, label_smoothing=0.1, reduction=None)
    smoothed = one_hot * 0.9 + 0.1 / 4
    got = np.asarray(loss(packed_targets(one_hot, teacher), student))
    np.testing.assert_allclose(got, _cross_entropy(smoothed, student), rtol=1e-5)


def test_weight_one_is_tempered_cross_entropy_to_the_teacher_times_t_squared(batch):
    one_hot, teacher, student = batch
    loss = DistillationLoss(4, weight=1.0, temperature=3.0, reduction=None)
    got = np.asarray(loss(packed_targets(one_hot, temper(teacher, 3.0)), student))
    expected = 9.0 * _cross_entropy(temper(teacher, 3.0), temper(student, 3.0))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_the_loss_is_the_weighted_mix_of_both_terms(batch):
    one_hot, teacher, student = batch
    target = packed_targets(one_hot, teacher)
    parts = [DistillationLoss(4, weight=w, reduction=None)(target, student) for w in (0, 1)]
    mixed = DistillationLoss(4, weight=0.3, reduction=None)(target, student)
    np.testing.assert_allclose(
        np.asarray(mixed), 0.7 * np.asarray(parts[0]) + 0.3 * np.asarray(parts[1]), rtol=1e-5
    )


def test_temper_sharpens_below_one_and_keeps_the_order():
    probabilities = np.array([[0.6, 0.3, 0.1]], np.float32)
    sharper, softer = temper(probabilities, 0.5), temper(probabilities, 4.0)
    assert sharper[0, 0] > 0.6 > softer[0, 0]
    assert list(np.argsort(softer[0])) == list(np.argsort(probabilities[0]))
    np.testing.assert_allclose(temper(probabilities, 1.0), probabilities, rtol=1e-5)


@pytest.mark.parametrize(
    ("distill", "message"),
    [
        ({"teachers": [3]}, "distill.teachers must be a list of member names"),
        ({"teachers": ["a"], "weight": 1.5}, "distill.weight must be"),
        ({"teachers": ["a"], "temperature": 0}, "distill.temperature must be"),
        ({"teacher": ["a"]}, "unknown key 'teacher'"),
    ],
)
def test_bad_distill_tables_are_refused_with_the_key(distill, message):
    with pytest.raises(ConfigError, match=message):
        member_spec_from_dict(STUDENT | {"distill": distill})


def test_one_teacher_may_be_given_as_a_name():
    spec = member_spec_from_dict(STUDENT | {"distill": {"teachers": "stage-1"}})
    assert spec.distill.teachers == ("stage-1",)
    assert json.loads(json.dumps(spec.to_dict()))["distill"]["teachers"] == ["stage-1"]


def test_a_teacher_must_come_earlier_in_the_pipeline(tmp_path):
    (tmp_path / "student.toml").write_text('name = "student"\n[distill]\nteachers = ["later"]\n')
    (tmp_path / "later.toml").write_text('name = "later"\n')
    (tmp_path / "p.toml").write_text('members = ["student.toml", "later.toml"]\n')
    with pytest.raises(ConfigError, match="distill.teachers entry 'later', which is not a member"):
        load_pipeline(tmp_path / "p.toml")


def test_a_student_trains_from_its_teachers_probabilities_and_resumes(tmp_path):
    from ensemble.data.synthetic import make_arrays

    images, labels, _ = make_arrays(per_class=4, size=32, seed=0)
    val_images, val_labels, _ = make_arrays(per_class=2, size=32, seed=1)
    teacher = np.full((len(labels), 8), 1 / 8, np.float32)
    data = TrainingData(images, labels, val_images, val_labels, 8, teacher)
    spec = member_spec_from_dict(STUDENT | {"init_from": ""})
    train_member(spec, data, tmp_path / "s", verbose=0, stop_after_epochs=1)
    state = json.loads((tmp_path / "s" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1
    metrics = train_member(spec, data, tmp_path / "s", verbose=0)  # resumes: the loss reloads
    assert metrics["epochs_run"] == 2
    history = json.loads((tmp_path / "s" / "history.json").read_text())
    assert all(0 <= row["accuracy"] <= 1 for row in history)


def test_a_student_without_teacher_probabilities_is_a_clear_error(tmp_path):
    from ensemble.data.synthetic import make_arrays

    images, labels, _ = make_arrays(per_class=2, size=32, seed=0)
    data = TrainingData(images, labels, images, labels, 8)
    spec = member_spec_from_dict(STUDENT | {"init_from": ""})
    with pytest.raises(ValueError, match="is a student: pass its teachers' probabilities"):
        train_member(spec, data, tmp_path / "s", verbose=0)


def test_tiny_stage_one_is_a_plain_member():
    assert "distill" not in TINY and not member_spec_from_dict(TINY).distill.teachers
