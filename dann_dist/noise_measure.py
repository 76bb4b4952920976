"""The gradient noise scale of a run, measured at its evaluations (dann_dist/noise_scale.py
has the estimator).

Each measured batch is split in two halves on every replica; the half-batch gradients
of the mean loss are the small batch (b_small = per-replica batch / 2) and their mean
over all halves of all replicas, the all-reduced global-batch gradient, the large one
(b_big = global batch). Two paths are measured apart: the classification path (the
"classification" loss term, all variables) and the reversed domain gradient (the
"domain" term, the extractor's variables only: what the adversary feeds the features).
Nothing here trains: the batches come from an iterator of their own, and BatchNorm
statistics that the forward passes move are put back.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dann_dist import noise_scale, schedules
from dann_dist.methods import base, registry

# path name -> (loss term, the model groups whose variables the gradient is taken of)
PATHS = {"classification": ("classification", None), "domain": ("domain", ("extractor",))}


def _sum_across_replicas(backend, tensors: list) -> list:
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        return context.all_reduce(tf.distribute.ReduceOp.SUM, tensors)
    return backend.all_reduce_gradients(tensors)  # identity, or Horovod's sum over ranks


def make_measure(state, config, backend):
    """Returns a tf.function(iterator, lam) -> [small_sq_sum, big_sq] per path, summed
    over replicas: small_sq_sum is the sum over every half of |G_half|^2."""
    method = registry.get(config.adaptation)
    half = backend.per_replica_batch(config.batch_size) // 2
    halves = 2 * backend.num_replicas
    reversal_scale = schedules.adversary_scale(config)
    models = state.models
    variables = {path: [v for name, m in models.items() if groups is None or name in groups
                        for v in m.trainable_variables]
                 for path, (_, groups) in PATHS.items()}

    def replica_fn(batch, lam, step):
        grads = {path: [] for path in PATHS}
        for i in range(2):
            part = {k: v[i * half:(i + 1) * half] for k, v in batch.items()}
            ctx = base.StepContext(config, half, lam, lam * reversal_scale, step)
            with tf.GradientTape(persistent=True) as tape:
                terms = method.objective(models, part, ctx).terms
            for path, (term, _) in PATHS.items():
                found = tape.gradient(terms[term], variables[path])
                grads[path].append([tf.zeros_like(v) if g is None else g
                                    for g, v in zip(found, variables[path])])
            del tape
        out = []
        for path in PATHS:
            small = tf.add_n([noise_scale.squared_norms([g], g)[0] for g in grads[path]])
            summed = _sum_across_replicas(backend, [a + b for a, b in zip(*grads[path])])
            big = noise_scale.squared_norms([summed], summed)[0] / float(halves) ** 2
            # Every replica holds the same big_sq: divided so that the sum over replicas
            # below gives it once.
            out += [small, big / backend.num_replicas]
        return tf.stack(out)

    @tf.function
    def measure(iterator, lam):
        totals = backend.run(replica_fn, (next(iterator), lam, tf.identity(state.step)))
        return backend.sum_over_replicas(totals)

    return measure, half, half * halves


def measure(state, config, backend, iterator, batches: int, cache: dict | None = None) -> dict:
    """{'noise_scale_<path>': B_simple} from `batches` batches of `iterator` (the small-
    and large-batch squared norms averaged over the batches before the estimate). `cache`
    keeps the traced function between evaluations of one run."""
    per_replica = backend.per_replica_batch(config.batch_size)
    if batches <= 0 or per_replica < 2:
        return {}
    cache = {} if cache is None else cache
    if "fn" not in cache:
        cache["fn"] = make_measure(state, config, backend)
    fn, b_small, b_big = cache["fn"]
    lam = registry.get(config.adaptation).adaptation_factor(config, state.step)
    saved = [(v, v.numpy()) for m in state.models.values() for v in m.non_trainable_variables]
    try:
        totals = np.mean([fn(iterator, lam).numpy() for _ in range(batches)], axis=0)
    finally:
        for variable, value in saved:
            variable.assign(value)
    halves = b_big // b_small
    out = {}
    for i, path in enumerate(PATHS):
        small_sq, big_sq = totals[2 * i] / halves, totals[2 * i + 1]
        estimate = noise_scale.two_batch_estimate(small_sq, big_sq, b_small, b_big)
        out[f"noise_scale_{path}"] = float(estimate.b_simple)
    return out
