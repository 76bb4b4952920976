"""The run-directory contract: the lock, the resume check of flags, and what evaluate says
about a damaged run record or a missing checkpoint (the lease itself: test_lock_lease.py)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from dann_dist import lease, rundir

from distributed_helpers import ROOT, env
from synthetic import tiny_config


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    with lease.RunLock(str(tmp_path)):
        holder = json.loads((tmp_path / lease.LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(lease.RunLocked, match=rf"in use by pid {os.getpid()} on host "):
            lease.RunLock(str(tmp_path)).acquire()
    assert not (tmp_path / lease.LOCK).exists()
    # No temporary files left either; the flock guard stays (it is never deleted).
    assert os.listdir(tmp_path) == [lease.LOCK_GUARD]


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



def test_where_the_data_are_cached_and_what_evaluations_score_may_change_on_resume(tmp_path):
    import numpy as np

    recorded = tiny_config(tmp_path)
    rundir.write_run_record(str(tmp_path), recorded, np.zeros(3), {})
    changed = tiny_config(tmp_path, data_dir=str(tmp_path / "elsewhere"), max_test_examples=50,
                          selection_images=32)
    refused, allowed = rundir.config_changes(str(tmp_path), changed)
    assert refused == []
    assert [line.split(":")[0] for line in allowed] == [
        "--data_dir", "--selection_images", "--max_test_examples"]


def _recorded_run(tmp_path):
    import numpy as np

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rundir.write_run_record(str(run_dir), tiny_config(run_dir), np.full(3, 0.5), {})
    return run_dir


@pytest.mark.parametrize("damage", [
    lambda text: text[:len(text) // 2],            # cut short
    lambda text: "[1, 2]",                         # not an object
    lambda text: text.replace('"config"', '"confg"'),
    lambda text: text.replace('"channel_mean"', '"channel_mean": "x", "other"'),
])
def test_a_damaged_run_record_is_an_error_naming_the_file(tmp_path, damage):
    run_dir = _recorded_run(tmp_path)
    record = run_dir / rundir.RUN_RECORD
    config, mean = rundir.load_run(str(run_dir))
    assert config.train_steps == 20 and mean.tolist() == [0.5] * 3
    record.write_text(damage(record.read_text()))
    with pytest.raises(rundir.RunRecordError, match=rf"{record} cannot be read .*put back a copy"):
        rundir.load_run(str(run_dir))
    record.write_bytes(b"\x00\xff" * 100)
    with pytest.raises(rundir.RunRecordError, match="cannot be read"):
        rundir.load_run(str(run_dir))


def _evaluate(*args):
    return subprocess.run([sys.executable, "-m", "dann_dist.evaluate", *args], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=120)


def test_evaluate_exits_1_on_a_damaged_run_record_with_a_message(tmp_path):
    run_dir = _recorded_run(tmp_path)
    (run_dir / rundir.RUN_RECORD).write_text('{"config": {"seed": 0}, "chann')
    proc = _evaluate(f"--model_dir={run_dir}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"error: {run_dir / rundir.RUN_RECORD} cannot be read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_exits_2_on_a_checkpoint_that_does_not_exist_listing_those_there(tmp_path):
    run_dir = _recorded_run(tmp_path)
    for step in (10, 5):
        (run_dir / f"ckpt-{step}.index").write_bytes(b"")
    proc = _evaluate(f"--model_dir={run_dir}", f"--checkpoint={run_dir}/ckpt-7")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--checkpoint={run_dir}/ckpt-7: no such checkpoint" in proc.stderr
    assert "the checkpoints in" in proc.stderr and "ckpt-5, ckpt-10" in proc.stderr
    assert "Traceback" not in proc.stderr
    # A name relative to --model_dir is found there.
    assert rundir.find_checkpoint(str(run_dir), "ckpt-5") == str(run_dir / "ckpt-5")
