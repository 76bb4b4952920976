"""The recipe table of dann_dist.report (--recipes) on tiny synthetic runs of two recipes,
laid out as <report_dir>/<recipe>/<adaptation>/seed<S>/."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dann_dist.report import ReportError, ReportOptions, trainer_argv
from dann_dist.report.recipes import make_recipes_report, options_for_recipe, parse_recipes

from distributed_helpers import ROOT, env

# A recipe trains --adaptations, or the one method its NAME=FLAGFILE@METHOD names ("cond").
RECIPES = (("paper", "configs/mnist_mnistm.cfg", ()),
           ("strong", "configs/mnist_mnistm_strong.cfg", ()),
           ("cond", "configs/mnist_mnistm.cfg", ("cdan",)))
RUNS = {"paper": (("source_only", 0), ("dann", 0), ("dann", 1)), "strong": (("dann", 0),),
        "cond": (("cdan", 0), ("dann", 0))}
STRONG = dict(input_norm="image", extractor_bn=True, source_augment="colour",
              target_entropy_weight=0.1)


def read(path):
    with open(path) as f:
        return json.load(f)


def recipe_options(report_dir, **overrides):
    base = dict(report_dir=str(report_dir), seeds=2, adaptations=("source_only", "dann"),
                collect_only=True, pad_examples=64, recipes=RECIPES)
    base.update(overrides)
    return ReportOptions(**base)


@pytest.fixture(scope="module")
def built(tmp_path_factory, domains):
    from dann_dist import trainer

    from synthetic import tiny_config

    report_dir = tmp_path_factory.mktemp("recipes") / "r"
    for name, keys in RUNS.items():
        for adaptation, seed in keys:
            trainer.train_and_evaluate(tiny_config(
                report_dir / name / adaptation / f"seed{seed}", adaptation=adaptation, seed=seed,
                train_steps=6, eval_every=3, log_every=3, checkpoint_every=3, export=False,
                **(STRONG if name == "strong" else {})), domains=domains)
    return report_dir, make_recipes_report(recipe_options(report_dir), domains=domains)


def test_rows_are_the_runs_metrics_criteria_and_additions(built):
    report_dir, result = built
    rows = result["recipes"]["rows"]
    # cond's DANN run is not one of its rows: that recipe names CDAN alone.
    assert [(r["recipe"], r["adaptation"]) for r in rows] == [
        ("paper", "source_only"), ("paper", "dann"), ("strong", "dann"), ("cond", "cdan")]
    for row in rows:
        dirs = [report_dir / row["recipe"] / row["adaptation"] / f"seed{s}"
                for a, s in RUNS[row["recipe"]] if a == row["adaptation"]]
        metrics = [read(d / "metrics.json") for d in dirs]
        for key in ("target_accuracy", "source_accuracy", "train_seconds", "examples_per_sec"):
            assert row[key]["values"] == pytest.approx([m[key] for m in metrics])
        assert row["final_source_val_accuracy"]["values"] == pytest.approx(
            [m["source_val_accuracy"] for m in metrics])
        assert row["final_target_entropy"]["values"] == pytest.approx(
            [m["target_entropy"] for m in metrics])
        # The proxy A-distance is the recipe's own report's, per adaptation.
        sub = read(report_dir / row["recipe"] / "report.json")
        pad = sub["proxy_a_distance"]["by_adaptation"][row["adaptation"]]
        assert row["proxy_a_distance"]["values"] == pytest.approx(pad["values"])
        expected = STRONG if row["recipe"] == "strong" else dict(
            input_norm="none", extractor_bn=False, source_augment="none",
            target_entropy_weight=0.0)
        assert row["additions"] == {**expected, "extractor_width": 1.0, "train_steps": 6}
    paper_dann, strong_dann, cond_cdan = rows[1], rows[2], rows[3]
    # A method the first recipe does not train is timed against the first recipe's DANN.
    for row in (strong_dann, cond_cdan):
        assert row["time_ratio"] == pytest.approx(
            row["train_seconds"]["mean"] / paper_dann["train_seconds"]["mean"])
    assert paper_dann["time_ratio"] == rows[0]["time_ratio"] == 1.0
    assert paper_dann["target_accuracy"]["std"] == pytest.approx(
        np.std(paper_dann["target_accuracy"]["values"], ddof=1))


def test_report_files_say_which_columns_use_target_labels(built):
    report_dir, result = built
    assert read(report_dir / "report.json")["recipes"] == json.loads(
        json.dumps(result["recipes"]))
    text = (report_dir / "report.md").read_text()
    assert "| strong | DANN | 1 |" in text and "| paper | source only | 1 |" in text
    assert "| cond | CDAN+E | 1 |" in text and "cond=configs/mnist_mnistm.cfg@cdan" in text
    assert "not used for any choice" in text and "input_norm=image" in text


def test_command_line_writes_the_recipe_table_and_lists_missing_recipes(built):
    report_dir, _ = built
    recipes = ",".join(f"{n}={f}" + "".join(f"@{m}" for m in ms) for n, f, ms in RECIPES)
    recipes += ",wide=configs/none.cfg"
    proc = subprocess.run(
        [sys.executable, "-m", "dann_dist.report", f"--report_dir={report_dir}",
         f"--recipes={recipes}", "--seeds=2", "--adaptations=source_only,dann",
         "--collect_only", "--pad_examples=0"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# Recipes" in proc.stdout and "No finished run for wide" in proc.stdout
    assert "| cond | CDAN+E | 1 |" in proc.stdout


@pytest.mark.parametrize("values, needle", [
    (["paper"], "NAME=FLAGFILE"), (["a/b=x.cfg"], "NAME=FLAGFILE"),
    (["a=x.cfg", "a=y.cfg"], "repeat"), (["a=x.cfg@"], "NAME=FLAGFILE@METHOD"),
    (["a=x.cfg@nope"], "'nope' is not a method")])
def test_bad_recipe_lists_are_usage_errors(values, needle):
    with pytest.raises(ReportError) as err:
        parse_recipes(values)
    assert err.value.exit_code == 2 and needle in str(err.value)


def test_missing_runs_are_trained_with_the_recipes_flagfile(tmp_path):
    options = recipe_options(tmp_path / "r", collect_only=False, pad_examples=0,
                             recipes=(("absent", "configs/absent.cfg", ()),))
    with pytest.raises(ReportError) as err:
        make_recipes_report(options)
    assert err.value.exit_code == 2 and "configs/absent.cfg" in str(err.value)
    assert not (tmp_path / "r").exists()   # refused before writing anything
    argv = trainer_argv(options_for_recipe(recipe_options("runs/x"), *RECIPES[1]), "dann", 0)
    assert "--flagfile=configs/mnist_mnistm_strong.cfg" in argv
    assert f"--model_dir={os.path.abspath('runs/x/strong/dann/seed0')}" in argv
    dirtt = options_for_recipe(recipe_options("runs/x"), "d", "configs/mnist_mnistm_dirtt.cfg",
                               ("dirtt",))
    assert dirtt.adaptations == ("dirtt",)
    argv = trainer_argv(dirtt, "dirtt", 1)
    assert "--adaptation=dirtt" in argv and "--flagfile=configs/mnist_mnistm_dirtt.cfg" in argv


def test_parsed_recipes_name_their_method():
    assert parse_recipes(["paper=configs/a.cfg", "d=configs/b.cfg@dirtt"]) == (
        ("paper", "configs/a.cfg", ()), ("d", "configs/b.cfg", ("dirtt",)))


def test_every_registered_method_is_a_row_the_report_accepts():
    from dann_dist.methods import registry
    from dann_dist.report import ORDER, check_options

    assert sorted(ORDER) == sorted(registry.names())
    assert ORDER[0] == "source_only" and ORDER[-1] == "target_only"
    check_options(ReportOptions(report_dir="runs/x", adaptations=("cdan", "vada", "dirtt")))
    with pytest.raises(ReportError) as err:
        check_options(ReportOptions(report_dir="runs/x", adaptations=("dan",)))
    assert err.value.exit_code == 2 and "dirtt" in str(err.value)
