"""The feature analysis: extractor features of held-out source and target test images,
their proxy A-distance per run, and the PCA panel of the lowest seed per adaptation."""

from __future__ import annotations

import json

import numpy as np
from absl import logging

from dann_dist import rundir
from dann_dist.report.feature_plots import feature_panels_png
from dann_dist.report.options import ANALYSED, NAMES, ReportError, ReportOptions
from dann_dist.report.proxy_a_distance import proxy_a_distance
from dann_dist.report.tables import data_config, summarise


def extract_features(model_dir: str, image_sets: dict, batch_size: int = 500) -> tuple[dict, int]:
    """Restores the newest checkpoint of a run as dann_dist.evaluate does (its precision,
    and the averaged weights it evaluated and exported) and returns ({name: extractor
    features [n, d]} for each uint8 image set, the checkpoint's step)."""
    # Imported here, not at the top: they start TensorFlow, which a report without the
    # feature analysis (--pad_examples=0) never needs.
    from dann_dist import step as step_lib
    from dann_dist.data.pipeline import to_model_input

    try:
        _, mean, state, _ = rundir.restore_run(model_dir)
    except (FileNotFoundError, rundir.RunRecordError) as err:
        raise ReportError(str(err)) from err
    features = {}
    with step_lib.evaluation_weights(state):
        for name, images in image_sets.items():
            chunks = [state.models["extractor"](
                          to_model_input(images[i:i + batch_size], mean), training=False)
                      for i in range(0, len(images), batch_size)]
            features[name] = np.concatenate([np.asarray(c, np.float32) for c in chunks])
    return features, int(state.step.numpy())


def load_analysis_domains(analysed: list[dict]):
    """(source, target) as the first analysed run was trained on."""
    # Imported here, not at the top: only the feature analysis loads data.
    from dann_dist.data import DataError
    from dann_dist.data.load import load_domains

    data_configs = {json.dumps(data_config(r["result"]["config"]), sort_keys=True)
                    for r in analysed}
    if len(data_configs) > 1:
        logging.warning("the runs were trained with different data flags; the feature "
                        "analysis uses those of %s", analysed[0]["model_dir"])
    try:
        return load_domains(rundir.load_run(analysed[0]["model_dir"])[0])
    except DataError as err:
        raise ReportError(f"loading the data for the feature analysis: {err}") from err


def _analyse_run(run: dict, adaptation: str, seed: int, images: dict) -> tuple[dict, dict]:
    """(PAD result of one run, its feature panel)."""
    features, step = extract_features(run["model_dir"], images)
    result = proxy_a_distance(features["source"], features["target"], seed=seed)
    result.update(seed=seed, step=step)
    logging.info("proxy A-distance %s seed %d (step %d): %.3f", adaptation, seed, step,
                 result["pad"])
    panel = {"adaptation": adaptation, "source": features["source"],
             "target": features["target"],
             "title": f"{NAMES[adaptation]}, seed {seed}, step {step}: PAD {result['pad']:.2f}"}
    return result, panel


def analyse_features(options: ReportOptions, runs: dict, domains) -> tuple[dict, bytes | None]:
    """Proxy A-distance of every analysed run and the feature plot of the lowest seed of
    each analysed adaptation. domains: (source, target) Domain records."""
    source, target = domains
    n = options.pad_examples
    images = {"source": source.x_test[:n], "target": target.x_test[:n]}
    pad, panels = {}, []
    for adaptation in ANALYSED:
        per_seed = []
        for (a, seed), run in sorted(runs.items()):
            if a != adaptation or not run["result"]:
                continue
            result, panel = _analyse_run(run, adaptation, seed, images)
            per_seed.append(result)
            if not panels or panels[-1]["adaptation"] != adaptation:
                panels.append(panel)
        if per_seed:
            pad[adaptation] = {**summarise([r["pad"] for r in per_seed]), "per_seed": per_seed}
    return ({"examples_per_domain": {k: int(len(v)) for k, v in images.items()},
             "by_adaptation": pad},
            feature_panels_png(panels) if panels else None)
