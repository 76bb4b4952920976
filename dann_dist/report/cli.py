"""The command line of dann_dist.report (see the package docstring)."""

from __future__ import annotations

import os
import sys

from absl import app, flags

from dann_dist import cli
from dann_dist.report import selection
from dann_dist.report.build import make_report
from dann_dist.report.markdown import markdown
from dann_dist.report.options import (
    FILES,
    ORDER,
    SCALING_FLAGFILE,
    TIME_TO_ACCURACY,
    ReportError,
    ReportOptions,
)
from dann_dist.report.recipes import make_recipes_report, parse_recipes, recipes_markdown
from dann_dist.report.scaling import make_scaling_report, scaling_markdown

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("report_dir", "runs/report",
                        "Holds <adaptation>/seed<k>/ (ordinary --model_dir's of dann_dist.train) "
                        "and the report: report.md, report.json, curves.png, features.png, "
                        "tensorboard/.")
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
    _define_scaling_flags()
    flags.DEFINE_list("recipes", [],
                      "NAME=FLAGFILE,...: the recipe table, e.g. paper=configs/mnist_mnistm.cfg,"
                      "strong=configs/mnist_mnistm_strong.cfg. Each recipe is an ordinary report "
                      "in <report_dir>/<NAME>/, its missing runs trained with its flagfile (not "
                      "--train_flagfile); <report_dir>/report.md and report.json (key recipes) "
                      "then hold one row per recipe and method, with the label-free criteria "
                      "and the cost. Empty: the ordinary report.")


def _define_scaling_flags() -> None:
    flags.DEFINE_list("batch_sizes", [],
                      "Global batch sizes B of the scaling table, e.g. 64,256,1024: each B is an "
                      "ordinary report in <report_dir>/b<B>/, its missing runs trained with "
                      "--scaling_flagfile (not --train_flagfile); <report_dir>/report.md and "
                      "report.json (key scaling) then hold the table. Empty: the ordinary report.")
    flags.DEFINE_string("scaling_flagfile", SCALING_FLAGFILE,
                        "Trainer flagfile of batch B for --batch_sizes; {batch_size} becomes B.")
    flags.DEFINE_float("time_to_accuracy", TIME_TO_ACCURACY,
                       "The scaling table reports when target test accuracy first reaches this "
                       "(uses target labels; reported, never used to choose).")


def _batch_sizes(values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        cli.fail(f"--batch_sizes={','.join(values)}: give integers, e.g. 64,256,1024",
                 cli.EXIT_USAGE)


def options_from_flags(train_flags: list[str]) -> ReportOptions:
    return ReportOptions(
        report_dir=FLAGS.report_dir, seeds=FLAGS.seeds, adaptations=tuple(FLAGS.adaptations),
        train_flagfile=FLAGS.train_flagfile, train_command=FLAGS.train_command,
        train_flags=tuple(train_flags), collect_only=FLAGS.collect_only, jobs=FLAGS.jobs,
        pad_examples=FLAGS.pad_examples, entropy_guard=FLAGS.entropy_guard,
        batch_sizes=_batch_sizes(FLAGS.batch_sizes), scaling_flagfile=FLAGS.scaling_flagfile,
        time_to_accuracy=FLAGS.time_to_accuracy, recipes=_recipes(FLAGS.recipes))


def _recipes(values: list[str]) -> tuple[tuple[str, str], ...]:
    try:
        return parse_recipes(values)
    except ReportError as err:
        cli.fail(str(err), err.exit_code)


def _report(options: ReportOptions) -> str:
    """Makes the report the options ask for; returns its markdown."""
    if options.batch_sizes and options.recipes:
        raise ReportError("--batch_sizes and --recipes each make a table of their own: give one.",
                          cli.EXIT_USAGE)
    if options.recipes:
        report = make_recipes_report(options)
        return recipes_markdown(report["recipes"], report["generated"])
    if options.batch_sizes:
        report = make_scaling_report(options)
        return scaling_markdown(report["scaling"], report["generated"])
    return markdown(make_report(options))


def main(argv: list[str]) -> None:
    # absl leaves what follows `--` in argv: the trainer's flags. Anything else there
    # is a stray positional argument.
    stray = [a for a in argv[1:] if not a.startswith("-")]
    if stray:
        cli.fail(f"unexpected arguments {stray}; trainer flags go after `--` as --name=value",
                 cli.EXIT_USAGE)
    try:
        text = _report(options_from_flags(argv[1:]))
    except ReportError as err:
        cli.fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        cli.fail("interrupted; the trainers checkpoint on SIGINT: rerun the same command to "
                 "resume", 130)
    print(text, end="", flush=True)
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
