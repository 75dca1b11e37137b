import numpy as np
import pytest

from ensemble.core.errors import ConfigError
from ensemble.members.inputs import (
    AugmentationConfig,
    class_weights,
    dihedral_views,
    inference_dataset,
    random_dihedral,
    training_dataset,
)


def test_training_batches_shapes_and_dtypes():
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(10) % 3
    dataset = training_dataset(
        images,
        labels,
        batch_size=4,
        augmentation=AugmentationConfig(),
        seed=0,
        sample_weights=np.ones(10, np.float32),
    )
    batches = list(dataset)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    x, y, w = batches[0]
    assert x.shape == (4, 32, 32, 3) and x.dtype.name == "float32"
    assert y.dtype.name == "int64" and w.dtype.name == "float32"
    assert float(np.min(x)) >= 0.0 and float(np.max(x)) <= 255.0


def test_no_augmentation_keeps_pixels():
    images = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    off = AugmentationConfig(dihedral=False, randaugment_magnitude=0.0)
    seen = np.concatenate(
        [
            b[0].numpy()
            for b in training_dataset(images, np.zeros(6), batch_size=3, augmentation=off, seed=0)
        ]
    )
    assert sorted(map(bytes, seen.astype(np.uint8))) == sorted(map(bytes, images))


def test_random_dihedral_gives_only_dihedral_views():
    image = np.arange(4 * 4 * 3, dtype=np.float32).reshape(1, 4, 4, 3)
    views = {v.tobytes() for v in dihedral_views(image)}
    assert len(views) == 8
    out = random_dihedral(np.repeat(image, 64, axis=0), np.array([1, 2])).numpy()
    produced = {o[None].tobytes() for o in out}
    assert produced <= views and len(produced) >= 6


def test_inference_dataset_float32():
    batch = next(iter(inference_dataset(np.zeros((5, 8, 8, 3), np.uint8), batch_size=2)))
    assert batch.shape == (2, 8, 8, 3) and batch.dtype.name == "float32"


def test_balanced_class_weights():
    weights = class_weights(np.array([0, 0, 0, 1]), 2, "balanced")
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    assert class_weights(np.array([0, 1]), 2, "none") is None
    assert class_weights(np.array([0, 1]), 2, {"1": 3}) == {1: 3.0}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: class_weights(np.array([0, 0]), 2, "balanced"),
            "class index 1 has no training images",
        ),
        (lambda: class_weights(np.array([0]), 1, "sqrt"), "Received: class_weights='sqrt'"),
        (lambda: AugmentationConfig(randaugment_magnitude=2), "must be in \\[0, 1\\]"),
        (lambda: AugmentationConfig(randaugment_per_image=-1), "must be >= 0"),
    ],
)
def test_bad_augmentation_and_weights(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_augmentation_is_fixed_by_the_seed_and_fresh_every_epoch():
    import tensorflow as tf

    images = np.random.default_rng(2).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    config = AugmentationConfig(randaugment_magnitude=0.0, corruption_probability=0.5)

    def epochs(seed, count=2):
        dataset = training_dataset(
            images, np.zeros(16), batch_size=8, augmentation=config, seed=seed
        )
        return [np.concatenate([b[0].numpy() for b in dataset]) for _ in range(count)]

    tf.random.uniform([3])  # unrelated random ops in between must not matter
    first = epochs(seed=3)
    tf.random.uniform([3])
    again = epochs(seed=3)
    other = epochs(seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])  # a new draw every epoch
    assert not np.array_equal(first[0], other[0])
