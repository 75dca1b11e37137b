"""Claims: at most one worker trains a member of a shared run directory at a time.

A claim is ``claims/<member>.json`` in the run directory, holding its owner (host, pid and a
random token) and a heartbeat that the owner refreshes from a background thread::

    {"member": "tiny-a", "host": "node-2", "pid": 4711, "token": "9f…", "claimed_at": …,
     "heartbeat": 1712345678.2}

Every change to a claim (take, take over, beat, release) happens under ``claims/<member>.lock``,
a file created with ``O_CREAT | O_EXCL`` — atomic on local file systems and on NFSv3+ — and held
for milliseconds. A claim whose heartbeat is older than ``timeout`` seconds, or whose owner is a
dead process on this host, is stale: the next worker takes it over and, since training resumes
from ``checkpoint/``, continues after the last completed epoch. Heartbeats compare wall clocks,
so the nodes sharing a run directory need synchronised clocks (NTP); keep ``timeout`` well above
the clock skew and the heartbeat interval.

The claims live outside ``members/<member>/`` so that ``--force`` (which empties that folder)
does not drop the claim of the worker that is retraining it.

Example:
    >>> claim = try_claim(run_root, "tiny-a")  # doctest: +SKIP
    >>> if claim is not None:
    ...     with claim:  # heartbeats while training, released at the end
    ...         train()
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ensemble.core.fileio import atomic_write_json

CLAIMS = "claims"
#: A claim not refreshed for this long is stale (seconds): 8 missed heartbeats of 15 s.
DEFAULT_TIMEOUT = 120.0
#: How often the owner refreshes its claim (seconds).
DEFAULT_HEARTBEAT = 15.0
#: A lock file older than this was left by a process killed while changing a claim (seconds).
LOCK_TIMEOUT = 30.0


def claim_path(run_root: Path | str, member: str) -> Path:
    """Where member ``member``'s claim is kept."""
    return Path(run_root) / CLAIMS / f"{member}.json"


def read_claim(run_root: Path | str, member: str) -> dict | None:
    """The current claim on ``member`` (owner and heartbeat), or ``None`` if unclaimed."""
    try:
        return json.loads(claim_path(run_root, member).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_stale(claim: dict, timeout: float = DEFAULT_TIMEOUT, now: float | None = None) -> bool:
    """True if ``claim``'s heartbeat is older than ``timeout`` or its owner died on this host."""
    now = time.time() if now is None else now
    if now - float(claim.get("heartbeat", 0.0)) > timeout:
        return True
    return claim.get("host") == socket.gethostname() and not _alive(int(claim.get("pid", 0)))


@dataclass
class Claim:
    """A held claim on one member; a context manager that heartbeats until released.

    Attributes:
        run_root: the run directory.
        member: the member claimed.
        owner: ``host``, ``pid`` and ``token`` of this claim.
        taken_over: the stale claim this one replaced (``None`` if the member was unclaimed).
        lost: set when another worker took the claim over (this worker stopped heartbeating
            for longer than the timeout); the caller should stop writing to the member.
    """

    run_root: Path
    member: str
    owner: dict
    heartbeat_every: float = DEFAULT_HEARTBEAT
    taken_over: dict | None = None
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> Claim:
        self.start_heartbeat()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def start_heartbeat(self) -> None:
        """Refresh the claim every ``heartbeat_every`` seconds from a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._beat_forever, name=f"claim-{self.member}", daemon=True
            )
            self._thread.start()

    def beat(self) -> bool:
        """Refresh the heartbeat now; False (and ``lost`` set) if another worker owns it."""
        with _locked(self.run_root, self.member):
            current = read_claim(self.run_root, self.member)
            if current is None or current.get("token") != self.owner["token"]:
                self.lost = True
                return False
            atomic_write_json(claim_path(self.run_root, self.member), _stamp(current))
        return True

    def release(self) -> None:
        """Stop heartbeating and delete the claim if this worker still owns it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with _locked(self.run_root, self.member):
            current = read_claim(self.run_root, self.member)
            if current is not None and current.get("token") == self.owner["token"]:
                claim_path(self.run_root, self.member).unlink(missing_ok=True)

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                if not self.beat():
                    return
            except OSError:  # shared storage hiccup: try again at the next beat
                continue


def try_claim(
    run_root: Path | str,
    member: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    heartbeat_every: float = DEFAULT_HEARTBEAT,
) -> Claim | None:
    """Claim ``member`` for this process, taking over a stale claim; ``None`` if held elsewhere.

    The returned claim is not heartbeating yet: use it as a context manager (or call
    :meth:`Claim.start_heartbeat` and :meth:`Claim.release`).

    Args:
        run_root: the run directory (shared by every worker).
        member: the member to claim.
        timeout: seconds without a heartbeat after which another worker's claim is stale.
        heartbeat_every: seconds between heartbeats; must be well under ``timeout``.

    Returns:
        The claim, or ``None`` when another live worker holds it.

    Raises:
        ValueError: ``heartbeat_every`` is not under ``timeout``.
    """
    if not 0 < heartbeat_every < timeout:
        raise ValueError(
            "heartbeat_every must be positive and under timeout. Received: "
            f"heartbeat_every={heartbeat_every}, timeout={timeout}"
        )
    run_root = Path(run_root)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
    with _locked(run_root, member):
        current = read_claim(run_root, member)
        if current is not None and not is_stale(current, timeout):
            return None
        record = _stamp({"member": member, **owner, "claimed_at": time.time()})
        atomic_write_json(claim_path(run_root, member), record)
    return Claim(run_root, member, owner, heartbeat_every, taken_over=current)


def describe(claim: dict) -> str:
    """``host pid 4711, heartbeat 3 s ago`` for messages."""
    age = time.time() - float(claim.get("heartbeat", 0.0))
    return f"{claim.get('host')} pid {claim.get('pid')}, heartbeat {age:.0f} s ago"


def _stamp(record: dict) -> dict:
    return record | {"heartbeat": time.time()}


@contextmanager
def _locked(run_root: Path, member: str, wait: float = 2 * LOCK_TIMEOUT):
    """Hold ``claims/<member>.lock`` (created exclusively) while changing the claim."""
    lock = Path(run_root) / CLAIMS / f"{member}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > LOCK_TIMEOUT:
                    lock.unlink(missing_ok=True)  # its holder died between open and unlink
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{lock} has been held for over {wait:.0f} s; if no worker is running, "
                    "delete it"
                ) from None
            time.sleep(0.05)
    try:
        os.write(handle, f"{socket.gethostname()} {os.getpid()}\n".encode())
        os.close(handle)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
