"""VADA (Shu et al., "A DIRT-T Approach to Unsupervised Domain Adaptation", ICLR 2018):
DANN's domain game, the conditional entropy on the target (--target_entropy_weight), and
virtual adversarial training (VAT, dann_dist/vat.py) on both domains: each prediction
must stay put within an L2 ball of radius --vat_epsilon around its input.

  loss = label loss + domain game + vat_source_weight * VAT(source)
         + lambda_p * (target_entropy_weight * entropy(target) + vat_target_weight * VAT(target))

The target terms are ramped with lambda_p like the entropy term. The random directions of
VAT's power iteration come from the input pipeline, drawn per global batch and split like
the examples (as the colour augmentation), so N replicas equal one device.
"""

from __future__ import annotations

import tensorflow as tf

from dann_dist import vat
from dann_dist.methods import base
from dann_dist.methods.dann import Dann


class Vada(Dann):
    name = "vada"
    needs_vat_directions = True
    adversarial_losses = ("grl",)

    def uses_group_losses(self, config) -> bool:
        return False  # the gradient reversal layer only

    def objective(self, models, batch, ctx) -> base.Objective:
        source, labels, target, n = base.images(batch)
        extractor, classifier = models["extractor"], models["classifier"]
        features = extractor(tf.concat([source, target], axis=0), training=True)
        label_logits, target_logits, classification, metrics = base.classification(
            models, features, labels, ctx, need_target=True)
        config = ctx.config

        def logits_fn(images):
            return classifier(extractor(images, training=True), training=True)

        def penalty(images, logits, direction):
            return vat.vat_loss(logits_fn, images, logits, xi=config.vat_xi,
                                epsilon=config.vat_epsilon, reduction_count=ctx.global_batch,
                                direction=direction)

        vat_source = penalty(source, label_logits, batch["source_vat_direction"])
        vat_target = penalty(target, target_logits, batch["target_vat_direction"])
        classification += (config.vat_source_weight * vat_source
                           + ctx.lam * config.vat_target_weight * vat_target)
        # Logged as means over each domain's examples (the losses are sums / global batch).
        scale = tf.cast(ctx.global_batch, tf.float32)
        count_s = tf.cast(n, tf.float32)
        count_t = tf.cast(tf.shape(target)[0], tf.float32)
        metrics.update(vat_source=(vat_source * scale, count_s),
                       vat_target=(vat_target * scale, count_t))
        return self.with_domain_terms(models, features, n, classification, metrics, ctx)


METHOD = Vada()
