"""The paper's per-step schedules, as functions of training progress p in [0, 1]."""

from __future__ import annotations

import keras
import tensorflow as tf


def progress(step, total_steps):
    """p = step / total_steps, clipped to [0, 1], as float32."""
    p = tf.cast(step, tf.float32) / tf.cast(total_steps, tf.float32)
    return tf.clip_by_value(p, 0.0, 1.0)


def adaptation_factor(p, gamma: float = 10.0, lambda_max: float = 1.0):
    """lambda_p = lambda_max * (2 / (1 + exp(-gamma p)) - 1): 0 at the start, so the
    discriminator's noisy early signal does not wreck the features."""
    return lambda_max * (2.0 / (1.0 + tf.exp(-gamma * p)) - 1.0)


class AnnealedLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """mu_p = mu_0 / (1 + alpha p)^beta with p computed from the optimizer's step."""

    def __init__(self, initial: float, total_steps: int, alpha: float = 10.0, beta: float = 0.75):
        self.initial = initial
        self.total_steps = total_steps
        self.alpha = alpha
        self.beta = beta

    def __call__(self, step):
        p = progress(step, self.total_steps)
        return self.initial / tf.pow(1.0 + self.alpha * p, self.beta)

    def get_config(self):
        return {"initial": self.initial, "total_steps": self.total_steps,
                "alpha": self.alpha, "beta": self.beta}
