"""Checkpoints (resume) and the SavedModel export of the target classifier.

tf.train.CheckpointManager writes each checkpoint's files first and updates the
`checkpoint` index last, so a crash mid-write leaves the previous one in use. A newest
checkpoint that exists but cannot be read is reported and the previous one restored.
A missing, empty or garbled index is rebuilt from the ckpt-N files on disk, so that a
damaged index never restarts a run from step 0 over its checkpoints.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dann_dist import atomic


class CheckpointError(RuntimeError):
    pass


INDEX = "checkpoint"


def make_manager(trackables: dict, directory: str, keep: int) -> tf.train.CheckpointManager:
    checkpoint = tf.train.Checkpoint(**trackables)
    try:
        return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)
    except ValueError as err:  # an empty index file ("Invalid checkpoint state")
        raise CheckpointError(f"the checkpoint index {os.path.join(directory, INDEX)} cannot "
                              f"be read ({err}).") from err


def on_disk(directory: str) -> list[str]:
    """Checkpoint prefixes ckpt-N found on disk, oldest first."""
    found = []
    for index_file in glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index")):
        match = re.fullmatch(r"ckpt-(\d+)\.index", os.path.basename(index_file))
        if match:
            found.append((int(match.group(1)), index_file[:-len(".index")]))
    return [prefix for _, prefix in sorted(found)]


def clean_leftovers(directory: str) -> None:
    """Removes what a killed save leaves behind: ckpt-N_temp/ folders (the shards of an
    unfinished checkpoint) and checkpoint.tmp* files (an unfinished index update)."""
    for leftover in glob.glob(os.path.join(glob.escape(directory), "ckpt-*_temp")):
        logging.info("removing %s, left by an interrupted checkpoint write", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in glob.glob(os.path.join(glob.escape(directory), INDEX + ".tmp*")):
        logging.info("removing %s, left by an interrupted checkpoint write", leftover)
        os.unlink(leftover)


def repair_index(directory: str) -> None:
    """Rewrites a missing, empty or garbled `checkpoint` index, or one naming files that
    are gone, from the ckpt-N files on disk (newest last), with a warning."""
    prefixes = on_disk(directory)
    if not prefixes:
        return
    try:
        state = tf.train.get_checkpoint_state(directory)
    except ValueError:
        state = None
    # CheckpointManager pairs paths with timestamps; an index without them lists nothing.
    if (state is not None and os.path.exists(state.model_checkpoint_path + ".index")
            and len(state.all_model_checkpoint_timestamps)
            == len(state.all_model_checkpoint_paths)):
        return
    index = os.path.join(directory, INDEX)
    what = ("missing" if not os.path.exists(index) else
            "unreadable, incomplete or names missing files")
    logging.warning("the checkpoint index %s is %s; rebuilt from the checkpoints on disk: %s",
                    index, what, ", ".join(os.path.basename(p) for p in prefixes))
    tf.compat.v1.train.update_checkpoint_state(
        directory, prefixes[-1], all_model_checkpoint_paths=prefixes,
        all_model_checkpoint_timestamps=[os.path.getmtime(p + ".index") for p in prefixes])


def restore_latest(manager: tf.train.CheckpointManager) -> str | None:
    """Restores the newest readable checkpoint; returns its path, or None for a fresh run."""
    candidates = list(reversed(manager.checkpoints))
    for path in candidates:
        try:
            manager.checkpoint.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError, IndexError) as err:
            logging.warning("checkpoint %s is unreadable (%s); trying the previous one",
                            path, str(err).splitlines()[0][:200])
            continue
        return path
    if candidates:
        raise CheckpointError(
            f"none of the checkpoints in {manager.directory} can be read: "
            f"{', '.join(candidates)}. Nothing was overwritten. If the model flags changed "
            "since they were written, rerun with the original ones; otherwise move the "
            "directory away to start afresh.")
    return None


def save(manager: tf.train.CheckpointManager, step: int) -> str:
    """Writes ckpt-<step>; a full disk is a CheckpointError naming the checkpoint kept."""
    latest = manager.latest_checkpoint
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.ResourceExhaustedError, tf.errors.UnknownError, OSError) as err:
        raise CheckpointError(
            f"writing checkpoint {step} in {manager.directory} failed "
            f"({str(err).splitlines()[0][:200]}); {kept(latest)}. Free space and rerun the "
            "same command to resume.") from err


def kept(latest: str | None) -> str:
    """What an error message says about the checkpoint a rerun resumes from."""
    if latest:
        return f"the last good checkpoint, {latest}, is kept"
    return "no checkpoint had been written yet (a rerun starts afresh)"


class ExportModule(tf.Module):
    """extractor + classifier with preprocessing built in.

    serve(images): uint8 [N, H, W, 1 or C] (0..255; grayscale is repeated to the C colour
                   channels), H, W, C the pair's image shape -> float32 [N, classes]
                   class probabilities.
    """

    def __init__(self, models: dict, mean: np.ndarray):
        super().__init__()
        self.extractor = models["extractor"]
        self.classifier = models["classifier"]
        self.mean = tf.Variable(mean, trainable=False, name="channel_mean")
        self.height, self.width, self.channels = self.extractor.input_shape[1:]
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, self.height, self.width, None], tf.uint8)])

    def _serve(self, images):
        x = tf.cast(images, tf.float32) / 255.0
        x = tf.cond(tf.shape(x)[-1] == 1, lambda: tf.tile(x, [1, 1, 1, self.channels]),
                    lambda: x)
        x = tf.ensure_shape(x, [None, self.height, self.width, self.channels]) - self.mean
        logits = self.classifier(self.extractor(x, training=False), training=False)
        return tf.nn.softmax(tf.cast(logits, tf.float32))


def export(models: dict, mean: np.ndarray, directory: str, latest: str | None = None) -> str:
    """Writes the SavedModel next to its final place, then renames it in. A failed write
    (a full disk) is a CheckpointError; a previous export stays in place."""
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    module = ExportModule(models, mean)
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        atomic.replace_directory(tmp, directory)
    except (tf.errors.ResourceExhaustedError, tf.errors.UnknownError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"exporting to {directory} failed ({str(err).splitlines()[0][:200]}); "
            f"{kept(latest)}. Free space and rerun the same command to export.") from err
    return directory


def weights_digest(models: dict) -> str:
    """sha256 of every model weight: equal digests mean bit-identical models (ranks of
    one run, or a resumed run against an uninterrupted one)."""
    digest = hashlib.sha256()
    for model in models.values():
        for variable in model.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()[:16]
