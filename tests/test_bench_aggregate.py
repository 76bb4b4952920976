"""The bench under horovodrun (dann_dist.bench.figures): every rank reports its own
figures and rank 0 the aggregate over ranks. No timing assertions."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dann_dist.bench import figures as figures_lib

from bench_helpers import HOROVODRUN, TINY, last_json, positive, run


def test_bench_under_horovodrun_reports_per_rank_and_aggregate():
    stdout = run([HOROVODRUN, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-m",
                  "dann_dist.bench", *TINY, "--configs=paper", "--intra_op_threads=1",
                  "--inter_op_threads=1", "--nomeasure_peak"]).stdout
    for rank in (0, 1):
        assert f"[rank {rank}/2] train [paper]:" in stdout
        assert f"[rank {rank}/2] input pipeline alone:" in stdout
    assert "AGGREGATE over 2 ranks, train [paper]:" in stdout

    figures = last_json(stdout)
    assert figures["backend"] == {"strategy": "horovod", "replicas": 2, "processes": 2, "rank": 0,
                                  "per_replica_batch": 8, "global_batch": 16}
    per_rank = figures["per_rank"]
    assert len(per_rank) == 2
    for row in per_rank:
        for key, value in row.items():
            positive(value, f"per_rank.{key}")
    aggregate = figures["aggregate"]
    assert aggregate["ranks"] == 2
    train = aggregate["train"]["paper"]
    for field in ("steps_per_sec", "examples_per_sec", "gflops_per_sec", "cpu_cores_used",
                  "examples_per_cpu_second"):
        positive(train[field], f"aggregate.train.paper.{field}")
    # Throughputs add up over ranks.
    assert train["examples_per_sec"] == pytest.approx(
        sum(row["train/paper/examples_per_sec"] for row in per_rank))
    for section, field in (("eval", "images_per_sec"), ("pipeline", "examples_per_sec"),
                           ("pipeline", "headroom"), ("memory", "peak_rss_mb")):
        positive(aggregate[section][field], f"aggregate.{section}.{field}")
    for ratio in ("train_paper", "eval"):
        positive(aggregate["ratios"][ratio], f"aggregate.ratios.{ratio}")


def test_combine_adds_throughputs_and_takes_the_slowest_rank():
    # Two ranks' figures as the bench gathers them; no Horovod needed to combine them.
    figures = {"train": {"paper": {}}, "eval": {"images": 100}, "baseline": {}}
    keys = figures_lib.rank_keys(figures)
    rows = {("train", "paper", "steps_per_sec"): (10.0, 8.0),
            ("train", "paper", "examples_per_sec"): (320.0, 256.0),
            ("train", "paper", "gflops_per_sec"): (5.0, 4.0),
            ("train", "paper", "cpu_cores_used"): (1.0, 0.5),
            ("pipeline", "examples_per_sec"): (1000.0, 3000.0),
            ("pipeline", "headroom"): (4.0, 2.0),
            ("eval", "seconds"): (1.0, 2.0),
            ("memory", "peak_rss_mb"): (500.0, 700.0),
            ("memory", "peak_rss_mb_with_baseline"): (600.0, 800.0),
            ("baseline", "steps_per_sec"): (1.0, 1.0),
            ("baseline", "examples_per_sec"): (32.0, 32.0),
            ("baseline", "eval_seconds"): (10.0, 20.0)}
    table = np.array([[rows[k][r] for k in keys] for r in (0, 1)])
    combined = figures_lib.combine(figures, keys, table, table.sum(axis=0))

    assert combined["ranks"] == 2
    assert combined["train"]["paper"] == {"steps_per_sec": 8.0, "examples_per_sec": 576.0,
                                          "gflops_per_sec": 9.0, "cpu_cores_used": 1.5,
                                          "examples_per_cpu_second": 384.0}
    assert combined["pipeline"] == {"examples_per_sec": 4000.0, "headroom": 2.0}
    assert combined["eval"] == {"seconds": 2.0, "images_per_sec": 50.0}
    assert combined["memory"] == {"peak_rss_mb": 700.0, "peak_rss_mb_with_baseline": 800.0}
    assert combined["baseline"] == {"examples_per_sec": 64.0, "eval_seconds": 20.0}
    assert combined["ratios"] == {"train_paper": 9.0, "eval": 10.0}
