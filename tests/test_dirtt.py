"""DIRT-T (--adaptation=dirtt): the refinement's gradients against the objective written
out, the teacher's updates, the two phases in one run (run.json, eval history,
TensorBoard), a resume inside the refinement equal to an uninterrupted run, and the flag
checks."""

import json
import os
import re
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from dann_dist import rundir, trainer, vat
from dann_dist import step as step_lib
from dann_dist.config import ConfigError
from dann_dist.methods import registry
from dann_dist.models import models_for

from synthetic import tiny_config

N, LAM = 4, 0.6
SHAPE = (28, 28, 3)
WEIGHTS = dict(target_entropy_weight=0.3, vat_target_weight=0.4, refine_kl_weight=0.7,
               vat_epsilon=2.0, vat_xi=0.5)
# With the strong recipe's input standardisation and extractor BatchNorm: the teacher must
# rebuild those layers too and copy their statistics.
RUN = dict(adaptation="dirtt", train_steps=8, refine_steps=4, refine_teacher_every=2,
           checkpoint_every=2, log_every=2, eval_every=4, deterministic=True,
           input_norm="image", extractor_bn=True)


def _batch(seed=5):
    return {"source_images": tf.random.stateless_normal([N, *SHAPE], seed=[seed, 1]),
            "source_labels": tf.constant([0, 4, 4, 9]),
            "target_images": tf.random.stateless_normal([N, *SHAPE], seed=[seed, 2]),
            "source_vat_direction": tf.random.stateless_normal([N, *SHAPE], seed=[seed, 3]),
            "target_vat_direction": tf.random.stateless_normal([N, *SHAPE], seed=[seed, 4])}


def _models(tmp_path, **overrides):
    config = tiny_config(tmp_path, **{**RUN, **WEIGHTS, **overrides})
    keras.utils.set_random_seed(0)
    models = models_for(config)
    # A teacher away from the model, so that the trust region pulls.
    for variable in models["teacher_extractor"].weights + models["teacher_classifier"].weights:
        variable.assign(variable * 0.0 + tf.random.stateless_normal(
            variable.shape, seed=[len(variable.name), 7], stddev=0.05, dtype=variable.dtype))
    return config, models


def _reference(models, config, batch, with_kl=True):
    """Gradients of the extractor and classifier of the refinement objective, written out
    term by term (means over the batch)."""
    extractor, classifier = models["extractor"], models["classifier"]
    target = batch["target_images"]

    def logits_fn(x):
        return classifier(extractor(x, training=True), training=True)

    teacher = tf.nn.softmax(models["teacher_classifier"](
        models["teacher_extractor"](target, training=False), training=False))
    with tf.GradientTape() as tape:
        logits = logits_fn(target)
        p = tf.nn.softmax(logits)
        entropy = tf.reduce_mean(-tf.reduce_sum(p * tf.math.log(p), axis=-1))
        r_adv = vat.adversarial_perturbation(logits_fn, target, logits, xi=config.vat_xi,
                                             epsilon=config.vat_epsilon,
                                             direction=batch["target_vat_direction"])
        clean = tf.stop_gradient(p)
        perturbed = tf.nn.softmax(logits_fn(target + r_adv))
        vat_t = tf.reduce_mean(tf.reduce_sum(clean * tf.math.log(clean / perturbed), -1))
        kl = tf.reduce_mean(tf.reduce_sum(teacher * tf.math.log(teacher / p), -1))
        loss = LAM * (config.target_entropy_weight * entropy + config.vat_target_weight * vat_t)
        if with_kl:
            loss += config.refine_kl_weight * kl
    variables = extractor.trainable_variables + classifier.trainable_variables
    return tape.gradient(loss, variables), float(kl)


def _refine_grads(models, config, batch):
    compute = step_lib.make_compute_gradients(models, config, global_batch=N, phase="refine")
    return compute(batch, tf.constant(LAM), tf.constant(6, tf.int64), tf.constant(1.0))


def _max_difference(a, b):
    return max(float(np.max(np.abs(x.numpy() - y.numpy()))
                     / max(float(np.max(np.abs(y.numpy()))), 1e-12)) for x, y in zip(a, b))


def test_refinement_gradients_are_the_written_out_objective(tmp_path):
    config, models = _models(tmp_path)
    batch = _batch()
    grads, metrics = _refine_grads(models, config, batch)
    expected, kl = _reference(models, config, batch)
    # Only the extractor and classifier train: no gradient for the discriminator or teacher.
    assert len(grads) == len(expected)
    assert _max_difference(grads, expected) < 1e-4
    assert float(metrics["teacher_kl"][0]) / float(metrics["teacher_kl"][1]) == pytest.approx(
        kl, rel=1e-5)
    # The comparison can fail: without the trust region the gradients differ.
    without_kl, _ = _reference(models, config, batch, with_kl=False)
    assert _max_difference(grads, without_kl) > 1e-2
    assert set(metrics) == {"source_accuracy", "target_entropy", "vat_target", "teacher_kl"}


def test_the_first_phase_is_vada(tmp_path):
    config, models = _models(tmp_path)
    batch = _batch()
    ours, _ = step_lib.make_compute_gradients(models, config, N, phase="vada")(
        batch, tf.constant(LAM), tf.constant(0, tf.int64), tf.constant(1.0))
    vada_config = tiny_config(tmp_path, **{**WEIGHTS, "adaptation": "vada",
                                           "input_norm": "image", "extractor_bn": True})
    vada_models = {k: models[k] for k in ("extractor", "classifier", "discriminator")}
    theirs, _ = step_lib.make_compute_gradients(vada_models, vada_config, N)(
        batch, tf.constant(LAM), tf.constant(0, tf.int64), tf.constant(1.0))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_phases_and_the_schedules_span_the_vada_steps(tmp_path):
    config = tiny_config(tmp_path, adaptation="dirtt", train_steps=100, refine_steps=30)
    method = registry.get("dirtt")
    assert method.phases(config) == (("vada", 0, 70), ("refine", 70, 100))
    assert method.phase_at(config, 69)[0] == "vada" and method.phase_at(config, 70)[0] == "refine"
    assert config.schedule_steps == 70
    # lambda_p reaches its end value when VADA ends and stays there.
    assert float(method.adaptation_factor(config, 70)) == pytest.approx(
        float(method.adaptation_factor(config, 100)))
    assert float(method.adaptation_factor(config, 35)) < float(method.adaptation_factor(config, 70))
    optimizer = step_lib.make_optimizer(config)

    def rate(step):
        optimizer.iterations.assign(step)
        return float(optimizer.learning_rate)
    assert rate(70) == pytest.approx(rate(100)) and rate(35) > rate(70)


def _weights(model):
    return [w.numpy() for w in model.weights]


def test_two_phases_in_one_run(tmp_path, domains):
    config = tiny_config(tmp_path, **RUN)
    metrics = trainer.train_and_evaluate(config, domains=domains)
    assert metrics["step"] == 8
    record = json.load(open(tmp_path / rundir.RUN_RECORD))
    assert record["derived"]["phases"] == [
        {"name": "vada", "first_step": 0, "end_step": 4},
        {"name": "refine", "first_step": 4, "end_step": 8}]
    history = [json.loads(line) for line in open(tmp_path / rundir.EVAL_HISTORY)]
    assert [(h["step"], h["phase"]) for h in history] == [(4, "vada"), (8, "refine")]
    # TensorBoard: VADA's losses, then the refinement's, and the phase.
    acc = event_accumulator.EventAccumulator(str(tmp_path / "train"), size_guidance={"tensors": 0})
    acc.Reload()
    steps = {tag: [e.step for e in acc.Tensors(tag)] for tag in
             ("domain_loss", "teacher_kl", "phase")}
    assert steps == {"domain_loss": [2, 4], "teacher_kl": [6, 8], "phase": [2, 4, 6, 8]}
    assert [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("phase")] == [0, 0, 1, 1]

    # The teacher was copied at step 8 (4 + 2 * refine_teacher_every); the discriminator did
    # not move after step 4.
    from dann_dist import checkpoints
    with tf.device("/cpu:0"):
        state = step_lib.create_state(models_for(config), config)
    manager = checkpoints.make_manager(state.trackables(), str(tmp_path), 3)
    checkpoints.restore_latest(manager)
    assert int(state.step.numpy()) == 8
    for student in ("extractor", "classifier"):
        for a, b in zip(_weights(state.models[student]),
                        _weights(state.models[f"teacher_{student}"])):
            np.testing.assert_array_equal(a, b)
    at_8 = _weights(state.models["discriminator"])
    extractor_at_8 = _weights(state.models["extractor"])
    tf.train.Checkpoint(**state.trackables()).read(
        str(tmp_path / "ckpt-4")).expect_partial()
    assert int(state.step.numpy()) == 4
    for a, b in zip(_weights(state.models["discriminator"]), at_8):
        np.testing.assert_array_equal(a, b)
    # ... while the extractor did; at step 4 the teacher was the model of then.
    assert any(not np.array_equal(a, b) for a, b in zip(
        _weights(state.models["extractor"]), extractor_at_8))
    for a, b in zip(_weights(state.models["extractor"]),
                    _weights(state.models["teacher_extractor"])):
        np.testing.assert_array_equal(a, b)


def test_a_run_stopped_inside_the_refinement_resumes_to_the_same_weights(tmp_path, domains,
                                                                         monkeypatch):
    whole = trainer.train_and_evaluate(tiny_config(tmp_path / "whole", **RUN), domains=domains)
    real = step_lib.make_train_step

    def make_train_step(state, cfg, backend, *phase):
        step_fn = real(state, cfg, backend, *phase)

        def wrapped(iterator, stop):
            out = step_fn(iterator, stop)
            if int(state.step.numpy()) == 4:  # the next step's vote stops the run after it:
                os.kill(os.getpid(), signal.SIGTERM)  # one step into the refinement
            return out
        return wrapped

    config = tiny_config(tmp_path / "split", **RUN)
    with monkeypatch.context() as patch:
        patch.setattr(step_lib, "make_train_step", make_train_step)
        with pytest.raises(trainer.StopRequested):
            trainer.train_and_evaluate(config, domains=domains)
    resumed = trainer.train_and_evaluate(config, domains=domains)
    assert resumed["resumed_from_step"] == 5
    assert resumed["weights_digest"] == whole["weights_digest"]
    assert resumed["target_accuracy"] == whole["target_accuracy"]


@pytest.mark.parametrize("overrides, message", [
    (dict(adaptation="dirtt", refine_steps=0), "needs 0 < --refine_steps < --train_steps"),
    (dict(adaptation="dirtt", refine_steps=20), "needs 0 < --refine_steps < --train_steps"),
    (dict(adaptation="vada", refine_steps=5), "--adaptation=dirtt, or --refine_steps=0"),
    (dict(adaptation="dirtt", refine_steps=5, refine_teacher_every=0),
     "--refine_teacher_every=0"),
    (dict(adaptation="dirtt", refine_steps=5, refine_kl_weight=-1.0), "--refine_kl_weight"),
])
def test_refinement_flags_are_checked(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiny_config(tmp_path, **overrides)
