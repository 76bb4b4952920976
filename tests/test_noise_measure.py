"""The gradient noise scale measured at evaluations: recorded per evaluation, and
invisible to training (its batches come from a stream of their own, and the BatchNorm
statistics its forward passes move are put back)."""

import json
import math

import pytest

from dann_dist import rundir, trainer

from synthetic import tiny_config


@pytest.mark.parametrize("extractor_bn", [False, True])
def test_measuring_the_noise_scale_leaves_training_bit_identical(tmp_path, domains, extractor_bn):
    common = dict(train_steps=8, eval_every=4, checkpoint_every=4, export=False,
                  extractor_bn=extractor_bn, deterministic=True)
    off = trainer.train_and_evaluate(tiny_config(tmp_path / "off", noise_scale_batches=0,
                                                 **common), domains=domains)
    on = trainer.train_and_evaluate(tiny_config(tmp_path / "on", noise_scale_batches=2,
                                                **common), domains=domains)
    assert on["weights_digest"] == off["weights_digest"]
    history = [json.loads(line) for line in open(tmp_path / "on" / rundir.EVAL_HISTORY)]
    assert [h["step"] for h in history] == [4, 8]
    for line in history:
        for path in ("classification", "domain"):
            value = line[f"noise_scale_{path}"]
            # A noisy estimate may have |G|^2 <= 0 (NaN: no scale), never +-inf.
            assert isinstance(value, float) and not math.isinf(value)
    assert any(math.isfinite(h["noise_scale_classification"]) for h in history)
    assert "noise_scale_classification" not in open(
        tmp_path / "off" / rundir.EVAL_HISTORY).read()
