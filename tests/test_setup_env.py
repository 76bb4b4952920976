"""scripts/setup_env.sh and scripts/horovod_build.sh: the idempotence stamp covers the opt-in
Horovod features, bad feature values are refused, --check tells a build with other features
apart, and the default build is Gloo-only, whose all-reduce kernels exist for the CPU only
(on a GPU host TensorFlow therefore stages GPU gradients through host memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
SETUP = os.path.join(ROOT, "scripts", "setup_env.sh")
BUILD = os.path.join(ROOT, "scripts", "horovod_build.sh")
FEATURE_VARS = ("HOROVOD_GPU_OPERATIONS", "HOROVOD_WITH_MPI", "HOROVOD_CUDA_HOME",
                "HOROVOD_NCCL_HOME", "DANN_SKIP_HOROVOD", "DANN_SKIP_PACKAGE", "DANN_TF_PACKAGE")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in FEATURE_VARS}
    env.update(TF_CPP_MIN_LOG_LEVEL="3")
    env.update(extra)
    return env


def test_the_stamp_covers_the_opt_in_horovod_features(tmp_path):
    """A stand-in python records every call: a second run with the same inputs makes none,
    a run with another Horovod feature set starts over."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    fake = venv / "bin" / "python"
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\nexit 0\n")
    fake.chmod(0o755)

    def setup(**extra) -> int:
        before = calls.read_text().count("\n") if calls.exists() else 0
        subprocess.run(["bash", SETUP], env=clean_env(VENV=str(venv), **extra), check=True,
                       capture_output=True, text=True, timeout=60)
        return calls.read_text().count("\n") - before

    assert setup() > 0
    assert (venv / ".dann_dist_setup").exists()
    assert setup() == 0
    assert setup(HOROVOD_WITH_MPI="1") > 0
    assert setup(HOROVOD_WITH_MPI="1") == 0
    assert setup(HOROVOD_WITH_MPI="1", HOROVOD_GPU_OPERATIONS="NCCL") > 0
    assert setup() > 0


def test_bad_feature_values_are_refused_with_status_2():
    for name, value in (("HOROVOD_GPU_OPERATIONS", "nccl2"), ("HOROVOD_WITH_MPI", "yes")):
        proc = subprocess.run(["bash", BUILD, "--check", sys.executable],
                              env=clean_env(**{name: value}), capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"{name}={value}: use ")
    proc = subprocess.run(["bash", BUILD, ROOT], env=clean_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "not a Python executable" in proc.stderr


def test_check_tells_the_installed_features_apart():
    def check(**extra) -> int:
        return subprocess.run(["bash", BUILD, "--check", sys.executable], env=clean_env(**extra),
                              capture_output=True, timeout=120).returncode

    assert check() == 0  # the venv holds the default build
    assert check(HOROVOD_WITH_MPI="1") == 1
    assert check(HOROVOD_GPU_OPERATIONS="NCCL") == 1


def test_the_default_build_reduces_on_the_cpu_only():
    """No GPU kernel for Horovod's all-reduce ops: TensorFlow places them on the CPU and
    copies GPU inputs to host memory and the results back (BENCHMARKS.md, GPU device check)."""
    probe = (
        "import json, horovod.tensorflow as hvd\n"
        "from tensorflow.python.framework import kernels\n"
        "devices = {op: sorted({k.device_type for k in "
        "kernels.get_registered_kernels_for_op(op).kernel})\n"
        "           for op in ('HorovodAllreduce', 'HorovodGroupedAllreduce')}\n"
        "print(json.dumps({'gloo': hvd.gloo_built(), 'nccl': hvd.nccl_built(),\n"
        "                  'mpi': hvd.mpi_built(), 'devices': devices}))\n")
    proc = subprocess.run([sys.executable, "-c", probe], env=clean_env(), capture_output=True,
                          text=True, timeout=120, check=True)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["gloo"] and not report["nccl"] and not report["mpi"]
    assert report["devices"] == {"HorovodAllreduce": ["CPU"], "HorovodGroupedAllreduce": ["CPU"]}
