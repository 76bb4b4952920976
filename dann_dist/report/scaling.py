"""The scaling table: one ordinary report directory per global batch B,
`<report_dir>/b<B>/<adaptation>/seed<S>/`, trained (when missing) with the flagfile
--scaling_flagfile names for B, and one row per (B, adaptation): accuracy over seeds,
steps, wall time, images/s, the scaling rule the runs recorded, the label-free criteria
at the final evaluation and, apart, the time until target accuracy first reaches a
threshold (the only number here that uses target labels; it chooses nothing), and the
study's measure: steps to a target fixed before the study, per B and seed, with the gradient
noise scale beside it and a log-log plot (dann_dist.report.steps_to_target)."""

from __future__ import annotations

import dataclasses
import os

from absl import logging

from dann_dist import atomic, cli
from dann_dist.report.build import report_and_runs, write_summary
from dann_dist.report.markdown import fmt
from dann_dist.report.options import (
    NAMES,
    ORDER,
    NoFinishedRunError,
    ReportError,
    ReportOptions,
)
from dann_dist.report.steps_to_target import (
    steps_plot_png,
    steps_to_target_lines,
    steps_to_target_table,
)
from dann_dist.report.tables import finished, shared, summarise

# (name in the row, where: "config" or "derived" of run.json)
RULE_KEYS = (("lr_scaling", "config"), ("learning_rate", "config"),
             ("effective_learning_rate", "derived"), ("warmup_fraction", "config"),
             ("warmup_steps", "derived"), ("clip_norm", "config"), ("ema_scaling", "config"),
             ("effective_ema_momentum", "derived"))


def batch_dir(report_dir: str, batch_size: int) -> str:
    return os.path.join(report_dir, f"b{batch_size}")


def options_for_batch(options: ReportOptions, batch_size: int) -> ReportOptions:
    """The ordinary report of one global batch: its own directory and flagfile."""
    return dataclasses.replace(options, report_dir=batch_dir(options.report_dir, batch_size),
                               train_flagfile=options.scaling_flagfile.format(
                                   batch_size=batch_size),
                               batch_sizes=())


def check_scaling_options(options: ReportOptions) -> None:
    if any(b < 1 for b in options.batch_sizes):
        raise ReportError(f"--batch_sizes={','.join(map(str, options.batch_sizes))}: each "
                          "must be a positive global batch size.", cli.EXIT_USAGE)
    if "{batch_size}" not in options.scaling_flagfile:
        raise ReportError(f"--scaling_flagfile={options.scaling_flagfile}: must contain "
                          "{batch_size}, e.g. configs/scaling/b{batch_size}.cfg.", cli.EXIT_USAGE)
    if not 0 < options.time_to_accuracy <= 1:
        raise ReportError(f"--time_to_accuracy={options.time_to_accuracy}: choose a target "
                          "accuracy in (0, 1].", cli.EXIT_USAGE)
    if options.target_accuracy is not None and not 0 < options.target_accuracy <= 1:
        raise ReportError(f"--target_accuracy={options.target_accuracy}: choose a target "
                          "accuracy in (0, 1].", cli.EXIT_USAGE)
    _check_plot_path(options.plot_path)
    for batch_size in options.batch_sizes:
        flagfile = options_for_batch(options, batch_size).train_flagfile
        if not options.collect_only and not os.path.isfile(flagfile):
            raise ReportError(f"--scaling_flagfile gives {flagfile} for batch {batch_size}: no "
                              f"such file (paths are relative to {os.getcwd()}).", cli.EXIT_USAGE)


def _check_plot_path(plot_path: str) -> None:
    if not plot_path:
        return
    existing = os.path.dirname(os.path.abspath(plot_path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not plot_path.endswith(".png") or os.path.isdir(plot_path):
        raise ReportError(f"--plot_path={plot_path}: give a .png file name, e.g. "
                          "results/steps_to_target.png.", cli.EXIT_USAGE)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise ReportError(f"--plot_path={plot_path}: {existing} is not a writable directory.",
                          cli.EXIT_USAGE)


def target_of(options: ReportOptions) -> tuple[float, str]:
    """The steps-to-target accuracy and how it was given."""
    if options.target_accuracy is not None:
        return options.target_accuracy, f"--target_accuracy={options.target_accuracy:g}"
    return options.time_to_accuracy, f"--time_to_accuracy={options.time_to_accuracy:g}"


def time_to_accuracy(history: list[dict], threshold: float) -> dict | None:
    """The first evaluation whose target accuracy reaches `threshold`: its step and
    training seconds; None if none does. Uses target labels: reported, never chosen by."""
    for entry in history:
        if entry.get("target_accuracy") is not None and entry["target_accuracy"] >= threshold:
            return {"step": entry["step"], "train_seconds": entry.get("train_seconds")}
    return None


def _rule(results: list[dict]) -> dict:
    return {name: shared([r["result"][where].get(name) for r in results])
            for name, where in RULE_KEYS}


def _time_to_accuracy_row(results: list[dict], threshold: float) -> dict:
    reached = [time_to_accuracy(r["result"]["history"], threshold) for r in results]
    return {
        "threshold": threshold,
        "reached": sum(t is not None for t in reached),
        "per_seed": [{"seed": r["seed"], **(t or {"step": None, "train_seconds": None})}
                     for r, t in zip(results, reached)],
        "train_seconds": summarise([t["train_seconds"] if t else None for t in reached]),
        "steps": summarise([t["step"] if t else None for t in reached]),
    }


def scaling_row(batch_size: int, adaptation: str, results: list[dict], threshold: float) -> dict:
    """One row of the scaling table from the finished runs of (B, adaptation)."""
    finals = [r["result"]["metrics"] for r in results]
    last = [r["result"]["selected"]["final"] for r in results]
    return {
        "batch_size": batch_size,
        "adaptation": adaptation,
        "seeds": [r["seed"] for r in results],
        "target_accuracy": summarise([m["target_accuracy"] for m in finals]),
        "source_accuracy": summarise([m["source_accuracy"] for m in finals]),
        "train_steps": shared([r["result"]["config"]["train_steps"] for r in results]),
        "config_batch_size": shared([r["result"]["config"]["batch_size"] for r in results]),
        "train_seconds": summarise([m.get("train_seconds") for m in finals]),
        "examples_per_sec": summarise([m.get("examples_per_sec") for m in finals]),
        "rule": _rule(results),
        "final_source_val_accuracy": summarise([e.get("source_val_accuracy") for e in last]),
        "final_target_entropy": summarise([e.get("target_entropy") for e in last]),
        "time_to_accuracy": _time_to_accuracy_row(results, threshold),
    }


def _batch_report(options: ReportOptions, batch_size: int, domains) -> tuple | None:
    """(report, runs) of one batch size; None when --collect_only finds no finished run."""
    try:
        return report_and_runs(options_for_batch(options, batch_size), domains=domains)
    except NoFinishedRunError:
        if not options.collect_only:
            raise
        logging.warning("no finished run for batch %d under %s", batch_size,
                        batch_dir(options.report_dir, batch_size))
        return None


def scaling_table(options: ReportOptions, domains=None) -> dict:
    """Makes the ordinary report of every batch size and returns the scaling content."""
    rows, without_runs, data, runs_by_batch = [], [], None, {}
    for batch_size in options.batch_sizes:
        made = _batch_report(options, batch_size, domains)
        if made is None:
            without_runs.append(batch_size)
            continue
        report, runs = made
        runs_by_batch[batch_size] = runs
        data = data or report["data"]
        for adaptation in ORDER:
            results = finished(runs, adaptation)
            if results:
                rows.append(scaling_row(batch_size, adaptation, results,
                                        options.time_to_accuracy))
    if not rows:
        raise ReportError(f"no finished run under {options.report_dir}/b<B> for --batch_sizes="
                          f"{','.join(map(str, options.batch_sizes))}: run without "
                          "--collect_only to train them.", cli.EXIT_USAGE)
    return {"batch_sizes": list(options.batch_sizes), "rows": rows, "data": data,
            "without_runs": without_runs, "time_to_accuracy_threshold": options.time_to_accuracy,
            "flagfile_pattern": options.scaling_flagfile,
            "steps_to_target": {**steps_to_target_table(runs_by_batch, *target_of(options)),
                                "plot_path": options.plot_path}}


def _value(value, digits: str = "g") -> str:
    if isinstance(value, list):
        return " / ".join(_value(v, digits) for v in value)
    if value is None:
        return "-"
    return format(value, digits) if isinstance(value, float) else str(value)


def _results_lines(rows: list[dict]) -> list[str]:
    lines = ["| B | method | seeds | target accuracy | source accuracy | steps | wall time (s) "
             "| images/s |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['batch_size']} | {NAMES[row['adaptation']]} | {len(row['seeds'])} "
                     f"| {fmt(row['target_accuracy'])} | {fmt(row['source_accuracy'])} "
                     f"| {_value(row['train_steps'])} | {fmt(row['train_seconds'], 1)} "
                     f"| {fmt(row['examples_per_sec'], 0)} |")
    return lines


def _rule_lines(rows: list[dict]) -> list[str]:
    lines = ["| B | method | lr scaling | lr | effective lr | warm-up fraction (steps) "
             "| gradient clip norm | EMA scaling (effective momentum) | final source validation "
             "| final target entropy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        rule = row["rule"]
        lines.append(
            f"| {row['batch_size']} | {NAMES[row['adaptation']]} | {_value(rule['lr_scaling'])} "
            f"| {_value(rule['learning_rate'])} | {_value(rule['effective_learning_rate'])} "
            f"| {_value(rule['warmup_fraction'])} ({_value(rule['warmup_steps'])}) "
            f"| {_value(rule['clip_norm'])} "
            f"| {_value(rule['ema_scaling'])} ({_value(rule['effective_ema_momentum'])}) "
            f"| {fmt(row['final_source_val_accuracy'])} | {fmt(row['final_target_entropy'])} |")
    return lines


def _time_lines(rows: list[dict]) -> list[str]:
    lines = ["| B | method | reached / seeds | wall time (s) | step | per seed (step, s) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        reach = row["time_to_accuracy"]
        per_seed = ", ".join("-" if s["step"] is None else
                             f"{s['step']}, {_value(s['train_seconds'], '.1f')}"
                             for s in reach["per_seed"])
        lines.append(f"| {row['batch_size']} | {NAMES[row['adaptation']]} "
                     f"| {reach['reached']} / {len(row['seeds'])} "
                     f"| {fmt(reach['train_seconds'], 1)} | {fmt(reach['steps'], 0)} "
                     f"| {per_seed} |")
    return lines


def scaling_markdown(scaling: dict, generated: str) -> str:
    data = scaling["data"] or {}
    threshold = scaling["time_to_accuracy_threshold"]
    lines = [
        "# Scaling out: accuracy and speed per global batch",
        "",
        f"Generated by `python -m dann_dist.report --batch_sizes="
        f"{','.join(map(str, scaling['batch_sizes']))}` on {generated}. Runs of batch B: "
        "`b<B>/<adaptation>/seed<k>/` (each an ordinary report directory), trained with "
        f"`--flagfile={scaling['flagfile_pattern']}`.",
        "",
        f"- **Data.** Source: {data.get('source', '?')}. Target: {data.get('target', '?')}.",
        "- Mean ± sample standard deviation over seeds. Images/s counts both domains' images.",
        "",
        "## Accuracy, steps and speed (final model)", "",
        *_results_lines(scaling["rows"]), "",
        "## Rule and label-free criteria at the final evaluation", "",
        "The rule each B's runs recorded (run.json); the criteria use no target labels.", "",
        *_rule_lines(scaling["rows"]), "",
        f"## Time to target accuracy {threshold:g} (uses target labels)", "",
        f"The first evaluation whose target test accuracy reaches {threshold:g}: its training "
        "seconds and step. It uses target labels, so it is reported only and is **not used "
        "for any choice**.", "",
        *_time_lines(scaling["rows"]),
    ]
    if scaling.get("steps_to_target"):
        lines += ["", *steps_to_target_lines(scaling["steps_to_target"],
                                             scaling["steps_to_target"].get("plot_path", ""))]
    if scaling["without_runs"]:
        lines += ["", "No finished run for B = "
                  f"{', '.join(map(str, scaling['without_runs']))} (--collect_only does not "
                  "train): rerun without it to train them."]
    return "\n".join(lines) + "\n"


def make_scaling_report(options: ReportOptions, domains=None) -> dict:
    """Reports every batch size in its own directory, then writes the scaling table to
    <report_dir>/report.json (key "scaling") and <report_dir>/report.md, and the
    steps-to-target plot to <report_dir>/steps_to_target.png (and --plot_path)."""
    check_scaling_options(options)
    os.makedirs(options.report_dir, exist_ok=True)
    content = scaling_table(options, domains)
    png = steps_plot_png(content["steps_to_target"])
    atomic.write_file(os.path.join(options.report_dir, content["steps_to_target"]["plot"]), png)
    if options.plot_path:
        os.makedirs(os.path.dirname(os.path.abspath(options.plot_path)), exist_ok=True)
        atomic.write_file(options.plot_path, png)
    return write_summary(options.report_dir, "scaling", content, scaling_markdown)
