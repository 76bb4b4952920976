"""The gradient noise scale estimator on problems whose noise is known analytically.

Mean estimation: per-example gradients g_i = G + s * z_i (z_i standard normal), so
|G|^2 and tr(Sigma) = sum(s^2) are known exactly. Linear regression through real TF
gradients: x ~ N(0, I_D), y = x.w* + eps, eps ~ N(0, sigma^2), loss 0.5 (x.w - y)^2; with
d = w - w*, G = d and (Isserlis) Sigma = d d^T + (|d|^2 + sigma^2) I, so
tr(Sigma) = |d|^2 + D (|d|^2 + sigma^2)."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from dann_dist.noise_scale import (
    NoiseScaleEMA,
    simple_noise_scale,
    squared_norms,
    two_batch_estimate,
)

DIM = 16
TRUE_G = np.full(DIM, 0.25)  # |G|^2 = 1
SCALES = np.linspace(0.5, 1.5, DIM)  # anisotropic noise
TRUE_GRAD_SQ = float(TRUE_G @ TRUE_G)
TRUE_TRACE = float(SCALES @ SCALES)


def _example_grads(rng, shape):
    return TRUE_G + SCALES * rng.standard_normal((*shape, DIM))


def _assert_unbiased(estimates, truth, max_relative_error):
    """Mean within 4 standard errors of the truth, and the standard error small enough
    that a biased estimator (off by max_relative_error) could not pass."""
    standard_error = estimates.std() / math.sqrt(estimates.size)
    assert standard_error < max_relative_error * truth / 4
    assert abs(estimates.mean() - truth) < 4 * standard_error


def test_replica_estimate_is_unbiased_for_both_terms():
    # 4 replicas of 8 examples: G_s per replica, G_b the all-reduced mean, 4000 draws.
    rng = np.random.default_rng(0)
    replicas, per_replica = 4, 8
    grads = _example_grads(rng, (4000, replicas, per_replica))
    small = grads.mean(axis=2)
    big = small.mean(axis=1)
    small_sq = (small ** 2).sum(-1).mean(axis=1)
    big_sq = (big ** 2).sum(-1)
    estimate = two_batch_estimate(small_sq, big_sq, per_replica, replicas * per_replica)
    _assert_unbiased(estimate.grad_sq, TRUE_GRAD_SQ, 0.05)
    _assert_unbiased(estimate.trace_sigma, TRUE_TRACE, 0.05)
    # The large batch's own |G_b|^2 overshoots |G|^2 by tr(Sigma)/b_b (here +55%): the
    # correction above is what the tolerance tests.
    assert big_sq.mean() > TRUE_GRAD_SQ * 1.4


def test_half_batch_estimate_on_one_device():
    rng = np.random.default_rng(1)
    batch = 32
    grads = _example_grads(rng, (4000, 2, batch // 2))
    halves = grads.mean(axis=2)
    full = grads.reshape(4000, batch, DIM).mean(axis=1)  # the full batch's own gradient
    np.testing.assert_allclose(full, halves.mean(axis=1), rtol=1e-12, atol=1e-12)
    estimate = two_batch_estimate((halves ** 2).sum(-1).mean(axis=1), (full ** 2).sum(-1),
                                  batch // 2, batch)
    _assert_unbiased(estimate.grad_sq, TRUE_GRAD_SQ, 0.06)
    _assert_unbiased(estimate.trace_sigma, TRUE_TRACE, 0.06)
    # Averaged terms give B_simple; within 10% of tr(Sigma)/|G|^2 = 17.5.
    ratio = simple_noise_scale(estimate.trace_sigma.mean(), estimate.grad_sq.mean())
    assert ratio == pytest.approx(TRUE_TRACE / TRUE_GRAD_SQ, rel=0.1)


def test_estimate_checks_batch_sizes_and_handles_nonpositive_grad_sq():
    with pytest.raises(ValueError, match="b_big > b_small"):
        two_batch_estimate(1.0, 0.5, 32, 32)
    with pytest.raises(ValueError, match="b_big > b_small"):
        two_batch_estimate(1.0, 0.5, 0, 32)
    # |G_s|^2 = 2, |G_b|^2 = 1 at b = 1, 2: |G|^2 = 0 (no scale), tr(Sigma) = 2.
    estimate = two_batch_estimate(2.0, 1.0, 1, 2)
    assert (estimate.grad_sq, estimate.trace_sigma) == (0.0, 2.0)
    assert math.isnan(estimate.b_simple)
    assert two_batch_estimate(2.0, 1.5, 1, 2).b_simple == pytest.approx(1.0)


def test_estimate_on_tf_tensors_inside_a_tf_function():
    @tf.function
    def estimate(small, big):
        result = two_batch_estimate(small, big, 8, 32)
        return result.grad_sq, result.trace_sigma, result.b_simple

    small = tf.constant([3.0, 1.0])
    big = tf.constant([1.5, 0.2])  # the second: (32 * 0.2 - 8 * 1) / 24 < 0
    grad_sq, trace, ratio = (t.numpy() for t in estimate(small, big))
    reference = two_batch_estimate(small.numpy(), big.numpy(), 8, 32)
    np.testing.assert_allclose(grad_sq, reference.grad_sq, rtol=1e-6)
    np.testing.assert_allclose(trace, reference.trace_sigma, rtol=1e-6)
    assert ratio[0] == pytest.approx(reference.b_simple[0], rel=1e-6) and ratio[0] > 0
    assert grad_sq[1] < 0 and math.isnan(ratio[1])


def test_squared_norms_over_groups_of_tensors():
    rng = np.random.default_rng(2)
    shapes = [(3, 4), (4,), (2, 2, 2)]
    replicas = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    big = [np.mean(parts, axis=0) for parts in zip(*replicas)]
    small_sq, big_sq = squared_norms([[tf.constant(g) for g in r] for r in replicas],
                                     [tf.constant(g) for g in big])
    expected_small = np.mean([sum((g.astype(np.float64) ** 2).sum() for g in r)
                              for r in replicas])
    assert small_sq.dtype == tf.float32 and big_sq.dtype == tf.float32
    assert float(small_sq) == pytest.approx(expected_small, rel=1e-5)
    assert float(big_sq) == pytest.approx(sum((g ** 2).sum() for g in big), rel=1e-5)
    # A variable outside the group's path has no gradient; bfloat16 is squared in float32.
    with_none = squared_norms([[None, tf.constant([3.0, 4.0], tf.bfloat16)]],
                              [None, tf.constant([0.0, 1.0])])
    assert [float(v) for v in with_none] == [25.0, 1.0]
    with pytest.raises(ValueError):
        squared_norms([], big)


def _regression_gradients(rng, draws, batch, dim, d_norm_sq, noise_var):
    """Per draw: the gradients of two half-batch losses and of the full-batch loss, each a
    list over two variables (the columns split in two groups of the model), via TF."""
    true_w = rng.standard_normal((draws, dim))
    offset = rng.standard_normal((draws, dim))
    offset *= np.sqrt(d_norm_sq) / np.linalg.norm(offset, axis=1, keepdims=True)
    x = tf.constant(rng.standard_normal((draws, batch, dim)), tf.float32)
    y = tf.einsum("nbd,nd->nb", x, tf.constant(true_w, tf.float32)) + tf.constant(
        rng.normal(0.0, math.sqrt(noise_var), (draws, batch)), tf.float32)
    start = (true_w + offset).astype(np.float32)
    parts = [tf.Variable(start[:, : dim // 2]), tf.Variable(start[:, dim // 2:])]

    def grads(rows):
        # Rows of one draw touch only that draw's weights: the gradient of the sum over
        # draws holds each draw's own gradient in its row.
        with tf.GradientTape() as tape:
            pred = tf.einsum("nbd,nd->nb", tf.gather(x, rows, axis=1), tf.concat(parts, 1))
            loss = tf.reduce_sum(tf.reduce_mean(0.5 * (pred - tf.gather(y, rows, axis=1)) ** 2,
                                                axis=1))
        return tape.gradient(loss, parts)

    half = batch // 2
    return grads(np.arange(half)), grads(np.arange(half, batch)), grads(np.arange(batch))


def _rows_sq(grads):
    return sum((g.numpy().astype(np.float64) ** 2).sum(axis=1) for g in grads)


def test_squared_norms_on_linear_regression_gradients():
    dim, batch, d_norm_sq, noise_var, draws = 64, 64, 1.0, 1.0, 400
    first, second, full = _regression_gradients(np.random.default_rng(3), draws, batch, dim,
                                                d_norm_sq, noise_var)
    # The estimates are linear in the squared norms, and the squared norm of all draws'
    # gradients together is the sum of each draw's: one call gives the mean estimate.
    small_sq, big_sq = squared_norms([first, second], full)
    mean = two_batch_estimate(float(small_sq) / draws, float(big_sq) / draws, batch // 2, batch)
    # Each draw's own estimate (numpy) for the spread around the mean, and as a check.
    per_draw = two_batch_estimate((_rows_sq(first) + _rows_sq(second)) / 2, _rows_sq(full),
                                  batch // 2, batch)
    assert mean.trace_sigma == pytest.approx(per_draw.trace_sigma.mean(), rel=1e-4)
    true_trace = d_norm_sq + dim * (d_norm_sq + noise_var)  # 129
    _assert_unbiased(per_draw.trace_sigma, true_trace, 0.1)
    _assert_unbiased(per_draw.grad_sq, d_norm_sq, 0.2)
    assert mean.b_simple == pytest.approx(true_trace / d_norm_sq, rel=0.1)


def _noisy_stream(steps, seed=4):
    """Half-batch estimates at B = 8 and tr(Sigma)/|G|^2 = 17.5: per step, |G|^2 is
    negative about a fifth of the time."""
    rng = np.random.default_rng(seed)
    halves = _example_grads(rng, (steps, 2, 4)).mean(axis=2)
    full = halves.mean(axis=1)
    return two_batch_estimate((halves ** 2).sum(-1).mean(axis=1), (full ** 2).sum(-1), 4, 8)


def test_ema_smooths_terms_before_dividing():
    stream = _noisy_stream(3000)
    assert (stream.grad_sq < 0).mean() > 0.15
    truth = TRUE_TRACE / TRUE_GRAD_SQ
    # Averaging per-step ratios is no estimate at all (mean 14x the truth here).
    assert np.nanmean(stream.b_simple) > 5 * truth
    ema = NoiseScaleEMA(decay=0.998)
    for grad_sq, trace in zip(stream.grad_sq, stream.trace_sigma):
        assert ema.update(grad_sq, trace)
    assert ema.count == 3000
    assert ema.b_simple == pytest.approx(truth, rel=0.15)
    assert ema.b_simple == pytest.approx(ema.trace_sigma / ema.grad_sq, rel=1e-12)


def test_ema_bias_correction_skip_and_state_round_trip():
    ema = NoiseScaleEMA(decay=0.9)
    assert math.isnan(ema.b_simple) and math.isnan(ema.grad_sq)
    ema.update(2.0, 10.0)
    # Zero-initialised but bias-corrected: the first reading is the first estimate.
    assert (ema.grad_sq, ema.trace_sigma, ema.b_simple) == pytest.approx((2.0, 10.0, 5.0))
    assert not ema.update(math.inf, 1.0) and not ema.update(1.0, math.nan)
    assert ema.count == 1

    stream = _noisy_stream(200, seed=5)
    whole, resumed = NoiseScaleEMA(0.95), NoiseScaleEMA(0.95)
    for i, (grad_sq, trace) in enumerate(zip(stream.grad_sq, stream.trace_sigma)):
        whole.update(grad_sq, trace)
        if i == 99:  # a checkpoint: through JSON and back
            resumed = NoiseScaleEMA.from_state(json.loads(json.dumps(resumed.state())))
        resumed.update(grad_sq, trace)
    assert resumed.state() == whole.state()
    assert resumed.b_simple == whole.b_simple
    with pytest.raises(ValueError):
        NoiseScaleEMA.from_state({"decay": 0.9, "grad_sq_average": 1.0})
    with pytest.raises(ValueError):
        NoiseScaleEMA(decay=1.0)
