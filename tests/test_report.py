"""The report end to end on tiny synthetic runs: it trains the missing runs through the
real trainer (tests/run_synthetic.py), collects finished ones without retraining, and
writes the table, the selections, the proxy A-distance and the figures."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dann_dist import report as report_lib
from dann_dist.report import ReportError, ReportOptions

from distributed_helpers import ROOT, RUN_SYNTHETIC, env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# As tests/synthetic.tiny_config (the synthetic data needs no --data_dir).
TINY = ("--train_steps=6", "--batch_size=16", "--eval_every=2", "--log_every=3",
        "--checkpoint_every=3", "--eval_batch_size=64", "--export=false", "--strategy=single",
        "--noise_scale_batches=0", "--data_dir=")
ADAPTATIONS = ("source_only", "dann", "target_only")


def tiny_options(report_dir, **overrides):
    base = dict(report_dir=str(report_dir), seeds=2, train_flagfile="",
                train_command=f"python {RUN_SYNTHETIC}", train_flags=TINY)
    base.update(overrides)
    return ReportOptions(**base)


# The report trains this run through the trainer command line; the five others are
# trained in-process beforehand (same synthetic data and flags, without five more
# TensorFlow start-ups), so that one report both trains and collects.
SUBPROCESS_RUN = ("dann", 1)


@pytest.fixture(scope="module")
def built(tmp_path_factory, domains):
    """3 adaptations x 2 seeds of 6 steps, and the report over them (done once)."""
    from dann_dist import trainer

    from synthetic import tiny_config

    report_dir = tmp_path_factory.mktemp("report") / "r"
    for adaptation in ADAPTATIONS:
        for seed in (0, 1):
            if (adaptation, seed) != SUBPROCESS_RUN:
                trainer.train_and_evaluate(tiny_config(
                    report_dir / adaptation / f"seed{seed}", adaptation=adaptation, seed=seed,
                    train_steps=6, batch_size=16, eval_every=2, log_every=3, checkpoint_every=3,
                    eval_batch_size=64, export=False), domains=domains)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env(threads=1).items():
            mp.setenv(key, value)
        mp.delenv("TF_CONFIG", raising=False)
        result = report_lib.make_report(tiny_options(report_dir), domains=domains)
    return report_dir, result


def metrics_of(report_dir, adaptation, seed):
    with open(report_dir / adaptation / f"seed{seed}" / "metrics.json") as f:
        return json.load(f)


def is_png(path):
    from matplotlib.image import imread

    data = path.read_bytes()
    image = imread(str(path))
    return data.startswith(PNG_MAGIC) and image.ndim == 3 and min(image.shape[:2]) > 100


def test_runs_are_ordinary_model_dirs_trained_by_the_given_command(built):
    report_dir, result = built
    assert [(r["adaptation"], r["seed"], r["status"]) for r in result["runs"]] == [
        (a, s, "trained" if (a, s) == SUBPROCESS_RUN else "collected")
        for a in ADAPTATIONS for s in (0, 1)]
    for adaptation in ADAPTATIONS:
        for seed in (0, 1):
            model_dir = report_dir / adaptation / f"seed{seed}"
            metrics = metrics_of(report_dir, adaptation, seed)
            assert metrics["step"] == 6
            with open(model_dir / "run.json") as f:
                config = json.load(f)["config"]
            assert (config["adaptation"], config["seed"], config["train_steps"]) == (
                adaptation, seed, 6)
    log = (report_dir / "dann" / "seed1" / "train.log").read_text()
    assert "run_synthetic.py" in log and "--adaptation=dann --seed=1" in log
    assert "source: synthetic gray test source" in log  # the trainer's own output
    assert not (report_dir / "dann" / "seed0" / "train.log").exists()  # collected, not run
    # Different seeds give different models.
    assert (metrics_of(report_dir, "dann", 0)["weights_digest"]
            != metrics_of(report_dir, "dann", 1)["weights_digest"])


def test_json_table_is_mean_and_std_of_the_runs_final_metrics(built):
    report_dir, _ = built
    saved = json.loads((report_dir / "report.json").read_text())
    assert saved["seeds"] == 2 and saved["adaptations"] == list(ADAPTATIONS)
    assert set(saved["table"]) == set(ADAPTATIONS)
    for adaptation, row in saved["table"].items():
        finals = [metrics_of(report_dir, adaptation, s) for s in (0, 1)]
        for key in ("target_accuracy", "source_accuracy"):
            values = [m[key] for m in finals]
            assert row[key]["values"] == pytest.approx(values)
            assert row[key]["mean"] == pytest.approx(np.mean(values))
            assert row[key]["std"] == pytest.approx(np.std(values, ddof=1))
        assert row["paper_target_accuracy"] == report_lib.PAPER_TARGET_ACCURACY[adaptation]
        sel = row["selection"]
        assert sel["final"]["target_accuracy"]["values"] == pytest.approx(
            row["target_accuracy"]["values"])
        assert sel["final"]["steps"] == [6, 6]
        for criterion in ("source_val", "entropy", "oracle"):
            assert set(sel[criterion]["steps"]) <= {2, 4, 6}
        assert sel["oracle"]["label"] == "oracle (uses target labels; not a valid selection)"
        assert sel["oracle"]["uses_target_labels"] is True
        assert not any(sel[c]["uses_target_labels"] for c in ("final", "source_val", "entropy"))
        # The oracle is, per seed, at least as good on the target as any criterion.
        for criterion in ("final", "source_val", "entropy"):
            assert all(o >= v - 1e-12 for o, v in zip(sel["oracle"]["target_accuracy"]["values"],
                                                       sel[criterion]["target_accuracy"]["values"]))
    assert saved["data"]["target"] == "synthetic colour test target"
    assert saved["label_free_criteria"] == ["final", "source_val", "entropy"]
    # The runs trained in-process and the one trained by the command share one recipe.
    assert saved["recipe"]["differing"] == {}
    assert saved["recipe"]["shared"]["train_steps"] == 6


def test_selections_match_each_runs_history(built):
    report_dir, result = built
    from dann_dist.report import selection

    for run in result["runs"]:
        history = selection.read_history(os.path.join(run["model_dir"], selection.EVAL_HISTORY))
        assert [e["step"] for e in history] == [2, 4, 6]
        expected = selection.select_all(history, selection.DEFAULT_GUARD)
        assert ({k: v["step"] for k, v in run["selected"].items()}
                == {k: v["step"] for k, v in expected.items()})


def test_proxy_a_distance_of_source_only_and_dann(built):
    report_dir, result = built
    pad = result["proxy_a_distance"]
    assert pad["examples_per_domain"] == {"source": 128, "target": 128}  # all synthetic test images
    assert list(pad["by_adaptation"]) == ["source_only", "dann"]
    for entry in pad["by_adaptation"].values():
        assert [r["seed"] for r in entry["per_seed"]] == [0, 1]
        assert all(r["step"] == 6 and 0 <= r["pad"] <= 2 for r in entry["per_seed"])
        assert entry["mean"] == pytest.approx(np.mean([r["pad"] for r in entry["per_seed"]]))
        # Gray vs coloured images: the shift is blatant to a linear probe after 6 steps.
        assert entry["mean"] > 1.0


def test_markdown_says_what_was_run_and_how_selection_works(built):
    report_dir, _ = built
    text = (report_dir / "report.md").read_text()
    for needle in ("2 seed(s)", "6 training steps", "3 evaluation(s) per run",
                   "synthetic colour test target",
                   "oracle (uses target labels; not a valid selection)",
                   "Morerio", "collapsed", "Proxy A-distance", "PAD = 2 (1 - 2 err)",
                   "![curves](curves.png)", "![features](features.png)",
                   "| source only | 2 |", "| DANN | 2 |", "| train on target | 2 |"):
        assert needle in text, needle
    assert text.count(" ± ") >= 3 * 5
    # The label-free table and the oracle table are separate.
    label_free = text.split("| method | final | source validation | target entropy (guarded) |")[1]
    assert "oracle" not in label_free.split("\n\n")[0]


def test_figures_are_pngs_and_in_tensorboard(built):
    report_dir, _ = built
    assert is_png(report_dir / "curves.png")
    assert is_png(report_dir / "features.png")
    import tensorflow as tf

    events = list((report_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(str(events[0]))
            for v in e.summary.value}
    assert {"features_pca", "curves", "report"} <= tags
    assert not [p for p in report_dir.iterdir() if ".tmp" in p.name]


def test_rerun_collects_without_retraining(built):
    report_dir, _ = built
    metrics = report_dir / "dann" / "seed0" / "metrics.json"
    before = {p: p.stat().st_mtime_ns for p in report_dir.glob("*/seed*/metrics.json")}
    assert len(before) == 6
    # Not collect-only: finished runs are collected all the same.
    again = report_lib.make_report(tiny_options(report_dir, pad_examples=0))
    assert {r["status"] for r in again["runs"]} == {"collected"}
    assert "Not computed: --pad_examples=0." in (report_dir / "report.md").read_text()
    # The command line, collect-only, asking for a third seed that does not exist.
    proc = subprocess.run(
        [sys.executable, "-m", "dann_dist.report", f"--report_dir={report_dir}", "--seeds=3",
         "--collect_only", "--pad_examples=0", "--train_flagfile="],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in report_dir.glob("*/seed*/metrics.json")} == before
    assert not (report_dir / "dann" / "seed2").exists()
    saved = json.loads((report_dir / "report.json").read_text())
    assert [r["status"] for r in saved["runs"] if r["seed"] < 2] == ["collected"] * 6
    assert [r["adaptation"] for r in saved["runs"]] == [a for a in ADAPTATIONS for _ in range(3)]
    assert [r["status"] for r in saved["runs"] if r["seed"] == 2] == ["missing"] * 3
    assert saved["table"]["dann"]["target_accuracy"]["n"] == 2
    assert "3 run(s) missing or unfinished" in proc.stdout
    # Without loaded data, the description comes from the trainer's log.
    assert saved["data"]["target"] == "synthetic colour test target"
    assert metrics.exists()


def test_first_seed_reports_the_seeds_from_there_on(built, tmp_path):
    # A study's table on the seeds its pilots did not use: --first_seed=1 --seeds=2 is seeds
    # 1 and 2 (seed 1 finished, seed 2 missing), never seed 0.
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(built[0], copy)
    made = report_lib.make_report(tiny_options(copy, first_seed=1, seeds=2, collect_only=True,
                                               pad_examples=0))
    assert {(r["seed"], r["status"]) for r in made["runs"]} == {(1, "collected"),
                                                                  (2, "missing")}
    assert made["table"]["dann"]["seeds"] == [1]
    assert "2 seed(s) (1..2) per row" in (copy / "report.md").read_text()
    with pytest.raises(ReportError) as err:
        report_lib.check_options(tiny_options(copy, first_seed=-1))
    assert err.value.exit_code == 2 and "--first_seed" in str(err.value)


def test_trainer_command_line_and_flag_checks(tmp_path):
    options = ReportOptions(report_dir=str(tmp_path), train_flags=("--eval_every=500",))
    argv = report_lib.trainer_argv(options, "dann", 2)
    assert argv[:3] == [sys.executable, "-m", "dann_dist.train"]
    assert argv[3:] == ["--flagfile=configs/mnist_mnistm.cfg", "--eval_every=500",
                        f"--model_dir={tmp_path / 'dann' / 'seed2'}", "--adaptation=dann",
                        "--seed=2"]
    custom = ReportOptions(report_dir=str(tmp_path), train_command="python3 x.py --a='b c'",
                           train_flagfile="")
    assert report_lib.trainer_argv(custom, "dann", 0)[:3] == [sys.executable, "x.py", "--a=b c"]
    for bad in (dict(train_flags=("--seed=3",)), dict(adaptations=("dan",)),
                dict(train_flagfile=str(tmp_path / "absent.cfg"))):
        with pytest.raises(ReportError) as err:
            report_lib.check_options(ReportOptions(report_dir=str(tmp_path), **bad))
        assert err.value.exit_code == 2


def test_requested_train_steps_follows_flagfiles_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    smoke = ReportOptions(report_dir=str(tmp_path), train_flagfile="configs/smoke.cfg")
    assert report_lib.requested_train_steps(smoke) == 30  # nested flagfile, later wins
    assert report_lib.requested_train_steps(
        ReportOptions(report_dir=str(tmp_path), train_flagfile="configs/smoke.cfg",
                      train_flags=("--train_steps=7",))) == 7
    assert report_lib.requested_train_steps(ReportOptions(report_dir=str(tmp_path),
                                                          train_flagfile="")) is None
    assert report_lib.requested_train_steps(ReportOptions(
        report_dir=str(tmp_path), train_flagfile="", train_flags=("--train_steps", "9"))) == 9


def test_a_directory_holding_another_run_is_refused(tmp_path):
    model_dir = tmp_path / "dann" / "seed0"
    model_dir.mkdir(parents=True)
    (model_dir / "run.json").write_text(json.dumps(
        {"config": {"adaptation": "source_only", "seed": 0, "train_steps": 6},
         "channel_mean": [0, 0, 0]}))
    with pytest.raises(ReportError) as err:
        report_lib.run_state(str(model_dir), "dann", 0, None)
    assert err.value.exit_code == 2
    assert report_lib.run_state(str(tmp_path / "nothing"), "dann", 0, None) == "missing"


def test_a_finished_run_is_trained_on_when_more_steps_are_asked_for(tmp_path):
    model_dir = tmp_path / "dann" / "seed0"
    model_dir.mkdir(parents=True)
    (model_dir / "run.json").write_text(json.dumps(
        {"config": {"adaptation": "dann", "seed": 0, "train_steps": 6}, "channel_mean": [0, 0, 0]}))
    assert report_lib.run_state(str(model_dir), "dann", 0, None) == "incomplete"  # no metrics.json
    (model_dir / "metrics.json").write_text(json.dumps({"step": 3}))  # a stale one
    assert report_lib.run_state(str(model_dir), "dann", 0, 6) == "incomplete"
    (model_dir / "metrics.json").write_text(json.dumps({"step": 6}))
    assert report_lib.run_state(str(model_dir), "dann", 0, None) == "complete"
    assert report_lib.run_state(str(model_dir), "dann", 0, 6) == "complete"
    assert report_lib.run_state(str(model_dir), "dann", 0, 12) == "incomplete"


@pytest.mark.parametrize("trainer_exit, report_exit", [(3, 1), (143, 143)])
def test_a_failing_trainer_fails_the_report_with_its_log(tmp_path, trainer_exit, report_exit):
    # 143 = stopped by SIGTERM after a checkpoint: passed on, so that a scheduler requeues.
    options = ReportOptions(report_dir=str(tmp_path), seeds=1, adaptations=("dann",),
                            train_flagfile="", pad_examples=0,
                            train_command=("python -c 'import sys; print(\"boom\"); "
                                           f"sys.exit({trainer_exit})'"))
    with pytest.raises(ReportError) as err:
        report_lib.make_report(options)
    assert err.value.exit_code == report_exit
    assert "boom" in str(err.value) and "train.log" in str(err.value)
    assert not (tmp_path / "report.md").exists()
