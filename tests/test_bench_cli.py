"""The benchmark command (dann_dist.bench.cli): runs end to end on tiny settings and
reports every figure; lists its flags in --help (exit 0); bad flags exit 2.

No timing assertions (the machine is shared and times are noisy): the tests check that
each figure is there, positive and finite, and that ratios are reported."""

from __future__ import annotations

import sys

import pytest

from bench_helpers import TINY, last_json, positive, run

TRAIN_FIELDS = ("steps_per_sec", "examples_per_sec", "flops_per_step", "gflops_per_sec",
                "cpu_cores_used", "examples_per_cpu_second",
                "fraction_of_reference_peak", "fraction_of_measured_peak")


def test_bench_reports_every_figure_and_the_ratios():
    stdout = run([sys.executable, "-m", "dann_dist.bench", "--strategy=single", *TINY]).stdout
    figures = last_json(stdout)

    assert set(figures["train"]) == {"origin", "paper"}
    assert figures["failed"] == {}
    for name, train in figures["train"].items():
        for field in TRAIN_FIELDS:
            positive(train[field], f"train.{name}.{field}")
        assert len(train["steps_per_sec_rounds"]) == 2
        # One step = 16 source + 16 target images.
        assert train["images_per_step"] == 32
        assert train["examples_per_sec"] == pytest.approx(32 * train["steps_per_sec"])
    assert figures["train"]["origin"]["config"]["adversarial_loss"] == "flipped_labels"
    assert figures["train"]["paper"]["config"]["adversarial_loss"] == "grl"

    for section, fields in (("eval", ("seconds", "images_per_sec", "cpu_seconds")),
                            ("pipeline", ("batches_per_sec", "examples_per_sec", "headroom")),
                            ("memory", ("peak_rss_mb", "peak_rss_mb_with_baseline")),
                            ("peak", ("measured_matmul_gflops", "reference_gflops")),
                            ("baseline", ("steps_per_sec", "examples_per_sec", "gflops_per_sec",
                                          "cpu_cores_used", "examples_per_cpu_second",
                                          "eval_seconds", "eval_cpu_seconds",
                                          "eval_forward_seconds", "eval_loop_seconds",
                                          "eval_images_per_sec"))):
        for field in fields:
            positive(figures[section][field], f"{section}.{field}")
    assert figures["eval"]["images"] == 128
    assert figures["baseline"]["eval_loop_examples_timed"] == 16
    for ratio in ("train_origin", "train_paper", "eval", "origin_tf_function"):
        positive(figures["ratios"][ratio], f"ratios.{ratio}")
    positive(figures["origin_tf_function"]["steps_per_sec"], "origin_tf_function.steps_per_sec")
    for ratio in ("train_origin", "train_paper", "eval"):
        positive(figures["ratios_per_cpu_second"][ratio], f"ratios_per_cpu_second.{ratio}")
    assert len(figures["ratios"]["train_origin_rounds"]) == 2
    assert figures["machine"]["cpus"] >= 1 and figures["machine"]["cpu_model"]

    # The human-readable report precedes the JSON.
    for text in ("train [origin]:", "train [paper]:", "train [origin baseline, eager float32]:",
                 "train [origin step in a plain tf.function, float32]:",
                 "evaluation [ours]:", "evaluation [origin baseline]:", "input pipeline alone:",
                 "peak memory", "ratios vs the origin baseline"):
        assert text in stdout, text


def test_bench_times_the_strong_recipe_with_its_augmentation():
    stdout = run([sys.executable, "-m", "dann_dist.bench", "--strategy=single", "--nobaseline",
                  "--configs=paper,strong", *TINY]).stdout
    figures = last_json(stdout)
    assert set(figures["train"]) == {"paper", "strong"} and figures["failed"] == {}
    strong = figures["train"]["strong"]
    positive(strong["steps_per_sec"], "train.strong.steps_per_sec")
    assert strong["config"]["extractor_bn"] and strong["config"]["source_augment"] == "colour"


def test_importing_the_bench_defines_no_flags():
    from absl import flags

    import dann_dist.bench  # noqa: F401
    import dann_dist.bench.__main__  # noqa: F401
    import dann_dist.bench.cli  # noqa: F401
    import dann_dist.bench.configs  # noqa: F401

    assert "baseline_eval_loop_examples" not in flags.FLAGS


def test_help_lists_the_bench_flags():
    # The bench defines its flags in cli.py, not in __main__.py; --help prints the package
    # docstring, then those flags, and exits 0.
    stdout = run([sys.executable, "-m", "dann_dist.bench", "--help"], timeout=60).stdout
    assert stdout.startswith("Speed benchmark:")
    for flag in ("--batch_size", "--baseline_eval_loop_examples", "--configs", "--[no]baseline",
                 "--reference_gflops_bfloat16", "--seed"):
        assert f"  {flag}:" in stdout, flag


@pytest.mark.parametrize("args", [["--configs=origin,nope"], ["--batch_size=0"], ["stray"]])
def test_bad_flags_exit_2_before_any_work(args):
    proc = run([sys.executable, "-m", "dann_dist.bench", *args], timeout=60, expect=2)
    assert proc.stderr.startswith("error: ")
    assert proc.stdout == ""
