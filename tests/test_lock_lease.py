"""The run directory's lease (lease_lib.RunLock): it belongs to the run, is renewed by the
chief, expires after a TTL whatever pid it names, and is taken atomically. Time is an
injected clock throughout: nothing here sleeps."""

import contextlib
import errno
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading

import pytest

from dann_dist import lease as lease_lib

T0 = 1_000_000.0
TTL = lease_lib.LEASE_TTL_S


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


def _lease(tmp_path):
    return json.loads((tmp_path / lease_lib.LOCK).read_text())


def _write_lease(tmp_path, renewed, pid=12345, host="another-host.example", token="old-run"):
    (tmp_path / lease_lib.LOCK).write_text(json.dumps(
        {"token": token, "holder": "old-holder", "pid": pid, "host": host,
         "started": "earlier", "renewed": renewed}))


def test_the_lease_records_the_runs_token_the_holder_and_the_renewal_time(tmp_path):
    with lease_lib.RunLock(str(tmp_path), clock=Clock()) as lock:
        lease = _lease(tmp_path)
        assert lease["token"] == lock.token and lease["holder"] == lock.holder
        assert lease["pid"] == os.getpid() and lease["host"] == socket.gethostname()
        assert lease["renewed"] == T0
    # Released on the way out; only the (never deleted) guard file stays.
    assert os.listdir(tmp_path) == [lease_lib.LOCK_GUARD]


def test_a_fresh_lease_is_refused_naming_the_holder_and_when_it_expires(tmp_path):
    _write_lease(tmp_path, renewed=T0 - 100)
    with pytest.raises(lease_lib.RunLocked) as err:
        lease_lib.RunLock(str(tmp_path), clock=Clock()).acquire()
    message = str(err.value)
    assert "in use by pid 12345 on host another-host.example" in message
    assert "renewed 100 s ago" in message and f"expires in {TTL - 100:.0f} s" in message
    assert _lease(tmp_path)["holder"] == "old-holder"


# Named cases, the pid resolved in the test: ids must not depend on the collecting process
# (pytest-xdist's workers collect separately and must agree).
@pytest.mark.parametrize("holder", ["our_own_pid", "pid_1_here", "another_host"])
def test_a_lease_older_than_the_ttl_is_taken_over_whatever_pid_it_names(tmp_path, caplog,
                                                                       holder):
    pid, host = {
        "our_own_pid": (os.getpid(), socket.gethostname()),  # a restarted container: alive (us)
        "pid_1_here": (1, socket.gethostname()),
        "another_host": (12345, "another-host.example"),  # a crashed node, shared filesystem
    }[holder]
    _write_lease(tmp_path, renewed=T0 - TTL - 1, pid=pid, host=host)
    with lease_lib.RunLock(str(tmp_path), clock=Clock()) as lock:
        assert _lease(tmp_path)["holder"] == lock.holder
    # (Our own pid from an earlier process is taken over as ended; see the tests below.)
    assert "taking over the" in caplog.text and f"pid {pid} on host {host}" in caplog.text


def test_renew_is_rate_limited_and_keeps_the_lease_from_expiring(tmp_path):
    clock = Clock()
    lock = lease_lib.RunLock(str(tmp_path), clock=clock).acquire()
    clock.now = T0 + lease_lib.RENEW_EVERY_S - 1
    assert not lock.renew() and _lease(tmp_path)["renewed"] == T0
    clock.now = T0 + lease_lib.RENEW_EVERY_S
    assert lock.renew() and _lease(tmp_path)["renewed"] == T0 + lease_lib.RENEW_EVERY_S
    assert lock.renew(force=True)
    # Past the first renewal's TTL, the renewed lease still holds off another trainer.
    other_clock = Clock(T0 + TTL + 10)
    with pytest.raises(lease_lib.RunLocked, match="in use by pid"):
        lease_lib.RunLock(str(tmp_path), clock=other_clock).acquire()
    lock.release()
    assert not (tmp_path / lease_lib.LOCK).exists()
    assert not lock.renew()  # released: nothing to renew


def test_a_renewal_that_cannot_write_is_logged_and_retried(tmp_path, monkeypatch, caplog):
    clock = Clock()
    lock = lease_lib.RunLock(str(tmp_path), clock=clock).acquire()
    clock.now += lease_lib.RENEW_EVERY_S

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", full_disk)
        assert not lock.renew()
    assert "could not renew the lease" in caplog.text and "No space left" in caplog.text
    assert not lock.renew()  # not retried at every step...
    clock.now += lease_lib.RENEW_EVERY_S
    assert lock.renew() and _lease(tmp_path)["renewed"] == clock.now  # ...but a period later
    assert sorted(os.listdir(tmp_path)) == [lease_lib.LOCK, lease_lib.LOCK_GUARD]


def test_a_new_elastic_chief_inherits_the_runs_lease_and_the_old_chief_stops(tmp_path):
    clock = Clock()
    old_chief = lease_lib.RunLock(str(tmp_path), clock=clock).acquire()
    clock.now += 5  # the lease is fresh: only the run's own token may take it over
    with pytest.raises(lease_lib.RunLocked, match="in use by pid"):
        lease_lib.RunLock(str(tmp_path), token="another-run", clock=clock).take_over()
    new_chief = lease_lib.RunLock(str(tmp_path), token=old_chief.token, clock=clock).take_over()
    assert _lease(tmp_path)["holder"] == new_chief.holder
    assert _lease(tmp_path)["token"] == old_chief.token
    # Long after the first chief's last renewal, the new chief's renewals keep others out.
    for _ in range(int(2 * TTL / lease_lib.RENEW_EVERY_S)):
        clock.now += lease_lib.RENEW_EVERY_S
        assert new_chief.renew()
    with pytest.raises(lease_lib.RunLocked, match="in use by pid"):
        lease_lib.RunLock(str(tmp_path), clock=clock).acquire()
    # A first chief that comes back learns it lost the lease, and removes nothing.
    with pytest.raises(lease_lib.LeaseLost, match="taken over by pid"):
        old_chief.renew()
    old_chief.release()
    assert _lease(tmp_path)["holder"] == new_chief.holder


def test_release_leaves_a_lease_that_another_trainer_took_over(tmp_path, caplog):
    clock = Clock()
    first = lease_lib.RunLock(str(tmp_path), clock=clock).acquire()
    clock.now += TTL + 1  # the first trainer stalled past the TTL
    second = lease_lib.RunLock(str(tmp_path), clock=clock).acquire()
    first.release()
    assert _lease(tmp_path)["holder"] == second.holder
    assert "no longer this trainer's lease" in caplog.text
    second.release()
    assert not (tmp_path / lease_lib.LOCK).exists()


def _race(tmp_path, racers: int, clock) -> list[bool]:
    """Each racer tries to take the stale lease; returns who won."""
    start = threading.Barrier(racers)
    won = [False] * racers

    def racer(i):
        lock = lease_lib.RunLock(str(tmp_path), clock=clock)
        start.wait()
        with contextlib.suppress(lease_lib.RunLocked):
            lock.acquire()
            won[i] = True

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


def _yielding_clock():
    # The clock is read between reading the lease and replacing it: yielding the CPU
    # there is what lets an unguarded check-then-replace interleave, even on one core.
    os.sched_yield()
    return T0


def test_racing_threads_taking_over_a_stale_lease_have_exactly_one_winner(tmp_path):
    for _ in range(50):
        _write_lease(tmp_path, renewed=T0 - TTL - 1)
        won = _race(tmp_path, 4, _yielding_clock)
        assert sum(won) == 1, won


def _race_worker(model_dir, rounds, barrier, results):
    for _ in range(rounds):
        barrier.wait()
        try:
            lease_lib.RunLock(model_dir, clock=_yielding_clock).acquire()
            results.put(True)
        except lease_lib.RunLocked:
            results.put(False)
        barrier.wait()


def test_racing_processes_taking_over_a_stale_lease_have_exactly_one_winner(tmp_path):
    # Real processes, as in the report of issue 22 (2 of 2 won in 41 of 200 trials). The
    # stale lease names a dead pid of this host too, so a pid-based lock calls it stale.
    # fork, not spawn: a spawned child spends seconds importing; these run only rundir.
    context = multiprocessing.get_context("fork")
    racers, rounds = 4, 40
    barrier, results = context.Barrier(racers + 1), context.Queue()
    workers = [context.Process(target=_race_worker,
                               args=(str(tmp_path), rounds, barrier, results))
               for _ in range(racers)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(rounds):
            _write_lease(tmp_path, renewed=T0 - TTL - 1, pid=2 ** 22 + 1,
                         host=socket.gethostname())
            barrier.wait(timeout=60)
            barrier.wait(timeout=60)
            won = [results.get(timeout=60) for _ in range(racers)]
            assert sum(won) == 1, won
    finally:
        barrier.abort()
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()


@pytest.mark.parametrize("content, problem", [
    (b"[1, 2]", "holds a list, not a JSON object"),
    (b'"held"', "holds a string, not a JSON object"),
    (b"\x00\xff\xfe\x80lock", "holds 8 bytes that are not JSON"),
    (b"", "holds 0 bytes that are not JSON"),
    (b"{}", "lacks the lease's fields"),
    (b'{"pid": 7, "host": "h", "started": "x"}', "written by an older dann_dist"),
])
def test_a_lock_file_that_is_not_a_lease_is_refused_saying_what_to_do(tmp_path, content,
                                                                      problem):
    (tmp_path / lease_lib.LOCK).write_bytes(content)
    with pytest.raises(lease_lib.RunLocked) as err:
        lease_lib.RunLock(str(tmp_path), clock=Clock()).acquire()
    assert str(tmp_path / lease_lib.LOCK) in str(err.value) and problem in str(err.value)
    assert "delete that file and rerun" in str(err.value)
    assert (tmp_path / lease_lib.LOCK).read_bytes() == content


def test_a_directory_named_lock_is_refused_saying_what_to_do(tmp_path):
    (tmp_path / lease_lib.LOCK).mkdir()
    with pytest.raises(lease_lib.RunLocked, match=r"lock is a directory.*remove it"):
        lease_lib.RunLock(str(tmp_path), clock=Clock()).acquire()
    assert (tmp_path / lease_lib.LOCK).is_dir()
    assert lease_lib.live_lease(str(tmp_path)) is None


def test_live_lease_is_the_record_of_a_fresh_lease_only(tmp_path):
    assert lease_lib.live_lease(str(tmp_path)) is None
    lease_lib.RunLock(str(tmp_path), clock=Clock()).acquire()
    assert lease_lib.live_lease(str(tmp_path), clock=Clock(T0 + TTL))["pid"] == os.getpid()
    assert lease_lib.live_lease(str(tmp_path), clock=Clock(T0 + TTL + 1)) is None


def test_a_fresh_lease_of_a_process_that_ended_on_this_host_is_taken_over_at_once(
        tmp_path, caplog):
    # kill -9 of a trainer: its lease is fresh, but its pid is gone.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    _write_lease(tmp_path, renewed=T0 - 1, pid=ended.pid, host=socket.gethostname())
    with lease_lib.RunLock(str(tmp_path), clock=Clock()) as lock:
        assert _lease(tmp_path)["holder"] == lock.holder
    assert "that process has ended" in caplog.text


def test_a_fresh_lease_naming_this_pid_from_an_earlier_process_is_taken_over(tmp_path):
    # A restarted container: the same host name, pid 1 again (here: our own pid), and a
    # holder id that no lock of this process wrote.
    _write_lease(tmp_path, renewed=T0 - 1, pid=os.getpid(), host=socket.gethostname())
    with lease_lib.RunLock(str(tmp_path), clock=Clock()) as lock:
        assert _lease(tmp_path)["holder"] == lock.holder


def test_a_lease_held_by_this_process_is_not_taken_over_by_a_second_lock(tmp_path):
    with lease_lib.RunLock(str(tmp_path), clock=Clock()):
        with pytest.raises(lease_lib.RunLocked, match="in use by pid"):
            lease_lib.RunLock(str(tmp_path), clock=Clock()).acquire()
