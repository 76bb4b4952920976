"""The paper's table over several seeds, label-free model selection, proxy A-distance and
feature plots.

  python -m dann_dist.report --report_dir=runs/report --seeds=3
  python -m dann_dist.report --report_dir=runs/report --collect_only
  python -m dann_dist.report --report_dir=runs/r --train_flagfile=configs/smoke.cfg \
      -- --max_train_examples=512
  python -m dann_dist.report --report_dir=runs/scaling --batch_sizes=64,256,1024 --seeds=3

`<report_dir>/<adaptation>/seed<k>/` is an ordinary --model_dir of dann_dist.train. For
every adaptation (--adaptations: source_only, dann, target_only by default, or any
registered method) and seed k in --first_seed .. --first_seed + --seeds - 1, a finished run
(metrics.json at the run's last step) is collected; any other is trained, or resumed
from its checkpoint, by `<train command> --flagfile=<train_flagfile> <flags after -->
--model_dir=... --adaptation=... --seed=k`, its output going to `train.log` in that
directory. --collect_only never trains.

Then, all from the runs' files:
- report.md / report.json: target and source accuracy, mean +- std over seeds, next to
  the paper's numbers; the step and target accuracy picked by each model selection
  criterion of dann_dist.report.selection (none uses target labels, except the row labelled
  oracle); the proxy A-distance of the features of every method but train-on-target;
- curves.png: source/target accuracy, domain accuracy, lambda and learning rate against
  the step, one row per adaptation, one line per seed;
- features.png: 2-D PCA of extracted features of held-out source and target test
  images, source only vs DANN (seed 0, or the lowest seed present); the same images and
  the report's text in TensorBoard under <report_dir>/tensorboard.
Every file is written to a temporary name and renamed into place.

With --batch_sizes, each global batch B is such a report in `<report_dir>/b<B>/`, its
missing runs trained with `--flagfile=configs/scaling/b<B>.cfg` (--scaling_flagfile), and
`<report_dir>/report.md` / report.json (key "scaling") hold the scaling table (see
dann_dist.report.scaling) and the study's measure, steps to a target accuracy fixed
before the study (--target_accuracy), per B and seed, with the runs' gradient noise scale
and a log-log plot against the perfect-scaling line (steps_to_target.png; --plot_path
copies it, e.g. into results/; dann_dist.report.steps_to_target).

--jobs=N trains N runs at a time, each in a slot of its own (--placement=auto|cpu|gpu|none):
one GPU per run (CUDA_VISIBLE_DEVICES; --devices names them), or a disjoint set of CPU
cores per run with its thread counts set to match, so that N runs on N devices take 1/N
of the time instead of oversubscribing one. Measured on a 2-core AVX2 CPU (2026-12-05,
two 1,500-step DANN runs): one after another with TensorFlow's threads (--jobs=1) 449 s,
pinned one per core (--jobs=2 --placement=cpu) 479 s: 0.94x, since one run's step already
kept 1.9 cores busy. On CPUs, placement pays only where one run cannot fill the cores.

Modules: options (flags' dataclass, checks), runs (finding, training, reading runs),
tables, selection, features (proxy_a_distance, feature_plots), curves, markdown, build
(make_report), scaling, steps_to_target, recipes, cli.

Exit status: 0 done; 1 a training run or the data failed; 2 bad flags or a directory
that holds someone else's run; 128+N a training run was stopped by signal N (rerun to
resume).
"""

from dann_dist.report.build import make_report, report_and_runs
from dann_dist.report.cli import run
from dann_dist.report.options import (
                                      NAMES,
                                      ORDER,
                                      PAPER_TARGET_ACCURACY,
                                      ReportError,
                                      ReportOptions,
                                      check_options,
)
from dann_dist.report.runs import requested_train_steps, run_dir, run_state, trainer_argv
from dann_dist.report.scaling import make_scaling_report

__all__ = ["NAMES", "ORDER", "PAPER_TARGET_ACCURACY", "ReportError", "ReportOptions",
           "check_options", "make_report", "make_scaling_report", "report_and_runs",
           "requested_train_steps", "run", "run_dir", "run_state", "trainer_argv"]
