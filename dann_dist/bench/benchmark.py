"""One bench run, in order: set-up, synthetic data, our configurations built and warmed
up, the origin baseline built and warmed up, the timed rounds, then the figures."""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from dann_dist import distribute
from dann_dist.bench import aggregate, device, machine, printout, timing
from dann_dist.bench import figures as figures_lib
from dann_dist.bench.baseline import Baseline
from dann_dist.bench.configs import make_config
from dann_dist.bench.ours import Ours, build_ours
from dann_dist.config import Config
from dann_dist.data.pipeline import channel_mean


class BenchError(RuntimeError):
    """Nothing could be timed (exit status 1)."""


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """Synthetic uint8 arrays of the real shapes (speed does not depend on the pixels)."""
    source_x: np.ndarray
    source_y: np.ndarray
    target_x: np.ndarray
    target_y: np.ndarray
    test_sets: dict         # {"source": (images, labels), "target": (images, labels)}
    mean: np.ndarray        # per-channel mean, as the package's pipeline uses it


def synthetic_data(seed: int, n_train: int, n_test: int) -> SyntheticData:
    rng = np.random.default_rng(seed)
    source_x = rng.integers(0, 256, (n_train, 28, 28, 1), dtype=np.uint8)
    source_y = rng.integers(0, 10, n_train)
    target_x = rng.integers(0, 256, (n_train, 28, 28, 3), dtype=np.uint8)
    target_y = rng.integers(0, 10, n_train)
    test_sets = {
        "source": (rng.integers(0, 256, (n_test, 28, 28, 1), dtype=np.uint8),
                   rng.integers(0, 10, n_test)),
        "target": (rng.integers(0, 256, (n_test, 28, 28, 3), dtype=np.uint8),
                   rng.integers(0, 10, n_test)),
    }
    mean = channel_mean(source_x[:2000], target_x[:2000])
    return SyntheticData(source_x, source_y, target_x, target_y, test_sets, mean)


def make_configs(settings, precision: str) -> dict[str, Config]:
    """Our configurations named by --configs, over a scratch model_dir (nothing is saved)."""
    common = dict(model_dir=tempfile.mkdtemp(prefix="dann_bench_"),
                  batch_size=settings.batch_size, strategy=settings.strategy,
                  precision=precision, jit_compile=settings.jit_compile,
                  eval_batch_size=settings.eval_batch_size, seed=settings.seed)
    return {name: make_config(name, common) for name in settings.configs}


def ranks(backend: distribute.Backend) -> tuple[bool, int, int]:
    """(whether under Horovod, this process's rank, the number of processes)."""
    if isinstance(backend, distribute.Horovod):
        return True, backend.hvd.rank(), backend.hvd.size()
    return False, 0, 1


def machine_facts() -> dict:
    """machine.describe() plus the visible GPUs' names, if any."""
    info = machine.describe()
    gpus = device.gpu_names()
    if gpus:
        info["gpus"] = gpus
    return info


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
        jobs.append(("matmul", device.make_matmul_timer(device.COMPUTE_DTYPES[precision],
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
    configs = make_configs(settings, precision)
    backend = distribute.make_backend(next(iter(configs.values())))
    horovod, rank, processes = ranks(backend)
    say = printout.Say(backend.is_chief, rank, processes, per_rank=horovod)
    keras.utils.set_random_seed(settings.seed + rank)
    load_start = machine.loadavg()
    info = machine_facts()
    printout.say_setup(say, info, f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
                       device.threads_line(), settings, precision,
                       backend.describe(settings.batch_size))
    data = synthetic_data(settings.seed, settings.train_examples, settings.eval_examples)

    # Ours: build, warm up, the pipeline alone, evaluation warm-up.
    keras.mixed_precision.set_global_policy(precision)
    ours, failed = build_ours(configs, backend, (data.source_x, data.source_y, data.target_x),
                              data.mean, settings, say)
    if not ours:
        raise BenchError("every configuration failed: " + "; ".join(failed.values()))
    first = next(iter(ours.values()))

    def evaluate_ours():
        return first.evaluate(data.test_sets, data.mean, settings.eval_batch_size)

    evaluate_ours()  # traces the evaluation
    backend.barrier()
    pipeline_batches_per_sec = first.pipeline_rate(settings.pipeline_batches)
    peak_rss_ours, peak_gpu_ours = machine.peak_rss_mb(), device.peak_gpu_mb()

    baseline = make_baseline(settings, data) if settings.baseline else None
    jobs = timed_jobs(settings, precision, ours, baseline)
    train = timing.alternate_rounds(jobs, settings.rounds, backend.barrier)
    evals = timing.eval_rounds(
        settings.eval_rounds, backend.barrier, evaluate_ours,
        (lambda: baseline.evaluate(settings.baseline_eval_loop_examples)) if baseline else None)

    measured = figures_lib.Measured(
        info=info, rank=rank, processes=processes,
        load_start=load_start, ours=ours, failed=failed,
        pipeline_batches_per_sec=pipeline_batches_per_sec, peak_rss_ours=peak_rss_ours,
        peak_gpu_ours=peak_gpu_ours, train=train, eval=evals,
        peak_rss_end=machine.peak_rss_mb(), peak_gpu_end=device.peak_gpu_mb(),
        load_end=machine.loadavg())
    figures = figures_lib.collect(settings, precision, backend, measured)
    printout.say_figures(say, figures)
    if horovod:
        return aggregate.aggregate_over_ranks(backend, figures, say)
    return figures
