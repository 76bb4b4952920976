"""The paper's schedules, the gradient reversal layer, the architecture and the objective."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dann_dist import schedules
from dann_dist.models import models_for, reverse_gradient
from dann_dist.step import make_compute_gradients

from synthetic import assert_group_gradients, tiny_config


def networks(tmp_path, **overrides):
    """The networks a config with these flags builds (paper heads by default)."""
    return models_for(tiny_config(tmp_path, **overrides))


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward(lam):
    x = tf.constant([[1.0, -2.0, 3.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = reverse_gradient(x, tf.constant(lam))
        loss = tf.reduce_sum(y * tf.constant([[2.0, 5.0, -1.0]]))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(),
                               [[-2.0 * lam, -5.0 * lam, 1.0 * lam]])


@pytest.mark.parametrize("p, expected", [(0.0, 0.0), (0.5, 2 / (1 + math.exp(-5)) - 1),
                                         (1.0, 2 / (1 + math.exp(-10)) - 1)])
def test_adaptation_factor_matches_paper(p, expected):
    factor = float(schedules.adaptation_factor(tf.constant(p), gamma=10.0))
    assert factor == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("step, expected", [(0, 0.01), (500, 0.01 / 6 ** 0.75),
                                            (1000, 0.01 / 11 ** 0.75),
                                            (5000, 0.01 / 11 ** 0.75)])
def test_annealed_learning_rate_matches_paper_and_stops_at_p_1(step, expected):
    schedule = schedules.AnnealedLearningRate(0.01, total_steps=1000, alpha=10.0, beta=0.75)
    assert float(schedule(tf.constant(step))) == pytest.approx(expected, rel=1e-6)


def test_paper_architecture_shapes_and_sizes(tmp_path):
    models = networks(tmp_path)
    features = models["extractor"](tf.zeros([2, 28, 28, 3]))
    assert features.shape == (2, 4 * 4 * 48)
    assert models["classifier"](features).shape == (2, 10)
    assert models["discriminator"](features).shape == (2, 1)
    # conv 5x5x3x32 + 5x5x32x48, dense 768-100-100-10, dense 768-100-1 (with biases).
    assert models["extractor"].count_params() == (5 * 5 * 3 * 32 + 32) + (5 * 5 * 32 * 48 + 48)
    assert models["classifier"].count_params() == ((768 * 100 + 100) + (100 * 100 + 100)
                                                + (100 * 10 + 10))
    assert models["discriminator"].count_params() == (768 * 100 + 100) + (100 + 1)


def test_extractor_is_the_papers_conv_relu_pool_in_value_and_gradient(tmp_path):
    # The extractor pools before its ReLU (faster); it must equal conv -> ReLU -> pool.
    extractor = networks(tmp_path)["extractor"]
    x = tf.random.stateless_normal([4, 28, 28, 3], seed=[1, 2])
    w1, b1, w2, b2 = extractor.trainable_variables

    def reference(x):
        h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, w1, 1, "VALID") + b1), 2, 2, "VALID")
        h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, w2, 1, "VALID") + b2), 2, 2, "VALID")
        return tf.reshape(h, [4, -1])

    with tf.GradientTape(persistent=True) as tape:
        ours, ref = extractor(x), reference(x)
        ours_loss, ref_loss = tf.reduce_sum(ours ** 2), tf.reduce_sum(ref ** 2)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    assert np.count_nonzero(ref.numpy()) > 0
    for g_ours, g_ref in zip(tape.gradient(ours_loss, extractor.trainable_variables),
                             tape.gradient(ref_loss, extractor.trainable_variables)):
        np.testing.assert_allclose(g_ours.numpy(), g_ref.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weight", [1.0, 2.0])
def test_step_gradients_are_the_papers_objective(tmp_path, weight):
    # JMLR 2016 eq. 10: E = mean_source L_y - lambda * (mean_source L_d + mean_target L_d),
    # lambda on the extractor only; the discriminator descends the domain term. Weight 2 is
    # that sum of the two means; weight 1 (the default) their average.
    models, n, lam = networks(tmp_path), 4, 0.7
    source = tf.random.stateless_normal([n, 28, 28, 3], seed=[3, 4])
    target = tf.random.stateless_normal([n, 28, 28, 3], seed=[5, 6])
    labels = tf.constant([1, 7, 3, 3])
    compute = make_compute_gradients(models, tiny_config(tmp_path, domain_loss_weight=weight),
                                     global_batch=n)
    grads, _ = compute({"source_images": source, "source_labels": labels, "target_images": target},
                       tf.constant(lam), tf.constant(0, tf.int64), tf.constant(1.0))

    extractor, classifier, discriminator = models.values()
    with tf.GradientTape(persistent=True) as tape:
        features = extractor(tf.concat([source, target], 0))
        label_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, classifier(features[:n])))
        logits = discriminator(features)
        domain_loss = sum(tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
            tf.fill([n, 1], d), logits[i * n:(i + 1) * n])) for i, d in enumerate((0.0, 1.0)))
        domain_loss *= weight / 2
        extractor_objective = label_loss - lam * domain_loss
    assert_group_gradients(grads, tape, models, extractor_objective, label_loss, domain_loss)


@pytest.mark.parametrize("weight", [1.0, 2.0])
def test_step_gradients_are_the_flipped_label_objective(tmp_path, weight):
    # --adversarial_loss=flipped_labels (the GAN-style inverted-label loss): no reversal; the
    # extractor descends label loss + lambda * the domain loss against swapped domain labels
    # (source called target and vice versa), the discriminator descends the domain loss with
    # the true labels, the classifier the label loss. Same weighting as eq. 10's test above.
    models, n, lam = networks(tmp_path), 4, 0.7
    source = tf.random.stateless_normal([n, 28, 28, 3], seed=[7, 8])
    target = tf.random.stateless_normal([n, 28, 28, 3], seed=[9, 10])
    labels = tf.constant([2, 0, 9, 2])
    config = tiny_config(tmp_path, domain_loss_weight=weight, adversarial_loss="flipped_labels")
    compute = make_compute_gradients(models, config, global_batch=n)
    grads, _ = compute({"source_images": source, "source_labels": labels, "target_images": target},
                       tf.constant(lam), tf.constant(0, tf.int64), tf.constant(1.0))

    def domain_loss(logits, source_label, target_label):
        return weight / 2 * sum(
            tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(tf.fill([n, 1], d),
                                                                   logits[i * n:(i + 1) * n]))
            for i, d in enumerate((source_label, target_label)))

    extractor, classifier, discriminator = models.values()
    with tf.GradientTape(persistent=True) as tape:
        features = extractor(tf.concat([source, target], 0))
        label_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, classifier(features[:n])))
        logits = discriminator(features)
        true_domain_loss = domain_loss(logits, 0.0, 1.0)
        extractor_objective = label_loss + lam * domain_loss(logits, 1.0, 0.0)
    assert_group_gradients(grads, tape, models, extractor_objective, label_loss, true_domain_loss)


def test_bn_heads_are_the_origin_scripts(tmp_path):
    models = networks(tmp_path, classifier_head="bn", discriminator_head="bn")
    dense = [layer.units for layer in models["discriminator"].layers if hasattr(layer, "units")]
    assert dense == [256, 128, 64, 32, 1]
    assert any(isinstance(layer, tf.keras.layers.BatchNormalization)
               for layer in models["classifier"].layers)


@pytest.mark.parametrize("input_norm, axes", [("image", (1, 2, 3)), ("channel", (1, 2))])
def test_input_standardisation_gives_each_image_zero_mean_unit_std(tmp_path, input_norm, axes):
    extractor = networks(tmp_path, input_norm=input_norm)["extractor"]
    standardize = extractor.layers[0]
    x = tf.random.stateless_uniform([3, 28, 28, 3], seed=[1, 1]) * [[[[0.2, 0.5, 1.0]]]] + 0.3
    y = standardize(x).numpy()
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=axes), 1.0, atol=1e-4)
    # Invariant to brightness and contrast: the point of it on MNIST-M.
    np.testing.assert_allclose(standardize(3.0 * x - 0.7).numpy(), y, atol=1e-4)
    # A blank image gives zeros, not NaN; the extractor still has the paper's weights.
    assert np.all(standardize(tf.zeros([1, 28, 28, 3])).numpy() == 0.0)
    assert extractor.count_params() == networks(tmp_path)["extractor"].count_params()


def test_extractor_batchnorm_and_width(tmp_path):
    wide = networks(tmp_path, extractor_bn=True, extractor_width=2.0)["extractor"]
    convs = [layer for layer in wide.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [64, 96]
    assert not any(c.use_bias for c in convs)          # BatchNorm's offset replaces the bias
    norms = [la for la in wide.layers if isinstance(la, tf.keras.layers.BatchNormalization)]
    assert len(norms) == 2
    assert wide(tf.zeros([2, 28, 28, 3])).shape == (2, 4 * 4 * 96)


def test_models_for_builds_what_the_config_says(tmp_path):
    config = tiny_config(tmp_path, input_norm="channel", extractor_bn=True, extractor_width=1.5)
    extractor = models_for(config)["extractor"]
    assert extractor.layers[0].per_channel
    assert [layer.filters for layer in extractor.layers
            if isinstance(layer, tf.keras.layers.Conv2D)] == [48, 72]


def test_target_entropy_adds_its_ramped_gradient_and_nothing_else(tmp_path):
    # VADA's conditional entropy: lam * w * mean over the target batch of H(p(y|x)), on the
    # extractor and the classifier; the discriminator's gradient is unchanged.
    n, lam, weight = 4, 0.6, 0.3
    batch = {"source_images": tf.random.stateless_normal([n, 28, 28, 3], seed=[3, 4]),
             "source_labels": tf.constant([1, 7, 3, 3]),
             "target_images": tf.random.stateless_normal([n, 28, 28, 3], seed=[5, 6])}
    models = networks(tmp_path)
    args = (batch, tf.constant(lam), tf.constant(0, tf.int64), tf.constant(1.0))
    plain, _ = make_compute_gradients(models, tiny_config(tmp_path), n)(*args)
    with_entropy, _ = make_compute_gradients(
        models, tiny_config(tmp_path, target_entropy_weight=weight), n)(*args)

    extractor, classifier, discriminator = models.values()
    with tf.GradientTape() as tape:
        p = tf.nn.softmax(classifier(extractor(batch["target_images"])))
        entropy_term = lam * weight * tf.reduce_mean(-tf.reduce_sum(p * tf.math.log(p), -1))
    extra = tape.gradient(entropy_term,
                          extractor.trainable_variables + classifier.trainable_variables)
    extra += [tf.zeros_like(v) for v in discriminator.trainable_variables]
    assert len(with_entropy) == len(plain) == len(extra)
    for ours, base, ref in zip(with_entropy, plain, extra):
        np.testing.assert_allclose((ours - base).numpy(), ref.numpy(), rtol=1e-3, atol=1e-6)
    assert any(np.abs(ref.numpy()).max() > 1e-4 for ref in extra)
