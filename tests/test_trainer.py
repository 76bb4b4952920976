"""The real training function on tiny synthetic data, single device, in-process."""

import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator

from dann_dist import trainer

from synthetic import tiny_config


def _scalars(directory):
    acc = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def _series(acc, tag):
    return [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


def test_one_step_smoke(tmp_path, domains):
    metrics = trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=1, log_every=1),
                                         domains=domains)
    assert metrics["step"] == 1
    for key in ("source_accuracy", "target_accuracy", "domain_accuracy", "source_loss",
                "target_loss"):
        assert np.isfinite(metrics[key])
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")
    assert json.load(open(tmp_path / "metrics.json"))["step"] == 1


def test_label_loss_falls_and_tensorboard_has_the_expected_tags(tmp_path, domains):
    config = tiny_config(tmp_path, train_steps=60, log_every=10, eval_every=30, batch_size=32)
    metrics = trainer.train_and_evaluate(config, domains=domains)
    train = _scalars(str(tmp_path / "train"))
    losses = _series(train, "label_loss")
    assert len(losses) == 6
    assert losses[-1] < 0.8 * losses[0], losses
    assert metrics["source_accuracy"] > 0.5
    train_tags = set(train.Tags()["tensors"])
    assert {"label_loss", "domain_loss", "source_accuracy", "domain_accuracy", "lambda",
            "learning_rate", "steps_per_sec", "examples_per_sec"} <= train_tags
    assert any(t.startswith("input_samples/") for t in train_tags), train_tags
    evals = _scalars(str(tmp_path / "eval"))
    assert {"source_accuracy", "target_accuracy", "domain_accuracy", "source_loss",
            "target_loss"} <= set(evals.Tags()["tensors"])
    assert [e.step for e in evals.Tensors("target_accuracy")] == [30, 60]
    lam = _series(train, "lambda")
    assert lam == sorted(lam) and 0 < lam[0] < lam[-1] <= 1


def test_hparams_are_recorded(tmp_path, domains):
    trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=2, log_every=1), domains=domains)
    events = [e for f in os.listdir(tmp_path / "train")
              for e in tf.compat.v1.train.summary_iterator(str(tmp_path / "train" / f))]
    plugin_names = {v.metadata.plugin_data.plugin_name for e in events for v in e.summary.value}
    assert "hparams" in plugin_names


def test_second_run_resumes_at_the_saved_step(tmp_path, domains):
    trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=10, checkpoint_every=5),
                               domains=domains)
    # A longer run is a deliberate change of the schedule: it needs the override.
    resumed = trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=15, checkpoint_every=5,
                                                     allow_config_change=True), domains=domains)
    assert resumed["step"] == 15 and resumed["resumed_from_step"] == 10
    state = tf.train.get_checkpoint_state(str(tmp_path))
    steps = sorted(int(p.split("-")[-1]) for p in state.all_model_checkpoint_paths)
    assert steps == [5, 10, 15]
    # The resumed run logged only its own steps (11..15), not a restart from 0.
    train_steps = [e.step for e in _scalars(str(tmp_path / "train")).Tensors("label_loss")]
    assert train_steps[-1] == 15 and 5 not in train_steps[1:]


def test_export_loads_and_predicts_like_the_trained_model(tmp_path, domains):
    metrics = trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=30), domains=domains)
    exported = tf.saved_model.load(str(tmp_path / "export"))
    source, target = domains
    probs = exported.serve(tf.constant(source.x_test)).numpy()
    assert probs.shape == (len(source.x_test), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = np.mean(probs.argmax(axis=1) == source.y_test)
    assert accuracy == pytest.approx(metrics["source_accuracy"], abs=1e-9)
    target_probs = exported.signatures["serving_default"](images=tf.constant(target.x_test))
    target_accuracy = np.mean(next(iter(target_probs.values())).numpy().argmax(1) == target.y_test)
    assert target_accuracy == pytest.approx(metrics["target_accuracy"], abs=1e-9)


@pytest.mark.parametrize("adaptation", ["source_only", "target_only"])
def test_baselines_train(tmp_path, domains, adaptation):
    metrics = trainer.train_and_evaluate(tiny_config(tmp_path, adaptation=adaptation, train_steps=5,
                                                     log_every=5), domains=domains)
    lam = _series(_scalars(str(tmp_path / "train")), "lambda")
    assert lam == [0.0] and metrics["step"] == 5


def test_flipped_labels_and_bn_heads_train(tmp_path, domains):
    metrics = trainer.train_and_evaluate(
        tiny_config(tmp_path, adversarial_loss="flipped_labels", classifier_head="bn",
                    discriminator_head="bn", optimizer="adam", learning_rate=1e-3, train_steps=5),
        domains=domains)
    assert np.isfinite(metrics["source_loss"])


@pytest.mark.parametrize("adversarial_loss", ["grl", "flipped_labels"])
def test_strong_recipe_trains_exports_and_reevaluates_to_the_same_metrics(tmp_path, domains,
                                                                         adversarial_loss):
    # Every addition at once: the export and a re-evaluation must rebuild the same extractor
    # (standardisation, BatchNorm moving statistics, width) from run.json.
    from dann_dist import evaluate

    config = tiny_config(tmp_path, train_steps=12, adversarial_loss=adversarial_loss,
                         input_norm="image", extractor_bn=True, extractor_width=1.5,
                         source_augment="colour", target_entropy_weight=0.1, ema_momentum=0.9)
    final = trainer.train_and_evaluate(config, domains=domains)
    again = evaluate.evaluate_run(str(tmp_path), domains=domains,
                                  eval_batch_size=config.eval_batch_size)
    for name in ("source_accuracy", "target_accuracy", "domain_accuracy"):
        assert again[name] == final[name], name
    exported = tf.saved_model.load(str(tmp_path / "export"))
    target = domains[1]
    predicted = exported.serve(tf.constant(target.x_test)).numpy().argmax(axis=1)
    assert np.mean(predicted == target.y_test) == pytest.approx(final["target_accuracy"],
                                                                abs=1e-9)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, domains):
    config = tiny_config(tmp_path, train_steps=20, checkpoint_every=5, debug_nan_step=7)
    # The hook makes the loss of optimizer step 7 NaN; the guard names that step.
    with pytest.raises(trainer.NonFiniteLossError, match=r"loss at step 7:.*ckpt-5, is kept"):
        trainer.train_and_evaluate(config, domains=domains)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-5")
    reader = tf.train.load_checkpoint(str(tmp_path))
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name


def test_weight_averaging_changes_what_is_evaluated_but_not_training(tmp_path, domains):
    raw = trainer.train_and_evaluate(tiny_config(tmp_path / "raw", train_steps=12), domains=domains)
    ema = trainer.train_and_evaluate(tiny_config(tmp_path / "ema", train_steps=12,
                                                 ema_momentum=0.9),
                                     domains=domains)
    assert ema["weights_digest"] == raw["weights_digest"], "averaging leaked into training"
    assert ema["source_loss"] != raw["source_loss"]
    exported = tf.saved_model.load(str(tmp_path / "ema" / "export"))
    source = domains[0]
    predicted = exported.serve(tf.constant(source.x_test)).numpy().argmax(1)
    accuracy = np.mean(predicted == source.y_test)
    assert accuracy == pytest.approx(ema["source_accuracy"], abs=1e-9)


def test_mixed_float16_trains_with_a_dynamic_loss_scale(tmp_path, domains):
    import keras

    from dann_dist import step as step_lib

    metrics = trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=4,
                                                     precision="mixed_float16"),
                                         domains=domains)
    keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(metrics["source_loss"])
    reader = tf.train.load_checkpoint(str(tmp_path))
    assert reader.get_tensor("loss_scale/.ATTRIBUTES/VARIABLE_VALUE") == step_lib.INITIAL_LOSS_SCALE
    assert reader.get_tensor("good_steps/.ATTRIBUTES/VARIABLE_VALUE") == 4


def test_loss_scale_halves_on_overflow_and_grows_after_a_finite_run():
    from dann_dist import step as step_lib

    state = step_lib.TrainState({}, {}, tf.Variable(0, dtype=tf.int64),
                                train_seconds=tf.Variable(0.0, dtype=tf.float64),
                                config_fingerprint=tf.Variable(0, dtype=tf.int64),
                                loss_scale=tf.Variable(8.0),
                                good_steps=tf.Variable(0, dtype=tf.int64))
    step_lib.update_loss_scale(state, tf.constant(False))
    assert float(state.loss_scale) == 4.0 and int(state.good_steps) == 0
    state.good_steps.assign(step_lib.LOSS_SCALE_GROWTH_STEPS - 1)
    step_lib.update_loss_scale(state, tf.constant(True))
    assert float(state.loss_scale) == 8.0 and int(state.good_steps) == 0
    step_lib.update_loss_scale(state, tf.constant(True))
    assert float(state.loss_scale) == 8.0 and int(state.good_steps) == 1


def _cpuinfo(tmp_path, flag_line):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: {flag_line}\n")
    return str(path)


@pytest.mark.parametrize("flag_line, expected", [
    ("fpu sse2 avx2 avx512f avx512_bf16", "mixed_bfloat16"),
    ("fpu sse2 avx2 amx_bf16 amx_tile", "mixed_bfloat16"),
    ("fpu sse2 avx2 avx512f avx512bw", "float32"),
])
def test_auto_precision_picks_bfloat16_only_on_cpus_that_compute_it(tmp_path, flag_line, expected):
    from dann_dist import distribute

    path = _cpuinfo(tmp_path, flag_line)
    assert distribute.resolve_precision("auto", path)[0] == expected
    # An explicit choice is never overridden.
    assert distribute.resolve_precision("float32", path)[0] == "float32"
    assert distribute.resolve_precision("auto", str(tmp_path / "missing"))[0] == "float32"


def test_auto_precision_is_resolved_and_recorded(tmp_path, domains):
    import keras

    from dann_dist import distribute

    trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=2, precision="auto"),
                               domains=domains)
    keras.mixed_precision.set_global_policy("float32")
    recorded = json.loads((tmp_path / "run.json").read_text())["config"]["precision"]
    assert recorded == distribute.resolve_precision("auto")[0] != "auto"


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_evaluate_command_reproduces_the_trainers_final_metrics(tmp_path, domains, precision):
    # Rebuilt in the run's precision with the averaged weights, a re-evaluation must give
    # what the trainer reported, whatever policy the calling process has.
    import keras

    from dann_dist import evaluate

    config = tiny_config(tmp_path, train_steps=8, ema_momentum=0.9, precision=precision)
    final = trainer.train_and_evaluate(config, domains=domains)
    keras.mixed_precision.set_global_policy("float32")
    again = evaluate.evaluate_run(str(tmp_path), domains=domains,
                                  eval_batch_size=config.eval_batch_size)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert again["step"] == 8
    for name in ("source_accuracy", "target_accuracy", "domain_accuracy"):
        assert again[name] == final[name], name
    for name in ("source_loss", "target_loss"):
        assert again[name] == pytest.approx(final[name], rel=1e-6), name


def _poison_weights_after(monkeypatch, at_step):
    """The train step leaves a NaN weight after step `at_step` (its loss was finite)."""
    from dann_dist import step as step_lib

    real = step_lib.make_train_step

    def make_train_step(state, config, backend, *phase):
        train_step = real(state, config, backend, *phase)

        def poisoned(iterator, stop):
            out = train_step(iterator, stop)
            if int(state.step.numpy()) == at_step:
                weight = state.models["discriminator"].trainable_variables[0]
                weight.assign(np.full(weight.shape, np.nan, np.float32))
            return out
        return poisoned

    monkeypatch.setattr(step_lib, "make_train_step", make_train_step)


@pytest.mark.parametrize("checkpoint_every, log_every, kept", [
    (5, 100, "no checkpoint had been written yet"),   # caught before the save at step 5
    (3, 5, "ckpt-3, is kept"),                        # caught at the progress line of step 5
])
def test_non_finite_weights_stop_the_run_before_they_are_saved(tmp_path, domains, monkeypatch,
                                                                checkpoint_every, log_every, kept):
    _poison_weights_after(monkeypatch, at_step=5)
    config = tiny_config(tmp_path, train_steps=20, checkpoint_every=checkpoint_every,
                         log_every=log_every)
    with pytest.raises(trainer.NonFiniteLossError, match=rf"non-finite weights at step 5 .*{kept}"):
        trainer.train_and_evaluate(config, domains=domains)
    latest = tf.train.latest_checkpoint(str(tmp_path))
    assert (latest is None) if checkpoint_every == 5 else latest.endswith("ckpt-3")
    assert not (tmp_path / "lock").exists(), "the run directory stayed locked"


def _roll_back_to(model_dir, step):
    """What a kill after checkpoint `step` leaves: later checkpoints never indexed."""
    for name in os.listdir(model_dir):
        if name.startswith("ckpt-") and int(name.split("-")[1].split(".")[0]) > step:
            os.unlink(model_dir / name)
    prefix = str(model_dir / f"ckpt-{step}")
    tf.compat.v1.train.update_checkpoint_state(
        str(model_dir), prefix, all_model_checkpoint_paths=[prefix],
        all_model_checkpoint_timestamps=[os.path.getmtime(prefix + ".index")])


def test_tensorboard_shows_each_train_step_once_after_a_resume(tmp_path, domains):
    config = tiny_config(tmp_path, train_steps=8, checkpoint_every=5, log_every=1, export=False)
    trainer.train_and_evaluate(config, domains=domains)
    _roll_back_to(tmp_path, 5)      # steps 6-8 were logged, then the run was killed
    resumed = trainer.train_and_evaluate(config, domains=domains)
    assert resumed["resumed_from_step"] == 5
    # What TensorBoard's server reads with (the legacy EventAccumulator of _scalars does
    # not apply restart markers to tensor summaries).
    shown = plugin_event_accumulator.EventAccumulator(str(tmp_path / "train"))
    shown.Reload()
    assert [e.step for e in shown.Tensors("label_loss")] == list(range(1, 9))


def test_tensorboard_order_holds_when_the_resume_starts_in_the_killed_runs_second(tmp_path,
                                                                                 domains):
    """Event files are read in name order, and a name differs first in its creation second.
    CI resumed within the second the killed run's file was created, whose writer counter
    (compared as text) then sorted after the marker and the new file: steps 6-8 twice."""
    config = tiny_config(tmp_path, train_steps=8, checkpoint_every=5, log_every=1, export=False)
    trainer.train_and_evaluate(config, domains=domains)
    _roll_back_to(tmp_path, 5)
    (killed,) = os.listdir(tmp_path / "train")
    parts = killed.split(".")
    parts[3], parts[-2] = f"{int(time.time()) + 1:010d}", "99"   # now, in its next second
    os.rename(tmp_path / "train" / killed, tmp_path / "train" / ".".join(parts))
    assert trainer.train_and_evaluate(config, domains=domains)["resumed_from_step"] == 5
    shown = plugin_event_accumulator.EventAccumulator(str(tmp_path / "train"))
    shown.Reload()
    assert [e.step for e in shown.Tensors("label_loss")] == list(range(1, 9))


def test_an_evaluation_interrupted_by_a_kill_is_redone_on_resume(tmp_path, domains):
    config = tiny_config(tmp_path, train_steps=10, checkpoint_every=5, eval_every=5, export=False)
    trainer.train_and_evaluate(config, domains=domains)
    _roll_back_to(tmp_path, 5)      # killed while evaluating step 5: no line for it
    os.unlink(tmp_path / "eval_history.jsonl")
    assert trainer.train_and_evaluate(config, domains=domains)["resumed_from_step"] == 5
    steps = [json.loads(line)["step"] for line in open(tmp_path / "eval_history.jsonl")]
    assert steps == [5, 10]


def test_evaluate_says_when_training_is_incomplete(tmp_path, domains):
    from dann_dist import evaluate

    trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=10, checkpoint_every=5,
                                           export=False), domains=domains)
    half = evaluate.evaluate_run(str(tmp_path), checkpoint=str(tmp_path / "ckpt-5"),
                                 domains=domains)
    assert half["step"] == 5 and half["train_steps"] == 10 and not half["training_complete"]
    assert evaluate.completion_note(half).startswith("training incomplete: step 5 of 10")
    done = evaluate.evaluate_run(str(tmp_path), domains=domains)
    assert done["training_complete"] and evaluate.completion_note(done) == ""
