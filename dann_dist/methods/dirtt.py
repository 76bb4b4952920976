"""DIRT-T (Shu et al., "A DIRT-T Approach to Unsupervised Domain Adaptation", ICLR 2018):
VADA (dann_dist/methods/vada.py) for the first train_steps - refine_steps steps, then a
refinement on target images alone that pushes the decision boundaries away from the
target's dense regions (the cluster assumption), each step kept near a teacher:

  refine loss = lambda_p * (target_entropy_weight * entropy(target)
                            + vat_target_weight * VAT(target))
                + refine_kl_weight * KL(teacher(target) || model(target))

The teacher is a frozen copy of the extractor and classifier, made at the first
refinement step and every --refine_teacher_every steps after (the paper's trust region to
the previous iterate, each solved approximately by a fixed number of steps). It is a
model group of its own, so checkpoints hold it and a run resumes in either phase. During
refinement the discriminator is not trained; the source images are only evaluated, to
log the source accuracy the refinement must not lose.
"""

from __future__ import annotations

import tensorflow as tf

from dann_dist import vat
from dann_dist.methods import base
from dann_dist.methods.vada import Vada

STUDENT = ("extractor", "classifier")
TEACHER = {"extractor": "teacher_extractor", "classifier": "teacher_classifier"}


class DirtT(Vada):
    name = "dirtt"

    def build_models(self, config, image_shape, num_classes, sync_batchnorm) -> dict:
        models = super().build_models(config, image_shape, num_classes, sync_batchnorm)
        # The same networks again (after_step copies the weights in before first use).
        teacher = base.prediction_models(config, image_shape, num_classes, sync_batchnorm)
        for student, name in TEACHER.items():
            teacher[student].trainable = False
            models[name] = teacher[student]
        return models

    def phases(self, config) -> tuple:
        start = config.train_steps - config.refine_steps
        return (("vada", 0, start), ("refine", start, config.train_steps))

    def frozen_groups(self, config, phase: str) -> tuple:
        return ("discriminator",) if phase == "refine" else ()

    def after_step(self, models, config, step: int) -> None:
        start = config.train_steps - config.refine_steps
        if step >= start and (step - start) % config.refine_teacher_every == 0:
            for student, teacher in TEACHER.items():
                for mine, theirs in zip(models[teacher].weights, models[student].weights):
                    mine.assign(theirs)

    def objective(self, models, batch, ctx) -> base.Objective:
        if ctx.phase != "refine":
            return super().objective(models, batch, ctx)
        return refinement(models, batch, ctx)


def refinement(models, batch, ctx) -> base.Objective:
    """The refinement objective on this replica's target images."""
    config = ctx.config
    source, labels, target, n = base.images(batch)
    extractor, classifier = models["extractor"], models["classifier"]

    def logits_fn(images):
        return classifier(extractor(images, training=True), training=True)

    logits = logits_fn(target)
    teacher_logits = models["teacher_classifier"](
        models["teacher_extractor"](target, training=False), training=False)
    teacher_log_p = tf.nn.log_softmax(tf.stop_gradient(tf.cast(teacher_logits, tf.float32)))
    log_p = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    kl_sum = tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - log_p))
    entropy = base.entropy_sum(tf.cast(logits, tf.float32))
    vat_target = vat.vat_loss(logits_fn, target, logits, xi=config.vat_xi,
                              epsilon=config.vat_epsilon, reduction_count=ctx.global_batch,
                              direction=batch["target_vat_direction"])
    batch_size = tf.cast(ctx.global_batch, tf.float32)
    terms = {"entropy": ctx.lam * config.target_entropy_weight * entropy / batch_size,
             "vat_target": ctx.lam * config.vat_target_weight * vat_target,
             "trust_region": config.refine_kl_weight * kl_sum / batch_size}
    # The source is only looked at: the accuracy that refinement must keep.
    source_logits = classifier(extractor(source, training=False), training=False)
    correct = tf.reduce_sum(tf.cast(tf.equal(
        tf.argmax(source_logits, axis=-1, output_type=labels.dtype), labels), tf.float32))
    count_t = tf.cast(tf.shape(target)[0], tf.float32)
    metrics = {"source_accuracy": (correct, tf.cast(n, tf.float32)),
               "target_entropy": (entropy, count_t),
               "vat_target": (vat_target * batch_size, count_t),
               "teacher_kl": (kl_sum, count_t)}
    return base.Objective(terms, metrics)


METHOD = DirtT()
