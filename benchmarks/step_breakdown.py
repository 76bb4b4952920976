r"""Where a train step's time goes: times the parts of the package's step on constant
inputs (no input pipeline), each as its own tf.function, best of 3 rounds.

  .venv/bin/python benchmarks/step_breakdown.py [--precision=mixed_bfloat16] [--batch_size=128]

Prints milliseconds per call and, for the convolutions, the achieved GFLOP/s (2 FLOPs
per multiply-accumulate of the forward pass, weight gradient and, for conv2, input
gradient). BENCHMARKS.md quotes its output.
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf
from absl import app, flags

from dann_dist import distribute
from dann_dist import models as models_lib
from dann_dist import step as step_lib
from dann_dist.config import Config

flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16"], "Compute precision.")
flags.DEFINE_integer("batch_size", 128, "Images per domain (the step sees twice as many).")
flags.DEFINE_integer("calls", 60, "Calls per round.")
FLAGS = flags.FLAGS


def report(name, fn, gflop=None):
    """Prints the best of 3 rounds of FLAGS.calls calls of fn (after 5 warm-up calls)."""
    for _ in range(5):
        fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(FLAGS.calls):
            out = fn()
        tf.nest.flatten(out)[0].numpy()
        best = min(best, (time.perf_counter() - start) / FLAGS.calls)
    rate = f"  {gflop / best:6.0f} GFLOP/s" if gflop else ""
    print(f"{name:52s} {best * 1e3:7.2f} ms{rate}", flush=True)


def time_step_parts(models, state, config, batch):
    """The whole step, its gradient computation, its updates, the extractor alone."""
    n = FLAGS.batch_size
    step = step_lib.make_train_step(state, config, distribute.SingleDevice("benchmark"))
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    report("whole step (constant batch from tf.data)", lambda: step(iterator, tf.constant(0.0)))
    compute = step_lib.make_compute_gradients(models, config, n)
    args = (tf.constant(0.5), tf.constant(3, tf.int64), tf.constant(1.0))
    report("  forward + all gradients, no update", tf.function(lambda: compute(batch, *args)))
    zeros = [tf.zeros_like(v) for m in models.values() for v in m.trainable_variables]
    report("  optimizer updates of the three models", tf.function(
        lambda: (step_lib.apply_gradients(state, zeros), tf.constant(0))[1]))

    images = tf.concat([batch["source_images"], batch["target_images"]], 0)
    extractor = models["extractor"]

    @tf.function
    def extractor_grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(extractor(images, training=True), tf.float32))
        return tape.gradient(loss, extractor.trainable_variables)
    report(f"  extractor forward + weight gradients ({2 * n} images)", extractor_grads)
    return images


def _conv_pool_relu_sum(x, kernel, dtype):
    y = tf.nn.max_pool2d(tf.nn.conv2d(x, tf.cast(kernel, dtype), 1, "VALID"), 2, 2, "VALID")
    return tf.reduce_sum(tf.cast(tf.nn.relu(y), tf.float32))


def time_convolutions(images, dtype):
    """The extractor's two convolutions alone (conv1 on 3- and 1-channel images)."""
    b = 2 * FLAGS.batch_size
    for channels in (3, 1):
        x = tf.cast(images[..., :channels], dtype)
        kernel = tf.Variable(tf.random.normal([5, 5, channels, 32]) * 0.1)

        @tf.function
        def conv1(x=x, kernel=kernel):
            with tf.GradientTape() as tape:
                loss = _conv_pool_relu_sum(x, kernel, dtype)
            return tape.gradient(loss, kernel)
        flop = 2 * 2 * b * 24 * 24 * 32 * 25 * channels / 1e9
        report(f"    conv1 {channels}->32 (+pool, ReLU) forward + weight grad", conv1, flop)

    h = tf.cast(tf.random.uniform([b, 12, 12, 32]), dtype)
    kernel2 = tf.Variable(tf.random.normal([5, 5, 32, 48]) * 0.05)

    @tf.function
    def conv2():
        with tf.GradientTape() as tape:
            tape.watch(h)
            loss = _conv_pool_relu_sum(h, kernel2, dtype)
        return tape.gradient(loss, [h, kernel2])
    report("    conv2 32->48 (+pool, ReLU) forward + weight + input grad", conv2,
           3 * 2 * b * 8 * 8 * 48 * 25 * 32 / 1e9)


def main(argv):
    del argv
    keras.mixed_precision.set_global_policy(FLAGS.precision)
    dtype = tf.bfloat16 if FLAGS.precision == "mixed_bfloat16" else tf.float32
    n = FLAGS.batch_size
    config = Config(model_dir="/tmp/unused", batch_size=n, precision=FLAGS.precision,
                    strategy="single")
    models = models_lib.models_for(config)
    state = step_lib.create_state(models, config)
    batch = {"source_images": tf.random.uniform([n, 28, 28, 3]),
             "source_labels": tf.random.uniform([n], 0, 10, tf.int64),
             "target_images": tf.random.uniform([n, 28, 28, 3])}
    images = time_step_parts(models, state, config, batch)
    time_convolutions(images, dtype)


if __name__ == "__main__":
    app.run(main)
