"""What a run trains and evaluates on, cut from the dataset pair's two domains: the
labelled and unlabelled training streams, the test sets, the held-out source and the
unlabelled target images of the label-free criteria, and the pixel mean."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
from absl import logging

from dann_dist import config as config_lib
from dann_dist.data import pairs
from dann_dist.data.load import load_domains
from dann_dist.data.pipeline import channel_mean, train_dataset
from dann_dist.methods import registry


@dataclasses.dataclass(frozen=True)
class Inputs:
    train_x: np.ndarray            # labelled stream (source; target for target_only)
    train_y: np.ndarray
    target_x: np.ndarray           # unlabelled target stream
    test_sets: dict                # {"source": (x, y), "target": (x, y)}
    source_val: tuple | None       # held-out source (x, y), never trained on
    selection_images: np.ndarray   # unlabelled target images for the entropy criterion
    mean: np.ndarray               # per-channel training mean, subtracted from every input
    domains: tuple = ()            # the (source, target) Domains, for logs and summaries


def _trim(x, n):
    return x[:n] if n else x


def fingerprint(*arrays) -> str:
    """Shapes, labels and a strided sample of the pixels: cheap, and any two data sets a
    user could mix up differ in it."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array.reshape(len(array), -1)[::97]).tobytes())
    return digest.hexdigest()[:16]


def split_holdout(x, y, holdout: int):
    """(train x, train y, (validation x, validation y)): the last `holdout` examples are
    kept for validation, never trained on."""
    if holdout == 0:
        return x, y, None
    if holdout >= len(x):
        raise config_lib.ConfigError(f"--source_holdout={holdout} leaves no source training "
                                     f"images (there are {len(x)}).")
    return x[:-holdout], y[:-holdout], (x[-holdout:], y[-holdout:])


def prepare(config: config_lib.Config, source, target) -> Inputs:
    train_x, train_y, source_val = split_holdout(source.x_train, source.y_train,
                                                 config.source_holdout)
    if registry.get(config.adaptation).labelled_domain == "target":
        train_x, train_y = target.x_train, target.y_train
    train_x = _trim(train_x, config.max_train_examples)
    train_y = _trim(train_y, config.max_train_examples)
    target_x = _trim(target.x_train, config.max_train_examples)
    n_test = config.max_test_examples
    test_sets = {"source": (_trim(source.x_test, n_test), _trim(source.y_test, n_test)),
                 "target": (_trim(target.x_test, n_test), _trim(target.y_test, n_test))}
    return Inputs(train_x, train_y, target_x, test_sets, source_val,
                  target_x[:config.selection_images], channel_mean(train_x, target_x))


def load(config: config_lib.Config, backend, domains):
    """(Inputs, fingerprint) of what this process trains and evaluates on. `domains`
    (source, target) may be given instead of loading (tests)."""
    # Elastic: no collective may run outside the elastic loop (a process that joins later
    # would meet the others' state broadcast there); the data cache is written atomically.
    source, target = domains or (load_domains(config) if config.elastic else
                                 backend.local_leader_first(lambda: load_domains(config)))
    inputs = prepare(config, source, target)
    smallest = min(len(inputs.train_x), len(inputs.target_x))
    if config.batch_size > smallest:
        raise config_lib.ConfigError(
            f"--batch_size={config.batch_size} is larger than a training stream ("
            f"{len(inputs.train_x)} labelled, {len(inputs.target_x)} unlabelled target "
            "images): lower --batch_size, or --source_holdout, or raise --max_train_examples.")
    # Precision is in it because --precision=auto follows each host's CPU.
    digest = (f"data {fingerprint(inputs.train_x, inputs.train_y, inputs.target_x)}, "
              f"precision {config.precision}")
    if not config.elastic:
        # Distributed: elastic runs check on every (re-)entry instead (trainer._enter_loop).
        backend.check_same_on_all_processes("training data and precision", digest)
    if backend.is_chief:
        logging.info("source: %s (%d train); target: %s (%d train, labels used for evaluation "
                     "only)", source.description, len(inputs.train_x), target.description,
                     len(inputs.target_x))
    return dataclasses.replace(inputs, domains=(source, target)), digest


def iterator(inputs: Inputs, config: config_lib.Config, backend, start_step: int, seed: int):
    """The paired training stream from `start_step` on, as the backend feeds it."""
    per_replica = backend.per_replica_batch(config.batch_size)
    method = registry.get(config.adaptation)
    # The model's input shape where the method's VAT needs random directions.
    vat_shape = pairs.get(config.pair).image_shape if method.needs_vat_directions else None
    # Distributed: each input pipeline reads its own shard of the stream.
    return backend.distribute(lambda index, count, replicas: train_dataset(
        inputs.train_x, inputs.train_y, inputs.target_x, mean=inputs.mean,
        per_replica_batch=per_replica, seed=seed, replicas_per_pipeline=replicas,
        pipeline_index=index, num_pipelines=count, start_step=start_step,
        source_augment=config.source_augment, vat_shape=vat_shape))
