"""Claiming a run directory before anything is read or written there (the chief only):
its lease (lease.RunLock), the checks that a resume does not change what is trained
(against run.json, and against the checkpoint's fingerprint once it is restored), and the
repair of what killed checkpoint writes left."""

from __future__ import annotations

import contextlib

from absl import logging

from dann_dist import checkpoints, lease, rundir
from dann_dist import config as config_lib


@contextlib.contextmanager
def claim_run_dir(config: config_lib.Config):
    """Chief only, before anything is read or written there: creates --model_dir, holds
    its lock for the run, refuses a resume whose flags change what is trained, removes
    what killed checkpoint writes left and repairs a damaged checkpoint index."""
    rundir.create(config.model_dir)
    with lease.RunLock(config.model_dir) as lock:
        if checkpoints.on_disk(config.model_dir):
            _check_config_changes(config)
        checkpoints.clean_leftovers(config.model_dir)
        checkpoints.repair_index(config.model_dir)
        yield lock


def _check_config_changes(config: config_lib.Config) -> None:
    refused, allowed = rundir.config_changes(config.model_dir, config)
    if allowed:
        logging.info("resuming with changed flags that do not change what is trained: %s",
                     "; ".join(allowed))
    if not refused:
        return
    if config.allow_config_change:
        logging.warning("resuming with changed flags (--allow_config_change): %s; run.json "
                        "will record the new values", "; ".join(refused))
        return
    raise config_lib.ConfigError(
        f"{config.model_dir} holds a run trained with other flags; resuming would silently "
        "change what is trained:\n  " + "\n  ".join(refused) + "\nRerun with the recorded "
        "flags (run.json), use another --model_dir, or pass --allow_config_change to change "
        "them deliberately.")


def check_fingerprint(config: config_lib.Config, stored: int) -> None:
    """On resume (chief): the checkpoint's record of the flags it was trained with
    (`stored`, 0 in checkpoints of older versions) must match these flags, also where
    run.json, checked when the directory was claimed, is lost or damaged."""
    if config.allow_config_change:
        return
    record = rundir.has_run_record(config.model_dir)
    if stored and stored != rundir.trained_fingerprint(config):
        named = "" if record else "; run.json, which would name them, is missing or unreadable"
        raise config_lib.ConfigError(
            f"{config.model_dir}: its checkpoint was trained with other flags than these"
            f"{named}. Rerun with the original flags, use another --model_dir, or pass "
            "--allow_config_change to change them deliberately.")
    if not stored and not record:
        raise config_lib.ConfigError(
            f"{config.model_dir}: run.json is missing or unreadable and the checkpoint (from an "
            "older version) does not record its flags, so a resume could silently change what "
            "is trained. Pass --allow_config_change if these flags are the run's own (run.json "
            "is then written anew), or use another --model_dir.")
