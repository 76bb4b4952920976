"""What a method is, and the loss pieces its modules share.

A method gives (1) its networks, a name -> Keras model mapping whose names are the
checkpoint's and the optimizers' groups, and (2) its objective for one replica's batch:
named loss terms whose sum the models minimise and named metric sums. The step
(dann_dist/step.py) differentiates, all-reduces, clips and applies whatever groups and
terms arrive; the trainer logs whatever metrics arrive. Conventions every method keeps:
  - losses are sums over this replica's examples divided by the GLOBAL batch, so that
    summing gradients over replicas gives the single-device mean (step.py);
  - a metric is (sum, count) over this replica's examples; the trainer divides the sums
    over replicas and steps;
  - "extractor" and "classifier" are the prediction path (evaluation and the export).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from dann_dist import models as models_lib
from dann_dist import schedules


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What an objective may read besides the batch and the models."""
    config: object            # the run's Config
    global_batch: int         # per domain, over all replicas (the losses' divisor)
    lam: tf.Tensor            # the adaptation factor lambda_p (its ramp, 0 -> lambda_max)
    # The coefficient of the reversed gradient: lam, or lam / k where --scale_adversary=false
    # keeps the adversarial path at its small-batch step while the learning rate is k times.
    reversal: tf.Tensor
    step: tf.Tensor           # steps done before this one
    phase: str = "train"      # the method's phase this step belongs to (Method.phases)


@dataclasses.dataclass
class Objective:
    terms: dict               # name -> loss; the models minimise the sum
    metrics: dict             # name -> (sum over this replica's examples, count)
    # name of a model group -> its own loss, for methods whose groups minimise different
    # losses (flipped labels); None: every group minimises the sum of the terms.
    group_losses: dict | None = None


class Method:
    """The paper's networks and schedule; subclasses give the objective."""
    name = ""
    # Which domain's labels train the classifier ("target": the paper's upper bound).
    labelled_domain = "source"
    # Groups that play against the extractor: --disc_learning_rate, --disc_momentum and
    # --scale_adversary apply to their optimizers.
    adversary_groups: tuple[str, ...] = ()
    adapts = True  # False: the adaptation factor is 0 throughout
    # True: the input pipeline adds "source_vat_direction" and "target_vat_direction" to
    # each batch, the random directions of VAT's power iteration (dann_dist/vat.py).
    needs_vat_directions = False
    # Which --adversarial_loss values the objective implements (grl: gradient reversal).
    adversarial_losses: tuple[str, ...] = ("grl",)

    def build_models(self, config, image_shape, num_classes, sync_batchnorm) -> dict:
        models = prediction_models(config, image_shape, num_classes, sync_batchnorm)
        feature_dim = models["extractor"].output_shape[-1]
        return {**models, **self.adversaries(config, feature_dim, num_classes, sync_batchnorm)}

    def adversaries(self, config, feature_dim, num_classes, sync_batchnorm) -> dict:
        return {}

    def uses_group_losses(self, config) -> bool:
        """Whether objective() returns group_losses (the step then keeps its tape)."""
        return False

    def adaptation_factor(self, config, step) -> tf.Tensor:
        if not self.adapts:
            return tf.constant(0.0)
        total = config.lambda_ramp_steps or config.schedule_steps
        p = schedules.progress(step, total)
        return schedules.adaptation_factor(p, config.gamma, config.lambda_max)

    def phases(self, config) -> tuple:
        """(name, first step, end step) of each phase, in order: a method whose objective
        changes during the run (DIRT-T's refinement) has several; the trainer traces one
        step per phase."""
        return (("train", 0, config.train_steps),)

    def phase_at(self, config, step: int) -> tuple:
        """The phase that step `step` + 1 belongs to (the last one at the end)."""
        phases = self.phases(config)
        return next((p for p in phases if p[1] <= step < p[2]), phases[-1])

    def frozen_groups(self, config, phase: str) -> tuple:
        """Groups that a phase's step leaves alone (weights and optimizer state); groups
        without trainable weights (a teacher) never train."""
        return ()

    def after_step(self, models: dict, config, step: int) -> None:
        """Runs after every optimizer step (step: steps done), on every process, before
        any checkpoint of that step: updates of weights that no gradient trains."""

    def objective(self, models: dict, batch: dict, ctx: StepContext) -> Objective:
        raise NotImplementedError

    def domain_logits(self, models: dict, features, class_logits):
        """The discriminator's logits at evaluation (domain accuracy); None: no
        discriminator."""
        return None


def prediction_models(config, image_shape, num_classes, sync_batchnorm) -> dict:
    """The prediction path: {"extractor", "classifier"}."""
    extractor = models_lib.feature_extractor(image_shape, config.input_norm, config.extractor_bn,
                                             config.extractor_width, sync_batchnorm)
    return {"extractor": extractor,
            "classifier": models_lib.label_classifier(extractor.output_shape[-1], num_classes,
                                                      config.classifier_head, sync_batchnorm)}


def images(batch: dict):
    """(labelled source, its labels, unlabelled target, source count)."""
    source = batch["source_images"]
    return source, batch["source_labels"], batch["target_images"], tf.shape(source)[0]


def classification(models: dict, features, labels, ctx: StepContext, need_target: bool = False):
    """The classifier on the labelled images (the first len(labels) features), and on the
    target ones when the entropy term or the caller needs them. Returns (label logits,
    target logits or None, the classification loss, its metrics)."""
    n = tf.shape(labels)[0]
    config = ctx.config
    entropy_weight = config.target_entropy_weight
    target_logits = None
    if entropy_weight > 0 or need_target:
        all_logits = models["classifier"](features, training=True)
        label_logits, target_logits = all_logits[:n], all_logits[n:]
    else:
        label_logits = models["classifier"](features[:n], training=True)
    if entropy_weight > 0:
        # VADA's conditional entropy on the target batch, ramped like the adversarial
        # term (lam is 0 early, when predictions are still noise).
        entropy_loss = ctx.lam * entropy_weight * entropy_sum(target_logits) / ctx.global_batch
    else:
        entropy_loss = 0.0
    xent = keras.losses.sparse_categorical_crossentropy(labels, label_logits, from_logits=True)
    label_loss_sum = tf.reduce_sum(xent)
    if config.debug_nan_step >= 0:
        # `step` counts the steps done before this one: this is step + 1, the number the
        # trainer's logs and its NaN guard report.
        label_loss_sum += tf.where(ctx.step + 1 == config.debug_nan_step, float("nan"), 0.0)
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.argmax(label_logits, axis=-1, output_type=labels.dtype), labels), tf.float32))
    count = tf.cast(n, tf.float32)
    metrics = {"label_loss": (label_loss_sum, count), "source_accuracy": (correct, count)}
    return label_logits, target_logits, label_loss_sum / ctx.global_batch + entropy_loss, metrics


def entropy_sum(logits):
    """The prediction entropy summed over the examples."""
    log_p = tf.nn.log_softmax(logits)
    return -tf.reduce_sum(tf.exp(log_p) * log_p)


def domain_labels(n, m):
    """Source = 0, target = 1: [n + m, 1]."""
    return tf.concat([tf.zeros([n, 1]), tf.ones([m, 1])], axis=0)


def domain_terms(domain_logits, labels, ctx: StepContext):
    """(the domain loss, its per-example sum, metrics): a mean over both domains' images
    (2 * global batch) times --domain_loss_weight. The paper's eq. 10 adds the source mean
    to the target mean instead, i.e. domain_loss_weight=2."""
    per_example = keras.losses.binary_crossentropy(labels, domain_logits, from_logits=True)
    loss_sum = tf.reduce_sum(per_example)
    weight = ctx.config.domain_loss_weight / (2 * ctx.global_batch)
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.cast(domain_logits > 0.0, tf.float32), labels), tf.float32))
    count = tf.cast(tf.shape(labels)[0], tf.float32)
    metrics = {"domain_loss": (loss_sum, count), "domain_accuracy": (correct, count)}
    return loss_sum * weight, weight, metrics
