"""The figures of the JSON line, computed from what the run measured: rates are medians
over rounds, and each ratio is the median of the per-round ratios (both sides of a round
saw the same load on the machine). Under Horovod, rank 0 also gets every rank's figures
(allgather) and the summed throughputs (allreduce), and combines them into the job's:
examples/s and GFLOP/s add up over ranks; steps/s is the job's (ranks step together, so
the slowest rank's); evaluation runs on every rank (whole test sets), so its wall time is
the slowest rank's."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import tensorflow as tf

from dann_dist.bench.configs import recorded_fields
from dann_dist.bench.machine import COMPUTE_DTYPES
from dann_dist.bench.ours import Ours, baseline_flops
from dann_dist.distribute import Backend, Horovod

# The flags recorded under "settings" (the reference peaks are recorded under "peak").
SETTINGS_FLAGS = (
    "strategy", "batch_size", "steps", "warmup_steps", "rounds", "eval_rounds", "precision",
    "jit_compile", "intra_op_threads", "inter_op_threads", "data_threads", "cpu_affinity",
    "cpu_devices", "configs", "steps_per_call", "baseline", "baseline_tf_function",
    "baseline_steps", "baseline_train_examples", "train_examples", "eval_examples",
    "eval_batch_size", "baseline_eval_loop_examples", "pipeline_batches", "measure_peak",
    "peak_matmul_size", "seed")
# Per-rank quantities gathered under Horovod: (key path, how ranks combine).
RANK_FIELDS = (
    (("pipeline", "examples_per_sec"), "sum"),
    (("pipeline", "headroom"), "min"),
    (("eval", "seconds"), "max"),
    (("memory", "peak_rss_mb"), "max"),
    (("memory", "peak_rss_mb_with_baseline"), "max"),
)
# Per-configuration train figures gathered from every rank.
TRAIN_FIELDS = ("steps_per_sec", "examples_per_sec", "gflops_per_sec", "cpu_cores_used")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclasses.dataclass
class TrainTimings:
    """What benchmark.alternate_rounds measured, per job and round: rate (the job's return
    value) and cores busy. `rates` holds our configurations; the baseline, its tf.function
    variant and the matmul have their own."""
    rates: dict[str, list[float]]
    cores: dict[str, list[float]]
    baseline: list[float]
    origin_tf_function: list[float]
    matmul: list[float]


@dataclasses.dataclass
class EvalTimings:
    """What benchmark.eval_rounds measured, per round: our seconds and CPU seconds; the
    baseline's (forward seconds, loop seconds, samples looped over) and its CPU seconds
    scaled to the whole test sets."""
    seconds: list[float] = dataclasses.field(default_factory=list)
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)
    baseline: list[tuple[float, float, int]] = dataclasses.field(default_factory=list)
    baseline_cpu_seconds: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Measured:
    """Everything one process measured, in the order the run measured it."""
    info: dict                      # machine facts (machine.describe)
    rank: int
    processes: int
    load_start: float | None
    ours: dict[str, Ours]
    failed: dict[str, str]
    pipeline_batches_per_sec: float
    peak_rss_ours: float            # after our configurations, before the baseline exists
    peak_gpu_ours: float | None
    train: TrainTimings
    eval: EvalTimings
    peak_rss_end: float
    peak_gpu_end: float | None
    load_end: float | None


def _train(o: Ours, m: Measured, reference_peak: float | None) -> dict:
    rates, cores, matmul = m.train.rates[o.name], m.train.cores[o.name], m.train.matmul
    steps_per_sec = median(rates)
    gflops = o.flops["train_step"] * steps_per_sec / 1e9
    return {
        "steps_per_sec": steps_per_sec,
        "steps_per_sec_rounds": rates,
        "examples_per_sec": steps_per_sec * 2 * o.process_batch,
        "cpu_cores_used": median(cores),
        "examples_per_cpu_second": median(
            [r * 2 * o.process_batch / c for r, c in zip(rates, cores)]),
        "images_per_step": 2 * o.process_batch,
        "flops_per_step": o.flops["train_step"],
        "gflops_per_sec": gflops,
        "fraction_of_reference_peak": gflops / reference_peak if reference_peak else None,
        # Per round (same load), then the median.
        "fraction_of_measured_peak": median(
            [o.flops["train_step"] * r / 1e9 / p for r, p in zip(rates, matmul)])
        if matmul else None,
        "config": recorded_fields(o.config),
    }


def _eval(settings, m: Measured) -> dict:
    images = 2 * settings.eval_examples
    seconds = median(m.eval.seconds)
    return {"seconds": seconds, "images": images, "cpu_seconds": median(m.eval.cpu_seconds),
            "images_per_sec": images / seconds, "seconds_rounds": m.eval.seconds,
            "batch_size": settings.eval_batch_size}


def _pipeline(m: Measured, first: Ours, first_rate: float, backend: Backend) -> dict:
    rate = m.pipeline_batches_per_sec
    # Batches this pipeline must deliver per second to keep the step fed.
    demand = first_rate * backend.replicas_per_pipeline
    return {"batches_per_sec": rate, "examples_per_sec": rate * 2 * first.per_replica,
            "demand_batches_per_sec": demand, "headroom": rate / demand,
            "measured_with_config": first.name}


def _memory(m: Measured) -> dict:
    memory = {"peak_rss_mb": m.peak_rss_ours, "peak_rss_mb_with_baseline": m.peak_rss_end}
    if m.info.get("gpus"):
        memory.update(peak_gpu_mb=m.peak_gpu_ours, peak_gpu_mb_with_baseline=m.peak_gpu_end)
    return memory


def _peak(settings, dtype: str, reference_peak: float | None, m: Measured) -> dict:
    measured = median(m.train.matmul) if m.train.matmul else None
    return {"dtype": dtype, "measured_matmul_gflops": measured,
            "measured_matmul_gflops_rounds": m.train.matmul,
            "matmul_size": settings.peak_matmul_size, "reference_gflops": reference_peak}


def _baseline_eval_seconds(m: Measured, test_size: int) -> list[float]:
    """Per round: forward + the per-sample loop scaled to the whole test sets."""
    return [f + lp * test_size / n for f, lp, n in m.eval.baseline]


def _baseline(settings, m: Measured) -> dict:
    rates, cores, batch = m.train.baseline, m.train.cores["baseline"], settings.batch_size
    test_size = settings.eval_examples
    steps_per_sec = median(rates)
    flops = baseline_flops(m.ours, batch)
    eval_seconds = median(_baseline_eval_seconds(m, test_size))
    return {
        "steps_per_sec": steps_per_sec,
        "steps_per_sec_rounds": rates,
        "examples_per_sec": steps_per_sec * 2 * batch,
        "cpu_cores_used": median(cores),
        "examples_per_cpu_second": median([r * 2 * batch / c for r, c in zip(rates, cores)]),
        "gflops_per_sec": flops["train_step"] * steps_per_sec / 1e9,
        "eval_seconds": eval_seconds,
        "eval_cpu_seconds": median(m.eval.baseline_cpu_seconds),
        "eval_forward_seconds": median([f for f, _, _ in m.eval.baseline]),
        "eval_loop_seconds": median([lp * test_size / n for _, lp, n in m.eval.baseline]),
        "eval_loop_examples_timed": m.eval.baseline[0][2],
        "eval_images_per_sec": 2 * test_size / eval_seconds,
        "batch_size": batch,
        "precision": "float32",
        "execution": "eager",
    }


def _origin_tf_function(settings, m: Measured) -> dict:
    rates = m.train.origin_tf_function
    return {"steps_per_sec": median(rates), "steps_per_sec_rounds": rates,
            "examples_per_sec": median(rates) * 2 * settings.batch_size}


def _with_rounds(ratios: dict, key: str, per_round: list[float]) -> None:
    ratios[key] = median(per_round)
    ratios[f"{key}_rounds"] = per_round


def _ratios(settings, m: Measured) -> dict:
    """Ours (and the origin step in a tf.function) over the baseline, per round."""
    ratios = {}
    base_rates = m.train.baseline
    if m.train.origin_tf_function:
        _with_rounds(ratios, "origin_tf_function",
                     [f / b for f, b in zip(m.train.origin_tf_function, base_rates)])
    for name in m.ours:
        _with_rounds(ratios, f"train_{name}",
                     [o / b for o, b in zip(m.train.rates[name], base_rates)])
    base_eval = _baseline_eval_seconds(m, settings.eval_examples)
    _with_rounds(ratios, "eval", [b / e for b, e in zip(base_eval, m.eval.seconds)])
    return ratios


def _ratios_per_cpu_second(m: Measured) -> dict:
    """The same comparisons per CPU-second: what each side achieves with the CPU time it
    actually got. On a shared machine the wall-clock ratios depend on how the scheduler
    split the cores between a 1-thread Python loop and a multi-threaded graph; these do
    not. They are not the targets, only the load-independent view."""
    cores, base_rates = m.train.cores, m.train.baseline
    per_cpu = {}
    for name in m.ours:
        per_cpu[f"train_{name}"] = median(
            [(o / oc) / (b / bc) for o, oc, b, bc in
             zip(m.train.rates[name], cores[name], base_rates, cores["baseline"])])
    per_cpu["eval"] = median(
        [b / e for b, e in zip(m.eval.baseline_cpu_seconds, m.eval.cpu_seconds)])
    return per_cpu


def _add_baseline(figures: dict, settings, m: Measured) -> None:
    figures["baseline"] = _baseline(settings, m)
    if m.train.origin_tf_function:
        figures["origin_tf_function"] = _origin_tf_function(settings, m)
    figures["ratios"] = _ratios(settings, m)
    figures["ratios_per_cpu_second"] = _ratios_per_cpu_second(m)


def collect(settings, precision: str, backend: Backend, m: Measured) -> dict:
    """Every figure of one process (`settings`: the bench's flag values)."""
    dtype = COMPUTE_DTYPES[precision]
    reference_peak = {"float32": settings.reference_gflops_float32,
                      "bfloat16": settings.reference_gflops_bfloat16}.get(dtype)
    first = next(iter(m.ours.values()))
    train = {name: _train(o, m, reference_peak) for name, o in m.ours.items()}
    figures = {
        "train": train, "failed": m.failed,
        "settings": {k: getattr(settings, k) for k in SETTINGS_FLAGS},
        "eval": _eval(settings, m),
        "pipeline": _pipeline(m, first, train[first.name]["steps_per_sec"], backend),
        "memory": _memory(m),
        "peak": _peak(settings, dtype, reference_peak, m),
        # The 1-minute load average (runnable processes, all users) before and after: this
        # process alone adds about 1-2; more means others shared the cores during the run.
        "machine": dict(m.info, loadavg_start=m.load_start, loadavg_end=m.load_end),
        "backend": {"strategy": backend.name, "replicas": backend.num_replicas,
                    "processes": m.processes, "rank": m.rank,
                    "per_replica_batch": first.per_replica,
                    "global_batch": settings.batch_size},
        "ratios": {},
    }
    if settings.baseline:
        _add_baseline(figures, settings, m)
    return figures


# Under Horovod: every rank's figures, combined on rank 0.
def rank_keys(figures: dict) -> list[tuple[str, ...]]:
    """The key paths of the figures every rank contributes, in gathering order."""
    keys = [("train", name, field) for name in figures["train"] for field in TRAIN_FIELDS]
    keys += [k for k, _ in RANK_FIELDS]
    if "baseline" in figures:
        keys += [("baseline", "steps_per_sec"), ("baseline", "examples_per_sec"),
                 ("baseline", "eval_seconds")]
    return keys


def _get(figures: dict, path: tuple[str, ...]) -> float:
    value = figures
    for part in path:
        value = value[part]
    return float(value)


def _combined_train(figures: dict, keys: list, table: np.ndarray, summed: np.ndarray) -> dict:
    train = {}
    for name in figures["train"]:
        col = {k[-1]: keys.index(k) for k in keys if k[:2] == ("train", name)}
        train[name] = {
            "steps_per_sec": float(table[:, col["steps_per_sec"]].min()),
            "examples_per_sec": float(summed[col["examples_per_sec"]]),
            "gflops_per_sec": float(summed[col["gflops_per_sec"]]),
            "cpu_cores_used": float(summed[col["cpu_cores_used"]]),
            "examples_per_cpu_second": float(summed[col["examples_per_sec"]]
                                             / summed[col["cpu_cores_used"]]),
        }
    return train


def _combined_ratios(figures: dict, aggregate: dict, keys: list, table: np.ndarray,
                     summed: np.ndarray) -> dict:
    """Ours over the baseline on every rank (empty without the baseline)."""
    if "baseline" not in figures:
        return {}
    base_examples = float(summed[keys.index(("baseline", "examples_per_sec"))])
    base_eval = float(table[:, keys.index(("baseline", "eval_seconds"))].max())
    aggregate["baseline"] = {"examples_per_sec": base_examples, "eval_seconds": base_eval}
    ratios = {f"train_{name}": aggregate["train"][name]["examples_per_sec"] / base_examples
              for name in figures["train"]}
    ratios["eval"] = base_eval / aggregate["eval"]["seconds"]
    return ratios


def combine(figures: dict, keys: list, table: np.ndarray, summed: np.ndarray) -> dict:
    """The job's figures from every rank's row of `table` and their `summed` row."""
    aggregate = {"ranks": table.shape[0], "train": _combined_train(figures, keys, table, summed)}
    combiners = {"sum": lambda c: float(summed[c]), "min": lambda c: float(table[:, c].min()),
                 "max": lambda c: float(table[:, c].max())}
    for path, how in RANK_FIELDS:
        aggregate.setdefault(path[0], {})[path[1]] = combiners[how](keys.index(path))
    aggregate["eval"]["images_per_sec"] = figures["eval"]["images"] / aggregate["eval"]["seconds"]
    aggregate["ratios"] = _combined_ratios(figures, aggregate, keys, table, summed)
    return aggregate


def aggregate_over_ranks(backend: Horovod, figures: dict) -> dict | None:
    """Every rank calls this (collectives); rank 0 gets figures with "per_rank" and
    "aggregate" added, the other ranks None."""
    hvd = backend.hvd
    keys = rank_keys(figures)
    mine = tf.constant([[_get(figures, k) for k in keys]], tf.float64)
    table = hvd.allgather(mine, name="bench_per_rank").numpy()
    summed = hvd.allreduce(mine[0], op=hvd.Sum, name="bench_sum").numpy()
    if not backend.is_chief:
        return None
    figures["per_rank"] = [dict(zip(("/".join(k) for k in keys), map(float, row)))
                           for row in table]
    figures["aggregate"] = combine(figures, keys, table, summed)
    return figures
