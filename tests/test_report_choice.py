"""The label-free choice of results/plan.md (dann_dist.report.choice): out when unfinished or
collapsed, then the lowest target entropy within the guard of the best source validation;
target accuracy is never read."""

import json
import subprocess
import sys

import pytest

from dann_dist.report import choice

from distributed_helpers import ROOT, env


def cand(val, entropy, status="finished", target_accuracy=None):
    return {"status": status, "source_val_accuracy": val, "target_entropy": entropy,
            "target_accuracy": target_accuracy}


def test_lowest_entropy_within_the_guard_of_the_best_source_validation():
    result = choice.choose({
        "a": cand(0.990, 0.50), "b": cand(0.975, 0.20),   # b: entropy lowest, 1.5 points down
        "c": cand(0.965, 0.10)})                          # c: 2.5 points down: out
    assert result["chosen"] == "b"
    assert result["rows"]["c"]["verdict"].startswith("out: source validation more than 0.02")
    # A tighter guard keeps only the best source validation.
    assert choice.choose({"a": cand(0.990, 0.50), "b": cand(0.975, 0.20)},
                         guard=0.01)["chosen"] == "a"


def test_target_accuracy_changes_nothing():
    base = {"a": cand(0.99, 0.5, target_accuracy=0.9), "b": cand(0.98, 0.3, target_accuracy=0.6)}
    swapped = {"a": cand(0.99, 0.5, target_accuracy=0.6), "b": cand(0.98, 0.3, target_accuracy=0.9)}
    assert choice.choose(base)["chosen"] == choice.choose(swapped)["chosen"] == "b"


def test_diverged_collapsed_and_unfinished_candidates():
    result = choice.choose({"a": cand(0.99, 0.5), "nan": cand(None, None, "diverged (NaN)"),
                            "flat": cand(0.106, 0.01)})   # collapsed: lowest entropy, yet out
    assert result["chosen"] == "a"
    assert result["rows"]["nan"]["verdict"] == "out: diverged (NaN)"
    assert "below 0.9" in result["rows"]["flat"]["verdict"]
    # A candidate still running: no choice yet, whatever the others show.
    waiting = choice.choose({"a": cand(0.99, 0.5), "b": cand(None, None, "incomplete")})
    assert waiting["chosen"] is None and "b" in waiting["reason"]
    assert choice.choose({"x": cand(0.5, 0.1)})["chosen"] is None


def test_pilots_are_read_from_their_run_directories(tmp_path):
    def run(rule, metrics=None, log="", history=()):
        d = tmp_path / rule / "b256" / "dann" / "seed0"
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"config": {"batch_size": 256,
                                                           "train_steps": 10}}))
        (d / "eval_history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in history))
        (d / "train.log").write_text(log)
        if metrics:
            (d / "metrics.json").write_text(json.dumps(metrics))

    run("committed", {"step": 10, "source_val_accuracy": 0.99, "target_entropy": 0.4})
    run("adversary64", {"step": 10, "source_val_accuracy": 0.985, "target_entropy": 0.3})
    run("nesterov", log="error: non-finite loss at step 7: {label_loss: nan}\n",
        history=[{"step": 5, "source_val_accuracy": 0.9, "target_entropy": 0.9}])
    candidates = choice.pilot_candidates(str(tmp_path), 256)
    assert candidates["nesterov"]["status"].startswith("diverged")
    assert choice.choose(candidates)["chosen"] == "adversary64"
    proc = subprocess.run([sys.executable, "-m", "dann_dist.report.choice",
                           f"--pilots={tmp_path}", "--batch_sizes=256"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| adversary64 | 0.9850 | 0.300 | chosen |" in proc.stdout


def test_recipes_are_chosen_on_their_means_over_seeds(tmp_path):
    def row(recipe, val, entropy):
        return {"recipe": recipe, "seeds": [0, 1, 2],
                "final_source_val_accuracy": {"mean": val},
                "final_target_entropy": {"mean": entropy}}

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"recipes": {"rows": [
        row("strong", 0.992, 0.07), row("dirtt", 0.975, 0.01), row("no_bn", 0.991, 0.06)],
        "without_runs": []}}))
    # DIRT-T's entropy is lowest by design; 1.7 points of source validation put it out.
    result = choice.choose(choice.recipe_candidates(str(report)), guard=0.01)
    assert result["chosen"] == "no_bn" and result["rows"]["dirtt"]["verdict"].startswith("out")
    # A recipe with two of its three seeds finished: no choice yet.
    rows = json.loads(report.read_text())
    rows["recipes"]["rows"][2]["seeds"] = [0, 1]
    report.write_text(json.dumps(rows))
    assert choice.choose(choice.recipe_candidates(str(report)), guard=0.01)["chosen"] is None


@pytest.mark.parametrize("args, code, needle", [
    ([], 2, "give --pilots"), (["--guard=-1"], 2, "guard"),
    (["--recipes_report=/nonexistent.json"], 2, "no recipe table")])
def test_bad_flags_exit_2(args, code, needle):
    proc = subprocess.run([sys.executable, "-m", "dann_dist.report.choice", *args], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == code and needle in proc.stderr, proc.stderr
