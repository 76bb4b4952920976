"""The run-directory contract: the per-directory lock and the resume check of flags."""

import json
import os
import socket
import subprocess
import sys

import pytest

from dann_dist import rundir

from synthetic import tiny_config


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    with rundir.RunLock(str(tmp_path)):
        holder = json.loads((tmp_path / rundir.LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(rundir.RunLocked, match=rf"in use by pid {os.getpid()} on host "):
            rundir.RunLock(str(tmp_path)).acquire()
    assert not (tmp_path / rundir.LOCK).exists()
    assert os.listdir(tmp_path) == []          # no temporary files left either


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = _dead_pid()
    (tmp_path / rundir.LOCK).write_text(json.dumps(
        {"pid": dead, "host": socket.gethostname(), "started": "earlier"}))
    with rundir.RunLock(str(tmp_path)):
        assert json.loads((tmp_path / rundir.LOCK).read_text())["pid"] == os.getpid()
    assert f"stale lock of pid {dead}" in caplog.text


def test_a_lock_from_another_host_is_refused_with_instructions(tmp_path):
    (tmp_path / rundir.LOCK).write_text(json.dumps(
        {"pid": _dead_pid(), "host": "another-host.example", "started": "earlier"}))
    with pytest.raises(rundir.RunLocked, match="another-host.example.*delete the lock file"):
        rundir.RunLock(str(tmp_path)).acquire()
    assert (tmp_path / rundir.LOCK).exists()


def test_a_model_dir_that_cannot_be_created_is_a_flag_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(rundir.ConfigError, match="--model_dir=.*cannot write there"):
        rundir.create(str(tmp_path / "file" / "run"))


def test_config_changes_refuse_what_is_trained_and_allow_cadence(tmp_path):
    import numpy as np

    recorded = tiny_config(tmp_path)
    rundir.write_run_record(str(tmp_path), recorded, np.zeros(3), {})
    changed = tiny_config(tmp_path, batch_size=32, optimizer="adam", ema_momentum=0.9,
                          classifier_head="bn", mnistm_seed=7, log_every=3, eval_every=5,
                          checkpoint_every=4, keep_checkpoints=9, strategy="mirrored")
    refused, allowed = rundir.config_changes(str(tmp_path), changed)
    assert refused == ["--mnistm_seed: 42 -> 7", "--classifier_head: 'paper' -> 'bn'",
                       "--batch_size: 16 -> 32", "--optimizer: 'sgd' -> 'adam'",
                       "--ema_momentum: 0.0 -> 0.9"]
    assert sorted(allowed) == ["--checkpoint_every: 10 -> 4", "--eval_every: 0 -> 5",
                               "--keep_checkpoints: 3 -> 9", "--log_every: 10 -> 3",
                               "--strategy: 'single' -> 'mirrored'"]
    assert rundir.config_changes(str(tmp_path), recorded) == ([], [])

