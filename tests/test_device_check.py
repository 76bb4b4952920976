"""scripts/device_check.sh on a machine without a GPU: it refuses quickly with one line, the
status it documents and the reason in its JSON file; a stuck part is killed by its timeout
and recorded as such; the checkpoint comparison of its equivalence part flags a difference."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
SCRIPT = os.path.join(ROOT, "scripts", "device_check.sh")
VENV = os.path.dirname(os.path.dirname(sys.executable))
# What the preflight calls before it can refuse: a PATH with these tools and no nvidia-smi.
PREFLIGHT_TOOLS = ("bash", "python3", "mkdir", "mktemp", "date", "dirname", "cat", "rm", "tee",
                   "timeout", "pwd", "mv")


def run_check(tmp_path, *args: str, path: str | None = None, **env: str):
    full_env = dict(os.environ, VENV=VENV, TF_CPP_MIN_LOG_LEVEL="2",
                    DANN_DATA_DIR=str(tmp_path / "data"))
    full_env.pop("OUT", None)
    if path is not None:
        full_env["PATH"] = path
    full_env.update(env)
    out_dir = tmp_path / "out"
    started = time.time()
    proc = subprocess.run(["bash", SCRIPT, *args, str(out_dir)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=240)
    report = json.loads((out_dir / "device_check.json").read_text())
    return proc, report, time.time() - started


def tool_dir(tmp_path, nvidia_smi_output: str | None) -> str:
    """A bin folder with the preflight's tools, plus a stand-in nvidia-smi if asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in PREFLIGHT_TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    # A python3 that runs on its own (a pyenv shim would need the whole PATH).
    os.replace(bin_dir / "python3", bin_dir / "python3.shim")
    os.symlink(sys.executable, bin_dir / "python3")
    if nvidia_smi_output is not None:
        stub = bin_dir / "nvidia-smi"
        stub.write_text(f"#!/bin/sh\nprintf '%s' '{nvidia_smi_output}'\n")
        stub.chmod(0o755)
    return str(bin_dir)


def test_without_a_driver_it_refuses_at_once_with_one_line(tmp_path):
    proc, report, seconds = run_check(tmp_path, path=tool_dir(tmp_path, None))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "device_check: no NVIDIA driver: nvidia-smi is not on PATH (run on a GPU host, or use "
        "--cpu-rehearsal)"]
    assert report["status"] == "refused" and "no NVIDIA driver" in report["reason"]
    assert report["parts"] == []  # nothing set up, nothing run
    assert seconds < 15


def test_a_driver_listing_no_gpu_is_refused_and_a_rerun_keeps_the_last_report(tmp_path):
    path = tool_dir(tmp_path, "")
    proc, report, _ = run_check(tmp_path, path=path)
    assert proc.returncode == 3
    assert proc.stderr.strip() == "device_check: no GPU: nvidia-smi lists none"
    assert report["reason"] == "no GPU: nvidia-smi lists none"
    run_check(tmp_path, path=path)
    previous = json.loads((tmp_path / "out" / "device_check.previous.json").read_text())
    assert previous["started"] == report["started"] and previous["reason"] == report["reason"]


def test_a_tensorflow_that_cannot_use_the_gpu_is_refused(tmp_path):
    """A stand-in nvidia-smi lists a GPU. With the CPU wheel (the usual venv) the script
    refuses before any setup; with the CUDA wheel it gets as far as TensorFlow, which finds
    no GPU here, and refuses then."""
    stub = tool_dir(tmp_path, "NVIDIA H200, 143771 MiB, 580.159.03")
    cuda = subprocess.run([sys.executable, "-c", "import tensorflow as tf; "
                           "print(tf.test.is_built_with_cuda())"], capture_output=True,
                          text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                          check=True).stdout.strip() == "True"
    proc, report, seconds = run_check(tmp_path, path=f"{stub}:{os.environ['PATH']}",
                                      DEVICE_CHECK_SETUP="0")
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("GPUs: NVIDIA H200")
    if cuda:
        assert lines[1].startswith("device_check: TensorFlow sees no GPU although nvidia-smi")
        probe = report["parts"][0]
        assert probe["name"] == "probe" and probe["figures"]["error"] == "TensorFlow sees no GPU"
    else:
        assert lines[1].startswith(f"device_check: TensorFlow in {VENV} is not the CUDA build")
        assert report["parts"] == []
        assert seconds < 60
    assert report["status"] == "refused" and report["reason"] == lines[1][len("device_check: "):]


def test_bad_arguments_exit_2(tmp_path):
    proc = subprocess.run(["bash", SCRIPT, "--gpus=2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_a_stuck_part_is_killed_by_its_timeout_and_recorded(tmp_path):
    pid_file = tmp_path / "hang.pid"
    hang = tmp_path / "hang.sh"
    hang.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    hang.chmod(0o755)
    # Test hooks (see the script's header): one sleeping part, every timeout capped at 2 s.
    proc, report, seconds = run_check(
        tmp_path, "--cpu-rehearsal", DEVICE_CHECK_SETUP="0", DEVICE_CHECK_PARTS="",
        DEVICE_CHECK_TEST_HANG_CMD=str(hang), DEVICE_CHECK_TEST_TIMEOUT_S="2")
    assert proc.returncode == 1
    assert seconds < 30
    (part,) = report["parts"]
    assert part["name"] == "test_hang" and part["status"] == "timeout"
    assert part["reason"] == "killed after its 2s timeout" and part["timeout_s"] == 2
    assert report["status"] == "failed" and report["failed"] == ["test_hang"]
    assert "not passed: test_hang" in proc.stderr
    pid = int(pid_file.read_text())
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()


def test_parts_past_the_budget_are_skipped_not_run(tmp_path):
    proc, report, seconds = run_check(
        tmp_path, "--cpu-rehearsal", DEVICE_CHECK_SETUP="0", DEVICE_CHECK_PARTS="smoke bench",
        DEVICE_CHECK_BUDGET_S="10")
    assert proc.returncode == 1 and seconds < 20
    assert [(p["name"], p["status"]) for p in report["parts"]] == [("smoke", "skipped"),
                                                                   ("bench", "skipped")]
    assert report["parts"][0]["reason"].startswith("out of time")


def _parts_module():
    spec = importlib.util.spec_from_file_location(
        "device_check_parts", os.path.join(ROOT, "scripts", "device_check_parts.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checkpoint_comparison_reports_the_largest_difference(tmp_path, capsys):
    import tensorflow as tf

    parts = _parts_module()
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    for name, delta in (("a", 0.0), ("b", 0.0), ("c", 3e-4)):
        shifted = weights.copy()
        shifted[1, 2] += delta
        ckpt = tf.train.Checkpoint(w=tf.Variable(shifted), step=tf.Variable(6, dtype=tf.int64))
        ckpt.save(str(tmp_path / name / "ckpt"))
    assert parts.compare(tf, np, str(tmp_path / "a"), str(tmp_path / "b"), 1e-5) == 0
    same = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert same["max_abs_difference"] == 0.0 and same["variables"] >= 2
    assert parts.compare(tf, np, str(tmp_path / "a"), str(tmp_path / "c"), 1e-5) == 1
    differ = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert abs(differ["max_abs_difference"] - 3e-4) < 1e-6
    assert differ["worst_variable"].startswith("w/") and "exceeds" in differ["error"]
