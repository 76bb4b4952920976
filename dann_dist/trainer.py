"""train_and_evaluate(config): data -> models -> the train step on a backend ->
summaries, checkpoints and the export, written by the chief only.

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
    noise_measure,
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
from dann_dist.summaries import Summaries, Window, format_metrics, progress_line

# The names train.py and the tests catch.
NonFiniteLossError = stopping.NonFiniteLossError
StopRequested = stopping.StopRequested


@dataclasses.dataclass
class Run:
    """What the steps of train_and_evaluate share."""
    config: config_lib.Config
    backend: distribute.Backend
    inputs: inputs_lib.Inputs
    fingerprint: str
    state: step_lib.TrainState
    manager: tf.train.CheckpointManager
    evaluate: Callable
    summaries: Summaries | None = None
    start_step: int = 0
    # Distributed: set on the first entry of the loop, once every process holds the
    # chief's restored state (before that, a worker that read no checkpoint says 0).
    start_synced: bool = False
    started: float = dataclasses.field(default_factory=time.perf_counter)
    # Training time excludes evaluations, so images/s and time-to-accuracy compare runs
    # that evaluate at different intervals (the scaling study's rows).
    eval_seconds: float = 0.0
    # The run directory's lease, held by the chief (lease.RunLock), and its token, which
    # a new elastic chief presents to take the lease over.
    lock: lease.RunLock | None = None
    lock_token: str | None = None
    # The noise-scale measurement's traced step, kept between evaluations.
    noise_cache: dict = dataclasses.field(default_factory=dict)

    def train_seconds(self) -> float:
        """Training seconds of the whole run: those before the last resume (kept in the
        checkpoint) plus this process's since."""
        return (float(self.state.train_seconds.numpy()) + time.perf_counter() - self.started
                - self.eval_seconds)


def train_and_evaluate(config: config_lib.Config, domains=None) -> dict:
    """Trains (or resumes) until config.train_steps; returns the final evaluation.
    `domains` (source, target) may be passed in to skip loading (tests)."""
    config, backend = start_backend(config)
    with contextlib.ExitStack() as stack:
        signals = stack.enter_context(stopping.Signals())
        lock = stack.enter_context(claim.claim_run_dir(config)) if backend.is_chief else None
        inputs, fingerprint = inputs_lib.load(config, backend, domains)
        run = build(config, backend, inputs, fingerprint)
        run.lock = lock
        # Also a chief that took the lease over later (elastic) gives it back; twice is a no-op.
        stack.callback(lambda: run.lock is not None and run.lock.release())
        restore_checkpoint(run)
        open_records(run)
        # Loading the data can take minutes: the lease's clock restarts now, and a trainer
        # that took the directory over meanwhile stops this one (LeaseLost, exit 2).
        _renew_lease(run, force=True)
        step = backend.train(run.state.all_variables() + [run.state.step],
                             loop=lambda: train_loop(run, signals),
                             on_enter=lambda: _enter_loop(run))
        with signals.deferred():
            metrics = finish(run, step)
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


def build(config: config_lib.Config, backend, inputs: inputs_lib.Inputs,
          fingerprint: str) -> Run:
    with backend.scope():
        models = models_for(config)
        state = step_lib.create_state(models, config)
    method = registry.get(config.adaptation)
    return Run(config, backend, inputs, fingerprint, state, _make_manager(config, backend, state),
               make_evaluator(models, method))


def _make_manager(config, backend, state) -> tf.train.CheckpointManager:
    return checkpoints.make_manager(state.trackables(), backend.checkpoint_dir(config.model_dir),
                                    config.keep_checkpoints)


def restore_checkpoint(run: Run) -> None:
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


def open_records(run: Run) -> None:
    """Chief: records run.json; every process: opens the summaries; redoes an evaluation
    that a kill interrupted."""
    config, backend = run.config, run.backend
    finished = _finished_before(run)
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
    if run.start_step and _eval_due(config, run.start_step) and (
            run.start_step not in rundir.eval_steps(config.model_dir)):
        logging.info("redoing the evaluation of step %d, interrupted before it was recorded",
                     run.start_step)
        run_eval(run, run.start_step)


def _finished_before(run: Run) -> bool:
    """The run was complete before this invocation: its step is the last and its final
    metrics are on disk. Rerunning it then changes nothing on disk. One process only:
    under tf.distribute every process must take part in the final save, and a worker
    cannot tell from its host what the chief sees."""
    return (run.backend.num_pipelines == 1 and run.start_step == run.config.train_steps
            and rundir.read_json(rundir.path(run.config.model_dir, rundir.METRICS)) is not None)


def _eval_due(config: config_lib.Config, step: int) -> bool:
    return bool(config.eval_every) and step % config.eval_every == 0 and step != config.train_steps


def _enter_loop(run: Run) -> None:
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


def train_loop(run: Run, signals: stopping.Signals) -> int:
    """Trains from state.step to config.train_steps; returns the last step. Under
    --elastic it runs again after every reset, from the last commit: the input re-enters
    its stream at that step, sharded anew."""
    config, backend = run.config, run.backend
    step = int(run.state.step.numpy())
    if not run.start_synced:
        run.start_step, run.start_synced = step, True
    iterator = inputs_lib.iterator(run.inputs, config, backend, step, config.seed)
    train_step = step_lib.make_train_step(run.state, config, backend)
    window = Window()
    with signals.deferred():
        while step < config.train_steps:
            metrics, lam, stop_votes = train_step(iterator, tf.constant(float(signals.signum != 0)))
            step += 1
            _renew_lease(run)
            metrics = {name: (float(s), float(c)) for name, (s, c) in metrics.items()}
            stopping.check_metrics(metrics, step, _kept(run))
            window.add(metrics)
            if float(stop_votes) > 0:
                _stop(run, step, signals.signum or signal.SIGTERM)
            if step % config.log_every == 0 or step == config.train_steps:
                _check_weights(run, step)
                _log_window(run, window, step, float(lam))
            if step % config.checkpoint_every == 0:
                save(run, step)
            if _eval_due(config, step):
                run_eval(run, step, measure_noise=True)
            backend.after_step(step)
    return step


def _renew_lease(run: Run, force: bool = False) -> None:
    """Chief: keeps the run directory's lease fresh (one clock read unless it is due)."""
    if run.lock is not None:
        run.lock.renew(force=force)


def _stop(run: Run, step: int, signum: int) -> None:
    # Distributed: a signal seen by any process stops all after the same step. Every
    # process logs before the chief saves and exits, so that a launcher that reaps the
    # others on the first exit still shows where each stopped.
    logging.warning("process %d: stop requested at step %d", run.backend.pipeline_index, step)
    save(run, step)
    if run.backend.is_chief:
        logging.info("stop requested at step %d: checkpoint written, exiting", step)
    run.summaries.flush()
    raise StopRequested(signum)


def _log_window(run: Run, window: Window, step: int, lam: float) -> None:
    progress_line(run.summaries, window, step, run.config, lam, _learning_rate(run),
                  run.backend.is_chief)


def _learning_rate(run: Run) -> float:
    return float(run.state.optimizers["extractor"].learning_rate.numpy())


def _kept(run: Run) -> str:
    return checkpoints.kept(run.manager.latest_checkpoint)


def _check_weights(run: Run, step: int) -> None:
    stopping.check_weights(run.state.models, step, _kept(run))


def save(run: Run, step: int) -> None:
    _check_weights(run, step)
    # The clock's total travels in the checkpoint, so a resumed run counts all of it.
    run.state.train_seconds.assign(run.train_seconds())
    run.started, run.eval_seconds = time.perf_counter(), 0.0
    if run.backend.saves_checkpoints:  # Distributed: who writes (see Backend)
        checkpoints.save(run.manager, step)


def run_eval(run: Run, step: int, measure_noise: bool = False) -> dict:
    """Evaluates (the weight average, where kept) and records it. measure_noise: also
    the gradient noise scale, of the raw weights training continues from; a collective
    step, so only where every process evaluates at the same step (not the redo of an
    interrupted evaluation, which the chief alone decides)."""
    _renew_lease(run)
    config = run.config
    eval_start, seconds = time.perf_counter(), run.train_seconds()
    inputs = run.inputs
    noise = {}
    if measure_noise and config.noise_scale_batches:
        # Batches of another seed: the noise of the gradient, not of the next steps'.
        noise = noise_measure.measure(run.state, config, run.backend,
                                      inputs_lib.iterator(inputs, config, run.backend, step,
                                                         config.seed + 1),
                                      config.noise_scale_batches, run.noise_cache)
    with step_lib.evaluation_weights(run.state):
        metrics = run.evaluate(inputs.test_sets, inputs.mean, config.eval_batch_size,
                               inputs.source_val, inputs.selection_images)
    metrics.update(noise)
    run.summaries.scalars("eval", metrics, step)
    metrics["step"] = step
    if run.backend.is_chief:
        logging.info("eval step %d: %s", step, format_metrics(metrics))
        # One line per evaluation: what the report's model-selection criteria read.
        schedule = {"lambda": float(step_lib.adaptation_factor(config, step)),
                    "learning_rate": _learning_rate(run), "train_seconds": seconds,
                    "progress": step / config.train_steps}
        rundir.append_eval(config.model_dir, {**metrics, **schedule})
    run.eval_seconds += time.perf_counter() - eval_start
    return metrics


def finish(run: Run, step: int) -> dict:
    """The final checkpoint, evaluation, export and metrics.json; for a run that was
    already complete, the recorded metrics, with nothing written."""
    config = run.config
    if _finished_before(run):
        logging.info("%s finished before (step %d): nothing to do; its metrics.json is "
                     "unchanged", config.model_dir, step)
        recorded = rundir.read_json(rundir.path(config.model_dir, rundir.METRICS))
        return {**recorded, "resumed_from_step": run.start_step}
    latest = run.manager.latest_checkpoint
    if latest is None or not latest.endswith(f"-{step}"):
        save(run, step)
    seconds = run.train_seconds()
    metrics = run_eval(run, step, measure_noise=True)
    metrics["weights_digest"] = checkpoints.weights_digest(run.state.models)
    metrics["resumed_from_step"] = run.start_step
    # The whole run's training time, over every resume.
    metrics["train_seconds"] = seconds
    metrics["examples_per_sec"] = step * 2 * config.batch_size / max(seconds, 1e-9)
    _renew_lease(run)
    if run.backend.is_chief:
        if config.export:
            with step_lib.evaluation_weights(run.state):
                _check_weights(run, step)
                path = checkpoints.export(run.state.models, run.inputs.mean,
                                          rundir.path(config.model_dir, rundir.EXPORT_DIR),
                                          run.manager.latest_checkpoint)
            logging.info("exported extractor+classifier to %s", path)
        rundir.write_metrics(config.model_dir, metrics)
    run.summaries.flush()
    return metrics
