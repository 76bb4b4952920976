"""The networks methods are built from, and the gradient reversal layer.

Architecture of Ganin et al. (JMLR 2016, section 5.2) for MNIST -> MNIST-M; the `bn`
heads are the origin script's BatchNorm/LeakyReLU MLPs. Heads output logits: the
softmax/sigmoid live in the losses (numerically stable) and in the export. Image shape
and class count come from the dataset pair; which networks a run has, from its method.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf
from keras import layers

from dann_dist.data import pairs
from dann_dist.methods import registry


@tf.custom_gradient
def reverse_gradient(x, lam):
    """Identity forward; multiplies the incoming gradient by -lam backward."""
    def grad(upstream):
        # Features may be float16/bfloat16 under mixed precision; lam is float32.
        return -tf.cast(lam, upstream.dtype) * upstream, None
    return tf.identity(x), grad


class Standardize(layers.Layer):
    """Per-image standardisation: zero mean and unit variance over `axes` of each image
    (image: height, width and channels; channel: height and width, i.e. instance norm).
    Computed in float32; the floor on the std is tf.image.per_image_standardization's, so
    a blank image gives zeros, not NaN."""

    def __init__(self, per_channel: bool, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.per_channel = per_channel

    def call(self, x):
        axes = [1, 2] if self.per_channel else [1, 2, 3]
        count = 1
        for axis in axes:
            count *= x.shape[axis]
        mean = tf.reduce_mean(x, axis=axes, keepdims=True)
        std = tf.math.reduce_std(x, axis=axes, keepdims=True)
        return (x - mean) / tf.maximum(std, 1.0 / count ** 0.5)

    def get_config(self):
        return {**super().get_config(), "per_channel": self.per_channel}


def feature_extractor(image_shape: tuple, input_norm: str = "none", batchnorm: bool = False,
                      width: float = 1.0, synchronized: bool = False) -> keras.Model:
    """The paper's extractor (defaults), or the strong recipe's variants of it."""
    head = []
    if input_norm != "none":
        head.append(Standardize(per_channel=input_norm == "channel", name="standardize"))
    body = []
    for filters in (32, 48):
        # The paper's conv -> ReLU -> max-pool, computed as conv -> max-pool -> ReLU: the
        # same function and gradients (ReLU is monotone, so it commutes with max), with ReLU
        # and its gradient on a quarter of the values; 2-3% faster per step on CPU
        # (BENCHMARKS.md). BatchNorm goes before the pool, on the convolution's output.
        body.append(layers.Conv2D(max(1, round(filters * width)), 5, use_bias=not batchnorm))
        if batchnorm:
            body.append(layers.BatchNormalization(synchronized=synchronized))
        body += [layers.MaxPool2D(2, 2), layers.ReLU()]
    return keras.Sequential([keras.Input(tuple(image_shape)), *head, *body, layers.Flatten()],
                            name="feature_extractor")


def _bn_block(units: int, synchronized: bool) -> list:
    return [layers.Dense(units, use_bias=False),
            layers.BatchNormalization(synchronized=synchronized),
            layers.LeakyReLU()]


def label_classifier(feature_dim: int, num_classes: int, head: str = "paper",
                     synchronized: bool = False) -> keras.Model:
    if head == "paper":
        hidden = [layers.Dense(100, activation="relu"), layers.Dense(100, activation="relu")]
    else:
        hidden = _bn_block(100, synchronized) + _bn_block(100, synchronized)
    # float32 logits keep the softmax stable under mixed precision.
    return keras.Sequential([keras.Input((feature_dim,)), *hidden,
                             layers.Dense(num_classes, dtype="float32")], name="label_classifier")


def domain_discriminator(input_dim: int, head: str = "paper",
                         synchronized: bool = False) -> keras.Model:
    if head == "paper":
        hidden = [layers.Dense(100, activation="relu")]
    else:
        hidden = [block for units in (256, 128, 64, 32) for block in _bn_block(units, synchronized)]
    return keras.Sequential([keras.Input((input_dim,)), *hidden,
                             layers.Dense(1, dtype="float32")], name="domain_discriminator")


@contextlib.contextmanager
def precision_policy(name: str):
    """Within the block, Keras builds layers that compute in `name` (e.g. the precision a
    run trained with, so that re-evaluating it reproduces its metrics); restored after."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def models_for(config, sync_batchnorm: bool | None = None) -> dict:
    """The networks of the config's method, for its dataset pair: name -> Keras model
    (sync_batchnorm: the config's unless given)."""
    sync = config.sync_batchnorm if sync_batchnorm is None else sync_batchnorm
    pair = pairs.get(config.pair)
    return registry.get(config.adaptation).build_models(config, pair.image_shape,
                                                         pair.num_classes, sync)
