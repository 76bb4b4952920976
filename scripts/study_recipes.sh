#!/bin/bash
# Issue 21's pre-registered ablation (results/plan.md): four candidates x 3 seeds on both
# generated targets. Trains only what is missing and resumes what was stopped: rerun the
# same command after a stop. One run at a time (on 2 AVX2 CPU cores, two runs pinned one per
# core took 0.94x the throughput of one after another, 2026-12-05); JOBS=N on N GPUs.
#   scripts/study_recipes.sh          # both targets
#   scripts/study_recipes.sh 2        # generator version 2 only
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RECIPES=strong=configs/mnist_mnistm_strong.cfg
RECIPES+=,no_bn=configs/ablation/strong_no_bn.cfg
RECIPES+=,channel=configs/ablation/strong_channel.cfg
RECIPES+=,dirtt=configs/mnist_mnistm_dirtt.cfg@dirtt
for version in ${1:-1 2}; do
  case "$version" in 1|2) ;; *) echo "error: version '$version': give 1 or 2" >&2; exit 2 ;; esac
  "$PY" -m dann_dist.report --report_dir="runs/study21/v$version" --recipes="$RECIPES" \
    --adaptations=dann --seeds=3 --jobs="${JOBS:-1}" --placement="${PLACEMENT:-auto}" \
    -- --mnistm_version="$version"
  # The label-free choice on this target (results/plan.md: a 1-point guard).
  "$PY" -m dann_dist.report.choice --recipes_report="runs/study21/v$version/report.json" \
    --guard=0.01 || true
done
