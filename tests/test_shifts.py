import numpy as np
import pytest

from ensemble.corrupt.shifts import SHIFTS, shift_image, shifted_copy
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


def test_blue_cast_is_blue():
    image = np.full((32, 32, 3), 200, dtype=np.uint8)
    cast = shift_image(image, "blue_cast", np.random.default_rng(0)).astype(int)
    assert cast[..., 2].mean() > cast[..., 0].mean() + 30


def test_unknown_shift():
    with pytest.raises(ValueError, match="unknown shift 'fog'"):
        shift_image(np.zeros((4, 4, 3), np.uint8), "fog", np.random.default_rng(0))
