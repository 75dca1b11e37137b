"""What a long step is doing, on stderr: one line per stage, and a bar on a terminal.

``ENSEMBLE_PROGRESS`` chooses: ``auto`` (the default) prints stage lines, and bars only when
stderr is a terminal; ``1`` prints bars also into a file or pipe; ``0`` prints nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def _mode() -> str:
    return os.environ.get("ENSEMBLE_PROGRESS", "auto")


def _bar_disabled() -> bool:
    mode = _mode()
    return mode == "0" or (mode != "1" and not sys.stderr.isatty())


def bars_enabled() -> bool:
    """Whether progress bars are shown (``ENSEMBLE_PROGRESS``; see the module docstring)."""
    return not _bar_disabled()


def progress_bar(total: int, desc: str, unit: str = "img") -> tqdm:
    """A tqdm bar on stderr, advanced by hand (``bar.update(n)``); use it with ``with``.

    Example:
        >>> with progress_bar(len(images), "thumbnails") as bar:  # doctest: +SKIP
        ...     for start in range(0, len(images), 1024):
        ...         bar.update(len(images[start : start + 1024]))
    """
    return tqdm(total=total, desc=desc, disable=_bar_disabled(), leave=False, unit=unit)


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "img"
) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar on stderr that disappears when done.

    Args:
        items: what to iterate over.
        total: number of items, when ``items`` has no length.
        desc: label in front of the bar.
        unit: what one item is, for the rate (``img/s``).

    Yields:
        The items, unchanged.
    """
    yield from tqdm(items, total=total, desc=desc, disable=_bar_disabled(), leave=False, unit=unit)


def stage(task: str, message: str) -> None:
    """Print one line ``task: message`` on stderr, saying what a long task starts doing now.

    Silent with ``ENSEMBLE_PROGRESS=0``.

    Example:
        >>> stage("audit", "near duplicates among 14190 distinct images")  # doctest: +SKIP
        audit: near duplicates among 14190 distinct images
    """
    if _mode() != "0":
        tqdm.write(f"{task}: {message}", file=sys.stderr)
