import numpy as np
import pytest

from ensemble.corrupt import acquisition
from ensemble.corrupt.kinds import (
    CORRUPTIONS,
    EVALUATION,
    FAMILIES,
    KINDS,
    TRAINING,
    WIDE_TRAINING,
)
from ensemble.corrupt.shifts import SHIFTS, ZOOM, shift_batch, shift_image, shifted_copy
from ensemble.data.synthetic import make_arrays


def test_shifted_copy_is_deterministic_and_changes_images():
    images, _, _ = make_arrays(per_class=2, size=48, seed=0)
    first, kinds = shifted_copy(images, seed=4)
    second, _ = shifted_copy(images, seed=4)
    other, _ = shifted_copy(images, seed=5)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)
    assert kinds[: len(SHIFTS)] == list(SHIFTS)
    assert first.shape == images.shape and first.dtype == np.uint8
    for index in range(len(images)):
        assert not np.array_equal(first[index], images[index]), kinds[index]


def test_the_evaluation_stain_is_a_blue_cast():
    image = np.full((32, 32, 3), 200, dtype=np.uint8)
    cast = shift_image(image, "stain", 0).astype(int)
    assert cast[..., 2].mean() > cast[..., 0].mean() + 30


def test_unknown_shift():
    with pytest.raises(ValueError, match="unknown shift 'fog'"):
        shift_image(np.zeros((4, 4, 3), np.uint8), "fog", 0)


def test_one_vocabulary_trained_on_x_is_tested_on_x():
    assert set(SHIFTS) == set(CORRUPTIONS) and ZOOM in KINDS
    # every kind of every training family has its function; the shifted copy tests the
    # standard family, and the wide family's own kinds are trained on only
    family_kinds = {kind for kinds, _ in FAMILIES.values() for kind in kinds}
    assert set(acquisition.FUNCTIONS) == family_kinds
    assert family_kinds - set(SHIFTS) == {"brightness", "contrast", "hed"}


def test_the_wide_family_contains_the_standard_training_ranges():
    def inside(inner, outer):
        return outer[0] <= inner[0] and inner[1] <= outer[1]

    assert inside(TRAINING.stain_gains[0], WIDE_TRAINING.stain_gains[0])
    assert inside(TRAINING.gammas[0], WIDE_TRAINING.gammas[0])
    unchanged = ("hue_shift", "saturation", "noise_sigma", "jpeg_quality", "blur_sigmas_at_96px")
    assert all(getattr(TRAINING, key) == getattr(WIDE_TRAINING, key) for key in unchanged)


@pytest.mark.parametrize("kind", SHIFTS)
def test_a_shift_is_the_training_function_at_the_evaluation_strength(kind, monkeypatch):
    calls = []
    real = acquisition.FUNCTIONS[kind]

    def spy(images, mask, seed, strength=TRAINING):
        calls.append(strength)
        return real(images, mask, seed, strength)

    monkeypatch.setitem(acquisition.FUNCTIONS, kind, spy)
    images, _, _ = make_arrays(per_class=1, size=32, seed=0)
    shift_batch(images, kind, 3)
    assert calls == [EVALUATION]


def test_evaluation_strengths_lie_inside_the_training_ones():
    def inside(inner, outer):
        return outer[0] <= inner[0] and inner[1] <= outer[1]

    t, e = TRAINING, EVALUATION
    assert all(inside(r, t.stain_gains[0]) for r in e.stain_gains)
    assert all(inside(r, t.gammas[0]) for r in e.gammas)
    assert inside(e.noise_sigma, t.noise_sigma) and inside(e.jpeg_quality, t.jpeg_quality)
    assert inside(e.hue_shift, (0, t.hue_shift[1]))
    assert min(e.blur_sigmas_at_96px) >= min(t.blur_sigmas_at_96px)
    assert max(e.blur_sigmas_at_96px) <= max(t.blur_sigmas_at_96px)
    assert all(inside(r, t.zoom_scales[0][0]) for r, _ in e.zoom_scales)
    # Rotation: evaluation reaches 75°; training's ±45° with the dihedral symmetries (90° steps)
    # covers every angle.
    assert e.rotation_degrees[1] - 90 <= t.rotation_degrees[1]


def test_a_simulated_lab_is_one_consistent_acquisition():
    from ensemble.corrupt.labs import LABS, lab_copy

    images, _, _ = make_arrays(per_class=2, size=48, seed=0)
    lab = LABS["violet-stain"]
    first, again = lab_copy(images, lab, seed=1), lab_copy(images, lab, seed=1)
    assert np.array_equal(first, again) and first.shape == images.shape
    # Every image shifted the same way: red and blue up against green, the same for all.
    change = first.astype(float).mean(axis=(1, 2)) - images.astype(float).mean(axis=(1, 2))
    assert (change[:, 0] > change[:, 1]).all() and (change[:, 2] > change[:, 1]).all()
