"""Config: the training budget, the scaling rules and flag validation (no training)."""

import dataclasses
import math

import numpy as np
import pytest
from absl import flags

from dann_dist import config as config_lib
from dann_dist import schedules
from dann_dist import step as step_lib
from dann_dist.config import Config, ConfigError, validate


def parse(*argv):
    """Config from the trainer's flags, as `python -m dann_dist.train argv` would build it."""
    if "train_pairs" not in flags.FLAGS:
        config_lib.define_flags()
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["train", *argv])
        return config_lib.from_flags(flags.FLAGS)
    finally:
        flags.FLAGS.unparse_flags()


def test_budget_sets_the_steps_from_the_global_batch(tmp_path):
    for batch, steps in ((64, 24000), (256, 6000), (1024, 1500), (1000, 1536)):
        config = parse(f"--model_dir={tmp_path}", "--train_pairs=1536000", f"--batch_size={batch}",
                       "--eval_every=0")
        assert config.train_steps == steps  # ceil: never fewer examples than asked for
        assert config.train_steps * batch >= 1536000 > (config.train_steps - 1) * batch


def test_the_paper_flagfile_trains_24000_steps_at_64_and_1500_at_1024(tmp_path):
    paper = parse("--flagfile=configs/mnist_mnistm.cfg", f"--model_dir={tmp_path}")
    assert (paper.train_steps, paper.batch_size) == (24000, 64)
    big = parse("--flagfile=configs/mnist_mnistm.cfg", f"--model_dir={tmp_path}",
                "--batch_size=1024", "--eval_every=500")
    assert big.train_steps == 1500


@pytest.mark.parametrize("argv, message", [
    (("--train_pairs=640", "--train_steps=10"), "both set the length"),
    (("--train_pairs=6400", "--batch_size=64", "--eval_every=200"), "fewer than one evaluation"),
    (("--train_pairs=-1",), "--train_pairs=-1"),
    (("--warmup_fraction=1.5",), "--warmup_fraction=1.5"),
    (("--warmup_fraction=1",), "--warmup_fraction=1.0"),
    (("--lr_scaling=cube",), "lr_scaling"),
])
def test_budget_and_warmup_errors_name_the_flags(tmp_path, argv, message):
    with pytest.raises((ConfigError, flags.Error), match=message.replace("(", r"\(")):
        parse(f"--model_dir={tmp_path}", *argv)


def test_flagfile_budget_can_be_switched_off_for_a_step_count(tmp_path):
    config = parse("--flagfile=configs/mnist_mnistm.cfg", f"--model_dir={tmp_path}",
                   "--train_pairs=0", "--train_steps=30")
    assert config.train_steps == 30


def test_a_config_whose_steps_disagree_with_its_budget_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="disagrees"):
        validate(Config(model_dir=str(tmp_path), train_pairs=640, batch_size=64, train_steps=11,
                        eval_every=0))


# Every float field, so that a new float flag is checked without editing this list.
@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Config)
                                  if f.type == "float"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_flag_must_be_finite(tmp_path, name, value):
    with pytest.raises(ConfigError, match=f"--{name}=.*finite"):
        validate(Config(model_dir=str(tmp_path), **{name: value}))


@pytest.mark.parametrize("name, value", [("learning_rate", 0.0), ("learning_rate", 11.0),
                                         ("momentum", 1.0), ("gamma", -1.0),
                                         ("lambda_max", -0.5), ("lr_beta", -1.0),
                                         ("extractor_width", 0.0), ("extractor_width", 9.0),
                                         ("target_entropy_weight", -0.1)])
def test_float_flags_out_of_range_are_refused(tmp_path, name, value):
    with pytest.raises(ConfigError, match=f"--{name}="):
        validate(Config(model_dir=str(tmp_path), **{name: value}))


@pytest.mark.parametrize("rule, batch, expected", [
    ("none", 1024, 0.01), ("linear", 1024, 0.16), ("sqrt", 1024, 0.04), ("sqrt", 256, 0.02),
    ("linear", 64, 0.01), ("sqrt", 64, 0.01)])
def test_learning_rate_scaling_rules(tmp_path, rule, batch, expected):
    config = Config(model_dir=str(tmp_path), lr_scaling=rule, batch_size=batch, learning_rate=0.01)
    assert config.effective_learning_rate == pytest.approx(expected)


def test_ema_scaling_keeps_the_average_over_the_same_examples(tmp_path):
    base = dict(model_dir=str(tmp_path), ema_momentum=0.999, ema_scaling="batch")
    assert Config(**base, batch_size=64).effective_ema_momentum == pytest.approx(0.999)
    big = Config(**base, batch_size=1024).effective_ema_momentum
    assert big == pytest.approx(0.999 ** 16)
    unscaled = Config(**{**base, "ema_scaling": "none"}, batch_size=1024)
    assert unscaled.effective_ema_momentum == 0.999


def test_warmup_ramps_linearly_then_follows_the_annealed_schedule():
    lr = schedules.AnnealedLearningRate(0.16, total_steps=1000, alpha=10.0, beta=0.75,
                                        warmup_steps=100)
    annealed = lambda s: 0.16 / (1 + 10 * s / 1000) ** 0.75  # noqa: E731
    for s, ramp in ((0, 0.01), (49, 0.5), (99, 1.0), (100, 1.0), (999, 1.0)):
        assert float(lr(s)) == pytest.approx(annealed(s) * ramp, rel=1e-5)


def test_optimizer_uses_the_scaled_rate_with_warmup_and_constant_schedule(tmp_path):
    config = Config(model_dir=str(tmp_path), lr_schedule="constant", lr_scaling="linear",
                    batch_size=256, train_steps=100, warmup_fraction=0.1)
    assert config.warmup_steps == 10
    optimizer = step_lib.make_optimizer(config)
    rates = []
    for s in (0, 4, 9, 50):
        optimizer.iterations.assign(s)  # the rate the optimizer applies at update s
        rates.append(float(optimizer.learning_rate))
    assert np.allclose(rates, [0.04 * 0.1, 0.04 * 0.5, 0.04, 0.04])
    paper = step_lib.make_optimizer(Config(model_dir=str(tmp_path), train_steps=100))
    assert float(paper.learning_rate) == pytest.approx(0.01)


def test_test_hooks_are_not_user_flags(tmp_path):
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "dann_dist.train", "--helpfull"],
                           capture_output=True, text=True)
    assert "clip_norm" in shown.stdout and "debug_nan_step" not in shown.stdout
    refused = subprocess.run([sys.executable, "-m", "dann_dist.train", f"--model_dir={tmp_path}",
                              "--debug_nan_step=3"], capture_output=True, text=True)
    assert refused.returncode == 2 and "debug_nan_step" in refused.stderr
    assert parse(f"--model_dir={tmp_path}").debug_nan_step == -1


@pytest.mark.parametrize("name, value", [("input_norm", "batch"), ("source_augment", "flip")])
def test_strong_recipe_choices_are_checked(tmp_path, name, value):
    with pytest.raises(ConfigError, match=f"--{name}='{value}': choose one of"):
        validate(Config(model_dir=str(tmp_path), **{name: value}))


def test_the_strong_flagfile_is_the_paper_recipe_plus_its_four_additions(tmp_path):
    paper = parse("--flagfile=configs/mnist_mnistm.cfg", f"--model_dir={tmp_path}")
    strong = parse("--flagfile=configs/mnist_mnistm_strong.cfg", f"--model_dir={tmp_path}")
    differ = {k: v for k, v in config_lib.to_dict(strong).items()
              if config_lib.to_dict(paper)[k] != v}
    assert differ == {"input_norm": "image", "extractor_bn": True, "source_augment": "colour",
                      "target_entropy_weight": 0.1}
    from dann_dist.bench.configs import STRONG_OVERRIDES

    assert differ == STRONG_OVERRIDES       # what `dann_dist.bench --configs=strong` times
    assert strong.adaptation == "dann" and strong.train_steps == 24000


def test_the_ablation_flagfiles_add_the_strong_recipes_additions_one_at_a_time(tmp_path):
    rows = ["configs/mnist_mnistm.cfg", "configs/ablation/norm.cfg",
            "configs/ablation/norm_bn.cfg", "configs/ablation/norm_bn_augment.cfg",
            "configs/mnist_mnistm_strong.cfg"]
    configs = [config_lib.to_dict(parse(f"--flagfile={row}", f"--model_dir={tmp_path}"))
               for row in rows]
    added = [{k for k in after if after[k] != before[k]}
             for before, after in zip(configs, configs[1:])]
    assert added == [{"input_norm"}, {"extractor_bn"}, {"source_augment"},
                     {"target_entropy_weight"}]


@pytest.mark.parametrize("batch_size", [64, 256, 1024])
def test_the_strong_scaling_flagfiles_are_the_paper_ones_plus_the_strong_additions(
        tmp_path, batch_size):
    paper = config_lib.to_dict(parse(f"--flagfile=configs/scaling/b{batch_size}.cfg",
                                     f"--model_dir={tmp_path}"))
    strong = config_lib.to_dict(parse(f"--flagfile=configs/scaling/strong_b{batch_size}.cfg",
                                      f"--model_dir={tmp_path}"))
    assert {k: v for k, v in strong.items() if paper[k] != v} == {
        "input_norm": "image", "extractor_bn": True, "source_augment": "colour",
        "target_entropy_weight": 0.1}


@pytest.mark.parametrize("flagfile, change", [
    ("configs/ablation/strong_no_bn.cfg", {"extractor_bn": False}),
    ("configs/ablation/strong_channel.cfg", {"input_norm": "channel"})])
def test_issue_21s_candidates_change_one_thing_of_the_strong_recipe(tmp_path, flagfile, change):
    strong = config_lib.to_dict(parse("--flagfile=configs/mnist_mnistm_strong.cfg",
                                      f"--model_dir={tmp_path}"))
    candidate = config_lib.to_dict(parse(f"--flagfile={flagfile}", f"--model_dir={tmp_path}"))
    assert {k: v for k, v in candidate.items() if strong[k] != v} == change


def test_the_dirtt_flagfile_is_the_strong_recipe_then_8000_refinement_steps(tmp_path):
    strong = parse("--flagfile=configs/mnist_mnistm_strong.cfg", f"--model_dir={tmp_path}")
    dirtt = parse("--flagfile=configs/mnist_mnistm_dirtt.cfg", f"--model_dir={tmp_path}")
    differ = {k for k, v in config_lib.to_dict(dirtt).items()
              if config_lib.to_dict(strong)[k] != v}
    assert differ == {"adaptation", "train_pairs", "train_steps", "refine_steps"}
    # VADA runs the strong recipe's 24,000 steps with its schedules, then refines.
    assert (dirtt.train_steps, dirtt.refine_steps, dirtt.schedule_steps) == (32000, 8000, 24000)
    assert strong.schedule_steps == strong.train_steps == 24000
