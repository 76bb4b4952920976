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
  models.build_models, state from step.create_state, the step from step.make_train_step
  on a backend from distribute.make_backend, input from data.pipeline.train_dataset,
  evaluation from evaluation.make_evaluator. Two configurations by default: `origin`
  (the origin script's architecture and objective: BN heads, flipped labels, Adam) and
  `paper` (the package default: paper heads, gradient reversal, SGD+momentum).
- the origin baseline: the origin script's train step and evaluation re-implemented
  below exactly as written there (OriginBaseline), run eagerly in float32.
Train timings alternate baseline / ours in --rounds rounds (the machine may be shared;
alternating exposes both to the same load); rates are medians over rounds and each ratio
is the median of the per-round ratios. Evaluation alternates the same way.
Speed does not depend on pixel values, so no real data are needed.

Every round also times one large matmul in the run's compute dtype (this run's own peak
reference for achieved GFLOP/s) and records the cores the process kept busy during each
job (its CPU time over wall time): on a shared machine that is what it actually got.
FLOPs per step are counted analytically from the models' layers (see `analytic_flops`).
Peak memory is the process's maximum resident set size (getrusage ru_maxrss), read once
after our configurations ran and before the baseline's arrays exist, and once at the end.

Output: human-readable lines, then one line of JSON with every figure (the last stdout
line; under Horovod every rank prints its own figures and rank 0 prints the aggregate
and the JSON).
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

from absl import app, flags

from dann_dist import cli

FLAGS = flags.FLAGS

CONFIG_NAMES = ("origin", "paper")
# The origin script's choices (configs/origin.cfg): the architecture and objective the
# baseline has, so `origin` is the like-for-like comparison.
ORIGIN_OVERRIDES = dict(classifier_head="bn", discriminator_head="bn",
                        adversarial_loss="flipped_labels", optimizer="adam",
                        learning_rate=7e-5, lr_schedule="constant")
ORIGIN_LEARNING_RATE = 0.7e-4
MNIST_TRAIN, MNISTM_TEST = 60000, 9001


class BenchError(RuntimeError):
    pass


def define_flags() -> None:
    """Registers the bench's flags (called by run(); importing this module defines none)."""
    from dann_dist.config import PRECISIONS, STRATEGIES

    flags.DEFINE_enum("strategy", "auto", list(STRATEGIES), "Backend, as for dann_dist.train.")
    flags.DEFINE_integer("batch_size", 128, "GLOBAL batch per domain (the origin script: 128 "
                         "source + 128 target images per step).", lower_bound=1)
    flags.DEFINE_integer("steps", 40, "Timed steps of each of our configurations per round.",
                         lower_bound=1)
    flags.DEFINE_integer("warmup_steps", 10, "Untimed steps before timing (tracing, allocations).",
                         lower_bound=1)
    flags.DEFINE_integer("rounds", 7, "Train timing rounds (baseline and ours alternate); figures "
                         "are medians over rounds, ratios medians of per-round ratios.", lower_bound=1)
    flags.DEFINE_integer("eval_rounds", 2, "Evaluation timing rounds (ours, then the baseline).",
                         lower_bound=1)
    flags.DEFINE_enum("precision", "float32", list(PRECISIONS), "Our compute precision (the "
                      "baseline is always the origin's float32).")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile our per-replica gradient computation "
                      "(config --jit_compile).")
    flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0: TF's default, "
                         "one per core).", lower_bound=0)
    flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: TF's default).",
                         lower_bound=0)
    flags.DEFINE_integer("data_threads", 0, "tf.data private thread pool of our input pipeline "
                         "(0: tf.data's shared default pool).", lower_bound=0)
    flags.DEFINE_enum("cpu_affinity", "none", ["none", "local_rank"], "local_rank: pin this "
                      "process to core <local rank> (one core per Horovod rank, for scaling "
                      "runs with one thread per rank).")
    flags.DEFINE_integer("cpu_devices", 1, "Logical CPU devices (for --strategy=mirrored on a "
                         "CPU-only host: one replica per logical device).", lower_bound=1)
    flags.DEFINE_list("configs", list(CONFIG_NAMES), "Our configurations to time: origin "
                      "(BN heads, flipped labels, Adam: the baseline's architecture) and/or paper "
                      "(the package default).")
    flags.DEFINE_integer("steps_per_call", 1, "Experiment: run this many train steps per "
                         "tf.function call (a tf.range loop around the package's step). The "
                         "trainer runs 1.", lower_bound=1)
    flags.DEFINE_bool("baseline", True, "Also time the origin script's step and evaluation.")
    flags.DEFINE_bool("baseline_tf_function", True, "Also time the origin's step unchanged "
                      "but wrapped in tf.function (a reference point, not a target).")
    flags.DEFINE_integer("baseline_steps", 6, "Timed origin steps per round.", lower_bound=1)
    flags.DEFINE_integer("baseline_train_examples", 10000, "Training pairs in the origin's "
                         "in-memory float32 dataset (its per-step cost does not depend on this; "
                         "the origin holds all 60000).", lower_bound=1)
    flags.DEFINE_integer("train_examples", MNIST_TRAIN, "Synthetic training images per domain "
                         "for our pipeline.", lower_bound=1)
    flags.DEFINE_integer("eval_examples", MNISTM_TEST, "Test images per domain (MNIST-M has "
                         "9001; the origin needs equal sizes).", lower_bound=1)
    flags.DEFINE_integer("eval_batch_size", 1000, "Batch of our evaluation forward passes.",
                         lower_bound=1)
    flags.DEFINE_integer("baseline_eval_loop_examples", 0, "Run the origin's per-sample "
                         "evaluation loop over only the first N test images and scale its time to "
                         "all of them (0: loop over all, as the origin does).", lower_bound=0)
    flags.DEFINE_integer("pipeline_batches", 300, "Batches drawn to time our input pipeline "
                         "alone.", lower_bound=1)
    flags.DEFINE_bool("measure_peak", True, "Time a square matmul in every round, as this "
                      "run's reference for achieved GFLOP/s.")
    flags.DEFINE_integer("peak_matmul_size", 4096, "Side of that matmul.", lower_bound=16)
    flags.DEFINE_float("reference_gflops_float32", 217.0, "Large float32 matmul GFLOP/s on the "
                       "reference machine (2-core AMD EPYC, quiet).")
    flags.DEFINE_float("reference_gflops_bfloat16", 389.0, "Large bfloat16 matmul GFLOP/s on the "
                       "reference machine.")
    flags.DEFINE_integer("seed", 0, "Seed of weights and synthetic data.")


# --------------------------------------------------------------------------------------
# The origin baseline: shared/origin/dann_mnist_mnistm_origin.md, as written there.
# --------------------------------------------------------------------------------------

class OriginBaseline:
    """The origin script's models, optimizers, train step and evaluation, unchanged in
    substance: Sequential models built on first call, three Adam(0.7e-4), three
    GradientTapes with the gradient calls and updates inside the tapes' `with` block, two
    extractor calls, the heads called without a `training` argument, eager execution;
    evaluation as batched forward passes of both whole test sets followed by the
    per-sample Python loop. Build it under the float32 policy."""

    def __init__(self):
        import keras
        import tensorflow as tf
        from keras import layers

        def get_feature_extract_model():
            model = keras.Sequential()
            model.add(layers.Conv2D(filters=32, kernel_size=(5, 5), activation="relu", padding="valid"))
            model.add(layers.MaxPool2D(pool_size=(2, 2), strides=(2, 2)))
            model.add(layers.Conv2D(filters=48, kernel_size=(5, 5), activation="relu", padding="valid"))
            model.add(layers.MaxPool2D(pool_size=(2, 2), strides=(2, 2)))
            model.add(layers.Flatten())
            return model

        def get_discriminator():
            model = keras.Sequential()
            for units in (256, 128, 64, 32):
                model.add(layers.Dense(units, use_bias=False))
                model.add(layers.BatchNormalization())
                model.add(layers.LeakyReLU())
            model.add(layers.Dense(1, use_bias=False))
            return model

        def get_classifier():
            model = keras.Sequential()
            for units in (100, 100):
                model.add(layers.Dense(units, use_bias=False))
                model.add(layers.BatchNormalization())
                model.add(layers.LeakyReLU())
            model.add(layers.Dense(10, activation="softmax"))
            return model

        self.tf = tf
        self.bce = tf.losses.BinaryCrossentropy(from_logits=True)
        self.cce = tf.losses.CategoricalCrossentropy()
        self.extractor_opt = keras.optimizers.Adam(ORIGIN_LEARNING_RATE)
        self.classifier_opt = keras.optimizers.Adam(ORIGIN_LEARNING_RATE)
        self.discriminator_opt = keras.optimizers.Adam(ORIGIN_LEARNING_RATE)
        self.extractor = get_feature_extract_model()
        self.discriminator = get_discriminator()
        self.classifier = get_classifier()

    def discriminator_loss(self, nomal_feature_out, m_feature_out):
        tf = self.tf
        return (self.bce(tf.ones_like(nomal_feature_out), nomal_feature_out)
                + self.bce(tf.zeros_like(m_feature_out), m_feature_out))

    def discriminator_loss_(self, nomal_feature_out, m_feature_out):
        tf = self.tf
        return (self.bce(tf.zeros_like(nomal_feature_out), nomal_feature_out)
                + self.bce(tf.ones_like(m_feature_out), m_feature_out))

    def train_step(self, normal_images, m_images, y_labels_n, ylabels_m, la, mu):
        tf = self.tf
        extractor, discriminator, classifier = self.extractor, self.discriminator, self.classifier
        with tf.GradientTape() as ext_tape, tf.GradientTape() as disc_tape, tf.GradientTape() as clas_tape:
            normal_features = extractor(normal_images, training=True)
            m_features = extractor(m_images, training=True)
            normal_feature_out = discriminator(normal_features)
            m_feature_out = discriminator(m_features)
            disc_loss = self.discriminator_loss(normal_feature_out, m_feature_out)
            disc_loss_ = self.discriminator_loss_(normal_feature_out, m_feature_out)
            y_pred_n = classifier(normal_features)
            clas_loss = self.cce(y_labels_n, y_pred_n)
            gradient_ext = ext_tape.gradient(mu * (la * disc_loss_ + clas_loss), extractor.trainable_variables)
            gradient_disc = disc_tape.gradient(mu * disc_loss, discriminator.trainable_variables)
            gradient_clas = clas_tape.gradient(mu * clas_loss, classifier.trainable_variables)
            self.extractor_opt.apply_gradients(zip(gradient_ext, extractor.trainable_variables))
            self.discriminator_opt.apply_gradients(zip(gradient_disc, discriminator.trainable_variables))
            self.classifier_opt.apply_gradients(zip(gradient_clas, classifier.trainable_variables))
        return disc_loss, disc_loss_, clas_loss

    def get_test_acc(self, n_test_image, n_test_label, m_test_image, m_test_label, loop_examples=None):
        """The origin's evaluation. Returns (errors, (forward seconds, its CPU seconds),
        (loop seconds, its CPU seconds), samples looped over); `loop_examples` < test size
        runs the loop over the first ones only."""
        tf = self.tf
        n_err = m_err = disc_err = 0
        test_num = n_test_image.shape[0]
        start, cpu = time.perf_counter(), time.process_time()
        n_test_features = self.extractor(n_test_image, training=False)
        m_test_features = self.extractor(m_test_image, training=False)
        n_test_outs = self.classifier(n_test_features)
        m_test_outs = self.classifier(m_test_features)
        n_test_disc_out = self.discriminator(n_test_features, training=False)
        m_test_disc_out = self.discriminator(m_test_features, training=False)
        forward = (time.perf_counter() - start, time.process_time() - cpu)
        looped = min(loop_examples or test_num, test_num)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(looped):
            if n_test_label[i][tf.argmax(n_test_outs[i])] != 1:
                n_err += 1
            if m_test_label[i][tf.argmax(m_test_outs[i])] != 1:
                m_err += 1
            if abs(n_test_disc_out[i] - 0) < abs(n_test_disc_out[i] - 1):
                disc_err += 1
            if abs(m_test_disc_out[i] - 1) < abs(m_test_disc_out[i] - 0):
                disc_err += 1
        loop = (time.perf_counter() - start, time.process_time() - cpu)
        errors = (n_err / looped, m_err / looped, disc_err / (2 * looped))
        return errors, forward, loop, looped


def origin_dataset(source_images, source_labels, target_images, target_labels, batch_size):
    """The origin's input: float32 0..255 images (MNIST repeated to 3 channels), one-hot
    labels, one in-memory dataset shuffled over all of it and batched (repeated here,
    where the origin iterates it once per epoch)."""
    import tensorflow as tf

    train_image = source_images.reshape((-1, 28, 28, 1)).astype("float32")
    train_image = tf.repeat(train_image, 3, axis=3)
    train_label = tf.one_hot(source_labels, 10)
    m_train_image = target_images.astype("float32")
    m_train_label = tf.one_hot(target_labels, 10)
    dataset = tf.data.Dataset.from_tensor_slices((train_image, m_train_image, train_label, m_train_label))
    return dataset.shuffle(len(source_images)).batch(batch_size).repeat()


# --------------------------------------------------------------------------------------
# Counting and timing helpers.
# --------------------------------------------------------------------------------------

def _layer_macs(model) -> list[int]:
    """Multiply-accumulates per example of each Conv2D / Dense layer, in order."""
    import keras

    macs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            kernel = layer.kernel.shape
            macs.append(math.prod(out[1:]) * math.prod(kernel[:-1]))
        elif isinstance(layer, keras.layers.Dense):
            macs.append(math.prod(layer.kernel.shape))
    return macs


def analytic_flops(models, batch: int) -> dict:
    """FLOPs of one train step on `batch` pairs, counted from the layers: 2 FLOPs per
    multiply-accumulate of every Conv2D and Dense, for the forward pass, the weight
    gradient and the input gradient (none for the extractor's first layer: images need
    no gradient). The extractor and discriminator see 2*batch images, the classifier
    batch. Not counted: bias, activations, pooling, BatchNorm, losses, optimizer updates
    (together a few percent). Both the origin's step and ours do this arithmetic."""
    forward = train = 0
    for model, examples in ((models.extractor, 2 * batch), (models.classifier, batch),
                            (models.discriminator, 2 * batch)):
        macs = _layer_macs(model)
        forward += 2 * examples * sum(macs)
        train += 2 * examples * (3 * sum(macs) - (macs[0] if model is models.extractor else 0))
    return {"train_step": train, "forward": forward}


def _median(values):
    return statistics.median(values) if values else float("nan")


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {"cpus": cores, "cpus_usable": usable, "cpu_model": model, "python": platform.python_version()}


def _peak_gpu_mb(gpus) -> float | None:
    """Peak bytes TensorFlow's allocator held on the first visible GPU (None without one)."""
    if not gpus:
        return None
    import tensorflow as tf

    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _local_rank() -> int:
    for var in ("HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def make_matmul_timer(dtype_name: str, size: int):
    """Returns fn() -> GFLOP/s of one size x size matmul in `dtype_name` (compiled and run
    once here), this run's reference for achieved GFLOP/s."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([size, size]), dtype_name)
    mm = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x)[0, :1], tf.float32)))
    mm(a).numpy()

    def timed() -> float:
        start = time.perf_counter()
        mm(a).numpy()
        return 2 * size ** 3 / (time.perf_counter() - start) / 1e9

    return timed


# --------------------------------------------------------------------------------------
# Our side: the package's real code.
# --------------------------------------------------------------------------------------

class Ours:
    """One configuration of the package: models, state, backend iterator, step, evaluator."""

    def __init__(self, name, config, backend, arrays, mean, data_threads, steps_per_call):
        import tensorflow as tf

        from dann_dist import step as step_lib
        from dann_dist.data.pipeline import train_dataset
        from dann_dist.evaluation import make_evaluator
        from dann_dist.models import build_models

        self.name, self.config, self.backend = name, config, backend
        self.per_replica = backend.per_replica_batch(config.batch_size)
        with backend.scope():
            self.models = build_models(config.classifier_head, config.discriminator_head,
                                       config.sync_batchnorm)
            self.state = step_lib.create_state(self.models, config)
        backend.broadcast_initial_state(self.state.all_variables() + [self.state.step])
        source_x, source_y, target_x = arrays

        def dataset_fn(index, count, replicas):
            dataset = train_dataset(source_x, source_y, target_x, mean=mean,
                                    per_replica_batch=self.per_replica, seed=config.seed,
                                    replicas_per_pipeline=replicas, pipeline_index=index,
                                    num_pipelines=count)
            if data_threads:
                options = tf.data.Options()
                options.threading.private_threadpool_size = data_threads
                dataset = dataset.with_options(options)
            return dataset

        self.dataset_fn = dataset_fn
        self.iterator = backend.distribute(dataset_fn)
        self.steps_per_call = steps_per_call
        step = step_lib.make_train_step(self.state, config, backend)
        if steps_per_call == 1:
            self.train_step = step
        else:
            # The experiment behind --steps_per_call: the same step, k times per call.
            @tf.function
            def several_steps(iterator, stop):
                sums, lam, votes = step(iterator, stop)
                for _ in tf.range(steps_per_call - 1):
                    sums, lam, votes = step(iterator, stop)
                return sums, lam, votes
            self.train_step = several_steps
        self.stop = tf.constant(0.0)
        self.evaluate = make_evaluator(self.models)
        # Images one process handles per step: its replicas' share of both domains.
        self.process_batch = self.per_replica * backend.replicas_per_pipeline
        self.flops = analytic_flops(self.models, self.process_batch)

    def run_steps(self, steps: int) -> float:
        """Runs about `steps` steps; returns steps per second."""
        calls = max(1, round(steps / self.steps_per_call))
        start = time.perf_counter()
        for _ in range(calls):
            sums, _, _ = self.train_step(self.iterator, self.stop)
        sums.numpy()
        return calls * self.steps_per_call / (time.perf_counter() - start)

    def pipeline_rate(self, batches: int) -> float:
        """Per-replica batches per second that this process's input pipeline yields alone
        (drawn inside one tf.function, so Python does not limit the rate)."""
        import tensorflow as tf

        backend = self.backend
        dataset = self.dataset_fn(backend.pipeline_index, backend.num_pipelines,
                                  backend.replicas_per_pipeline)
        iterator = iter(dataset)

        @tf.function
        def drain(n):
            count = tf.constant(0, tf.int32)
            for _ in tf.range(n):
                batch = next(iterator)
                count += tf.shape(batch["source_labels"])[0]
            return count

        drain(tf.constant(10)).numpy()
        start = time.perf_counter()
        drain(tf.constant(batches)).numpy()
        return batches / (time.perf_counter() - start)


def _config(name: str, settings: dict):
    from dann_dist import config as config_lib

    overrides = dict(settings)
    if name == "origin":
        overrides.update(ORIGIN_OVERRIDES)
    return config_lib.validate(config_lib.Config(**overrides))


def _fmt_rate(x: float) -> str:
    return f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; flags are --name=value", cli.EXIT_USAGE)
    unknown = [c for c in FLAGS.configs if c not in CONFIG_NAMES]
    if unknown or not FLAGS.configs:
        cli.fail(f"--configs={','.join(FLAGS.configs)}: choose from {', '.join(CONFIG_NAMES)}",
                 cli.EXIT_USAGE)
    if FLAGS.cpu_affinity == "local_rank" and hasattr(os, "sched_setaffinity"):
        # Before TensorFlow starts its thread pools: threads inherit the affinity.
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[_local_rank() % len(cores)]})

    # Heavy imports after flag parsing: --help and flag errors stay instant.
    import numpy as np
    import tensorflow as tf

    from dann_dist import config as config_lib, distribute

    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    if FLAGS.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.cpu_devices)

    try:
        result = benchmark(np, tf, config_lib, distribute)
    except config_lib.ConfigError as err:
        cli.fail(str(err), cli.EXIT_USAGE)
    except BenchError as err:
        cli.fail(str(err), cli.EXIT_ERROR)
    if result is not None:
        print(json.dumps(result, sort_keys=True), flush=True)


def benchmark(np, tf, config_lib, distribute) -> dict | None:
    import keras

    # auto resolves as in training: bfloat16 on CPUs that compute it natively.
    precision, _ = distribute.resolve_precision(FLAGS.precision)

    scratch = tempfile.mkdtemp(prefix="dann_bench_")
    settings = dict(model_dir=scratch, batch_size=FLAGS.batch_size, strategy=FLAGS.strategy,
                    precision=precision, jit_compile=FLAGS.jit_compile,
                    eval_batch_size=FLAGS.eval_batch_size, seed=FLAGS.seed)
    configs = {name: _config(name, settings) for name in FLAGS.configs}
    backend = distribute.make_backend(next(iter(configs.values())))
    horovod = isinstance(backend, distribute.Horovod)
    rank = backend.hvd.rank() if horovod else 0
    size = backend.hvd.size() if horovod else 1
    prefix = f"[rank {rank}/{size}] " if horovod else ""

    def say(line: str, everyone: bool = False):
        if everyone or backend.is_chief:
            print(prefix + line, flush=True)

    keras.utils.set_random_seed(FLAGS.seed + rank)
    load_start = _loadavg()
    info = machine()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        info["gpus"] = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                        for g in gpus]
    say(f"machine: {info['cpus']} CPUs ({info['cpus_usable']} usable by this process), "
        f"{info['cpu_model']}" + (f"; GPUs: {', '.join(info['gpus'])}" if gpus else "")
        + f"; TensorFlow {tf.__version__}, Keras {keras.__version__}", everyone=horovod)
    say(f"threads: intra_op={tf.config.threading.get_intra_op_parallelism_threads() or 'default'} "
        f"inter_op={tf.config.threading.get_inter_op_parallelism_threads() or 'default'} "
        f"data={FLAGS.data_threads or 'default'}; precision={precision}; "
        f"XLA={FLAGS.jit_compile}; steps per call={FLAGS.steps_per_call}")
    say(backend.describe(FLAGS.batch_size))

    # Synthetic uint8 arrays of the real shapes (speed does not depend on the pixels).
    rng = np.random.default_rng(FLAGS.seed)
    n_train, n_test = FLAGS.train_examples, FLAGS.eval_examples
    source_x = rng.integers(0, 256, (n_train, 28, 28, 1), dtype=np.uint8)
    source_y = rng.integers(0, 10, n_train)
    target_x = rng.integers(0, 256, (n_train, 28, 28, 3), dtype=np.uint8)
    target_y = rng.integers(0, 10, n_train)
    test_sets = {
        "source": (rng.integers(0, 256, (n_test, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n_test)),
        "target": (rng.integers(0, 256, (n_test, 28, 28, 3), dtype=np.uint8), rng.integers(0, 10, n_test)),
    }
    from dann_dist.data.pipeline import channel_mean
    mean = channel_mean(source_x[:2000], target_x[:2000])

    # --- ours: build, warm up, pipeline alone, evaluation warm-up --------------------
    keras.mixed_precision.set_global_policy(precision)
    ours, failed = {}, {}
    for name, config in configs.items():
        try:
            candidate = Ours(name, config, backend, (source_x, source_y, target_x), mean,
                             FLAGS.data_threads, FLAGS.steps_per_call)
            candidate.run_steps(FLAGS.warmup_steps)
        except (TypeError, ValueError, tf.errors.OpError) as err:
            # A configuration the package cannot run in this setting (same on every rank):
            # reported, and the others are still timed.
            failed[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"
            say(f"train [{name}]: FAILED under precision={precision} "
                f"XLA={FLAGS.jit_compile}: {failed[name]}", everyone=horovod)
            continue
        ours[name] = candidate
    if not ours:
        raise BenchError("every configuration failed: " + "; ".join(failed.values()))
    first = next(iter(ours.values()))
    first.evaluate(test_sets, mean, FLAGS.eval_batch_size)  # traces the evaluation
    backend.barrier()
    pipeline_batches_per_sec = first.pipeline_rate(FLAGS.pipeline_batches)
    peak_rss_ours = _peak_rss_mb()
    peak_gpu_ours = _peak_gpu_mb(gpus)

    # --- the origin baseline (float32, eager) ------------------------------------------
    baseline = None
    if FLAGS.baseline:
        keras.mixed_precision.set_global_policy("float32")
        baseline = OriginBaseline()
        n_base = min(FLAGS.baseline_train_examples, n_train)
        base_iter = iter(origin_dataset(source_x[:n_base], source_y[:n_base], target_x[:n_base],
                                        target_y[:n_base], FLAGS.batch_size))
        base_test = (
            tf.repeat(test_sets["source"][0].astype("float32"), 3, axis=3),
            tf.one_hot(test_sets["source"][1], 10),
            tf.constant(test_sets["target"][0].astype("float32")),
            tf.one_hot(test_sets["target"][1], 10),
        )
        # The origin's per-epoch factors at epoch 1 of 100.
        gama, p = 10, 1 / 100
        la = (2 / (1 + tf.exp(-gama * p)) - 1) * 1
        mu = 1 / ((1 + 10 * p) ** 0.75)

        def baseline_steps(steps: int, step_fn=baseline.train_step) -> float:
            start = time.perf_counter()
            for _ in range(steps):
                data = next(base_iter)
                losses = step_fn(data[0], data[1], data[2], data[3], la, mu)
            float(losses[0])
            return steps / (time.perf_counter() - start)

        baseline_steps(max(2, FLAGS.warmup_steps // 3))
        baseline.get_test_acc(*(t[:8] for t in base_test))  # builds nothing new; warms the ops
        if FLAGS.baseline_tf_function:
            # Reference point: the origin's step unchanged, only wrapped in tf.function.
            function_step = tf.function(baseline.train_step)
            baseline_steps(max(2, FLAGS.warmup_steps // 3), function_step)

    # --- timed rounds: baseline and ours alternate (order reversed every other round) --
    jobs = []
    if baseline is not None:
        jobs.append(("baseline", lambda: baseline_steps(FLAGS.baseline_steps)))
        if FLAGS.baseline_tf_function:
            jobs.append(("origin_tf_function",
                         lambda: baseline_steps(FLAGS.steps, function_step)))
    jobs += [(name, lambda o=o: o.run_steps(FLAGS.steps)) for name, o in ours.items()]
    peak_dtype = {"float32": "float32", "mixed_bfloat16": "bfloat16",
                  "mixed_float16": "float16"}[precision]
    if FLAGS.measure_peak:
        # Timed in every round too, so that achieved/peak compares like with like.
        jobs.append(("matmul", make_matmul_timer(peak_dtype, FLAGS.peak_matmul_size)))
    rates = {name: [] for name, _ in jobs}
    # Cores this process kept busy during each job (CPU time of all its threads / wall
    # time): on a shared machine, what it actually got; on an idle one, what it used.
    cores = {name: [] for name, _ in jobs}
    for round_index in range(FLAGS.rounds):
        for name, job in (jobs if round_index % 2 == 0 else jobs[::-1]):
            backend.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            rates[name].append(job())
            cores[name].append((time.process_time() - cpu) / (time.perf_counter() - wall))
    base_rates = rates.pop("baseline", [])
    matmul_rates = rates.pop("matmul", [])
    function_rates = rates.pop("origin_tf_function", [])
    eval_secs, eval_cpu, base_eval, base_eval_cpu = [], [], [], []
    for round_index in range(FLAGS.eval_rounds):
        backend.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        first.evaluate(test_sets, mean, FLAGS.eval_batch_size)
        eval_secs.append(time.perf_counter() - start)
        eval_cpu.append(time.process_time() - cpu)
        if baseline is not None:
            _, forward, loop, looped = baseline.get_test_acc(
                *base_test, loop_examples=FLAGS.baseline_eval_loop_examples)
            # A loop over a subset is scaled to the whole test set (constant cost per sample).
            base_eval.append((forward[0], loop[0], looped))
            base_eval_cpu.append(forward[1] + loop[1] * n_test / looped)
    peak_rss_end = _peak_rss_mb()
    load_end = _loadavg()

    # --- figures -------------------------------------------------------------------
    eval_images = 2 * n_test
    measured_peak = _median(matmul_rates) if matmul_rates else None
    reference_peak = {"float32": FLAGS.reference_gflops_float32,
                      "bfloat16": FLAGS.reference_gflops_bfloat16}.get(peak_dtype)

    figures = {"train": {}, "failed": failed, "settings": {k: FLAGS[k].value for k in _FLAG_NAMES}}
    for name, o in ours.items():
        steps_per_sec = _median(rates[name])
        gflops = o.flops["train_step"] * steps_per_sec / 1e9
        figures["train"][name] = {
            "steps_per_sec": steps_per_sec,
            "steps_per_sec_rounds": rates[name],
            "examples_per_sec": steps_per_sec * 2 * o.process_batch,
            "cpu_cores_used": _median(cores[name]),
            "examples_per_cpu_second": _median(
                [r * 2 * o.process_batch / c for r, c in zip(rates[name], cores[name])]),
            "images_per_step": 2 * o.process_batch,
            "flops_per_step": o.flops["train_step"],
            "gflops_per_sec": gflops,
            "fraction_of_reference_peak": gflops / reference_peak if reference_peak else None,
            # Per round (same load), then the median.
            "fraction_of_measured_peak": _median(
                [o.flops["train_step"] * r / 1e9 / m for r, m in zip(rates[name], matmul_rates)])
            if matmul_rates else None,
            "config": {k: getattr(o.config, k) for k in (
                "classifier_head", "discriminator_head", "adversarial_loss", "optimizer",
                "precision", "jit_compile")},
        }
    eval_seconds = _median(eval_secs)
    figures["eval"] = {"seconds": eval_seconds, "images": eval_images,
                       "cpu_seconds": _median(eval_cpu),
                       "images_per_sec": eval_images / eval_seconds,
                       "seconds_rounds": eval_secs, "batch_size": FLAGS.eval_batch_size}
    first_rate = figures["train"][first.name]["steps_per_sec"]
    figures["pipeline"] = {
        "batches_per_sec": pipeline_batches_per_sec,
        "examples_per_sec": pipeline_batches_per_sec * 2 * first.per_replica,
        # Batches this pipeline must deliver per second to keep the step fed.
        "demand_batches_per_sec": first_rate * backend.replicas_per_pipeline,
        "headroom": pipeline_batches_per_sec / (first_rate * backend.replicas_per_pipeline),
        "measured_with_config": first.name,
    }
    figures["memory"] = {"peak_rss_mb": peak_rss_ours, "peak_rss_mb_with_baseline": peak_rss_end}
    if gpus:
        figures["memory"].update(peak_gpu_mb=peak_gpu_ours, peak_gpu_mb_with_baseline=_peak_gpu_mb(gpus))
    figures["peak"] = {"dtype": peak_dtype, "measured_matmul_gflops": measured_peak,
                       "measured_matmul_gflops_rounds": matmul_rates,
                       "matmul_size": FLAGS.peak_matmul_size, "reference_gflops": reference_peak}
    # The 1-minute load average (runnable processes, all users) before and after: this
    # process alone adds about 1-2; more means others shared the cores during the run.
    figures["machine"] = dict(info, loadavg_start=load_start, loadavg_end=load_end)
    figures["backend"] = {"strategy": backend.name, "replicas": backend.num_replicas,
                          "processes": size, "rank": rank,
                          "per_replica_batch": first.per_replica,
                          "global_batch": FLAGS.batch_size}
    figures["ratios"] = {}
    if baseline is not None:
        base_sps = _median(base_rates)
        origin_models = ours["origin"].models if "origin" in ours else _origin_like()
        base_flops = analytic_flops(origin_models, FLAGS.batch_size)
        forward = _median([f for f, _, _ in base_eval])
        loop_full = _median([lp * n_test / n for _, lp, n in base_eval])
        base_eval_seconds = _median([f + lp * n_test / n for f, lp, n in base_eval])
        figures["baseline"] = {
            "steps_per_sec": base_sps,
            "steps_per_sec_rounds": base_rates,
            "examples_per_sec": base_sps * 2 * FLAGS.batch_size,
            "cpu_cores_used": _median(cores["baseline"]),
            "examples_per_cpu_second": _median(
                [r * 2 * FLAGS.batch_size / c for r, c in zip(base_rates, cores["baseline"])]),
            "gflops_per_sec": base_flops["train_step"] * base_sps / 1e9,
            "eval_seconds": base_eval_seconds,
            "eval_cpu_seconds": _median(base_eval_cpu),
            "eval_forward_seconds": forward,
            "eval_loop_seconds": loop_full,
            "eval_loop_examples_timed": base_eval[0][2],
            "eval_images_per_sec": eval_images / base_eval_seconds,
            "batch_size": FLAGS.batch_size,
            "precision": "float32",
            "execution": "eager",
        }
        if function_rates:
            figures["origin_tf_function"] = {
                "steps_per_sec": _median(function_rates),
                "steps_per_sec_rounds": function_rates,
                "examples_per_sec": _median(function_rates) * 2 * FLAGS.batch_size,
            }
            figures["ratios"]["origin_tf_function"] = _median(
                [f / b for f, b in zip(function_rates, base_rates)])
            figures["ratios"]["origin_tf_function_rounds"] = [
                f / b for f, b in zip(function_rates, base_rates)]
        # Ratios within each round (same load on the machine), then the median.
        for name in ours:
            per_round = [o / b for o, b in zip(rates[name], base_rates)]
            figures["ratios"][f"train_{name}"] = _median(per_round)
            figures["ratios"][f"train_{name}_rounds"] = per_round
        per_round = [(f + lp * n_test / n) / e for (f, lp, n), e in zip(base_eval, eval_secs)]
        figures["ratios"]["eval"] = _median(per_round)
        figures["ratios"]["eval_rounds"] = per_round
        # The same comparisons per CPU-second: what each side achieves with the CPU time
        # it actually got. On a shared machine the wall-clock ratios above depend on how
        # the scheduler split the cores between a 1-thread Python loop and a multi-threaded
        # graph; these do not. They are not the targets, only the load-independent view.
        per_cpu = {}
        for name in ours:
            per_cpu[f"train_{name}"] = _median(
                [(o / oc) / (b / bc) for o, oc, b, bc in
                 zip(rates[name], cores[name], base_rates, cores["baseline"])])
        per_cpu["eval"] = _median([b / e for b, e in zip(base_eval_cpu, eval_cpu)])
        figures["ratios_per_cpu_second"] = per_cpu

    _print_process(say, figures, horovod)
    if horovod:
        return _horovod_aggregate(backend, figures, say)
    return figures


def _origin_like():
    """The origin's architecture through the package (for FLOPs when --configs lacks it)."""
    from dann_dist.models import build_models

    return build_models("bn", "bn")


_FLAG_NAMES = (
    "strategy", "batch_size", "steps", "warmup_steps", "rounds", "eval_rounds", "precision",
    "jit_compile", "intra_op_threads", "inter_op_threads", "data_threads", "cpu_affinity",
    "cpu_devices", "configs", "steps_per_call", "baseline", "baseline_tf_function",
    "baseline_steps", "baseline_train_examples", "train_examples", "eval_examples",
    "eval_batch_size", "baseline_eval_loop_examples", "pipeline_batches", "measure_peak",
    "peak_matmul_size", "seed")


def _print_process(say, figures: dict, horovod: bool) -> None:
    everyone = horovod
    peak = figures["peak"]
    for name, t in figures["train"].items():
        frac = []
        if t["fraction_of_reference_peak"] is not None:
            frac.append(f"{t['fraction_of_reference_peak']:.0%} of the reference "
                        f"{peak['reference_gflops']:.0f}")
        if t["fraction_of_measured_peak"] is not None:
            frac.append(f"{t['fraction_of_measured_peak']:.0%} of this run's "
                        f"{peak['matmul_size']}^2 {peak['dtype']} matmul "
                        f"{peak['measured_matmul_gflops']:.0f}")
        rounds = ", ".join(f"{r:.1f}" for r in t["steps_per_sec_rounds"])
        say(f"train [{name}]: {_fmt_rate(t['steps_per_sec'])} steps/s, "
            f"{_fmt_rate(t['examples_per_sec'])} images/s ({t['images_per_step']} per step; rounds: "
            f"{rounds}); {t['flops_per_step'] / 1e9:.2f} GFLOP/step -> "
            f"{t['gflops_per_sec']:.0f} GFLOP/s ({'; '.join(frac) or 'no peak'}); "
            f"{t['cpu_cores_used']:.2f} cores busy, {_fmt_rate(t['examples_per_cpu_second'])} "
            f"images per CPU-second", everyone)
    b = figures.get("baseline")
    if b:
        rounds = ", ".join(f"{r:.2f}" for r in b["steps_per_sec_rounds"])
        say(f"train [origin baseline, eager float32]: {b['steps_per_sec']:.2f} steps/s, "
            f"{_fmt_rate(b['examples_per_sec'])} images/s (rounds: {rounds}); "
            f"{b['gflops_per_sec']:.0f} GFLOP/s; {b['cpu_cores_used']:.2f} cores busy, "
            f"{_fmt_rate(b['examples_per_cpu_second'])} images per CPU-second", everyone)
    f = figures.get("origin_tf_function")
    if f:
        rounds = ", ".join(f"{r:.1f}" for r in f["steps_per_sec_rounds"])
        say(f"train [origin step in a plain tf.function, float32]: {f['steps_per_sec']:.1f} steps/s "
            f"(rounds: {rounds})", everyone)
    e = figures["eval"]
    say(f"evaluation [ours]: {e['images']} images in {e['seconds']:.2f} s = "
        f"{_fmt_rate(e['images_per_sec'])} images/s", everyone)
    if b:
        timed = b["eval_loop_examples_timed"]
        scaled = "" if timed * 2 == e["images"] else f", loop timed over {timed} and scaled"
        say(f"evaluation [origin baseline]: {b['eval_seconds']:.2f} s = forward "
            f"{b['eval_forward_seconds']:.2f} s + per-sample loop {b['eval_loop_seconds']:.2f} s"
            f"{scaled}; {_fmt_rate(b['eval_images_per_sec'])} images/s", everyone)
    p = figures["pipeline"]
    say(f"input pipeline alone: {_fmt_rate(p['batches_per_sec'])} batches/s = "
        f"{_fmt_rate(p['examples_per_sec'])} images/s; the step needs "
        f"{p['demand_batches_per_sec']:.1f} batches/s -> headroom {p['headroom']:.1f}x", everyone)
    mach = figures["machine"]
    if mach.get("loadavg_start") is not None:
        say(f"load average (1 min, whole machine): {mach['loadavg_start']:.2f} at start, "
            f"{mach['loadavg_end']:.2f} at end", everyone)
    m = figures["memory"]
    say(f"peak memory (max RSS): {m['peak_rss_mb']:.0f} MB after our configurations; "
        f"{m['peak_rss_mb_with_baseline']:.0f} MB with the baseline's arrays", everyone)
    if "peak_gpu_mb" in m:
        say(f"peak GPU memory (TensorFlow allocator, GPU:0): {m['peak_gpu_mb']:.0f} MB after our "
            f"configurations; {m['peak_gpu_mb_with_baseline']:.0f} MB with the baseline", everyone)
    if figures["ratios"]:
        say("ratios vs the origin baseline (median of per-round ratios): " + ", ".join(
            f"{k} {v:.1f}x [" + ", ".join(f"{r:.1f}" for r in figures["ratios"][k + "_rounds"]) + "]"
            for k, v in figures["ratios"].items() if not k.endswith("_rounds")), everyone)
        say("the same per CPU-second of this process (load-independent view, not the target): "
            + ", ".join(f"{k} {v:.1f}x" for k, v in figures["ratios_per_cpu_second"].items()),
            everyone)


# Per-rank quantities gathered under Horovod: (key path, how ranks combine).
_RANK_FIELDS = (
    (("pipeline", "examples_per_sec"), "sum"),
    (("pipeline", "headroom"), "min"),
    (("eval", "seconds"), "max"),
    (("memory", "peak_rss_mb"), "max"),
    (("memory", "peak_rss_mb_with_baseline"), "max"),
)


def _horovod_aggregate(backend, figures: dict, say) -> dict | None:
    """Rank 0 gets every rank's figures (allgather) and the summed throughputs
    (allreduce); the job's aggregate: examples/s and GFLOP/s add up over ranks; steps/s
    is the job's (ranks step together); evaluation runs on every rank (whole test sets),
    so its wall time is the slowest rank's."""
    import tensorflow as tf

    hvd = backend.hvd
    keys = []
    for name in figures["train"]:
        keys += [("train", name, "steps_per_sec"), ("train", name, "examples_per_sec"),
                 ("train", name, "gflops_per_sec"), ("train", name, "cpu_cores_used")]
    keys += [k for k, _ in _RANK_FIELDS]
    if "baseline" in figures:
        keys += [("baseline", "steps_per_sec"), ("baseline", "examples_per_sec"),
                 ("baseline", "eval_seconds")]

    def get(path):
        value = figures
        for part in path:
            value = value[part]
        return float(value)

    mine = tf.constant([[get(k) for k in keys]], tf.float64)
    table = hvd.allgather(mine, name="bench_per_rank").numpy()
    summed = hvd.allreduce(mine[0], op=hvd.Sum, name="bench_sum").numpy()
    if not backend.is_chief:
        return None

    size = table.shape[0]
    aggregate = {"ranks": size, "train": {}}
    for name in figures["train"]:
        col = {k[-1]: keys.index(k) for k in keys if k[:2] == ("train", name)}
        aggregate["train"][name] = {
            "steps_per_sec": float(table[:, col["steps_per_sec"]].min()),
            "examples_per_sec": float(summed[col["examples_per_sec"]]),
            "gflops_per_sec": float(summed[col["gflops_per_sec"]]),
            "cpu_cores_used": float(summed[col["cpu_cores_used"]]),
            "examples_per_cpu_second": float(summed[col["examples_per_sec"]]
                                             / summed[col["cpu_cores_used"]]),
        }
    combine = {"sum": lambda c: float(summed[c]), "min": lambda c: float(table[:, c].min()),
               "max": lambda c: float(table[:, c].max())}
    for path, how in _RANK_FIELDS:
        aggregate.setdefault(path[0], {})[path[1]] = combine[how](keys.index(path))
    aggregate["eval"]["images_per_sec"] = figures["eval"]["images"] / aggregate["eval"]["seconds"]
    ratios = {}
    if "baseline" in figures:
        base_examples = float(summed[keys.index(("baseline", "examples_per_sec"))])
        base_eval = float(table[:, keys.index(("baseline", "eval_seconds"))].max())
        aggregate["baseline"] = {"examples_per_sec": base_examples, "eval_seconds": base_eval}
        for name in figures["train"]:
            ratios[f"train_{name}"] = aggregate["train"][name]["examples_per_sec"] / base_examples
        ratios["eval"] = base_eval / aggregate["eval"]["seconds"]
    aggregate["ratios"] = ratios

    for name, t in aggregate["train"].items():
        say(f"AGGREGATE over {size} ranks, train [{name}]: {_fmt_rate(t['steps_per_sec'])} steps/s, "
            f"{_fmt_rate(t['examples_per_sec'])} images/s, {t['gflops_per_sec']:.0f} GFLOP/s; "
            f"{t['cpu_cores_used']:.2f} cores busy, {_fmt_rate(t['examples_per_cpu_second'])} images "
            "per CPU-second")
    say(f"AGGREGATE evaluation: {aggregate['eval']['seconds']:.2f} s (slowest rank); input "
        f"pipelines {_fmt_rate(aggregate['pipeline']['examples_per_sec'])} images/s, "
        f"least headroom {aggregate['pipeline']['headroom']:.1f}x; peak RSS per rank "
        f"<= {aggregate['memory']['peak_rss_mb']:.0f} MB")
    if ratios:
        say("AGGREGATE ratios vs the origin baseline on every rank: " + ", ".join(
            f"{k} {v:.1f}x" for k, v in ratios.items()))
    figures["per_rank"] = [dict(zip(("/".join(k) for k in keys), map(float, row))) for row in table]
    figures["aggregate"] = aggregate
    return figures


def run() -> None:
    define_flags()
    app.run(main, flags_parser=cli.parse_flags_or_exit)


if __name__ == "__main__":
    run()
