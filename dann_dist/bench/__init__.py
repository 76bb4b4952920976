r"""Speed benchmark: the package's train step, evaluation and input pipeline, timed in
the same run as the origin script's eager train step and per-sample evaluation loop.

  python -m dann_dist.bench                                # float32, 128 pairs per step
  python -m dann_dist.bench --precision=mixed_bfloat16     # bfloat16 on CPU
  python -m dann_dist.bench --jit_compile                  # XLA
  horovodrun -np 2 -H localhost:2 --gloo python -m dann_dist.bench \
      --intra_op_threads=1 --inter_op_threads=1 --cpu_affinity=local_rank

What is timed, after warm-up (tracing, first allocations, the baseline's shuffle buffer):
- ours: the REAL package code on synthetic uint8 arrays of the real shapes (MNIST
  60000x28x28x1, MNIST-M 60000x28x28x3, test sets --eval_examples each): models from
  models.models_for, state from step.create_state, the step from step.make_train_step
  on a backend from distribute.make_backend, input from data.pipeline.train_dataset,
  evaluation from eval_lib.make_evaluator. Two configurations by default: `origin`
  (the origin script's architecture and objective: BN heads, flipped labels, Adam) and
  `paper` (the package default: paper heads, gradient reversal, SGD+momentum).
- the origin baseline: the origin script's train step and evaluation re-implemented
  in dann_dist/bench/origin.py exactly as written there (OriginBaseline), run
  eagerly in float32.
Train timings alternate baseline / ours in --rounds rounds (the machine may be shared;
alternating exposes both to the same load); rates are medians over rounds and each ratio
is the median of the per-round ratios. Evaluation alternates the same way.
Speed does not depend on pixel values, so no real data are needed.

Every round also times one large matmul in the run's compute dtype (this run's own peak
reference for achieved GFLOP/s) and records the cores the process kept busy during each
job (its CPU time over wall time): on a shared machine that is what it actually got.
FLOPs per step are counted analytically from the models' layers (see `ours.analytic_flops`).
Peak memory is the process's maximum resident set size (getrusage ru_maxrss), read once
after our configurations ran and before the baseline's arrays exist, and once at the end.

Output: human-readable lines, then one line of JSON with every figure (the last stdout
line; under Horovod every rank prints its own figures and rank 0 prints the aggregate
and the JSON).

Modules: cli (flags, argument checks, core pinning, exit statuses, the JSON line);
configs (our configurations as the package's Config; no TensorFlow); ours (those
configurations built from the package's code, the synthetic data, FLOPs per step);
origin (the origin script's code as written there, and set up for timing); machine (the
host and what TensorFlow gets: CPUs, load, memory, GPUs, threads, the reference matmul);
benchmark (one run in order, and its alternating timed rounds); figures (timings -> the
JSON's figures, combined over ranks under Horovod); printout (the human-readable lines).
"""

from dann_dist.bench.cli import run

__all__ = ["run"]
