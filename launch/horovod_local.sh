#!/usr/bin/env bash
# Horovod (Gloo) on this host: N training processes, one per GPU (or N CPU processes).
#
# Usage:
#   launch/horovod_local.sh [N] [trainer flags...]
#   NP=4 launch/horovod_local.sh --flagfile=configs/mnist_mnistm.cfg --model_dir=runs/hvd4
#
# N: the first argument if it is a number, else $NP, else the number of GPUs that
#    nvidia-smi lists, else 2 (CPU). Rank 0 is the chief: it alone writes checkpoints,
#    TensorBoard events and the export to --model_dir. Rerunning the same command
#    resumes from the newest checkpoint there.
# It runs:
#   horovodrun -np N -H localhost:N --gloo $HOROVODRUN_ARGS launch/_rank_exit.sh \
#       <python> -m dann_dist.train [flags]
# and exits with the ranks' status (143 after SIGTERM and a checkpoint, 2 for a bad flag,
# 3 for a NaN loss), where bare horovodrun exits 1 whenever a rank fails: each rank's
# status goes to a file in a temporary directory under RANK_STATUS_ROOT (default $TMPDIR,
# else /tmp), removed at the end; see launch/_ranks.sh for the rule when ranks disagree.
# SIGTERM/SIGINT to this script are passed on to horovodrun, which sends the ranks SIGTERM
# (for both): they checkpoint and stop (exit 143); horovodrun SIGKILLs them after 5 s.
#
# Environment:
#   NP                processes when no number is given (see above)
#   DANN_TRAIN_CMD    the trainer command (default: `<python> -m dann_dist.train`),
#                     e.g. "python tests/run_synthetic.py" in the tests
#   PYTHON            interpreter of the default trainer command (default: `python` on PATH)
#   HOROVODRUN        the horovodrun executable (default: `horovodrun` on PATH)
#   HOROVODRUN_ARGS   extra horovodrun options, e.g. "--start-timeout 60 --verbose"
#   RANK_STATUS_ROOT  where the ranks' exit-status directory is made (see above)
#   DRY_RUN=1         print the command instead of running it
# CPU only (no GPU visible): each process gets cores/N TensorFlow threads unless
# TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS are set.
# Needs: Horovod built with TensorFlow and Gloo (`make setup` does it).
# The trainer picks --strategy=horovod itself (auto) when horovodrun starts it.

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if [[ $# -gt 0 ]] && is_uint "$1"; then
    NP=$1
    shift
fi
if [[ -z "${NP:-}" ]]; then
    NP=$(gpu_count)
    (( NP > 0 )) || NP=2
fi
is_uint "$NP" && (( NP > 0 )) || die "N must be a positive integer, got '$NP'"

split_cpu_threads "$NP"
read -r -a extra <<<"${HOROVODRUN_ARGS:-}"

run_ranks_or_print "${HOROVODRUN:-horovodrun}" -np "$NP" -H "localhost:$NP" --gloo \
    ${extra[@]+"${extra[@]}"} "$RANK_EXIT" "${TRAIN_CMD[@]}" "$@"
