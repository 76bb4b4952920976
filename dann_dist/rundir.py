"""The run directory contract: what dann_dist.train writes into --model_dir, read and
written here only.

  run.json            the config, the training pixel mean and the derived schedule
  metrics.json        the final evaluation (present once the run has finished)
  eval_history.jsonl  one line per evaluation (the report's label-free selection reads it)
  export/             the SavedModel of extractor + classifier
  ckpt-N.*, checkpoint, train/, eval/   checkpoints and TensorBoard events
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from dann_dist import atomic
from dann_dist.config import Config

RUN_RECORD = "run.json"
METRICS = "metrics.json"
EVAL_HISTORY = "eval_history.jsonl"
EXPORT_DIR = "export"


def path(model_dir: str, name: str) -> str:
    return os.path.join(model_dir, name)


def read_json(file_path: str) -> dict | None:
    """The parsed file, or None when it is missing or was cut short."""
    try:
        with open(file_path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(file_path: str, payload: dict) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    atomic.write_file(file_path, json.dumps(payload, indent=2, sort_keys=True))


def write_run_record(model_dir: str, config: Config, mean: np.ndarray, derived: dict) -> None:
    write_json(path(model_dir, RUN_RECORD),
               {"config": dataclasses.asdict(config), "channel_mean": mean.tolist(),
                "derived": derived})


def append_eval(model_dir: str, record: dict) -> None:
    with open(path(model_dir, EVAL_HISTORY), "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def write_metrics(model_dir: str, metrics: dict) -> None:
    write_json(path(model_dir, METRICS), metrics)


def load_run(model_dir: str) -> tuple[Config, np.ndarray]:
    """The config a run trained with and its training pixel mean (from run.json)."""
    record_path = path(model_dir, RUN_RECORD)
    if not os.path.exists(record_path):
        raise FileNotFoundError(f"{record_path} not found: --model_dir must be a directory "
                                "written by dann_dist.train.")
    with open(record_path) as f:
        record = json.load(f)
    known = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in record["config"].items() if k in known})
    return config, np.asarray(record["channel_mean"], np.float32)


def restore_run(model_dir: str, checkpoint: str = ""):
    """Rebuilds a run's models in the precision it trained with and restores a checkpoint
    (default: the newest readable one). Returns (config, channel mean, state, path)."""
    # Imported here, not at the top: reading a run's records (the report, selection)
    # must not pay for TensorFlow's start-up.
    from dann_dist import checkpoints, distribute, step as step_lib
    from dann_dist.models import build_models, precision_policy

    config, mean = load_run(model_dir)
    # Runs recorded before precision was resolved at start may say "auto".
    with precision_policy(distribute.resolve_precision(config.precision)[0]):
        models = build_models(config.classifier_head, config.discriminator_head)
    state = step_lib.create_state(models, config)
    manager = checkpoints.make_manager(state.trackables(), model_dir, keep=config.keep_checkpoints)
    if checkpoint:
        manager.checkpoint.restore(checkpoint).assert_existing_objects_matched()
        found = checkpoint
    else:
        found = checkpoints.restore_latest(manager)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {model_dir}: train first.")
    return config, mean, state, found
