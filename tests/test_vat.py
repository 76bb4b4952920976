"""dann_dist.vat against an independent computation: for a linear softmax model
logits = x W + b, the power iteration's direction, the penalty and its gradient w.r.t. W and b
have closed forms, computed here in float64 numpy."""

import numpy as np
import pytest
import tensorflow as tf

from dann_dist import vat

N, D, K = 6, 5, 4
SEED = (3, 7)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def unit(v):
    norms = np.sqrt((v.reshape(len(v), -1) ** 2).sum(axis=1))
    return v / norms.reshape((-1,) + (1,) * (v.ndim - 1))


@pytest.fixture
def linear():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    w = (0.5 * rng.normal(size=(D, K))).astype(np.float32)
    b = (0.5 * rng.normal(size=K)).astype(np.float32)
    return x, w, b


def closed_form(x, w, b, d, *, xi, epsilon, count):
    """r_adv, the loss and its gradients w.r.t. W and b, with p(x) and r_adv held constant.
    For KL(p || softmax((x + r) W + b)) the gradient w.r.t. r is (softmax((x + r) W + b) - p) W^T
    and w.r.t. the logits it is softmax(...) - p."""
    x, w, b, d = (np.asarray(a, np.float64) for a in (x, w, b, d))
    p = softmax(x @ w + b)
    r = xi * unit(d)
    g = (softmax((x + r) @ w + b) - p) @ w.T
    r_adv = epsilon * unit(g)
    q = softmax((x + r_adv) @ w + b)
    loss = (p * (np.log(p) - np.log(q))).sum() / count
    grad_w = (x + r_adv).T @ (q - p) / count
    grad_b = (q - p).sum(axis=0) / count
    return r_adv, loss, grad_w, grad_b


def linear_vat(x, w, b, seed, xi, epsilon, count):
    """(r_adv, loss, dloss/dW, dloss/db) from dann_dist.vat. The clean logits come from the same
    W and b inside the outer tape, so a gradient leaking through p(x) or r_adv would show."""
    def model(z):
        return tf.matmul(z, w) + b

    with tf.GradientTape() as tape:
        tape.watch([w, b])
        logits = model(x)
        r_adv = vat.adversarial_perturbation(model, x, logits, xi=xi, epsilon=epsilon, seed=seed)
        loss = vat.vat_loss(model, x, logits, xi=xi, epsilon=epsilon, seed=seed,
                            reduction_count=count)
    return (r_adv, loss) + tuple(tape.gradient(loss, [w, b]))


# Tensors in, so that each compiled variant is traced once for the whole module.
MODES = {"eager": linear_vat, "function": tf.function(linear_vat),
         "xla": tf.function(linear_vat, jit_compile=True)}


def run_linear(x, w, b, *, xi, epsilon, seed=SEED, count=N, mode="eager"):
    args = [tf.constant(a, tf.float32) for a in (x, w, b)] + [tf.constant(seed, tf.int32)]
    args += [tf.constant(v, tf.float32) for v in (xi, epsilon, count)]
    return [t.numpy() for t in MODES[mode](*args)]


def numpy_normal(shape, seed):
    """The documented draw, in float64: Box-Muller's cosine half on Philox's raw bits."""
    bits = tf.random.stateless_uniform((2,) + tuple(shape), seed=seed, minval=None, maxval=None,
                                       dtype=tf.uint32, alg="philox").numpy()
    steps = (bits >> 8).astype(np.float64)
    u1, u2 = (steps[0] + 1) * 2.0 ** -24, steps[1] * 2.0 ** -24
    return np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)


def test_the_random_direction_is_the_documented_standard_normal():
    # Under XLA the same numbers: the closed-form test's xla case draws d from numpy_normal.
    d = vat.stateless_standard_normal(tf.constant([64, 2, 3]), tf.constant(SEED)).numpy()
    np.testing.assert_allclose(d, numpy_normal((64, 2, 3), SEED), rtol=1e-5, atol=1e-6)
    many = vat.stateless_standard_normal([200_000], tf.constant([1, 2])).numpy()
    assert abs(many.mean()) < 0.01 and abs(many.std() - 1) < 0.01
    assert np.mean(np.abs(many) > 1.959964) == pytest.approx(0.05, abs=0.003)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_perturbation_loss_and_gradients_match_the_closed_form(linear, mode):
    x, w, b = linear
    xi, epsilon, count = 0.5, 0.7, 2 * N  # count: a global batch of two replicas
    d = numpy_normal(x.shape, SEED)
    want = closed_form(x, w, b, d, xi=xi, epsilon=epsilon, count=count)
    got = run_linear(x, w, b, xi=xi, epsilon=epsilon, count=count, mode=mode)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-5, atol=1e-7)


def test_a_seed_fixes_the_perturbation_and_another_seed_changes_it(linear):
    x, w, b = linear
    first = run_linear(x, w, b, xi=0.5, epsilon=0.7)
    again = run_linear(x, w, b, xi=0.5, epsilon=0.7)
    for a, b_ in zip(first, again):
        np.testing.assert_array_equal(a, b_)
    other = run_linear(x, w, b, xi=0.5, epsilon=0.7, seed=(3, 8))
    cosines = (first[0] * other[0]).sum(axis=1) / 0.7 ** 2
    assert np.all(cosines < 0.999), cosines


def test_the_penalty_vanishes_quadratically_as_epsilon_goes_to_zero(linear):
    x, w, b = linear
    small, half = (run_linear(x, w, b, xi=0.5, epsilon=e)[1] for e in (2e-2, 1e-2))
    # KL(p || p(x + r)) is second order in r at r = 0.
    assert 0 < half < 1e-4
    assert small / half == pytest.approx(4.0, rel=0.05)


def test_the_sum_is_divided_by_reduction_count(linear):
    x, w, b = linear
    one = run_linear(x, w, b, xi=0.5, epsilon=0.7, count=1)
    many = run_linear(x, w, b, xi=0.5, epsilon=0.7, count=64)
    np.testing.assert_allclose(many[1] * 64, one[1], rtol=1e-6)
    np.testing.assert_allclose(many[2] * 64, one[2], rtol=1e-5, atol=1e-7)


def test_every_example_is_perturbed_by_exactly_epsilon_at_a_tiny_xi():
    # Images of scales 1e-3 to 0.3 (small enough that x + 1e-6 d is not rounded back to x) and
    # xi = 1e-6: the inner gradient's squares (~1e-15 summed) fall below
    # tf.math.l2_normalize's 1e-12 floor, and one global normalisation would give the examples
    # different norms.
    rng = np.random.default_rng(1)
    scales = np.array([1e-3, 1e-2, 0.1, 0.3], np.float32).reshape(-1, 1, 1, 1)
    images = tf.constant(rng.normal(size=(4, 3, 3, 2)).astype(np.float32) * scales)
    w = tf.constant((0.3 * rng.normal(size=(18, K))).astype(np.float32))

    def model(z):
        return tf.matmul(tf.reshape(z, [-1, 18]), w)

    r_adv = vat.adversarial_perturbation(model, images, model(images), xi=1e-6, epsilon=2.5,
                                         seed=tf.constant([5, 5]))
    assert r_adv.shape == images.shape
    norms = np.sqrt((r_adv.numpy().astype(np.float64) ** 2).reshape(4, -1).sum(axis=1))
    np.testing.assert_allclose(norms, 2.5, rtol=1e-5)


def test_normalisation_survives_underflow_and_overflow_of_the_squares():
    d = np.ones((4, 2, 3), np.float32) * np.array([1e-20, 1.0, 1e20, 0.0],
                                                   np.float32).reshape(-1, 1, 1)
    unit_d = vat.normalize_per_example(tf.constant(d)).numpy()
    norms = np.sqrt((unit_d ** 2).reshape(4, -1).sum(axis=1))
    np.testing.assert_allclose(norms, [1.0, 1.0, 1.0, 0.0], rtol=1e-6)


def test_bfloat16_logits_give_a_float32_penalty_close_to_float32s(linear):
    x, w, b = linear

    def model(z, dtype):
        return tf.cast(tf.matmul(z, w) + b, dtype)

    losses = [vat.vat_loss(lambda z, t=t: model(z, t), tf.constant(x), model(x, t), xi=0.5,
                           epsilon=0.7, seed=tf.constant(SEED), reduction_count=N)
              for t in (tf.float32, tf.bfloat16)]
    assert losses[1].dtype == tf.float32
    assert float(losses[1]) == pytest.approx(float(losses[0]), rel=0.05)
