#!/usr/bin/env bash
# The one place that knows how Horovod 0.28.1 is built for this project: its build flags
# and the include fix that TensorFlow 2.21 needs. scripts/setup_env.sh and the Dockerfile
# both call it, so a laptop venv and the cluster image get the same Horovod.
#
#   bash scripts/horovod_build.sh PYTHON            build and install into PYTHON's env
#   bash scripts/horovod_build.sh --check PYTHON    exit 0 if the installed Horovod
#                                                   already has the requested features
#
# Opt-in features (the default is Gloo only, CPU collectives: what `make setup` always
# built; on a GPU host TensorFlow then copies GPU tensors to host memory for each
# all-reduce, see BENCHMARKS.md "GPU device check"):
#   HOROVOD_GPU_OPERATIONS=NCCL  GPU collectives through NCCL. Needs nvcc (CUDA toolkit:
#                                HOROVOD_CUDA_HOME, else nvcc on PATH) and NCCL 2
#                                (HOROVOD_NCCL_HOME, else the pip package nvidia-nccl-cu12
#                                that tensorflow[and-cuda] installs).
#   HOROVOD_WITH_MPI=1           MPI controller and CPU collectives (for mpirun, Slurm,
#                                the MPI Operator). Needs an MPI with mpicc (libopenmpi-dev).
# Exit status: 0 built (or, with --check, already as requested); 1 build or check failed;
# 2 bad usage or a bad value of the variables above.
set -euo pipefail

HOROVOD_VERSION=0.28.1
# TensorFlow imports below only answer questions: keep its start-up chatter out of the log.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

usage() { echo "usage: $0 [--check] PYTHON" >&2; exit 2; }
check_only=0
if [[ "${1:-}" == "--check" ]]; then check_only=1; shift; fi
[[ $# -eq 1 ]] || usage
PY=$1
[[ -f "$PY" && -x "$PY" ]] || { echo "$PY: not a Python executable (e.g. .venv/bin/python)" >&2
                                exit 2; }
log() { echo "[horovod_build] $*" >&2; }

gpu_ops=${HOROVOD_GPU_OPERATIONS:-}
with_mpi=${HOROVOD_WITH_MPI:-0}
case "$gpu_ops" in
  ""|NCCL) ;;
  *) echo "HOROVOD_GPU_OPERATIONS=$gpu_ops: use NCCL, or leave it unset for the Gloo-only" \
          "CPU build" >&2; exit 2 ;;
esac
case "$with_mpi" in
  0|1) ;;
  *) echo "HOROVOD_WITH_MPI=$with_mpi: use 1, or leave it unset for no MPI" >&2; exit 2 ;;
esac

# Whether the Horovod that PY imports has exactly the features asked for.
has_requested_features() {
  "$PY" - "$gpu_ops" "$with_mpi" <<'EOF' 2>/dev/null
import sys
import horovod.tensorflow as hvd
want_nccl, want_mpi = sys.argv[1] == "NCCL", sys.argv[2] == "1"
ok = hvd.gloo_built() and bool(hvd.nccl_built()) == want_nccl and hvd.mpi_built() == want_mpi
sys.exit(0 if ok else 1)
EOF
}

if [[ $check_only == 1 ]]; then
  has_requested_features
  exit
fi

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT

# --- The TF 2.21 include fix ------------------------------------------------------------
# horovod/tensorflow/xla_mpi_ops.cc includes three headers that TF 2.21 moved or hides:
# highwayhash and farmhash ship under <tf include>/external/..., and
# tensorflow/compiler/xla/client/xla_builder.h became xla/hlo/builder/xla_builder.h, which a
# forwarding header on the include path restores. Its GPU part (NCCL builds) also names
# xla::StatusOr, which TF 2.21's XLA dropped for absl::StatusOr: the same header, included
# by that file alone, brings the old name back.
tf_inc=$("$PY" -c "import tensorflow as tf; print(tf.sysconfig.get_include())")
mkdir -p "$workdir/include/tensorflow/compiler/xla/client"
cat >"$workdir/include/tensorflow/compiler/xla/client/xla_builder.h" <<'EOF'
#include "xla/hlo/builder/xla_builder.h"
#include "absl/status/statusor.h"
namespace xla { template <typename T> using StatusOr = absl::StatusOr<T>; }
EOF
export CXXFLAGS="${CXXFLAGS:-} -I$tf_inc/external/highwayhash \
-I$tf_inc/external/farmhash_archive/src -I$workdir/include"

# --- Build flags --------------------------------------------------------------------------
export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
if [[ $with_mpi == 1 ]]; then
  export HOROVOD_WITH_MPI=1
  unset HOROVOD_WITHOUT_MPI
  command -v mpicc >/dev/null || {
    log "HOROVOD_WITH_MPI=1 needs an MPI compiler wrapper (mpicc) on PATH:" \
        "apt-get install libopenmpi-dev openmpi-bin"; exit 1; }
else
  export HOROVOD_WITHOUT_MPI=1
  unset HOROVOD_WITH_MPI
fi
if [[ -n $gpu_ops ]]; then
  export HOROVOD_GPU_OPERATIONS=$gpu_ops HOROVOD_GPU=CUDA
  # The CUDA toolkit: HOROVOD_CUDA_HOME, CUDA_HOME, /usr/local/cuda, or nvcc's on PATH.
  HOROVOD_CUDA_HOME=${HOROVOD_CUDA_HOME:-${CUDA_HOME:-}}
  if [[ -z $HOROVOD_CUDA_HOME && -x /usr/local/cuda/bin/nvcc ]]; then
    HOROVOD_CUDA_HOME=/usr/local/cuda
  elif [[ -z $HOROVOD_CUDA_HOME ]]; then
    nvcc=$(command -v nvcc) || {
      log "HOROVOD_GPU_OPERATIONS=$gpu_ops needs nvcc: set HOROVOD_CUDA_HOME to a CUDA" \
          "12 toolkit (the version of TensorFlow's CUDA wheels)"; exit 1; }
    HOROVOD_CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
  fi
  export HOROVOD_CUDA_HOME
  "$HOROVOD_CUDA_HOME/bin/nvcc" --version | tail -n 1 >&2
  if [[ -z ${HOROVOD_NCCL_HOME:-} ]]; then
    # The NCCL that tensorflow[and-cuda] installs: link the same library TF loads.
    # nvidia.nccl is a namespace package (no __init__.py): its folder is __path__[0].
    nccl=$("$PY" -c "import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])" 2>/dev/null) || {
      log "no NCCL: set HOROVOD_NCCL_HOME, or install nvidia-nccl-cu12"; exit 1; }
    # The wheel has lib/libnccl.so.2 only; CMake's find_library looks for libnccl.so.
    mkdir -p "$workdir/nccl/lib"
    ln -s "$nccl/lib/libnccl.so.2" "$workdir/nccl/lib/libnccl.so"
    ln -s "$nccl/include" "$workdir/nccl/include"
    export HOROVOD_NCCL_HOME=$workdir/nccl
    # No LD_LIBRARY_PATH needed at run time: the library records where libnccl.so.2 is.
    export LDFLAGS="${LDFLAGS:-} -Wl,-rpath,$nccl/lib"
  fi
  export HOROVOD_NCCL_LINK=SHARED
  # TF 2.21 no longer exports stream_executor::gpu::AsGpuStreamValue, which Horovod's GPU
  # kernels call to find the CUDA stream of a TF op (without it the library builds, then
  # fails to load: "undefined symbol ...AsGpuStreamValue..."). A small library in the venv
  # defines it again from the stream's platform handle, and Horovod links it.
  compat=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
  compat=$compat/dann_dist_hvd_compat
  mkdir -p "$compat"
  cat >"$workdir/as_gpu_stream_value.cc" <<'EOF'
#include <cuda_runtime_api.h>
#include "xla/stream_executor/stream.h"
namespace stream_executor {
namespace gpu {
cudaStream_t AsGpuStreamValue(Stream* stream) {
  return static_cast<cudaStream_t>(stream->platform_specific_handle().stream);
}
}  // namespace gpu
}  // namespace stream_executor
EOF
  # Linked to TF's framework library (absl lives there): executables that CMake links
  # while probing the compiler must resolve every symbol.
  read -r -a tf_flags <<<"$("$PY" -c "import tensorflow as tf; s = tf.sysconfig
print(' '.join(s.get_compile_flags() + s.get_link_flags() + ['-Wl,-rpath,' + s.get_lib()]))")"
  "${CXX:-c++}" -O2 -w -fPIC -shared -I"$HOROVOD_CUDA_HOME/include" \
    "$workdir/as_gpu_stream_value.cc" "${tf_flags[@]}" -o "$compat/libhvd_tf_stream.so"
  export LDFLAGS="${LDFLAGS:-} -L$compat -Wl,--no-as-needed -lhvd_tf_stream -Wl,-rpath,$compat"
  # Machine code for A100 (8.0) and H100/H200 (9.0), PTX for newer: all the archs nvcc knows
  # (Horovod's default) triple the build time.
  export HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-80,90}
  log "CUDA toolkit $HOROVOD_CUDA_HOME, NCCL $HOROVOD_NCCL_HOME"
fi
# A wheel cache of our own, keyed by everything the build depends on: pip's cache keys the
# wheel it builds from the sdist by name and version only, so it would hand a Gloo-only wheel
# built against tensorflow-cpu to an NCCL build against the CUDA wheel, and vice versa.
key=$( { cat "$0"; echo "$HOROVOD_VERSION $gpu_ops $with_mpi ${HOROVOD_CUDA_HOME:-}";
         "$PY" -c "import sys, tensorflow as tf; print(sys.version, tf.__version__,
tf.test.is_built_with_cuda())"; } | sha256sum | cut -c1-16)
cache=${DANN_HOROVOD_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/dann_dist/horovod-wheels}/$key
if ! compgen -G "$cache/horovod-*.whl" >/dev/null; then
  log "building horovod $HOROVOD_VERSION (GPU operations: ${gpu_ops:-none}, MPI: $with_mpi;" \
      "about 3 min on 2 cores; the wheel is kept in $cache)"
  MAKEFLAGS="-j$(nproc)" "$PY" -m pip --disable-pip-version-check -q wheel --no-cache-dir \
    --no-build-isolation --no-deps -w "$workdir/wheel" "horovod==$HOROVOD_VERSION"
  mkdir -p "$(dirname "$cache")"
  rm -rf "$cache.tmp" "$cache" && mv "$workdir/wheel" "$cache.tmp" && mv "$cache.tmp" "$cache"
fi
# --no-deps keeps TensorFlow's pins untouched; Horovod's own needs (cloudpickle, psutil,
# pyyaml, packaging) come from setup_env.sh or the Dockerfile.
"$PY" -m pip --disable-pip-version-check -q install --force-reinstall --no-deps \
  "$cache"/horovod-*.whl

has_requested_features || {
  log "the installed horovod lacks a requested feature:" \
      "$("$PY" -c 'import horovod.tensorflow as h; print("gloo", h.gloo_built(),
"nccl", h.nccl_built(), "mpi", h.mpi_built())' 2>&1 | tail -n 1)"
  exit 1; }
# No hvd.init() here: an MPI build would start MPI, which refuses root without
# OMPI_ALLOW_RUN_AS_ROOT (image builds run as root).
"$PY" -c "import horovod, horovod.tensorflow as hvd; print('horovod', horovod.__version__,
'gloo', hvd.gloo_built(), 'nccl', hvd.nccl_built(), 'mpi', hvd.mpi_built())" >&2
