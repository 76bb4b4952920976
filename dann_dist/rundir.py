"""The run directory contract: what dann_dist.train writes into --model_dir, read and
written here only.

  run.json            the config, the training pixel mean and the derived schedule
  metrics.json        the final evaluation (present once the run has finished)
  eval_history.jsonl  one line per evaluation (the report's label-free selection reads it)
  export/             the SavedModel of extractor + classifier
  lock                the live run's pid, host and start time (one trainer per directory)
  ckpt-N.*, checkpoint, train/, eval/   checkpoints and TensorBoard events
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import time

import numpy as np
from absl import logging

from dann_dist import atomic
from dann_dist.config import Config, ConfigError

RUN_RECORD = "run.json"
METRICS = "metrics.json"
EVAL_HISTORY = "eval_history.jsonl"
EXPORT_DIR = "export"
LOCK = "lock"

# Flags that may change when a run resumes: they decide how often the run logs,
# evaluates and checkpoints, or where and how it executes, never what it computes.
# Strategy and replica count are here because --batch_size is the global batch: the
# same flags on other devices train the same model (equal up to float rounding).
# Everything else (model, objective, data, schedule, precision, seed) is refused.
RESUMABLE_CHANGES = frozenset({
    "model_dir", "log_every", "eval_every", "eval_batch_size", "checkpoint_every",
    "keep_checkpoints", "export", "strategy", "jit_compile", "deterministic", "elastic",
    "elastic_commit_every", "mnist_download", "allow_config_change", "debug_nan_step"})


def path(model_dir: str, name: str) -> str:
    return os.path.join(model_dir, name)


def read_json(file_path: str) -> dict | None:
    """The parsed file, or None when it is missing or was cut short."""
    try:
        with open(file_path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(file_path: str, payload: dict) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    atomic.write_file(file_path, json.dumps(payload, indent=2, sort_keys=True))


def write_run_record(model_dir: str, config: Config, mean: np.ndarray, derived: dict) -> None:
    write_json(path(model_dir, RUN_RECORD),
               {"config": dataclasses.asdict(config), "channel_mean": mean.tolist(),
                "derived": derived})


def append_eval(model_dir: str, record: dict) -> None:
    with open(path(model_dir, EVAL_HISTORY), "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def write_metrics(model_dir: str, metrics: dict) -> None:
    write_json(path(model_dir, METRICS), metrics)


def load_run(model_dir: str) -> tuple[Config, np.ndarray]:
    """The config a run trained with and its training pixel mean (from run.json)."""
    record_path = path(model_dir, RUN_RECORD)
    if not os.path.exists(record_path):
        raise FileNotFoundError(f"{record_path} not found: --model_dir must be a directory "
                                "written by dann_dist.train.")
    with open(record_path) as f:
        record = json.load(f)
    known = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in record["config"].items() if k in known})
    return config, np.asarray(record["channel_mean"], np.float32)


def restore_run(model_dir: str, checkpoint: str = ""):
    """Rebuilds a run's models in the precision it trained with and restores a checkpoint
    (default: the newest readable one). Returns (config, channel mean, state, path)."""
    # Imported here, not at the top: reading a run's records (the report, selection)
    # must not pay for TensorFlow's start-up.
    from dann_dist import checkpoints, distribute
    from dann_dist import step as step_lib
    from dann_dist.models import models_for, precision_policy

    config, mean = load_run(model_dir)
    # Runs recorded before precision was resolved at start may say "auto".
    with precision_policy(distribute.resolve_precision(config.precision)[0]):
        models = models_for(config, sync_batchnorm=False)
    state = step_lib.create_state(models, config)
    manager = checkpoints.make_manager(state.trackables(), model_dir, keep=config.keep_checkpoints)
    if checkpoint:
        manager.checkpoint.restore(checkpoint).assert_existing_objects_matched()
        found = checkpoint
    else:
        found = checkpoints.restore_latest(manager)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {model_dir}: train first.")
    return config, mean, state, found


def create(model_dir: str) -> None:
    """Creates --model_dir; a place where no directory can be made is a bad flag."""
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = path(model_dir, f".write_test{os.getpid()}")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"--model_dir={model_dir}: cannot write there ({err.strerror or err}); "
                          "choose another directory.") from err


def eval_steps(model_dir: str) -> set[int]:
    """Steps that eval_history.jsonl has a line for (a torn last line is skipped)."""
    steps = set()
    try:
        with open(path(model_dir, EVAL_HISTORY)) as f:
            for raw in f:
                try:
                    steps.add(int(json.loads(raw)["step"]))
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    return steps


def config_changes(model_dir: str, config: Config) -> tuple[list[str], list[str]]:
    """(refused, allowed): '--flag: old -> new' for every flag that differs from the
    recorded run.json. Flags missing from an older record count as their defaults."""
    record = read_json(path(model_dir, RUN_RECORD))
    if not record or "config" not in record:
        return [], []
    old = record["config"]
    refused, allowed = [], []
    for field in dataclasses.fields(Config):
        before = old.get(field.name, field.default)
        after = getattr(config, field.name)
        if before == after:
            continue
        line = f"--{field.name}: {before!r} -> {after!r}"
        (allowed if field.name in RESUMABLE_CHANGES else refused).append(line)
    return refused, allowed


class RunLocked(ConfigError):
    """Another trainer holds the run directory (exit 2, like any bad --model_dir)."""


class RunLock:
    """An exclusive lock on a run directory, held by the chief for the whole run.

    The lock file is written complete under a temporary name and hard-linked into place:
    link() fails if `lock` exists, atomically, on local filesystems and on NFS. A lock of
    a dead process on this host is stale and taken over with a warning. A lock written by
    another host cannot be checked for liveness from here and is refused.
    """

    def __init__(self, model_dir: str):
        self.file = path(model_dir, LOCK)
        self.held = False

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        tmp = f"{self.file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(json.dumps(me))
        try:
            for _ in range(2):
                try:
                    _link_exclusive(tmp, self.file)
                    self.held = True
                    return self
                except FileExistsError:
                    self._take_over_if_stale()
            raise RunLocked(f"{self.file} appeared again while a stale lock was removed; "
                            "another run is starting on this --model_dir.")
        finally:
            os.unlink(tmp)

    def _take_over_if_stale(self) -> None:
        holder = read_json(self.file) or {}
        pid, host = holder.get("pid"), holder.get("host")
        who = (f"pid {pid} on host {host}, started {holder.get('started')}" if pid
               else "an unreadable lock file")
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            logging.warning("removing the stale lock of %s (that process has ended): %s",
                            who, self.file)
            try:
                os.unlink(self.file)
            except FileNotFoundError:
                pass
            return
        if host and host != socket.gethostname():
            raise RunLocked(
                f"--model_dir is in use by {who} ({self.file}). A lock from another host cannot "
                "be checked from here: if that run has ended, delete the lock file and rerun; "
                "otherwise use another --model_dir.")
        raise RunLocked(f"--model_dir is in use by {who} ({self.file}): wait for it to end, "
                        "stop it, or use another --model_dir (two trainers on one directory "
                        "would overwrite each other's checkpoints). If no run is active, delete "
                        "the lock file.")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.unlink(self.file)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


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
