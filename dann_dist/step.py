"""The train step, written once and run by every backend, for any method.

A step has three stages so that a backend can sit between them:
  1. `compute_gradients` (per replica, XLA-compilable): the method's objective on the
     replica's batch and the gradients of every model group;
  2. `backend.all_reduce_gradients`: identity on one device, one fused Horovod
     all-reduce, or nothing under tf.distribute (Keras optimizers sum across replicas);
  3. one optimizer per group applies its gradients.
Per-replica losses are divided by the GLOBAL batch, so summing gradients (and metric
sums) over replicas gives exactly the single-device mean over the global batch.
Metrics travel by name: {name: (sum, count)} from the method to the trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
from typing import Callable

import keras
import tensorflow as tf

from dann_dist import schedules
from dann_dist.config import Config
from dann_dist.methods import base, registry


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds and a step changes."""
    models: dict                  # group name -> keras.Model, in the method's order
    optimizers: dict              # group name -> its optimizer
    step: tf.Variable
    # Training seconds of the run up to its last checkpoint (a resumed run adds its own).
    train_seconds: tf.Variable
    # rundir.trained_fingerprint of the flags it was trained with (0: not yet recorded).
    config_fingerprint: tf.Variable
    # mixed_float16 only: one dynamic loss scale for all gradient groups, so that they
    # are scaled, unscaled and skipped together.
    loss_scale: tf.Variable | None = None
    good_steps: tf.Variable | None = None

    def trackables(self) -> dict:
        out = {"step": self.step, "train_seconds": self.train_seconds,
               "config_fingerprint": self.config_fingerprint}
        if self.loss_scale is not None:
            out.update(loss_scale=self.loss_scale, good_steps=self.good_steps)
        out.update(self.models)
        out.update((f"{name}_optimizer", o) for name, o in self.optimizers.items())
        return out

    def all_variables(self) -> list:
        variables = [v for m in self.models.values() for v in m.variables]
        variables += [v for o in self.optimizers.values() for v in o.variables]
        variables.append(self.train_seconds)
        if self.loss_scale is not None:
            variables += [self.loss_scale, self.good_steps]
        return variables


def make_optimizer(config: Config, adversary: bool = False) -> keras.optimizers.Optimizer:
    lr, momentum = config.effective_learning_rate, config.momentum
    if adversary:
        # Two time-scales: the adversary's own rate and momentum (TTUR; DomainBed's DANN).
        if config.disc_learning_rate:
            lr = config.disc_learning_rate * (config.effective_learning_rate
                                              / config.learning_rate)
        lr *= schedules.adversary_scale(config)
        momentum = config.momentum if config.disc_momentum < 0 else config.disc_momentum
    if config.lr_schedule == "annealed" or config.warmup_steps:
        alpha = config.lr_alpha if config.lr_schedule == "annealed" else 0.0
        lr = schedules.AnnealedLearningRate(lr, config.schedule_steps, alpha, config.lr_beta,
                                            config.warmup_steps)
    # The optimizer keeps the weight average (and checkpoints it); training never sees it.
    ema_momentum = config.effective_ema_momentum
    ema = dict(use_ema=ema_momentum > 0, ema_momentum=ema_momentum or 0.99)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr, **ema)
    return keras.optimizers.SGD(lr, momentum=momentum, nesterov=config.optimizer == "nesterov",
                                **ema)


@contextlib.contextmanager
def evaluation_weights(state: TrainState):
    """Within the block, the models hold the moving average of their weights (when
    --ema_momentum > 0); the raw weights, which training continues from, come back after."""
    first = next(iter(state.optimizers.values()))
    if not first.use_ema:
        yield
        return
    trained = {name: state.models[name] for name in state.optimizers}
    raw = {name: [v.numpy() for v in m.trainable_variables] for name, m in trained.items()}
    for name, model in trained.items():
        state.optimizers[name].finalize_variable_values(model.trainable_variables)
    try:
        yield
    finally:
        for name, model in trained.items():
            for variable, value in zip(model.trainable_variables, raw[name]):
                variable.assign(value)


def create_state(models: dict, config: Config) -> TrainState:
    """Creates optimizers with their slots, so that every replica and rank holds the
    complete state from the start (Horovod broadcasts it; checkpoints restore it)."""
    adversaries = registry.get(config.adaptation).adversary_groups
    # Groups without trainable weights (DIRT-T's teacher) have no optimizer.
    optimizers = {name: make_optimizer(config, name in adversaries)
                  for name, model in models.items() if model.trainable_variables}
    for name, optimizer in optimizers.items():
        optimizer.build(models[name].trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
    fingerprint = tf.Variable(0, dtype=tf.int64, trainable=False, name="config_fingerprint")
    if config.precision != "mixed_float16":
        return TrainState(models, optimizers, step, seconds, fingerprint)
    loss_scale = tf.Variable(INITIAL_LOSS_SCALE, dtype=tf.float32, trainable=False,
                             name="loss_scale")
    good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")
    return TrainState(models, optimizers, step, seconds, fingerprint, loss_scale, good_steps)


# Dynamic loss scaling as in mixed-precision training practice: start high, halve on a
# non-finite gradient (that step applies zero gradients), double after a run of finite ones.
INITIAL_LOSS_SCALE = 2.0 ** 15
LOSS_SCALE_GROWTH_STEPS = 2000


def update_loss_scale(state: TrainState, finite) -> None:
    grow = tf.logical_and(finite, state.good_steps + 1 >= LOSS_SCALE_GROWTH_STEPS)
    grown = tf.where(grow, state.loss_scale * 2.0, state.loss_scale)
    state.loss_scale.assign(tf.where(finite, grown,
                                     tf.maximum(state.loss_scale / 2.0, 1.0)))
    state.good_steps.assign(tf.where(tf.logical_and(finite, tf.logical_not(grow)),
                                     state.good_steps + 1, tf.zeros_like(state.good_steps)))


def adaptation_factor(config: Config, step) -> tf.Tensor:
    """lambda_p of the config's method at `step` (0 for methods that do not adapt)."""
    return registry.get(config.adaptation).adaptation_factor(config, step)


def trained_groups(models: dict, config: Config, phase: str = "train") -> list:
    """The groups a phase's step updates, in the models' order."""
    frozen = registry.get(config.adaptation).frozen_groups(config, phase)
    return [name for name, model in models.items()
            if model.trainable_variables and name not in frozen]


def make_compute_gradients(models: dict, config: Config, global_batch: int,
                           phase: str = "train") -> Callable:
    """Returns fn(batch, lam, step, loss_scale) -> (flat gradients of the phase's trained
    groups in the models' order, unscaled; {metric name: (sum, count)}). loss_scale is 1
    except under mixed_float16."""
    method = registry.get(config.adaptation)
    per_group = method.uses_group_losses(config)
    reversal_scale = schedules.adversary_scale(config)
    groups = trained_groups(models, config, phase)

    def compute(batch, lam, step, scale):
        ctx = base.StepContext(config, global_batch, lam, lam * reversal_scale, step, phase)
        with tf.GradientTape(persistent=per_group) as tape:
            objective = method.objective(models, batch, ctx)
            # Scaled inside the tape (scale is 1 unless mixed_float16), unscaled below.
            if per_group:
                scaled = {name: loss * scale for name, loss in objective.group_losses.items()}
            else:
                scaled_total = total_loss(objective.terms) * scale
        if per_group:
            grads = [g for name in groups
                     for g in tape.gradient(scaled[name], models[name].trainable_variables)]
            del tape
        else:
            variables = [v for name in groups for v in models[name].trainable_variables]
            grads = tape.gradient(scaled_total, variables)
        return [g / scale for g in grads], objective.metrics

    if config.jit_compile:
        return tf.function(compute, jit_compile=True)
    return compute


def total_loss(terms: dict):
    return functools.reduce(operator.add, terms.values())


def clip_by_global_norm(grads: list, clip_norm: float) -> list:
    """Scales the gradients so that the norm of the GLOBAL gradient is at most clip_norm.
    Every replica computes the same factor, so clipping commutes with the sum over replicas."""
    reduced = grads
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        # tf.distribute: the gradients are still per replica here (the optimizers sum
        # them), so the norm must be taken of their sum. Single device and Horovod have
        # reduced them already, and their (default) replica context has one replica.
        reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    norm = tf.linalg.global_norm(reduced)
    factor = tf.minimum(1.0, clip_norm / tf.maximum(norm, 1e-12))
    return [g * factor for g in grads]


def apply_gradients(state: TrainState, grads: list, groups: list | None = None) -> None:
    """Applies the flat gradients of `groups` (all that have optimizers: None)."""
    start = 0
    for name in state.optimizers if groups is None else groups:
        variables = state.models[name].trainable_variables
        state.optimizers[name].apply(grads[start:start + len(variables)], variables)
        start += len(variables)


def pack_metrics(metrics: dict, names: list) -> tf.Tensor:
    """[sum..., count...] in the order of `names` (filled on the first call), so that one
    all-reduce carries every metric."""
    if not names:
        names.extend(metrics)
    sums = [tf.cast(metrics[n][0], tf.float32) for n in names]
    counts = [tf.cast(metrics[n][1], tf.float32) for n in names]
    return tf.stack(sums + counts)


def unpack_metrics(packed, names: list) -> dict:
    k = len(names)
    return {name: (packed[i], packed[k + i]) for i, name in enumerate(names)}


def make_train_step(state: TrainState, config: Config, backend, phase: str = "train") -> Callable:
    """Returns a tf.function (iterator, stop) -> ({metric: (sum, count)} over all
    replicas, lambda, stop votes) for the steps of the method's `phase`. `stop` (0. or
    1.) rides along with the metric all-reduce, so a signal seen by any process stops
    every process after the same step, at no extra cost; so does the finite-gradient vote
    of mixed_float16."""
    compute = make_compute_gradients(state.models, config,
                                     backend.global_batch(config.batch_size), phase)
    groups = trained_groups(state.models, config, phase)
    scaled = state.loss_scale is not None
    names: list = []

    def replica_step(batch, lam, step, stop, scale):
        grads, metrics = compute(batch, lam, step, scale)
        grads = backend.all_reduce_gradients(grads)
        finite = tf.constant(1.0)
        if scaled:
            finite = backend.all_finite(grads)
            grads = [tf.where(finite > 0, g, tf.zeros_like(g)) for g in grads]
        if config.clip_norm > 0:
            grads = clip_by_global_norm(grads, config.clip_norm)
        apply_gradients(state, grads, groups)
        return tf.concat([pack_metrics(metrics, names), [stop, finite]], axis=0)

    @tf.function
    def train_step(iterator, stop):
        lam = adaptation_factor(config, state.step)
        scale = tf.identity(state.loss_scale) if scaled else tf.constant(1.0)
        args = (next(iterator), lam, tf.identity(state.step), stop, scale)
        totals = backend.run(replica_step, args)
        state.step.assign_add(1)
        totals = backend.sum_over_replicas(totals)
        if scaled:
            update_loss_scale(state, totals[-1] >= backend.num_replicas)
        return unpack_metrics(totals[:-2], names), lam, totals[-2]

    return train_step
