"""Reinhard colour normalisation with one lab's statistics (ensemble.data.colour)."""

import numpy as np
import pytest

from ensemble.core.errors import ConfigError, DataError
from ensemble.data.colour import ColourNormaliser, channel_statistics, lab_to_rgb, rgb_to_lab


def _cells(seed=0, n=24):
    """Pinkish images with darker purple blobs, like stained cells on a smear."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 32, 32, 3), np.uint8)
    images[:] = (225, 180, 190)
    for image in images:
        y, x = rng.integers(6, 26, 2)
        image[y - 5 : y + 5, x - 5 : x + 5] = (110 + rng.integers(-20, 20), 60, 150)
    noise = rng.integers(-8, 9, images.shape)
    return np.clip(images.astype(int) + noise, 0, 255).astype(np.uint8)


def _cast(images, gains=(1.12, 0.85, 1.1)):
    return np.clip(images * np.asarray(gains), 0, 255).astype(np.uint8)


def test_the_colour_space_round_trip_keeps_pixels():
    images = _cells()
    assert np.abs(lab_to_rgb(rgb_to_lab(images)).astype(int) - images).max() <= 1


def test_a_labs_cast_is_removed_and_the_differences_between_cells_kept():
    reference, lab = _cells(0), _cast(_cells(1))
    normaliser = ColourNormaliser.fit(lab, reference)
    moved = normaliser.transform(lab)
    gap_before = np.abs(lab.mean(axis=(0, 1, 2)) - reference.mean(axis=(0, 1, 2))).max()
    gap_after = np.abs(moved.mean(axis=(0, 1, 2)) - reference.mean(axis=(0, 1, 2))).max()
    assert gap_before > 15 and gap_after < 4
    # one map for the whole lab: an image's own blob stays darker than its background
    assert (moved[:, :, :, 1].min(axis=(1, 2)) < moved[:, :, :, 1].max(axis=(1, 2)) - 60).all()


def test_the_identity_when_the_lab_is_the_reference():
    images = _cells()
    moved = ColourNormaliser.fit(images, images).transform(images)
    assert np.abs(moved.astype(int) - images).max() <= 1


def test_the_normaliser_round_trips_through_json():
    normaliser = ColourNormaliser.fit(_cast(_cells(1)), _cells(0))
    assert ColourNormaliser.from_json(normaliser.to_json()) == normaliser


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"method": "macenko"}, "unknown colour normalisation 'macenko'. Known: ['reinhard']"),
        ({"method": "reinhard", "source_mean": [0, 0, 0]}, "record is incomplete"),
    ],
)
def test_a_bad_record_is_refused_in_words(record, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ColourNormaliser.from_json(record)


def test_statistics_need_images():
    with pytest.raises(DataError, match=r"need images as \(N, H, W, 3\), N >= 1. Received: \(0,"):
        channel_statistics(np.zeros((0, 8, 8, 3), np.uint8))


def test_grey_images_cannot_anchor_a_colour_map():
    grey = np.repeat(np.linspace(0, 255, 32 * 32).reshape(1, 32, 32, 1), 3, axis=3)
    with pytest.raises(DataError, match=r"barely vary in lαβ channel\(s\) \['alpha', 'beta'\]"):
        channel_statistics(grey.astype(np.uint8))
