"""The scaling table of dann_dist.report (--batch_sizes) on tiny synthetic runs of two
global batch sizes, laid out as <report_dir>/b<B>/<adaptation>/seed<S>/."""

import json
import subprocess
import sys

import numpy as np
import pytest

from dann_dist.report import ReportError, ReportOptions, make_scaling_report, trainer_argv
from dann_dist.report.scaling import options_for_batch, time_to_accuracy

from distributed_helpers import ROOT, env

BATCHES = (8, 16)
RUNS = {8: (("source_only", 0), ("dann", 0), ("dann", 1)), 16: (("dann", 0),)}


def read(path):
    with open(path) as f:
        return json.load(f)


def history(model_dir):
    with open(model_dir / "eval_history.jsonl") as f:
        return [json.loads(line) for line in f]


def scaling_options(report_dir, **overrides):
    base = dict(report_dir=str(report_dir), seeds=2, adaptations=("source_only", "dann"),
                collect_only=True, pad_examples=0, batch_sizes=BATCHES)
    base.update(overrides)
    return ReportOptions(**base)


@pytest.fixture(scope="module")
def built(tmp_path_factory, domains):
    """Four 6-step runs over two batch sizes, and the scaling report over them."""
    from dann_dist import trainer

    from synthetic import tiny_config

    report_dir = tmp_path_factory.mktemp("scaling") / "r"
    for batch, keys in RUNS.items():
        for adaptation, seed in keys:
            trainer.train_and_evaluate(tiny_config(
                report_dir / f"b{batch}" / adaptation / f"seed{seed}", adaptation=adaptation,
                seed=seed, train_steps=6, batch_size=batch, eval_every=2, log_every=3,
                checkpoint_every=3, eval_batch_size=64, export=False, warmup_fraction=0.5,
                lr_scaling="sqrt", clip_norm=2.0), domains=domains)
    # A threshold that dann seed 1 at B = 8 reaches, at an evaluation the test can find.
    threshold = max(e["target_accuracy"] for e in history(report_dir / "b8" / "dann" / "seed1"))
    result = make_scaling_report(scaling_options(report_dir, time_to_accuracy=threshold))
    return report_dir, result, threshold


def test_rows_are_the_runs_final_metrics_and_recorded_rule(built):
    report_dir, result, _ = built
    rows = result["scaling"]["rows"]
    assert [(r["batch_size"], r["adaptation"]) for r in rows] == [
        (8, "source_only"), (8, "dann"), (16, "dann")]
    for row in rows:
        dirs = [report_dir / f"b{row['batch_size']}" / row["adaptation"] / f"seed{s}"
                for a, s in RUNS[row["batch_size"]] if a == row["adaptation"]]
        metrics = [read(d / "metrics.json") for d in dirs]
        records = [read(d / "run.json") for d in dirs]
        assert row["seeds"] == [r["config"]["seed"] for r in records]
        for key in ("target_accuracy", "source_accuracy", "train_seconds", "examples_per_sec"):
            assert row[key]["values"] == pytest.approx([m[key] for m in metrics])
            assert row[key]["mean"] == pytest.approx(np.mean([m[key] for m in metrics]))
        if len(dirs) == 2:
            assert row["target_accuracy"]["std"] == pytest.approx(
                np.std([m["target_accuracy"] for m in metrics], ddof=1))
        assert row["train_steps"] == 6 and row["config_batch_size"] == row["batch_size"]
        derived = records[0]["derived"]
        assert row["rule"] == {
            "lr_scaling": "sqrt", "learning_rate": records[0]["config"]["learning_rate"],
            "effective_learning_rate": derived["effective_learning_rate"],
            "warmup_fraction": 0.5, "warmup_steps": derived["warmup_steps"],
            "clip_norm": 2.0, "ema_scaling": "none",
            "effective_ema_momentum": derived["effective_ema_momentum"]}
        # sqrt scaling from the reference batch of 64: the rule the runs really used.
        assert derived["effective_learning_rate"] == pytest.approx(
            records[0]["config"]["learning_rate"] * np.sqrt(row["batch_size"] / 64))
        assert row["final_source_val_accuracy"]["values"] == pytest.approx(
            [m["source_val_accuracy"] for m in metrics])
        assert row["final_target_entropy"]["values"] == pytest.approx(
            [m["target_entropy"] for m in metrics])


def test_time_to_accuracy_is_the_first_evaluation_reaching_it(built):
    report_dir, result, threshold = built
    rows = {(r["batch_size"], r["adaptation"]): r for r in result["scaling"]["rows"]}
    reach = rows[(8, "dann")]["time_to_accuracy"]
    assert reach["threshold"] == threshold
    for entry in reach["per_seed"]:
        lines = history(report_dir / "b8" / "dann" / f"seed{entry['seed']}")
        first = next((e for e in lines if e["target_accuracy"] >= threshold), None)
        if first is None:
            assert entry["step"] is None and entry["train_seconds"] is None
        else:
            assert (entry["step"], entry["train_seconds"]) == (
                first["step"], first["train_seconds"])
    assert reach["per_seed"][1]["step"] is not None  # the threshold came from seed 1
    assert reach["reached"] == sum(e["step"] is not None for e in reach["per_seed"])


def test_time_to_accuracy_on_a_crafted_history():
    lines = [{"step": 2, "target_accuracy": 0.5, "train_seconds": 1.0},
             {"step": 4, "target_accuracy": 0.8, "train_seconds": 2.5},
             {"step": 6, "target_accuracy": 0.9, "train_seconds": 4.0}]
    assert time_to_accuracy(lines, 0.8) == {"step": 4, "train_seconds": 2.5}
    assert time_to_accuracy(lines, 0.85) == {"step": 6, "train_seconds": 4.0}
    assert time_to_accuracy(lines, 0.95) is None


def test_steps_to_target_agrees_with_time_to_accuracy_on_trained_runs(built):
    report_dir, result, threshold = built
    scaling = result["scaling"]
    content = scaling["steps_to_target"]
    # No --target_accuracy: the target is --time_to_accuracy, and the report says so.
    assert content["target_accuracy"] == threshold and not content["fixed_before_study"]
    rows = {(r["batch_size"], r["adaptation"]): r for r in content["rows"]}
    assert list(rows) == [(r["batch_size"], r["adaptation"]) for r in scaling["rows"]]
    for row in scaling["rows"]:
        steps = rows[(row["batch_size"], row["adaptation"])]
        by_seed = {s["seed"]: s for s in steps["per_seed"]}
        assert sorted(by_seed) == [0, 1]  # every requested seed, finished or not
        for reach in row["time_to_accuracy"]["per_seed"]:
            entry = by_seed[reach["seed"]]
            assert entry["status"] == "finished" and entry["step"] == reach["step"]
            if reach["step"] is not None:
                assert entry["examples"] == reach["step"] * row["batch_size"]
        absent = [s for s in range(2) if s not in row["seeds"]]
        assert [by_seed[s]["status"] for s in absent] == ["missing"] * len(absent)
        assert steps["counted"] == len(row["seeds"])  # finished runs only; missing ones wait
        assert (steps["eval_every"], steps["train_steps"]) == (2, 6)
        assert steps["eval_resolution"] == pytest.approx(2 / 6) and not steps["resolved"]
    assert (report_dir / "steps_to_target.png").read_bytes()[:4] == b"\x89PNG"
    assert "No --target_accuracy was given" in (report_dir / "report.md").read_text()


def test_files_per_batch_and_the_scaling_report(built):
    report_dir, result, _ = built
    saved = read(report_dir / "report.json")
    assert saved["scaling"] == json.loads(json.dumps(result["scaling"]))
    assert saved["scaling"]["without_runs"] == []
    for batch in BATCHES:  # each B is an ordinary report directory
        sub = read(report_dir / f"b{batch}" / "report.json")
        assert sub["table"]["dann"]["target_accuracy"]["n"] == len(
            [k for k in RUNS[batch] if k[0] == "dann"])
    text = (report_dir / "report.md").read_text()
    results_part, rest = text.split("## Rule and label-free criteria")
    rule_part, time_part = rest.split("## Time to target accuracy")
    assert "| 8 | DANN | 2 |" in results_part and "| 16 | DANN | 1 |" in results_part
    assert "| 8 | DANN | sqrt |" in rule_part
    assert "target labels" not in results_part.split("## Accuracy")[1]
    assert "uses target labels" in time_part and "not used for any choice" in time_part


def test_command_line_writes_the_scaling_table(built):
    report_dir, _, _ = built
    proc = subprocess.run(
        [sys.executable, "-m", "dann_dist.report", f"--report_dir={report_dir}",
         "--batch_sizes=8,16,32", "--seeds=2", "--adaptations=source_only,dann",
         "--collect_only", "--pad_examples=0"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# Scaling out" in proc.stdout and "No finished run for B = 32" in proc.stdout
    assert read(report_dir / "report.json")["scaling"]["without_runs"] == [32]
    bad = subprocess.run([sys.executable, "-m", "dann_dist.report", f"--report_dir={report_dir}",
                          "--batch_sizes=8,x", "--collect_only"],
                         cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--batch_sizes=8,x" in bad.stderr


def test_missing_runs_are_trained_with_the_batch_flagfile(tmp_path):
    (tmp_path / "b32.cfg").write_text("--batch_size=32\n")
    options = ReportOptions(report_dir=str(tmp_path / "r"), seeds=1, adaptations=("dann",),
                            pad_examples=0, batch_sizes=(32,),
                            scaling_flagfile=str(tmp_path / "b{batch_size}.cfg"),
                            train_command="python -c 'import sys; sys.exit(3)'")
    with pytest.raises(ReportError) as err:
        make_scaling_report(options)
    assert err.value.exit_code == 1
    log = (tmp_path / "r" / "b32" / "dann" / "seed0" / "train.log").read_text()
    assert f"--flagfile={tmp_path / 'b32.cfg'}" in log
    default = ReportOptions(report_dir="runs/s", train_flags=("--eval_every=5",))
    argv = trainer_argv(options_for_batch(default, 64), "dann", 0)
    assert "--flagfile=configs/scaling/b64.cfg" in argv
    assert "--flagfile=configs/mnist_mnistm.cfg" not in argv and "--eval_every=5" in argv


@pytest.mark.parametrize("bad, needle", [
    (dict(batch_sizes=(0,)), "--batch_sizes=0"),
    (dict(scaling_flagfile="configs/b.cfg"), "{batch_size}"),
    (dict(time_to_accuracy=1.5), "--time_to_accuracy"),
    (dict(collect_only=False, scaling_flagfile="absent/b{batch_size}.cfg"), "absent/b8.cfg"),
])
def test_bad_scaling_options_exit_2(tmp_path, bad, needle):
    with pytest.raises(ReportError) as err:
        make_scaling_report(scaling_options(tmp_path / "r", **bad))
    assert err.value.exit_code == 2 and needle in str(err.value)
    assert not (tmp_path / "r").exists()  # refused before writing anything
