"""The runs behind a report: where they live, whether they are finished, training the
missing ones through the trainer's command line (--jobs at a time, each in a slot of its
own: a GPU, or a set of CPU cores with matching thread counts), and reading a finished one."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import os
import queue
import re
import shlex
import subprocess
import sys
import time

from absl import flags, logging

from dann_dist import cli, rundir
from dann_dist.config import Config, steps_for_budget
from dann_dist.report import selection
from dann_dist.report.options import TRAIN_LOG, ReportError, ReportOptions

THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


def run_dir(report_dir: str, adaptation: str, seed: int) -> str:
    return os.path.join(report_dir, adaptation, f"seed{seed}")


def _expanded_train_flags(options: ReportOptions) -> list[str]:
    argv = ([f"--flagfile={options.train_flagfile}"] if options.train_flagfile else [])
    return flags.FlagValues().read_flags_from_files(argv + list(options.train_flags),
                                                    force_gnu=True)


def requested_train_steps(options: ReportOptions) -> int | None:
    """The run length as the trainer will see it (last flag wins; --train_pairs, when
    given, over --batch_size), None if left to its default."""
    found = {}
    args = [a.strip() for a in _expanded_train_flags(options)]
    names = ("train_steps", "train_pairs", "batch_size")
    for arg, following in zip(args, args[1:] + [""]):
        match = re.fullmatch(r"--?(train_steps|train_pairs|batch_size)=(\d+)", arg)
        if match:
            found[match.group(1)] = int(match.group(2))
        elif arg.lstrip("-") in names and following.isdigit():
            found[arg.lstrip("-")] = int(following)
    if found.get("train_pairs"):
        batch = found.get("batch_size", Config.batch_size)
        return steps_for_budget(found["train_pairs"], batch)
    return found.get("train_steps")


def run_state(model_dir: str, adaptation: str, seed: int, train_steps: int | None) -> str:
    """"complete" (metrics.json at the run's last step), "incomplete" or "missing".
    Raises ReportError when the directory holds a run of another adaptation or seed."""
    record = rundir.read_json(rundir.path(model_dir, rundir.RUN_RECORD))
    if record is None:
        return "missing"
    config = record["config"]
    if config.get("adaptation") != adaptation or int(config.get("seed", -1)) != seed:
        raise ReportError(f"{model_dir} holds a run of adaptation={config.get('adaptation')} "
                          f"seed={config.get('seed')}, not {adaptation} seed {seed}: move it away.",
                          cli.EXIT_USAGE)
    metrics = rundir.read_json(rundir.path(model_dir, rundir.METRICS))
    if metrics is None or metrics.get("step") != config["train_steps"]:
        return "incomplete"
    if train_steps is not None and train_steps != config["train_steps"]:
        logging.warning("%s finished at step %d but %d steps are asked for: training on "
                        "(the schedules' progress p = step / train_steps changes meaning)",
                        model_dir, config["train_steps"], train_steps)
        return "incomplete"
    return "complete"


def trainer_argv(options: ReportOptions, adaptation: str, seed: int) -> list[str]:
    if options.train_command:
        command = shlex.split(options.train_command)
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable
    else:
        command = [sys.executable, "-m", "dann_dist.train"]
    flagfile = [f"--flagfile={options.train_flagfile}"] if options.train_flagfile else []
    model_dir = os.path.abspath(run_dir(options.report_dir, adaptation, seed))
    return [*command, *flagfile, *options.train_flags, f"--model_dir={model_dir}",
            f"--adaptation={adaptation}", f"--seed={seed}"]


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one training run goes; a slot holds one run at a time."""

    index: int
    cores: tuple[int, ...] = ()  # its CPU affinity and thread counts; () leaves both alone
    gpu: str | None = None  # its CUDA_VISIBLE_DEVICES; None leaves the GPUs shared

    def describe(self) -> str:
        parts = [f"slot {self.index}"]
        if self.gpu is not None:
            parts.append(f"CUDA_VISIBLE_DEVICES={self.gpu}")
        if self.cores:
            parts.append(f"cores {','.join(map(str, self.cores))}")
        return ", ".join(parts)


def split_cores(cores, parts: int) -> list[tuple[int, ...]]:
    """min(parts, len(cores)) disjoint runs of neighbouring cores, sizes differing by at
    most one (neighbouring core numbers are usually on the same socket)."""
    cores = sorted(set(cores))
    parts = min(parts, len(cores))
    size, extra = divmod(len(cores), parts) if parts else (0, 0)
    shares, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        shares.append(tuple(cores[start:end]))
        start = end
    return shares


def resolve_placement(placement: str, jobs: int, gpus) -> str:
    if placement != "auto":
        return placement
    if jobs == 1:
        return "none"  # one run has the machine to itself: its environment stays as given
    return "gpu" if gpus else "cpu"


def plan_slots(jobs: int, placement: str, cores, gpus) -> list[Slot]:
    """The slots of --jobs concurrent runs: --placement=none gives `jobs` unplaced slots;
    gpu one slot per GPU (at most `jobs`), each with an even share of the cores when there
    are enough; cpu one slot per share of the cores, at most one per core. Fewer slots than
    jobs means fewer runs at a time."""
    placement = resolve_placement(placement, jobs, gpus)
    if placement == "none":
        return [Slot(i) for i in range(jobs)]
    if placement == "gpu":
        if not gpus:
            raise ReportError("--placement=gpu: no GPU found (nvidia-smi -L, "
                              "CUDA_VISIBLE_DEVICES); name them with --devices.", cli.EXIT_USAGE)
        count = min(jobs, len(gpus))
        shares = split_cores(cores, count) if len(set(cores)) >= count else [()] * count
        return [Slot(i, cores=shares[i], gpu=str(gpus[i])) for i in range(count)]
    if placement == "cpu":
        if not cores:
            raise ReportError("--placement=cpu: no CPU core to place runs on.", cli.EXIT_USAGE)
        return [Slot(i, cores=share) for i, share in enumerate(split_cores(cores, jobs))]
    raise ReportError(f"--placement={placement}: unknown.", cli.EXIT_USAGE)


def slot_env(slot: Slot, base, jobs: int) -> dict:
    """The trainer's environment in `slot`: its GPU, and as many TensorFlow and OpenMP
    threads as it has cores (more threads than cores is the oversubscription that slows
    concurrent CPU runs several-fold)."""
    env = dict(base)
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
    elif jobs > 1:
        # Several trainers on one GPU: each must not reserve all its memory up front.
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if slot.cores:
        env.update(dict.fromkeys(THREAD_VARIABLES, str(len(slot.cores))))
    return env


def available_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def parse_nvidia_smi(listing: str) -> list[str]:
    """GPU indices from `nvidia-smi -L` ("GPU 0: NVIDIA H100 ... (UUID: GPU-...)")."""
    return [m.group(1) for m in re.finditer(r"^GPU (\d+):", listing, re.MULTILINE)]


def visible_gpus(devices=(), environ=None) -> list[str]:
    """--devices if given, else CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    if devices:
        return list(devices)
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        listed = [d.strip() for d in environ["CUDA_VISIBLE_DEVICES"].split(",")]
        return [d for d in listed if d and d != "-1"]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(listing)


def placement_slots(options: ReportOptions) -> list[Slot]:
    needs_gpus = options.placement == "gpu" or (options.placement == "auto" and options.jobs > 1)
    gpus = visible_gpus(options.devices) if needs_gpus else []
    slots = plan_slots(options.jobs, options.placement, available_cores(), gpus)
    if len(slots) < options.jobs:
        logging.warning("--jobs=%d but only %d slot(s) for --placement=%s: %d run(s) at a time",
                        options.jobs, len(slots), options.placement, len(slots))
    if any(s.cores for s in slots) and not hasattr(os, "sched_setaffinity"):
        logging.warning("this OS cannot pin processes to cores: only the thread counts are set")
    return slots


def start_in_slot(argv: list[str], slot: Slot, **popen_kwargs) -> subprocess.Popen:
    """Popen with the child pinned to the slot's cores. Linux keeps an affinity mask per
    thread and a child inherits the mask of the thread that forks it: this thread takes the
    slot's cores for the fork and its own back after, leaving the report's other threads
    and their children alone (preexec_fn, the alternative, can deadlock in a threaded
    parent)."""
    if not slot.cores or not hasattr(os, "sched_setaffinity"):
        return subprocess.Popen(argv, **popen_kwargs)
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, slot.cores)
    try:
        return subprocess.Popen(argv, **popen_kwargs)
    finally:
        os.sched_setaffinity(0, own)


def _train_one(options: ReportOptions, adaptation: str, seed: int,
               slot: Slot) -> tuple[int, float, str]:
    model_dir = run_dir(options.report_dir, adaptation, seed)
    os.makedirs(model_dir, exist_ok=True)
    log_path = os.path.join(model_dir, TRAIN_LOG)
    argv = trainer_argv(options, adaptation, seed)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n# dann_dist.report {datetime.datetime.now().isoformat(timespec='seconds')}"
                  f" ({slot.describe()}): {shlex.join(argv)}\n")
        log.flush()
        try:
            returncode = start_in_slot(argv, slot, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL,
                                       env=slot_env(slot, os.environ, options.jobs)).wait()
        except OSError as err:  # e.g. a --train_command that does not exist
            log.write(f"cannot start the trainer: {err}\n")
            returncode = 127
    return returncode, time.perf_counter() - start, log_path


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _train_logged(options: ReportOptions, key: tuple[str, int], slot: Slot) -> tuple | None:
    """Trains one run; returns (key, exit status, log path) if it failed."""
    adaptation, seed = key
    logging.info("training %s seed %d in %s (log: %s; %s)", adaptation, seed,
                 run_dir(options.report_dir, adaptation, seed), TRAIN_LOG, slot.describe())
    returncode, seconds, log_path = _train_one(options, adaptation, seed, slot)
    if returncode:
        logging.error("%s seed %d: trainer exited %d after %.0f s", adaptation, seed,
                      returncode, seconds)
        return key, returncode, log_path
    logging.info("%s seed %d: trained in %.0f s", adaptation, seed, seconds)
    return None


def train_missing(options: ReportOptions, todo: list[tuple[str, int]],
                  slots: list[Slot] | None = None) -> set[tuple[str, int]]:
    """Trains (or resumes) the given runs, one per slot at a time (default: --placement's
    slots for --jobs); a slot takes its next run only when its last one has ended."""
    slots = placement_slots(options) if slots is None else slots
    free = queue.SimpleQueue()
    for slot in slots:
        free.put(slot)

    def train(key):
        # As many workers as slots: a worker always finds one free.
        slot = free.get_nowait()
        try:
            return _train_logged(options, key, slot)
        finally:
            free.put(slot)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
        outcomes = list(pool.map(train, todo))
    failures = [f for f in outcomes if f is not None]
    if failures:
        stopped = [code for _, code, _ in failures if code >= 128]
        details = "\n".join(f"{a} seed {s}: exit {code}; last lines of {path}:\n{log_tail(path)}"
                            for (a, s), code, path in failures)
        raise ReportError(f"{len(failures)} training run(s) failed:\n{details}",
                          stopped[0] if stopped else cli.EXIT_ERROR)
    return set(todo)


def load_run_result(model_dir: str, guard: float) -> dict:
    """config, derived schedule, final metrics, deduplicated evaluation history and
    selections of one run."""
    record = rundir.read_json(rundir.path(model_dir, rundir.RUN_RECORD))
    metrics = rundir.read_json(rundir.path(model_dir, rundir.METRICS))
    history = selection.read_history(rundir.path(model_dir, rundir.EVAL_HISTORY))
    chosen = selection.select_all(history, guard)
    if chosen[selection.FINAL] is None:
        chosen[selection.FINAL] = metrics  # a run without a history: its final evaluation
    return {"config": record["config"], "channel_mean": record["channel_mean"],
            "derived": record.get("derived", {}), "metrics": metrics, "history": history,
            "selected": chosen}


def _train_and_recheck(options: ReportOptions, states: dict) -> set:
    todo = [k for k in states if states[k] != "complete"]
    if not todo or options.collect_only:
        return set()
    trained = train_missing(options, todo)
    for key in todo:
        states[key] = run_state(run_dir(options.report_dir, *key), *key, None)
        if states[key] != "complete":
            raise ReportError(f"{run_dir(options.report_dir, *key)}: the trainer exited 0 "
                              "but left no final metrics.json.")
    return trained


def collect_runs(options: ReportOptions, adaptations: list[str]) -> dict:
    """{(adaptation, seed): run} for every requested run, training the missing ones
    unless --collect_only; a run's "result" is None when it is not finished."""
    keys = [(a, s) for a in adaptations
            for s in range(options.first_seed, options.first_seed + options.seeds)]
    try:
        train_steps = requested_train_steps(options) if not options.collect_only else None
    except flags.Error as err:
        raise ReportError(f"trainer flags: {err}", cli.EXIT_USAGE) from err
    states = {k: run_state(run_dir(options.report_dir, *k), *k, train_steps) for k in keys}
    trained = _train_and_recheck(options, states)
    runs = {}
    for key in keys:
        model_dir = run_dir(options.report_dir, *key)
        result = (load_run_result(model_dir, options.entropy_guard)
                  if states[key] == "complete" else None)
        runs[key] = {"adaptation": key[0], "seed": key[1], "model_dir": model_dir,
                     "result": result,
                     "status": ("missing" if result is None else "trained" if key in trained
                                else "collected")}
    return runs
