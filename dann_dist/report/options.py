"""What a report is asked for: its options, their checks, and the rows it knows."""

from __future__ import annotations

import dataclasses
import os

from dann_dist import cli
from dann_dist.methods import registry
from dann_dist.report import selection

# Rows in table order: every registered method (a new method is a row without a change
# here), source-only first and the train-on-target bound last.
ORDER = ("source_only", "dann",
         *(m for m in registry.names() if m not in ("source_only", "dann", "target_only")),
         "target_only")
# The ordinary report's rows unless --adaptations names others: the paper's table.
DEFAULT_ADAPTATIONS = ("source_only", "dann", "target_only")
NAMES = {**{m: m for m in ORDER}, "source_only": "source only", "dann": "DANN",
         "target_only": "train on target", "cdan": "CDAN+E", "vada": "VADA",
         "dirtt": "DIRT-T"}
# Target (MNIST-M) test accuracy reported by Ganin et al., JMLR 2016 (MNIST -> MNIST-M);
# no entry for the methods that paper did not run.
PAPER_TARGET_ACCURACY = {"source_only": 0.5225, "dann": 0.7666, "target_only": 0.9596}
# Proxy A-distance and feature plots: every method but train-on-target (which sees the
# target's labels, so its features say nothing about label-free alignment).
ANALYSED = tuple(m for m in ORDER if m != "target_only")
OWNED_TRAIN_FLAGS = ("model_dir", "adaptation", "seed")
FILES = {"markdown": "report.md", "json": "report.json", "curves": "curves.png",
         "features": "features.png", "tensorboard": "tensorboard"}
TRAIN_LOG = "train.log"
SCALING_FLAGFILE = "configs/scaling/b{batch_size}.cfg"
TIME_TO_ACCURACY = 0.80
# Where concurrent training runs (--jobs) go: "auto" is "gpu" when GPUs are visible, else
# "cpu", and "none" with --jobs=1; "none" leaves them to share the machine as they start.
PLACEMENTS = ("auto", "none", "cpu", "gpu")


class ReportError(Exception):
    def __init__(self, message: str, exit_code: int = cli.EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


class NoFinishedRunError(ReportError):
    """A report directory without one finished run (a scaling report lists it as missing)."""


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    report_dir: str
    seeds: int = 3
    # Seeds first_seed .. first_seed + seeds - 1: a study's table on seeds its pilots did not
    # use (the pilots chose the rule on seed 0, the table reports seeds 1-3).
    first_seed: int = 0
    adaptations: tuple[str, ...] = DEFAULT_ADAPTATIONS
    train_flagfile: str = "configs/mnist_mnistm.cfg"
    train_command: str = ""  # "" -> this interpreter, -m dann_dist.train
    train_flags: tuple[str, ...] = ()
    collect_only: bool = False
    jobs: int = 1
    pad_examples: int = 2000
    entropy_guard: float = selection.DEFAULT_GUARD
    batch_sizes: tuple[int, ...] = ()  # () -> the ordinary report, else the scaling table
    scaling_flagfile: str = SCALING_FLAGFILE
    time_to_accuracy: float = TIME_TO_ACCURACY
    # Steps to target: the accuracy fixed before the study (None: time_to_accuracy), and a
    # further path of its plot (e.g. results/steps_to_target.png; "" for none).
    target_accuracy: float | None = None
    plot_path: str = ""
    # (name, trainer flagfile, its methods or () for --adaptations): the recipe table
    recipes: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    placement: str = "auto"  # one of PLACEMENTS
    devices: tuple[str, ...] = ()  # GPUs for placement "gpu" (CUDA_VISIBLE_DEVICES entries)


def _check_train_flags(options: ReportOptions) -> None:
    for arg in options.train_flags:
        name = arg.lstrip("-").split("=", 1)[0]
        if name in OWNED_TRAIN_FLAGS:
            raise ReportError(f"trainer flag {arg}: the report sets --{name} for each run.",
                              cli.EXIT_USAGE)


def _check_report_dir(report_dir: str) -> None:
    existing = os.path.abspath(report_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise ReportError(f"--report_dir={report_dir}: {existing} is not a writable "
                          "directory.", cli.EXIT_USAGE)


def _check_placement(options: ReportOptions) -> None:
    if options.placement not in PLACEMENTS:
        raise ReportError(f"--placement={options.placement}: choose among "
                          f"{', '.join(PLACEMENTS)}.", cli.EXIT_USAGE)
    devices = ",".join(options.devices)
    if any(not d or "," in d or d != d.strip() for d in options.devices) or (
            len(set(options.devices)) != len(options.devices)):
        raise ReportError(f"--devices={devices}: give distinct GPU indices or UUIDs, e.g. 0,1.",
                          cli.EXIT_USAGE)
    if options.devices and options.placement in ("none", "cpu"):
        raise ReportError(f"--devices={devices} places runs on GPUs: it needs --placement=gpu "
                          f"or auto, not {options.placement}.", cli.EXIT_USAGE)


def check_options(options: ReportOptions) -> None:
    bad = [a for a in options.adaptations if a not in ORDER]
    if bad or not options.adaptations:
        raise ReportError(f"--adaptations={','.join(options.adaptations)}: choose among "
                          f"{', '.join(ORDER)}.", cli.EXIT_USAGE)
    if (options.seeds < 1 or options.jobs < 1 or options.pad_examples < 0
            or options.first_seed < 0):
        raise ReportError("--seeds and --jobs must be >= 1, --pad_examples and --first_seed "
                          ">= 0.", cli.EXIT_USAGE)
    _check_placement(options)
    _check_train_flags(options)
    if (options.train_flagfile and not options.collect_only
            and not os.path.isfile(options.train_flagfile)):
        raise ReportError(f"--train_flagfile={options.train_flagfile}: no such file (paths are "
                          f"relative to {os.getcwd()}).", cli.EXIT_USAGE)
    _check_report_dir(options.report_dir)
