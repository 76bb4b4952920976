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
    DEFAULT_ADAPTATIONS,
    FILES,
    ORDER,
    PLACEMENTS,
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
    flags.DEFINE_integer("seeds", 3, "How many seeds per adaptation: --first_seed .. "
                         "--first_seed + S - 1.", lower_bound=1)
    flags.DEFINE_integer("first_seed", 0, "The first seed (e.g. 1 for a table on seeds that "
                         "pilots on seed 0 did not use).", lower_bound=0)
    flags.DEFINE_list("adaptations", list(DEFAULT_ADAPTATIONS),
                      f"Rows of the table, any of {', '.join(ORDER)} (the registered "
                      "methods, dann_dist/methods/registry.py).")
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
    flags.DEFINE_integer("jobs", 1, "Training runs at a time, each in a slot of its own "
                         "(see --placement).", lower_bound=1)
    _define_placement_flags()
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
                      "--train_flagfile) for each of --adaptations, or for the one method "
                      "named by NAME=FLAGFILE@METHOD (e.g. dirtt=configs/mnist_mnistm_dirtt.cfg"
                      "@dirtt); <report_dir>/report.md and report.json (key recipes) "
                      "then hold one row per recipe and method, with the label-free criteria "
                      "and the cost. Empty: the ordinary report.")


def _define_placement_flags() -> None:
    flags.DEFINE_enum("placement", "auto", list(PLACEMENTS),
                      "Where the --jobs concurrent runs go. gpu: one run per GPU "
                      "(CUDA_VISIBLE_DEVICES; --devices, else CUDA_VISIBLE_DEVICES, else "
                      "nvidia-smi -L), the cores shared out too; cpu: each run pinned to its "
                      "own share of the cores this command may use, with TF_NUM_INTRAOP_THREADS,"
                      " TF_NUM_INTEROP_THREADS and OMP_NUM_THREADS set to that share; none: "
                      "runs share everything (with more than one, TF_FORCE_GPU_ALLOW_GROWTH="
                      "true); auto: gpu if a GPU is found, else cpu, none with --jobs=1. With "
                      "fewer GPUs or cores than --jobs, fewer runs go at a time.")
    flags.DEFINE_list("devices", [], "GPUs for --placement=gpu/auto, as CUDA_VISIBLE_DEVICES "
                      "entries (indices or UUIDs), e.g. 0,1,2,3. Empty: found as --placement "
                      "says.")


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
    flags.DEFINE_float("target_accuracy", None,
                       "Steps to target, the scaling study's measure: the target test accuracy "
                       "fixed before the study (e.g. the B = 64 recipe's 3-seed mean minus 2 "
                       "points); the report writes it down. Default: --time_to_accuracy.")
    flags.DEFINE_string("plot_path", "",
                        "Also write the scaling report's steps-to-target plot (log-log, "
                        "with the perfect-scaling line) here, e.g. results/steps_to_target.png; "
                        "it is always written to <report_dir>/steps_to_target.png.")


def _batch_sizes(values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        cli.fail(f"--batch_sizes={','.join(values)}: give integers, e.g. 64,256,1024",
                 cli.EXIT_USAGE)


def options_from_flags(train_flags: list[str]) -> ReportOptions:
    return ReportOptions(
        report_dir=FLAGS.report_dir, seeds=FLAGS.seeds, first_seed=FLAGS.first_seed,
        adaptations=tuple(FLAGS.adaptations),
        train_flagfile=FLAGS.train_flagfile, train_command=FLAGS.train_command,
        train_flags=tuple(train_flags), collect_only=FLAGS.collect_only, jobs=FLAGS.jobs,
        pad_examples=FLAGS.pad_examples, entropy_guard=FLAGS.entropy_guard,
        batch_sizes=_batch_sizes(FLAGS.batch_sizes), scaling_flagfile=FLAGS.scaling_flagfile,
        time_to_accuracy=FLAGS.time_to_accuracy, target_accuracy=FLAGS.target_accuracy,
        plot_path=FLAGS.plot_path, recipes=_recipes(FLAGS.recipes),
        placement=FLAGS.placement, devices=tuple(FLAGS.devices))


def _recipes(values: list[str]) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    try:
        return parse_recipes(values)
    except ReportError as err:
        cli.fail(str(err), err.exit_code)


def _report(options: ReportOptions) -> str:
    """Makes the report the options ask for; returns its markdown."""
    if options.batch_sizes and options.recipes:
        raise ReportError("--batch_sizes and --recipes each make a table of their own: give one.",
                          cli.EXIT_USAGE)
    if (options.target_accuracy is not None or options.plot_path) and not options.batch_sizes:
        raise ReportError("--target_accuracy and --plot_path belong to the scaling table: give "
                          "--batch_sizes too.", cli.EXIT_USAGE)
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
    # The usage text is the package docstring: report/__main__.py only points to it.
    return cli.parse_flags_or_exit(argv, doc=sys.modules["dann_dist.report"].__doc__)


def run() -> None:
    define_flags()
    app.run(main, flags_parser=_parse_flags)
