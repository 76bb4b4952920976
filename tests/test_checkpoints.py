"""Resuming from a damaged run directory: the checkpoint index, leftovers of killed
writes, unreadable checkpoints, a full disk, and resumes with changed flags."""

import errno
import os

import pytest
import tensorflow as tf

from dann_dist import checkpoints, evaluate, lease, rundir, trainer
from dann_dist import config as config_lib

from synthetic import tiny_config


def _trained(tmp_path, domains, **overrides):
    config = tiny_config(tmp_path, **{"train_steps": 10, "checkpoint_every": 5, "export": False,
                                      **overrides})
    trainer.train_and_evaluate(config, domains=domains)
    return config


def _files(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))
            if (directory / name).is_file()}


@pytest.mark.parametrize("index", [None, "", "garbled {{{"])
def test_a_missing_empty_or_garbled_index_resumes_from_the_newest_checkpoint_on_disk(
        tmp_path, domains, caplog, index):
    config = _trained(tmp_path, domains)
    if index is None:
        os.unlink(tmp_path / "checkpoint")
    else:
        (tmp_path / "checkpoint").write_text(index)
    metrics = trainer.train_and_evaluate(config, domains=domains)
    assert metrics["resumed_from_step"] == 10 and metrics["step"] == 10
    assert "rebuilt from the checkpoints on disk: ckpt-5, ckpt-10" in caplog.text
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-10")


def test_leftovers_of_killed_checkpoint_writes_are_removed_at_start(tmp_path, domains):
    config = _trained(tmp_path, domains)
    (tmp_path / "ckpt-15_temp").mkdir()
    (tmp_path / "ckpt-15_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    (tmp_path / "checkpoint.tmp5d41402abc4b2a76").write_text("half an index")
    trainer.train_and_evaluate(config, domains=domains)
    assert not (tmp_path / "ckpt-15_temp").exists()
    assert not (tmp_path / "checkpoint.tmp5d41402abc4b2a76").exists()


def test_all_checkpoints_unreadable_is_a_clean_error_and_nothing_is_overwritten(tmp_path, domains):
    config = _trained(tmp_path, domains)
    for name in os.listdir(tmp_path):
        if name.startswith("ckpt-") and ".data" in name:
            with open(tmp_path / name, "r+b") as f:
                f.truncate(100)
    before = _files(tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match="none of the checkpoints.*Nothing was"):
        trainer.train_and_evaluate(config, domains=domains)
    assert _files(tmp_path) == before


def _full_disk_on_save(monkeypatch, at_step):
    real_save = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, **kwargs):
        if checkpoint_number == at_step:
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        return real_save(self, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)


def test_a_full_disk_during_a_checkpoint_names_the_checkpoint_kept(tmp_path, domains, monkeypatch):
    _full_disk_on_save(monkeypatch, at_step=10)
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"writing checkpoint 10 .*No space left.*ckpt-5, is kept"):
        _trained(tmp_path, domains)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-5")


def test_a_full_disk_during_the_export_names_the_checkpoint_kept(tmp_path, domains, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", no_space)
    with pytest.raises(checkpoints.CheckpointError, match=r"exporting to .*ckpt-10, is kept"):
        _trained(tmp_path, domains, export=True)
    assert not (tmp_path / "export.tmp").exists() and not (tmp_path / "export").exists()


def test_a_resume_that_changes_what_is_trained_is_refused_and_leaves_the_run_intact(
        tmp_path, domains):
    config = _trained(tmp_path, domains)
    run_json = (tmp_path / rundir.RUN_RECORD).read_bytes()
    changed = tiny_config(tmp_path, train_steps=10, checkpoint_every=5, export=False,
                          batch_size=32, classifier_head="bn", optimizer="adam",
                          ema_momentum=0.9, learning_rate=0.001)
    with pytest.raises(config_lib.ConfigError) as err:
        trainer.train_and_evaluate(changed, domains=domains)
    for line in ("--batch_size: 16 -> 32", "--classifier_head: 'paper' -> 'bn'",
                 "--optimizer: 'sgd' -> 'adam'", "--ema_momentum: 0.0 -> 0.9",
                 "--learning_rate: 0.01 -> 0.001", "--allow_config_change"):
        assert line in str(err.value)
    assert "unreadable" not in str(err.value)
    assert (tmp_path / rundir.RUN_RECORD).read_bytes() == run_json
    assert not (tmp_path / lease.LOCK).exists()
    again = evaluate.evaluate_run(str(tmp_path), domains=domains)
    assert again["step"] == 10 and again["training_complete"]
    assert config.batch_size == 16


def test_changed_cadence_flags_resume_with_a_log_line(tmp_path, domains, caplog):
    _trained(tmp_path, domains)
    caplog.set_level("INFO", logger="absl")
    metrics = trainer.train_and_evaluate(
        tiny_config(tmp_path, train_steps=10, checkpoint_every=3, log_every=2, export=False),
        domains=domains)
    assert metrics["resumed_from_step"] == 10
    assert "--checkpoint_every: 5 -> 3" in caplog.text and "--log_every: 10 -> 2" in caplog.text


def test_a_deliberately_shorter_run_past_its_step_is_refused(tmp_path, domains):
    _trained(tmp_path, domains)
    with pytest.raises(config_lib.ConfigError, match="at step 10, past --train_steps=6"):
        trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=6, checkpoint_every=5,
                                               export=False, allow_config_change=True),
                                   domains=domains)
