from dataclasses import replace

import numpy as np
import pytest

from ensemble.core.errors import ConfigError
from ensemble.corrupt import acquisition
from ensemble.corrupt.acquisition import corrupt
from ensemble.corrupt.kinds import CORRUPTIONS, FAMILIES, TRAINING, WIDE_TRAINING
from ensemble.data.synthetic import make_arrays
from ensemble.members.inputs import AugmentationConfig, training_dataset

SEED = np.array([5, 6])
ONE_CORRUPTION = {
    "rotation": acquisition._rotate,
    "stain": acquisition._stain,
    "exposure": acquisition._exposure,
    "hue": acquisition._hue,
    "blur": acquisition._blur,
    "noise": acquisition._noise,
    "jpeg": acquisition._jpeg,
}


@pytest.fixture(scope="module")
def cells():
    """Synthetic cells with fine texture, so that every corruption visibly changes them."""
    images, _, _ = make_arrays(per_class=1, size=64, seed=0)
    texture = np.random.default_rng(0).normal(0, 12, images.shape)
    return np.clip(images + texture, 0, 255).round().astype(np.float32)


def test_every_corruption_is_covered():
    assert set(ONE_CORRUPTION) == set(CORRUPTIONS)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_changes_only_the_chosen_images(cells, name):
    mask = np.arange(len(cells)) % 2 == 0
    out = ONE_CORRUPTION[name](cells, mask, SEED).numpy()
    assert out.shape == cells.shape and out.dtype == np.float32
    assert np.array_equal(out[~mask], cells[~mask])
    for index in np.flatnonzero(mask):
        assert np.abs(out[index] - cells[index]).mean() > 0.5, (name, index)


def test_probability_zero_is_identity_and_one_changes_all(cells):
    assert np.array_equal(corrupt(cells, 0.0, SEED).numpy(), cells)
    out = corrupt(cells, 1.0, SEED).numpy()
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert all(np.abs(out[i] - cells[i]).mean() > 1.0 for i in range(len(cells)))


def test_blur_smooths_and_noise_roughens(cells):
    everywhere = np.ones(len(cells), bool)

    def roughness(batch):
        return float(np.abs(np.diff(batch, axis=2)).mean())

    assert roughness(acquisition._blur(cells, everywhere, SEED).numpy()) < roughness(cells)
    assert roughness(acquisition._noise(cells, everywhere, SEED).numpy()) > roughness(cells)


def test_training_dataset_applies_corruptions(cells):
    images = cells.astype(np.uint8)
    labels = np.zeros(len(images))
    clean = AugmentationConfig(dihedral=False, randaugment_magnitude=0.0)
    noisy = AugmentationConfig(
        dihedral=False, randaugment_magnitude=0.0, corruption_probability=1.0
    )
    seen = np.concatenate(
        [
            b[0].numpy()
            for b in training_dataset(images, labels, batch_size=4, augmentation=noisy, seed=0)
        ]
    )
    untouched = np.concatenate(
        [
            b[0].numpy()
            for b in training_dataset(images, labels, batch_size=4, augmentation=clean, seed=0)
        ]
    )
    assert seen.shape == untouched.shape
    assert sorted(map(bytes, seen.astype(np.uint8))) != sorted(
        map(bytes, untouched.astype(np.uint8))
    )


def test_bad_probability_named():
    with pytest.raises(ConfigError, match="Received: corruption_probability=1.5"):
        AugmentationConfig(corruption_probability=1.5)


def test_same_seed_same_corruptions(cells):
    first = corrupt(cells, 0.5, np.array([1, 1])).numpy()
    assert np.array_equal(first, corrupt(cells, 0.5, np.array([1, 1])).numpy())
    assert not np.array_equal(first, corrupt(cells, 0.5, np.array([1, 2])).numpy())


def _changed(out, images):
    return np.abs(out - images).reshape(len(images), -1).mean(axis=1) > 0.5


def test_one_mode_leaves_the_rest_of_the_batch_clean(cells):
    many = np.concatenate([cells] * 25)  # 200 images
    one = corrupt(many, 0.5, SEED, mode="one").numpy()
    independent = corrupt(many, 0.5, SEED, mode="independent").numpy()
    # "one": half the images get one corruption; "independent": all but 0.5**7 get some
    assert 0.35 < _changed(one, many).mean() < 0.65
    assert _changed(independent, many).mean() > 0.95
    assert _changed(corrupt(many, 1.0, SEED, mode="one").numpy(), many).mean() > 0.9


def test_one_mode_applies_a_single_corruption(cells):
    """Each image is the original, or the original with exactly one corruption: never a stack."""
    import tensorflow as tf

    out = corrupt(cells, 0.7, SEED, mode="one").numpy()
    kinds = acquisition.one_corruption_kinds(len(cells), 0.7, SEED).numpy()
    assert np.array_equal(out[kinds == -1], cells[kinds == -1])
    assert (kinds >= 0).any()
    for index, name in enumerate(CORRUPTIONS):
        chosen = kinds == index
        if not chosen.any():
            continue
        alone = ONE_CORRUPTION[name](
            cells[chosen],
            np.ones(chosen.sum(), bool),
            tf.random.experimental.stateless_fold_in(SEED, 2 + index),
        ).numpy()
        np.testing.assert_allclose(out[chosen], np.clip(alone, 0, 255), atol=1e-3)
        assert np.abs(out[chosen] - cells[chosen]).mean() > 0.5, name


def test_independent_is_the_default_mode(cells):
    assert np.array_equal(
        corrupt(cells, 0.5, SEED).numpy(), corrupt(cells, 0.5, SEED, mode="independent").numpy()
    )


def test_unknown_mode_named(cells):
    with pytest.raises(ValueError, match="mode must be one of \\['independent', 'one'\\]"):
        corrupt(cells, 0.5, SEED, mode="each")


# The "wide" family: stronger casts and gammas, and three kinds of its own.
WIDE_ONLY = {
    "brightness": acquisition._brightness,
    "contrast": acquisition._contrast,
    "hed": acquisition._hed,
}


def test_the_wide_family_is_the_standard_kinds_and_its_own():
    kinds, strength = FAMILIES["wide"]
    assert kinds == CORRUPTIONS + tuple(WIDE_ONLY)
    assert strength is WIDE_TRAINING
    # stronger casts and gammas than the standard family's, which it contains
    assert WIDE_TRAINING.stain_gains[0][0] < TRAINING.stain_gains[0][0]
    assert WIDE_TRAINING.gammas[0][1] > TRAINING.gammas[0][1]


@pytest.mark.parametrize("name", WIDE_ONLY)
def test_each_wide_kind_changes_only_the_chosen_images(cells, name):
    mask = np.arange(len(cells)) % 2 == 0
    out = WIDE_ONLY[name](cells, mask, SEED, WIDE_TRAINING).numpy()
    assert out.shape == cells.shape and out.dtype == np.float32
    assert np.array_equal(out[~mask], cells[~mask])
    for index in np.flatnonzero(mask):
        assert np.abs(out[index] - cells[index]).mean() > 0.5, (name, index)


def test_brightness_and_contrast_do_what_their_names_say(cells):
    everywhere = np.ones(len(cells), bool)
    half = replace(WIDE_TRAINING, brightness=(0.5, 0.5), contrast=(0.5, 0.5))
    darker = acquisition._brightness(cells, everywhere, SEED, half).numpy()
    np.testing.assert_allclose(darker, cells * 0.5, rtol=1e-5)
    flatter = acquisition._contrast(cells, everywhere, SEED, half).numpy()
    np.testing.assert_allclose(
        flatter.std(axis=(1, 2, 3)), cells.std(axis=(1, 2, 3)) * 0.5, rtol=1e-4
    )


def test_hed_without_jitter_gives_the_image_back(cells):
    """Into stain densities and back is the identity (up to float rounding and pure black)."""
    everywhere = np.ones(len(cells), bool)
    still = replace(WIDE_TRAINING, hed_scale=(1.0, 1.0), hed_shift=(0.0, 0.0))
    out = acquisition._hed(np.maximum(cells, 1.0), everywhere, SEED, still).numpy()
    np.testing.assert_allclose(out, np.maximum(cells, 1.0), atol=0.05)


def test_wide_family_in_range_repeatable_and_the_standard_unchanged(cells):
    many = np.concatenate([cells] * 10)
    wide = corrupt(many, 1.0, SEED, mode="one", family="wide").numpy()
    assert wide.min() >= 0.0 and wide.max() <= 255.0
    assert np.array_equal(wide, corrupt(many, 1.0, SEED, mode="one", family="wide").numpy())
    kinds = acquisition.one_corruption_kinds(len(many), 1.0, SEED, len(FAMILIES["wide"][0]))
    assert kinds.numpy().max() >= len(CORRUPTIONS)  # its own kinds are drawn too
    assert np.array_equal(
        corrupt(many, 0.5, SEED, mode="one").numpy(),
        corrupt(many, 0.5, SEED, mode="one", family="standard").numpy(),
    )


def test_unknown_family_named(cells):
    with pytest.raises(ValueError, match="family must be one of \\['standard', 'wide'\\]"):
        corrupt(cells, 0.5, SEED, family="strong")
    with pytest.raises(ConfigError, match="Received: corruption_family='strong'"):
        AugmentationConfig(corruption_family="strong")
