"""train_and_evaluate(config): data -> models -> the train step on a backend ->
summaries, checkpoints and the export, written by the chief only.

train_and_evaluate reads top-down as its named steps: start the backend, claim the run
directory, load the inputs, build the state, restore, train, finish. Lines that exist
only for distribution carry a `# Distributed:` comment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import signal
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dann_dist import checkpoints, distribute, rundir
from dann_dist import config as config_lib
from dann_dist import step as step_lib
from dann_dist.data import sample_grid
from dann_dist.data.load import load_domains
from dann_dist.data.pipeline import channel_mean, train_dataset
from dann_dist.eval_lib import make_evaluator
from dann_dist.models import models_for
from dann_dist.summaries import Summaries


class NonFiniteLossError(RuntimeError):
    """A NaN/Inf loss or weight (exit 3); the last checkpoint written before it is good."""


class StopRequested(Exception):
    """A signal asked the run to stop (exit 128 + signal)."""

    def __init__(self, signum: int, checkpoint_written: bool = True):
        what = ("checkpoint written" if checkpoint_written else
                "stopped outside training; the checkpoints on disk are unchanged")
        super().__init__(f"stopped by {signal.Signals(signum).name}; {what}")
        self.exit_code = 128 + signum


class _Signals:
    """SIGTERM/SIGINT handling for the whole run. Inside `deferred()` (the training loop)
    a signal is recorded, and the loop checkpoints and stops after the current step;
    elsewhere it raises StopRequested at once, so that the run directory's lock is
    released on the way out."""

    def __init__(self):
        self.signum = 0
        self._defer = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        if not self._defer:
            raise StopRequested(signum, checkpoint_written=False)

    @contextlib.contextmanager
    def deferred(self):
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _trim(x, n):
    return x[:n] if n else x


def _fingerprint(*arrays) -> str:
    """Shapes, labels and a strided sample of the pixels: cheap, and any two data sets a
    user could mix up differ in it."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array.reshape(len(array), -1)[::97]).tobytes())
    return digest.hexdigest()[:16]


def _split_holdout(x, y, holdout: int):
    """(train x, train y, (validation x, validation y)): the last `holdout` examples are
    kept for validation, never trained on."""
    if holdout == 0:
        return x, y, None
    if holdout >= len(x):
        raise config_lib.ConfigError(f"--source_holdout={holdout} leaves no source training "
                                     f"images (there are {len(x)}).")
    return x[:-holdout], y[:-holdout], (x[-holdout:], y[-holdout:])


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the loop trains and evaluates on, cut from the two domains."""
    train_x: np.ndarray            # labelled stream (source; target for target_only)
    train_y: np.ndarray
    target_x: np.ndarray           # unlabelled target stream
    test_sets: dict                # {"source": (x, y), "target": (x, y)}
    source_val: tuple | None       # held-out source (x, y), never trained on
    selection_images: np.ndarray   # unlabelled target images for the entropy criterion
    mean: np.ndarray               # per-channel training mean, subtracted from every input
    domains: tuple = ()            # the (source, target) Domains, for logs and summaries


def prepare_inputs(config: config_lib.Config, source, target) -> Inputs:
    train_x, train_y, source_val = _split_holdout(source.x_train, source.y_train,
                                                  config.source_holdout)
    if config.adaptation == "target_only":
        # The paper's upper bound: the labelled stream is the target domain.
        train_x, train_y = target.x_train, target.y_train
    train_x = _trim(train_x, config.max_train_examples)
    train_y = _trim(train_y, config.max_train_examples)
    target_x = _trim(target.x_train, config.max_train_examples)
    n_test = config.max_test_examples
    test_sets = {"source": (_trim(source.x_test, n_test), _trim(source.y_test, n_test)),
                 "target": (_trim(target.x_test, n_test), _trim(target.y_test, n_test))}
    return Inputs(train_x, train_y, target_x, test_sets, source_val,
                  target_x[:config.selection_images], channel_mean(train_x, target_x))


@dataclasses.dataclass
class Run:
    """What the steps of train_and_evaluate share."""
    config: config_lib.Config
    backend: distribute.Backend
    inputs: Inputs
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

    def train_seconds(self) -> float:
        return time.perf_counter() - self.started - self.eval_seconds


def train_and_evaluate(config: config_lib.Config, domains=None) -> dict:
    """Trains (or resumes) until config.train_steps; returns the final evaluation.
    `domains` (source, target) may be passed in to skip loading (tests)."""
    config, backend = start_backend(config)
    with contextlib.ExitStack() as stack:
        signals = stack.enter_context(_Signals())
        if backend.is_chief:
            stack.enter_context(claim_run_dir(config))
        inputs, fingerprint = load_inputs(config, backend, domains)
        run = build(config, backend, inputs, fingerprint)
        restore(run)
        step = backend.train(run.state.all_variables() + [run.state.step],
                             loop=lambda: train_loop(run, signals),
                             on_enter=lambda: _enter_loop(run))
        return finish(run, step)


def start_backend(config: config_lib.Config):
    """The backend, determinism, seed and the resolved precision: (config, backend)."""
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
        logging.info("%s", _describe_schedule(config))
    return config, backend


@contextlib.contextmanager
def claim_run_dir(config: config_lib.Config):
    """Chief only, before anything is read or written there: creates --model_dir, holds
    its lock for the run, refuses a resume whose flags change what is trained, removes
    what killed checkpoint writes left and repairs a damaged checkpoint index."""
    rundir.create(config.model_dir)
    with rundir.RunLock(config.model_dir):
        if checkpoints.on_disk(config.model_dir):
            _check_config_changes(config)
        checkpoints.clean_leftovers(config.model_dir)
        checkpoints.repair_index(config.model_dir)
        yield


def _check_config_changes(config: config_lib.Config) -> None:
    refused, allowed = rundir.config_changes(config.model_dir, config)
    if allowed:
        logging.info("resuming with changed flags that do not change what is trained: %s",
                     "; ".join(allowed))
    if not refused:
        return
    if config.allow_config_change:
        logging.warning("resuming with changed flags (--allow_config_change): %s; run.json "
                        "will record the new values", "; ".join(refused))
        return
    raise config_lib.ConfigError(
        f"{config.model_dir} holds a run trained with other flags; resuming would silently "
        "change what is trained:\n  " + "\n  ".join(refused) + "\nRerun with the recorded "
        "flags (run.json), use another --model_dir, or pass --allow_config_change to change "
        "them deliberately.")


def load_inputs(config: config_lib.Config, backend, domains):
    """(Inputs, fingerprint) of what this process trains and evaluates on."""
    # Elastic: no collective may run outside the elastic loop (a process that joins later
    # would meet the others' state broadcast there); the data cache is written atomically.
    source, target = domains or (load_domains(config) if config.elastic else
                                 backend.local_leader_first(lambda: load_domains(config)))
    inputs = prepare_inputs(config, source, target)
    # Precision is in it because --precision=auto follows each host's CPU.
    fingerprint = (f"data {_fingerprint(inputs.train_x, inputs.train_y, inputs.target_x)}, "
                   f"precision {config.precision}")
    if not config.elastic:
        # Distributed: elastic runs check on every (re-)entry instead (_enter_loop).
        backend.check_same_on_all_processes("training data and precision", fingerprint)
    if backend.is_chief:
        logging.info("source: %s (%d train); target: %s (%d train, labels used for evaluation "
                     "only)", source.description, len(inputs.train_x), target.description,
                     len(inputs.target_x))
    return dataclasses.replace(inputs, domains=(source, target)), fingerprint


def build(config: config_lib.Config, backend, inputs: Inputs, fingerprint: str) -> Run:
    with backend.scope():
        models = models_for(config)
        state = step_lib.create_state(models, config)
    return Run(config, backend, inputs, fingerprint, state, _make_manager(config, backend, state),
               make_evaluator(models))


def _make_manager(config, backend, state) -> tf.train.CheckpointManager:
    return checkpoints.make_manager(state.trackables(), backend.checkpoint_dir(config.model_dir),
                                    config.keep_checkpoints)


def restore(run: Run) -> None:
    """Restores the newest readable checkpoint, then (chief) records run.json, opens the
    summaries and redoes an evaluation that a kill interrupted."""
    config, backend = run.config, run.backend
    restored = checkpoints.restore_latest(run.manager)
    run.start_step = int(run.state.step.numpy())
    if run.start_step > config.train_steps:
        raise config_lib.ConfigError(
            f"{config.model_dir} is at step {run.start_step}, past --train_steps="
            f"{config.train_steps}: raise --train_steps or use another --model_dir.")
    if backend.is_chief:
        logging.info("%s at step %d", f"resumed from {restored}" if restored else "fresh run",
                     run.start_step)
        # Only now: a refused or failed resume leaves the recorded run intact.
        # evaluate.py rebuilds the models and the preprocessing from this record.
        rundir.write_run_record(config.model_dir, config, run.inputs.mean,
                                derived_schedule(config, backend))
    run.summaries = Summaries(config.model_dir, backend.is_chief, run.start_step)
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


def _eval_due(config: config_lib.Config, step: int) -> bool:
    return bool(config.eval_every) and step % config.eval_every == 0 and step != config.train_steps


def _enter_loop(run: Run) -> None:
    """Distributed: the elastic reset hook, run on every (re-)entry of the training loop
    after the processes have synchronised, with the new number of processes."""
    config, backend = run.config, run.backend
    backend.check_same_on_all_processes("training data and precision", run.fingerprint)
    # The chief may have changed: only it writes summaries and checkpoints.
    if run.summaries.enabled != backend.is_chief:
        run.summaries.flush()
        run.summaries = Summaries(config.model_dir, backend.is_chief)
    run.manager = _make_manager(config, backend, run.state)
    logging.info("elastic: process %d of %d, training from step %d (%s)", backend.pipeline_index,
                 backend.num_pipelines, int(run.state.step.numpy()),
                 backend.describe(config.batch_size))


def train_loop(run: Run, signals: _Signals) -> int:
    """Trains from state.step to config.train_steps; returns the last step. Under
    --elastic it runs again after every reset, from the last commit: the input re-enters
    its stream at that step, sharded anew."""
    config, backend, inputs = run.config, run.backend, run.inputs
    step = int(run.state.step.numpy())
    if not run.start_synced:
        run.start_step, run.start_synced = step, True
    per_replica = backend.per_replica_batch(config.batch_size)
    # Distributed: each input pipeline reads its own shard of the stream.
    iterator = backend.distribute(lambda index, count, replicas: train_dataset(
        inputs.train_x, inputs.train_y, inputs.target_x, mean=inputs.mean,
        per_replica_batch=per_replica, seed=config.seed, replicas_per_pipeline=replicas,
        pipeline_index=index, num_pipelines=count, start_step=step,
        source_augment=config.source_augment))
    train_step = step_lib.make_train_step(run.state, config, backend)
    window = _Window()
    with signals.deferred():
        while step < config.train_steps:
            sums, lam, stop_votes = train_step(iterator, tf.constant(float(signals.signum != 0)))
            step += 1
            sums = sums.numpy()
            if not np.all(np.isfinite(sums[:2])):
                raise NonFiniteLossError(
                    f"non-finite loss at step {step}: label loss sum {sums[0]}, domain loss "
                    f"sum {sums[1]}; {_kept(run)}. Lower --learning_rate or check the input.")
            window.add(sums)
            if float(stop_votes) > 0:
                _stop(run, step, signals.signum or signal.SIGTERM)
            if step % config.log_every == 0 or step == config.train_steps:
                _check_weights(run, step)
                _log_window(run, window, step, float(lam))
            if step % config.checkpoint_every == 0:
                save(run, step)
            if _eval_due(config, step):
                run_eval(run, step)
            backend.after_step(step)
    return step


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


class _Window:
    """Metric sums and timing since the last progress line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums = np.zeros(len(step_lib.METRIC_SUMS))
        self.steps, self.start = 0, time.perf_counter()

    def add(self, sums) -> None:
        self.sums += sums
        self.steps += 1


def _log_window(run: Run, window: _Window, step: int, lam: float) -> None:
    config = run.config
    elapsed = time.perf_counter() - window.start
    metrics = _window_metrics(window.sums, window.steps, config.batch_size)
    metrics.update(lambda_=lam, learning_rate=_learning_rate(run),
                   steps_per_sec=window.steps / elapsed,
                   examples_per_sec=window.steps * 2 * config.batch_size / elapsed)
    run.summaries.scalars("train", {k.rstrip("_"): v for k, v in metrics.items()}, step)
    if run.backend.is_chief:
        eta = (config.train_steps - step) / metrics["steps_per_sec"]
        logging.info("step %d/%d %s eta %s", step, config.train_steps, _fmt(metrics),
                     _duration(eta))
    window.reset()


def _learning_rate(run: Run) -> float:
    return float(run.state.optimizers[0].learning_rate.numpy())


def _kept(run: Run) -> str:
    return checkpoints.kept(run.manager.latest_checkpoint)


def _check_weights(run: Run, step: int) -> None:
    """Raises NonFiniteLossError if a model weight is NaN/Inf (a diverged update whose
    loss was still finite). Cheap (one pass over 0.2M numbers): run at every progress
    line and before every save and export, so no checkpoint holds a non-finite weight."""
    for model in run.state.models.groups:
        for variable in model.weights:
            value = keras.ops.convert_to_numpy(variable)
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                raise NonFiniteLossError(
                    f"non-finite weights at step {step} ({model.name}/{variable.path}); "
                    f"{_kept(run)}. Lower --learning_rate or check the input.")


def save(run: Run, step: int) -> None:
    _check_weights(run, step)
    if run.backend.saves_checkpoints:  # Distributed: who writes (see Backend)
        checkpoints.save(run.manager, step)


def run_eval(run: Run, step: int) -> dict:
    config = run.config
    eval_start, seconds = time.perf_counter(), run.train_seconds()
    inputs = run.inputs
    with step_lib.evaluation_weights(run.state):
        metrics = run.evaluate(inputs.test_sets, inputs.mean, config.eval_batch_size,
                               inputs.source_val, inputs.selection_images)
    run.summaries.scalars("eval", metrics, step)
    metrics["step"] = step
    if run.backend.is_chief:
        logging.info("eval step %d: %s", step, _fmt(metrics))
        # One line per evaluation: what the report's model-selection criteria read.
        schedule = {"lambda": float(step_lib.adaptation_factor(config, step)),
                    "learning_rate": _learning_rate(run), "train_seconds": seconds,
                    "progress": step / config.train_steps}
        rundir.append_eval(config.model_dir, {**metrics, **schedule})
    run.eval_seconds += time.perf_counter() - eval_start
    return metrics


def finish(run: Run, step: int) -> dict:
    """The final checkpoint, evaluation, export and metrics.json."""
    config = run.config
    latest = run.manager.latest_checkpoint
    if latest is None or not latest.endswith(f"-{step}"):
        save(run, step)
    seconds = run.train_seconds()
    metrics = run_eval(run, step)
    metrics["weights_digest"] = weights_digest(run.state.models)
    metrics["resumed_from_step"] = run.start_step
    # This process's share of the run (all of it unless resumed).
    metrics["train_seconds"] = seconds
    metrics["examples_per_sec"] = ((step - run.start_step) * 2 * config.batch_size
                                   / max(seconds, 1e-9))
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


def derived_schedule(config: config_lib.Config, backend) -> dict:
    """What the flags imply for this run on this many replicas (recorded in run.json)."""
    return {"train_steps": config.train_steps,
            "train_pairs": config.train_steps * config.batch_size,
            "warmup_steps": config.warmup_steps,
            "effective_ema_momentum": config.effective_ema_momentum,
            "effective_learning_rate": config.effective_learning_rate,
            "global_batch_per_domain": config.batch_size, "replicas": backend.num_replicas,
            "per_replica_batch_per_domain": backend.per_replica_batch(config.batch_size)}


def _describe_schedule(config: config_lib.Config) -> str:
    length = (f"--train_pairs={config.train_pairs} / --batch_size={config.batch_size}"
              if config.train_pairs else "--train_steps")
    lr = f"learning rate {config.learning_rate:g}"
    if config.lr_scaling != "none":
        lr += (f" scaled {config.lr_scaling} (global batch {config.batch_size} / "
               f"{config.lr_base_batch}) to {config.effective_learning_rate:g}")
    warmup = f", linear warm-up over {config.warmup_steps} steps" if config.warmup_steps else ""
    return f"{config.train_steps} steps ({length}); {lr}, {config.lr_schedule}{warmup}"


def weights_digest(models) -> str:
    """sha256 of every model weight: equal digests mean bit-identical models (ranks of
    one run, or a resumed run against an uninterrupted one)."""
    digest = hashlib.sha256()
    for model in models.groups:
        for variable in model.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()[:16]


def _window_metrics(sums: np.ndarray, steps: int, batch_size: int) -> dict:
    label_loss, domain_loss, label_correct, domain_correct = sums
    return {
        "label_loss": label_loss / (steps * batch_size),
        "domain_loss": domain_loss / (steps * 2 * batch_size),
        "source_accuracy": label_correct / (steps * batch_size),
        "domain_accuracy": domain_correct / (steps * 2 * batch_size),
    }


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k.rstrip('_')}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in metrics.items() if k not in ("step", "weights_digest"))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s"
