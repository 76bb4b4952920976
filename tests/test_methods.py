"""The methods registry, CDAN's objective, and the large-batch rules of the game
(two time-scales, the adversarial path kept at its small-batch step, ramps in steps)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from dann_dist import config as config_lib
from dann_dist import step as step_lib
from dann_dist.methods import base, registry
from dann_dist.models import models_for

from synthetic import assert_group_gradients, tiny_config

N, LAM = 4, 0.7


def _batch(seed):
    return {"source_images": tf.random.stateless_normal([N, 28, 28, 3], seed=[seed, 1]),
            "source_labels": tf.constant([1, 7, 3, 3]),
            "target_images": tf.random.stateless_normal([N, 28, 28, 3], seed=[seed, 2])}


def _grads(config, models, batch, lam=LAM):
    compute = step_lib.make_compute_gradients(models, config, global_batch=N)
    return compute(batch, tf.constant(lam), tf.constant(0, tf.int64), tf.constant(1.0))


def test_every_registered_method_loads_under_its_name_and_the_flag_offers_exactly_those():
    assert set(config_lib.ADAPTATIONS) == set(registry.names())
    for name in registry.names():
        method = registry.get(name)
        assert isinstance(method, base.Method) and method.name == name
    with pytest.raises(KeyError, match="registered: dann, source_only"):
        registry.get("mdd")


def test_models_and_checkpoint_groups_follow_the_method(tmp_path):
    dann = step_lib.create_state(models_for(tiny_config(tmp_path)), tiny_config(tmp_path))
    assert list(dann.models) == ["extractor", "classifier", "discriminator"]
    assert {"extractor_optimizer", "discriminator_optimizer"} <= set(dann.trackables())
    cdan = models_for(tiny_config(tmp_path, adaptation="cdan"))
    # The discriminator sees the 768 features times the 10 class probabilities.
    assert cdan["discriminator"].input_shape == (None, 768 * 10)


def test_cdan_gradients_are_its_conditional_entropy_weighted_objective(tmp_path):
    config = tiny_config(tmp_path, adaptation="cdan")
    models, batch = models_for(config), _batch(3)
    grads, metrics = _grads(config, models, batch)
    extractor, classifier, discriminator = models.values()
    source, labels, target = batch["source_images"], batch["source_labels"], batch["target_images"]
    with tf.GradientTape(persistent=True) as tape:
        features = extractor(tf.concat([source, target], 0))
        logits = classifier(features)
        label_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, logits[:N]))
        p = tf.stop_gradient(tf.nn.softmax(logits))
        joint = tf.reshape(tf.einsum("nd,nc->ndc", features, p), [2 * N, -1])
        entropy = -tf.reduce_sum(p * tf.math.log(p), axis=-1)
        weights = 1.0 + tf.exp(-entropy)
        domain = tf.concat([tf.zeros([N]), tf.ones([N])], 0)
        xent = tf.nn.sigmoid_cross_entropy_with_logits(domain, discriminator(joint)[:, 0])
        domain_loss = tf.reduce_sum(weights * xent) / (2 * N)
        extractor_objective = label_loss - LAM * domain_loss
    assert_group_gradients(grads, tape, models, extractor_objective, label_loss, domain_loss)
    # The logged domain loss is the unweighted mean, like DANN's.
    total, count = metrics["domain_loss"]
    assert float(count) == 2 * N
    np.testing.assert_allclose(float(total) / float(count), float(tf.reduce_mean(xent)), rtol=1e-5)


def test_metrics_arrive_by_name_as_sums_and_counts(tmp_path):
    config = tiny_config(tmp_path)
    _, metrics = _grads(config, models_for(config), _batch(4))
    assert list(metrics) == ["label_loss", "domain_loss", "source_accuracy", "domain_accuracy"]
    assert [float(metrics[k][1]) for k in metrics] == [N, 2 * N, N, 2 * N]
    assert 0 <= float(metrics["source_accuracy"][0]) <= N


def test_adversary_kept_at_the_base_batch_step_is_lambda_over_k(tmp_path):
    # --scale_adversary=false at 4x the base batch with the linear rule: the extractor's
    # reversed gradient is lambda / 4 (its learning rate is 4x), the rest unchanged.
    common = dict(batch_size=64, lr_base_batch=16, lr_scaling="linear")
    kept = tiny_config(tmp_path, scale_adversary=False, **common)
    scaled = tiny_config(tmp_path, **common)
    models, batch = models_for(kept), _batch(5)
    ours, _ = _grads(kept, models, batch, LAM)
    reference, _ = _grads(scaled, models, batch, LAM / 4)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-9)
    state = step_lib.create_state(models, kept)
    rates = {name: float(o.learning_rate.numpy()) for name, o in state.optimizers.items()}
    assert rates["extractor"] == pytest.approx(4 * rates["discriminator"])
    assert rates["classifier"] == rates["extractor"]


def test_adversary_has_its_own_learning_rate_momentum_and_nesterov(tmp_path):
    config = tiny_config(tmp_path, optimizer="nesterov", disc_learning_rate=0.002,
                         disc_momentum=0.5, lr_schedule="constant")
    state = step_lib.create_state(models_for(config), config)
    extractor, discriminator = state.optimizers["extractor"], state.optimizers["discriminator"]
    assert float(discriminator.learning_rate.numpy()) == pytest.approx(0.002)
    assert float(extractor.learning_rate.numpy()) == pytest.approx(config.learning_rate)
    assert discriminator.momentum == 0.5 and extractor.momentum == config.momentum
    assert extractor.nesterov and discriminator.nesterov


def test_lambda_ramp_counted_in_steps(tmp_path):
    config = tiny_config(tmp_path, train_steps=1000, lambda_ramp_steps=100)
    for step in (0, 50, 100, 400):
        p = min(step / 100, 1.0)
        expected = 2 / (1 + math.exp(-10 * p)) - 1
        assert float(step_lib.adaptation_factor(config, step)) == pytest.approx(expected, 1e-6)
    paper = tiny_config(tmp_path, train_steps=1000)
    assert float(step_lib.adaptation_factor(paper, 50)) == pytest.approx(
        2 / (1 + math.exp(-0.5)) - 1, 1e-6)
    assert float(step_lib.adaptation_factor(
        tiny_config(tmp_path, adaptation="source_only"), 10)) == 0.0


def test_warmup_counted_in_steps(tmp_path):
    assert tiny_config(tmp_path, train_steps=1000, warmup_ramp_steps=30).warmup_steps == 30
    assert tiny_config(tmp_path, train_steps=1000, warmup_fraction=0.1).warmup_steps == 100
    with pytest.raises(config_lib.ConfigError, match="--warmup_ramp_steps=30 and --warmup_fr"):
        tiny_config(tmp_path, warmup_ramp_steps=30, warmup_fraction=0.1)


@pytest.mark.parametrize("flag, value", [("disc_momentum", 1.5), ("disc_momentum", -0.5),
                                         ("disc_learning_rate", -0.1),
                                         ("disc_learning_rate", float("nan")),
                                         ("lambda_ramp_steps", -1), ("warmup_ramp_steps", -5)])
def test_bad_rule_values_name_the_flag(tmp_path, flag, value):
    with pytest.raises(config_lib.ConfigError, match=f"--{flag}="):
        tiny_config(tmp_path, **{flag: value})


@pytest.mark.parametrize("method", ["cdan", "vada"])
def test_flipped_labels_with_a_method_that_has_only_gradient_reversal_is_refused(
        tmp_path, domains, method):
    from dann_dist import trainer

    config = tiny_config(tmp_path, adaptation=method, adversarial_loss="flipped_labels")
    with pytest.raises(config_lib.ConfigError, match="--adversarial_loss=flipped_labels is not"):
        trainer.train_and_evaluate(config, domains=domains)
    assert not (tmp_path / "run.json").exists()
