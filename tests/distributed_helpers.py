"""Subprocess runners shared by the multi-process tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
BIN = os.path.dirname(sys.executable)
RUN_SYNTHETIC = os.path.join(TESTS, "run_synthetic.py")


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
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def horovodrun(np_: int, args: list[str]) -> list[str]:
    return [os.path.join(BIN, "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo",
            sys.executable] + args


def synthetic(model_dir, *flags: str) -> list[str]:
    return [RUN_SYNTHETIC, f"--model_dir={model_dir}", "--train_steps=6", "--batch_size=16",
            "--checkpoint_every=3", "--log_every=3", "--eval_every=0", "--eval_batch_size=64",
            "--export=false", *flags]


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
