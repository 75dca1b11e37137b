"""Atomic file writes: a killed process leaves either the old file or the complete new one.

Files get the mode the process's umask gives a new file (0644 under umask 022), not the 0600
of :func:`tempfile.mkstemp`, so a run directory on shared storage can be read by the other
users and services it is shared with. The hidden temporary files that a killed write leaves
behind are removed by :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Part of every temporary file's name, so that leftovers of killed writes can be recognised.
TEMPORARY_MARK = "partial-"


def new_file_mode() -> int:
    """The mode a newly created file gets under the process's current umask (e.g. 0o644)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def remove_stale_temporaries(folder: Path | str, older_than_seconds: float = 3600.0) -> list[Path]:
    """Delete the temporary files that killed atomic writes left anywhere under ``folder``.

    Only files named by :func:`atomic_write_with` (``.<name>.partial-*``) and untouched for
    ``older_than_seconds`` are removed, so a write still in progress in another process (a
    shared run directory) is left alone.

    Returns:
        The files removed.
    """
    import time

    cutoff = time.time() - older_than_seconds
    removed = []
    for candidate in Path(folder).rglob(f".*.{TEMPORARY_MARK}*"):
        try:
            if candidate.is_file() and candidate.stat().st_mtime < cutoff:
                candidate.unlink()
                removed.append(candidate)
        except FileNotFoundError:  # another process finished or removed it meanwhile
            continue
    return removed


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
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.{TEMPORARY_MARK}", suffix=suffix, dir=path.parent
    )
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, new_file_mode())
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
