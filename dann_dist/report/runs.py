"""The runs behind a report: where they live, whether they are finished, training the
missing ones through the trainer's command line, and reading a finished one."""

from __future__ import annotations

import concurrent.futures
import datetime
import os
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


def _train_one(options: ReportOptions, adaptation: str, seed: int) -> tuple[int, float, str]:
    model_dir = run_dir(options.report_dir, adaptation, seed)
    os.makedirs(model_dir, exist_ok=True)
    log_path = os.path.join(model_dir, TRAIN_LOG)
    argv = trainer_argv(options, adaptation, seed)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n# dann_dist.report {datetime.datetime.now().isoformat(timespec='seconds')}: "
                  f"{shlex.join(argv)}\n")
        log.flush()
        env = dict(os.environ)
        if options.jobs > 1:
            # Several trainers on one GPU: each must not reserve all its memory up front.
            env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        try:
            returncode = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env).returncode
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


def _train_logged(options: ReportOptions, key: tuple[str, int]) -> tuple | None:
    """Trains one run; returns (key, exit status, log path) if it failed."""
    adaptation, seed = key
    logging.info("training %s seed %d in %s (log: %s)", adaptation, seed,
                 run_dir(options.report_dir, adaptation, seed), TRAIN_LOG)
    returncode, seconds, log_path = _train_one(options, adaptation, seed)
    if returncode:
        logging.error("%s seed %d: trainer exited %d after %.0f s", adaptation, seed,
                      returncode, seconds)
        return key, returncode, log_path
    logging.info("%s seed %d: trained in %.0f s", adaptation, seed, seconds)
    return None


def train_missing(options: ReportOptions, todo: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Trains (or resumes) the given runs, --jobs at a time; returns those trained."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=options.jobs) as pool:
        outcomes = list(pool.map(lambda key: _train_logged(options, key), todo))
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
    keys = [(a, s) for a in adaptations for s in range(options.seeds)]
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
