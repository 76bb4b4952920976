"""Tiny synthetic domains that a DANN can learn in a few dozen steps.

Source: a class-specific random stroke template plus noise, gray. Target: the same
templates blended into coloured backgrounds (an MNIST-M-like shift). Labels of both
follow the templates, so source-trained features transfer partially."""

from __future__ import annotations

import numpy as np


def _templates(rng):
    return (rng.random((10, 28, 28)) > 0.8).astype(np.float32)


def synthetic_domains(n_train=256, n_test=128, seed=0):
    from dann_dist.data.domain import Domain

    rng = np.random.default_rng(seed)
    templates = _templates(np.random.default_rng(1234))

    def gray(n):
        y = rng.integers(0, 10, n)
        x = templates[y] * 200 + rng.normal(0, 20, (n, 28, 28))
        return np.clip(x, 0, 255).astype(np.uint8)[..., None], y.astype(np.int64)

    def colour(n):
        y = rng.integers(0, 10, n)
        background = rng.integers(0, 256, (n, 1, 1, 3)) * np.ones((n, 28, 28, 3))
        digits = templates[y][..., None] * 255
        x = np.abs(background - digits) + rng.normal(0, 10, (n, 28, 28, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    sx, sy = gray(n_train)
    stx, sty = gray(n_test)
    tx, ty = colour(n_train)
    ttx, tty = colour(n_test)
    return (Domain("mnist", "synthetic gray test source", sx, sy, stx, sty),
            Domain("mnistm", "synthetic colour test target", tx, ty, ttx, tty))



def tiny_config(model_dir, **overrides):
    from dann_dist.config import Config, validate

    base = dict(model_dir=str(model_dir), train_steps=20, batch_size=16, log_every=10,
                eval_every=0, checkpoint_every=10, eval_batch_size=64, strategy="single",
                source_holdout=32, selection_images=64,
                # Pinned so that results do not depend on the test machine's CPU (auto would
                # pick bfloat16 where the CPU has it); the auto choice has its own tests.
                precision="float32")
    base.update(overrides)
    return validate(Config(**base))
