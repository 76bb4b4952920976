"""make_report: collects (or trains) the runs of one report directory and writes its
files: report.md, report.json, curves.png, features.png and tensorboard/."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil

from dann_dist import atomic, cli
from dann_dist.report import selection
from dann_dist.report.curves import curves_png
from dann_dist.report.features import analyse_features, load_analysis_domains
from dann_dist.report.markdown import markdown
from dann_dist.report.options import (
    ANALYSED,
    FILES,
    ORDER,
    NoFinishedRunError,
    ReportOptions,
    check_options,
)
from dann_dist.report.runs import collect_runs, trainer_argv
from dann_dist.report.tables import data_config, data_description, recipe, table


def write_tensorboard(directory: str, images: dict[str, bytes], text: str) -> None:
    """PNG images and the report as TensorBoard summaries, written beside and swapped in."""
    # Imported here, not at the top: only a report with the feature analysis writes these.
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


def _feature_analysis(options: ReportOptions, runs: dict, domains):
    """(PAD, features PNG, the note saying why not, the domains used)."""
    analysed = [r for r in runs.values() if r["result"] and r["adaptation"] in ANALYSED]
    if not (options.pad_examples and analysed):
        note = ("Not computed: --pad_examples=0." if not options.pad_examples else
                "Not computed: needs a finished run of a method other than target_only.")
        return None, None, note, domains
    if domains is None:
        domains = load_analysis_domains(analysed)
    pad, features_png = analyse_features(options, runs, domains)
    return pad, features_png, None, domains


def _run_entry(run: dict) -> dict:
    result = run["result"]
    return {
        "adaptation": run["adaptation"], "seed": run["seed"], "model_dir": run["model_dir"],
        "status": run["status"],
        "train_steps": result["config"]["train_steps"] if result else None,
        "evaluations": len(result["history"]) if result else 0,
        "target_accuracy": result["metrics"]["target_accuracy"] if result else None,
        "final": result["metrics"] if result else None,
        "selected": result["selected"] if result else None,
    }


def _content(options: ReportOptions, runs: dict, adaptations: list[str], domains,
             pad: dict | None, figures: dict) -> dict:
    complete = [r for r in runs.values() if r["result"]]
    return {
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "report_dir": options.report_dir,
        "seeds": options.seeds,
        "first_seed": options.first_seed,
        "adaptations": adaptations,
        "train_command": shlex.join(trainer_argv(options, "ADAPTATION", 0)[:-3])
        + " --model_dir=<report_dir>/<adaptation>/seed<k> --adaptation=<adaptation> --seed=<k>",
        "train_flagfile": options.train_flagfile,
        "train_flags": list(options.train_flags),
        "entropy_guard": options.entropy_guard,
        "recipe": recipe([r["result"]["config"] for r in complete]),
        "data": {**data_description(runs, domains),
                 "flags": data_config(complete[0]["result"]["config"])},
        "criteria": dict(selection.CRITERIA),
        "label_free_criteria": list(selection.LABEL_FREE),
        "table": table(runs),
        "proxy_a_distance": pad,
        "figures": figures,
        "runs": [_run_entry(r) for _, r in sorted(
            runs.items(), key=lambda kv: (ORDER.index(kv[0][0]), kv[0][1]))],
    }


def _write(report_dir: str, report: dict, text: str, curves: bytes,
           features_png: bytes | None) -> None:
    atomic.write_file(os.path.join(report_dir, FILES["curves"]), curves)
    if features_png is not None:
        atomic.write_file(os.path.join(report_dir, FILES["features"]), features_png)
        write_tensorboard(os.path.join(report_dir, FILES["tensorboard"]),
                          {"features_pca": features_png, "curves": curves}, text)
    atomic.write_file(os.path.join(report_dir, FILES["json"]),
                      json.dumps(report, indent=2, sort_keys=True) + "\n")
    atomic.write_file(os.path.join(report_dir, FILES["markdown"]), text)


def write_summary(report_dir: str, key: str, content: dict, to_markdown) -> dict:
    """A table over several report directories (scaling, recipes): report.json holds
    {"generated", "report_dir", key: content}, report.md to_markdown(content, generated)."""
    report = {"generated": datetime.datetime.now().isoformat(timespec="seconds"),
              "report_dir": report_dir, key: content}
    atomic.write_file(os.path.join(report_dir, FILES["json"]),
                      json.dumps(report, indent=2, sort_keys=True) + "\n")
    atomic.write_file(os.path.join(report_dir, FILES["markdown"]),
                      to_markdown(content, report["generated"]))
    return report


def report_and_runs(options: ReportOptions, domains=None) -> tuple[dict, dict]:
    """make_report, also returning the runs ({(adaptation, seed): run}) it read."""
    check_options(options)
    os.makedirs(options.report_dir, exist_ok=True)
    adaptations = [a for a in ORDER if a in options.adaptations]
    runs = collect_runs(options, adaptations)
    if not any(r["result"] for r in runs.values()):
        raise NoFinishedRunError(f"no finished run under {options.report_dir}: run without "
                                 "--collect_only to train them.", cli.EXIT_USAGE)
    figures = {"curves": FILES["curves"]}
    curves = curves_png(runs)
    pad, features_png, note, domains = _feature_analysis(options, runs, domains)
    if note is None:
        figures["features"] = FILES["features"]
    report = _content(options, runs, adaptations, domains, pad, figures)
    if note:
        report["proxy_a_distance_note"] = note
    text = markdown(report)
    _write(options.report_dir, report, text, curves, features_png)
    return report, runs


def make_report(options: ReportOptions, domains=None) -> dict:
    """Trains or collects the runs, writes report.md, report.json, curves.png,
    features.png and tensorboard/ into options.report_dir; returns the JSON content.
    `domains` (source, target) replaces loading the runs' data for the feature analysis
    (tests pass synthetic ones)."""
    return report_and_runs(options, domains)[0]
