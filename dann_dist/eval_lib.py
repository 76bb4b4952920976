"""The evaluation library (the `dann_dist.evaluate` command runs it on a trained run).

Batched evaluation: label accuracy and loss per labelled set, the discriminator's
domain accuracy (sigmoid probability, threshold 0.5) on both test sets where the method
has a discriminator, and the mean prediction entropy on unlabelled target images (a
label-free selection criterion). Target labels are used here for reporting only, never
for training or selection."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dann_dist.data.pipeline import eval_dataset, to_model_input

SOURCE, TARGET = 0.0, 1.0


def _batch_sums_fn(models: dict, method):
    """fn(images, labels, domain label, mean) -> sums of loss, correct, domain-correct and
    entropy over one batch."""
    extractor, classifier = models["extractor"], models["classifier"]

    def batch_sums(images, labels, domain_label, mean):
        features = extractor(to_model_input(images, mean), training=False)
        logits = tf.cast(classifier(features, training=False), tf.float32)
        loss = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        predicted = tf.argmax(logits, -1, output_type=labels.dtype)
        correct = tf.cast(tf.equal(predicted, labels), tf.float32)
        probs = tf.nn.softmax(logits)
        entropy = -tf.reduce_sum(probs * tf.math.log(probs + 1e-12), axis=-1)
        domain_logits = method.domain_logits(models, features, logits)
        if domain_logits is None:
            domain_correct = tf.zeros_like(correct)
        else:
            domain_prob = tf.sigmoid(domain_logits)[:, 0]
            domain_correct = tf.cast(
                tf.equal(tf.cast(domain_prob > 0.5, tf.float32), domain_label), tf.float32)
        return tf.stack([tf.reduce_sum(loss), tf.reduce_sum(correct), tf.reduce_sum(domain_correct),
                         tf.reduce_sum(entropy)])

    return batch_sums


def make_evaluator(models: dict, method):
    """models: the method's networks (name -> Keras model); method: its Method."""
    height, width = models["extractor"].input_shape[1:3]
    batch_sums = _batch_sums_fn(models, method)

    # One graph per channel count (gray source, RGB target), any batch size: the
    # preprocessing needs the static channel count to know whether to expand gray to RGB.
    graphs = {}

    def sums_for(channels: int):
        if channels not in graphs:
            graphs[channels] = tf.function(batch_sums, input_signature=[
                tf.TensorSpec([None, height, width, channels], tf.uint8),
                tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32),
                tf.TensorSpec([3], tf.float32)])
        return graphs[channels]

    def totals(images, labels, domain_label, mean, batch_size):
        sums = sums_for(images.shape[-1])
        mean = tf.constant(mean, tf.float32)
        out = np.zeros(4)
        for x, y in eval_dataset(images, labels, batch_size=batch_size):
            out += sums(x, y, tf.constant(domain_label), mean).numpy()
        return out / len(images)

    def evaluate(test_sets: dict, mean, batch_size: int, source_val=None,
                 target_unlabelled=None) -> dict:
        """test_sets: {"source": (x, y), "target": (x, y)} uint8 images, int labels.
        source_val: (x, y) held-out source images; target_unlabelled: target images."""
        out = {}
        domain = []
        for name, domain_label in (("source", SOURCE), ("target", TARGET)):
            images, labels = test_sets[name]
            loss, accuracy, domain_accuracy, _ = totals(images, labels, domain_label, mean,
                                                        batch_size)
            out.update({f"{name}_loss": loss, f"{name}_accuracy": accuracy})
            domain.append((domain_accuracy, len(labels)))
        if method.adversary_groups:  # a discriminator to report on
            out["domain_accuracy"] = sum(a * n for a, n in domain) / sum(n for _, n in domain)
        if source_val is not None and len(source_val[0]):
            loss, accuracy, _, _ = totals(*source_val, SOURCE, mean, batch_size)
            out.update(source_val_loss=loss, source_val_accuracy=accuracy)
        if target_unlabelled is not None and len(target_unlabelled):
            # Labels are a dummy: only the entropy of the predictions is kept.
            dummy = np.zeros(len(target_unlabelled), np.int64)
            out["target_entropy"] = totals(target_unlabelled, dummy, TARGET, mean, batch_size)[3]
        return {k: float(v) for k, v in out.items()}

    return evaluate
