"""Shared by the bench's tests: tiny settings, a runner, and checks of reported figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")

# A few steps on small arrays: the whole command takes seconds, not minutes.
TINY = ["--batch_size=16", "--steps=3", "--warmup_steps=1", "--rounds=2", "--eval_rounds=1",
        "--baseline_steps=2", "--train_examples=256", "--baseline_train_examples=256",
        "--eval_examples=64", "--eval_batch_size=32", "--baseline_eval_loop_examples=16",
        "--pipeline_batches=5", "--peak_matmul_size=256"]


def env() -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    return env


# 120 s was too short for the two-rank bench on the 2026-12-05 AVX2 EPYC under the 2-worker
# suite: it had printed its aggregate and was still exiting when killed (the suite ran 23 min
# there against 14 on the previous AVX2 CPU). A hang still fails, at 300 s.
def run(cmd: list[str], timeout: int = 300, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == expect, (f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                                       f"stderr:\n{proc.stderr[-3000:]}")
    return proc


def last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        start = line.find("{")
        if start >= 0:
            return json.loads(line[start:])
    raise AssertionError(f"no JSON line in:\n{stdout[-3000:]}")


def positive(value, what: str) -> None:
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, \
        f"{what} = {value!r}"
