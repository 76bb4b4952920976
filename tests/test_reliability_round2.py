"""Issue 22, the trainer's side: flags that used to end in a traceback, a resume check that
survives a lost run.json, totals that survive resumes, a finished run left untouched, one
evaluation line per step, and a scheduler's SIGTERM after the last step."""

import json
import os
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from dann_dist import config as config_lib
from dann_dist import rundir, trainer
from dann_dist import step as step_lib

from synthetic import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, **overrides):
    base = dict(train_steps=10, checkpoint_every=5, export=False, noise_scale_batches=0)
    return tiny_config(tmp_path, **{**base, **overrides})


def _snapshot(directory):
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, directory)] = f.read()
    return out


@pytest.mark.parametrize("flag, value", [("seed", -1), ("seed", 2 ** 40),
                                         ("train_steps", 10 ** 20), ("batch_size", 2 ** 30)])
def test_out_of_range_integers_name_the_flag(tmp_path, flag, value):
    with pytest.raises(config_lib.ConfigError, match=f"--{flag}={value}: must be in"):
        tiny_config(tmp_path, **{flag: value})


def test_huge_train_steps_on_the_command_line_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dann_dist.train", f"--model_dir={tmp_path}/r",
                           "--train_steps=100000000000000000000"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--train_steps=" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["G[1]", "a*b", "what?"])
def test_a_model_dir_with_pattern_characters_is_refused(tmp_path, name):
    with pytest.raises(config_lib.ConfigError, match="file pattern"):
        tiny_config(tmp_path / name)


def test_a_model_dir_too_long_for_checkpoint_names_is_refused(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="characters long"):
        tiny_config(tmp_path / ("d" * 200) / ("e" * 200) / ("f" * 3600))


def test_a_batch_larger_than_a_training_stream_is_a_flag_error_before_anything_is_written(
        tmp_path, domains):
    with pytest.raises(config_lib.ConfigError, match="--batch_size=512 is larger than"):
        trainer.train_and_evaluate(_config(tmp_path, batch_size=512), domains=domains)
    assert not (tmp_path / rundir.RUN_RECORD).exists()


def test_rerunning_a_finished_run_changes_nothing_on_disk(tmp_path, domains):
    config = _config(tmp_path, eval_every=5)
    first = trainer.train_and_evaluate(config, domains=domains)
    before = _snapshot(tmp_path)
    again = trainer.train_and_evaluate(config, domains=domains)
    assert again == {**first, "resumed_from_step": 10}
    assert _snapshot(tmp_path) == before


def test_training_seconds_are_kept_in_the_checkpoint_and_count_over_resumes(tmp_path, domains):
    first = trainer.train_and_evaluate(_config(tmp_path), domains=domains)
    kept = tf.train.load_variable(tf.train.latest_checkpoint(str(tmp_path)),
                                  "train_seconds/.ATTRIBUTES/VARIABLE_VALUE")
    assert 0 < kept <= first["train_seconds"] + 1e-6
    resumed = trainer.train_and_evaluate(
        _config(tmp_path, train_steps=20, allow_config_change=True), domains=domains)
    assert resumed["resumed_from_step"] == 10
    # The whole run's seconds: the first part's, carried, plus the resumed part's.
    assert resumed["train_seconds"] > kept
    assert resumed["examples_per_sec"] == pytest.approx(
        20 * 2 * 16 / resumed["train_seconds"], rel=1e-6)


def test_one_evaluation_line_per_step_after_a_resume_redoes_steps(tmp_path, domains):
    config = _config(tmp_path, train_steps=20, checkpoint_every=10, eval_every=5)
    trainer.train_and_evaluate(config, domains=domains)
    # As if killed after evaluating step 15 but before checkpoint 20 was written.
    for name in os.listdir(tmp_path):
        if name.startswith("ckpt-20") or name in ("checkpoint", rundir.METRICS):
            os.unlink(tmp_path / name)
    trainer.train_and_evaluate(config, domains=domains)
    steps = [json.loads(line)["step"] for line in open(tmp_path / rundir.EVAL_HISTORY)]
    assert steps == [5, 10, 15, 20]


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_lost_run_record_does_not_switch_the_resume_check_off(tmp_path, domains, damage):
    trainer.train_and_evaluate(_config(tmp_path), domains=domains)
    record = tmp_path / rundir.RUN_RECORD
    if damage == "missing":
        record.unlink()
    else:
        record.write_bytes(record.read_bytes()[:300])
    changed = _config(tmp_path, train_steps=20, learning_rate=0.5, seed=7)
    with pytest.raises(config_lib.ConfigError, match="trained with other flags"):
        trainer.train_and_evaluate(changed, domains=domains)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-10")
    # The run's own flags resume; a deliberate change is allowed.
    same = trainer.train_and_evaluate(_config(tmp_path, train_steps=20,
                                              allow_config_change=True), domains=domains)
    assert same["step"] == 20


def test_the_checkpoint_records_the_flags_it_was_trained_with(tmp_path, domains):
    config = _config(tmp_path)
    trainer.train_and_evaluate(config, domains=domains)
    stored = tf.train.load_variable(tf.train.latest_checkpoint(str(tmp_path)),
                                    "config_fingerprint/.ATTRIBUTES/VARIABLE_VALUE")
    assert stored == rundir.trained_fingerprint(config)
    assert stored != rundir.trained_fingerprint(_config(tmp_path, learning_rate=0.02))
    # Flags that do not change what is trained leave it alone.
    assert stored == rundir.trained_fingerprint(_config(tmp_path, log_every=3, eval_every=5))


def test_a_sigterm_during_the_last_step_exits_143_with_the_run_complete(
        tmp_path, domains, monkeypatch):
    real = step_lib.make_train_step
    config = _config(tmp_path)

    def make_train_step(state, cfg, backend, *phase):
        step_fn = real(state, cfg, backend, *phase)

        def wrapped(iterator, stop):
            out = step_fn(iterator, stop)
            if int(state.step.numpy()) == cfg.train_steps:
                os.kill(os.getpid(), signal.SIGTERM)  # after the step's stop vote
            return out
        return wrapped

    monkeypatch.setattr(step_lib, "make_train_step", make_train_step)
    with pytest.raises(trainer.StopRequested) as stop:
        trainer.train_and_evaluate(config, domains=domains)
    assert stop.value.exit_code == 128 + signal.SIGTERM
    assert json.load(open(tmp_path / rundir.METRICS))["step"] == 10


def test_a_failing_write_of_the_run_records_is_a_clean_error_keeping_the_checkpoints(tmp_path):
    # Stands in for a full disk at metrics.json (any OSError at a record's write).
    (tmp_path / rundir.METRICS).mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "run_synthetic.py"),
         f"--model_dir={tmp_path}", "--train_steps=6", "--batch_size=16", "--checkpoint_every=3",
         "--log_every=3", "--eval_every=3", "--eval_batch_size=64", "--export=false",
         "--noise_scale_batches=0"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert rundir.METRICS in proc.stderr and "rerun the same command" in proc.stderr
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-6")
