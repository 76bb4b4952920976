"""Tiny synthetic domains that a DANN can learn in a few dozen steps.

Source: a class-specific random stroke template plus noise, gray. Target: the same
templates blended into coloured backgrounds (an MNIST-M-like shift). Labels of both
follow the templates, so source-trained features transfer partially."""

from __future__ import annotations

import contextlib

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



SYNTHETIC_PAIR = "synthetic_tiny"


def synthetic_pair(name=SYNTHETIC_PAIR, size=16, num_classes=4, n_train=64, n_test=32, seed=0):
    """A dataset pair that is not MNIST-sized: gray size x size strokes of num_classes
    classes as the source, the same strokes on coloured backgrounds as the target. Its
    loaders ignore the data options (nothing touches the disk)."""
    from dann_dist.data.domain import Domain
    from dann_dist.data.pairs import Pair

    templates = np.random.default_rng(1234).random((num_classes, size, size)) > 0.7

    def split(n, rng, colour):
        y = np.arange(n) % num_classes  # every class present, in every split
        if colour:
            x = np.abs(rng.integers(0, 256, (n, 1, 1, 3)) - templates[y][..., None] * 255)
        else:
            x = templates[y] * 200 + rng.normal(0, 20, (n, size, size))
        return np.clip(x, 0, 255).astype(np.uint8).reshape(n, size, size, -1), y.astype(np.int64)

    def domain(domain_name, colour, offset):
        rng = np.random.default_rng(seed + offset)
        return Domain(domain_name, f"synthetic {size}x{size} test domain",
                      *split(n_train, rng, colour), *split(n_test, rng, colour),
                      num_classes=num_classes)

    return Pair(name=name, description=f"synthetic {size}x{size}x3 pair of {num_classes} classes",
                load_source=lambda options: domain(f"{name}_source", False, 0),
                load_target=lambda options, source: domain(f"{name}_target", True, 1),
                image_shape=(size, size, 3), num_classes=num_classes,
                paper_target_accuracy={"source_only": 0.5, "dann": 0.75, "target_only": 1.0},
                paper="none: a test pair")


@contextlib.contextmanager
def registered_synthetic_pair(**kwargs):
    """Registers synthetic_pair(**kwargs) for a with-block; a run or load_domains given
    --pair=<its name> gets it."""
    from dann_dist.data import pairs

    with pairs.registered(synthetic_pair(**kwargs)) as pair:
        yield pair


def tiny_config(model_dir, **overrides):
    from dann_dist.config import Config, validate

    base = dict(model_dir=str(model_dir), train_steps=20, batch_size=16, log_every=10,
                eval_every=0, checkpoint_every=10, eval_batch_size=64, strategy="single",
                source_holdout=32, selection_images=64,
                # The noise-scale measurement has tests of its own (test_noise_measure, the
                # Horovod equivalence test); elsewhere it only costs time.
                noise_scale_batches=0,
                # Pinned so that results do not depend on the test machine's CPU (auto would
                # pick bfloat16 where the CPU has it); the auto choice has its own tests.
                precision="float32")
    base.update(overrides)
    return validate(Config(**base))


def assert_group_gradients(grads, tape, models, extractor_loss, classifier_loss,
                           discriminator_loss):
    """The step's flat gradients equal, group by group, the gradients of the loss each
    network descends, taken from an independent `tape` (persistent)."""
    import numpy as np

    expected = []
    for name, loss in (("extractor", extractor_loss), ("classifier", classifier_loss),
                       ("discriminator", discriminator_loss)):
        expected += tape.gradient(loss, models[name].trainable_variables)
    assert len(grads) == len(expected)
    for ours, ref in zip(grads, expected):
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-4, atol=1e-6)

