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

    def image(self, name: str, image: np.ndarray, step: int = 0) -> None:
        """image: uint8 [H, W, 3]."""
        if not self.enabled:
            return
        with self.train.as_default(step=step):
            tf.summary.image(name, image[None], step=step)

    def flush(self) -> None:
        if self.enabled:
            self.train.flush()
            self.eval.flush()
