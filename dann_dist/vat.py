"""Virtual adversarial training (VAT; Miyato et al., TPAMI 2018), as VADA uses it.

VAT penalises how much the prediction moves inside an L2 ball of radius epsilon around each
input: KL(p(x) || p(x + r_adv)), where r_adv approximates the direction that increases the KL
most, by one power iteration from a random direction d with a finite-difference step xi.
VADA (Shu et al., ICLR 2018, "A DIRT-T approach to unsupervised domain adaptation") adds this
penalty on the source batch and on the target batch (next to the target's conditional
entropy); DIRT-T's refinement phase keeps it on the target.

xi and epsilon are the caller's flags. For reference, the authors' released code
(github.com/RuiShu/dirt-t) fixes xi at 1e-6 and defaults the radius to 3.5, on 32x32x3 inputs
with instance normalisation on by default; the paper's per-task settings are not restated here.
epsilon is a radius over the WHOLE input, so the per-pixel size of r_adv is about
epsilon / sqrt(pixels * channels).

Precision: the inner step evaluates the model at x + xi * d with |d| = 1 per example, so each
element moves by about xi / sqrt(D). Where that is below the rounding of x in the dtype the
model computes in (float32: ~1e-7 relative; bfloat16, the first layer's compute dtype under
mixed_bfloat16: ~4e-3 relative), the finite difference is mostly rounded away and the direction
comes from rounding noise. Choose xi with the precision in mind.

BatchNorm: `logits_fn` is the caller's closure and decides the mode (VADA calls the classifier
in training mode) and whether its two extra calls per batch update moving statistics. Each
example's perturbation is computed from its own KL only if the model treats examples
independently; batch statistics in training mode couple them slightly.
"""

from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

# Floor of the normalisation's divisions: the smallest normal float32, so that only an
# all-zero example (which stays zero) ever meets it.
_TINY = 1.1754944e-38


def normalize_per_example(d: tf.Tensor) -> tf.Tensor:
    """d / ||d||, the L2 norm over all axes but the first, in float32.

    The gradient of the inner KL at a tiny xi can be ~1e-10 per element, whose squares underflow
    float32 (and tf.math.l2_normalize's 1e-12 floor would then shrink the result below unit
    norm); dividing by the largest |element| first keeps the sum of squares in [1, size]."""
    d = tf.cast(d, tf.float32)
    axes = list(range(1, d.shape.rank))
    d = d / tf.maximum(tf.reduce_max(tf.abs(d), axis=axes, keepdims=True), _TINY)
    return d * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(d), axis=axes, keepdims=True),
                                        _TINY))


def stateless_standard_normal(shape, seed: tf.Tensor) -> tf.Tensor:
    """N(0, 1) float32 draws of `shape`, a function of `seed` (shape [2] int) alone, the same
    with and without XLA.

    tf.random.stateless_normal and stateless_uniform(float32) give other numbers under
    jit_compile than in the TF kernel (TF 2.21, CPU; tests/test_vat.py checks ours), while
    Philox's raw uint32 bits agree; so the normals are made from the bits here (the cosine
    half of Box-Muller), equal up to the last bits of log/cos between compilers."""
    shape = tf.concat([[2], tf.cast(shape, tf.int32)], axis=0)
    bits = tf.random.stateless_uniform(shape, seed=seed, minval=None, maxval=None,
                                       dtype=tf.uint32, alg="philox")
    # The top 24 bits: exact in float32; u1 in (0, 1] keeps the log finite.
    steps = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32)
    u1, u2 = (steps[0] + 1.0) * 2.0 ** -24, steps[1] * 2.0 ** -24
    return tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * math.pi * u2)


def _kl_sum(target_log_p: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Sum over examples of KL(p || softmax(logits)), from log-probabilities in float32 (bfloat16
    logits would lose the small differences VAT measures)."""
    log_q = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    return tf.reduce_sum(tf.exp(target_log_p) * (target_log_p - log_q))


def _perturbed(x: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    return x + tf.cast(r, x.dtype)


def _target_log_probs(logits: tf.Tensor) -> tf.Tensor:
    # The clean prediction is a fixed target: VAT smooths the model around it, it does not pull
    # the clean prediction towards the perturbed one.
    return tf.nn.log_softmax(tf.stop_gradient(tf.cast(logits, tf.float32)))


def adversarial_perturbation(logits_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor,
                             logits: tf.Tensor, *, xi: float, epsilon: float,
                             seed: tf.Tensor | None = None,
                             direction: tf.Tensor | None = None) -> tf.Tensor:
    """r_adv (float32, x's shape, a constant to any outer tape): one power iteration from
    d ~ N(0, I), either `direction` (drawn by the caller, e.g. the input pipeline, per global
    batch) or drawn statelessly from `seed` (shape [2] int; see stateless_standard_normal),
    each example's r_adv of L2 norm epsilon. `logits` are the clean logits of x that the KL is
    measured against."""
    target_log_p = _target_log_probs(logits)
    if direction is None:
        direction = stateless_standard_normal(tf.shape(x), seed)
    r = xi * normalize_per_example(direction)
    # Its own tape: the gradient is w.r.t. r only. A sum, not a mean, over examples: each
    # example's direction is normalised on its own, and a larger KL is further from underflow.
    with tf.GradientTape() as tape:
        tape.watch(r)
        kl = _kl_sum(target_log_p, logits_fn(_perturbed(x, r)))
    grad = tape.gradient(kl, r)
    if grad is None:
        raise ValueError("vat: logits_fn's output does not depend on its input")
    # stop_gradient: an outer tape records the inner gradient's ops too, and r_adv must enter
    # the loss as a constant (how the direction depends on the weights is not differentiated).
    return epsilon * normalize_per_example(tf.stop_gradient(grad))


def vat_loss(logits_fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, logits: tf.Tensor, *,
             xi: float, epsilon: float, reduction_count, seed: tf.Tensor | None = None,
             direction: tf.Tensor | None = None) -> tf.Tensor:
    """Sum over this replica's examples of KL(p(x) || p(x + r_adv)), divided by
    `reduction_count` (the GLOBAL batch: summed over replicas, it is the global mean).

    logits_fn(images) -> logits is the model as the caller wants it called (training mode in
    VADA); `logits` are its clean logits of x, a stop-gradient target. The loss's gradient
    reaches the weights only through logits_fn(x + r_adv). Usable in a tf.function (XLA
    included) and under an outer tf.GradientTape; `seed` is a shape-[2] int tensor that the
    caller derives per step and replica, or `direction` the random d itself."""
    target_log_p = _target_log_probs(logits)
    r_adv = adversarial_perturbation(logits_fn, x, logits, xi=xi, epsilon=epsilon, seed=seed,
                                     direction=direction)
    kl = _kl_sum(target_log_p, logits_fn(_perturbed(x, r_adv)))
    return kl / tf.cast(reduction_count, tf.float32)
