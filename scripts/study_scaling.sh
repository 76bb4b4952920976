#!/bin/bash
# Issue 19's pre-registered study (results/plan.md), one phase at a time, per recipe:
#   scripts/study_scaling.sh pilots paper   # seed 0, three rules at B = 256 and 1024
#   scripts/study_scaling.sh choose paper   # the label-free choice per B (prints it; its
#                                           # flags then go into configs/scaling/b*.cfg)
#   scripts/study_scaling.sh b64 paper      # seeds 1-3 at B = 64 (the baseline, and the
#                                           # strong recipe's target)
#   scripts/study_scaling.sh table paper    # seeds 1-3 at B = 256 and 1024 with the chosen
#                                           # rule (in configs/scaling/b*.cfg), then the table
# (paper or strong). Each phase is report calls that train only what is missing and resume
# what was stopped: rerun the same command after a stop. JOBS=2 runs two at a time, each on
# its own share of the cores (report --placement=auto: one per GPU, else per core set).
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:-}
recipe=${2:-paper}
case "$recipe" in
  paper) prefix="" ;;
  strong) prefix="strong_" ;;
  *) echo "error: recipe '$recipe': give paper or strong" >&2; exit 2 ;;
esac
PY=${PY:-.venv/bin/python}
root=${STUDY_ROOT:-runs/study19}/$recipe
# Budgets above B = 64: twice its examples (3,072,000 per domain: 12,000 and 3,000 steps).
LARGE=(--train_pairs=3072000)

report() {
  "$PY" -m dann_dist.report --adaptations=dann --pad_examples=0 --jobs="${JOBS:-1}" \
    --scaling_flagfile="configs/scaling/${prefix}b{batch_size}.cfg" "$@"
}

target() {
  # The target fixed before the large-batch seeds: paper, from results/scaling.md; the
  # strong recipe, from its own B = 64 seeds (mean - 2 points).
  if [ "$recipe" = paper ]; then echo 0.8098; return; fi
  python3 - "$root/table/b64/report.json" <<'PY'
import json, os, sys
if not os.path.isfile(sys.argv[1]):
    sys.exit(f"error: {sys.argv[1]}: no B = 64 report yet; run the b64 phase first")
summary = json.load(open(sys.argv[1]))["table"]["dann"]["target_accuracy"]
if summary["n"] != 3:
    sys.exit(f"error: {sys.argv[1]}: {summary['n']} finished B = 64 seeds, need 3 (phase b64)")
print(f"{summary['mean'] - 0.02:.4f}")
PY
}

case "$phase" in
  pilots)
    for rule in committed adversary64 adversary64_nesterov; do
      case "$rule" in
        committed) flags=() ;;
        adversary64) flags=(--scale_adversary=false) ;;
        adversary64_nesterov) flags=(--scale_adversary=false --optimizer=nesterov) ;;
      esac
      report --report_dir="$root/pilots/$rule" --batch_sizes=256,1024 --seeds=1 \
        -- "${LARGE[@]}" "${flags[@]}"
    done ;;
  choose)
    "$PY" -m dann_dist.report.choice --pilots="$root/pilots" --batch_sizes=256,1024 ;;
  b64)
    report --report_dir="$root/table" --batch_sizes=64 --first_seed=1 --seeds=3 \
      -- --eval_every=600
    # The baseline with a budget tuned for speed: half the examples, its schedules faster.
    report --report_dir="$root/b64_half" --batch_sizes=64 --first_seed=1 --seeds=3 \
      -- --train_pairs=768000 --eval_every=300 ;;
  table)
    t=$(target)
    report --report_dir="$root/table" --batch_sizes=256,1024 --first_seed=1 --seeds=3 \
      --target_accuracy="$t" -- "${LARGE[@]}"
    report --report_dir="$root/table" --batch_sizes=64,256,1024 --first_seed=1 --seeds=3 \
      --collect_only --target_accuracy="$t" --plot_path="results/steps_to_target_$recipe.png" ;;
  *) echo "usage: $0 pilots|choose|b64|table paper|strong (results/plan.md)" >&2; exit 2 ;;
esac
