"""train_and_evaluate(config): data -> models -> the train step on a backend ->
summaries, checkpoints and the export, written by the chief only."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from dann_dist import checkpoints, config as config_lib, distribute, rundir, step as step_lib
from dann_dist.data import sample_grid
from dann_dist.data.load import load_domains
from dann_dist.data.pipeline import channel_mean, train_dataset
from dann_dist.evaluation import make_evaluator
from dann_dist.models import build_models
from dann_dist.summaries import Summaries


class NonFiniteLossError(RuntimeError):
    pass


class StopRequested(Exception):
    """A signal asked the run to stop; a checkpoint has been written."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


class _SignalFlag:
    """Records SIGTERM/SIGINT instead of dying mid-step; the loop checkpoints and exits."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

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


def prepare_inputs(config: config_lib.Config, source, target) -> Inputs:
    train_x, train_y, source_val = _split_holdout(source.x_train, source.y_train, config.source_holdout)
    if config.adaptation == "target_only":
        # The paper's upper bound: the labelled stream is the target domain.
        train_x, train_y = target.x_train, target.y_train
    train_x, train_y = _trim(train_x, config.max_train_examples), _trim(train_y, config.max_train_examples)
    target_x = _trim(target.x_train, config.max_train_examples)
    n_test = config.max_test_examples
    test_sets = {"source": (_trim(source.x_test, n_test), _trim(source.y_test, n_test)),
                 "target": (_trim(target.x_test, n_test), _trim(target.y_test, n_test))}
    return Inputs(train_x, train_y, target_x, test_sets, source_val,
                  target_x[:config.selection_images], channel_mean(train_x, target_x))


def train_and_evaluate(config: config_lib.Config, domains=None) -> dict:
    """Trains (or resumes) until config.train_steps; returns the final evaluation.
    `domains` (source, target) may be passed in to skip loading (tests)."""
    backend = distribute.make_backend(config)
    elastic = config.elastic
    if elastic and not isinstance(backend, distribute.Horovod):
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

    # Elastic: no collective may run outside the elastic loop (a process that joins later
    # would meet the others' state broadcast there); the data cache is written atomically.
    source, target = domains or (load_domains(config) if elastic else
                                 backend.local_leader_first(lambda: load_domains(config)))
    inputs = prepare_inputs(config, source, target)
    train_x, train_y, target_x, mean = inputs.train_x, inputs.train_y, inputs.target_x, inputs.mean
    test_sets, source_val, selection_images = inputs.test_sets, inputs.source_val, inputs.selection_images
    # Precision is in it because --precision=auto follows each host's CPU.
    fingerprint = f"data {_fingerprint(train_x, train_y, target_x)}, precision {config.precision}"
    if not elastic:
        backend.check_same_on_all_processes("training data and precision", fingerprint)
    if backend.is_chief:
        os.makedirs(config.model_dir, exist_ok=True)
        # evaluate.py rebuilds the models and the preprocessing from this record.
        rundir.write_run_record(config.model_dir, config, mean, derived_schedule(config, backend))
        logging.info("source: %s (%d train); target: %s (%d train, labels used for evaluation only)",
                     source.description, len(train_x), target.description, len(target_x))

    with backend.scope():
        models = build_models(config.classifier_head, config.discriminator_head, config.sync_batchnorm)
        state = step_lib.create_state(models, config)
    manager = checkpoints.make_manager(state.trackables(), backend.checkpoint_dir(config.model_dir),
                                       config.keep_checkpoints)
    restored = checkpoints.restore_latest(manager)
    elastic_state = None
    if elastic:
        # Its sync, on entering the loop, gives every process rank 0's state.
        elastic_state = backend.elastic_state(state.all_variables() + [state.step])
    else:
        backend.broadcast_initial_state(state.all_variables() + [state.step])
    start_step = int(state.step.numpy())
    if backend.is_chief:
        logging.info("%s at step %d", f"resumed from {restored}" if restored else "fresh run", start_step)

    summaries = Summaries(config.model_dir, backend.is_chief)
    if start_step == 0:
        summaries.hparams(config_lib.to_dict(config))
        summaries.text("data", f"source: {source.description}\n\ntarget: {target.description}")
        summaries.image("input_samples/source_top_target_bottom", sample_grid.grid([source, target]))

    evaluate = make_evaluator(models)
    # Training time excludes evaluations, so images/s and time-to-accuracy compare runs
    # that evaluate at different intervals (the scaling study's rows).
    clock = {"start": time.perf_counter(), "eval": 0.0}

    def train_seconds() -> float:
        return time.perf_counter() - clock["start"] - clock["eval"]

    def save(step: int):
        if backend.saves_checkpoints:
            manager.save(checkpoint_number=step)

    def run_eval(step: int) -> dict:
        eval_start = time.perf_counter()
        seconds = train_seconds()
        with step_lib.evaluation_weights(state):
            metrics = evaluate(test_sets, mean, config.eval_batch_size, source_val, selection_images)
        summaries.scalars("eval", metrics, step)
        metrics["step"] = step
        if backend.is_chief:
            logging.info("eval step %d: %s", step, _fmt(metrics))
            # One line per evaluation: what the report's model-selection criteria read.
            p = step / config.train_steps
            schedule = {"lambda": float(step_lib.adaptation_factor(config, step)),
                        "learning_rate": float(state.optimizers[0].learning_rate.numpy())}
            schedule["train_seconds"] = seconds
            rundir.append_eval(config.model_dir, {**metrics, **schedule, "progress": p})
        clock["eval"] += time.perf_counter() - eval_start
        return metrics

    def train_loop() -> int:
        """Trains from state.step to config.train_steps; returns the last step. Under
        --elastic it runs again after every reset, from the last commit, with the new
        number of processes: the input re-enters its stream at that step, sharded anew."""
        nonlocal manager, summaries
        step = int(state.step.numpy())
        if elastic:
            backend.check_same_on_all_processes("training data and precision", fingerprint)
            # The chief may have changed: only it writes summaries and checkpoints.
            if summaries.enabled != backend.is_chief:
                summaries.flush()
                summaries = Summaries(config.model_dir, backend.is_chief)
            manager = checkpoints.make_manager(state.trackables(), backend.checkpoint_dir(config.model_dir),
                                               config.keep_checkpoints)
            logging.info("elastic: process %d of %d, training from step %d (%s)", backend.pipeline_index,
                         backend.num_pipelines, step, backend.describe(config.batch_size))
        per_replica = backend.per_replica_batch(config.batch_size)
        iterator = backend.distribute(lambda index, count, replicas: train_dataset(
            train_x, train_y, target_x, mean=mean, per_replica_batch=per_replica, seed=config.seed,
            replicas_per_pipeline=replicas, pipeline_index=index, num_pipelines=count,
            start_step=step))
        train_step = step_lib.make_train_step(state, config, backend)
        window = np.zeros(len(step_lib.METRIC_SUMS))
        window_steps, window_start = 0, time.perf_counter()
        examples_per_step = 2 * config.batch_size
        with _SignalFlag() as signals:
            while step < config.train_steps:
                stop = tf.constant(float(signals.signum != 0))
                sums, lam, stop_votes = train_step(iterator, stop)
                step += 1
                sums = sums.numpy()
                if not np.all(np.isfinite(sums[:2])):
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step}: label loss sum {sums[0]}, domain loss sum "
                        f"{sums[1]}; the last good checkpoint in {config.model_dir} is kept. Lower "
                        "--learning_rate or check the input.")
                window += sums
                window_steps += 1
                if float(stop_votes) > 0:
                    # Every process logs before the chief saves and exits, so that a launcher
                    # that reaps the others on the first exit still shows where each stopped.
                    logging.warning("process %d: stop requested at step %d", backend.pipeline_index, step)
                    save(step)
                    if backend.is_chief:
                        logging.info("stop requested at step %d: checkpoint written, exiting", step)
                    summaries.flush()
                    raise StopRequested(signals.signum or signal.SIGTERM)
                if step % config.log_every == 0 or step == config.train_steps:
                    elapsed = time.perf_counter() - window_start
                    train_metrics = _window_metrics(window, window_steps, config.batch_size)
                    train_metrics.update(
                        lambda_=float(lam),
                        learning_rate=float(state.optimizers[0].learning_rate.numpy()),
                        steps_per_sec=window_steps / elapsed,
                        examples_per_sec=window_steps * examples_per_step / elapsed)
                    summaries.scalars("train", {k.rstrip("_"): v for k, v in train_metrics.items()}, step)
                    if backend.is_chief:
                        eta = (config.train_steps - step) / train_metrics["steps_per_sec"]
                        logging.info("step %d/%d %s eta %s", step, config.train_steps,
                                     _fmt(train_metrics), _duration(eta))
                    window[:] = 0
                    window_steps, window_start = 0, time.perf_counter()
                if step % config.checkpoint_every == 0:
                    save(step)
                if config.eval_every and step % config.eval_every == 0 and step != config.train_steps:
                    run_eval(step)
                if elastic and step % config.elastic_commit_every == 0:
                    # Every process commits at the same steps (commit is a collective).
                    elastic_state.commit()
        return step

    metrics = None
    step = backend.run_elastic(elastic_state, train_loop) if elastic else train_loop()

    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
        save(step)
    seconds = train_seconds()
    metrics = run_eval(step)
    metrics["weights_digest"] = weights_digest(models)
    metrics["resumed_from_step"] = start_step
    # This process's share of the run (all of it unless resumed).
    metrics["train_seconds"] = seconds
    metrics["examples_per_sec"] = (step - start_step) * 2 * config.batch_size / max(seconds, 1e-9)
    if backend.is_chief:
        if config.export:
            with step_lib.evaluation_weights(state):
                path = checkpoints.export(models, mean, rundir.path(config.model_dir, rundir.EXPORT_DIR))
            logging.info("exported extractor+classifier to %s", path)
        rundir.write_metrics(config.model_dir, metrics)
    summaries.flush()
    return metrics


def derived_schedule(config: config_lib.Config, backend) -> dict:
    """What the flags imply for this run on this many replicas (recorded in run.json)."""
    return {"train_steps": config.train_steps, "train_pairs": config.train_steps * config.batch_size,
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
