#!/usr/bin/env bash
# Builds the project's virtual environment: TensorFlow 2.21 (CPU wheel unless
# DANN_TF_PACKAGE says otherwise), absl-py, tensorboard, numpy, Horovod 0.28.1
# compiled against that TensorFlow with Gloo, and dann_dist itself (editable).
#
# Idempotent: a stamp records the hash of the inputs; when nothing changed the
# script returns in well under a second.
#
#   VENV=.venv               where the environment lives
#   DANN_TF_PACKAGE          e.g. "tensorflow[and-cuda]==2.21.0" for GPU hosts
#   DANN_SKIP_HOROVOD=1      skip the Horovod build (single/mirrored only)
#   HOROVOD_GPU_OPERATIONS   passed through for GPU builds (e.g. NCCL)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TF_PACKAGE=${DANN_TF_PACKAGE:-tensorflow-cpu==2.21.0}
HOROVOD_VERSION=0.28.1
PY=${PYTHON:-python3}

stamp_inputs() {
  # Whatever changes the environment's contents belongs in this hash.
  cat scripts/setup_env.sh setup.py
  echo "$TF_PACKAGE ${DANN_SKIP_HOROVOD:-0} ${HOROVOD_GPU_OPERATIONS:-}"
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
  "pytest>=8" "pytest-timeout" "cloudpickle" "psutil" "packaging" "pyyaml" "matplotlib"

if [[ "${DANN_SKIP_HOROVOD:-0}" != "1" ]]; then
  if "$VENV/bin/python" -c "import horovod.tensorflow" 2>/dev/null; then
    log "horovod already importable"
  else
    log "building horovod $HOROVOD_VERSION against the installed TensorFlow (about 3 min on 2 cores; pip caches the wheel)"
    tf_inc=$("$VENV/bin/python" -c "import tensorflow as tf; print(tf.sysconfig.get_include())")
    # TF 2.21 moved or hides three headers that horovod/tensorflow/xla_mpi_ops.cc
    # includes: point the compiler at their new homes and forward the moved one.
    shim=$(mktemp -d)
    mkdir -p "$shim/tensorflow/compiler/xla/client"
    echo '#include "xla/hlo/builder/xla_builder.h"' > "$shim/tensorflow/compiler/xla/client/xla_builder.h"
    export CXXFLAGS="${CXXFLAGS:-} -I$tf_inc/external/highwayhash -I$tf_inc/external/farmhash_archive/src -I$shim"
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    MAKEFLAGS="-j$(nproc)" \
      "${pip[@]}" install --no-build-isolation "horovod==$HOROVOD_VERSION"
    rm -rf "$shim"
    "$VENV/bin/python" -c "import horovod.tensorflow as hvd; hvd.init(); print('horovod', hvd.size())" >&2
  fi
fi

log "installing dann_dist (editable)"
"${pip[@]}" install --no-build-isolation --no-deps -e .

echo "$want" > "$stamp"
log "done: $("$VENV/bin/python" -c 'import tensorflow as tf; print("tensorflow", tf.__version__)')"
