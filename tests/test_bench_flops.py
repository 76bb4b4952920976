"""FLOPs per train step counted from the layers (dann_dist.bench.ours)."""

from __future__ import annotations

from dann_dist.bench.ours import analytic_flops
from dann_dist.config import Config
from dann_dist.models import models_for


def test_analytic_flops_count_the_layers():
    # Paper heads: conv 5x5x3->32 on 24x24, conv 5x5x32->48 on 8x8, dense 768-100-100-10,
    # dense 768-100-1; forward, weight gradient and input gradient (none for conv 1).
    conv1, conv2 = 24 * 24 * 32 * 75, 8 * 8 * 48 * 800
    classifier, discriminator = 768 * 100 + 100 * 100 + 100 * 10, 768 * 100 + 100
    batch = 4
    expected = 2 * (2 * batch * (3 * (conv1 + conv2) - conv1)
                    + batch * 3 * classifier + 2 * batch * 3 * discriminator)
    flops = analytic_flops(models_for(Config(model_dir="unused")), batch)
    assert flops["train_step"] == expected
    assert flops["forward"] == 2 * (2 * batch * (conv1 + conv2) + batch * classifier
                                    + 2 * batch * discriminator)
