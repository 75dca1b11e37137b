"""Random acquisition corruptions for training: stain, exposure, hue, rotation, blur, noise, JPEG.

Real smears differ from the training images in stain, focus, exposure and compression. To make
members robust to that, each training image independently gets each of these corruptions with
probability ``probability`` (so with 0.25, about a seventh of the images stay untouched and most
get one or two), in the order a microscope and a file format would apply them; or, in the
``"one"`` mode, at most one of them, chosen uniformly, with ``probability`` (so that a share of
every batch stays clean):

=============  =====================================================================
rotation       an arbitrary angle in ±45° (with the dihedral symmetries: any angle),
               borders filled by reflection
stain          independent gain per colour channel in [0.7, 1.3] (colour casts)
exposure       gamma in [0.5, 2.0] (under- and over-exposure)
hue            hue shift in ±0.1 turn and saturation ×[0.7, 1.3]
blur           Gaussian blur, σ ∈ {0.8, 1.2, 1.6, 2.0} × size / 96 (out of focus)
noise          Gaussian sensor noise, σ ∈ [2, 20] grey levels
jpeg           JPEG re-compression at quality [10, 90]
=============  =====================================================================

Magnification is separate (:func:`random_zoom`, its own probability and range): labs differ in
objective and crop, so a cell can appear up to about twice as large or somewhat smaller than in
these images. Zooming in crops and enlarges about the centre; zooming out shrinks and fills the
border by reflection.

Every function takes a :class:`~ensemble.corrupt.kinds.Strength`: training draws at
:data:`~ensemble.corrupt.kinds.TRAINING` (the default), the report's shifted copies
(:mod:`.shifts`) call the same functions at :data:`~ensemble.corrupt.kinds.EVALUATION`, inside
the training ranges; :func:`apply_kind` applies one kind to a whole batch.
A member's ``corruption_family`` (:data:`~ensemble.corrupt.kinds.FAMILIES`) chooses between
these kinds at :data:`~ensemble.corrupt.kinds.TRAINING` and the ``"wide"`` family: the same
kinds at stronger casts and gammas plus brightness, contrast and a stain jitter in HED space
(:data:`~ensemble.corrupt.kinds.WIDE_TRAINING`).
Everything works on float32 batches in the 0–255 range inside ``tf.data``, with stateless random
ops: the same ``seed`` tensor always gives the same corruptions, whatever else the process did
before (so training with a given seed is repeatable, also after a resume).
"""

from __future__ import annotations

import math
from functools import partial

from ensemble.corrupt.kinds import CORRUPTIONS, FAMILIES, TRAINING, Strength

CORRUPTION_MODES = ("independent", "one")  # several corruptions per image, or at most one
DEFAULT_ZOOM_RANGE = TRAINING.zoom_scales[0][0]  # 0.65 = cell shown smaller, 2.2 = larger


def corrupt(images, probability: float, seed, mode: str = "independent", family: str = "standard"):
    """Apply acquisition corruptions to a batch, each image drawn on its own.

    Args:
        images: ``(B, S, S, 3)`` float32 tensor, values in 0–255.
        probability: with ``mode="independent"``, the chance that a given corruption is applied
            to a given image; with ``mode="one"``, the chance that an image gets one corruption.
        seed: shape ``[2]`` integer tensor (a stateless-random seed); same seed, same output.
        mode: one of :data:`CORRUPTION_MODES`. ``"independent"``: each corruption on its own
            (several may stack on one image). ``"one"``: at most one corruption per image,
            chosen uniformly — as a lab's images differ in one way at a time, and a share
            ``1 - probability`` of the batch stays clean.
        family: one of :data:`~ensemble.corrupt.kinds.FAMILIES`: which kinds, at which
            strengths.

    Returns:
        A tensor of the same shape and range.
    """
    import tensorflow as tf

    if mode not in CORRUPTION_MODES:
        raise ValueError(f"mode must be one of {list(CORRUPTION_MODES)}. Received: mode={mode!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILIES)}. Received: family={family!r}")
    kinds_of_family, strength = FAMILIES[family]
    corruptions = [partial(FUNCTIONS[kind], strength=strength) for kind in kinds_of_family]
    if mode == "one":
        kinds = one_corruption_kinds(tf.shape(images)[0], probability, seed, len(corruptions))
        for index, corruption in enumerate(corruptions):
            images = _corrupt_subset(corruption, images, tf.equal(kinds, index), seed, index)
        return tf.clip_by_value(images, 0.0, 255.0)
    batch = tf.shape(images)[0]
    seeds = iter(tf.unstack(tf.random.experimental.stateless_split(seed, 2 * len(corruptions))))
    for corruption in corruptions:
        chosen = tf.random.stateless_uniform([batch], next(seeds)) < probability
        images = corruption(images, chosen, next(seeds))
    return tf.clip_by_value(images, 0.0, 255.0)


def one_corruption_kinds(batch, probability: float, seed, count: int = len(CORRUPTIONS)):
    """Which corruption each image of a batch gets in the ``"one"`` mode of :func:`corrupt`.

    Args:
        batch: the number of images.
        probability: the chance that an image gets a corruption.
        seed: shape ``[2]`` integer stateless-random seed.
        count: how many kinds there are to choose from (the family's).

    Returns:
        ``(batch,)`` int32 tensor: an index into the family's kinds, or -1 for an image left
        clean (with probability ``1 - probability``).
    """
    import tensorflow as tf

    one_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    apply_seed, kind_seed = tf.unstack(tf.random.experimental.stateless_split(one_seed, 2))
    applied = tf.random.stateless_uniform([batch], apply_seed) < probability
    kinds = tf.random.stateless_uniform([batch], kind_seed, 0, count, dtype=tf.int32)
    return tf.where(applied, kinds, -tf.ones_like(kinds))


def _corrupt_subset(corruption, images, mask, seed, index: int):
    """Apply one corruption to the masked images only (computed on those alone: cheaper)."""
    import tensorflow as tf

    positions = tf.where(mask)
    kind_seed = tf.random.experimental.stateless_fold_in(seed, 2 + index)

    def apply():
        chosen = tf.gather_nd(images, positions)
        corrupted = corruption(chosen, tf.ones([tf.shape(chosen)[0]], tf.bool), kind_seed)
        return tf.tensor_scatter_nd_update(images, positions, corrupted)

    # Some ops (the blur's padded convolutions) mis-shape an empty batch: skip it instead.
    return tf.cond(tf.size(positions) > 0, apply, lambda: images)


def random_zoom(images, probability: float, zoom_range: tuple[float, float], seed):
    """Show each image of a batch larger or smaller, with ``probability``.

    The scale factor is log-uniform in ``zoom_range`` (so zooming in 2× and out 0.5× are
    equally likely when the range allows both); the image is scaled about its centre, a zoom
    out filling the border by reflection.

    Args:
        images: ``(B, S, S, 3)`` float32 tensor, values in 0–255.
        probability: chance that a given image is zoomed.
        zoom_range: ``(smallest, largest)`` scale factor; 1 = unchanged.
        seed: shape ``[2]`` integer stateless-random seed; same seed, same output.

    Returns:
        A tensor of the same shape.
    """
    import tensorflow as tf

    batch = tf.shape(images)[0]
    choice_seed, scale_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    chosen = tf.random.stateless_uniform([batch], choice_seed) < probability
    low, high = (math.log(value) for value in zoom_range)
    scales = tf.exp(tf.random.stateless_uniform([batch], scale_seed, low, high))
    scales = tf.where(chosen, scales, tf.ones_like(scales))
    return _scale_about_centre(images, scales)


def _scale_about_centre(images, scales):
    """Scale each image by its factor about the centre (> 1 enlarges), reflecting at borders."""
    import tensorflow as tf

    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    inverse = 1.0 / scales
    zeros = tf.zeros_like(inverse)
    # Output pixel (x, y) samples input (c + (x - c) / s): scaling by s about the centre c.
    transforms = tf.stack(
        [
            inverse,
            zeros,
            centre_x * (1 - inverse),
            zeros,
            inverse,
            centre_y * (1 - inverse),
            zeros,
            zeros,
        ],
        axis=1,
    )
    return _transform(images, transforms)


def _transform(images, transforms):
    """Resample each image through its projective transform (bilinear, reflected borders)."""
    import tensorflow as tf

    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


def _select(mask, corrupted, images):
    import tensorflow as tf

    return tf.where(mask[:, None, None, None], corrupted, images)


def _signed(values, seed):
    """``values`` with a random sign each (a stateless draw from ``seed``)."""
    import tensorflow as tf

    flip = tf.random.stateless_uniform(tf.shape(values), seed) < 0.5
    return tf.where(flip, -values, values)


def _rotate(images, mask, seed, strength: Strength = TRAINING):
    import tensorflow as tf

    batch = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    low, high = (degrees * math.pi / 180 for degrees in strength.rotation_degrees)
    if strength.rotation_either_way:
        angle_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        angles = _signed(tf.random.stateless_uniform([batch], angle_seed, low, high), sign_seed)
    else:
        angles = tf.random.stateless_uniform([batch], seed, low, high)
    angles = angles * tf.cast(mask, tf.float32)
    cos, sin = tf.cos(angles), tf.sin(angles)
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): rotation about
    # the centre.
    transforms = tf.stack(
        [
            cos,
            -sin,
            centre_x - cos * centre_x + sin * centre_y,
            sin,
            cos,
            centre_y - sin * centre_x - cos * centre_y,
            tf.zeros_like(cos),
            tf.zeros_like(cos),
        ],
        axis=1,
    )
    return _transform(images, transforms)


def _uniform(batch, seed, low, high, channels=1):
    """One value per image (or per image and channel), shaped to broadcast over pixels."""
    import tensorflow as tf

    return tf.random.stateless_uniform([batch, 1, 1, channels], seed, low, high)


def _stain(images, mask, seed, strength: Strength = TRAINING):
    import tensorflow as tf

    ranges = strength.stain_gains
    if len(set(ranges)) == 1:  # one range for every channel
        gains = _uniform(tf.shape(images)[0], seed, *ranges[0], channels=3)
    else:  # a cast: each channel its own range
        low = tf.constant([low for low, _ in ranges], tf.float32)
        high = tf.constant([high for _, high in ranges], tf.float32)
        gains = low + _uniform(tf.shape(images)[0], seed, 0.0, 1.0, channels=3) * (high - low)
    return _select(mask, images * gains, images)


def _exposure(images, mask, seed, strength: Strength = TRAINING):
    import tensorflow as tf

    batch = tf.shape(images)[0]
    if len(strength.gammas) == 1:
        low, high = (math.log(value) for value in strength.gammas[0])
        gamma = tf.exp(_uniform(batch, seed, low, high))
    else:  # a range chosen per image, then a gamma in it
        range_seed, value_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        which = tf.random.stateless_uniform(
            [batch], range_seed, 0, len(strength.gammas), dtype=tf.int32
        )
        lows = tf.math.log(tf.constant([low for low, _ in strength.gammas], tf.float32))
        highs = tf.math.log(tf.constant([high for _, high in strength.gammas], tf.float32))
        low = tf.gather(lows, which)[:, None, None, None]
        high = tf.gather(highs, which)[:, None, None, None]
        gamma = tf.exp(low + _uniform(batch, value_seed, 0.0, 1.0) * (high - low))
    exposed = 255.0 * tf.pow(tf.clip_by_value(images, 0.0, 255.0) / 255.0, gamma)
    return _select(mask, exposed, images)


def _hue(images, mask, seed, strength: Strength = TRAINING):
    import tensorflow as tf

    batch = tf.shape(images)[0]
    hue_seed, saturation_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    hsv = tf.image.rgb_to_hsv(tf.clip_by_value(images, 0.0, 255.0) / 255.0)
    shift = _uniform(batch, hue_seed, *strength.hue_shift)
    if strength.hue_either_way:
        shift = _signed(shift, tf.random.experimental.stateless_fold_in(hue_seed, 1))
    hue = tf.math.floormod(hsv[..., 0:1] + shift, 1.0)
    factor = _uniform(batch, saturation_seed, *strength.saturation)
    saturation = tf.clip_by_value(hsv[..., 1:2] * factor, 0.0, 1.0)
    shifted = tf.image.hsv_to_rgb(tf.concat([hue, saturation, hsv[..., 2:3]], axis=-1)) * 255.0
    return _select(mask, shifted, images)


def _gaussian_kernel(sigma: float):
    import tensorflow as tf

    radius = max(1, int(math.ceil(2.5 * sigma)))
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(offsets / sigma))
    return weights / tf.reduce_sum(weights)


def _blur(images, mask, seed, strength: Strength = TRAINING):
    import tensorflow as tf

    size = images.shape[1] or 96
    batch = tf.shape(images)[0]
    sigmas = strength.blur_sigmas_at_96px
    blurred_versions = []
    for sigma in sigmas:
        kernel = _gaussian_kernel(sigma * size / 96)
        horizontal = tf.tile(kernel[None, :, None, None], [1, 1, 3, 1])
        vertical = tf.tile(kernel[:, None, None, None], [1, 1, 3, 1])
        padded = tf.pad(images, [[0, 0], [0, 0], [kernel.shape[0] // 2] * 2, [0, 0]], "SYMMETRIC")
        blurred = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
        padded = tf.pad(blurred, [[0, 0], [kernel.shape[0] // 2] * 2, [0, 0], [0, 0]], "SYMMETRIC")
        blurred_versions.append(tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID"))
    which = tf.random.stateless_uniform([batch], seed, 0, len(sigmas), dtype=tf.int32)
    blurred = tf.gather(tf.stack(blurred_versions, axis=1), which, axis=1, batch_dims=1)
    return _select(mask, blurred, images)


def _noise(images, mask, seed, strength: Strength = TRAINING):
    import tensorflow as tf

    sigma_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    sigma = _uniform(tf.shape(images)[0], sigma_seed, *strength.noise_sigma)
    noise = tf.random.stateless_normal(tf.shape(images), noise_seed) * sigma
    return _select(mask, images + noise, images)


def _jpeg(images, mask, seed, strength: Strength = TRAINING):
    import tensorflow as tf

    low, high = strength.jpeg_quality
    qualities = tf.random.stateless_uniform(
        [tf.shape(images)[0]], seed, low, high + 1, dtype=tf.int32
    )

    def recompress(args):
        image, quality, apply = args
        return tf.cond(
            apply,
            lambda: tf.image.adjust_jpeg_quality(image / 255.0, quality) * 255.0,
            lambda: image,
        )

    return tf.map_fn(
        recompress,
        (tf.clip_by_value(images, 0.0, 255.0), qualities, mask),
        fn_output_signature=tf.float32,
    )


def _brightness(images, mask, seed, strength: Strength = TRAINING):
    import tensorflow as tf

    low, high = (math.log(value) for value in strength.brightness)
    gain = tf.exp(_uniform(tf.shape(images)[0], seed, low, high))
    return _select(mask, images * gain, images)


#: The luminance weights of ITU-R 601 (PIL's "L" mode), for the contrast's mean grey.
_LUMINANCE = (0.299, 0.587, 0.114)


def _contrast(images, mask, seed, strength: Strength = TRAINING):
    import tensorflow as tf

    low, high = (math.log(value) for value in strength.contrast)
    factor = tf.exp(_uniform(tf.shape(images)[0], seed, low, high))
    grey = tf.reduce_sum(images * tf.constant(_LUMINANCE, tf.float32), axis=-1, keepdims=True)
    mean = tf.reduce_mean(grey, axis=[1, 2, 3], keepdims=True)
    return _select(mask, mean + (images - mean) * factor, images)


#: Optical density of haematoxylin, eosin and DAB in R, G, B (rows; Ruifrok & Johnston 2001,
#: scikit-image's ``rgb_from_hed``).
_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


def _hed(images, mask, seed, strength: Strength = TRAINING):
    """Stain jitter: each stain's optical density scaled and shifted (Tellez et al. 2018)."""
    import tensorflow as tf

    rgb_from_hed = tf.constant(_RGB_FROM_HED, tf.float32)
    hed_from_rgb = tf.linalg.inv(rgb_from_hed)
    batch = tf.shape(images)[0]
    scale_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    density = -tf.math.log(tf.maximum(images, 1.0) / 255.0)  # 0 for white
    # Not clipped at 0 (as scikit-image's rgb2hed does): colours outside the three stains'
    # cone keep their negative densities, so that no jitter gives the image back exactly.
    stains = tf.einsum("bhwc,cs->bhws", density, hed_from_rgb)
    scale = _uniform(batch, scale_seed, *strength.hed_scale, channels=3)
    shift = _uniform(batch, shift_seed, *strength.hed_shift, channels=3)
    stains = stains * scale + shift
    jittered = 255.0 * tf.exp(-tf.einsum("bhws,sc->bhwc", stains, rgb_from_hed))
    return _select(mask, jittered, images)


#: Each corruption kind's function (``images, mask, seed, strength`` → images).
FUNCTIONS = {
    "rotation": _rotate,
    "stain": _stain,
    "exposure": _exposure,
    "hue": _hue,
    "blur": _blur,
    "noise": _noise,
    "jpeg": _jpeg,
    "brightness": _brightness,
    "contrast": _contrast,
    "hed": _hed,
}


def apply_kind(images, kind: str, seed, strength: Strength = TRAINING):
    """Apply one kind (a corruption or ``"zoom"``) to every image of a batch.

    Args:
        images: ``(B, S, S, 3)`` float32 tensor, values in 0–255.
        kind: one of :data:`ensemble.corrupt.kinds.KINDS`.
        seed: shape ``[2]`` integer stateless-random seed; same seed, same output.
        strength: :data:`~ensemble.corrupt.kinds.TRAINING` or
            :data:`~ensemble.corrupt.kinds.EVALUATION`.

    Returns:
        The corrupted batch, clipped to 0–255.
    """
    import tensorflow as tf

    if kind == "zoom":
        return tf.clip_by_value(zoom_all(images, strength.zoom_scales, seed), 0.0, 255.0)
    if kind not in FUNCTIONS:
        raise ValueError(f"unknown kind {kind!r}. Choose from {[*FUNCTIONS, 'zoom']}")
    everywhere = tf.ones([tf.shape(images)[0]], tf.bool)
    return tf.clip_by_value(FUNCTIONS[kind](images, everywhere, seed, strength), 0.0, 255.0)


def zoom_all(images, scales: tuple, seed):
    """Zoom every image of a batch by a factor from ``scales`` (weighted ranges, log-uniform)."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    range_seed, value_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    weights = tf.constant([[math.log(weight) for _, weight in scales]], tf.float32)
    which = tf.random.stateless_categorical(weights, batch, range_seed)[0]
    lows = tf.math.log(tf.constant([low for (low, _), _ in scales], tf.float32))
    highs = tf.math.log(tf.constant([high for (_, high), _ in scales], tf.float32))
    low, high = tf.gather(lows, which), tf.gather(highs, which)
    factors = tf.exp(low + tf.random.stateless_uniform([batch], value_seed) * (high - low))
    return _scale_about_centre(images, factors)
