"""Our configurations to time, as the package's Config: `origin`, the origin script's
architecture and objective (the like-for-like comparison with the baseline), `paper`, the
package default, and `strong`, configs/mnist_mnistm_strong.cfg's additions (what the strong
recipe costs). The bench's one use of dann_dist.config, the choices of the flags it passes
through included. No TensorFlow here: the flags are checked before TensorFlow loads."""

from __future__ import annotations

import tempfile

from dann_dist.config import PRECISIONS, STRATEGIES, Config, ConfigError, validate

__all__ = ["CONFIG_NAMES", "PRECISIONS", "STRATEGIES", "Config", "ConfigError", "make_configs",
           "recorded_fields"]

CONFIG_NAMES = ("origin", "paper", "strong")
# The origin script's choices (configs/origin.cfg): the architecture and objective the
# baseline has, so `origin` is the like-for-like comparison.
ORIGIN_OVERRIDES = dict(classifier_head="bn", discriminator_head="bn",
                        adversarial_loss="flipped_labels", optimizer="adam",
                        learning_rate=7e-5, lr_schedule="constant")
# configs/mnist_mnistm_strong.cfg over the paper config (tests/test_config.py checks it).
STRONG_OVERRIDES = dict(input_norm="image", extractor_bn=True, source_augment="colour",
                        target_entropy_weight=0.1)
# The parts of each configuration recorded with its figures.
RECORDED_FIELDS = ("classifier_head", "discriminator_head", "adversarial_loss", "optimizer",
                   "precision", "jit_compile", "input_norm", "extractor_bn", "extractor_width",
                   "source_augment", "target_entropy_weight")


def make_config(name: str, settings: dict) -> Config:
    """The validated Config of configuration `name` over the common `settings`."""
    overrides = dict(settings)
    if name == "origin":
        overrides.update(ORIGIN_OVERRIDES)
    elif name == "strong":
        overrides.update(STRONG_OVERRIDES)
    return validate(Config(**overrides))


def make_configs(settings, precision: str) -> dict[str, Config]:
    """Our configurations named by --configs (`settings`: the bench's flag values), over a
    scratch model_dir (nothing is saved)."""
    common = dict(model_dir=tempfile.mkdtemp(prefix="dann_bench_"),
                  batch_size=settings.batch_size, strategy=settings.strategy,
                  precision=precision, jit_compile=settings.jit_compile,
                  eval_batch_size=settings.eval_batch_size, seed=settings.seed)
    return {name: make_config(name, common) for name in settings.configs}


def recorded_fields(config: Config) -> dict:
    """The parts of `config` recorded with its figures."""
    return {k: getattr(config, k) for k in RECORDED_FIELDS}
