"""Elastic Horovod (--elastic) on one machine: a killed worker costs at most the steps
since the last commit, training continues on the others and ends at --train_steps; below
--min-np the job ends with an error in bounded time.

Two workers on this machine appear to Horovod as two hosts, `localhost` and `127.0.0.1`
(tests/elastic_discovery.sh): Horovod blacklists the whole host of a failed worker, so with
both slots on one name the first death would end the job."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from dann_dist import config as config_lib
from dann_dist import trainer

from distributed_helpers import (
    BIN,
    EQUIVALENCE_TOLERANCE,
    ROOT,
    TESTS,
    env,
    json_lines,
    max_weight_difference,
    process_alive,
    read_until,
    synthetic,
)
from synthetic import tiny_config

LAUNCHER = os.path.join(ROOT, "launch", "horovod_elastic.sh")
DISCOVERY = os.path.join(TESTS, "elastic_discovery.sh")


def _launch(model_dir, pid_dir, *flags, **launcher_env):
    """launch/horovod_elastic.sh running tests/run_synthetic.py; output merged."""
    job_env = env()
    job_env.update(HOROVODRUN=os.path.join(BIN, "horovodrun"),
                   DANN_TRAIN_CMD=f"{sys.executable} {os.path.join(TESTS, 'run_synthetic.py')}",
                   **launcher_env)
    cmd = [LAUNCHER] + synthetic(model_dir, "--strategy=horovod", f"--pid_dir={pid_dir}",
                                 *flags)[1:]
    # Own session: the finally of each test kills horovodrun's process group; the workers
    # (horovodrun puts each in a session of its own) are killed by their pid files.
    return subprocess.Popen(cmd, cwd=ROOT, env=job_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _kill_everything(job, pid_dir):
    for name in os.listdir(pid_dir):
        try:
            os.killpg(os.getpgid(int((pid_dir / name).read_text())), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    job.wait(timeout=30)


def _lose_a_worker(tmp_path, victim: int):
    """Starts 2 workers (min 1), kill -9s the one that started as rank `victim` once both
    train; returns (exit code, output, commit step the survivor resumed from, survivor pid)."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    job = _launch(tmp_path / "run", pid_dir, "--train_steps=200", "--log_every=10",
                  "--checkpoint_every=100", "--elastic_commit_every=20",
                  MIN_NP="1", MAX_NP="2", ELASTIC_TIMEOUT="30")
    lines, started = [], time.time()
    try:
        read_until(job, r"step 30/200 ", started + 80, lines)
        assert len(os.listdir(pid_dir)) == 2
        survivor = int((pid_dir / str(1 - victim)).read_text())
        os.kill(int((pid_dir / str(victim)).read_text()), signal.SIGKILL)
        read_until(job, r"elastic: process 0 of 1, training from step \d+", started + 100, lines)
        out, _ = job.communicate(timeout=max(5, started + 115 - time.time()))
    finally:
        if job.poll() is None:
            _kill_everything(job, pid_dir)
    out = "".join(lines) + out
    resumed = int(re.search(r"elastic: process 0 of 1, training from step (\d+)", out).group(1))
    return job.returncode, out, resumed, survivor


def _check_continued_to_the_end(tmp_path, code, out, resumed, survivor, survivor_pid):
    assert code == 0, out[-4000:]
    # Elastic horovodrun reports no per-worker status: exit 0 of the job says the survivor's
    # was 0; that it has exited is checked here.
    assert not process_alive(survivor_pid), "the surviving worker outlived the job"
    # The survivor rolled back to a commit made after both trained, and went on alone.
    assert resumed >= 20 and resumed % 20 == 0, out[-4000:]
    assert f"[{survivor}]<stderr>" in re.search(r".*elastic: process 0 of 1.*", out).group(0)
    assert "per replica=16" in out and "per replica=8" in out   # global batch kept: 16
    finals = json_lines(out)
    assert len(finals) == 1 and finals[0]["step"] == 200, out[-3000:]
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-200")
    reader = tf.train.load_checkpoint(str(tmp_path / "run"))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 200


def test_killing_a_worker_continues_on_the_other_and_ends_at_train_steps(tmp_path):
    code, out, resumed, pid = _lose_a_worker(tmp_path, victim=1)
    print(f"rank 1 killed; rank 0 continued alone from the commit at step {resumed}")
    _check_continued_to_the_end(tmp_path, code, out, resumed, survivor=0, survivor_pid=pid)


def test_killing_the_chief_hands_over_to_the_other_worker(tmp_path):
    code, out, resumed, pid = _lose_a_worker(tmp_path, victim=0)
    print(f"rank 0 killed; former rank 1 became rank 0 and continued from step {resumed}")
    _check_continued_to_the_end(tmp_path, code, out, resumed, survivor=1, survivor_pid=pid)
    # The new chief wrote what the chief writes.
    assert (tmp_path / "run" / "metrics.json").exists()


def test_below_min_np_the_job_ends_with_an_error_in_bounded_time(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    job = _launch(tmp_path / "run", pid_dir, "--train_steps=100000", "--log_every=10",
                  "--checkpoint_every=100000", MIN_NP="2", MAX_NP="2", ELASTIC_TIMEOUT="10")
    lines = []
    try:
        # The chief's progress line: both workers are inside the training loop.
        read_until(job, r"\[0\]<stderr>:.*step 20/100000 ", time.time() + 70, lines)
        chief = int((pid_dir / "0").read_text())
        os.kill(int((pid_dir / "1").read_text()), signal.SIGKILL)
        killed_at = time.time()
        out, _ = job.communicate(timeout=45)
        assert time.time() - killed_at < 45
    finally:
        if job.poll() is None:
            _kill_everything(job, pid_dir)
    out = "".join(lines) + out
    print(f"worker 1 killed below --min-np: job exit {job.returncode}")
    assert job.returncode != 0
    assert not process_alive(chief), "rank 0 outlived the job"
    assert "Timed out waiting for" in out and "at least 2 Horovod processes" in out, out[-3000:]


def test_elastic_two_workers_equal_one_device(tmp_path, domains):
    """Without failures, --elastic trains like the plain Horovod path: as one device."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    job = _launch(tmp_path / "elastic", pid_dir, "--elastic_commit_every=2")
    try:
        # The same run as synthetic()'s flags, on one device, in this process meanwhile.
        trainer.train_and_evaluate(tiny_config(tmp_path / "single", train_steps=6,
                                               checkpoint_every=3,
                                               log_every=3, export=False), domains=domains)
        out, _ = job.communicate(timeout=100)
    finally:
        if job.poll() is None:
            _kill_everything(job, pid_dir)
    assert job.returncode == 0, out[-3000:]
    finals = json_lines(out)
    assert len(finals) == 2 and finals[0]["weights_digest"] == finals[1]["weights_digest"]
    difference = max_weight_difference(tmp_path / "single", tmp_path / "elastic")
    print(f"elastic -np 2 vs single: max |weight difference| after 6 steps = {difference:.3g}")
    assert difference < EQUIVALENCE_TOLERANCE


def test_elastic_needs_horovod(tmp_path, domains):
    with pytest.raises(config_lib.ConfigError, match="--elastic works with Horovod only"):
        tiny_config(tmp_path, strategy="mirrored", elastic=True)
    with pytest.raises(config_lib.ConfigError, match="--elastic_commit_every=0"):
        tiny_config(tmp_path, strategy="horovod", elastic=True, elastic_commit_every=0)
    # auto, not under horovodrun: the single-device backend.
    with pytest.raises(config_lib.ConfigError, match="--elastic needs Horovod"):
        trainer.train_and_evaluate(tiny_config(tmp_path, strategy="auto", elastic=True),
                                   domains=domains)
    assert not (tmp_path / "checkpoint").exists()


def test_launcher_dry_run_and_discovery_script():
    out = subprocess.run([LAUNCHER, "--model_dir=/tmp/x"], env={**os.environ, "DRY_RUN": "1",
                         "MIN_NP": "1", "MAX_NP": "2", "RESET_LIMIT": "3"},
                         capture_output=True, text=True, check=True).stdout
    assert (f"-np 2 --min-np 1 --max-np 2 --host-discovery-script {DISCOVERY} "
            "--elastic-timeout 120 --reset-limit 3 --gloo") in out
    assert out.rstrip().endswith("--elastic --model_dir=/tmp/x")
    bad = subprocess.run([LAUNCHER], env={**os.environ, "DRY_RUN": "1", "MIN_NP": "3"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "MIN_NP <= NP <= MAX_NP" in bad.stderr
    hosts = subprocess.run([DISCOVERY], capture_output=True, text=True, check=True).stdout.split()
    assert hosts == ["localhost:1", "127.0.0.1:1"]
