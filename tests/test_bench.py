"""The benchmark command: runs end to end on tiny settings and reports every figure.

No timing assertions (the machine is shared and times are noisy): the tests check that
each figure is there, positive and finite, that ratios are reported, and that under
horovodrun every rank reports its own figures and rank 0 the aggregate."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")

# A few steps on small arrays: the whole command takes seconds, not minutes.
TINY = ["--batch_size=16", "--steps=3", "--warmup_steps=1", "--rounds=2", "--eval_rounds=1",
        "--baseline_steps=2", "--train_examples=256", "--baseline_train_examples=256",
        "--eval_examples=64", "--eval_batch_size=32", "--baseline_eval_loop_examples=16",
        "--pipeline_batches=5", "--peak_matmul_size=256"]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    return env


def _run(cmd, timeout=120):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                                  f"stderr:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        start = line.find("{")
        if start >= 0:
            return json.loads(line[start:])
    raise AssertionError(f"no JSON line in:\n{stdout[-3000:]}")


def _positive(value, what):
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{what} = {value!r}"


TRAIN_FIELDS = ("steps_per_sec", "examples_per_sec", "flops_per_step", "gflops_per_sec",
                "cpu_cores_used", "examples_per_cpu_second",
                "fraction_of_reference_peak", "fraction_of_measured_peak")


def test_bench_reports_every_figure_and_the_ratios():
    stdout = _run([sys.executable, "-m", "dann_dist.bench", "--strategy=single", *TINY])
    figures = _last_json(stdout)

    assert set(figures["train"]) == {"origin", "paper"}
    assert figures["failed"] == {}
    for name, train in figures["train"].items():
        for field in TRAIN_FIELDS:
            _positive(train[field], f"train.{name}.{field}")
        assert len(train["steps_per_sec_rounds"]) == 2
        # One step = 16 source + 16 target images.
        assert train["images_per_step"] == 32
        assert train["examples_per_sec"] == pytest.approx(32 * train["steps_per_sec"])
    assert figures["train"]["origin"]["config"]["adversarial_loss"] == "flipped_labels"
    assert figures["train"]["paper"]["config"]["adversarial_loss"] == "grl"

    for section, fields in (("eval", ("seconds", "images_per_sec", "cpu_seconds")),
                            ("pipeline", ("batches_per_sec", "examples_per_sec", "headroom")),
                            ("memory", ("peak_rss_mb", "peak_rss_mb_with_baseline")),
                            ("peak", ("measured_matmul_gflops", "reference_gflops")),
                            ("baseline", ("steps_per_sec", "examples_per_sec", "gflops_per_sec",
                                          "cpu_cores_used", "examples_per_cpu_second",
                                          "eval_seconds", "eval_cpu_seconds", "eval_forward_seconds",
                                          "eval_loop_seconds", "eval_images_per_sec"))):
        for field in fields:
            _positive(figures[section][field], f"{section}.{field}")
    assert figures["eval"]["images"] == 128
    assert figures["baseline"]["eval_loop_examples_timed"] == 16
    for ratio in ("train_origin", "train_paper", "eval", "origin_tf_function"):
        _positive(figures["ratios"][ratio], f"ratios.{ratio}")
    _positive(figures["origin_tf_function"]["steps_per_sec"], "origin_tf_function.steps_per_sec")
    for ratio in ("train_origin", "train_paper", "eval"):
        _positive(figures["ratios_per_cpu_second"][ratio], f"ratios_per_cpu_second.{ratio}")
    assert len(figures["ratios"]["train_origin_rounds"]) == 2
    assert figures["machine"]["cpus"] >= 1 and figures["machine"]["cpu_model"]

    # The human-readable report precedes the JSON.
    for text in ("train [origin]:", "train [paper]:", "train [origin baseline, eager float32]:",
                 "train [origin step in a plain tf.function, float32]:",
                 "evaluation [ours]:", "evaluation [origin baseline]:", "input pipeline alone:",
                 "peak memory", "ratios vs the origin baseline"):
        assert text in stdout, text


def test_bench_under_horovodrun_reports_per_rank_and_aggregate():
    stdout = _run([HOROVODRUN, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-m",
                   "dann_dist.bench", *TINY, "--configs=paper", "--intra_op_threads=1",
                   "--inter_op_threads=1", "--nomeasure_peak"])
    for rank in (0, 1):
        assert f"[rank {rank}/2] train [paper]:" in stdout
        assert f"[rank {rank}/2] input pipeline alone:" in stdout
    assert "AGGREGATE over 2 ranks, train [paper]:" in stdout

    figures = _last_json(stdout)
    assert figures["backend"] == {"strategy": "horovod", "replicas": 2, "processes": 2, "rank": 0,
                                  "per_replica_batch": 8, "global_batch": 16}
    per_rank = figures["per_rank"]
    assert len(per_rank) == 2
    for row in per_rank:
        for key, value in row.items():
            _positive(value, f"per_rank.{key}")
    aggregate = figures["aggregate"]
    assert aggregate["ranks"] == 2
    train = aggregate["train"]["paper"]
    for field in ("steps_per_sec", "examples_per_sec", "gflops_per_sec", "cpu_cores_used",
                  "examples_per_cpu_second"):
        _positive(train[field], f"aggregate.train.paper.{field}")
    # Throughputs add up over ranks.
    assert train["examples_per_sec"] == pytest.approx(
        sum(row["train/paper/examples_per_sec"] for row in per_rank))
    for section, field in (("eval", "images_per_sec"), ("pipeline", "examples_per_sec"),
                           ("pipeline", "headroom"), ("memory", "peak_rss_mb")):
        _positive(aggregate[section][field], f"aggregate.{section}.{field}")
    for ratio in ("train_paper", "eval"):
        _positive(aggregate["ratios"][ratio], f"aggregate.ratios.{ratio}")


def test_analytic_flops_count_the_layers():
    from dann_dist.bench import analytic_flops
    from dann_dist.models import build_models

    # Paper heads: conv 5x5x3->32 on 24x24, conv 5x5x32->48 on 8x8, dense 768-100-100-10,
    # dense 768-100-1; forward, weight gradient and input gradient (none for conv 1).
    conv1, conv2 = 24 * 24 * 32 * 75, 8 * 8 * 48 * 800
    classifier, discriminator = 768 * 100 + 100 * 100 + 100 * 10, 768 * 100 + 100
    batch = 4
    expected = 2 * (2 * batch * (3 * (conv1 + conv2) - conv1)
                    + batch * 3 * classifier + 2 * batch * 3 * discriminator)
    flops = analytic_flops(build_models("paper", "paper"), batch)
    assert flops["train_step"] == expected
    assert flops["forward"] == 2 * (2 * batch * (conv1 + conv2) + batch * classifier
                                    + 2 * batch * discriminator)


def test_importing_the_bench_defines_no_flags():
    from absl import flags

    import dann_dist.bench  # noqa: F401

    assert "baseline_eval_loop_examples" not in flags.FLAGS


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_step_breakdown_times_every_part(precision):
    stdout = _run([sys.executable, "benchmarks/step_breakdown.py", f"--precision={precision}",
                   "--batch_size=4", "--calls=1"])
    lines = [line for line in stdout.splitlines() if line.rstrip().endswith(("ms", "GFLOP/s"))]
    names = ("whole step", "forward + all gradients", "optimizer updates", "extractor",
             "conv1 3->32", "conv1 1->32", "conv2 32->48")
    for name in names:
        line = next((l for l in lines if name in l), None)
        assert line is not None, f"{name} missing:\n{stdout}"
        milliseconds = float(line.split(" ms")[0].split()[-1])
        assert milliseconds > 0 and math.isfinite(milliseconds)
