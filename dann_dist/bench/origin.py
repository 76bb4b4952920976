"""The origin baseline: shared/origin/dann_mnist_mnistm_origin.md, as written there, and
that code set up for timing (Baseline).

The origin script's models, optimizers, train step and evaluation, unchanged in
substance: Sequential models built on first call, three Adam(0.7e-4), three
GradientTapes with the gradient calls and updates inside the tapes' `with` block, two
extractor calls, the heads called without a `training` argument, eager execution;
evaluation as batched forward passes of both whole test sets followed by the per-sample
Python loop. The names are the origin's, typos included. Baseline adds its in-memory
dataset and float32 test sets, its factors at epoch 1 of 100, warm-up, timed steps and
timed evaluations."""

from __future__ import annotations

import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers

ORIGIN_LEARNING_RATE = 0.7e-4


def get_feature_extract_model() -> keras.Sequential:
    model = keras.Sequential()
    model.add(layers.Conv2D(filters=32, kernel_size=(5, 5), activation="relu", padding="valid"))
    model.add(layers.MaxPool2D(pool_size=(2, 2), strides=(2, 2)))
    model.add(layers.Conv2D(filters=48, kernel_size=(5, 5), activation="relu", padding="valid"))
    model.add(layers.MaxPool2D(pool_size=(2, 2), strides=(2, 2)))
    model.add(layers.Flatten())
    return model


def get_discriminator() -> keras.Sequential:
    model = keras.Sequential()
    for units in (256, 128, 64, 32):
        model.add(layers.Dense(units, use_bias=False))
        model.add(layers.BatchNormalization())
        model.add(layers.LeakyReLU())
    model.add(layers.Dense(1, use_bias=False))
    return model


def get_classifier() -> keras.Sequential:
    model = keras.Sequential()
    for units in (100, 100):
        model.add(layers.Dense(units, use_bias=False))
        model.add(layers.BatchNormalization())
        model.add(layers.LeakyReLU())
    model.add(layers.Dense(10, activation="softmax"))
    return model


class OriginBaseline:
    """The origin's models, optimizers, train step and evaluation. Build it under the
    float32 policy."""

    def __init__(self):
        self.bce = tf.losses.BinaryCrossentropy(from_logits=True)
        self.cce = tf.losses.CategoricalCrossentropy()
        self.extractor_opt = keras.optimizers.Adam(ORIGIN_LEARNING_RATE)
        self.classifier_opt = keras.optimizers.Adam(ORIGIN_LEARNING_RATE)
        self.discriminator_opt = keras.optimizers.Adam(ORIGIN_LEARNING_RATE)
        self.extractor = get_feature_extract_model()
        self.discriminator = get_discriminator()
        self.classifier = get_classifier()

    def discriminator_loss(self, nomal_feature_out, m_feature_out):
        return (self.bce(tf.ones_like(nomal_feature_out), nomal_feature_out)
                + self.bce(tf.zeros_like(m_feature_out), m_feature_out))

    def discriminator_loss_(self, nomal_feature_out, m_feature_out):
        return (self.bce(tf.zeros_like(nomal_feature_out), nomal_feature_out)
                + self.bce(tf.ones_like(m_feature_out), m_feature_out))

    def train_step(self, normal_images, m_images, y_labels_n, ylabels_m, la, mu):
        extractor, discriminator, classifier = self.extractor, self.discriminator, self.classifier
        with tf.GradientTape() as ext_tape, tf.GradientTape() as disc_tape, \
                tf.GradientTape() as clas_tape:
            normal_features = extractor(normal_images, training=True)
            m_features = extractor(m_images, training=True)
            normal_feature_out = discriminator(normal_features)
            m_feature_out = discriminator(m_features)
            disc_loss = self.discriminator_loss(normal_feature_out, m_feature_out)
            disc_loss_ = self.discriminator_loss_(normal_feature_out, m_feature_out)
            y_pred_n = classifier(normal_features)
            clas_loss = self.cce(y_labels_n, y_pred_n)
            gradient_ext = ext_tape.gradient(mu * (la * disc_loss_ + clas_loss),
                                             extractor.trainable_variables)
            gradient_disc = disc_tape.gradient(mu * disc_loss, discriminator.trainable_variables)
            gradient_clas = clas_tape.gradient(mu * clas_loss, classifier.trainable_variables)
            self.extractor_opt.apply_gradients(zip(gradient_ext, extractor.trainable_variables))
            self.discriminator_opt.apply_gradients(
                zip(gradient_disc, discriminator.trainable_variables))
            self.classifier_opt.apply_gradients(zip(gradient_clas, classifier.trainable_variables))
        return disc_loss, disc_loss_, clas_loss

    def get_test_acc(self, n_test_image, n_test_label, m_test_image, m_test_label,
                     loop_examples=None):
        """The origin's evaluation. Returns (errors, (forward seconds, its CPU seconds),
        (loop seconds, its CPU seconds), samples looped over); `loop_examples` < test size
        runs the loop over the first ones only."""
        n_err = m_err = disc_err = 0
        test_num = n_test_image.shape[0]
        start, cpu = time.perf_counter(), time.process_time()
        n_test_features = self.extractor(n_test_image, training=False)
        m_test_features = self.extractor(m_test_image, training=False)
        n_test_outs = self.classifier(n_test_features)
        m_test_outs = self.classifier(m_test_features)
        n_test_disc_out = self.discriminator(n_test_features, training=False)
        m_test_disc_out = self.discriminator(m_test_features, training=False)
        forward = (time.perf_counter() - start, time.process_time() - cpu)
        looped = min(loop_examples or test_num, test_num)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(looped):
            if n_test_label[i][tf.argmax(n_test_outs[i])] != 1:
                n_err += 1
            if m_test_label[i][tf.argmax(m_test_outs[i])] != 1:
                m_err += 1
            if abs(n_test_disc_out[i] - 0) < abs(n_test_disc_out[i] - 1):
                disc_err += 1
            if abs(m_test_disc_out[i] - 1) < abs(m_test_disc_out[i] - 0):
                disc_err += 1
        loop = (time.perf_counter() - start, time.process_time() - cpu)
        errors = (n_err / looped, m_err / looped, disc_err / (2 * looped))
        return errors, forward, loop, looped


def origin_dataset(source_images: np.ndarray, source_labels: np.ndarray,
                   target_images: np.ndarray, target_labels: np.ndarray,
                   batch_size: int) -> tf.data.Dataset:
    """The origin's input: float32 0..255 images (MNIST repeated to 3 channels), one-hot
    labels, one in-memory dataset shuffled over all of it and batched (repeated here,
    where the origin iterates it once per epoch)."""
    train_image = source_images.reshape((-1, 28, 28, 1)).astype("float32")
    train_image = tf.repeat(train_image, 3, axis=3)
    train_label = tf.one_hot(source_labels, 10)
    m_train_image = target_images.astype("float32")
    m_train_label = tf.one_hot(target_labels, 10)
    dataset = tf.data.Dataset.from_tensor_slices(
        (train_image, m_train_image, train_label, m_train_label))
    return dataset.shuffle(len(source_images)).batch(batch_size).repeat()


def origin_test_sets(test_sets: dict) -> tuple:
    """The test sets as the origin holds them: float32 images, MNIST repeated to 3
    channels, one-hot labels; in get_test_acc's argument order."""
    (source_x, source_y), (target_x, target_y) = test_sets["source"], test_sets["target"]
    return (tf.repeat(source_x.astype("float32"), 3, axis=3), tf.one_hot(source_y, 10),
            tf.constant(target_x.astype("float32")), tf.one_hot(target_y, 10))


def origin_factors(epoch: int = 1, epochs: int = 100) -> tuple[tf.Tensor, float]:
    """The origin's per-epoch adversarial weight `la` and learning-rate factor `mu`."""
    gama, p = 10, epoch / epochs
    la = (2 / (1 + tf.exp(-gama * p)) - 1) * 1
    mu = 1 / ((1 + 10 * p) ** 0.75)
    return la, mu


class Baseline:
    """The origin's step, eager (and optionally the same step in a plain tf.function, a
    reference point, not a target), on its own input; built under the float32 policy."""

    def __init__(self, data, batch_size: int, train_examples: int, with_tf_function: bool):
        keras.mixed_precision.set_global_policy("float32")
        self.origin = OriginBaseline()
        n = min(train_examples, len(data.source_x))
        self.iterator = iter(origin_dataset(data.source_x[:n], data.source_y[:n],
                                            data.target_x[:n], data.target_y[:n], batch_size))
        self.test = origin_test_sets(data.test_sets)
        self.test_size = int(self.test[0].shape[0])
        self.la, self.mu = origin_factors()
        self.function_step = tf.function(self.origin.train_step) if with_tf_function else None

    def steps_per_sec(self, steps: int, step_fn: Callable | None = None) -> float:
        """Runs `steps` steps of `step_fn` (default: the eager step); steps per second."""
        step_fn = step_fn or self.origin.train_step
        start = time.perf_counter()
        for _ in range(steps):
            data = next(self.iterator)
            losses = step_fn(data[0], data[1], data[2], data[3], self.la, self.mu)
        float(losses[0])
        return steps / (time.perf_counter() - start)

    def function_steps_per_sec(self, steps: int) -> float:
        return self.steps_per_sec(steps, self.function_step)

    def warm_up(self, steps: int) -> None:
        """Fills the shuffle buffer, runs the ops once, traces the tf.function."""
        self.steps_per_sec(steps)
        self.origin.get_test_acc(*(t[:8] for t in self.test))  # builds nothing new
        if self.function_step is not None:
            self.function_steps_per_sec(steps)

    def evaluate(self, loop_examples: int) -> tuple[tuple[float, float, int], float]:
        """One evaluation: ((forward seconds, loop seconds, samples looped over), CPU
        seconds for the whole test sets). A loop over a subset is scaled to the whole
        test set for the CPU time (its cost per sample is constant)."""
        _, forward, loop, looped = self.origin.get_test_acc(*self.test,
                                                            loop_examples=loop_examples)
        return (forward[0], loop[0], looped), forward[1] + loop[1] * self.test_size / looped
