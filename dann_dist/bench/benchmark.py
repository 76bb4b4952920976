"""One bench run, in order: set-up, synthetic data, our configurations built and warmed
up, the origin baseline built and warmed up, the timed rounds, then the figures.

The timed rounds: train jobs (the baseline, ours, the reference matmul) run in
alternating rounds, the order reversed every other round, so that on a shared machine
both sides see the same load. Every job also records the cores this process kept busy
(its CPU time over wall time). Evaluation rounds follow: ours, then the baseline."""

from __future__ import annotations

import time
from typing import Callable

import keras
import tensorflow as tf

from dann_dist import distribute
from dann_dist.bench import configs, machine, printout
from dann_dist.bench import figures as figures_lib
from dann_dist.bench.figures import EvalTimings, TrainTimings
from dann_dist.bench.origin import Baseline
from dann_dist.bench.ours import Ours, SyntheticData, build_ours, synthetic_data


class BenchError(RuntimeError):
    """Nothing could be timed (exit status 1)."""


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


def ranks(backend: distribute.Backend) -> tuple[bool, int, int]:
    """(whether under Horovod, this process's rank, the number of processes)."""
    if isinstance(backend, distribute.Horovod):
        return True, backend.hvd.rank(), backend.hvd.size()
    return False, 0, 1


def timed_jobs(settings, precision: str, ours: dict[str, Ours],
               baseline: Baseline | None) -> list[tuple[str, Callable[[], float]]]:
    """The jobs of every train round: the baseline, ours, and the reference matmul."""
    jobs = []
    if baseline is not None:
        jobs.append(("baseline", lambda: baseline.steps_per_sec(settings.baseline_steps)))
        if settings.baseline_tf_function:
            jobs.append(("origin_tf_function",
                         lambda: baseline.function_steps_per_sec(settings.steps)))
    jobs += [(name, lambda o=o: o.run_steps(settings.steps)) for name, o in ours.items()]
    if settings.measure_peak:
        # Timed in every round too, so that achieved/peak compares like with like.
        jobs.append(("matmul", machine.make_matmul_timer(machine.COMPUTE_DTYPES[precision],
                                                         settings.peak_matmul_size)))
    return jobs


def make_baseline(settings, data: SyntheticData) -> Baseline:
    """The origin baseline (float32, eager), built and warmed up."""
    baseline = Baseline(data, settings.batch_size, settings.baseline_train_examples,
                        settings.baseline_tf_function)
    baseline.warm_up(max(2, settings.warmup_steps // 3))
    return baseline


def benchmark(settings) -> dict | None:
    """One run with `settings` (the bench's flag values); the figures (rank 0 only
    under Horovod, which also adds every rank's and the aggregate)."""
    # auto resolves as in training: bfloat16 on CPUs that compute it natively.
    precision, _ = distribute.resolve_precision(settings.precision)
    configurations = configs.make_configs(settings, precision)
    backend = distribute.make_backend(next(iter(configurations.values())))
    horovod, rank, processes = ranks(backend)
    say = printout.Say(backend.is_chief, rank, processes, per_rank=horovod)
    keras.utils.set_random_seed(settings.seed + rank)
    load_start = machine.loadavg()
    info = machine.describe()
    printout.say_setup(say, info, f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
                       machine.threads_line(), settings, precision,
                       backend.describe(settings.batch_size))
    data = synthetic_data(settings.seed, settings.train_examples, settings.eval_examples)

    # Ours: build, warm up, the pipeline alone, evaluation warm-up.
    keras.mixed_precision.set_global_policy(precision)
    ours, failed = build_ours(configurations, backend,
                              (data.source_x, data.source_y, data.target_x), data.mean,
                              settings, say)
    if not ours:
        raise BenchError("every configuration failed: " + "; ".join(failed.values()))
    first = next(iter(ours.values()))

    def evaluate_ours():
        return first.evaluate(data.test_sets, data.mean, settings.eval_batch_size)

    evaluate_ours()  # traces the evaluation
    backend.barrier()
    pipeline_batches_per_sec = first.pipeline_rate(settings.pipeline_batches)
    peak_rss_ours, peak_gpu_ours = machine.peak_rss_mb(), machine.peak_gpu_mb()

    baseline = make_baseline(settings, data) if settings.baseline else None
    jobs = timed_jobs(settings, precision, ours, baseline)
    train = alternate_rounds(jobs, settings.rounds, backend.barrier)
    evals = eval_rounds(
        settings.eval_rounds, backend.barrier, evaluate_ours,
        (lambda: baseline.evaluate(settings.baseline_eval_loop_examples)) if baseline else None)

    measured = figures_lib.Measured(
        info=info, rank=rank, processes=processes,
        load_start=load_start, ours=ours, failed=failed,
        pipeline_batches_per_sec=pipeline_batches_per_sec, peak_rss_ours=peak_rss_ours,
        peak_gpu_ours=peak_gpu_ours, train=train, eval=evals,
        peak_rss_end=machine.peak_rss_mb(), peak_gpu_end=machine.peak_gpu_mb(),
        load_end=machine.loadavg())
    figures = figures_lib.collect(settings, precision, backend, measured)
    printout.say_figures(say, figures)
    if not horovod:
        return figures
    figures = figures_lib.aggregate_over_ranks(backend, figures)
    if figures is not None:
        printout.say_aggregate(say, figures["aggregate"])
    return figures
