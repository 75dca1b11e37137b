"""Colour normalisation of a lab's images to the training lab's statistics (Reinhard).

A lab's stain and camera shift the colour of every image the same way. Reinhard et al. (2001)
match colour statistics in the decorrelated lαβ space (Ruderman et al. 1998): each channel's
mean and standard deviation are moved to the reference's. Here the statistics are the *lab's*,
pooled over all pixels of many of its images, not each image's own: a cell crop's colours
depend on the cell (an eosinophil's red granules, a basophil's dark ones), and normalising
each image to the same statistics would erase exactly what tells the classes apart. One fixed
affine map per lab keeps the differences between cells and removes the lab's cast.

:class:`ColourNormaliser` is fitted on unlabelled images of the lab and on the training
images, saved as JSON in the run (``ensemble adapt --unlabelled DIR --colour reinhard``), and
applied by the run's :class:`~ensemble.serve.ensemble.Ensemble` to every image it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble.core.errors import ConfigError, DataError

#: RGB → LMS cone responses (Reinhard et al. 2001, eq. 4).
_RGB_TO_LMS = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
#: log-LMS → lαβ (Ruderman et al. 1998): luminance and two opponent colour axes.
_LMS_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]]
)
#: Lower bound on LMS before the logarithm (black pixels).
_FLOOR = 1.0 / 255.0
#: Pixels drawn per image when fitting statistics (enough for means and spreads, bounded memory).
_PIXELS_PER_IMAGE = 1024
METHODS = ("reinhard",)
#: lαβ channel names, and the smallest spread a channel may have to be rescaled.
CHANNELS = ("l", "alpha", "beta")
MIN_SPREAD = 1e-3


def rgb_to_lab(images: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(..., 3)`` → lαβ ``(..., 3)`` float64."""
    rgb = np.asarray(images, np.float64) / 255.0
    lms = np.maximum(rgb @ _RGB_TO_LMS.T, _FLOOR)
    return np.log10(lms) @ _LMS_TO_LAB.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """lαβ ``(..., 3)`` → uint8 RGB ``(..., 3)`` (clipped to the displayable range)."""
    lms = 10.0 ** (lab @ np.linalg.inv(_LMS_TO_LAB).T)
    rgb = lms @ np.linalg.inv(_RGB_TO_LMS).T
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def channel_statistics(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each lαβ channel over the pixels of ``images``.

    Up to :data:`_PIXELS_PER_IMAGE` pixels per image are drawn (seeded), so a folder of many
    large images costs bounded memory.

    Raises:
        DataError: ``images`` is not a non-empty ``(N, H, W, 3)`` array, or a channel barely
            varies (grey images: its scale would blow up).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise DataError(
            f"colour statistics need images as (N, H, W, 3), N >= 1. Received: {images.shape}"
        )
    pixels = images.reshape(len(images), -1, 3)
    if pixels.shape[1] > _PIXELS_PER_IMAGE:
        rng = np.random.default_rng(seed)
        chosen = rng.choice(pixels.shape[1], _PIXELS_PER_IMAGE, replace=False)
        pixels = pixels[:, chosen]
    lab = rgb_to_lab(pixels.reshape(-1, 3))
    spread = lab.std(axis=0)
    flat = [name for name, value in zip(CHANNELS, spread, strict=True) if value < MIN_SPREAD]
    if flat:
        raise DataError(
            f"the images barely vary in lαβ channel(s) {flat} (spread {spread.round(5).tolist()}"
            f", below {MIN_SPREAD}): grey or single-colour images cannot anchor a colour map"
        )
    return lab.mean(axis=0), spread


@dataclass(frozen=True)
class ColourNormaliser:
    """One lab's colour mapped onto the reference (training) lab's, channel by channel in lαβ.

    Attributes:
        source_mean, source_std: the lab's lαβ statistics.
        reference_mean, reference_std: the training images' lαβ statistics.
        method: ``"reinhard"`` (the one method so far).
    """

    source_mean: tuple[float, float, float]
    source_std: tuple[float, float, float]
    reference_mean: tuple[float, float, float]
    reference_std: tuple[float, float, float]
    method: str = "reinhard"

    @classmethod
    def fit(
        cls, lab_images: np.ndarray, reference_images: np.ndarray, seed: int = 0
    ) -> ColourNormaliser:
        """The map from ``lab_images``' colour statistics to ``reference_images``'.

        Raises:
            DataError: either is not a non-empty ``(N, H, W, 3)`` array.
        """
        source_mean, source_std = channel_statistics(lab_images, seed)
        reference_mean, reference_std = channel_statistics(reference_images, seed)
        return cls(
            tuple(map(float, source_mean)),
            tuple(map(float, source_std)),
            tuple(map(float, reference_mean)),
            tuple(map(float, reference_std)),
        )

    def transform(self, images: np.ndarray) -> np.ndarray:
        """``images`` (uint8 ``(..., 3)``) with the lab's colour moved to the reference's."""
        lab = rgb_to_lab(images)
        scale = np.asarray(self.reference_std) / np.asarray(self.source_std)
        lab = (lab - np.asarray(self.source_mean)) * scale + np.asarray(self.reference_mean)
        return lab_to_rgb(lab)

    def to_json(self) -> dict:
        """A JSON-ready dict (:meth:`from_json` reads it back)."""
        return {
            "method": self.method,
            "source_mean": list(self.source_mean),
            "source_std": list(self.source_std),
            "reference_mean": list(self.reference_mean),
            "reference_std": list(self.reference_std),
        }

    @classmethod
    def from_json(cls, data: dict) -> ColourNormaliser:
        """The normaliser :meth:`to_json` wrote.

        Raises:
            ConfigError: an unknown method or a missing statistic.
        """
        if data.get("method") not in METHODS:
            raise ConfigError(
                f"unknown colour normalisation {data.get('method')!r}. Known: {list(METHODS)}"
            )
        try:
            values = {
                name: tuple(float(v) for v in data[name])
                for name in ("source_mean", "source_std", "reference_mean", "reference_std")
            }
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"colour normalisation record is incomplete: {error}") from error
        return cls(**values, method=data["method"])
