"""The pre-registered studies' scripts (results/plan.md): they refuse bad arguments with
exit 2, and each phase runs the report calls the plan says (seen through PY=echo)."""

import json
import os
import subprocess

import pytest

from distributed_helpers import ROOT


def run(script, *args, study_root="runs/study19"):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", script), *args],
                          env={**os.environ, "PY": "echo", "STUDY_ROOT": study_root},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script, args, needle", [
    ("study_scaling.sh", ("bogus", "paper"), "usage"),
    ("study_scaling.sh", ("pilots", "cdan"), "give paper or strong"),
    ("study_scaling.sh", (), "usage"),
    ("study_recipes.sh", ("3",), "give 1 or 2")])
def test_bad_arguments_exit_2_and_say_what_to_give(script, args, needle):
    proc = run(script, *args)
    assert proc.returncode == 2 and needle in proc.stderr
    assert proc.stdout == ""   # refused before any report call


def test_pilots_are_seed_0_of_three_rules_at_twice_the_examples():
    lines = run("study_scaling.sh", "pilots", "strong").stdout.splitlines()
    assert len(lines) == 3
    for line, rule in zip(lines, ("committed", "adversary64", "adversary64_nesterov")):
        assert f"--report_dir=runs/study19/strong/pilots/{rule}" in line
        assert "--batch_sizes=256,1024 --seeds=1 " in line and "--first_seed" not in line
        assert "--scaling_flagfile=configs/scaling/strong_b{batch_size}.cfg" in line
        assert line.endswith("-- --train_pairs=3072000" + {
            "committed": "", "adversary64": " --scale_adversary=false",
            "adversary64_nesterov": " --scale_adversary=false --optimizer=nesterov"}[rule])


def test_the_choice_reads_the_pilots_of_both_batch_sizes():
    assert run("study_scaling.sh", "choose", "paper").stdout.splitlines() == [
        "-m dann_dist.report.choice --pilots=runs/study19/paper/pilots --batch_sizes=256,1024"]


def test_the_table_uses_seeds_1_to_3_and_the_paper_target_fixed_in_the_plan():
    b64 = run("study_scaling.sh", "b64", "paper").stdout.splitlines()
    assert b64 == ["-m dann_dist.report --adaptations=dann --pad_examples=0 --jobs=1 "
                   "--scaling_flagfile=configs/scaling/b{batch_size}.cfg "
                   "--report_dir=runs/study19/paper/table --batch_sizes=64 --first_seed=1 "
                   "--seeds=3 -- --eval_every=600",
                   "-m dann_dist.report --adaptations=dann --pad_examples=0 --jobs=1 "
                   "--scaling_flagfile=configs/scaling/b{batch_size}.cfg "
                   "--report_dir=runs/study19/paper/b64_half --batch_sizes=64 --first_seed=1 "
                   "--seeds=3 -- --train_pairs=768000 --eval_every=300"]
    train, collect = run("study_scaling.sh", "table", "paper").stdout.splitlines()
    assert "--batch_sizes=256,1024 --first_seed=1 --seeds=3 --target_accuracy=0.8098" in train
    assert "--collect_only" in collect and "--batch_sizes=64,256,1024" in collect
    assert "--plot_path=results/steps_to_target_paper.png" in collect


def test_the_strong_target_is_its_b64_mean_minus_2_points_once_3_seeds_finished(tmp_path):
    proc = run("study_scaling.sh", "table", "strong", study_root=str(tmp_path))
    assert proc.returncode != 0 and "run the b64 phase first" in proc.stderr
    assert proc.stdout == ""   # no large-batch run before the target exists
    report = tmp_path / "strong" / "table" / "b64" / "report.json"
    report.parent.mkdir(parents=True)
    for n, ok in ((2, False), (3, True)):
        report.write_text(json.dumps({"table": {"dann": {"target_accuracy": {
            "n": n, "mean": 0.9512}}}}))
        proc = run("study_scaling.sh", "table", "strong", study_root=str(tmp_path))
        assert (proc.returncode == 0) == ok, proc.stderr
        assert ("--target_accuracy=0.9312" in proc.stdout) == ok


def test_the_ablation_runs_the_four_candidates_on_both_targets():
    lines = run("study_recipes.sh").stdout.splitlines()
    assert len(lines) == 4
    assert lines[1] == lines[3].replace("v2", "v1") == (
        "-m dann_dist.report.choice --recipes_report=runs/study21/v1/report.json --guard=0.01")
    for line, version in zip(lines[::2], (1, 2)):
        assert (f"--report_dir=runs/study21/v{version} --recipes=strong=configs/"
                "mnist_mnistm_strong.cfg,no_bn=configs/ablation/strong_no_bn.cfg,channel="
                "configs/ablation/strong_channel.cfg,dirtt=configs/mnist_mnistm_dirtt.cfg@dirtt "
                "--adaptations=dann --seeds=3 --jobs=1") in line
        assert line.endswith(f"-- --mnistm_version={version}")
