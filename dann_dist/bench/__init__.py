"""The speed benchmark, `python -m dann_dist.bench` (its --help says what it times and how).

  cli        flags, argument checks, exit statuses and the JSON line
  benchmark  one run in order: set-up, synthetic data, warm-up, timed rounds, figures
  configs    our two configurations, origin and paper (no TensorFlow: the flags list them)
  ours       those configurations built from the package's real code
  origin     the origin script's models, train step and evaluation, as written there
  baseline   that origin code set up for timing
  timing     the harness: jobs timed in alternating rounds, then the evaluation rounds
  flops      FLOPs per step counted from the models' layers
  machine    facts from the OS: CPUs, load, peak memory, core pinning (no TensorFlow)
  device     what TensorFlow gets: thread pools, GPUs, the reference matmul
  figures    timings -> the figures of the JSON line
  printout   the human-readable lines
  aggregate  under Horovod: every rank's figures, combined on rank 0
"""

from dann_dist.bench.cli import run

__all__ = ["run"]
