"""Horovod: one process per replica, gradients and metrics all-reduced by Horovod
(fused), elastic runs committed to host memory (--elastic)."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from dann_dist.backend import Backend, InconsistentProcessesError, tf_variables


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

    def chief_says(self, message):
        return self.hvd.broadcast_object(message, root_rank=0)

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
