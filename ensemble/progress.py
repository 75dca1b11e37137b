"""Progress bars that stay quiet when output is not a terminal or when asked to."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar on stderr; disabled if ``ENSEMBLE_PROGRESS=0`` or not a TTY."""
    enabled = os.environ.get("ENSEMBLE_PROGRESS", "auto")
    disable = enabled == "0" or (enabled == "auto" and not sys.stderr.isatty())
    yield from tqdm(items, total=total, desc=desc, disable=disable, leave=False, unit="img")
