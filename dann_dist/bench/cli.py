"""The bench's command line: its flags, argument checks, pinning to a core, exit statuses
and the JSON line. No TensorFlow at import: --help and flag errors stay instant, and the
pinning precedes TensorFlow's thread pools."""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from dann_dist import cli
from dann_dist.bench import configs

FLAGS = flags.FLAGS

# The real data sets' sizes: MNIST's training set and MNIST-M's test set.
MNIST_TRAIN, MNISTM_TEST = 60000, 9001
# Where launchers put the process's rank on its host, in the order they are looked up.
LOCAL_RANK_VARIABLES = ("HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                        "PMI_RANK")


def define_flags() -> None:
    """Registers the bench's flags (called by run(); importing this module defines none)."""
    _define_our_flags()
    _define_timing_flags()
    _define_baseline_flags()


def _define_our_flags() -> None:
    """Our side: backend, batch, precision, configurations, data sizes, seed."""
    flags.DEFINE_enum("strategy", "auto", list(configs.STRATEGIES),
                      "Backend, as for dann_dist.train.")
    flags.DEFINE_integer("batch_size", 128, "GLOBAL batch per domain (the origin script: 128 "
                         "source + 128 target images per step).", lower_bound=1)
    flags.DEFINE_enum("precision", "float32", list(configs.PRECISIONS), "Our compute "
                      "precision (the baseline is always the origin's float32).")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile our per-replica gradient computation "
                      "(config --jit_compile).")
    flags.DEFINE_list("configs", ["origin", "paper"], "Our configurations to time: origin "
                      "(BN heads, flipped labels, Adam: the baseline's architecture), paper "
                      "(the package default) and/or strong (configs/mnist_mnistm_strong.cfg's "
                      "additions: input standardisation, extractor BatchNorm, colour "
                      "augmentation, target entropy).")
    flags.DEFINE_integer("steps_per_call", 1, "Experiment: run this many train steps per "
                         "tf.function call (a tf.range loop around the package's step). The "
                         "trainer runs 1.", lower_bound=1)
    flags.DEFINE_integer("data_threads", 0, "tf.data private thread pool of our input pipeline "
                         "(0: tf.data's shared default pool).", lower_bound=0)
    flags.DEFINE_integer("train_examples", MNIST_TRAIN, "Synthetic training images per domain "
                         "for our pipeline.", lower_bound=1)
    flags.DEFINE_integer("eval_examples", MNISTM_TEST, "Test images per domain (MNIST-M has "
                         "9001; the origin needs equal sizes).", lower_bound=1)
    flags.DEFINE_integer("eval_batch_size", 1000, "Batch of our evaluation forward passes.",
                         lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of weights and synthetic data.")


def _define_timing_flags() -> None:
    """The timed rounds, the reference matmul, the threads and cores."""
    flags.DEFINE_integer("steps", 40, "Timed steps of each of our configurations per round.",
                         lower_bound=1)
    flags.DEFINE_integer("warmup_steps", 10, "Untimed steps before timing (tracing, allocations).",
                         lower_bound=1)
    flags.DEFINE_integer("rounds", 7, "Train timing rounds (baseline and ours alternate); figures "
                         "are medians over rounds, ratios medians of per-round ratios.",
                         lower_bound=1)
    flags.DEFINE_integer("eval_rounds", 2, "Evaluation timing rounds (ours, then the baseline).",
                         lower_bound=1)
    flags.DEFINE_integer("pipeline_batches", 300, "Batches drawn to time our input pipeline "
                         "alone.", lower_bound=1)
    flags.DEFINE_bool("measure_peak", True, "Time a square matmul in every round, as this "
                      "run's reference for achieved GFLOP/s.")
    flags.DEFINE_integer("peak_matmul_size", 4096, "Side of that matmul.", lower_bound=16)
    flags.DEFINE_float("reference_gflops_float32", 217.0, "Large float32 matmul GFLOP/s on the "
                       "reference machine (2-core AMD EPYC, quiet).")
    flags.DEFINE_float("reference_gflops_bfloat16", 389.0, "Large bfloat16 matmul GFLOP/s on the "
                       "reference machine.")
    flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0: TF's default, "
                         "one per core).", lower_bound=0)
    flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: TF's default).",
                         lower_bound=0)
    flags.DEFINE_enum("cpu_affinity", "none", ["none", "local_rank"], "local_rank: pin this "
                      "process to core <local rank> (one core per Horovod rank, for scaling "
                      "runs with one thread per rank).")
    flags.DEFINE_integer("cpu_devices", 1, "Logical CPU devices (for --strategy=mirrored on a "
                         "CPU-only host: one replica per logical device).", lower_bound=1)


def _define_baseline_flags() -> None:
    """What of the origin baseline is timed, and how much."""
    flags.DEFINE_bool("baseline", True, "Also time the origin script's step and evaluation.")
    flags.DEFINE_bool("baseline_tf_function", True, "Also time the origin's step unchanged "
                      "but wrapped in tf.function (a reference point, not a target).")
    flags.DEFINE_integer("baseline_steps", 6, "Timed origin steps per round.", lower_bound=1)
    flags.DEFINE_integer("baseline_train_examples", 10000, "Training pairs in the origin's "
                         "in-memory float32 dataset (its per-step cost does not depend on this; "
                         "the origin holds all 60000).", lower_bound=1)
    flags.DEFINE_integer("baseline_eval_loop_examples", 0, "Run the origin's per-sample "
                         "evaluation loop over only the first N test images and scale its time to "
                         "all of them (0: loop over all, as the origin does).", lower_bound=0)


def _check_arguments(argv: list[str]) -> None:
    """Exits with status 2 on positional arguments or an unknown --configs name."""
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; flags are --name=value", cli.EXIT_USAGE)
    unknown = [c for c in FLAGS.configs if c not in configs.CONFIG_NAMES]
    if unknown or not FLAGS.configs:
        cli.fail(f"--configs={','.join(FLAGS.configs)}: choose from "
                 f"{', '.join(configs.CONFIG_NAMES)}", cli.EXIT_USAGE)


def local_rank() -> int:
    """This process's rank on its host under a launcher (0 without one)."""
    for var in LOCAL_RANK_VARIABLES:
        if var in os.environ:
            return int(os.environ[var])
    return 0


def pin_to_local_rank() -> None:
    """Pins this process to core <local rank> among those it may use (where the OS can)."""
    if not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[local_rank() % len(cores)]})


def main(argv: list[str]) -> None:
    _check_arguments(argv)
    if FLAGS.cpu_affinity == "local_rank":
        # Before TensorFlow starts its thread pools: threads inherit the affinity.
        pin_to_local_rank()

    # Heavy imports (TensorFlow) after flag parsing: --help and flag errors stay instant.
    from dann_dist.bench import benchmark, machine

    machine.configure(FLAGS.intra_op_threads, FLAGS.inter_op_threads, FLAGS.cpu_devices)
    try:
        result = benchmark.benchmark(FLAGS)
    except configs.ConfigError as err:
        cli.fail(str(err), cli.EXIT_USAGE)
    except benchmark.BenchError as err:
        cli.fail(str(err), cli.EXIT_ERROR)
    if result is not None:
        print(json.dumps(result, sort_keys=True), flush=True)


def _parse_flags(argv: list[str]) -> list[str]:
    # --help prints the package docstring (the same under the dann-bench script).
    return cli.parse_flags_or_exit(argv, doc=sys.modules["dann_dist.bench"].__doc__)


def run() -> None:
    define_flags()
    app.run(main, flags_parser=_parse_flags)
