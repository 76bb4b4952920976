"""What a run keeps while it trains and what it writes: checkpoints, evaluations (to
TensorBoard and eval_history.jsonl), progress lines, the final metrics and the export,
written by the chief only. The trainer (dann_dist/trainer.py) calls these as its steps.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import tensorflow as tf
from absl import logging

from dann_dist import checkpoints, distribute, lease, noise_measure, rundir, stopping
from dann_dist import config as config_lib
from dann_dist import inputs as inputs_lib
from dann_dist import step as step_lib
from dann_dist.methods import registry
from dann_dist.summaries import Summaries, Window, format_metrics, progress_line


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


def finished_before(run: Run) -> bool:
    """The run was complete before this invocation: its step is the last and its final
    metrics are on disk. Rerunning it then changes nothing on disk. One process only:
    under tf.distribute every process must take part in the final save, and a worker
    cannot tell from its host what the chief sees."""
    return (run.backend.num_pipelines == 1 and run.start_step == run.config.train_steps
            and rundir.read_json(rundir.path(run.config.model_dir, rundir.METRICS)) is not None)


def eval_due(config: config_lib.Config, step: int) -> bool:
    return bool(config.eval_every) and step % config.eval_every == 0 and step != config.train_steps


def renew_lease(run: Run, force: bool = False) -> None:
    """Chief: keeps the run directory's lease fresh (one clock read unless it is due)."""
    if run.lock is not None:
        run.lock.renew(force=force)


def log_window(run: Run, window: Window, step: int, lam: float) -> None:
    progress_line(run.summaries, window, step, run.config, lam, learning_rate(run),
                  run.backend.is_chief)
    phases = registry.get(run.config.adaptation).phases(run.config)
    if len(phases) > 1:  # which phase TensorBoard's curves are in: 0, 1, ...
        index = next(i for i, (_, first, end) in enumerate(phases) if first < step <= end)
        run.summaries.scalars("train", {"phase": float(index)}, step)


def learning_rate(run: Run) -> float:
    return float(run.state.optimizers["extractor"].learning_rate.numpy())


def kept(run: Run) -> str:
    return checkpoints.kept(run.manager.latest_checkpoint)


def check_weights(run: Run, step: int) -> None:
    stopping.check_weights(run.state.models, step, kept(run))


def save(run: Run, step: int) -> None:
    check_weights(run, step)
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
    renew_lease(run)
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
        method = registry.get(config.adaptation)
        # The phase whose steps led here (DIRT-T: "vada" until its last step, then "refine").
        schedule = {"phase": method.phase_at(config, max(step - 1, 0))[0],
                    "lambda": float(step_lib.adaptation_factor(config, step)),
                    "learning_rate": learning_rate(run), "train_seconds": seconds,
                    "progress": step / config.train_steps}
        rundir.append_eval(config.model_dir, {**metrics, **schedule})
    run.eval_seconds += time.perf_counter() - eval_start
    return metrics


def finish(run: Run, step: int) -> dict:
    """The final checkpoint, evaluation, export and metrics.json; for a run that was
    already complete, the recorded metrics, with nothing written."""
    config = run.config
    if finished_before(run):
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
    renew_lease(run)
    if run.backend.is_chief:
        if config.export:
            with step_lib.evaluation_weights(run.state):
                check_weights(run, step)
                path = checkpoints.export(run.state.models, run.inputs.mean,
                                          rundir.path(config.model_dir, rundir.EXPORT_DIR),
                                          run.manager.latest_checkpoint)
            logging.info("exported extractor+classifier to %s", path)
        rundir.write_metrics(config.model_dir, metrics)
    run.summaries.flush()
    return metrics
