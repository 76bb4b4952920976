# Sourced by the launch/*.sh scripts; not a launcher itself.
#
# Sets:
#   DANN_ROOT   the repository root (added to PYTHONPATH so `python -m dann_dist.train`
#               works from any directory without `pip install -e .`)
#   TRAIN_CMD   array: the trainer command. Default: `<python> -m dann_dist.train`, where
#               <python> is $PYTHON, else the absolute path of `python` (or `python3`) on
#               PATH, so that remote hosts run the same interpreter (same venv path).
#               Override with DANN_TRAIN_CMD="..." (split on spaces: no quoted arguments),
#               e.g. DANN_TRAIN_CMD="python tests/run_synthetic.py".
# Provides:
#   run_or_print CMD...   runs CMD (exec), or prints it when DRY_RUN=1
#   run_ranks_or_print CMD...
#                         for multi-process launchers (horovodrun, mpirun) whose trainer
#                         command starts with "$RANK_EXIT": runs CMD and exits with the
#                         ranks' common status instead of CMD's own (launch/_ranks.sh), or
#                         prints CMD when DRY_RUN=1
#   is_uint STR           true when STR is a non-negative integer
#   gpu_count             number of NVIDIA GPUs on this host (0 without nvidia-smi)
#   die MSG               prints to stderr and exits 2

DANN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/_ranks.sh
source "$DANN_ROOT/launch/_ranks.sh"
export PYTHONPATH="${DANN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

die() {
    echo "error: $*" >&2
    exit 2
}

is_uint() {
    [[ "$1" =~ ^[0-9]+$ ]]
}

gpu_count() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

cpu_count() {
    nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1
}

_default_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif command -v python >/dev/null 2>&1; then
        command -v python
    elif command -v python3 >/dev/null 2>&1; then
        command -v python3
    else
        die "no python on PATH: activate the project's venv or set PYTHON=/path/to/python"
    fi
}

if [[ -n "${DANN_TRAIN_CMD:-}" ]]; then
    read -r -a TRAIN_CMD <<<"$DANN_TRAIN_CMD"
else
    _python=$(_default_python) || exit 2
    TRAIN_CMD=("$_python" -m dann_dist.train)
fi

# CPU-only runs of several processes on one host: give each its share of the cores
# (TensorFlow reads these variables at start-up) unless the caller set them.
split_cpu_threads() {
    local processes=$1
    if [[ "$(gpu_count)" -eq 0 ]]; then
        local share=$(( $(cpu_count) / processes ))
        (( share < 1 )) && share=1
        export TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-$share}"
        export TF_NUM_INTEROP_THREADS="${TF_NUM_INTEROP_THREADS:-$share}"
    fi
}

run_or_print() {
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        local arg line=""
        for arg in "$@"; do
            if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then
                line+="$arg "
            else
                line+="$(printf '%q' "$arg") "
            fi
        done
        echo "${line% }"
        exit 0
    fi
    exec "$@"
}

run_ranks_or_print() {
    [[ "${DRY_RUN:-0}" == 1 ]] && run_or_print "$@"
    run_ranks "$@"
}
