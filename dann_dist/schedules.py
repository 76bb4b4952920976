"""The per-step schedules (the paper's, as functions of training progress p in [0, 1]),
and what the flags make of them for a run (logged, and recorded in run.json)."""

from __future__ import annotations

import keras
import tensorflow as tf

from dann_dist.methods import registry


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


def adversary_scale(config) -> float:
    """1, or 1/k where --scale_adversary=false undoes the learning-rate scaling k for the
    adversarial path (the adversary's rate and the reversed gradient keep their size at
    --lr_base_batch: a min-max game does not take the linear rule; results/scaling.md)."""
    if config.scale_adversary:
        return 1.0
    return config.learning_rate / config.effective_learning_rate


def derived(config, backend) -> dict:
    """What the flags imply for this run on this many replicas (recorded in run.json)."""
    return {"train_steps": config.train_steps,
            "train_pairs": config.train_steps * config.batch_size,
            "warmup_steps": config.warmup_steps,
            "effective_ema_momentum": config.effective_ema_momentum,
            "effective_learning_rate": config.effective_learning_rate,
            "adversary_scale": adversary_scale(config),
            "global_batch_per_domain": config.batch_size, "replicas": backend.num_replicas,
            "per_replica_batch_per_domain": backend.per_replica_batch(config.batch_size),
            "schedule_steps": config.schedule_steps,
            # Which steps belong to which of the method's phases (DIRT-T has two).
            "phases": [{"name": name, "first_step": first, "end_step": end}
                       for name, first, end in registry.get(config.adaptation).phases(config)]}


def describe(config) -> str:
    """One log line: the run's length, learning rate and warm-up."""
    length = (f"--train_pairs={config.train_pairs} / --batch_size={config.batch_size}"
              if config.train_pairs else "--train_steps")
    lr = f"learning rate {config.learning_rate:g}"
    if config.lr_scaling != "none":
        lr += (f" scaled {config.lr_scaling} (global batch {config.batch_size} / "
               f"{config.lr_base_batch}) to {config.effective_learning_rate:g}")
    if not config.scale_adversary and config.lr_scaling != "none":
        lr += " (the adversarial path kept at the base batch's step)"
    warmup = f", linear warm-up over {config.warmup_steps} steps" if config.warmup_steps else ""
    return f"{config.train_steps} steps ({length}); {lr}, {config.lr_schedule}{warmup}"
