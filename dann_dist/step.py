"""The DANN train step, written once and run by every backend.

A step has three stages so that a backend can sit between them:
  1. `compute_gradients` (per replica, XLA-compilable): forward pass of both domains,
     the label and domain losses, and the gradients of all three models;
  2. `backend.all_reduce_gradients`: identity on one device, one fused Horovod
     all-reduce, or nothing under tf.distribute (Keras optimizers sum across replicas);
  3. three optimizers apply their group.
Per-replica losses are divided by the GLOBAL batch, so summing gradients (and metric
sums) over replicas gives exactly the single-device mean over the global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import keras
import tensorflow as tf

from dann_dist import schedules
from dann_dist.config import Config
from dann_dist.models import DannModels, reverse_gradient

# Order of the metric sums each replica returns; the trainer divides by the counts.
METRIC_SUMS = ("label_loss", "domain_loss", "label_correct", "domain_correct")


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds and a step changes."""
    models: DannModels
    optimizers: tuple[keras.optimizers.Optimizer, ...]
    step: tf.Variable
    # mixed_float16 only: one dynamic loss scale for all three gradient groups, so that
    # they are scaled, unscaled and skipped together.
    loss_scale: tf.Variable | None = None
    good_steps: tf.Variable | None = None

    def trackables(self) -> dict:
        names = ("extractor", "classifier", "discriminator")
        out = {"step": self.step}
        if self.loss_scale is not None:
            out.update(loss_scale=self.loss_scale, good_steps=self.good_steps)
        out.update(zip(names, self.models.groups))
        out.update((f"{n}_optimizer", o) for n, o in zip(names, self.optimizers))
        return out

    def all_variables(self) -> list:
        variables = [v for m in self.models.groups for v in m.variables]
        variables += [v for o in self.optimizers for v in o.variables]
        if self.loss_scale is not None:
            variables += [self.loss_scale, self.good_steps]
        return variables


def make_optimizer(config: Config) -> keras.optimizers.Optimizer:
    lr = config.effective_learning_rate
    if config.lr_schedule == "annealed" or config.warmup_steps:
        alpha = config.lr_alpha if config.lr_schedule == "annealed" else 0.0
        lr = schedules.AnnealedLearningRate(lr, config.train_steps, alpha, config.lr_beta,
                                            config.warmup_steps)
    # The optimizer keeps the weight average (and checkpoints it); training never sees it.
    momentum = config.effective_ema_momentum
    ema = dict(use_ema=momentum > 0, ema_momentum=momentum or 0.99)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=config.momentum, **ema)
    return keras.optimizers.Adam(lr, **ema)


@contextlib.contextmanager
def evaluation_weights(state: TrainState):
    """Within the block, the models hold the moving average of their weights (when
    --ema_momentum > 0); the raw weights, which training continues from, come back after."""
    if not state.optimizers[0].use_ema:
        yield
        return
    raw = [[v.numpy() for v in m.trainable_variables] for m in state.models.groups]
    for optimizer, model in zip(state.optimizers, state.models.groups):
        optimizer.finalize_variable_values(model.trainable_variables)
    try:
        yield
    finally:
        for values, model in zip(raw, state.models.groups):
            for variable, value in zip(model.trainable_variables, values):
                variable.assign(value)


def create_state(models: DannModels, config: Config) -> TrainState:
    """Creates optimizers with their slots, so that every replica and rank holds the
    complete state from the start (Horovod broadcasts it; checkpoints restore it)."""
    optimizers = tuple(make_optimizer(config) for _ in models.groups)
    for optimizer, model in zip(optimizers, models.groups):
        optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    if config.precision != "mixed_float16":
        return TrainState(models, optimizers, step)
    loss_scale = tf.Variable(INITIAL_LOSS_SCALE, dtype=tf.float32, trainable=False,
                             name="loss_scale")
    good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")
    return TrainState(models, optimizers, step, loss_scale, good_steps)


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
    if config.adaptation != "dann":
        return tf.constant(0.0)
    p = schedules.progress(step, config.train_steps)
    return schedules.adaptation_factor(p, config.gamma, config.lambda_max)


def make_compute_gradients(models: DannModels, config: Config, global_batch: int) -> Callable:
    """Returns fn(batch, lam, step, loss_scale) -> (flat gradients of the three groups,
    unscaled; metric sums). loss_scale is 1 except under mixed_float16."""
    extractor, classifier, discriminator = models.groups
    flipped = config.adversarial_loss == "flipped_labels"
    label_xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    domain_xent = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)
    entropy_weight = config.target_entropy_weight

    def compute(batch, lam, step, scale):
        source, labels = batch["source_images"], batch["source_labels"]
        target = batch["target_images"]
        n = tf.shape(source)[0]
        # Source = 0, target = 1.
        domain_labels = tf.concat([tf.zeros([n, 1]), tf.ones([tf.shape(target)[0], 1])], axis=0)
        with tf.GradientTape(persistent=flipped) as tape:
            features = extractor(tf.concat([source, target], axis=0), training=True)
            if entropy_weight > 0:
                all_logits = classifier(features, training=True)
                label_logits = all_logits[:n]
                # VADA's conditional entropy on the target batch, ramped like the
                # adversarial term (lam is 0 early, when predictions are still noise).
                target_log_p = tf.nn.log_softmax(all_logits[n:])
                entropy_sum = -tf.reduce_sum(tf.exp(target_log_p) * target_log_p)
                entropy_loss = lam * entropy_weight * entropy_sum / global_batch
            else:
                label_logits = classifier(features[:n], training=True)
                entropy_loss = 0.0
            label_loss_sum = tf.reduce_sum(label_xent(labels, label_logits))
            if config.debug_nan_step >= 0:
                # `step` counts the steps done before this one: this is step + 1, the
                # number the trainer's logs and its NaN guard report.
                label_loss_sum += tf.where(step + 1 == config.debug_nan_step, float("nan"), 0.0)
            label_loss = label_loss_sum / global_batch
            disc_input = features if flipped else reverse_gradient(features, lam)
            domain_logits = discriminator(disc_input, training=True)
            domain_loss_sum = tf.reduce_sum(domain_xent(domain_labels, domain_logits))
            # A mean over both domains' 2 * global_batch images. The paper's eq. 10 adds the
            # source mean to the target mean instead, i.e. domain_loss_weight=2.
            domain_weight = config.domain_loss_weight / (2 * global_batch)
            domain_loss = domain_loss_sum * domain_weight
            # Scaled inside the tape (scale is 1 unless mixed_float16), unscaled below.
            if flipped:
                fooled = domain_xent(1.0 - domain_labels, domain_logits)
                fooled_loss = tf.reduce_sum(fooled) * domain_weight
                classifier_loss = label_loss + entropy_loss
                scaled_losses = [(classifier_loss + lam * fooled_loss) * scale,
                                 classifier_loss * scale, domain_loss * scale]
            else:
                scaled_total = (label_loss + entropy_loss + domain_loss) * scale

        if flipped:
            grads = [g for loss, model in zip(scaled_losses, models.groups)
                     for g in tape.gradient(loss, model.trainable_variables)]
            del tape
        else:
            variables = [v for m in models.groups for v in m.trainable_variables]
            grads = tape.gradient(scaled_total, variables)
        grads = [g / scale for g in grads]

        label_correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(label_logits, axis=-1, output_type=labels.dtype), labels),
            tf.float32))
        domain_correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.cast(domain_logits > 0.0, tf.float32), domain_labels), tf.float32))
        sums = tf.stack([label_loss_sum, domain_loss_sum, label_correct, domain_correct])
        return grads, sums

    if config.jit_compile:
        return tf.function(compute, jit_compile=True)
    return compute


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


def apply_gradients(state: TrainState, grads: list) -> None:
    start = 0
    for optimizer, model in zip(state.optimizers, state.models.groups):
        variables = model.trainable_variables
        optimizer.apply(grads[start:start + len(variables)], variables)
        start += len(variables)


def make_train_step(state: TrainState, config: Config, backend) -> Callable:
    """Returns a tf.function (iterator, stop) -> (metric sums over all replicas, lambda,
    stop votes). `stop` (0. or 1.) rides along with the metric all-reduce, so a signal
    seen by any process stops every process after the same step, at no extra cost."""
    compute = make_compute_gradients(state.models, config, backend.global_batch(config.batch_size))
    scaled = state.loss_scale is not None

    def replica_step(batch, lam, step, stop, scale):
        grads, sums = compute(batch, lam, step, scale)
        grads = backend.all_reduce_gradients(grads)
        finite = tf.constant(1.0)
        if scaled:
            finite = backend.all_finite(grads)
            grads = [tf.where(finite > 0, g, tf.zeros_like(g)) for g in grads]
        if config.clip_norm > 0:
            grads = clip_by_global_norm(grads, config.clip_norm)
        apply_gradients(state, grads)
        return tf.concat([sums, [stop, finite]], axis=0)

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
        return totals[:-2], lam, totals[-2]

    return train_step
