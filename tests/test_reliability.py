"""Runs survive kill -9, SIGTERM/SIGINT, corrupt checkpoints, NaNs and bad flags."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from dann_dist import lease, trainer

from distributed_helpers import (
    ROOT,
    env,
    horovodrun,
    json_lines,
    rank_exit_statuses,
    run,
    synthetic,
    wait_for,
)
from synthetic import tiny_config


def _start(cmd):
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_kill_9_then_rerun_resumes_and_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    flags = ["--train_steps=40", "--checkpoint_every=10", "--log_every=1", "--deterministic"]
    straight = run([sys.executable] + synthetic(tmp_path / "straight", *flags))
    proc = _start([sys.executable] + synthetic(tmp_path / "killed", *flags))
    wait_for(proc, "step 23/40")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tf.train.latest_checkpoint(str(tmp_path / "killed")).endswith("ckpt-20")
    resumed = run([sys.executable] + synthetic(tmp_path / "killed", *flags))
    assert "resumed from" in resumed.stderr and "at step 20" in resumed.stderr
    digests = [json_lines(p.stdout)[-1]["weights_digest"] for p in (resumed, straight)]
    assert digests[0] == digests[1]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_writes_a_checkpoint_and_exits_with_128_plus_signal(tmp_path, sig, code):
    proc = _start([sys.executable] + synthetic(tmp_path, "--train_steps=100000", "--log_every=5",
                                               "--checkpoint_every=100000"))
    wait_for(proc, "step 10/")
    sent = time.time()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert time.time() - sent < 10
    assert proc.returncode == code, out[-2000:]
    stopped_at = int(re.search(r"stop requested at step (\d+)", out).group(1))
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith(f"ckpt-{stopped_at}")


def test_sigterm_to_one_horovod_rank_stops_all_ranks_at_the_same_step(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    proc = _start(horovodrun(2, synthetic(tmp_path / "run", "--strategy=horovod",
                                          "--train_steps=100000",
                                          "--log_every=5", "--checkpoint_every=100000",
                                          f"--pid_dir={pid_dir}")))
    wait_for(proc, "step 10/")
    os.kill(int((pid_dir / "1").read_text()), signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    stops = {line[:3]: int(re.search(r"stop requested at step (\d+)", line).group(1))
             for line in out.splitlines()
             if "process " in line and "stop requested at step" in line}
    assert set(stops) == {"[0]", "[1]"}, out[-3000:]
    stopped_at = stops["[0]"]
    assert stops["[1]"] == stopped_at, "ranks stopped at different steps"
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith(f"ckpt-{stopped_at}")


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, domains, caplog):
    caplog.set_level("INFO")
    trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=10, checkpoint_every=5,
                                           export=False), domains=domains)
    data_file = next(p for p in os.listdir(tmp_path) if p.startswith("ckpt-10.data"))
    with open(tmp_path / data_file, "r+b") as f:
        f.truncate(100)
    metrics = trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=12, checkpoint_every=5,
                                                     allow_config_change=True), domains=domains)
    assert metrics["step"] == 12 and metrics["resumed_from_step"] == 5
    assert "ckpt-10 is unreadable" in caplog.text


def test_a_crash_mid_write_leaves_the_previous_checkpoint_in_use(tmp_path, domains):
    trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=10, checkpoint_every=5,
                                           export=False), domains=domains)
    # What a crash while writing ckpt-15 leaves: partial files, index not yet updated.
    (tmp_path / "ckpt-15.index").write_bytes(b"\x00" * 10)
    (tmp_path / "ckpt-15.data-00000-of-00001").write_bytes(b"\x00" * 10)
    metrics = trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=11,
                                                     allow_config_change=True), domains=domains)
    assert metrics["step"] == 11 and metrics["resumed_from_step"] == 10


def test_a_second_run_on_a_locked_model_dir_exits_2_naming_the_holder(tmp_path):
    first = _start([sys.executable] + synthetic(tmp_path, "--train_steps=100000", "--log_every=5",
                                                "--checkpoint_every=100000"))
    try:
        wait_for(first, "step 5/")
        # A two-rank job: the chief refuses, and rank 1 ends with the chief's reason too,
        # not with a traceback from a collective the chief never joined.
        second = run(horovodrun(2, synthetic(tmp_path, "--strategy=horovod",
                                             "--train_steps=7")), check=False)
        out = second.stdout + second.stderr
        assert rank_exit_statuses(out) == {0: 2, 1: 2}, out[-3000:]
        assert re.search(rf"\[0\]<stderr>:.*in use by pid {first.pid} on host", out), out[-3000:]
        assert re.search(r"\[1\]<stderr>:error: process 1: the chief refused the run: .*in use "
                         rf"by pid {first.pid}", out), out[-3000:]
        # (horovodrun's own traceback, reporting the ranks' statuses, is not ours.)
        assert not re.search(r"\[\d\]<std\w+>:Traceback", out), out[-3000:]
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=30)
    assert first.returncode == 143
    # Released on the way out: a rerun takes the directory and resumes (the test hook
    # then stops it after one step).
    assert not (tmp_path / "lock").exists()
    stopped_at = int(re.search(r"stop requested at step (\d+)", out).group(1))
    again = run([sys.executable] + synthetic(tmp_path, "--train_steps=100000", "--log_every=5",
                                             "--checkpoint_every=100000",
                                             f"--debug_nan_step={stopped_at + 1}"), check=False)
    assert again.returncode == 3 and f"at step {stopped_at}" in again.stderr


def _files(directory):
    return {n: (directory / n).read_bytes() for n in os.listdir(directory)
            if (directory / n).is_file()}


def test_unreadable_checkpoints_exit_1_with_a_message_and_nothing_overwritten(tmp_path):
    run([sys.executable] + synthetic(tmp_path))
    for name in os.listdir(tmp_path):
        if name.startswith("ckpt-") and ".data" in name:
            with open(tmp_path / name, "r+b") as f:
                f.truncate(100)
    before = _files(tmp_path)
    proc = run([sys.executable] + synthetic(tmp_path), check=False)
    assert proc.returncode == 1
    assert "error: none of the checkpoints" in proc.stderr and "Traceback" not in proc.stderr
    assert _files(tmp_path) == before


def test_nan_loss_exits_3_with_the_step(tmp_path):
    proc = run([sys.executable] + synthetic(tmp_path, "--debug_nan_step=4"), check=False)
    assert proc.returncode == 3
    assert "non-finite loss at step 4" in proc.stderr and "ckpt-3, is kept" in proc.stderr
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")


@pytest.mark.parametrize("args, message", [
    (["--strategy=bogus"], "strategy"),
    (["--train_steps=-5"], "--train_steps=-5"),
    (["--domain_loss_weight=0"], "--domain_loss_weight=0.0: must be > 0"),
    (["--gamma=nan"], "--gamma=nan: must be a finite number"),
    (["--lambda_max=nan"], "--lambda_max=nan: must be a finite number"),
    (["--learning_rate=inf"], "--learning_rate=inf: must be a finite number"),
    (["--train_pairs=640", "--train_steps=10"], "both set the length of the run"),
    (["--train_pairs=6400", "--eval_every=200"], "fewer than one evaluation interval"),
    (["--warmup_fraction=2"], "--warmup_fraction=2.0"),
    (["--flagfile=/nonexistent/x.cfg"], "x.cfg"),
    (["--model_dir={tmp}/a_file/run"], "is not a directory"),
    (["--model_dir=/proc/dann_run"], "--model_dir=/proc/dann_run: cannot write there"),
    (["--model_dir=/sys/dann_run"], "--model_dir=/sys/dann_run: cannot write there"),
    (["--mnist_path=/nonexistent/mnist.npz"], "no such file"),
    (["--strategy=horovod"], "horovodrun"),
    (["--strategy=mirrored", "--logical_cpus=2", "--batch_size=15"], "not divisible"),
    (["positional"], "unexpected arguments"),
])
def test_bad_flags_exit_2_with_a_clear_message_before_heavy_work(tmp_path, args, message):
    # -X importtime lists every module imported on stderr.
    cmd = [sys.executable, "-X", "importtime", "-m", "dann_dist.train",
           f"--model_dir={tmp_path}/run"]
    if "--logical_cpus=2" in args:
        cmd = [sys.executable] + synthetic(tmp_path / "run")
    (tmp_path / "a_file").write_text("not a directory")
    args = [a.format(tmp=tmp_path) for a in args]
    started = time.time()
    proc = run(cmd + args, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert time.time() - started < 30
    assert not (tmp_path / "run" / "checkpoint").exists()
    # The launcher and the devices are known once TensorFlow is up; /proc and /sys pass
    # the access check and fail when the run directory is made.
    found_later = ("--strategy=horovod", "--strategy=mirrored", "--model_dir=/proc",
                   "--model_dir=/sys")
    if not any(a.startswith(found_later) for a in args):
        # Found by the flags alone, before TensorFlow was imported: a typo costs no start-up.
        assert "| tensorflow" not in proc.stderr and "| dann_dist.config" in proc.stderr


def test_evaluate_restores_the_checkpoints_on_disk_when_the_index_is_lost(tmp_path, domains):
    from dann_dist import rundir

    trainer.train_and_evaluate(tiny_config(tmp_path, train_steps=10, checkpoint_every=5,
                                           export=False), domains=domains)
    index = tmp_path / "checkpoint"
    for damage in (index.unlink, lambda: index.write_text("garbled")):
        damage()
        # What dann_dist.evaluate restores (it used to say "no checkpoint: train first").
        _, _, state, found = rundir.restore_run(str(tmp_path))
        assert found == str(tmp_path / "ckpt-10") and int(state.step.numpy()) == 10
    # Evaluating writes nothing into the run (it may be live): the index stays as it was.
    assert index.read_text() == "garbled"


class _RotatingTrainer:
    """What a live trainer with --keep_checkpoints=2 does to ckpt-N files on disk while
    evaluate reads them: `rotations` times, just as a checkpoint is opened, it writes the
    next one and deletes the older ones."""

    def __init__(self, directory, rotations):
        self.directory, self.rotations, self.newest = directory, rotations, 20
        for step in (10, 20):
            (directory / f"ckpt-{step}.index").write_bytes(b"")

    def restore(self, prefix):
        if self.rotations:
            self.rotations -= 1
            self.newest += 10
            (self.directory / f"ckpt-{self.newest}.index").write_bytes(b"")
            for old in self.directory.glob("ckpt-*.index"):
                if old.name != f"ckpt-{self.newest}.index":
                    old.unlink()
        if not os.path.exists(prefix + ".index"):
            raise tf.errors.NotFoundError(None, None, f"{prefix}.index: no such file")


_RESTORE_ERRORS = (tf.errors.OpError, ValueError)


def test_evaluate_on_a_live_run_lists_the_checkpoints_again_when_they_rotate(tmp_path):
    from dann_dist import rundir

    live = _RotatingTrainer(tmp_path, rotations=2)
    pauses = []
    with lease.RunLock(str(tmp_path)):
        found = rundir.restore_newest(live.restore, str(tmp_path), _RESTORE_ERRORS,
                                      pause=pauses.append)
    assert found == str(tmp_path / "ckpt-40")
    assert pauses == [rundir.RESTORE_PAUSE_S]


def test_evaluate_on_a_live_run_that_outpaces_it_says_the_run_is_live(tmp_path):
    from dann_dist import checkpoints, rundir

    live = _RotatingTrainer(tmp_path, rotations=100)
    pauses = []
    with lease.RunLock(str(tmp_path)):
        with pytest.raises(checkpoints.CheckpointError) as err:
            rundir.restore_newest(live.restore, str(tmp_path), _RESTORE_ERRORS,
                                  pause=pauses.append)
    message = str(err.value)
    assert f"The run is live (pid {os.getpid()} on host" in message
    assert "rerun dann_dist.evaluate" in message and "move the directory away" not in message
    assert len(pauses) == rundir.RESTORE_ATTEMPTS - 1


def test_evaluate_of_damaged_checkpoints_of_an_ended_run_fails_at_once(tmp_path):
    from dann_dist import checkpoints, rundir

    for step in (10, 20):
        (tmp_path / f"ckpt-{step}.index").write_bytes(b"")

    def unreadable(prefix):
        raise tf.errors.DataLossError(None, None, f"{prefix}: checksum mismatch")

    pauses = []
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"none of the checkpoints .* can be read: ckpt-20, ckpt-10"):
        rundir.restore_newest(unreadable, str(tmp_path), _RESTORE_ERRORS, pause=pauses.append)
    assert pauses == []
