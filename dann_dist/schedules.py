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


def warmup_factor(step, warmup_steps: int):
    """min(1, (step + 1) / warmup_steps): a linear ramp over the first warmup_steps updates
    (the optimizer's step counts from 0, so the first update already moves), 1 without."""
    if warmup_steps <= 0:
        return tf.constant(1.0)
    ramp = (tf.cast(step, tf.float32) + 1.0) / float(warmup_steps)
    return tf.minimum(ramp, 1.0)


class AnnealedLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """mu_p = mu_0 / (1 + alpha p)^beta with p computed from the optimizer's step, times a
    linear warm-up over the first warmup_steps (large global batches; Goyal et al. 2017).
    alpha = 0 gives a constant rate."""

    def __init__(self, initial: float, total_steps: int, alpha: float = 10.0, beta: float = 0.75,
                 warmup_steps: int = 0):
        self.initial = initial
        self.total_steps = total_steps
        self.alpha = alpha
        self.beta = beta
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        p = progress(step, self.total_steps)
        annealed = self.initial / tf.pow(1.0 + self.alpha * p, self.beta)
        return annealed * warmup_factor(step, self.warmup_steps)

    def get_config(self):
        return {"initial": self.initial, "total_steps": self.total_steps,
                "alpha": self.alpha, "beta": self.beta, "warmup_steps": self.warmup_steps}
