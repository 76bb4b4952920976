"""Where the train step runs: the one place that knows about Horovod and tf.distribute.

A Backend answers: how many replicas and input pipelines exist, which process is the
chief, how to build variables (scope), how to feed input, how to run the per-replica
step, how to all-reduce gradients and metric sums, and how to start every replica
from the same weights. The train step itself (step.py) never mentions a backend type.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Callable

import keras
import tensorflow as tf

from dann_dist.config import Config, ConfigError

# Variables set by horovodrun (gloo) and by mpirun (Open MPI, MPICH/Intel MPI, Slurm PMI).
_LAUNCHER_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


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
        return _all_finite(grads)

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

    def check_same_on_all_processes(self, what: str, value: str) -> None:
        """Raises InconsistentProcessesError on every process if `value` differs between
        processes (a rank with other data would otherwise fail later, or hang)."""

    def describe(self, global_batch: int) -> str:
        per_replica = global_batch // self.num_replicas
        return (f"strategy={self.name} ({self.reason}); replicas={self.num_replicas}, "
                f"input pipelines={self.num_pipelines}; batch per domain: global={global_batch}, "
                f"per pipeline/host={per_replica * self.replicas_per_pipeline}, "
                f"per replica={per_replica}")


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
        bad = 1.0 - _all_finite(grads)
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


class Horovod(Backend):
    name = "horovod"

    def __init__(self, hvd, reason: str, commit_every: int = 0):
        """commit_every > 0: elastic (--elastic), committing the state every that many steps."""
        self.hvd = hvd
        self.reason = reason
        self.commit_every = commit_every
        self._elastic_state = None
        self.refresh()

    def refresh(self) -> None:
        """Reads size and rank from Horovod (again after an elastic reset renumbers ranks)."""
        self.num_replicas = self.hvd.size()
        self.num_pipelines = self.hvd.size()
        self.pipeline_index = self.hvd.rank()
        self.is_chief = self.hvd.rank() == 0

    def elastic_state(self, variables: list):
        """Elastic Horovod state over `variables` (Keras or tf.Variables): commit() copies
        their values to host memory and checks for host changes; after a failure every
        survivor restores the last commit, then all processes (new ones too) take rank 0's
        values. The backend's size and rank are refreshed on every reset.

        Horovod's TensorFlowState is not used: under eager TF 2 it broadcasts the variables
        once, in its constructor, and not in sync(), so a process that joins later would
        neither match the others' collectives nor receive their weights."""
        from horovod.common.elastic import ObjectState

        hvd = self.hvd
        tf_vars = tf_variables(variables)

        class VariablesState(ObjectState):
            def __init__(self):
                self.variables = tf_vars
                self._snapshot()
                super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank)

            def _snapshot(self):
                self._values = [v.numpy() for v in self.variables]

            def save(self):
                self._snapshot()
                super().save()

            def restore(self):
                for variable, value in zip(self.variables, self._values):
                    variable.assign(value)
                super().restore()

            def sync(self):
                hvd.broadcast_variables(self.variables, root_rank=0)
                self._snapshot()
                super().sync()

        state = VariablesState()
        state.register_reset_callbacks([self.refresh])
        return state

    def train(self, variables, loop, on_enter):
        if not self.commit_every:
            return super().train(variables, loop, on_enter)
        # Its sync, on entering the loop, gives every process rank 0's state.
        self._elastic_state = self.elastic_state(variables)

        def enter_and_loop():
            on_enter()
            return loop()

        return self.run_elastic(self._elastic_state, enter_and_loop)

    def after_step(self, step):
        if self._elastic_state is not None and step % self.commit_every == 0:
            # Every process commits at the same steps (commit is a collective).
            self._elastic_state.commit()

    def run_elastic(self, state, fn: Callable):
        """Runs fn() as hvd.elastic.run does: when a process fails (a collective raises) or
        hosts change (at a commit), the survivors restore the last commit, re-initialise
        Horovod with the new set of processes and call fn() again. Returns fn's result.

        hvd.elastic.run's own wrapper is not used: it recognises a failed collective only
        by 'HorovodAllreduce'/'HorovodAllgather'/'HorovodBroadcast' in a tf UnknownError
        (the grouped all-reduce of the train step is 'HorovodGroupedAllreduce'), and it
        returns None, silently, on any other UnknownError."""
        from horovod.common.elastic import run_fn
        from horovod.common.exceptions import HorovodInternalError

        hvd = self.hvd

        def attempt(state):
            try:
                return fn()
            except tf.errors.OpError as err:
                if "Horovod" in str(err):
                    raise HorovodInternalError(err) from err
                raise

        def reset():
            hvd.shutdown()
            hvd.init()

        return run_fn(attempt, reset)(state)

    @property
    def saves_checkpoints(self) -> bool:
        return self.is_chief

    def all_reduce_gradients(self, grads):
        # One fused call for the three groups; losses are already divided by the global
        # batch, so the sum is the global mean gradient.
        return self.hvd.grouped_allreduce(list(grads), op=self.hvd.Sum)

    def sum_over_replicas(self, value):
        return self.hvd.allreduce(value, op=self.hvd.Sum)

    def broadcast_initial_state(self, variables):
        self.hvd.broadcast_variables(tf_variables(variables), root_rank=0)

    def barrier(self):
        self.hvd.allreduce(tf.constant(0.0), op=self.hvd.Sum, name="barrier")

    def check_same_on_all_processes(self, what, value):
        values = self.hvd.allgather_object(value)
        if len(set(values)) > 1:
            differing = [rank for rank, v in enumerate(values) if v != values[0]]
            raise InconsistentProcessesError(
                f"{what} differs between ranks: rank 0 has {values[0]}, ranks {differing} "
                "have other values. Give every rank the same data and flags.")

    def local_leader_first(self, fn):
        leader = self.hvd.local_rank() == 0
        if leader:
            result = fn()
        # Every rank reaches the barrier: the leader after its work, the others before.
        self.barrier()
        return result if leader else fn()


def tf_variables(variables: list) -> list:
    """The tf.Variables under Keras 3 variables: what Horovod's broadcast and the
    tf.distribute collectives accept (Keras 3 variables are not tf.Variables)."""
    return [v.value if isinstance(v, keras.Variable) else v for v in variables]


def _all_finite(grads: list) -> tf.Tensor:
    return tf.cast(tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]), tf.float32)


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
