"""One vocabulary of what acquisition does to a cell image, for training and for evaluation.

Every kind has one name and one implementation (a TensorFlow function of
:mod:`ensemble.corrupt.acquisition`), drawn at two strengths: :data:`TRAINING`, what the robust
members learn from (wider, so that the evaluation strengths lie inside them), and
:data:`EVALUATION`, the report's seeded shifted and zoomed copies and fit-stacker's shifted
copies of blend (:mod:`ensemble.corrupt.shifts`). "Trained on stain, tested on stain" is the same
function with other seeds and strengths.

=========  ================================  =========================================
kind       training                          evaluation
=========  ================================  =========================================
rotation   any angle in ±45°                 15–75° either way
stain      gain per channel in 0.7–1.3       a blue cast: R 0.75–0.9, G 0.85–0.95, B 1.1–1.3
exposure   gamma 0.5–2.0                     gamma 0.55–0.75 or 1.4–1.8
hue        hue ±0.1 turn, saturation ×0.7–1.3  hue 10–25/256 turn either way
blur       Gaussian σ 0.8–2.0 (× size/96)    σ 0.8–1.6 (× size/96)
noise      Gaussian σ 2–20 grey levels       σ 8–16
jpeg       quality 10–90                     quality 10–29
zoom       scale 0.65–2.2 (log-uniform)      1.25–2× (two in three) or 0.7–0.85×
=========  ================================  =========================================

Scales and gammas are drawn log-uniformly; "either way" draws a magnitude and a sign.

A member trains on one of two corruption *families* (its spec's
``augmentation.corruption_family``): ``"standard"``, the kinds above at :data:`TRAINING`, or
``"wide"`` (:data:`WIDE_TRAINING`), for the colour and exposure kinds where a peer's suite
(MedMNIST-C) found the standard family narrow — stronger casts and gammas, and three kinds
the shifted copies never use:

==========  ==================================================================
brightness  one gain for all channels, 0.45–1.5 (an exposure time or lamp)
contrast    blend with the image's mean grey, factor 0.4–1.5 (camera contrast)
hed         stain jitter in haematoxylin–eosin–DAB optical density: each
            stain's density scaled by 0.8–1.2 and shifted by ±0.08 (Tellez et al. 2018)
==========  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: Every kind, in the order a microscope and a file format would apply them (zoom, the optics,
#: is applied first by the training pipeline, separately from the others).
KINDS = ("rotation", "stain", "exposure", "hue", "blur", "noise", "jpeg", "zoom")

#: The kinds that are corruptions of an image's look (all but zoom).
CORRUPTIONS = KINDS[:-1]

#: The kinds of the ``"wide"`` training family: the standard ones, then three of its own.
WIDE_CORRUPTIONS = CORRUPTIONS + ("brightness", "contrast", "hed")

Range = tuple[float, float]


@dataclass(frozen=True)
class Strength:
    """How strongly each kind is drawn; every field is a range (or ranges) of one parameter.

    Attributes:
        rotation_degrees: the angle's range; with ``rotation_either_way`` its magnitude.
        rotation_either_way: draw a magnitude and a random sign.
        stain_gains: the gain's range for the R, G and B channels.
        gammas: one or more ranges of the exposure gamma (one chosen uniformly, then a gamma
            log-uniformly in it).
        hue_shift: the hue shift in turns; with ``hue_either_way`` its magnitude.
        hue_either_way: draw a magnitude and a random sign.
        saturation: the saturation factor's range.
        blur_sigmas_at_96px: the Gaussian σ values (at 96 px; scaled with the image).
        noise_sigma: the sensor noise σ's range, in grey levels.
        jpeg_quality: the JPEG quality's range (both ends included).
        zoom_scales: one or more ranges of the scale factor, with their weights.
        brightness: the range of one gain for all channels (``"wide"`` family only).
        contrast: the range of the blend factor with the mean grey (``"wide"`` family only).
        hed_scale: the range of each optical-density channel's factor (``"wide"`` only).
        hed_shift: the range of each optical-density channel's offset (``"wide"`` only).
    """

    rotation_degrees: Range
    rotation_either_way: bool
    stain_gains: tuple[Range, Range, Range]
    gammas: tuple[Range, ...]
    hue_shift: Range
    hue_either_way: bool
    saturation: Range
    blur_sigmas_at_96px: tuple[float, ...]
    noise_sigma: Range
    jpeg_quality: tuple[int, int]
    zoom_scales: tuple[tuple[Range, float], ...]
    brightness: Range = (1.0, 1.0)
    contrast: Range = (1.0, 1.0)
    hed_scale: Range = (1.0, 1.0)
    hed_shift: Range = (0.0, 0.0)


TRAINING = Strength(
    rotation_degrees=(-45.0, 45.0),
    rotation_either_way=False,
    stain_gains=((0.7, 1.3),) * 3,
    gammas=((0.5, 2.0),),
    hue_shift=(-0.1, 0.1),
    hue_either_way=False,
    saturation=(0.7, 1.3),
    blur_sigmas_at_96px=(0.8, 1.2, 1.6, 2.0),
    noise_sigma=(2.0, 20.0),
    jpeg_quality=(10, 90),
    zoom_scales=(((0.65, 2.2), 1.0),),
)

#: The ``"wide"`` family's strengths: stronger casts and gammas than :data:`TRAINING`, and the
#: ranges of its own kinds.
WIDE_TRAINING = replace(
    TRAINING,
    stain_gains=((0.6, 1.4),) * 3,
    gammas=((0.4, 2.5),),
    brightness=(0.45, 1.5),
    contrast=(0.4, 1.5),
    hed_scale=(0.8, 1.2),
    hed_shift=(-0.08, 0.08),
)

EVALUATION = Strength(
    rotation_degrees=(15.0, 75.0),
    rotation_either_way=True,
    stain_gains=((0.75, 0.9), (0.85, 0.95), (1.1, 1.3)),
    gammas=((0.55, 0.75), (1.4, 1.8)),
    hue_shift=(10 / 256, 25 / 256),
    hue_either_way=True,
    saturation=(1.0, 1.0),
    blur_sigmas_at_96px=(0.8, 1.0, 1.2, 1.4, 1.6),
    noise_sigma=(8.0, 16.0),
    jpeg_quality=(10, 29),
    zoom_scales=(((1.25, 2.0), 2 / 3), ((0.7, 0.85), 1 / 3)),
)

#: The training families a member spec can name: each its corruption kinds and strengths.
FAMILIES = {"standard": (CORRUPTIONS, TRAINING), "wide": (WIDE_CORRUPTIONS, WIDE_TRAINING)}
