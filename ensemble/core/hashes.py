"""Content hashes of files, and the one check that a recorded hash still holds.

Every loader that trusts a file because of what an earlier step recorded (fit-stacker records
the members' model hashes; calibration files record the hashes they were calibrated for) checks
it with :func:`check_recorded_hashes`, so the refusal reads the same everywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from ensemble.core.errors import RunError


def file_sha256(path: Path | str) -> str:
    """Return the SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def changed_names(recorded: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The names whose hash differs between ``recorded`` and ``current`` (or is missing)."""
    return sorted(
        name for name in set(recorded) | set(current) if recorded.get(name) != current.get(name)
    )


def check_recorded_hashes(
    recorded: Mapping[str, str], current: Mapping[str, str], message: str
) -> None:
    """Refuse what an earlier step recorded for other files: one line naming what changed.

    Args:
        recorded: name → hash, as the earlier step recorded it.
        current: name → hash of the files now (only these names are compared when
            ``recorded`` holds more).
        message: the refusal, with ``{changed}`` where the changed names go, e.g.
            ``"members changed since the combiners were fitted: {changed}. Run …"``.

    Raises:
        RunError: ``message`` with the sorted changed names.
    """
    changed = changed_names(recorded, current)
    if changed:
        raise RunError(message.format(changed=changed))
