"""VADA (--adaptation=vada): its gradients against an independent computation, its metrics,
the pipeline's VAT directions (sharded like the examples, resumable, keyed by stream and
step), and a short training run."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from dann_dist import step as step_lib
from dann_dist import trainer, vat
from dann_dist.data.pipeline import train_dataset
from dann_dist.models import models_for

from synthetic import tiny_config

N, LAM = 4, 0.7
SHAPE = (28, 28, 3)
# Every VADA weight away from its default and from 1, so that a term taken with the wrong
# weight (or without lambda) shows in the gradients.
WEIGHTS = dict(vat_source_weight=0.7, vat_target_weight=0.4, target_entropy_weight=0.3,
               vat_epsilon=2.0, vat_xi=0.5)
RTOL, ATOL = 1e-4, 1e-6


def _batch(seed=3):
    return {"source_images": tf.random.stateless_normal([N, *SHAPE], seed=[seed, 1]),
            "source_labels": tf.constant([1, 7, 3, 3]),
            "target_images": tf.random.stateless_normal([N, *SHAPE], seed=[seed, 2]),
            "source_vat_direction": tf.random.stateless_normal([N, *SHAPE], seed=[seed, 3]),
            "target_vat_direction": tf.random.stateless_normal([N, *SHAPE], seed=[seed, 4])}


def _vada(tmp_path, **overrides):
    config = tiny_config(tmp_path, adaptation="vada", **{**WEIGHTS, **overrides})
    # Fixed weights: the comparison must not depend on which tests ran before.
    keras.utils.set_random_seed(0)
    return config, models_for(config)


def _ours(models, config, batch, global_batch=N, lam=LAM):
    compute = step_lib.make_compute_gradients(models, config, global_batch=global_batch)
    return compute(batch, tf.constant(lam), tf.constant(0, tf.int64), tf.constant(1.0))


def _kl_mean(logits_fn, x, clean_logits, r_adv):
    """Mean over the examples of KL(p(x) || p(x + r_adv)), p(x) a constant."""
    log_p = tf.nn.log_softmax(tf.stop_gradient(clean_logits))
    log_q = tf.nn.log_softmax(logits_fn(x + r_adv))
    return tf.reduce_mean(tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1))


def _reference(models, config, batch, lam=LAM, with_vat=True, directions=None):
    """(gradients of the extractor, classifier and discriminator, VAT_s, VAT_t), from the
    objective written out term by term; the domain game by hand: the extractor descends
    classification - lam * domain, the discriminator descends domain."""
    extractor, classifier, discriminator = (models[k] for k in
                                            ("extractor", "classifier", "discriminator"))
    source, labels, target = batch["source_images"], batch["source_labels"], batch["target_images"]
    d_source, d_target = directions or (batch["source_vat_direction"],
                                        batch["target_vat_direction"])

    def logits_fn(x):
        return classifier(extractor(x, training=True), training=True)

    with tf.GradientTape(persistent=True) as tape:
        source_logits, target_logits = logits_fn(source), logits_fn(target)
        label_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, source_logits))
        p = tf.nn.softmax(target_logits)
        entropy = tf.reduce_mean(-tf.reduce_sum(p * tf.math.log(p), axis=-1))
        vats = []
        for x, logits, d in ((source, source_logits, d_source), (target, target_logits, d_target)):
            r_adv = vat.adversarial_perturbation(logits_fn, x, logits, xi=config.vat_xi,
                                                 epsilon=config.vat_epsilon, direction=d)
            vats.append(_kl_mean(logits_fn, x, logits, r_adv))
        vat_s, vat_t = vats
        classification = label_loss + lam * config.target_entropy_weight * entropy
        if with_vat:
            classification += (config.vat_source_weight * vat_s
                               + lam * config.vat_target_weight * vat_t)
        domain = tf.concat([tf.zeros([N]), tf.ones([N])], 0)
        domain_logits = discriminator(extractor(tf.concat([source, target], 0)))[:, 0]
        domain_loss = tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(domain, domain_logits))
        extractor_objective = classification - lam * domain_loss
    grads = (tape.gradient(extractor_objective, extractor.trainable_variables)
             + tape.gradient(classification, classifier.trainable_variables)
             + tape.gradient(domain_loss, discriminator.trainable_variables))
    del tape
    return grads, float(vat_s), float(vat_t)


def _max_relative_difference(a, b):
    """max |a - b| / max |b| over all the variables."""
    scale = max(float(np.max(np.abs(g.numpy()))) for g in b)
    return max(float(np.max(np.abs(x.numpy() - y.numpy()))) for x, y in zip(a, b)) / scale


def _assert_grads_close(ours, expected):
    # Relative to each variable's largest gradient: VAT's direction is a normalised
    # gradient, so an element near 0 carries the round-off of its whole variable (run after
    # other test modules, with other initial weights, an elementwise rtol check failed).
    assert len(ours) == len(expected)
    for a, b in zip(ours, expected):
        assert a.shape == b.shape
        scale = float(np.max(np.abs(b.numpy())))
        assert float(np.max(np.abs(a.numpy() - b.numpy()))) <= RTOL * scale + ATOL


@pytest.mark.parametrize("input_norm", ["none", "image"])
def test_vada_gradients_are_the_written_out_objective(tmp_path, input_norm):
    config, models = _vada(tmp_path, input_norm=input_norm)
    batch = _batch()
    grads, _ = _ours(models, config, batch)
    expected, _, _ = _reference(models, config, batch)
    assert list(models) == ["extractor", "classifier", "discriminator"]
    _assert_grads_close(grads, expected)
    # The comparison can fail: without the VAT terms, or with the two domains' directions
    # swapped, the reference moves far outside the tolerance.
    without_vat, _, _ = _reference(models, config, batch, with_vat=False)
    assert _max_relative_difference(grads, without_vat) > 100 * RTOL
    swapped, _, _ = _reference(models, config, batch, directions=(
        batch["target_vat_direction"], batch["source_vat_direction"]))
    assert _max_relative_difference(grads, swapped) > 10 * RTOL


def test_vada_target_terms_follow_lambda_and_source_vat_does_not(tmp_path):
    # At lambda = 0 only the label loss and vat_source_weight * VAT(source) remain (the
    # target's entropy and VAT and the reversed domain gradient are ramped away).
    config, models = _vada(tmp_path)
    batch = _batch(5)
    grads, _ = _ours(models, config, batch, lam=0.0)
    expected, _, _ = _reference(models, config, batch, lam=0.0)
    _assert_grads_close(grads, expected)
    no_source_vat, _ = _ours(models, tiny_config(tmp_path, adaptation="vada",
                                                 **{**WEIGHTS, "vat_source_weight": 0.0}),
                             batch, lam=0.0)
    assert _max_relative_difference(grads, no_source_vat) > 100 * RTOL


def test_vada_metrics_are_the_vat_sums_with_their_counts(tmp_path):
    config, models = _vada(tmp_path)
    batch = _batch(7)
    _, metrics = _ours(models, config, batch)
    assert {"label_loss", "domain_loss", "source_accuracy", "domain_accuracy", "vat_source",
            "vat_target"} <= set(metrics)
    assert float(metrics["vat_source"][1]) == N and float(metrics["vat_target"][1]) == N
    assert float(metrics["domain_loss"][1]) == 2 * N
    _, vat_s, vat_t = _reference(models, config, batch)
    # The logged value is the sum over the examples; the trainer divides by the count.
    np.testing.assert_allclose(float(metrics["vat_source"][0]) / N, vat_s, rtol=RTOL)
    np.testing.assert_allclose(float(metrics["vat_target"][0]) / N, vat_t, rtol=RTOL)
    assert vat_s > 0 and vat_t > 0


def test_two_half_batches_at_the_global_batch_sum_to_the_full_batch(tmp_path):
    # The replica rule: each half's losses divided by the global batch N, gradients and metric
    # sums added, equal one device on all N examples with their directions.
    config, models = _vada(tmp_path)
    batch = _batch(9)
    full, full_metrics = _ours(models, config, batch)
    halves = [_ours(models, config, {k: v[i * N // 2:(i + 1) * N // 2] for k, v in batch.items()})
              for i in range(2)]
    summed = [a + b for a, b in zip(halves[0][0], halves[1][0])]
    _assert_grads_close(summed, full)
    for name in ("vat_source", "vat_target"):
        total = sum(float(h[1][name][0]) for h in halves)
        np.testing.assert_allclose(total, float(full_metrics[name][0]), rtol=RTOL)


# The input pipeline's directions.

def _arrays(n=64):
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    target = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
    return source, np.arange(n) % 10, target


def _take(steps, vat_shape=SHAPE, **kwargs):
    source, labels, target = _arrays()
    ds = train_dataset(source, labels, target, mean=np.zeros(3, np.float32), seed=5,
                       vat_shape=vat_shape, **kwargs)
    return [{k: v.numpy() for k, v in batch.items()} for batch in ds.take(steps)]


DIRECTIONS = ("source_vat_direction", "target_vat_direction")


def test_pipeline_adds_directions_of_the_model_input_shape_only_when_asked():
    with_vat = _take(2, per_replica_batch=4)
    for batch in with_vat:
        for key in DIRECTIONS:
            assert batch[key].shape == (4, *SHAPE) and batch[key].dtype == np.float32
    assert set(with_vat[0]) == {"source_images", "source_labels", "target_images", *DIRECTIONS}
    without = _take(2, vat_shape=None, per_replica_batch=4)
    assert set(without[0]) == {"source_images", "source_labels", "target_images"}
    # Asking for directions leaves the examples as they were.
    for a, b in zip(with_vat, without):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key])


def test_directions_are_standard_normal_and_differ_by_domain_and_step():
    batches = _take(3, per_replica_batch=8)
    draws = np.stack([b[k] for b in batches for k in DIRECTIONS])
    assert abs(draws.mean()) < 0.02 and abs(draws.std() - 1.0) < 0.02
    for batch in batches:
        assert not np.allclose(batch["source_vat_direction"], batch["target_vat_direction"])
    for key in DIRECTIONS:
        assert not np.allclose(batches[0][key], batches[1][key])
        assert not np.allclose(batches[1][key], batches[2][key])
        # Each example of a batch gets its own direction.
        assert not np.allclose(batches[0][key][0], batches[0][key][1])


def test_two_pipelines_concatenated_equal_one_pipeline_at_twice_the_batch():
    steps, b = 3, 4
    single = _take(steps, per_replica_batch=2 * b)
    shards = [_take(steps, per_replica_batch=b, num_pipelines=2, pipeline_index=i)
              for i in range(2)]
    # MirroredStrategy-style: one pipeline hands out 2 consecutive replica batches a step.
    mirrored = _take(2 * steps, per_replica_batch=b, replicas_per_pipeline=2)
    for k in range(steps):
        for key in single[k]:
            np.testing.assert_array_equal(
                np.concatenate([shards[0][k][key], shards[1][k][key]]), single[k][key])
            np.testing.assert_array_equal(
                np.concatenate([mirrored[2 * k][key], mirrored[2 * k + 1][key]]), single[k][key])
        assert not np.allclose(shards[0][k]["source_vat_direction"],
                               shards[1][k]["source_vat_direction"])


def test_a_resumed_stream_draws_the_directions_of_its_step():
    k = 5  # 64 examples at batch 8: step 5 is in the first epoch, 9 in the second
    fresh = _take(10, per_replica_batch=8)
    for start in (k, 9):
        resumed = _take(1, per_replica_batch=8, start_step=start)[0]
        for key in fresh[start]:
            np.testing.assert_array_equal(resumed[key], fresh[start][key])


def test_directions_do_not_depend_on_the_source_augmentation_but_on_the_seed():
    plain = _take(2, per_replica_batch=8)
    augmented = _take(2, per_replica_batch=8, source_augment="colour")
    for a, b in zip(plain, augmented):
        for key in DIRECTIONS:
            np.testing.assert_array_equal(a[key], b[key])
    source, labels, target = _arrays()
    other_seed = next(iter(train_dataset(source, labels, target, mean=np.zeros(3, np.float32),
                                         seed=6, per_replica_batch=8, vat_shape=SHAPE)))
    for key in DIRECTIONS:
        assert not np.allclose(other_seed[key].numpy(), plain[0][key])


def test_vada_trains_a_few_steps_with_finite_metrics_and_logs_its_penalties(tmp_path, domains):
    config = tiny_config(tmp_path, adaptation="vada", train_steps=4, log_every=2,
                         checkpoint_every=4, target_entropy_weight=0.1)
    metrics = trainer.train_and_evaluate(config, domains=domains)
    assert metrics["step"] == 4
    for key in ("source_accuracy", "target_accuracy", "domain_accuracy", "source_loss",
                "target_loss"):
        assert np.isfinite(metrics[key]), key
    train = event_accumulator.EventAccumulator(str(tmp_path / "train"),
                                               size_guidance={"tensors": 0})
    train.Reload()
    assert {"vat_source", "vat_target", "label_loss", "domain_loss"} <= set(train.Tags()["tensors"])
    for tag in ("vat_source", "vat_target"):
        values = [float(tf.make_ndarray(e.tensor_proto)) for e in train.Tensors(tag)]
        assert len(values) == 2 and all(np.isfinite(v) and v >= 0 for v in values), values
