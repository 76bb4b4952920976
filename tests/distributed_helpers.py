"""Subprocess runners shared by the multi-process tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
BIN = os.path.dirname(sys.executable)
RUN_SYNTHETIC = os.path.join(TESTS, "run_synthetic.py")


# Data-parallel K=6 steps against one device (test_distributed, test_elastic). Measured on
# 2026-12-02 (x86, avx512_bf16, float32): 1.35e-7 for Horovod, MirroredStrategy and elastic
# alike, in the first conv kernel (72 ulps at 0.02) and its momentum; every other variable
# within 1.5e-8 (1 ulp). The cause is round-off, not a wrong update: that kernel's gradient
# sums 24x24 positions x 8 images per replica instead of x 16, with cancellation; one
# step's full-batch and summed half-batch gradients differ by 1.3e-6 of their scale. The
# bound leaves ~4x for other CPUs' kernels; --learning_rate 0.1% or 0.3% off ended 1.2e-4 away.
EQUIVALENCE_TOLERANCE = 5e-7


def env(threads: int = 1) -> dict:
    out = dict(os.environ)
    # Two processes on two cores: one thread each avoids oversubscription stalls.
    out.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    out.pop("TF_CONFIG", None)
    return out


def run(cmd: list[str], timeout: int = 180, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def horovodrun(np_: int, args: list[str]) -> list[str]:
    return [os.path.join(BIN, "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo",
            sys.executable] + args


def synthetic(model_dir, *flags: str) -> list[str]:
    return [RUN_SYNTHETIC, f"--model_dir={model_dir}", "--train_steps=6", "--batch_size=16",
            "--checkpoint_every=3", "--log_every=3", "--eval_every=0", "--eval_batch_size=64",
            "--export=false", "--noise_scale_batches=0", *flags]


def json_lines(output: str) -> list[dict]:
    """Final metric lines, also when prefixed by horovodrun's '[rank]<stdout>:'."""
    out = []
    for line in output.splitlines():
        start = line.find("{")
        if start >= 0 and line.rstrip().endswith("}"):
            try:
                out.append(json.loads(line[start:]))
            except json.JSONDecodeError:
                pass
    return out


def checkpoint_weights(model_dir) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(model_dir))
    # Weights are stored under the optimizers' `_trainable_variables`, momentum slots under
    # `_variables`; both must agree. The step counters are compared by the callers.
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "_variables/" in name}


def max_weight_difference(dir_a, dir_b) -> float:
    a, b = checkpoint_weights(dir_a), checkpoint_weights(dir_b)
    assert a.keys() == b.keys() and len(a) >= 10, sorted(a)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def read_until(job: subprocess.Popen, pattern: str, deadline: float, lines: list[str]) -> None:
    """Reads the job's merged output into `lines` until a line matches `pattern`."""
    while time.time() < deadline:
        line = job.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return
    raise AssertionError(f"never saw {pattern!r}:\n{''.join(lines[-60:])}")


def wait_for(job: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """Reads the job's merged output until a line contains `text`; returns what was read.
    Kills the job when the text never comes, so that a failed test leaves nothing running."""
    lines: list[str] = []
    try:
        read_until(job, re.escape(text), time.time() + timeout, lines)
    except AssertionError:
        job.kill()
        raise
    return "".join(lines)


def rank_exit_statuses(output: str) -> dict[int, int]:
    """{rank: exit status} as horovodrun (without --elastic) reports them; it names only
    the ranks that exited with a status other than 0."""
    return {int(rank): int(code) for rank, code in
            re.findall(r"Process (\d+) exit with status code (-?\d+)\.", output)}


def process_alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie counts as ended: it has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def single_device(model_dir, domains, *flags: str) -> dict:
    """The run that synthetic(model_dir, *flags) describes, on one device in this process
    (the reference of an equivalence test without another TensorFlow start-up; the same
    data as tests/run_synthetic.py's). Returns its final metrics."""
    import dataclasses

    from dann_dist import trainer
    from dann_dist.config import Config

    from synthetic import tiny_config

    types = {f.name: f.type for f in dataclasses.fields(Config)}
    parse = {"int": int, "float": float, "str": str, "bool": lambda v: v == "true"}
    values = {}
    for flag in synthetic(model_dir, *flags)[1:]:
        name, sep, value = flag[2:].partition("=")
        if not sep:  # --flag / --noflag (booleans)
            name, value = (name[2:], "false") if name not in types else (name, "true")
        values[name] = parse[types[name]](value)
    values.pop("model_dir")
    return trainer.train_and_evaluate(tiny_config(model_dir, **values), domains=domains)
