"""Our configurations to time: `origin`, the origin script's architecture and objective
(the like-for-like comparison with the baseline), `paper`, the package default, and
`strong`, configs/mnist_mnistm_strong.cfg's additions (what the strong recipe costs).
No TensorFlow here: the bench's flags list these names."""

from __future__ import annotations

from dann_dist import config as config_lib

CONFIG_NAMES = ("origin", "paper", "strong")
# The origin script's choices (configs/origin.cfg): the architecture and objective the
# baseline has, so `origin` is the like-for-like comparison.
ORIGIN_OVERRIDES = dict(classifier_head="bn", discriminator_head="bn",
                        adversarial_loss="flipped_labels", optimizer="adam",
                        learning_rate=7e-5, lr_schedule="constant")


# configs/mnist_mnistm_strong.cfg over the paper config (tests/test_bench_cli.py checks it).
STRONG_OVERRIDES = dict(input_norm="image", extractor_bn=True, source_augment="colour",
                        target_entropy_weight=0.1)


def make_config(name: str, settings: dict) -> config_lib.Config:
    """The validated Config of configuration `name` over the common `settings`."""
    overrides = dict(settings)
    if name == "origin":
        overrides.update(ORIGIN_OVERRIDES)
    elif name == "strong":
        overrides.update(STRONG_OVERRIDES)
    return config_lib.validate(config_lib.Config(**overrides))
