"""Under Horovod: rank 0 gets every rank's figures (allgather) and the summed
throughputs (allreduce), and combines them into the job's: examples/s and GFLOP/s add
up over ranks; steps/s is the job's (ranks step together, so the slowest rank's);
evaluation runs on every rank (whole test sets), so its wall time is the slowest rank's."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dann_dist.bench.printout import Say, fmt_rate
from dann_dist.distribute import Horovod

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


def _train(figures: dict, keys: list, table: np.ndarray, summed: np.ndarray) -> dict:
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


def _ratios(figures: dict, aggregate: dict, keys: list, table: np.ndarray,
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
    aggregate = {"ranks": table.shape[0], "train": _train(figures, keys, table, summed)}
    combiners = {"sum": lambda c: float(summed[c]), "min": lambda c: float(table[:, c].min()),
                 "max": lambda c: float(table[:, c].max())}
    for path, how in RANK_FIELDS:
        aggregate.setdefault(path[0], {})[path[1]] = combiners[how](keys.index(path))
    aggregate["eval"]["images_per_sec"] = figures["eval"]["images"] / aggregate["eval"]["seconds"]
    aggregate["ratios"] = _ratios(figures, aggregate, keys, table, summed)
    return aggregate


def _say_aggregate(say: Say, aggregate: dict) -> None:
    size = aggregate["ranks"]
    for name, t in aggregate["train"].items():
        say(f"AGGREGATE over {size} ranks, train [{name}]: {fmt_rate(t['steps_per_sec'])} "
            f"steps/s, {fmt_rate(t['examples_per_sec'])} images/s, "
            f"{t['gflops_per_sec']:.0f} GFLOP/s; {t['cpu_cores_used']:.2f} cores busy, "
            f"{fmt_rate(t['examples_per_cpu_second'])} images per CPU-second")
    say(f"AGGREGATE evaluation: {aggregate['eval']['seconds']:.2f} s (slowest rank); input "
        f"pipelines {fmt_rate(aggregate['pipeline']['examples_per_sec'])} images/s, "
        f"least headroom {aggregate['pipeline']['headroom']:.1f}x; peak RSS per rank "
        f"<= {aggregate['memory']['peak_rss_mb']:.0f} MB")
    if aggregate["ratios"]:
        say("AGGREGATE ratios vs the origin baseline on every rank: " + ", ".join(
            f"{k} {v:.1f}x" for k, v in aggregate["ratios"].items()))


def aggregate_over_ranks(backend: Horovod, figures: dict, say: Say) -> dict | None:
    """Every rank calls this (collectives); rank 0 gets figures with "per_rank" and
    "aggregate" added, the other ranks None."""
    hvd = backend.hvd
    keys = rank_keys(figures)
    mine = tf.constant([[_get(figures, k) for k in keys]], tf.float64)
    table = hvd.allgather(mine, name="bench_per_rank").numpy()
    summed = hvd.allreduce(mine[0], op=hvd.Sum, name="bench_sum").numpy()
    if not backend.is_chief:
        return None
    aggregate = combine(figures, keys, table, summed)
    _say_aggregate(say, aggregate)
    figures["per_rank"] = [dict(zip(("/".join(k) for k in keys), map(float, row)))
                           for row in table]
    figures["aggregate"] = aggregate
    return figures
