"""Atomic file writes: a killed process leaves either the old file or the complete new one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write_with(path: Path | str, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Let ``write`` fill a temporary file beside ``path``, fsync it, then rename it to ``path``.

    A process killed at any moment leaves either the previous ``path`` or the complete new one
    (plus, after SIGKILL, a hidden ``.<name>.*`` temporary file that nothing reads). An
    ``OSError`` (disk full, permission denied) removes the temporary file and is re-raised
    naming ``path``.

    Args:
        path: the file to (re)place.
        write: called with the temporary file's path; writes the complete content there.
        suffix: the temporary file's suffix (some writers insist on one, e.g. ``.keras``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        if error.filename is None:
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_write_with`)."""
    atomic_write_with(path, lambda temporary: Path(temporary).write_bytes(data))


def atomic_write_text(path: Path | str, text: str) -> None:
    """Atomically write UTF-8 text (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, payload: Any) -> None:
    """Atomically write ``payload`` as indented, key-sorted JSON (byte-stable for equal input)."""
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")


def save_model_atomically(model, path: Path) -> None:
    """Save a Keras model to a temporary ``.keras`` file beside ``path``, then rename it."""
    atomic_write_with(path, model.save, suffix=".keras")
