"""The launch/ scripts: every one parses, prints the command it promises (DRY_RUN=1, or
stand-in srun/scontrol/horovodrun for Slurm), and the local ones really train on
synthetic data: horovod_local.sh -np 2, mirrored.sh on 2 logical CPUs, and
multi_worker_local.sh with 2 MultiWorkerMirroredStrategy workers (fresh and resumed),
plus its failure and timeout paths. The Horovod/MPI/Slurm launchers exit with the ranks'
status (2, 143, ...), not horovodrun's 1: with stand-in launchers, and for real."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from distributed_helpers import wait_for

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
LAUNCH = os.path.join(ROOT, "launch")
BIN = os.path.dirname(sys.executable)
SYNTHETIC_CMD = f"{sys.executable} {os.path.join(TESTS, 'run_synthetic.py')}"
# The brief's small run: 6 steps, checkpoints at 3 and 6.
SMALL_RUN = ["--train_steps=6", "--batch_size=16", "--checkpoint_every=3", "--log_every=3",
             "--export=false"]
SCRIPTS = sorted(name for name in os.listdir(LAUNCH) if name.endswith((".sh", ".sbatch")))
RANK_EXIT = os.path.join(LAUNCH, "_rank_exit.sh")  # in front of the trainer under horovodrun


def launch_env(**extra: str) -> dict:
    env = dict(os.environ)
    for name in ("TF_CONFIG", "DRY_RUN", "NP", "HOSTS", "WORKERS", "INDEX", "DANN_TRAIN_CMD",
                 "PYTHON", "LAUNCHER", "QUIET", "VENV"):  # make exports VENV
        env.pop(name, None)
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONUNBUFFERED="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    env.update(extra)
    return env


def launch(script: str, *args: str, timeout: float = 120, cwd: str = ROOT,
           **env: str) -> subprocess.CompletedProcess:
    path = script if os.path.isabs(script) else os.path.join(LAUNCH, script)
    return subprocess.run(["bash", path, *args], cwd=cwd, env=launch_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def dry_run(script: str, *args: str, **env: str) -> list[str]:
    proc = launch(script, *args, timeout=30, DRY_RUN="1", **env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def last_json(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{") and line.endswith("}")]
    assert lines, f"no final JSON line in:\n{text[-3000:]}"
    return json.loads(lines[-1])


# Measured per process, so they differ between ranks that agree on everything else.
TIMINGS = ("train_seconds", "examples_per_sec")


def without_timings(final: dict) -> dict:
    return {key: value for key, value in final.items() if key not in TIMINGS}


def checkpoint_steps(model_dir) -> list[int]:
    return sorted(int(m.group(1)) for name in os.listdir(model_dir)
                  if (m := re.fullmatch(r"ckpt-(\d+)\.index", name)))


def assert_chief_outputs(model_dir, last_step: int) -> None:
    """Checkpoints in the index, one events file per split holding this run's scalars."""
    assert last_step in checkpoint_steps(model_dir), os.listdir(model_dir)
    index = (model_dir / "checkpoint").read_text()
    assert f'model_checkpoint_path: "ckpt-{last_step}"' in index, index
    for split, tag in (("train", b"label_loss"), ("eval", b"target_accuracy")):
        events = os.listdir(model_dir / split)
        assert len(events) == 1, f"{split}: {events} (only the chief may write events)"
        assert tag in (model_dir / split / events[0]).read_bytes(), f"{split} events lack {tag}"


# --------------------------------------------------------------------------- parse


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_is_executable_and_documents_its_usage(script):
    path = os.path.join(LAUNCH, script)
    proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    head = open(path).read(3000)
    if not script.startswith("_"):
        assert os.access(path, os.X_OK), f"{script} is not executable"
        assert head.startswith("#!/usr/bin/env bash\n")
        assert "Usage" in head, f"{script} has no usage notes"


def test_launchers_are_all_described_in_the_readme():
    readme = open(os.path.join(LAUNCH, "README.md")).read()
    for name in os.listdir(LAUNCH):
        if name.endswith((".sh", ".sbatch", ".yaml")) and not name.startswith("_"):
            assert f"launch/{name}" in readme, f"README.md does not describe {name}"


def test_k8s_mpijob_manifest_is_consistent():
    with open(os.path.join(LAUNCH, "k8s_mpijob.yaml")) as f:
        job = yaml.safe_load(f)
    assert job["apiVersion"] == "kubeflow.org/v2beta1" and job["kind"] == "MPIJob"
    spec = job["spec"]
    launcher, worker = spec["mpiReplicaSpecs"]["Launcher"], spec["mpiReplicaSpecs"]["Worker"]
    assert launcher["replicas"] == 1
    workers, slots = worker["replicas"], spec["slotsPerWorker"]
    assert workers >= 1 and slots >= 1

    command = launcher["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "mpirun"
    np_ = int(command[command.index("-np") + 1])
    assert np_ == workers * slots, "mpirun -np must equal workers x slotsPerWorker"
    gpus = worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == slots, "one rank per GPU: slotsPerWorker must equal the GPUs per worker"
    assert command[command.index("-bind-to") + 1] == "none"
    assert command[command.index("-map-by") + 1] == "slot"

    # The trainer invocation: python -m dann_dist.train with flags the trainer defines.
    start = command.index("dann_dist.train")
    assert command[start - 2:start] == ["python", "-m"]
    from dann_dist.config import Config

    known = {field.name for field in dataclasses.fields(Config)} | {"flagfile"}
    for arg in command[start + 1:]:
        name, _, value = arg.lstrip("-").partition("=")
        assert arg.startswith("--") and name in known, f"unknown trainer flag {arg}"
        if name == "flagfile":
            assert os.path.exists(os.path.join(ROOT, value)), f"{value} does not exist"
        if name == "model_dir":
            mounts = [m["mountPath"] for m in
                      worker["template"]["spec"]["containers"][0]["volumeMounts"]]
            assert any(value.startswith(m + "/") for m in mounts), "model_dir is not on a volume"


# --------------------------------------------------------------------------- dry runs


def test_horovod_local_dry_run():
    cmd = dry_run("horovod_local.sh", "3", "--model_dir=/tmp/x", HOROVODRUN="horovodrun")[0].split()
    assert cmd[:6] == ["horovodrun", "-np", "3", "-H", "localhost:3", "--gloo"]
    assert cmd[6:] == [RANK_EXIT, shutil.which("python", path=launch_env()["PATH"]), "-m",
                       "dann_dist.train", "--model_dir=/tmp/x"]
    # N from NP when the first argument is a flag; the trainer command is overridable.
    cmd = dry_run("horovod_local.sh", "--train_steps=5", NP="4", DANN_TRAIN_CMD="py train.py")[0]
    assert f"-np 4 -H localhost:4 --gloo {RANK_EXIT} py train.py --train_steps=5" in cmd


def test_horovod_hosts_dry_run_and_validation():
    cmd = dry_run("horovod_hosts.sh", "--model_dir=/shared/run", HOSTS="node1:4,node2:4",
                  IFACE="eth0", DANN_TRAIN_CMD="python -m dann_dist.train")[0]
    assert cmd.startswith("horovodrun -np 8 -H node1:4,node2:4 --gloo --network-interface eth0 ")
    assert cmd.endswith(f" {RANK_EXIT} python -m dann_dist.train --model_dir=/shared/run")
    assert "-np 6 " in dry_run("horovod_hosts.sh", HOSTS="a:4,b:4", NP="6")[0]
    for bad in ({"HOSTS": "node1,node2"}, {"HOSTS": "a:4", "NP": "5"}, {}):
        proc = launch("horovod_hosts.sh", timeout=30, DRY_RUN="1", **bad)
        assert proc.returncode == 2 and "error:" in proc.stderr, (bad, proc.stderr)


def test_mpirun_dry_run():
    cmd = dry_run("mpirun.sh", "--model_dir=/shared/run", HOSTS="h1:2,h2:2",
                  NCCL_SOCKET_IFNAME="eth0", DANN_TRAIN_CMD="python -m dann_dist.train")[0].split()
    assert cmd[:5] == ["mpirun", "-np", "4", "-H", "h1:2,h2:2"]
    text = " ".join(cmd)
    for part in ("-bind-to none", "-map-by slot", "-x PYTHONPATH", "-x LD_LIBRARY_PATH",
                 "-x PATH", "-x NCCL_SOCKET_IFNAME", "-x TF_NUM_INTRAOP_THREADS",
                 "-x DANN_RANK_STATUS_DIR", "-mca pml ob1",
                 f"{RANK_EXIT} python -m dann_dist.train --model_dir=/shared/run"):
        assert part in text, part


def test_mirrored_dry_run():
    cmd = dry_run("mirrored.sh", "--model_dir=/tmp/m",
                  DANN_TRAIN_CMD="python -m dann_dist.train")[0]
    assert cmd.strip() == "python -m dann_dist.train --strategy=mirrored --model_dir=/tmp/m"


def test_multi_worker_builds_tf_config():
    out = dry_run("multi_worker.sh", "--model_dir=/shared/run", WORKERS="h1:2222,h2:2222,h3:2222",
                  INDEX="2", DANN_TRAIN_CMD="python -m dann_dist.train")
    assert out[0].startswith("TF_CONFIG=")
    tf_config = json.loads(out[0][len("TF_CONFIG="):])
    assert tf_config == {"cluster": {"worker": ["h1:2222", "h2:2222", "h3:2222"]},
                         "task": {"type": "worker", "index": 2}}
    assert out[1].strip() == ("python -m dann_dist.train --strategy=multi_worker "
                              "--model_dir=/shared/run")
    for bad in ({"WORKERS": "h1:1,h2:1", "INDEX": "2"}, {"WORKERS": "h1,h2", "INDEX": "0"},
                {"WORKERS": "h1:1"}):
        proc = launch("multi_worker.sh", timeout=30, DRY_RUN="1", **bad)
        assert proc.returncode == 2 and "error:" in proc.stderr, (bad, proc.stderr)


# --------------------------------------------------------------------------- Slurm


@pytest.fixture
def fake_slurm(tmp_path):
    """Stand-ins for srun, scontrol and horovodrun that record how they were called.
    FAKE_RC is the launcher's exit status; FAKE_WAIT=1 makes it wait for SIGTERM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "calls"
    launcher = f"""#!/usr/bin/env bash
echo "$(basename "$0") $*" >> {record}
if [[ "${{FAKE_WAIT:-0}} " == "1 " ]]; then
    trap 'echo "TERM received" >> {record}; exit 143' TERM
    echo started > {tmp_path}/started
    for _ in $(seq 300); do sleep 0.1; done
    exit 99
fi
exit "${{FAKE_RC:-0}}"
"""
    scontrol = f"""#!/usr/bin/env bash
echo "scontrol $*" >> {record}
[[ "$1 $2" == "show hostnames" ]] && printf 'node1\\nnode2\\n'
exit 0
"""
    for name, text in (("srun", launcher), ("horovodrun", launcher), ("scontrol", scontrol)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
               SLURM_SUBMIT_DIR=ROOT, SLURM_JOB_NODELIST="node[1-2]", SLURM_NTASKS="8",
               SLURM_TASKS_PER_NODE="4(x2)", SLURM_RESTART_COUNT="0")
    return env, record


def run_sbatch(env, *args, **extra):
    return subprocess.run(["bash", os.path.join(LAUNCH, "slurm.sbatch"), *args], cwd="/",
                          env={**launch_env(), **env, **extra}, capture_output=True, text=True,
                          timeout=60)


def test_slurm_srun_success_does_not_requeue(fake_slurm):
    env, record = fake_slurm
    proc = run_sbatch(env, "--model_dir=/shared/run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = record.read_text().splitlines()
    assert calls == [f"srun --mpi=pmix --kill-on-bad-exit=1 --cpu-bind=none {RANK_EXIT} "
                     "python -m dann_dist.train --model_dir=/shared/run"]


def test_slurm_requeues_after_a_checkpointed_stop(fake_slurm):
    env, record = fake_slurm
    proc = run_sbatch(env, "--model_dir=/shared/run", FAKE_RC="143")
    assert proc.returncode == 143
    assert "scontrol requeue 4242" in record.read_text().splitlines()
    # Not after a real failure, nor beyond MAX_REQUEUES.
    record.write_text("")
    assert run_sbatch(env, FAKE_RC="1").returncode == 1
    proc = run_sbatch(env, FAKE_RC="143", SLURM_RESTART_COUNT="3", MAX_REQUEUES="3")
    assert proc.returncode == 143
    assert "requeue" not in record.read_text()


def test_slurm_passes_sigterm_to_the_trainer_then_requeues(fake_slurm, tmp_path):
    env, record = fake_slurm
    job = subprocess.Popen(["bash", os.path.join(LAUNCH, "slurm.sbatch"), "--model_dir=/r"],
                           cwd="/", env={**launch_env(), **env, "FAKE_WAIT": "1"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 20
        while not (tmp_path / "started").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "started").exists(), "the launcher did not start"
        job.send_signal(signal.SIGTERM)  # what --signal=B:TERM@180 or preemption does
        out, _ = job.communicate(timeout=20)
    finally:
        if job.poll() is None:
            job.kill()
    calls = record.read_text().splitlines()
    assert "TERM received" in calls, out
    assert "scontrol requeue 4242" in calls, out
    assert job.returncode == 143


def test_slurm_horovodrun_launcher_uses_the_allocation(fake_slurm):
    env, record = fake_slurm
    proc = run_sbatch(env, "--model_dir=/shared/run", LAUNCHER="horovodrun",
                      DANN_TRAIN_CMD="python -m dann_dist.train")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = record.read_text().splitlines()
    assert f"horovodrun -np 8 -H node1:4,node2:4 --gloo {RANK_EXIT} python -m dann_dist.train " \
           "--model_dir=/shared/run" in calls, calls
    # Uneven tasks per node.
    assert run_sbatch(env, LAUNCHER="horovodrun", SLURM_TASKS_PER_NODE="3,1").returncode == 0
    last = record.read_text().splitlines()[-1]
    assert last.startswith("horovodrun -np 4 -H node1:3,node2:1 --gloo ")


# --------------------------------------------------------------------------- real runs


def test_horovod_local_two_ranks_train_and_agree(tmp_path):
    model_dir = tmp_path / "run"
    proc = launch("horovod_local.sh", "2", f"--model_dir={model_dir}", *SMALL_RUN,
                  DANN_TRAIN_CMD=SYNTHETIC_CMD, timeout=150)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    finals = {}
    for line in proc.stdout.splitlines():
        if m := re.fullmatch(r"\[(\d+)\]<stdout>:(\{.*\})", line.strip()):
            finals[int(m.group(1))] = json.loads(m.group(2))
    assert sorted(finals) == [0, 1], proc.stdout[-3000:]
    assert without_timings(finals[0]) == without_timings(finals[1]), \
        "the ranks ended with different metrics or weights"
    assert finals[0]["step"] == 6
    assert "strategy=horovod" in output and "replicas=2" in output
    assert checkpoint_steps(model_dir) == [3, 6]
    assert_chief_outputs(model_dir, 6)


def test_mirrored_on_two_logical_cpus(tmp_path):
    model_dir = tmp_path / "run"
    proc = launch("mirrored.sh", f"--model_dir={model_dir}", "--logical_cpus=2", *SMALL_RUN,
                  DANN_TRAIN_CMD=SYNTHETIC_CMD, timeout=120)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "strategy=mirrored" in proc.stderr and "replicas=2" in proc.stderr
    assert last_json(proc.stdout)["step"] == 6
    assert_chief_outputs(model_dir, 6)


def run_multi_worker(tmp_path, model_dir, *flags, name="logs"):
    logs = tmp_path / name
    proc = launch("multi_worker_local.sh", "2", *SYNTHETIC_CMD.split(), "--strategy=multi_worker",
                  f"--model_dir={model_dir}", *SMALL_RUN[1:], *flags,
                  LOG_DIR=str(logs), TIMEOUT="150", GRACE="5", timeout=180)
    worker_logs = [(logs / f"worker-{i}.log").read_text() for i in range(2)]
    assert proc.returncode == 0, proc.stderr[-3000:] + "\n".join(log[-3000:] for log in worker_logs)
    return proc, worker_logs


@pytest.fixture(scope="module")
def multi_worker_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("multi_worker")
    model_dir = tmp_path / "run"
    return (model_dir,) + run_multi_worker(tmp_path, model_dir, "--train_steps=6")


def test_multi_worker_local_two_workers_train_and_agree(multi_worker_run):
    model_dir, proc, (chief_log, worker_log) = multi_worker_run
    assert "strategy=multi_worker" in chief_log and "replicas=2" in chief_log
    assert "fresh run at step 0" in chief_log
    finals = [without_timings(last_json(chief_log)), without_timings(last_json(worker_log))]
    assert finals[0] == finals[1], "the workers ended with different metrics or weights"
    assert finals[0]["step"] == 6
    assert checkpoint_steps(model_dir) == [3, 6]
    assert_chief_outputs(model_dir, 6)
    # Worker 1 took part in every save, into a scratch dir that is gone afterwards.
    assert not (model_dir / "workers_tmp").exists(), os.listdir(model_dir / "workers_tmp")
    assert "fresh run" in proc.stdout, "the chief's log is not echoed live"


def test_multi_worker_local_resumes_all_workers_from_the_chief(multi_worker_run, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(multi_worker_run[0], model_dir)
    # Extending a finished run is a deliberate change of --train_steps.
    _, (chief_log, worker_log) = run_multi_worker(tmp_path, model_dir, "--train_steps=9",
                                                  "--allow_config_change")
    assert f"resumed from {model_dir}/ckpt-6 at step 6" in chief_log
    finals = [without_timings(last_json(chief_log)), without_timings(last_json(worker_log))]
    # Only the chief read a checkpoint; every worker resumed from its restored step.
    assert finals[0].pop("resumed_from_step") == finals[1].pop("resumed_from_step") == 6
    # Worker 1 has no checkpoint of its own: it must get the chief's state (step 6 and
    # weights), or it would run 9 steps against the chief's 3 and the job would fail.
    assert finals[0] == finals[1] and finals[0]["step"] == 9
    assert checkpoint_steps(model_dir) == [3, 6, 9]


def test_multi_worker_local_fails_fast_when_a_worker_fails(tmp_path):
    # Worker 0 runs the real trainer and blocks in MultiWorkerMirroredStrategy waiting for
    # worker 1 (TensorFlow ignores SIGTERM there), worker 1 fails after 8 s.
    pid_file = tmp_path / "chief.pid"
    worker = (f'if [[ $TF_CONFIG == *\'"index": 1}}\'* ]]; then sleep 8; exit 7; fi; '
              f'echo $$ > {pid_file}; '
              f'exec {SYNTHETIC_CMD} --strategy=multi_worker --model_dir={tmp_path}/run '
              f'{" ".join(SMALL_RUN)}')
    start = time.time()
    proc = launch("multi_worker_local.sh", "2", "bash", "-c", worker,
                  LOG_DIR=str(tmp_path / "logs"), TIMEOUT="100", GRACE="4", timeout=90)
    elapsed = time.time() - start
    assert proc.returncode == 7, proc.stderr[-3000:]
    assert "worker 1 failed with status 7" in proc.stderr
    assert elapsed < 40, f"took {elapsed:.0f}s"
    pid = int(pid_file.read_text())
    assert not os.path.exists(f"/proc/{pid}"), "worker 0 was left running"


def test_multi_worker_local_times_out_and_stops_every_worker(tmp_path):
    start = time.time()
    proc = launch("multi_worker_local.sh", "2", "bash", "-c",
                  f"trap '' TERM; echo $$ >> {tmp_path}/pids; sleep 120",
                  LOG_DIR=str(tmp_path / "logs"), TIMEOUT="3", GRACE="2", timeout=60)
    assert proc.returncode == 124, proc.stderr
    assert time.time() - start < 20
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2 and not any(os.path.exists(f"/proc/{p}") for p in pids)


def test_multi_worker_local_passes_sigterm_to_every_worker(tmp_path):
    job = subprocess.Popen(
        ["bash", os.path.join(LAUNCH, "multi_worker_local.sh"), "2", "bash", "-c",
         f"trap 'echo \"$TF_CONFIG\" >> {tmp_path}/stopped; exit 143' TERM; "
         f"echo up >> {tmp_path}/up; while :; do sleep 0.1; done"],
        cwd=ROOT, env=launch_env(LOG_DIR=str(tmp_path / "logs"), TIMEOUT="60", GRACE="10"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and (not (tmp_path / "up").exists()
                                          or len((tmp_path / "up").read_text().split()) < 2):
            time.sleep(0.1)
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=20)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 143, err
    stopped = [json.loads(line) for line in (tmp_path / "stopped").read_text().splitlines()]
    assert sorted(s["task"]["index"] for s in stopped) == [0, 1]
    ports = {tuple(s["cluster"]["worker"]) for s in stopped}
    assert len(ports) == 1 and len(set(next(iter(ports)))) == 2, "workers got different clusters"


def test_multi_worker_local_default_command_gets_the_strategy_flag(tmp_path):
    fake = tmp_path / "fake_trainer.sh"
    fake.write_text('echo "args: $*"; echo "tf_config: $TF_CONFIG"\n')
    proc = launch("multi_worker_local.sh", "2", "--model_dir=/tmp/m", "--train_steps=3",
                  DANN_TRAIN_CMD=f"bash {fake}", LOG_DIR=str(tmp_path / "logs"), QUIET="1",
                  TIMEOUT="30", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for index in range(2):
        log = (tmp_path / "logs" / f"worker-{index}.log").read_text().splitlines()
        assert log[0] == "args: --strategy=multi_worker --model_dir=/tmp/m --train_steps=3"
        assert json.loads(log[1][len("tf_config: "):])["task"] == {"type": "worker", "index": index}


# --------------------------------------------------------------------------- exit status
# horovodrun exits 1 whenever a rank fails, whatever the rank's status; the launchers put
# launch/_rank_exit.sh in front of the trainer and exit with the ranks' status instead.

RANK_LAUNCHERS = {  # script -> environment that points it at the stand-in launcher
    "horovod_local.sh": {"HOROVODRUN": "horovodrun"},
    "horovod_hosts.sh": {"HOROVODRUN": "horovodrun", "HOSTS": "a:1,b:1"},
    "horovod_elastic.sh": {"HOROVODRUN": "horovodrun"},
    "mpirun.sh": {"MPIRUN": "mpirun"},
    "slurm.sbatch": {"LAUNCHER": "srun", "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": ROOT},
}


@pytest.fixture
def fake_ranks(tmp_path):
    """Stand-ins for horovodrun, mpirun and srun that run the command from
    launch/_rank_exit.sh on as two ranks and, like horovodrun, exit 1 when a rank fails
    (FAKE_LAUNCHER_RC overrides). Each rank sleeps and exits as FAKE_RANKS says:
    "status:delay" for rank 0, then rank 1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = """#!/usr/bin/env bash
args=("$@")
cmd=()
for i in "${!args[@]}"; do
    [[ "${args[i]}" == */_rank_exit.sh ]] && { cmd=("${args[@]:i}"); break; }
done
(( ${#cmd[@]} )) || { echo "no launch/_rank_exit.sh in: $*" >&2; exit 1; }
pids=()
for rank in 0 1; do HOROVOD_RANK=$rank "${cmd[@]}" & pids+=($!); done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit "${FAKE_LAUNCHER_RC:-$rc}"
"""
    for name in ("horovodrun", "mpirun", "srun"):
        (bin_dir / name).write_text(launcher)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nexit 0\n")
    (bin_dir / "scontrol").chmod(0o755)
    rank = tmp_path / "rank.sh"
    rank.write_text('read -r -a spec <<<"$FAKE_RANKS"\ns=${spec[$HOROVOD_RANK]}\n'
                    'sleep "${s#*:}"\nexit "${s%%:*}"\n')
    status_root = tmp_path / "status"
    status_root.mkdir()
    return dict(PATH=f"{bin_dir}:{launch_env()['PATH']}", DANN_TRAIN_CMD=f"bash {rank}",
                RANK_STATUS_ROOT=str(status_root)), status_root


@pytest.mark.parametrize("script", sorted(RANK_LAUNCHERS))
@pytest.mark.parametrize("ranks, launcher_rc, expected", [
    ("2:0 2:0.2", None, 2),        # all ranks agree: a bad flag
    ("143:0.3 143:0", None, 143),  # all ranks agree: stopped after a checkpoint
    ("143:0.5 137:0", None, 137),  # disagree: the first failure (rank 1 killed), not 143
    ("0:0 3:0", None, 3),          # one rank failed, the other finished
    ("0:0 0:0", "1", 1),           # no rank failed: the launcher's own status
    ("0:0 0:0", None, 0),
])
def test_launchers_exit_with_the_ranks_status(fake_ranks, script, ranks, launcher_rc, expected):
    env, status_root = fake_ranks
    extra = {**RANK_LAUNCHERS[script], **env, "FAKE_RANKS": ranks}
    if launcher_rc is not None:
        extra["FAKE_LAUNCHER_RC"] = launcher_rc
    proc = launch(script, "--model_dir=/tmp/unused", timeout=60, **extra)
    assert proc.returncode == expected, proc.stdout + proc.stderr
    assert os.listdir(status_root) == [], "the status directory was left behind"


def test_unusable_rank_status_root_is_a_clear_error(fake_ranks, tmp_path):
    env, _ = fake_ranks
    env.update(HOROVODRUN="horovodrun", FAKE_RANKS="0:0 0:0",
               RANK_STATUS_ROOT=str(tmp_path / "missing"))
    proc = launch("horovod_local.sh", "2", timeout=30, **env)
    assert proc.returncode == 2 and f"RANK_STATUS_ROOT={tmp_path}/missing" in proc.stderr


def test_horovod_local_bad_flag_exits_2_not_1(tmp_path):
    status_root = tmp_path / "status"
    status_root.mkdir()
    proc = launch("horovod_local.sh", "2", f"--model_dir={tmp_path}/run", "--train_steps=0",
                  RANK_STATUS_ROOT=str(status_root), timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "--train_steps=0" in output
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert os.listdir(status_root) == []


@pytest.mark.parametrize("target", ["launcher", "one rank"])
def test_horovod_local_sigterm_exits_143_after_a_checkpoint(tmp_path, target):
    pid_dir, status_root, model_dir = tmp_path / "pids", tmp_path / "status", tmp_path / "run"
    pid_dir.mkdir()
    status_root.mkdir()
    job = subprocess.Popen(
        ["bash", os.path.join(LAUNCH, "horovod_local.sh"), "2", f"--model_dir={model_dir}",
         "--train_steps=100000", "--batch_size=16", "--log_every=5", "--eval_every=0",
         "--checkpoint_every=100000", "--export=false", f"--pid_dir={pid_dir}"],
        cwd=ROOT, env=launch_env(DANN_TRAIN_CMD=SYNTHETIC_CMD, RANK_STATUS_ROOT=str(status_root)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = wait_for(job, "step 10/")
        if target == "launcher":
            job.send_signal(signal.SIGTERM)  # what Slurm, Kubernetes or `kill` do
        else:
            os.kill(int((pid_dir / "1").read_text()), signal.SIGTERM)
        out += job.communicate(timeout=60)[0]
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 143, out[-3000:]
    # Both ranks stopped at one step, and the chief's checkpoint of that step is the newest.
    stops = {line[:3]: int(m.group(1)) for line in out.splitlines()
             if (m := re.search(r"process \d+: stop requested at step (\d+)", line))}
    assert sorted(stops) == ["[0]", "[1]"] and len(set(stops.values())) == 1, out[-3000:]
    stopped_at = stops["[0]"]
    index = (model_dir / "checkpoint").read_text()
    assert f'model_checkpoint_path: "ckpt-{stopped_at}"' in index, index
    assert stopped_at in checkpoint_steps(model_dir)
    assert os.listdir(status_root) == []
