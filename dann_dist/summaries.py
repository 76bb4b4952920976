"""TensorBoard output, written by the chief only (other processes get a no-op writer)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api


class Summaries:
    def __init__(self, model_dir: str, enabled: bool):
        self.enabled = enabled
        if enabled:
            self.train = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
            self.eval = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))

    def scalars(self, split: str, values: dict, step: int) -> None:
        if not self.enabled:
            return
        writer = self.train if split == "train" else self.eval
        with writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def hparams(self, hparams: dict) -> None:
        if not self.enabled:
            return
        # The hparams plugin takes only bool, int, float and str values.
        clean = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
        with self.train.as_default():
            hparams_api.hparams(clean)

    def text(self, name: str, text: str) -> None:
        if not self.enabled:
            return
        with self.train.as_default(step=0):
            tf.summary.text(name, text)

    def image_grid(self, name: str, rows: list[np.ndarray], step: int = 0) -> None:
        """rows: uint8 [n, 28, 28, C] arrays, one row of the grid each."""
        if not self.enabled:
            return
        with self.train.as_default(step=step):
            tf.summary.image(name, sample_grid(rows)[None], step=step)

    def flush(self) -> None:
        if self.enabled:
            self.train.flush()
            self.eval.flush()


def sample_grid(rows: list[np.ndarray]) -> np.ndarray:
    """Stacks rows of images into one uint8 RGB image with a 2-pixel border."""
    rgb_rows = []
    for images in rows:
        images = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
        padded = np.pad(images, ((0, 0), (2, 0), (2, 0), (0, 0)))
        rgb_rows.append(np.concatenate(list(padded), axis=1))
    return np.concatenate(rgb_rows, axis=0)
