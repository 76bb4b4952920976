#!/usr/bin/env bash
# The speed benchmark on a GPU host: the same figures as `python -m dann_dist.bench` on CPU
# (train steps/s and images/s, evaluation images/s, input pipeline rate, peak memory,
# FLOPs and GFLOP/s, ratios to the origin script's eager step and per-sample evaluation),
# with GPU settings: float32, mixed_float16 at the origin's batch, then a large batch,
# then XLA.
#
#   bash scripts/gpu_bench.sh                 # writes runs/gpu_bench/*.out and *.json
#   BENCH_ARGS="--rounds=3" bash scripts/gpu_bench.sh
#
# Setup is `make setup` with the CUDA wheel of TensorFlow (DANN_TF_PACKAGE) and, by
# default, without Horovod (these benchmarks run one process). Nothing else is installed.
# Written without access to a GPU machine: untested on one (see BENCHMARKS.md).
# scripts/device_check.sh is the shorter all-round check (steps/s included) of a GPU host.
set -euo pipefail

cd "$(dirname "$0")/.."
export DANN_TF_PACKAGE=${DANN_TF_PACKAGE:-tensorflow[and-cuda]==2.21.0}
export DANN_SKIP_HOROVOD=${DANN_SKIP_HOROVOD:-1}
VENV=${VENV:-.venv}
OUT=${OUT_DIR:-runs/gpu_bench}
mkdir -p "$OUT"

bash scripts/setup_env.sh
PY="$VENV/bin/python"

# Fail early and clearly when TensorFlow sees no GPU (wrong wheel, driver, container).
"$PY" - <<'EOF'
import sys
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("TensorFlow", tf.__version__, "GPUs:", gpus, flush=True)
if not gpus:
    sys.exit("no GPU visible to TensorFlow: check the driver and DANN_TF_PACKAGE")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# The origin's per-sample evaluation loop costs a device round trip per op on a GPU: time
# it over 2,000 images and scale to the 9,001 (the bench says so in its output).
read -r -a bench_args <<<"${BENCH_ARGS:-}"
common=(--strategy=single --baseline_eval_loop_examples=2000 "${bench_args[@]}")

failed=0
run() {
  local name=$1 status=0
  shift
  echo "== $name: $PY -m dann_dist.bench ${common[*]} $*"
  "$PY" -m dann_dist.bench "${common[@]}" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" || status=$?
  grep -v '^{' "$OUT/$name.out" || true
  if [[ $status -ne 0 ]]; then
    echo "!! $name failed with exit status $status; the end of $OUT/$name.err:"
    tail -n 20 "$OUT/$name.err"
    failed=1
  else
    tail -n 1 "$OUT/$name.out" >"$OUT/$name.json"
  fi
}

# Same batch as the origin script (128 pairs): the like-for-like ratios.
run float32_b128 --precision=float32 --batch_size=128 --steps=300
run float16_b128 --precision=mixed_float16 --batch_size=128 --steps=300
# GPU-sized batch (the baseline runs at the same batch, so the ratios stay like-for-like).
run float16_b1024 --precision=mixed_float16 --batch_size=1024 --eval_batch_size=4096 --steps=200
run float16_b1024_xla --precision=mixed_float16 --batch_size=1024 --eval_batch_size=4096 \
  --steps=200 --jit_compile

echo "reports in $OUT/*.out (stderr in *.err), the JSON figures in $OUT/*.json"
exit $failed
