"""Artifacts follow the umask (shared run directories), and killed writes' leftovers are removed."""

import os
import stat
import time

import pytest

from ensemble.core.fileio import (
    TEMPORARY_MARK,
    atomic_write_json,
    atomic_write_with,
    remove_stale_temporaries,
)


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode


def test_stale_temporaries_are_removed_and_fresh_ones_kept(tmp_path, umask):
    def die(temporary):
        open(temporary, "w").write("half")
        raise KeyboardInterrupt  # a BaseException: cleaned up like any failure

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(tmp_path / "m.json", die)
    assert not list(tmp_path.iterdir())  # an ordinary failure leaves nothing

    # What SIGKILL leaves: a temporary that nobody removed.
    nested = tmp_path / "members" / "a"
    nested.mkdir(parents=True)
    stale = nested / f".model.keras.{TEMPORARY_MARK}x1.keras"
    fresh = nested / f".state.json.{TEMPORARY_MARK}x2.tmp"
    other = nested / ".hidden-user-file"
    for path in (stale, fresh, other):
        path.write_text("partial")
    hour_ago = time.time() - 7200
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))

    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and fresh.exists() and other.exists()
