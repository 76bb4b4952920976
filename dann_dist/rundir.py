"""The run directory contract: what dann_dist.train writes into --model_dir, read and
written here only.

  run.json            the config, the training pixel mean and the derived schedule
  metrics.json        the final evaluation (present once the run has finished)
  eval_history.jsonl  one line per evaluation (the report's label-free selection reads it)
  export/             the SavedModel of extractor + classifier
  lock                the run's lease: its token, the holder's pid and host, its last renewal
  lock.guard          empty; flock()ed while the lease is taken, renewed or released
  ckpt-N.*, checkpoint, train/, eval/   checkpoints and TensorBoard events

The lease on the directory (lock, lock.guard) is dann_dist/lease.py's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Callable

import numpy as np
from absl import logging

from dann_dist import atomic
from dann_dist.config import Config, ConfigError
from dann_dist.lease import LOCK, describe_holder, live_lease

RUN_RECORD = "run.json"
METRICS = "metrics.json"
EVAL_HISTORY = "eval_history.jsonl"
EXPORT_DIR = "export"

# evaluate on a live run: how often to list the checkpoints again, and the pause between.
RESTORE_ATTEMPTS = 3
RESTORE_PAUSE_S = 1.0

# Flags that may change when a run resumes: they decide how often the run logs,
# evaluates and checkpoints, where and how it executes, or what it is evaluated on,
# never what it trains. Strategy and replica count are here because --batch_size is the
# global batch: the same flags on other devices train the same model (equal up to float
# rounding). --data_dir only says where the data are cached (what they are is in the
# data fingerprint); --max_test_examples and --selection_images choose what evaluations
# score. Everything else (model, objective, data sources, schedule, precision, seed) is
# refused.
RESUMABLE_CHANGES = frozenset({
    "model_dir", "log_every", "eval_every", "eval_batch_size", "noise_scale_batches",
    "checkpoint_every",
    "keep_checkpoints", "export", "strategy", "jit_compile", "deterministic", "elastic",
    "elastic_commit_every", "mnist_download", "allow_config_change", "debug_nan_step",
    "data_dir", "max_test_examples", "selection_images"})


def path(model_dir: str, name: str) -> str:
    return os.path.join(model_dir, name)


def read_json(file_path: str) -> dict | None:
    """The parsed object, or None when the file is missing, cut short or not an object."""
    try:
        with open(file_path, "rb") as f:
            record = json.loads(f.read().decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError, ValueError):
        return None
    return record if isinstance(record, dict) else None


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


class RunRecordError(RuntimeError):
    """run.json exists but cannot be used (exit 1, like an unreadable checkpoint)."""


def load_run(model_dir: str) -> tuple[Config, np.ndarray]:
    """The config a run trained with and its training pixel mean (from run.json)."""
    record_path = path(model_dir, RUN_RECORD)
    if not os.path.exists(record_path):
        raise FileNotFoundError(f"{record_path} not found: --model_dir must be a directory "
                                "written by dann_dist.train.")
    try:
        with open(record_path, "rb") as f:
            record = json.loads(f.read().decode("utf-8"))
        known = {f.name for f in dataclasses.fields(Config)}
        config = Config(**{k: v for k, v in record["config"].items() if k in known})
        mean = np.asarray(record["channel_mean"], np.float32).reshape(3)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        what = f"no {err} entry" if isinstance(err, KeyError) else (str(err) or repr(err))
        raise RunRecordError(
            f"{record_path} cannot be read ({what}): it was cut short or edited. It holds the "
            "flags and the pixel mean that the checkpoints are evaluated with: put back a copy, "
            "or rerun dann_dist.train on this --model_dir with the run's original flags to "
            "write it again.") from err
    return config, mean


def restore_run(model_dir: str, checkpoint: str = "", pause: Callable[[float], None] = time.sleep):
    """Rebuilds a run's models in the precision it trained with and restores a checkpoint
    (default: the newest readable one on disk, so a lost index or a trainer that is
    rotating its checkpoints does not matter). Returns (config, channel mean, state, path)."""
    # Before TensorFlow starts: a damaged run.json or a mistyped --checkpoint is told at once.
    config, mean = load_run(model_dir)
    prefix = find_checkpoint(model_dir, checkpoint) if checkpoint else ""
    # Imported here, not at the top: reading a run's records (the report, selection)
    # must not pay for TensorFlow's start-up.
    import tensorflow as tf

    from dann_dist import distribute
    from dann_dist import step as step_lib
    from dann_dist.checkpoints import CheckpointError
    from dann_dist.models import models_for, precision_policy

    # Runs recorded before precision was resolved at start may say "auto".
    with precision_policy(distribute.resolve_precision(config.precision)[0]):
        models = models_for(config, sync_batchnorm=False)
    state = step_lib.create_state(models, config)
    saver = tf.train.Checkpoint(**state.trackables())

    def restore(path_prefix: str) -> None:
        saver.restore(path_prefix).assert_existing_objects_matched()

    errors = (tf.errors.OpError, ValueError, AssertionError, IndexError)
    if not prefix:
        return config, mean, state, restore_newest(restore, model_dir, errors, pause=pause)
    try:
        restore(prefix)
    except errors as err:
        raise CheckpointError(f"--checkpoint={checkpoint} cannot be read ({_first_line(err)}): "
                              "it is damaged or holds other models than run.json describes."
                              ) from err
    return config, mean, state, prefix


def find_checkpoint(model_dir: str, checkpoint: str) -> str:
    """The prefix --checkpoint names (one relative to --model_dir is found there too);
    FileNotFoundError listing the run's checkpoints if there is none."""
    tried = [checkpoint] + ([] if os.path.isabs(checkpoint) else [path(model_dir, checkpoint)])
    found = next((p for p in tried if os.path.isfile(p + ".index")), None)
    if found is None:
        present = ", ".join(_checkpoint_names(model_dir)) or "none"
        raise FileNotFoundError(
            f"--checkpoint={checkpoint}: no such checkpoint ({checkpoint}.index does not "
            f"exist). Give a prefix such as {path(model_dir, 'ckpt-N')}, or leave the flag out "
            f"for the newest; the checkpoints in {model_dir}: {present}.")
    return found


def _checkpoint_names(model_dir: str) -> list[str]:
    """ckpt-N names on disk, oldest first, for messages (checkpoints.on_disk needs
    TensorFlow)."""
    try:
        names = os.listdir(model_dir)
    except OSError:
        return []
    matches = [re.fullmatch(r"ckpt-(\d+)\.index", name) for name in names]
    steps = sorted(int(m.group(1)) for m in matches if m)
    return [f"ckpt-{step}" for step in steps]


def restore_newest(restore: Callable[[str], None], model_dir: str, errors: tuple,
                   attempts: int = RESTORE_ATTEMPTS,
                   pause: Callable[[float], None] = time.sleep) -> str:
    """Restores the newest readable ckpt-N on disk (the index is not needed). While the
    run is live its trainer deletes old checkpoints as it writes new ones: the listing is
    then read again, up to `attempts` times."""
    from dann_dist.checkpoints import CheckpointError, on_disk

    tried: list[str] = []
    holder = None
    for attempt in range(attempts):
        if attempt:
            pause(RESTORE_PAUSE_S)
        for prefix in reversed(on_disk(model_dir)):
            try:
                restore(prefix)
                return prefix
            except errors as err:
                logging.warning("checkpoint %s is unreadable (%s); trying the previous one",
                                prefix, _first_line(err))
                tried.append(os.path.basename(prefix))
        holder = live_lease(model_dir)
        if holder is None:
            break
        logging.warning("%s: the run is live (%s) and replaces checkpoints while they are read",
                        model_dir, describe_holder(holder))
    if not tried:
        live = (f" The run is live ({describe_holder(holder)}): wait for its first checkpoint."
                if holder else "")
        raise FileNotFoundError(f"no checkpoint in {model_dir}: train first.{live}")
    names = ", ".join(dict.fromkeys(tried))
    if holder:
        raise CheckpointError(
            f"none of the checkpoints in {model_dir} could be read in {attempts} tries: {names}. "
            f"The run is live ({describe_holder(holder)} holds {path(model_dir, LOCK)}) and its "
            "trainer deletes old checkpoints as it writes new ones. Nothing was changed: rerun "
            "dann_dist.evaluate, or evaluate once the run has ended.")
    raise CheckpointError(
        f"none of the checkpoints in {model_dir} can be read: {names}. They are damaged, or "
        "hold other models than run.json describes. Nothing was changed; --checkpoint=PATH "
        "evaluates one checkpoint.")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


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


def trained_fingerprint(config: Config) -> int:
    """A 60-bit digest of every flag that changes what is trained (those outside
    RESUMABLE_CHANGES). The checkpoint carries it, so that a resume is checked even when
    run.json is lost or damaged."""
    trained = {k: v for k, v in dataclasses.asdict(config).items()
               if k not in RESUMABLE_CHANGES}
    digest = hashlib.sha256(json.dumps(trained, sort_keys=True, default=str).encode())
    return int(digest.hexdigest()[:15], 16)


def has_run_record(model_dir: str) -> bool:
    record = read_json(path(model_dir, RUN_RECORD))
    return bool(record) and isinstance(record.get("config"), dict)


def truncate_eval_history(model_dir: str, last_step: int) -> None:
    """Drops the lines of evaluations after `last_step` (a killed run evaluated steps that
    the resumed run trains and evaluates again): one line per evaluated step."""
    history = path(model_dir, EVAL_HISTORY)
    try:
        with open(history) as f:
            lines = f.read().splitlines(keepends=True)
    except FileNotFoundError:
        return
    kept = []
    for line in lines:
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
        if step <= last_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
        atomic.write_file(history, "".join(kept))


def config_changes(model_dir: str, config: Config) -> tuple[list[str], list[str]]:
    """(refused, allowed): '--flag: old -> new' for every flag that differs from the
    recorded run.json. Flags missing from an older record count as their defaults."""
    record = read_json(path(model_dir, RUN_RECORD))
    if not record or not isinstance(record.get("config"), dict):
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
