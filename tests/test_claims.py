"""Claims: one worker per member of a shared run directory; stale claims are taken over."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from ensemble.run.claims import LOCK_TIMEOUT, claim_path, is_stale, read_claim, try_claim
from tests.conftest import REPO


def _fake_claim(run, member, **fields):
    record = {"member": member, "host": "elsewhere", "pid": 1, "token": "t0"}
    record |= {"claimed_at": time.time(), "heartbeat": time.time()} | fields
    path = claim_path(run, member)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_claim_is_exclusive_and_released(tmp_path):
    claim = try_claim(tmp_path, "a")
    assert claim is not None and claim.taken_over is None
    held = read_claim(tmp_path, "a")
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    assert try_claim(tmp_path, "a") is None  # a live owner (this process) holds it
    assert try_claim(tmp_path, "b") is not None  # other members are independent
    claim.release()
    assert read_claim(tmp_path, "a") is None
    assert try_claim(tmp_path, "a") is not None


def test_stale_heartbeat_is_taken_over_and_the_old_owner_learns_it(tmp_path):
    _fake_claim(tmp_path, "a", heartbeat=time.time() - 10)
    assert try_claim(tmp_path, "a", timeout=60, heartbeat_every=1) is None  # fresh enough
    claim = try_claim(tmp_path, "a", timeout=5, heartbeat_every=1)
    assert claim is not None and claim.taken_over["token"] == "t0"

    # The old owner comes back and beats: it learns that it lost the claim.
    mine = claim.owner["token"]
    _fake_claim(tmp_path, "a", token="t1")  # someone else took it over from us meanwhile
    assert claim.beat() is False and claim.lost
    claim.release()  # does not delete the other worker's claim
    assert read_claim(tmp_path, "a")["token"] == "t1" != mine


def test_dead_owner_on_this_host_is_stale_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _fake_claim(tmp_path, "a", host=socket.gethostname(), pid=dead.pid)
    assert is_stale(read_claim(tmp_path, "a"), timeout=3600)
    assert try_claim(tmp_path, "a", timeout=3600) is not None


def test_heartbeat_keeps_a_claim_fresh(tmp_path):
    with try_claim(tmp_path, "a", timeout=0.6, heartbeat_every=0.1) as claim:
        time.sleep(1.0)
        claim_record = read_claim(tmp_path, "a")
        assert not is_stale(claim_record, timeout=0.6)
    assert read_claim(tmp_path, "a") is None and not claim.lost


def test_lock_left_by_a_killed_process_is_removed(tmp_path):
    lock = tmp_path / "claims" / "a.lock"
    lock.parent.mkdir()
    lock.write_text("killed 1\n")
    old = time.time() - LOCK_TIMEOUT - 5
    os.utime(lock, (old, old))
    assert try_claim(tmp_path, "a") is not None and not lock.exists()


def test_heartbeat_must_be_under_timeout(tmp_path):
    with pytest.raises(ValueError, match="heartbeat_every must be positive and under timeout"):
        try_claim(tmp_path, "a", timeout=5, heartbeat_every=10)


def _race(run, barrier, results):
    barrier.wait()
    claim = try_claim(run, "a")
    results.put(claim is not None)
    if claim is not None:
        time.sleep(0.5)  # keep the claim (process alive) while the others try


def test_only_one_of_many_processes_wins(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(6), context.Queue()
    workers = [context.Process(target=_race, args=(tmp_path, barrier, results)) for _ in range(6)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(outcomes) == [False] * 5 + [True]


# train-members with claims: two drivers at once, each member trained once, dependencies first.


@pytest.fixture
def ci_run(synthetic_folder, tmp_path):
    from ensemble.data.sources import load_dataset
    from ensemble.members.specs import load_pipeline
    from ensemble.run.directory import create_or_open_run

    pipeline = load_pipeline(REPO / "pipelines/ci.toml")
    run = create_or_open_run(tmp_path / "run", load_dataset(synthetic_folder), pipeline)
    return run, pipeline


def _fake_training(calls, lock):
    def train(spec, run, names, *, force, strategy):
        from ensemble.members.training import is_finished

        member_dir = run.member_dir(spec.name)
        if spec.kind == "ovr":  # its base must be finished before it starts
            assert is_finished(run.member_dir(spec.ovr.base_member))
        with lock:
            calls.append((spec.name, threading.current_thread().name))
        time.sleep(0.4)
        member_dir.mkdir(parents=True, exist_ok=True)
        (member_dir / "model.keras").write_text("model")
        metrics = {"member": spec.name, "val_accuracy": 0.5}
        (member_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    return train


def test_two_drivers_train_each_member_once(ci_run, monkeypatch, capsys):
    from ensemble.run import train as members

    run, pipeline = ci_run
    calls, lock = [], threading.Lock()
    monkeypatch.setattr(members, "_train_one", _fake_training(calls, lock))
    outcomes = {}

    def driver(name):
        outcomes[name] = members.train_run_members(
            run, pipeline, ["tiny-a", "tiny-b", "tiny-ovr"], poll_seconds=0.05
        )

    threads = [threading.Thread(target=driver, args=(f"d{i}",), name=f"d{i}") for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(name for name, _ in calls) == ["tiny-a", "tiny-b", "tiny-ovr"]
    for result in outcomes.values():  # both drivers report all three, finished
        assert list(result) == ["tiny-a", "tiny-b", "tiny-ovr"]
    statuses = [outcome.status for result in outcomes.values() for outcome in result.values()]
    assert statuses.count("trained") == 3
    assert statuses.count("trained by another worker") == 3
    assert not list((run.root / "claims").glob("*.json"))  # every claim released


def test_member_claimed_elsewhere_is_waited_for_then_reported(ci_run, monkeypatch, capsys):
    from ensemble.run import train as members

    run, pipeline = ci_run
    calls, lock = [], threading.Lock()
    monkeypatch.setattr(members, "_train_one", _fake_training(calls, lock))
    other = try_claim(run.root, "tiny-a")  # another live driver holds tiny-a

    def finish_elsewhere():
        time.sleep(0.5)
        (run.member_dir("tiny-a") / "model.keras").parent.mkdir(parents=True, exist_ok=True)
        (run.member_dir("tiny-a") / "model.keras").write_text("model")
        (run.member_dir("tiny-a") / "metrics.json").write_text('{"val_accuracy": 0.7}')
        other.release()

    helper = threading.Thread(target=finish_elsewhere)
    helper.start()
    result = members.train_run_members(run, pipeline, ["tiny-a", "tiny-ovr"], poll_seconds=0.05)
    helper.join()
    assert [name for name, _ in calls] == ["tiny-ovr"]  # tiny-a was not trained here
    assert result["tiny-a"].status == "trained by another worker"
    assert result["tiny-a"].metrics["val_accuracy"] == 0.7
    assert "tiny-a: being trained by" in capsys.readouterr().err


def test_stale_claim_is_taken_over(ci_run, monkeypatch, capsys):
    from ensemble.run import train as members

    run, pipeline = ci_run
    calls, lock = [], threading.Lock()
    monkeypatch.setattr(members, "_train_one", _fake_training(calls, lock))
    _fake_claim(run.root, "tiny-b", heartbeat=time.time() - 1000)
    result = members.train_run_members(run, pipeline, ["tiny-b"], poll_seconds=0.05)
    assert [name for name, _ in calls] == ["tiny-b"] and result["tiny-b"].status == "trained"
    assert "took over the stale claim of elsewhere pid 1" in capsys.readouterr().err


def test_missing_dependency_still_fails_in_one_line(ci_run, capsys):
    from ensemble.core.errors import RunError
    from ensemble.run import train as members

    run, pipeline = ci_run
    with pytest.raises(RunError, match="needs member 'tiny-a' trained first"):
        members.train_run_members(run, pipeline, ["tiny-ovr"], poll_seconds=0.05)
    assert read_claim(run.root, "tiny-ovr") is None


@pytest.mark.large
def test_two_train_members_processes_at_once(synthetic_folder, tmp_path, ci_run):
    """Two real drivers on one run directory: every member is trained by exactly one of them."""
    run, _ = ci_run
    command = [
        sys.executable, "-m", "ensemble", "train-members", "--pipeline",
        str(REPO / "pipelines/ci.toml"), "--data", str(synthetic_folder), "--run", str(run.root),
    ]  # fmt: skip
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=900) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    stderr = "".join(err for _, err in outputs)
    for name in ("tiny-a", "tiny-b", "tiny-ovr"):
        assert stderr.count(f"{name}: training (") == 1, stderr[-3000:]
        assert (run.member_dir(name) / "metrics.json").is_file()


def test_opening_a_run_removes_stale_temporaries(ci_run):
    from ensemble.core.fileio import TEMPORARY_MARK
    from ensemble.run.directory import RunDir

    run, _ = ci_run
    member = run.member_dir("tiny-a")
    member.mkdir(parents=True)
    stale = member / f".model.keras.{TEMPORARY_MARK}k1.keras"  # what SIGKILL mid-save leaves
    fresh = member / f".state.json.{TEMPORARY_MARK}k2.tmp"  # a write in progress elsewhere
    for path in (stale, fresh):
        path.write_text("partial")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    RunDir.open(run.root)
    assert not stale.exists() and fresh.exists()
