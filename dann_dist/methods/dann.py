"""DANN (Ganin et al., JMLR 2016): a domain discriminator on the features, trained
against the extractor through the gradient reversal layer (--adversarial_loss=grl, the
paper's) or by swapped domain labels (flipped_labels, the origin script's, GAN-style)."""

from __future__ import annotations

import keras
import tensorflow as tf

from dann_dist import models as models_lib
from dann_dist.methods import base


class Dann(base.Method):
    name = "dann"
    adversary_groups = ("discriminator",)
    adversarial_losses = ("grl", "flipped_labels")

    def adversaries(self, config, feature_dim, num_classes, sync_batchnorm) -> dict:
        return {"discriminator": models_lib.domain_discriminator(
            feature_dim, config.discriminator_head, sync_batchnorm)}

    def uses_group_losses(self, config) -> bool:
        return config.adversarial_loss == "flipped_labels"

    def objective(self, models, batch, ctx) -> base.Objective:
        source, labels, target, n = base.images(batch)
        features = models["extractor"](tf.concat([source, target], axis=0), training=True)
        _, _, classification, metrics = base.classification(models, features, labels, ctx)
        return self.with_domain_terms(models, features, n, classification, metrics, ctx)

    def with_domain_terms(self, models, features, n, classification, metrics,
                          ctx) -> base.Objective:
        """The objective: the classification loss and metrics given, plus the domain
        discriminator's game on the features (the first n of them source)."""
        domain_labels = base.domain_labels(n, tf.shape(features)[0] - n)
        flipped = self.uses_group_losses(ctx.config)
        disc_input = features if flipped else models_lib.reverse_gradient(features, ctx.reversal)
        domain_logits = models["discriminator"](disc_input, training=True)
        domain_loss, weight, domain_metrics = base.domain_terms(domain_logits, domain_labels, ctx)
        metrics = _ordered(metrics, domain_metrics)
        terms = {"classification": classification, "domain": domain_loss}
        if not flipped:
            return base.Objective(terms, metrics)
        fooled = keras.losses.binary_crossentropy(1.0 - domain_labels, domain_logits,
                                                  from_logits=True)
        fooled_loss = tf.reduce_sum(fooled) * weight
        return base.Objective(terms, metrics, group_losses={
            "extractor": classification + ctx.reversal * fooled_loss,
            "classifier": classification, "discriminator": domain_loss})

    def domain_logits(self, models, features, class_logits):
        return models["discriminator"](features, training=False)


def _ordered(classification: dict, domain: dict) -> dict:
    """Losses first, then accuracies: the order of the progress line."""
    return {"label_loss": classification.pop("label_loss"), "domain_loss": domain["domain_loss"],
            "source_accuracy": classification.pop("source_accuracy"),
            "domain_accuracy": domain["domain_accuracy"], **classification}


METHOD = Dann()
