#!/usr/bin/env bash
# Builds the project's virtual environment: TensorFlow 2.21 (CPU wheel unless
# DANN_TF_PACKAGE says otherwise), absl-py, tensorboard, numpy, Horovod 0.28.1
# compiled against that TensorFlow (scripts/horovod_build.sh), and dann_dist itself
# (editable).
#
# Idempotent: a stamp records the hash of the inputs; when nothing changed the
# script returns in well under a second.
#
#   VENV=.venv               where the environment lives
#   DANN_TF_PACKAGE          e.g. "tensorflow[and-cuda]==2.21.0" for GPU hosts
#   DANN_SKIP_HOROVOD=1      skip the Horovod build (single/mirrored only)
#   DANN_SKIP_PACKAGE=1      the environment only, not dann_dist (the Dockerfile installs
#                            the code in a later layer, so code edits keep the cached stack)
#   HOROVOD_GPU_OPERATIONS=NCCL, HOROVOD_WITH_MPI=1
#                            opt-in Horovod features (default: Gloo only, CPU
#                            collectives); see scripts/horovod_build.sh for what each needs
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TF_PACKAGE=${DANN_TF_PACKAGE:-tensorflow-cpu==2.21.0}
PY=${PYTHON:-python3}

stamp_inputs() {
  # Whatever changes the environment's contents belongs in this hash.
  cat scripts/setup_env.sh scripts/horovod_build.sh setup.py
  echo "$TF_PACKAGE ${DANN_SKIP_HOROVOD:-0} ${DANN_SKIP_PACKAGE:-0}" \
       "gpu_ops=${HOROVOD_GPU_OPERATIONS:-} mpi=${HOROVOD_WITH_MPI:-}" \
       "cuda=${HOROVOD_CUDA_HOME:-} nccl=${HOROVOD_NCCL_HOME:-}"
}
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
stamp="$VENV/.dann_dist_setup"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

log() { echo "[setup] $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

log "installing $TF_PACKAGE and the Python stack"
"${pip[@]}" install --upgrade "pip>=24" "setuptools<81" wheel
"${pip[@]}" install "$TF_PACKAGE" "absl-py>=2" "tensorboard>=2.20" "numpy>=1.26" \
  "pytest>=8" "pytest-timeout" "pytest-xdist>=3" "cloudpickle" "psutil" "packaging" "pyyaml" "matplotlib" \
  "ruff==0.17.6"

if [[ "${DANN_SKIP_HOROVOD:-0}" != "1" ]]; then
  if bash scripts/horovod_build.sh --check "$VENV/bin/python"; then
    log "horovod already importable with the requested features"
  else
    bash scripts/horovod_build.sh "$VENV/bin/python"
  fi
fi

if [[ "${DANN_SKIP_PACKAGE:-0}" != "1" ]]; then
  log "installing dann_dist (editable)"
  "${pip[@]}" install --no-build-isolation --no-deps -e .
fi

echo "$want" > "$stamp"
log "done: $("$VENV/bin/python" -c 'import tensorflow as tf; print("tensorflow", tf.__version__)')"
