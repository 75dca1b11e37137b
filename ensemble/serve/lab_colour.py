"""A lab's colour map for ``ensemble adapt``: the lab's images, the reference, the fitted map.

Both ways of adapting can map a lab's colour onto the training images' (Reinhard, in lαβ with
the lab's pooled statistics, :class:`~ensemble.data.colour.ColourNormaliser`): without labels
(``adapt --unlabelled DIR --colour reinhard``) the map is all that changes; with reviewed cells
(``adapt --labelled CSV --colour reinhard [--unlabelled DIR]``) the members are then fine-tuned
on the colour-mapped cells. This module holds what the two share: reading a folder of the lab's
images, the training images the reference statistics come from, and the fit.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from ensemble.core.errors import ConfigError, DataError
from ensemble.data.colour import METHODS, ColourNormaliser
from ensemble.data.images import UnreadableImage, crop_and_resize_all, decode_image
from ensemble.data.sources import load_dataset
from ensemble.run.directory import RunDir
from ensemble.serve.adapt_settings import MIN_IMAGES, REFERENCE_IMAGES, STATISTICS_SIZE
from ensemble.serve.predict import iter_files


def check_method(colour: str | None) -> None:
    """``colour`` is ``None`` or a known method.

    Raises:
        ConfigError: an unknown method, naming the known ones.
    """
    if colour is not None and colour not in METHODS:
        raise ConfigError(f"unknown colour normalisation {colour!r}. Choose from {list(METHODS)}")


def check_base_unmapped(base: RunDir) -> None:
    """The base run maps no lab's colour yet (a second map would stack on the first).

    Raises:
        ConfigError: the base run has a ``colour.json``; names the run it was made from.
    """
    if base.colour_path.is_file():
        raise ConfigError(
            f"the base run {base.root} already maps a lab's colour; adapt from the run it "
            f"was made from ({base.manifest.get('adapted_from', {}).get('run')})"
        )


def read_image_folder(
    folder: Path, minimum: int = MIN_IMAGES
) -> tuple[list[np.ndarray], list[str]]:
    """A folder's readable images at their own size, and the files left out (listed on stderr).

    Args:
        folder: the lab's images, any layout.
        minimum: fewest readable images the folder must hold (0 when other images of the lab
            join it for the statistics, as the reviewed cells do).

    Raises:
        DataError: ``folder`` is not a folder, or holds fewer than ``minimum`` readable images.
    """
    if not folder.is_dir():
        raise DataError(f"--unlabelled {folder} is not a folder of images")
    images, skipped = [], []
    for path in iter_files(folder):
        try:
            pixels = decode_image(path).pixels
        except UnreadableImage as error:
            skipped.append(f"{path} ({error})")
            continue
        images.append(pixels)
    if skipped:
        listed = "; ".join(skipped[:5])
        print(f"adapt: {len(skipped)} unreadable files left out: {listed}", file=sys.stderr)
    if len(images) < minimum:
        raise DataError(
            f"--unlabelled {folder} holds {len(images)} readable images; the lab's statistics "
            f"need at least {minimum} (a few hundred, classes mixed, is better)"
        )
    return images, skipped


def reference_images(base: RunDir, seed: int) -> np.ndarray:
    """Up to :data:`REFERENCE_IMAGES` of the base run's training images, seeded."""
    run = base.with_data(load_dataset(base.data_source()))
    positions = run.split.positions(run.dataset, "train")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(positions, size=min(REFERENCE_IMAGES, len(positions)), replace=False)
    decoded = (run.dataset.decode(run.dataset.records[int(i)], None).pixels for i in sorted(chosen))
    return crop_and_resize_all(decoded, STATISTICS_SIZE)


def distinct_images(images: list[np.ndarray]) -> list[np.ndarray]:
    """``images`` without pixel-identical repeats, first occurrences in order.

    A reviewed cell that is also in the ``--unlabelled`` folder counts once in the lab's
    statistics.
    """
    seen: set[bytes] = set()
    distinct = []
    for image in images:
        key = hashlib.sha256(repr(image.shape).encode() + image.tobytes()).digest()
        if key not in seen:
            seen.add(key)
            distinct.append(image)
    return distinct


def fit_lab_colour(base: RunDir, lab_images: list[np.ndarray], seed: int) -> ColourNormaliser:
    """The map from the lab's pooled colour statistics onto the base run's training images'.

    Args:
        base: the base run (its training images are the reference).
        lab_images: the lab's images at any size (cropped and resized for the statistics);
            pixel-identical repeats count once.
        seed: seeds the reference sample and the pixel sample.

    Raises:
        DataError: fewer than :data:`MIN_IMAGES` lab images.
    """
    lab_images = distinct_images(lab_images)
    if len(lab_images) < MIN_IMAGES:
        raise DataError(
            f"{len(lab_images)} distinct lab images (reviewed cells and --unlabelled images) "
            f"are too few for the lab's colour statistics; they need at least {MIN_IMAGES}. Add "
            "--unlabelled DIR with more of the lab's images."
        )
    lab = crop_and_resize_all(lab_images, STATISTICS_SIZE)
    return ColourNormaliser.fit(lab, reference_images(base, seed), seed)
