"""TensorBoard output and the progress lines, written by the chief only (other processes
get a no-op writer)."""

from __future__ import annotations

import math
import os
import socket
import time

import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import api as hparams_api

SPLITS = ("train", "eval")


class Summaries:
    def __init__(self, model_dir: str, enabled: bool, resumed_step: int = 0):
        """resumed_step > 0: the run restarts after that step, and whatever a killed run
        logged after it is marked stale (see mark_restart)."""
        self.enabled = enabled
        if enabled and resumed_step > 0:
            directories = [os.path.join(model_dir, split) for split in SPLITS]
            second = _second_after_existing_files(directories)
            for directory in directories:
                mark_restart(directory, resumed_step + 1, second)
        if enabled:
            self.train = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
            self.eval = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))

    def scalars(self, split: str, values: dict, step: int) -> None:
        if not self.enabled:
            return
        writer = self.train if split == "train" else self.eval
        with writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def hparams(self, hparams: dict) -> None:
        if not self.enabled:
            return
        # The hparams plugin takes only bool, int, float and str values.
        clean = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
        with self.train.as_default():
            hparams_api.hparams(clean)

    def text(self, name: str, text: str) -> None:
        if not self.enabled:
            return
        with self.train.as_default(step=0):
            tf.summary.text(name, text)

    def image(self, name: str, image: np.ndarray, step: int = 0) -> None:
        """image: uint8 [H, W, 3]."""
        if not self.enabled:
            return
        with self.train.as_default(step=step):
            tf.summary.image(name, image[None], step=step)

    def flush(self) -> None:
        if self.enabled:
            self.train.flush()
            self.eval.flush()


def _event_file_second(name: str) -> int | None:
    """The creation second in an event file's name: events.out.tfevents.<second>.<host>..."""
    parts = name.split(".")
    if len(parts) > 4 and name.startswith("events.out.tfevents.") and parts[3].isdigit():
        return int(parts[3])
    return None


def _second_after_existing_files(directories, max_wait: float = 2.0) -> int:
    """Waits, if need be, until the wall-clock second is later than every existing event
    file's, and returns it. TensorBoard reads a run's files in name order, and names differ
    in the second first: a marker or writer created in the same second as the killed run's
    files could sort before them (the pid and writer counter that follow compare as text;
    CI saw the resumed run's steps 6-8 shown before the killed run's 1-8). The wait is at
    most `max_wait` seconds, once per resume; a clock that runs behind the one that wrote the
    files by more than that (another host on a shared filesystem) is not waited out."""
    seconds = [_event_file_second(name)
               for directory in directories if os.path.isdir(directory)
               for name in os.listdir(directory)]
    newest = max((s for s in seconds if s is not None), default=-1)
    wait = newest + 1 - time.time()
    if 0 < wait <= max_wait:
        time.sleep(wait)
    return int(time.time())


def mark_restart(directory: str, first_step: int, second: int) -> None:
    """Writes TensorBoard's restart marker (a SessionLog START event at `first_step`) in an
    event file of its own, named to sort after the killed run's files (a later `second`,
    see _second_after_existing_files) and before the new writer's (the same or a later
    second, then '0' before the pid). TensorBoard then drops every
    event at or after `first_step` read before the marker: the steps a killed run logged
    after its last checkpoint are shown once, as the resumed run logs them.

    The START event is written twice: TensorBoard's server takes the first START it
    sees in a run for the run's beginning and purges only on a later one (TF 2 writers
    write none); a second purge at the same step changes nothing."""
    if not os.path.isdir(directory):
        return
    name = f"events.out.tfevents.{second:010d}.{socket.gethostname()}.0restart.v2"
    start = event_pb2.Event(wall_time=time.time(), step=first_step,
                            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
    with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
        writer.write(event_pb2.Event(wall_time=time.time(),
                                     file_version="brain.Event:2").SerializeToString())
        writer.write(start.SerializeToString())
        writer.write(start.SerializeToString())


class Window:
    """Named metric sums and counts since the last progress line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums, self.counts = {}, {}
        self.steps, self.start = 0, time.perf_counter()

    def add(self, metrics: dict) -> None:
        """metrics: {name: (sum, count)} of one step over all replicas."""
        for name, (total, count) in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(total)
            self.counts[name] = self.counts.get(name, 0.0) + float(count)
        self.steps += 1

    def means(self) -> dict:
        return {name: self.sums[name] / max(self.counts[name], 1.0) for name in self.sums}

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def format_metrics(metrics: dict) -> str:
    """name=value pairs of a progress or evaluation line."""
    return " ".join(f"{k.rstrip('_')}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in metrics.items() if k not in ("step", "weights_digest"))


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s"


def progress_line(summaries: Summaries, window: Window, step: int, config, lam: float,
                  learning_rate: float, is_chief: bool) -> None:
    """The window's means, lambda, learning rate and speed: to TensorBoard and (chief) to
    the log with the time left; then a new window."""
    elapsed = window.seconds()
    metrics = window.means()
    metrics.update(lambda_=lam, learning_rate=learning_rate,
                   steps_per_sec=window.steps / elapsed,
                   examples_per_sec=window.steps * 2 * config.batch_size / elapsed)
    summaries.scalars("train", {k.rstrip("_"): v for k, v in metrics.items()}, step)
    if is_chief:
        eta = (config.train_steps - step) / metrics["steps_per_sec"]
        logging.info("step %d/%d %s eta %s", step, config.train_steps, format_metrics(metrics),
                     duration(eta))
    window.reset()
