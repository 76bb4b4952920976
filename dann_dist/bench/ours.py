"""Our side: each configuration built from the package's real code (models, state, the
backend's input iterator, the train step, the evaluator) and warmed up; the synthetic data
it runs on; its FLOPs per step. The bench's one use of dann_dist.step, models, eval_lib and
data.pipeline: when their interfaces change, this module follows."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from dann_dist import step as step_lib
from dann_dist.bench.configs import Config
from dann_dist.data.pipeline import channel_mean, train_dataset
from dann_dist.distribute import Backend
from dann_dist.eval_lib import make_evaluator
from dann_dist.methods import registry
from dann_dist.models import models_for


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


def _private_threads(dataset: tf.data.Dataset, threads: int) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return dataset.with_options(options)


def make_dataset_fn(arrays: tuple, mean: np.ndarray, per_replica: int, seed: int,
                    data_threads: int, source_augment: str = "none"
                    ) -> Callable[[int, int, int], tf.data.Dataset]:
    """The backend's dataset_fn(pipeline index, pipelines, replicas per pipeline) over
    the package's train_dataset (0 data_threads: tf.data's shared pool)."""
    source_x, source_y, target_x = arrays

    def dataset_fn(index: int, count: int, replicas: int) -> tf.data.Dataset:
        dataset = train_dataset(source_x, source_y, target_x, mean=mean,
                                per_replica_batch=per_replica, seed=seed,
                                replicas_per_pipeline=replicas, pipeline_index=index,
                                num_pipelines=count, source_augment=source_augment)
        return _private_threads(dataset, data_threads) if data_threads else dataset

    return dataset_fn


def repeat_step(step: Callable, times: int) -> Callable:
    """The experiment behind --steps_per_call: the same step, `times` times per call."""
    @tf.function
    def several_steps(iterator, stop):
        outputs = step(iterator, stop)
        for _ in tf.range(times - 1):
            outputs = step(iterator, stop)
        return outputs

    return several_steps


class Ours:
    """One configuration of the package: models, state, backend iterator, step, evaluator."""

    def __init__(self, name: str, config: Config, backend: Backend, arrays: tuple,
                 mean: np.ndarray, data_threads: int, steps_per_call: int):
        self.name, self.config, self.backend = name, config, backend
        self.per_replica = backend.per_replica_batch(config.batch_size)
        with backend.scope():
            self.models = models_for(config)
            self.state = step_lib.create_state(self.models, config)
        backend.broadcast_initial_state(self.state.all_variables() + [self.state.step])
        self.dataset_fn = make_dataset_fn(arrays, mean, self.per_replica, config.seed,
                                          data_threads, config.source_augment)
        self.iterator = backend.distribute(self.dataset_fn)
        self.steps_per_call = steps_per_call
        step = step_lib.make_train_step(self.state, config, backend)
        self.train_step = step if steps_per_call == 1 else repeat_step(step, steps_per_call)
        self.stop = tf.constant(0.0)
        self.evaluate = make_evaluator(self.models, registry.get(config.adaptation))
        # Images one process handles per step: its replicas' share of both domains.
        self.process_batch = self.per_replica * backend.replicas_per_pipeline
        self.flops = analytic_flops(self.models, self.process_batch)

    def run_steps(self, steps: int) -> float:
        """Runs about `steps` steps; returns steps per second."""
        calls = max(1, round(steps / self.steps_per_call))
        start = time.perf_counter()
        for _ in range(calls):
            outputs = self.train_step(self.iterator, self.stop)
        tf.nest.flatten(outputs)[0].numpy()  # waits for the last step (its metric sums)
        return calls * self.steps_per_call / (time.perf_counter() - start)

    def pipeline_rate(self, batches: int) -> float:
        """Per-replica batches per second that this process's input pipeline yields alone
        (drawn inside one tf.function, so Python does not limit the rate)."""
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


def build_ours(configs: dict[str, Config], backend: Backend, arrays: tuple, mean: np.ndarray,
               settings, say) -> tuple[dict[str, Ours], dict[str, str]]:
    """Builds and warms up each configuration: ({name: Ours}, {name: why it failed}). A
    configuration the package cannot run in this setting (the same on every rank) is
    reported and left out, and the others are still timed."""
    ours, failed = {}, {}
    for name, config in configs.items():
        try:
            candidate = Ours(name, config, backend, arrays, mean, settings.data_threads,
                             settings.steps_per_call)
            candidate.run_steps(settings.warmup_steps)
        except (TypeError, ValueError, tf.errors.OpError) as err:
            failed[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"
            say(f"train [{name}]: FAILED under precision={config.precision} "
                f"XLA={settings.jit_compile}: {failed[name]}", everyone=say.every_rank)
            continue
        ours[name] = candidate
    return ours, failed


def layer_macs(model: keras.Model) -> list[int]:
    """Multiply-accumulates per example of each Conv2D / Dense layer, in order."""
    macs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            kernel = layer.kernel.shape
            macs.append(math.prod(out[1:]) * math.prod(kernel[:-1]))
        elif isinstance(layer, keras.layers.Dense):
            macs.append(math.prod(layer.kernel.shape))
    return macs


def analytic_flops(models: dict, batch: int) -> dict:
    """FLOPs of one train step on `batch` pairs, counted from the layers: 2 FLOPs per
    multiply-accumulate of every Conv2D and Dense, for the forward pass, the weight
    gradient and the input gradient (none for the extractor's first layer: images need
    no gradient). The extractor and discriminator see 2*batch images, the classifier
    batch. Not counted: bias, activations, pooling, BatchNorm, losses, optimizer updates
    (together a few percent). Both the origin's step and ours do this arithmetic."""
    forward = train = 0
    for name, examples in (("extractor", 2 * batch), ("classifier", batch),
                           ("discriminator", 2 * batch)):
        macs = layer_macs(models[name])
        forward += 2 * examples * sum(macs)
        train += 2 * examples * (3 * sum(macs) - (macs[0] if name == "extractor" else 0))
    return {"train_step": train, "forward": forward}


def baseline_flops(ours: dict[str, Ours], batch: int) -> dict:
    """FLOPs of the origin's step on `batch` pairs: its architecture is the `origin`
    configuration's (BN heads), built here when --configs leaves that out."""
    if "origin" in ours:
        models = ours["origin"].models
    else:
        models = models_for(Config(model_dir="unused", classifier_head="bn",
                                   discriminator_head="bn"))
    return analytic_flops(models, batch)
