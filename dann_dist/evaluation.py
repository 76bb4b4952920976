"""Batched evaluation of both test sets: label accuracy and loss per domain, and the
discriminator's domain accuracy (from its sigmoid probability, threshold 0.5).
Target labels are used here for reporting only, never for training or selection."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dann_dist.data.pipeline import eval_dataset
from dann_dist.models import DannModels


def make_evaluator(models: DannModels):
    @tf.function
    def batch_sums(images, labels, domain_label):
        features = models.extractor(images, training=False)
        logits = models.classifier(features, training=False)
        loss = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels), tf.float32)
        domain_prob = tf.sigmoid(models.discriminator(features, training=False))[:, 0]
        domain_correct = tf.cast(tf.equal(tf.cast(domain_prob > 0.5, tf.float32), domain_label), tf.float32)
        return tf.stack([tf.reduce_sum(loss), tf.reduce_sum(correct), tf.reduce_sum(domain_correct)])

    def evaluate(test_sets: dict, mean, batch_size: int) -> dict:
        """test_sets: {"source": (x, y), "target": (x, y)} uint8 images, int labels."""
        out, domain_correct, domain_count = {}, 0.0, 0
        for domain_label, name in enumerate(("source", "target")):
            images, labels = test_sets[name]
            totals = np.zeros(3)
            for x, y in eval_dataset(images, labels, mean=mean, batch_size=batch_size):
                totals += batch_sums(x, y, tf.constant(float(domain_label))).numpy()
            out[f"{name}_loss"] = totals[0] / len(labels)
            out[f"{name}_accuracy"] = totals[1] / len(labels)
            domain_correct += totals[2]
            domain_count += len(labels)
        out["domain_accuracy"] = domain_correct / domain_count
        return {k: float(v) for k, v in out.items()}

    return evaluate
