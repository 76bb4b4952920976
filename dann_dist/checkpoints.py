"""Checkpoints (resume) and the SavedModel export of the target classifier.

tf.train.CheckpointManager writes each checkpoint's files first and updates the
`checkpoint` index last, so a crash mid-write leaves the previous one in use. A newest
checkpoint that exists but cannot be read is reported and the previous one restored.
"""

from __future__ import annotations

import shutil

import numpy as np
import tensorflow as tf
from absl import logging

from dann_dist import atomic
from dann_dist.models import DannModels


class CheckpointError(RuntimeError):
    pass


def make_manager(trackables: dict, directory: str, keep: int) -> tf.train.CheckpointManager:
    checkpoint = tf.train.Checkpoint(**trackables)
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)


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
            f"{', '.join(candidates)}. Move the directory away to start afresh.")
    return None


class ExportModule(tf.Module):
    """extractor + classifier with preprocessing built in.

    serve(images): uint8 [N, 28, 28, 1 or 3] (0..255; grayscale is repeated to RGB)
                   -> float32 [N, 10] class probabilities.
    """

    def __init__(self, models: DannModels, mean: np.ndarray):
        super().__init__()
        self.extractor = models.extractor
        self.classifier = models.classifier
        self.mean = tf.Variable(mean, trainable=False, name="channel_mean")

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, None], tf.uint8)])
    def serve(self, images):
        x = tf.cast(images, tf.float32) / 255.0
        x = tf.cond(tf.shape(x)[-1] == 1, lambda: tf.tile(x, [1, 1, 1, 3]), lambda: x)
        x = tf.ensure_shape(x, [None, 28, 28, 3]) - self.mean
        logits = self.classifier(self.extractor(x, training=False), training=False)
        return tf.nn.softmax(tf.cast(logits, tf.float32))


def export(models: DannModels, mean: np.ndarray, directory: str) -> str:
    """Writes the SavedModel next to its final place, then renames it in."""
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    module = ExportModule(models, mean)
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
    atomic.replace_directory(tmp, directory)
    return directory
