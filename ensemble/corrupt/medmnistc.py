"""MedMNIST-C: a corruption suite the project did not write, for evaluation only.

Di Salvo et al. (2024) corrupt the MedMNIST+ images, BloodMNIST among them, with kinds and
five severities chosen per data set: pixelate, JPEG, defocus and motion blur, brightness and
contrast up and down, saturation, stain deposits and bubbles. The suite is the ``medmnistc``
package's (``pip install 'blood-ensemble[eval]'``; its motion blur needs ImageMagick), read
from its registry, never copied here, and never used in training: it tells whether robustness
learned from the project's own corruption family (:mod:`ensemble.corrupt.kinds`) carries to
another family.

The suite's parameters are set for 224 px images (MedMNIST+ at 224 px): each image is
resized to 224 px, corrupted there, and resized back to its own side, so that a stain deposit
or a bubble covers the share of the cell the authors meant.

The package imports PyTorch, and PyTorch and TensorFlow in one process crash (a segmentation
fault on import, seen with torch 2.14 and TensorFlow 2.21): the suite therefore runs in a
separate process (:class:`Suite`, spawned, without TensorFlow), and this module never imports
the package in the caller's process.
"""

from __future__ import annotations

import atexit
import importlib.util
import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from ensemble.core.errors import ConfigError

#: The data set of MedMNIST+ whose corruption settings apply (blood cells).
DATASET = "bloodmnist"
#: The side the suite's parameters are set for.
SUITE_SIZE = 224
#: Severities, as the suite numbers them.
SEVERITIES = (1, 2, 3, 4, 5)
INSTALL_HINT = (
    "MedMNIST-C is not installed: pip install 'blood-ensemble[eval]' "
    "--extra-index-url https://download.pytorch.org/whl/cpu (and ImageMagick for its motion "
    "blur: apt install libmagickwand-dev)"
)


def available() -> bool:
    """Whether the ``medmnistc`` package is installed (found without importing it)."""
    return importlib.util.find_spec("medmnistc") is not None


class Suite:
    """The suite in a process of its own, for as long as the ``with`` block lasts.

    Example:
        >>> with Suite() as suite:  # doctest: +SKIP
        ...     blurred = suite.corrupt(images, "motion_blur", severity=3)
    """

    def __enter__(self) -> Suite:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no TensorFlow
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown()

    def kinds(self) -> list[str]:
        """The suite's corruption kinds for blood cells, in its order.

        Raises:
            ImportError: ``medmnistc`` (or what it imports) cannot be loaded; the message says
                how to install it.
        """
        return self._pool.submit(_kinds).result()

    def corrupt(self, images: np.ndarray, kind: str, severity: int, seed: int = 0) -> np.ndarray:
        """``images`` (uint8 ``(N, H, W, 3)``) corrupted by one kind at one severity.

        Each image is drawn with its own seed (from ``seed``, the kind and the severity), so a
        copy is the same on every run.

        Raises:
            ConfigError: an unknown kind or a severity outside 1–5.
            ImportError: ``medmnistc`` cannot be loaded.
        """
        return self._pool.submit(_corrupted_copy, images, kind, severity, seed).result()


_SHARED: list[Suite] = []


def shared_suite() -> Suite:
    """One suite process for this whole process, started on first use, stopped at exit.

    Starting one costs seconds (it imports PyTorch); reports and benchmarks that make many
    copies share it.
    """
    if not _SHARED:
        suite = Suite().__enter__()
        atexit.register(suite.__exit__, None, None, None)
        _SHARED.append(suite)
    return _SHARED[0]


def kinds() -> list[str]:
    """The suite's kinds for blood cells (see :meth:`Suite.kinds`)."""
    return shared_suite().kinds()


# What runs in the suite's process.


def _kinds() -> list[str]:
    return list(_registry())


def _corrupted_copy(images: np.ndarray, kind: str, severity: int, seed: int) -> np.ndarray:
    """:meth:`Suite.corrupt` in the suite's process; global generators restored afterwards."""
    registry = _registry()
    if kind not in registry:
        raise ConfigError(f"unknown MedMNIST-C kind {kind!r}. Choose from {list(registry)}")
    if severity not in SEVERITIES:
        raise ConfigError(f"severity must be one of {list(SEVERITIES)}. Received: {severity}")
    corruption = registry[kind]
    words = np.random.SeedSequence((seed, list(registry).index(kind), severity))
    seeds = words.generate_state(len(images))
    numpy_state, python_state = np.random.get_state(), random.getstate()
    had_fromstring = hasattr(np, "fromstring")
    saved_fromstring = getattr(np, "fromstring", None)
    # medmnistc 0.1.0's motion blur reads ImageMagick's bytes with np.fromstring, whose binary
    # mode NumPy 2 removed; the same bytes through np.frombuffer, for the duration of the copy.
    np.fromstring = _fromstring
    try:
        result = np.empty_like(images)
        for index, (image, image_seed) in enumerate(zip(images, seeds, strict=True)):
            np.random.seed(int(image_seed))
            random.seed(int(image_seed))
            side = image.shape[:2][::-1]
            large = Image.fromarray(image).resize((SUITE_SIZE, SUITE_SIZE), Image.LANCZOS)
            corrupted = np.asarray(corruption.apply(large, severity - 1))
            corrupted = np.clip(corrupted, 0, 255).astype(np.uint8)
            back = Image.fromarray(corrupted).convert("RGB").resize(side, Image.LANCZOS)
            result[index] = np.asarray(back)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        if had_fromstring:
            np.fromstring = saved_fromstring
        else:
            del np.fromstring
    return result


def _fromstring(data, dtype=float, count=-1, *, sep=""):
    """``np.fromstring`` as NumPy 1 read bytes (binary mode): a writable copy of the buffer."""
    if sep:
        raise ValueError("only the binary mode of fromstring is provided here")
    return np.frombuffer(data, dtype=dtype, count=count).copy()


def _registry() -> dict:
    try:
        from medmnistc.corruptions.registry import CORRUPTIONS_DS
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return CORRUPTIONS_DS[DATASET]


#: The severity of the report's MedMNIST-C copy: the suite's middle one.
REPORT_SEVERITY = 3


def suite_copy(
    images: dict[int, np.ndarray], seed: int = 0, severity: int = REPORT_SEVERITY
) -> tuple[dict[int, np.ndarray], list[str]]:
    """The report's MedMNIST-C copy of images given per size: one kind per image, in turn.

    Like the shifted copy (:func:`ensemble.corrupt.shifts.shifted_images`), the copy is made
    at the largest size and resized, so every member sees the same pictures.

    Returns:
        The corrupted images per size and the kind applied to each image.

    Raises:
        ImportError: ``medmnistc`` is not installed.
    """
    from ensemble.corrupt.shifts import at_every_size

    largest = images[max(images)]
    corrupted = np.empty_like(largest)
    suite = shared_suite()
    names = suite.kinds()
    applied = [names[index % len(names)] for index in range(len(largest))]
    for kind in names:
        chosen = np.array([name == kind for name in applied])
        if chosen.any():
            corrupted[chosen] = suite.corrupt(largest[chosen], kind, severity, seed)
    return at_every_size(corrupted, images), applied
