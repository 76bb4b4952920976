"""The timing harness. Train jobs (the baseline, ours, the reference matmul) run in
alternating rounds, the order reversed every other round: on a shared machine both sides
then see the same load. Every job also records the cores this process kept busy (its
CPU time over wall time). Evaluation rounds follow: ours, then the baseline."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclasses.dataclass
class TrainTimings:
    """Per job and round: rate (the job's return value) and cores busy. `rates` holds our
    configurations; the baseline, its tf.function variant and the matmul have their own."""
    rates: dict[str, list[float]]
    cores: dict[str, list[float]]
    baseline: list[float]
    origin_tf_function: list[float]
    matmul: list[float]


@dataclasses.dataclass
class EvalTimings:
    """Per round: our seconds and CPU seconds; the baseline's (forward seconds, loop
    seconds, samples looped over) and its CPU seconds scaled to the whole test sets."""
    seconds: list[float] = dataclasses.field(default_factory=list)
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)
    baseline: list[tuple[float, float, int]] = dataclasses.field(default_factory=list)
    baseline_cpu_seconds: list[float] = dataclasses.field(default_factory=list)


def alternate_rounds(jobs: list[tuple[str, Callable[[], float]]], rounds: int,
                     barrier: Callable[[], None]) -> TrainTimings:
    """Runs every job once per round (after a barrier: ranks start each job together)."""
    rates = {name: [] for name, _ in jobs}
    # Cores this process kept busy during each job (CPU time of all its threads / wall
    # time): on a shared machine, what it actually got; on an idle one, what it used.
    cores = {name: [] for name, _ in jobs}
    for round_index in range(rounds):
        for name, job in (jobs if round_index % 2 == 0 else jobs[::-1]):
            barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            rates[name].append(job())
            cores[name].append((time.process_time() - cpu) / (time.perf_counter() - wall))
    return TrainTimings(baseline=rates.pop("baseline", []), matmul=rates.pop("matmul", []),
                        origin_tf_function=rates.pop("origin_tf_function", []),
                        rates=rates, cores=cores)


def eval_rounds(rounds: int, barrier: Callable[[], None], evaluate_ours: Callable[[], object],
                evaluate_baseline: Callable[[], tuple] | None) -> EvalTimings:
    """Times our evaluation, then the baseline's (None: not timed), `rounds` times."""
    timings = EvalTimings()
    for _ in range(rounds):
        barrier()
        start, cpu = time.perf_counter(), time.process_time()
        evaluate_ours()
        timings.seconds.append(time.perf_counter() - start)
        timings.cpu_seconds.append(time.process_time() - cpu)
        if evaluate_baseline is not None:
            times, cpu_seconds = evaluate_baseline()
            timings.baseline.append(times)
            timings.baseline_cpu_seconds.append(cpu_seconds)
    return timings
