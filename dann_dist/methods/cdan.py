"""CDAN+E (Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018): the
discriminator sees the multilinear map of features and predictions, the flattened outer
product f (x) g of the features f and the softmax g, through the gradient reversal
layer, and each example's domain loss is weighted by 1 + exp(-H(g)), so that confident
predictions count more.

Choices made here, and why:
  - g is a constant to the adversary (the paper's released code detaches it): the
    reversed gradient reaches the extractor through f only;
  - the full map, not the paper's randomized one (used above 4096 dimensions): with
    768 features and 10 classes it is a 7680-wide input to the paper's dense 100 head;
  - the entropy weights are not renormalised over the batch (the paper divides by their
    batch sum): a per-replica sum would make N replicas differ from one device, and the
    weights lie in [1 + 1/C, 2] anyway. The weights are constants (no gradient).
"""

from __future__ import annotations

import tensorflow as tf

from dann_dist import models as models_lib
from dann_dist.methods import base
from dann_dist.methods.dann import _ordered


def multilinear(features, class_logits):
    """[N, d * C]: the outer product of each example's features and softmax."""
    probs = tf.cast(tf.stop_gradient(tf.nn.softmax(tf.cast(class_logits, tf.float32))),
                    features.dtype)
    outer = features[:, :, None] * probs[:, None, :]
    return tf.reshape(outer, [-1, features.shape[-1] * class_logits.shape[-1]])


def entropy_weights(class_logits):
    """1 + exp(-H(g)) per example, [N, 1], a constant."""
    log_p = tf.nn.log_softmax(tf.cast(class_logits, tf.float32))
    entropy = -tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1, keepdims=True)
    return tf.stop_gradient(1.0 + tf.exp(-entropy))


class Cdan(base.Method):
    name = "cdan"
    adversary_groups = ("discriminator",)

    def adversaries(self, config, feature_dim, num_classes, sync_batchnorm) -> dict:
        return {"discriminator": models_lib.domain_discriminator(
            feature_dim * num_classes, config.discriminator_head, sync_batchnorm)}

    def objective(self, models, batch, ctx) -> base.Objective:
        source, labels, target, n = base.images(batch)
        features = models["extractor"](tf.concat([source, target], axis=0), training=True)
        label_logits, target_logits, classification, metrics = base.classification(
            models, features, labels, ctx, need_target=True)
        class_logits = tf.concat([label_logits, target_logits], axis=0)
        joint = multilinear(models_lib.reverse_gradient(features, ctx.reversal), class_logits)
        domain_logits = models["discriminator"](joint, training=True)
        domain_labels = base.domain_labels(n, tf.shape(target)[0])
        weights = entropy_weights(class_logits)
        _, weight, domain_metrics = base.domain_terms(domain_logits, domain_labels, ctx)
        xent = tf.nn.sigmoid_cross_entropy_with_logits(domain_labels, domain_logits)
        domain_loss = tf.reduce_sum(weights * xent) * weight
        terms = {"classification": classification, "domain": domain_loss}
        return base.Objective(terms, _ordered(metrics, domain_metrics))

    def domain_logits(self, models, features, class_logits):
        return models["discriminator"](multilinear(features, class_logits), training=False)


METHOD = Cdan()
