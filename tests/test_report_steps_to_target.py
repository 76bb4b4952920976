"""Steps to target in the scaling report (dann_dist.report.steps_to_target) on fabricated
run directories <report_dir>/b<B>/dann/seed<S>/ with known evaluation histories: no
training, so every number below is known in advance."""

import json
import math
import os
import subprocess
import sys

import pytest

from dann_dist.report import ReportError, ReportOptions, make_scaling_report
from dann_dist.report.steps_to_target import (
    eval_resolution,
    first_reaching,
    seed_entry,
    speedup,
    steps_plot_png,
    steps_to_target_table,
)

from distributed_helpers import ROOT, env

NAN = math.nan
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TARGET = 0.8


def _accuracy(reach_step, train_steps, eval_every):
    """Target accuracy per evaluated step: 0.5 rising to 0.79 below reach_step, then 0.8,
    then 0.85; never above 0.79 when reach_step is None."""
    steps = range(eval_every, train_steps + 1, eval_every)
    out = {}
    for index, step in enumerate(steps):
        if reach_step is not None and step == reach_step:
            out[step] = 0.8  # exactly the target: >= counts
        elif reach_step is not None and step > reach_step:
            out[step] = 0.85
        else:
            out[step] = min(0.79, 0.5 + 0.04 * index)
    return out


# B -> train_steps, eval_every, {seed: spec}. Noise scale estimates: {step: value}.
STUDY = {
    64: (1000, 100, {
        0: dict(reach=400, classification={100: 100.0, 200: 200.0, 300: NAN, 400: 300.0},
                domain={100: 10.0, 200: 30.0}),
        1: dict(reach=600, classification={100: 500.0, 200: NAN}, domain={100: 50.0}),
        2: dict(reach=None),  # misses the target; an older run without noise scale keys
    }),
    256: (500, 25, {
        0: dict(reach=150, classification="all:1000", domain="all:2000"),
        1: dict(reach=None, diverge_at=200, classification={25: 800.0}),
        2: dict(reach=250),
    }),
}


def _noise(spec, step):
    if isinstance(spec, str):
        return float(spec.split(":")[1])
    return spec.get(step) if spec else None


def write_run(model_dir, batch, seed, train_steps, eval_every, reach=None, diverge_at=None,
              classification=None, domain=None, log="", adaptation="dann"):
    """A run directory as dann_dist.train leaves it: run.json, eval_history.jsonl and,
    unless it diverged (the trainer exits 3 then), metrics.json at its last step."""
    os.makedirs(model_dir, exist_ok=True)
    config = dict(adaptation=adaptation, seed=seed, train_steps=train_steps, batch_size=batch,
                  eval_every=eval_every, learning_rate=0.01, lr_scaling="linear",
                  mnistm_version=1)
    derived = dict(global_batch_per_domain=batch, train_steps=train_steps,
                   effective_learning_rate=0.01 * batch / 64)
    with open(os.path.join(model_dir, "run.json"), "w") as f:
        json.dump({"config": config, "channel_mean": [0.5, 0.5, 0.5], "derived": derived}, f)
    lines = []
    for step, accuracy in _accuracy(reach, train_steps, eval_every).items():
        if diverge_at is not None and step > diverge_at:
            break
        entry = dict(step=step, target_accuracy=accuracy, source_accuracy=0.95,
                     domain_accuracy=0.6, source_val_accuracy=0.95, target_entropy=0.4,
                     target_loss=NAN if step == diverge_at else 0.7,
                     train_seconds=step / 10.0, progress=step / train_steps)
        for path, spec in (("classification", classification), ("domain", domain)):
            value = _noise(spec, step)
            if value is not None:
                entry[f"noise_scale_{path}"] = value
        lines.append(json.dumps(entry, sort_keys=True))
    with open(os.path.join(model_dir, "eval_history.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if diverge_at is None:
        last = json.loads(lines[-1])
        metrics = {k: last[k] for k in ("step", "target_accuracy", "source_accuracy",
                                        "domain_accuracy", "source_val_accuracy",
                                        "target_entropy", "train_seconds")}
        with open(os.path.join(model_dir, "metrics.json"), "w") as f:
            json.dump({**metrics, "examples_per_sec": 1000.0}, f)
    if log:
        with open(os.path.join(model_dir, "train.log"), "w") as f:
            f.write(log)


def finished_run(model_dir, seed):
    """The run as dann_dist.report.runs hands a finished one over (result from its files)."""
    def read(name):
        with open(os.path.join(model_dir, name)) as f:
            return json.load(f)

    with open(os.path.join(model_dir, "eval_history.jsonl")) as f:
        history = [json.loads(line) for line in f]
    record = read("run.json")
    return {"seed": seed, "model_dir": str(model_dir),
            "result": {"config": record["config"], "derived": record["derived"],
                       "metrics": read("metrics.json"), "history": history}}


def fabricate(report_dir):
    for batch, (train_steps, eval_every, seeds) in STUDY.items():
        for seed, spec in seeds.items():
            log = ("I0101 training\nerror: non-finite loss at step 210: target_loss sum nan; "
                   "the last checkpoint is good. Lower --learning_rate or check the input.\n"
                   if spec.get("diverge_at") else "")
            write_run(os.path.join(report_dir, f"b{batch}", "dann", f"seed{seed}"), batch, seed,
                      train_steps, eval_every, log=log, **spec)


def options(report_dir, **overrides):
    base = dict(report_dir=str(report_dir), seeds=3, adaptations=("dann",), collect_only=True,
                pad_examples=0, batch_sizes=tuple(STUDY), target_accuracy=TARGET)
    base.update(overrides)
    return ReportOptions(**base)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    fabricate(root / "r")
    plot_path = root / "results" / "steps_to_target.png"  # results/ does not exist yet
    result = make_scaling_report(options(root / "r", plot_path=str(plot_path)))
    rows = {r["batch_size"]: r for r in result["scaling"]["steps_to_target"]["rows"]}
    return root, result, rows, plot_path


def test_first_step_and_examples_per_seed(study):
    _, _, rows, _ = study
    seeds = {b: {s["seed"]: s for s in rows[b]["per_seed"]} for b in STUDY}
    assert [(s["step"], s["examples"]) for s in seeds[64].values()] == [
        (400, 400 * 64), (600, 600 * 64), (None, None)]
    assert [(s["step"], s["examples"]) for s in seeds[256].values()] == [
        (150, 150 * 256), (None, None), (250, 250 * 256)]
    assert seeds[64][0]["train_seconds"] == 40.0  # of that first evaluation
    assert [s["status"] for s in seeds[64].values()] == ["finished"] * 3
    assert [s["status"] for s in seeds[256].values()] == ["finished", "diverged", "finished"]
    assert not seeds[64][2]["reached"] and seeds[64][2]["counted"]  # missed: counted as +inf
    diverged = seeds[256][1]
    assert diverged["diverged"] and diverged["counted"] and not diverged["reached"]
    assert "target_loss" in diverged["divergence"] and "200" in diverged["divergence"]
    assert [s["diverged"] for s in seeds[64].values()] == [False] * 3
    # Final accuracy: metrics.json of a finished run, the last evaluation of a diverged one.
    assert seeds[64][0]["target_accuracy"] == 0.85 and seeds[64][2]["target_accuracy"] == 0.79
    assert diverged["target_accuracy"] == pytest.approx(0.78)


def test_medians_count_misses_as_infinite_and_speedups(study):
    _, _, rows, _ = study
    b64, b256 = rows[64], rows[256]
    assert (b64["reached"], b64["counted"], b64["diverged"]) == (2, 3, 0)
    assert (b256["reached"], b256["counted"], b256["diverged"]) == (2, 3, 1)
    # median(400, 600, inf) = 600, not median(400, 600) = 500
    assert b64["median_steps"] == 600 and b64["median_examples"] == 600 * 64
    assert b256["median_steps"] == 250 and b256["median_examples"] == 250 * 256
    assert b64["speedup_steps"] == 1.0 and b64["perfect_scaling"] == 1.0
    assert b256["speedup_steps"] == pytest.approx(600 / 250)
    assert b256["perfect_scaling"] == 4.0 and b256["reference_batch"] == 64
    assert (b64["eval_every"], b64["train_steps"], b64["eval_resolution"]) == (100, 1000, 0.1)
    assert not b64["resolved"]
    assert b256["eval_resolution"] == 0.05 and b256["resolved"]


def test_noise_scale_medians_over_seeds(study):
    _, _, rows, _ = study
    b64, b256 = rows[64]["noise_scale"], rows[256]["noise_scale"]
    # seed 0: last finite 300 (NaN skipped), run median 200; seed 1: 500, 500; seed 2: none
    assert b64["classification"] == {"last": 400.0, "median": 350.0, "seeds": 2}
    assert b64["domain"] == {"last": 40.0, "median": 35.0, "seeds": 2}
    assert b256["classification"] == {"last": 900.0, "median": 900.0, "seeds": 2}
    assert b256["domain"] == {"last": 2000.0, "median": 2000.0, "seeds": 1}


def test_png_in_the_report_dir_and_at_plot_path(study):
    root, _, _, plot_path = study
    for path in (root / "r" / "steps_to_target.png", plot_path):
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert (root / "r" / "steps_to_target.png").read_bytes() == plot_path.read_bytes()
    leftovers = [p for p in os.listdir(root / "results") + os.listdir(root / "r") if ".tmp" in p]
    assert leftovers == []


def test_markdown_section_and_report_json(study):
    root, result, _, plot_path = study
    text = (root / "r" / "report.md").read_text()
    section = text.split("## Steps to target accuracy 0.8")[1]
    assert "**Target: target test accuracy >= 0.8, fixed before the study**" in section
    assert "`--target_accuracy=0.8`" in section
    assert "| 64 | DANN | 2 / 3 | 600 | 38400 | 1.00x | 1.00x | 0 | 100 / 1000 (10.0%, coarser " \
        "than 5%) | 400 (350) | 40 (35) |" in section
    assert "| 256 | DANN | 2 / 3 | 250 | 64000 | 2.40x | 4.00x | 1 | 25 / 500 (5.0%) " \
        "| 900 (900) | 2000 (2000) |" in section
    assert "| 64 | DANN | 2 | finished | not reached | - | 0.79 | no |" in section
    assert "| 256 | DANN | 1 | diverged | not reached | - | 0.78 (last evaluation) | yes: " \
        "non-finite target_loss at step 200 |" in section
    assert "McCandlish et al. 2018" in section
    assert "![Steps to target" in section and "(steps_to_target.png)" in section
    assert str(plot_path) in section
    saved = json.loads((root / "r" / "report.json").read_text())["scaling"]["steps_to_target"]
    assert saved == json.loads(json.dumps(result["scaling"]["steps_to_target"]))
    assert saved["target_accuracy"] == 0.8 and saved["fixed_before_study"] is True
    assert saved["rows"][0]["per_seed"][2]["step"] is None
    # The scaling table around it is unchanged.
    assert "## Time to target accuracy 0.8" in text and "# Scaling out" in text


def test_without_target_accuracy_the_report_says_so(tmp_path):
    fabricate(tmp_path / "r")
    result = make_scaling_report(options(tmp_path / "r", target_accuracy=None,
                                         time_to_accuracy=0.84))
    content = result["scaling"]["steps_to_target"]
    assert content["target_accuracy"] == 0.84 and not content["fixed_before_study"]
    text = (tmp_path / "r" / "report.md").read_text()
    assert "fixed before the study" not in text and "No --target_accuracy was given" in text
    # 0.84: only the 0.85 evaluations after each reach count
    assert [s["step"] for s in content["rows"][0]["per_seed"]] == [500, 700, None]
    assert (tmp_path / "r" / "steps_to_target.png").read_bytes()[:8] == PNG_MAGIC


def test_unfinished_failed_and_missing_seeds(tmp_path):
    def run(seed, **spec):
        model_dir = tmp_path / f"seed{seed}"
        if spec:
            write_run(model_dir, 64, seed, 1000, 100, **spec)
            os.remove(model_dir / "metrics.json")  # not finished
        return {"seed": seed, "model_dir": str(model_dir), "result": None}

    pending = seed_entry(run(0, reach=None, log="I0101 step 500\n"), TARGET)
    assert (pending["status"], pending["counted"]) == ("incomplete", False)
    early = seed_entry(run(1, reach=300), TARGET)  # reached before it stopped: counts
    assert (early["status"], early["counted"], early["step"]) == ("incomplete", True, 300)
    failed = seed_entry(run(2, reach=None, log="error: cannot read the data\n"), TARGET)
    assert (failed["status"], failed["counted"], failed["reached"]) == ("failed", True, False)
    assert failed["failure"] == "error: cannot read the data"
    stopped = seed_entry(run(3, reach=None, log="error: stopped by signal 2; rerun the same "
                                                "command to resume\n"), TARGET)
    assert (stopped["status"], stopped["counted"]) == ("incomplete", False)
    missing = seed_entry(run(4), TARGET)
    assert (missing["status"], missing["counted"]) == ("missing", False)


def test_a_finished_run_whose_log_shows_a_divergence_is_flagged(tmp_path):
    model_dir = tmp_path / "seed0"
    write_run(model_dir, 64, 0, 1000, 100, reach=400,
              log="error: non-finite weights at step 700 (extractor/kernel); ...\nresumed\n")
    entry = seed_entry(finished_run(model_dir, 0), TARGET)
    assert (entry["status"], entry["reached"], entry["step"]) == ("finished", True, 400)
    assert entry["diverged"] and entry["divergence"] == "non-finite weights at step 700"
    clean = tmp_path / "seed1"
    write_run(clean, 64, 1, 1000, 100, reach=400, log="resumed\n")
    assert not seed_entry(finished_run(clean, 1), TARGET)["diverged"]


def test_helpers():
    history = [{"step": 4, "target_accuracy": 0.8}, {"step": 2, "target_accuracy": NAN},
               {"step": 6, "target_accuracy": 0.9}]
    assert first_reaching(history, 0.8)["step"] == 4
    assert first_reaching(history, 0.85)["step"] == 6 and first_reaching(history, 0.95) is None
    assert speedup(600, 250) == 2.4 and speedup(600, math.inf) == 0.0
    assert speedup(math.inf, 250) == math.inf
    assert speedup(math.inf, math.inf) is None and speedup(None, 5) is None
    assert eval_resolution(400, 12000) == pytest.approx(1 / 30)
    assert eval_resolution(0, 12000) == 1.0 and eval_resolution(99999, 100) == 1.0
    assert eval_resolution([100, 200], 1000) is None


def test_all_missed_gives_infinite_medians_and_still_a_plot(tmp_path):
    runs = {}
    for batch in (64, 256):
        runs[batch] = {}
        for seed in (0, 1):
            model_dir = tmp_path / f"b{batch}" / f"seed{seed}"
            write_run(model_dir, batch, seed, 1000, 100, reach=None)
            runs[batch][("dann", seed)] = finished_run(model_dir, seed)
    content = steps_to_target_table(runs, TARGET, "--target_accuracy=0.8")
    assert [r["median_steps"] for r in content["rows"]] == [math.inf, math.inf]
    assert [r["speedup_steps"] for r in content["rows"]] == [None, None]
    png = steps_plot_png(content)
    assert png[:8] == PNG_MAGIC and len(png) > 10_000


@pytest.mark.parametrize("bad, needle", [
    (dict(target_accuracy=0.0), "--target_accuracy=0.0"),
    (dict(target_accuracy=1.5), "--target_accuracy=1.5"),
    (dict(plot_path="results/steps.txt"), "--plot_path=results/steps.txt"),
])
def test_bad_target_options_exit_2(tmp_path, bad, needle):
    with pytest.raises(ReportError) as err:
        make_scaling_report(options(tmp_path / "r", **bad))
    assert err.value.exit_code == 2 and needle in str(err.value)
    assert not (tmp_path / "r").exists()


def test_command_line_flags(tmp_path):
    fabricate(tmp_path / "r")
    plot = tmp_path / "results" / "s.png"
    proc = subprocess.run(
        [sys.executable, "-m", "dann_dist.report", f"--report_dir={tmp_path / 'r'}",
         "--batch_sizes=64,256", "--seeds=3", "--adaptations=dann", "--collect_only",
         "--pad_examples=0", "--target_accuracy=0.8", f"--plot_path={plot}"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fixed before the study" in proc.stdout and plot.read_bytes()[:8] == PNG_MAGIC
    bad = subprocess.run(
        [sys.executable, "-m", "dann_dist.report", f"--report_dir={tmp_path / 'r'}",
         "--collect_only", "--target_accuracy=0.8"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--target_accuracy" in bad.stderr
