"""train_and_evaluate(config): data -> models -> the train step on a backend ->
summaries, checkpoints and the export (dann_dist/records.py), written by the chief only.

train_and_evaluate reads top-down as its named steps: start the backend, claim the run
directory, load the inputs, build the state, restore the checkpoint, open the records,
train, finish. The method (dann_dist/methods/) decides the networks and the objective;
nothing here depends on which. Lines that exist only for distribution carry a
`# Distributed:` comment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from typing import Callable

import keras
import tensorflow as tf
from absl import logging

from dann_dist import (
    checkpoints,
    claim,
    distribute,
    lease,
    records,
    rundir,
    schedules,
    stopping,
)
from dann_dist import config as config_lib
from dann_dist import inputs as inputs_lib
from dann_dist import step as step_lib
from dann_dist.data import pairs, sample_grid
from dann_dist.data.errors import DataError
from dann_dist.eval_lib import make_evaluator
from dann_dist.methods import registry
from dann_dist.models import models_for
from dann_dist.summaries import Summaries, Window

# The names train.py and the tests catch.
NonFiniteLossError = stopping.NonFiniteLossError
StopRequested = stopping.StopRequested


def train_and_evaluate(config: config_lib.Config, domains=None) -> dict:
    """Trains (or resumes) until config.train_steps; returns the final evaluation.
    `domains` (source, target) may be passed in to skip loading (tests)."""
    config, backend = start_backend(config)
    with contextlib.ExitStack() as stack:
        signals = stack.enter_context(stopping.Signals())
        lock = _claim(stack, config, backend)
        inputs, fingerprint = inputs_lib.load(config, backend, domains)
        run = build(config, backend, inputs, fingerprint)
        run.lock = lock
        # Also a chief that took the lease over later (elastic) gives it back; twice is a no-op.
        stack.callback(lambda: run.lock is not None and run.lock.release())
        restore_checkpoint(run)
        open_records(run)
        # Loading the data can take minutes: the lease's clock restarts now, and a trainer
        # that took the directory over meanwhile stops this one (LeaseLost, exit 2).
        records.renew_lease(run, force=True)
        step = backend.train(run.state.all_variables() + [run.state.step],
                             loop=lambda: train_loop(run, signals),
                             on_enter=lambda: _enter_loop(run))
        with signals.deferred():
            metrics = records.finish(run, step)
        if signals.signum:
            # A scheduler's SIGTERM during the last step or the export: the run is complete
            # (a rerun does nothing), but the exit status must say it was stopped (143), so
            # that Slurm and Kubernetes treat the job as preempted, not failed or done.
            raise StopRequested(signals.signum)
        return metrics


def start_backend(config: config_lib.Config):
    """The backend, determinism, seed and the resolved precision: (config, backend)."""
    try:
        pairs.get(config.pair)
    except DataError as err:  # a bad flag (exit 2), found before any data is read
        raise config_lib.ConfigError(str(err)) from err
    method = registry.get(config.adaptation)
    if config.adversarial_loss not in method.adversarial_losses:
        raise config_lib.ConfigError(
            f"--adversarial_loss={config.adversarial_loss} is not implemented by "
            f"--adaptation={config.adaptation}: use --adversarial_loss="
            f"{'|'.join(method.adversarial_losses)}.")
    backend = distribute.make_backend(config)
    if config.elastic and not isinstance(backend, distribute.Horovod):
        raise config_lib.ConfigError(
            f"--elastic needs Horovod, but the backend is {backend.name} ({backend.reason}): "
            "launch with horovodrun --min-np/--max-np --host-discovery-script, see "
            "launch/horovod_elastic.sh.")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    precision, precision_reason = distribute.resolve_precision(config.precision)
    # Resolved once, so run.json, the step and every rank see the same policy.
    config = dataclasses.replace(config, precision=precision)
    keras.mixed_precision.set_global_policy(config.precision)
    backend.per_replica_batch(config.batch_size)  # fails early if the batch does not split
    if backend.is_chief:
        logging.info("%s", backend.describe(config.batch_size))
        logging.info("precision %s (%s)", precision, precision_reason)
        logging.info("%s", schedules.describe(config))
    return config, backend


def _claim(stack: contextlib.ExitStack, config: config_lib.Config, backend):
    """Chief: claims the run directory (its lease, held until the run ends). Distributed:
    every process learns whether the chief could, so that a refused job ends on every rank
    with the chief's reason (exit 2), not in a collective the chief never joins."""
    refusal, lock = None, None
    if backend.is_chief:
        try:
            lock = stack.enter_context(claim.claim_run_dir(config))
        except config_lib.ConfigError as err:
            refusal = err
    # Distributed: not under --elastic, whose late joiners start here while the others train.
    message = None if config.elastic else backend.chief_says(refusal and str(refusal))
    if refusal is not None:
        raise refusal
    if message:
        raise config_lib.ConfigError(f"process {backend.pipeline_index}: the chief refused the "
                                     f"run: {message}")
    return lock


def build(config: config_lib.Config, backend, inputs: inputs_lib.Inputs,
          fingerprint: str) -> records.Run:
    with backend.scope():
        models = models_for(config)
        state = step_lib.create_state(models, config)
    method = registry.get(config.adaptation)
    return records.Run(config, backend, inputs, fingerprint, state,
                       _make_manager(config, backend, state), make_evaluator(models, method))


def _make_manager(config, backend, state) -> tf.train.CheckpointManager:
    return checkpoints.make_manager(state.trackables(), backend.checkpoint_dir(config.model_dir),
                                    config.keep_checkpoints)


def restore_checkpoint(run: records.Run) -> None:
    """Restores the newest readable checkpoint (none: a fresh run at step 0)."""
    config = run.config
    restored = checkpoints.restore_latest(run.manager)
    run.start_step = int(run.state.step.numpy())
    if run.start_step > config.train_steps:
        raise config_lib.ConfigError(
            f"{config.model_dir} is at step {run.start_step}, past --train_steps="
            f"{config.train_steps}: raise --train_steps or use another --model_dir.")
    if run.backend.is_chief:
        logging.info("%s at step %d", f"resumed from {restored}" if restored else "fresh run",
                     run.start_step)
        if restored:
            claim.check_fingerprint(config, int(run.state.config_fingerprint.numpy()))
    run.state.config_fingerprint.assign(rundir.trained_fingerprint(config))


def open_records(run: records.Run) -> None:
    """Chief: records run.json; every process: opens the summaries; redoes an evaluation
    that a kill interrupted."""
    config, backend = run.config, run.backend
    finished = records.finished_before(run)
    if backend.is_chief and not finished:
        rundir.truncate_eval_history(config.model_dir, run.start_step)
        # Only now: a refused or failed resume leaves the recorded run intact.
        # evaluate.py rebuilds the models and the preprocessing from this record.
        rundir.write_run_record(config.model_dir, config, run.inputs.mean,
                                schedules.derived(config, backend))
    run.summaries = Summaries(config.model_dir, backend.is_chief and not finished,
                              run.start_step)
    if run.start_step == 0:
        source, target = run.inputs.domains
        run.summaries.hparams(config_lib.to_dict(config))
        run.summaries.text("data", f"source: {source.description}\n\ntarget: {target.description}")
        run.summaries.image("input_samples/source_top_target_bottom",
                            sample_grid.grid([source, target]))
    # The training clock starts here, as before the set-up was split into steps.
    run.started = time.perf_counter()
    if run.start_step and records.eval_due(config, run.start_step) and (
            run.start_step not in rundir.eval_steps(config.model_dir)):
        logging.info("redoing the evaluation of step %d, interrupted before it was recorded",
                     run.start_step)
        records.run_eval(run, run.start_step)


def _enter_loop(run: records.Run) -> None:
    """Distributed: the elastic reset hook, run on every (re-)entry of the training loop
    after the processes have synchronised, with the new number of processes."""
    config, backend = run.config, run.backend
    backend.check_same_on_all_processes("training data and precision", run.fingerprint)
    # The chief may have changed: the lease follows it (every process has read the token
    # on the first entry, when the first chief's lease is on disk).
    if run.lock_token is None:
        run.lock_token = (lease.live_lease(config.model_dir) or {}).get("token")
    if backend.is_chief and run.lock is None:
        run.lock = lease.RunLock(config.model_dir, token=run.lock_token).take_over()
    elif not backend.is_chief and run.lock is not None:
        run.lock.release()
        run.lock = None
    # The chief may have changed: only it writes summaries and checkpoints.
    if run.summaries.enabled != backend.is_chief:
        run.summaries.flush()
        run.summaries = Summaries(config.model_dir, backend.is_chief)
    run.manager = _make_manager(config, backend, run.state)
    run.noise_cache.clear()  # traced for the old number of replicas
    logging.info("elastic: process %d of %d, training from step %d (%s)", backend.pipeline_index,
                 backend.num_pipelines, int(run.state.step.numpy()),
                 backend.describe(config.batch_size))


def train_loop(run: records.Run, signals: stopping.Signals) -> int:
    """Trains from state.step to config.train_steps; returns the last step. Under
    --elastic it runs again after every reset, from the last commit: the input re-enters
    its stream at that step, sharded anew."""
    config, backend = run.config, run.backend
    step = int(run.state.step.numpy())
    if not run.start_synced:
        run.start_step, run.start_synced = step, True
    iterator = inputs_lib.iterator(run.inputs, config, backend, step, config.seed)
    method = registry.get(config.adaptation)
    phase, train_step = None, None
    window = Window()
    with signals.deferred():
        while step < config.train_steps:
            if method.phase_at(config, step) != phase:  # one traced step per phase
                phase = method.phase_at(config, step)
                train_step = _enter_phase(run, phase, step)
            metrics, lam, stop_votes = train_step(iterator, tf.constant(float(signals.signum != 0)))
            step += 1
            method.after_step(run.state.models, config, step)
            records.renew_lease(run)
            metrics = {name: (float(s), float(c)) for name, (s, c) in metrics.items()}
            stopping.check_metrics(metrics, step, records.kept(run))
            window.add(metrics)
            if float(stop_votes) > 0:
                _stop(run, step, signals.signum or signal.SIGTERM)
            if step % config.log_every == 0 or step == config.train_steps:
                records.check_weights(run, step)
                records.log_window(run, window, step, float(lam))
            if step % config.checkpoint_every == 0:
                records.save(run, step)
            if records.eval_due(config, step):
                records.run_eval(run, step, measure_noise=True)
            backend.after_step(step)
    return step


def _enter_phase(run: records.Run, phase: tuple, step: int) -> Callable:
    """The traced step of a phase of the method (most methods have one)."""
    name, first, end = phase
    if len(registry.get(run.config.adaptation).phases(run.config)) > 1 and run.backend.is_chief:
        logging.info("phase %s: steps %d to %d (from step %d)", name, first, end, step)
    return step_lib.make_train_step(run.state, run.config, run.backend, name)


def _stop(run: records.Run, step: int, signum: int) -> None:
    # Distributed: a signal seen by any process stops all after the same step. Every
    # process logs before the chief saves and exits, so that a launcher that reaps the
    # others on the first exit still shows where each stopped.
    logging.warning("process %d: stop requested at step %d", run.backend.pipeline_index, step)
    records.save(run, step)
    if run.backend.is_chief:
        logging.info("stop requested at step %d: checkpoint written, exiting", step)
    run.summaries.flush()
    raise StopRequested(signum)

