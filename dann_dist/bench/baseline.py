"""The origin baseline set up for timing: its in-memory dataset and float32 test sets,
its factors at epoch 1 of 100, warm-up, timed steps and timed evaluations."""

from __future__ import annotations

import time
from typing import Callable

import keras
import tensorflow as tf

from dann_dist.bench.origin import OriginBaseline, origin_dataset, origin_factors, origin_test_sets


class Baseline:
    """The origin's step, eager (and optionally the same step in a plain tf.function, a
    reference point, not a target), on its own input; built under the float32 policy."""

    def __init__(self, data, batch_size: int, train_examples: int, with_tf_function: bool):
        keras.mixed_precision.set_global_policy("float32")
        self.origin = OriginBaseline()
        n = min(train_examples, len(data.source_x))
        self.iterator = iter(origin_dataset(data.source_x[:n], data.source_y[:n],
                                            data.target_x[:n], data.target_y[:n], batch_size))
        self.test = origin_test_sets(data.test_sets)
        self.test_size = int(self.test[0].shape[0])
        self.la, self.mu = origin_factors()
        self.function_step = tf.function(self.origin.train_step) if with_tf_function else None

    def steps_per_sec(self, steps: int, step_fn: Callable | None = None) -> float:
        """Runs `steps` steps of `step_fn` (default: the eager step); steps per second."""
        step_fn = step_fn or self.origin.train_step
        start = time.perf_counter()
        for _ in range(steps):
            data = next(self.iterator)
            losses = step_fn(data[0], data[1], data[2], data[3], self.la, self.mu)
        float(losses[0])
        return steps / (time.perf_counter() - start)

    def function_steps_per_sec(self, steps: int) -> float:
        return self.steps_per_sec(steps, self.function_step)

    def warm_up(self, steps: int) -> None:
        """Fills the shuffle buffer, runs the ops once, traces the tf.function."""
        self.steps_per_sec(steps)
        self.origin.get_test_acc(*(t[:8] for t in self.test))  # builds nothing new
        if self.function_step is not None:
            self.function_steps_per_sec(steps)

    def evaluate(self, loop_examples: int) -> tuple[tuple[float, float, int], float]:
        """One evaluation: ((forward seconds, loop seconds, samples looped over), CPU
        seconds for the whole test sets). A loop over a subset is scaled to the whole
        test set for the CPU time (its cost per sample is constant)."""
        _, forward, loop, looped = self.origin.get_test_acc(*self.test,
                                                            loop_examples=loop_examples)
        return (forward[0], loop[0], looped), forward[1] + loop[1] * self.test_size / looped
