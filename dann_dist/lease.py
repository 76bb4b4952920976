"""The run directory's lease: one trainer per --model_dir.

One trainer per directory: the chief holds a lease on it (RunLock). The lease belongs to
the run, not to a process: the chief renews it while it trains (every RENEW_EVERY_S), a
new elastic chief takes it over with the run's token, and the chief removes it at the end.
A lease not renewed for LEASE_TTL_S is stale, whatever pid it names, and the next trainer
takes it over with a warning. A live pid decides nothing (a restarted container is pid 1
again; an elastic job's chief changes); a holder known to be gone does: a lease written on
this host by a pid that has ended (kill -9), or by this very pid from an earlier process (a
restarted container), is taken over at once. After a node crash, or a holder on another
host, the directory stays blocked until the lease expires, LEASE_TTL_S after its last
renewal, and a trainer started before then exits 2 saying when that is. Taking, renewing
and releasing the lease happen under an flock() on lock.guard, so of two trainers racing
for a stale lease exactly one wins.

On a filesystem shared between hosts (NFS, Lustre, ...) the lease works across hosts: NFS
clients honour flock() (as a whole-file POSIX lock), and a lease's age is the local clock
minus the renewal time its holder recorded, so the hosts' clocks must agree to well within
LEASE_TTL_S (NTP does). Where the filesystem has no file locks (Lustre mounted without
`flock`), taking a stale lease is not guarded against a race, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import socket
import time
import uuid
from typing import Callable

from absl import logging

from dann_dist.config import ConfigError

LOCK = "lock"
LOCK_GUARD = "lock.guard"
# The holder ids of this process's RunLocks: a lease naming this pid but none of them was
# written by an earlier process that had the same pid (a restarted container).
_HELD_HERE: set[str] = set()

# Long enough for the chief's slowest stretch between two renewals (preparing the data
# before the loop, a full evaluation, the export), short enough that a killed container
# or a crashed node blocks its directory for minutes.
LEASE_TTL_S = 300.0
# renew() writes at most this often, so the training loop may call it at every step.
RENEW_EVERY_S = 30.0


class RunLocked(ConfigError):
    """Another trainer holds the run directory, or its lock file is not a lease (exit 2,
    like any bad --model_dir)."""


class LeaseLost(RunLocked):
    """This trainer's lease was taken over: it went unrenewed for longer than the TTL."""


# flock() errors of a filesystem without file locks.
_NO_FILE_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


class RunLock:
    """The run's lease on its directory, held by the chief (see the module docstring).

    `token` names the run: a new elastic chief passes the token of the run it inherits
    to take_over(). `clock` (wall-clock seconds) and `ttl` are there for the tests.

      lock = RunLock(model_dir).acquire()   # or: with RunLock(model_dir) as lock: ...
      lock.renew()                          # at every step: writes every RENEW_EVERY_S
      lock.release()
    """

    def __init__(self, model_dir: str, token: str | None = None,
                 clock: Callable[[], float] = time.time, ttl: float = LEASE_TTL_S,
                 renew_every: float = RENEW_EVERY_S):
        self.file = os.path.join(model_dir, LOCK)
        self.guard_file = os.path.join(model_dir, LOCK_GUARD)
        self.token = token or uuid.uuid4().hex
        self.holder = uuid.uuid4().hex  # this process's claim, changed by take_over()
        _HELD_HERE.add(self.holder)
        self.clock, self.ttl, self.renew_every = clock, ttl, renew_every
        self.held = False
        self._started = ""
        self._last_write = -math.inf

    def acquire(self) -> "RunLock":
        """Takes the lease if there is none or it is stale; RunLocked otherwise."""
        return self._claim(inherit=False)

    def take_over(self) -> "RunLock":
        """For a new chief of a running (elastic) job: takes the lease if it is this run's
        (same token), whoever renewed it last, or if there is none or it is stale.
        RunLocked if another run holds it."""
        return self._claim(inherit=True)

    def _claim(self, inherit: bool) -> "RunLock":
        try:
            with self._guarded():
                current = _read_lease(self.file)
                now = self.clock()
                if current is not None:
                    self._check_claimable(current, now, inherit)
                self._started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
                self._write(now, exclusive=current is None)
        except FileExistsError as err:
            raise RunLocked(f"{self.file} appeared while this trainer took the lease: another "
                            "run is starting on this --model_dir.") from err
        except OSError as err:
            raise ConfigError(f"cannot write the lease {err.filename or self.file} "
                              f"({err.strerror or err}): free space or fix the permissions of "
                              "--model_dir, then rerun.") from err
        self.held = True
        return self

    def _check_claimable(self, current: dict, now: float, inherit: bool) -> None:
        who = describe_holder(current)
        if inherit and current["token"] == self.token:
            logging.info("taking over this run's lease from %s (a new chief): %s", who,
                         self.file)
            return
        if self._ended_on_this_host(current):
            logging.warning("taking over the lease of %s: that process has ended (a killed "
                            "trainer, or a restarted container reusing its pid): %s", who,
                            self.file)
            return
        age = now - current["renewed"]
        if age <= self.ttl:  # a negative age (clock skew between hosts) is fresh too
            raise RunLocked(
                f"--model_dir is in use by {who} ({self.file}), whose lease was renewed "
                f"{max(age, 0):.0f} s ago: wait for that run to end, stop it, or use another "
                "--model_dir (two trainers on one directory would overwrite each other's "
                "checkpoints). If that run has ended without releasing it (a killed container, "
                f"a crashed node), its lease expires in {self.ttl - age:.0f} s; rerun then.")
        logging.warning("taking over the stale lease of %s: not renewed for %.0f s (a lease "
                        "lasts %.0f s), so that run has ended: %s", who, age, self.ttl,
                        self.file)

    @staticmethod
    def _ended_on_this_host(current: dict) -> bool:
        """The holder ran on this host and is gone: its pid is dead, or it is this very pid
        while no lease of this process holds it (a restarted container is pid 1 again). A
        live pid says nothing (pids are reused, namespaces differ): the age decides then."""
        pid = current.get("pid")
        if current.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
            return False
        if pid == os.getpid():
            return current.get("holder") not in _HELD_HERE
        return not _alive(pid)

    def renew(self, force: bool = False) -> bool:
        """Renews the lease if RENEW_EVERY_S have passed since the last write (or `force`);
        returns whether it wrote. Cheap otherwise: one clock read. LeaseLost if another
        trainer took the lease over (this one went unrenewed for longer than the TTL); a
        failed write (a full disk) is logged and retried at the next due call."""
        if not self.held:
            return False
        now = self.clock()
        if not force and now - self._last_write < self.renew_every:
            return False
        self._last_write = now  # a failed write is retried a period later, not every step
        try:
            with self._guarded():
                current = _read_lease(self.file)
                if current is not None and current["holder"] != self.holder:
                    self.held = False
                    raise LeaseLost(
                        f"this trainer's lease on {self.file} was taken over by "
                        f"{describe_holder(current)}: it went unrenewed for more than "
                        f"{self.ttl:.0f} s. "
                        "Stopping, so that two trainers do not write one --model_dir; the "
                        "checkpoints written so far are kept.")
                if current is None:
                    logging.warning("%s was deleted while this trainer held it; written again",
                                    self.file)
                self._write(now, exclusive=current is None)
        except OSError as err:
            logging.warning("could not renew the lease %s (%s); retrying in %.0f s", self.file,
                            err.strerror or err, self.renew_every)
            return False
        return True

    def release(self) -> None:
        """Removes the lease if it is still this trainer's. Never raises: it runs on the
        way out of errors; a lease left behind expires after the TTL."""
        if not self.held:
            return
        self.held = False
        try:
            with self._guarded():
                current = _read_lease(self.file)
                if current is not None and current.get("holder") == self.holder:
                    os.unlink(self.file)
                else:
                    logging.warning("not removing %s: it is no longer this trainer's lease",
                                    self.file)
        except OSError as err:
            logging.warning("could not remove the lease %s (%s); it expires %.0f s after its "
                            "last renewal", self.file, err.strerror or err, self.ttl)

    @contextlib.contextmanager
    def _guarded(self):
        """Holds an exclusive flock() on lock.guard. The guard file is never deleted:
        a process could hold the lock on the deleted file while another locks a new one."""
        fd = os.open(self.guard_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as err:
                if err.errno not in _NO_FILE_LOCKS:
                    raise
                logging.warning("%s: this filesystem has no file locks (%s); two trainers taking "
                                "over a stale lease at the same moment could both get it",
                                self.guard_file, err.strerror)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _write(self, now: float, exclusive: bool) -> None:
        record = {"token": self.token, "holder": self.holder, "pid": os.getpid(),
                  "host": socket.gethostname(), "started": self._started, "renewed": now,
                  "renewed_at": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
                  "ttl": self.ttl}
        tmp = f"{self.file}.tmp-{self.holder}"
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(record))
                f.flush()
                os.fsync(f.fileno())
            if exclusive:
                _link_exclusive(tmp, self.file)
            else:
                os.replace(tmp, self.file)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._last_write = now

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def live_lease(model_dir: str, clock: Callable[[], float] = time.time,
               ttl: float = LEASE_TTL_S) -> dict | None:
    """The lease record if a trainer holds a fresh lease on the directory, else None."""
    try:
        record = _read_lease(os.path.join(model_dir, LOCK))
    except RunLocked:
        return None
    if record is None or clock() - record["renewed"] > ttl:
        return None
    return record


def _read_lease(file: str) -> dict | None:
    """The lease, None if there is none; RunLocked naming the file if it is not a lease."""
    if os.path.isdir(file):
        raise RunLocked(f"{file} is a directory, not the lease file of dann_dist.train. If no "
                        "trainer is using this --model_dir, remove it (after checking what it "
                        "holds) and rerun; otherwise use another --model_dir.")
    try:
        with open(file, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RunLocked(f"{file}, the lease of this --model_dir, cannot be read "
                        f"({err.strerror or err}): fix its permissions, or delete it if no "
                        "trainer is using this --model_dir, and rerun.") from err
    try:
        record = json.loads(raw.decode("utf-8"))
    except ValueError:
        record = raw
    problem = _lease_problem(record)
    if problem:
        raise RunLocked(f"{file} is not a lease that dann_dist.train can read: {problem}. If no "
                        "trainer is using this --model_dir, delete that file and rerun; "
                        "otherwise wait for that run to end or use another --model_dir.")
    return record


def _lease_problem(record) -> str:
    """'' for a lease this module wrote, else what is wrong with it."""
    if isinstance(record, bytes):
        return f"it holds {len(record)} bytes that are not JSON"
    if not isinstance(record, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(record), "a number")
        return f"it holds {kind}, not a JSON object"
    if "renewed" not in record and "pid" in record:
        return (f"it names {describe_holder(record)} and was written by an older dann_dist, "
                "which does not renew it, so its age says nothing")
    renewed = record.get("renewed")
    if (not isinstance(record.get("token"), str) or not isinstance(record.get("holder"), str)
            or isinstance(renewed, bool) or not isinstance(renewed, (int, float))
            or not math.isfinite(renewed)):
        return "it lacks the lease's fields (token, holder, renewed)"
    return ""


def describe_holder(record: dict) -> str:
    return (f"pid {record.get('pid')} on host {record.get('host')}, started "
            f"{record.get('started') or 'at an unknown time'}")


def _link_exclusive(source: str, target: str) -> None:
    """Creates `target` with the content of `source`; FileExistsError if it exists."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        # A filesystem without hard links: O_EXCL creation is exclusive as well, but a
        # reader may briefly see the file before its content.
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with open(source) as src, os.fdopen(fd, "w") as dst:
            dst.write(src.read())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError as err:
        return err.errno != errno.ESRCH
    return True
