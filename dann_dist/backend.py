"""The Backend interface: what the trainer and the train step may ask of wherever the
step runs (dann_dist/distribute.py picks one; horovod_backend.py and the tf.distribute
backends implement it)."""

from __future__ import annotations

import contextlib
from typing import Callable

import keras
import tensorflow as tf

from dann_dist.config import ConfigError


class InconsistentProcessesError(RuntimeError):
    pass


class Backend:
    name = "single"
    num_replicas = 1          # replicas over all processes
    num_pipelines = 1         # input pipelines (processes feeding data)
    pipeline_index = 0
    replicas_per_pipeline = 1
    is_chief = True
    reason = ""

    @property
    def saves_checkpoints(self) -> bool:
        """Whether this process calls the checkpoint manager's save (tf.distribute needs
        every process to take part; Horovod ranks hold identical copies, the chief saves)."""
        return True

    def scope(self):
        return contextlib.nullcontext()

    def global_batch(self, per_domain_batch: int) -> int:
        return per_domain_batch

    def per_replica_batch(self, global_batch: int) -> int:
        if global_batch % self.num_replicas:
            raise ConfigError(f"--batch_size={global_batch} is not divisible by the "
                              f"{self.num_replicas} replicas of --strategy={self.name}: use a "
                              f"multiple of {self.num_replicas}.")
        return global_batch // self.num_replicas

    def distribute(self, dataset_fn: Callable[[int, int, int], tf.data.Dataset]):
        """dataset_fn(pipeline_index, num_pipelines, replicas_per_pipeline) -> per-replica
        batches. Returns an iterator the train step can call next() on."""
        return iter(dataset_fn(self.pipeline_index, self.num_pipelines, self.replicas_per_pipeline))

    def run(self, fn: Callable, args: tuple):
        return fn(*args)

    def all_reduce_gradients(self, grads: list) -> list:
        return grads

    def all_finite(self, grads: list) -> tf.Tensor:
        """1.0 if every gradient on every replica is finite, else 0.0 (all replicas agree).
        Called after all_reduce_gradients: where that reduced, local finiteness is global."""
        return all_finite(grads)

    def sum_over_replicas(self, value):
        return value

    def broadcast_initial_state(self, variables: list) -> None:
        """Makes every replica start from the chief's values (no-op when variables are
        created mirrored or there is one process)."""

    def train(self, variables: list, loop: Callable[[], int], on_enter: Callable[[], None]) -> int:
        """Runs loop() with every replica starting from the chief's `variables`; returns
        its result. on_enter is the reset hook of backends that re-enter the loop after
        a failure (elastic Horovod); it runs before each entry there, and never here."""
        self.broadcast_initial_state(variables)
        return loop()

    def after_step(self, step: int) -> None:
        """Called after every training step (elastic Horovod commits its state here)."""

    def checkpoint_dir(self, model_dir: str) -> str:
        return model_dir

    def local_leader_first(self, fn: Callable):
        """Runs fn on this host's first process before the others (which then find the
        data cache ready instead of all downloading and generating it at once)."""
        return fn()

    def barrier(self) -> None:
        """Returns once every process has reached it (no-op with one process)."""

    def chief_says(self, message: str | None) -> str | None:
        """The chief's `message` (its reason to refuse the run, or None), on every process
        (one process: `message` itself)."""
        return message

    def check_same_on_all_processes(self, what: str, value: str) -> None:
        """Raises InconsistentProcessesError on every process if `value` differs between
        processes (a rank with other data would otherwise fail later, or hang)."""

    def describe(self, global_batch: int) -> str:
        per_replica = global_batch // self.num_replicas
        return (f"strategy={self.name} ({self.reason}); replicas={self.num_replicas}, "
                f"input pipelines={self.num_pipelines}; batch per domain: global={global_batch}, "
                f"per pipeline/host={per_replica * self.replicas_per_pipeline}, "
                f"per replica={per_replica}")



def tf_variables(variables: list) -> list:
    """The tf.Variables under Keras 3 variables: what Horovod's broadcast and the
    tf.distribute collectives accept (Keras 3 variables are not tf.Variables)."""
    return [v.value if isinstance(v, keras.Variable) else v for v in variables]


def all_finite(grads: list) -> tf.Tensor:
    return tf.cast(tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]), tf.float32)
