"""report --jobs: concurrent training runs each in a slot of their own (a GPU, or a share of
the CPU cores with matching thread counts), a slot reused only when its run has ended. No
real training: a fake trainer reports what it was given."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from dann_dist.report import ReportError, ReportOptions, check_options, runs

from distributed_helpers import ROOT

THREADS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def _all_disjoint(slots):
    cores = [c for s in slots for c in s.cores]
    return len(cores) == len(set(cores))


def test_cores_are_split_evenly_into_disjoint_neighbouring_shares():
    assert runs.split_cores([7, 0, 1, 2, 3, 4, 5, 6, 3], 3) == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert runs.split_cores(range(4), 2) == [(0, 1), (2, 3)]
    assert runs.split_cores([2, 5], 4) == [(2,), (5,)]  # at most one slot per core
    assert runs.split_cores([], 2) == []


def test_cpu_slots_and_their_environment():
    slots = runs.plan_slots(2, "cpu", range(16), gpus=[])
    assert [s.cores for s in slots] == [tuple(range(8)), tuple(range(8, 16))]
    assert all(s.gpu is None for s in slots)
    base = {"TF_NUM_INTRAOP_THREADS": "16", "PATH": "/bin"}
    env = runs.slot_env(slots[1], base, jobs=2)
    assert {k: env[k] for k in THREADS} == dict.fromkeys(THREADS, "8")
    assert env["PATH"] == "/bin" and base["TF_NUM_INTRAOP_THREADS"] == "16"  # a copy
    # More jobs than cores: one core each, and as many slots as cores.
    slots = runs.plan_slots(5, "cpu", [0, 1, 2], gpus=[])
    assert [s.cores for s in slots] == [(0,), (1,), (2,)]
    assert runs.slot_env(slots[0], {}, jobs=5)["TF_NUM_INTEROP_THREADS"] == "1"
    # auto: no GPU means cores; a single job keeps the environment as it is.
    assert runs.plan_slots(3, "auto", range(6), gpus=[]) == runs.plan_slots(3, "cpu", range(6),
                                                                             gpus=[])
    alone = runs.plan_slots(1, "auto", range(6), gpus=["0"])
    assert alone == [runs.Slot(0)]
    assert runs.slot_env(alone[0], base, jobs=1) == base


def test_gpu_slots_one_run_per_gpu():
    slots = runs.plan_slots(2, "auto", range(16), gpus=["0", "1", "2", "3"])
    assert [s.gpu for s in slots] == ["0", "1"]
    assert [len(s.cores) for s in slots] == [8, 8] and _all_disjoint(slots)
    env = runs.slot_env(slots[1], {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, jobs=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["TF_NUM_INTRAOP_THREADS"] == "8"
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in env  # the GPU is its own
    six = runs.plan_slots(6, "gpu", range(2), gpus=["GPU-a", "GPU-b", "GPU-c"])
    assert [s.gpu for s in six] == ["GPU-a", "GPU-b", "GPU-c"]
    assert all(s.cores == () for s in six)  # fewer cores than GPUs: cores left shared
    with pytest.raises(ReportError) as err:
        runs.plan_slots(2, "gpu", range(4), gpus=[])
    assert err.value.exit_code == 2 and "--placement=gpu" in str(err.value)


def test_unplaced_runs_share_and_let_the_gpu_memory_grow():
    slots = runs.plan_slots(3, "none", range(4), gpus=["0"])
    assert slots == [runs.Slot(0), runs.Slot(1), runs.Slot(2)]
    env = runs.slot_env(slots[0], {"TF_NUM_INTRAOP_THREADS": "4"}, jobs=3)
    assert env == {"TF_NUM_INTRAOP_THREADS": "4", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert runs.slot_env(slots[0], {"TF_FORCE_GPU_ALLOW_GROWTH": "false"},
                         jobs=3)["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"


def test_visible_gpus_from_flag_environment_or_nvidia_smi():
    assert runs.visible_gpus(("3", "1"), environ={"CUDA_VISIBLE_DEVICES": "0"}) == ["3", "1"]
    assert runs.visible_gpus(environ={"CUDA_VISIBLE_DEVICES": "2, 3,"}) == ["2", "3"]
    assert runs.visible_gpus(environ={"CUDA_VISIBLE_DEVICES": ""}) == []
    assert runs.visible_gpus(environ={"CUDA_VISIBLE_DEVICES": "-1"}) == []
    listing = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1b2c)\n"
               "  MIG 1g.10gb     Device  0: (UUID: MIG-9f8e)\n"
               "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-3d4e)\n")
    assert runs.parse_nvidia_smi(listing) == ["0", "1"]


def test_placement_and_devices_are_checked(tmp_path):
    for bad, flag in ((dict(placement="gpus"), "--placement"),
                      (dict(devices=("0", "0")), "--devices"),
                      (dict(devices=("0", "")), "--devices"),
                      (dict(devices=("0",), placement="cpu"), "--devices")):
        with pytest.raises(ReportError) as err:
            check_options(ReportOptions(report_dir=str(tmp_path), train_flagfile="", **bad))
        assert err.value.exit_code == 2 and str(err.value).startswith(flag), bad
    check_options(ReportOptions(report_dir=str(tmp_path), train_flagfile="", devices=("0", "1"),
                                placement="gpu"))
    proc = subprocess.run([sys.executable, "-m", "dann_dist.report", "--placement=bogus",
                           f"--report_dir={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--placement" in proc.stderr


def test_a_slot_holds_one_run_at_a_time(tmp_path, monkeypatch):
    held, lock = [], threading.Lock()
    first_three = threading.Barrier(3, timeout=10)  # passes only if three run at once

    def fake_train_one(options, adaptation, seed, slot):
        start = time.perf_counter()
        if seed < 3:
            first_three.wait()
        time.sleep(0.05)
        with lock:
            held.append((slot, start, time.perf_counter()))
        return 0, 0.05, "log"

    monkeypatch.setattr(runs, "_train_one", fake_train_one)
    options = ReportOptions(report_dir=str(tmp_path), jobs=3)
    slots = runs.plan_slots(3, "cpu", range(6), gpus=[])
    todo = [("dann", seed) for seed in range(7)]
    assert runs.train_missing(options, todo, slots) == set(todo)
    assert len(held) == 7 and {s for s, _, _ in held} == set(slots)
    overlapping = [(a, b) for i, a in enumerate(held) for b in held[i + 1:]
                   if a[1] < b[2] and b[1] < a[2]]
    assert overlapping and all(a[0] != b[0] for a, b in overlapping)


FAKE_TRAINER = """
import json, os, sys, time
model_dir = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--model_dir=")][0]
start = time.time()
time.sleep(0.2)
with open(os.path.join(model_dir, "seen.json"), "w") as f:
    json.dump({"cores": sorted(os.sched_getaffinity(0)), "start": start, "end": time.time(),
               "env": {k: os.environ.get(k) for k in %r}}, f)
""" % (THREADS,)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs CPU affinity (Linux)")
def test_launched_trainers_run_pinned_with_matching_threads(tmp_path, monkeypatch):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    parent = sorted(os.sched_getaffinity(0))
    jobs = min(2, len(parent))  # two slots on two or more cores; one core gives one slot
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "99")  # what the slot must replace
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    options = ReportOptions(report_dir=str(tmp_path / "r"), jobs=jobs, placement="cpu",
                            train_flagfile="", train_command=f"python {script}")
    todo = [("dann", 0), ("dann", 1), ("dann", 2)]
    runs.train_missing(options, todo)
    shares = runs.split_cores(parent, jobs)
    seen = [json.loads((tmp_path / "r" / a / f"seed{s}" / "seen.json").read_text())
            for a, s in todo]
    for run in seen:
        assert tuple(run["cores"]) in shares
        assert run["env"] == dict.fromkeys(THREADS, str(len(run["cores"])))
    for i, a in enumerate(seen):
        for b in seen[i + 1:]:
            if a["start"] < b["end"] and b["start"] < a["end"]:
                assert not set(a["cores"]) & set(b["cores"])
    assert sorted(os.sched_getaffinity(0)) == parent  # the report's own threads untouched
    log = (tmp_path / "r" / "dann" / "seed0" / "train.log").read_text()
    assert "(slot " in log and "cores " in log


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_the_fork_happens_on_the_slots_cores_and_the_thread_gets_its_own_back(monkeypatch):
    # Meaningful on one core too, where the real child above cannot show a narrower mask.
    calls = []
    own = os.sched_getaffinity(0)
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: calls.append(
        ("affinity", pid, set(cores))))
    monkeypatch.setattr(runs.subprocess, "Popen", lambda argv, **kw: calls.append(
        ("popen", argv, kw["env"])) or "process")
    slot = runs.Slot(1, cores=(4, 5))
    assert runs.start_in_slot(["trainer"], slot, env={"A": "1"}) == "process"
    assert calls == [("affinity", 0, {4, 5}), ("popen", ["trainer"], {"A": "1"}),
                     ("affinity", 0, own)]
    calls.clear()
    runs.start_in_slot(["trainer"], runs.Slot(0), env={})
    assert calls == [("popen", ["trainer"], {})]  # no cores: no pinning
