"""Where the train step runs: the one place that knows about Horovod and tf.distribute.

A Backend answers: how many replicas and input pipelines exist, which process is the
chief, how to build variables (scope), how to feed input, how to run the per-replica
step, how to all-reduce gradients and metric sums, and how to start every replica
from the same weights. The train step itself (step.py) never mentions a backend type.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from dann_dist.backend import (  # noqa: F401  (the names callers know from here)
    Backend,
    InconsistentProcessesError,
    all_finite,
    tf_variables,
)
from dann_dist.config import Config, ConfigError
from dann_dist.horovod_backend import Horovod

# Variables set by horovodrun (gloo) and by mpirun (Open MPI, MPICH/Intel MPI, Slurm PMI).
_LAUNCHER_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


class SingleDevice(Backend):
    def __init__(self, reason: str):
        self.reason = reason


class TfDistribute(Backend):
    """MirroredStrategy (one host) or MultiWorkerMirroredStrategy (TF_CONFIG)."""

    def __init__(self, strategy: tf.distribute.Strategy, name: str, reason: str):
        self.strategy = strategy
        self.name = name
        self.reason = reason
        self.num_replicas = strategy.num_replicas_in_sync
        resolver = getattr(strategy.extended, "_cluster_resolver", None)
        if name == "multi_worker" and resolver is not None:
            task_type, task_id = resolver.task_type, resolver.task_id
            workers = resolver.cluster_spec().as_dict().get("worker", [])
            chiefs = resolver.cluster_spec().as_dict().get("chief", [])
            self.num_pipelines = max(1, len(workers) + len(chiefs))
            self.pipeline_index = task_id + (len(chiefs) if task_type == "worker" else 0)
            # The chief writes; with no explicit chief task, worker 0 is the chief.
            self.is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                                     and not chiefs)
            self._task = (task_type, task_id)
        self.replicas_per_pipeline = self.num_replicas // self.num_pipelines

    def scope(self):
        return self.strategy.scope()

    def distribute(self, dataset_fn):
        def fn(ctx: tf.distribute.InputContext):
            return dataset_fn(ctx.input_pipeline_id, ctx.num_input_pipelines,
                              self.num_replicas // ctx.num_input_pipelines)
        return iter(self.strategy.distribute_datasets_from_function(fn))

    def run(self, fn, args):
        return self.strategy.run(fn, args=args)

    def all_reduce_gradients(self, grads):
        # Keras 3 optimizers sum gradients over replicas inside apply() under a
        # tf.distribute strategy; reducing here as well would count them twice.
        return grads

    def all_finite(self, grads):
        # Gradients are still per replica here (the optimizers reduce them): vote.
        bad = 1.0 - all_finite(grads)
        votes = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bad)
        return tf.cast(votes == 0.0, tf.float32)

    def sum_over_replicas(self, value):
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    def broadcast_initial_state(self, variables: list) -> None:
        """MultiWorkerMirroredStrategy: copies the chief's values to every worker.

        Each worker restored from its own checkpoint_dir, and only the chief's holds the
        run's checkpoints (the others' scratch dirs start empty): without this copy a
        resumed run would continue from step 0 on the other workers. The copy is a sum
        over all replicas to which only the chief's first replica contributes; values
        travel as float64, exact for float32 and for integers (steps) below 2**53.
        MirroredStrategy needs nothing: its one process restores every replica."""
        if self.name != "multi_worker" or self.num_pipelines == 1:
            return
        tf_vars = tf_variables(variables)
        chief, local_replicas = self.is_chief, self.replicas_per_pipeline

        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            first_local = tf.equal(ctx.replica_id_in_sync_group % local_replicas, 0)
            keep = tf.logical_and(tf.constant(chief), first_local)
            values = [tf.cast(tf.convert_to_tensor(v), tf.float64) for v in tf_vars]
            values = [tf.where(keep, x, tf.zeros_like(x)) for x in values]
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)

        @tf.function
        def chief_values():
            return self.strategy.experimental_local_results(self.strategy.run(replica_fn))[0]

        with self.strategy.scope():
            for var, value in zip(tf_vars, chief_values()):
                var.assign(tf.cast(value, var.dtype))

    def checkpoint_dir(self, model_dir: str) -> str:
        # MultiWorkerMirroredStrategy: every worker must take part in saving; only the
        # chief's copy is kept, the others write to a scratch dir, deleted when the
        # process exits (and on start, if a killed run left one behind: resuming uses
        # the chief's checkpoint only, see broadcast_initial_state).
        if self.is_chief or self.name != "multi_worker":
            return model_dir
        import atexit

        scratch = os.path.join(model_dir, "workers_tmp", f"{self._task[0]}_{self._task[1]}")
        self._remove_scratch(scratch)
        atexit.register(self._remove_scratch, scratch)
        return scratch

    @staticmethod
    def _remove_scratch(scratch: str) -> None:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
        try:
            os.rmdir(os.path.dirname(scratch))  # workers_tmp, once it is empty
        except OSError:
            pass


def launched_by_horovod() -> bool:
    return any(var in os.environ for var in _LAUNCHER_VARS)


def _import_horovod():
    try:
        import horovod.tensorflow as hvd
    except ImportError as err:
        raise ConfigError(
            f"--strategy=horovod but Horovod cannot be imported ({err}). Run `make setup` to "
            "build it, or use --strategy=mirrored|single.") from err
    return hvd


def _gpus() -> list:
    return tf.config.list_physical_devices("GPU")


def cpu_has_native_bfloat16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bfloat16 dot products natively (AVX512-BF16 or AMX),
    which oneDNN uses; elsewhere bfloat16 is emulated and slower than float32."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(requested: str, cpuinfo_path: str = "/proc/cpuinfo") -> tuple[str, str]:
    """--precision=auto -> (policy, why). bfloat16 on CPUs that compute it natively: it
    trains 1.5x faster here at the same accuracy (BENCHMARKS.md). float32 on GPUs, where
    mixed_float16's accuracy on this recipe has not been measured, and on other CPUs."""
    if requested != "auto":
        return requested, "asked for"
    if _gpus():
        return "float32", "auto: GPU visible (ask for mixed_float16 explicitly)"
    if cpu_has_native_bfloat16(cpuinfo_path):
        return "mixed_bfloat16", "auto: CPU with native bfloat16 (avx512_bf16/amx)"
    return "float32", "auto: CPU without native bfloat16"


def make_backend(config: Config) -> Backend:
    """Initialises the chosen backend (call before any other TensorFlow work)."""
    strategy = config.strategy
    reason = "asked for"
    if strategy == "auto":
        if launched_by_horovod():
            strategy, reason = "horovod", "auto: launched by horovodrun/mpirun"
        elif "TF_CONFIG" in os.environ and json.loads(os.environ["TF_CONFIG"]).get("cluster"):
            strategy, reason = "multi_worker", "auto: TF_CONFIG names a cluster"
        elif len(_gpus()) > 1:
            strategy, reason = "mirrored", f"auto: {len(_gpus())} GPUs visible"
        else:
            strategy, reason = "single", "auto: one process, at most one GPU"

    if strategy == "horovod":
        if not launched_by_horovod():
            raise ConfigError(
                "--strategy=horovod needs a launcher: run `horovodrun -np N python -m "
                "dann_dist.train ...` (or mpirun), or use --strategy=mirrored|single.")
        hvd = _import_horovod()
        hvd.init()
        gpus = _gpus()
        if gpus:
            # One GPU per local rank; memory growth so ranks sharing a host coexist.
            gpu = gpus[hvd.local_rank() % len(gpus)]
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
        return Horovod(hvd, reason, config.elastic_commit_every if config.elastic else 0)
    if strategy == "mirrored":
        # Logical GPUs: two carved from one physical GPU (scripts/device_check.sh) are two
        # replicas; the physical list would make them one.
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or None
        if devices is None:
            cpus = tf.config.list_logical_devices("CPU")
            devices = [d.name for d in cpus]
        return TfDistribute(tf.distribute.MirroredStrategy(devices), "mirrored", reason)
    if strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError(
                "--strategy=multi_worker needs TF_CONFIG (see launch/multi_worker.sh).")
        return TfDistribute(tf.distribute.MultiWorkerMirroredStrategy(), "multi_worker", reason)
    return SingleDevice(reason)
