#!/usr/bin/env bash
# Horovod under Open MPI's mpirun (one host or several).
#
# Usage:
#   NP=8 HOSTS=host1:4,host2:4 launch/mpirun.sh [trainer flags...]
#   NP=4 launch/mpirun.sh --flagfile=configs/mnist_mnistm.cfg           # this host only
#
# It runs:
#   mpirun -np NP [-H HOSTS] -bind-to none -map-by slot \
#       -x PATH -x LD_LIBRARY_PATH -x PYTHONPATH -x NCCL_DEBUG [-x each NCCL_*, HOROVOD_*, TF_CPP_*, \
#       TF_NUM_*, TF_ENABLE_*, TF_GPU_*, TF_FORCE_*, (TF_)XLA_FLAGS set here] \
#       -x DANN_RANK_STATUS_DIR -mca pml ob1 -mca btl ^openib $MPIRUN_ARGS \
#       launch/_rank_exit.sh <python> -m dann_dist.train [flags]
# and exits with the ranks' status, as launch/horovod_local.sh does (RANK_STATUS_ROOT as
# in launch/horovod_hosts.sh).
#
# -bind-to none: do not pin each rank to one core (TensorFlow and tf.data use many
# threads); -map-by slot: fill a host's slots before the next host, so local ranks
# 0..k-1 sit on one host and take GPUs 0..k-1. -x exports variables to remote ranks
# (Open MPI does not forward the environment by default). `-mca pml ob1 -mca btl
# ^openib` keeps Open MPI's own traffic on TCP/shared memory; NCCL (GPU builds) or
# Horovod's MPI ops carry the gradients. Drop them on an InfiniBand cluster whose MPI
# is set up for UCX.
# Needs: Open MPI on every host, and Horovod built WITH MPI (HOROVOD_WITH_MPI=1; the
# `make setup` build is Gloo-only: use horovod_local.sh / horovod_hosts.sh with it).
# Multi-host: passwordless ssh, same repository and venv paths, data on every host (see
# horovod_hosts.sh). Rank 0 is the chief and alone writes --model_dir; the trainer
# chooses --strategy=horovod itself (auto) because mpirun sets OMPI_COMM_WORLD_RANK.
#
# Environment: NP (default: slots of HOSTS, else GPUs, else 2), HOSTS, MPIRUN (the
# executable, default mpirun), MPIRUN_ARGS (extra options), RANK_STATUS_ROOT,
# DANN_TRAIN_CMD, PYTHON, DRY_RUN=1 (print the command only).

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

total=0
if [[ -n "${HOSTS:-}" ]]; then
    IFS=',' read -r -a host_list <<<"$HOSTS"
    for entry in "${host_list[@]}"; do
        [[ "$entry" =~ ^[^:,[:space:]]+:([0-9]+)$ ]] || die "HOSTS entry '$entry' is not host:slots"
        total=$(( total + BASH_REMATCH[1] ))
    done
fi
if [[ -z "${NP:-}" ]]; then
    NP=$total
    (( NP > 0 )) || NP=$(gpu_count)
    (( NP > 0 )) || NP=2
fi
is_uint "$NP" && (( NP > 0 )) || die "NP must be a positive integer, got '$NP'"
[[ -z "${HOSTS:-}" ]] || (( NP <= total )) || die "NP=$NP exceeds the $total slots of HOSTS"
[[ -n "${HOSTS:-}" ]] || split_cpu_threads "$NP"

opts=(-np "$NP")
[[ -n "${HOSTS:-}" ]] && opts+=(-H "$HOSTS")
opts+=(-bind-to none -map-by slot)
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
opts+=(-x PATH -x LD_LIBRARY_PATH -x PYTHONPATH)
# Forward the NCCL, Horovod and TensorFlow runtime settings made here.
for name in $(compgen -e); do
    [[ "$name" =~ ^(NCCL_|HOROVOD_|TF_CPP_|TF_NUM_|TF_ENABLE_|TF_GPU_|TF_FORCE_|TF_XLA_FLAGS$|XLA_FLAGS$) \
       && "$name" != NCCL_DEBUG ]] && opts+=(-x "$name")
done
opts+=(-x NCCL_DEBUG -x DANN_RANK_STATUS_DIR)   # the latter: see launch/_ranks.sh
opts+=(-mca pml ob1 -mca btl ^openib)
read -r -a extra <<<"${MPIRUN_ARGS:-}"

run_ranks_or_print "${MPIRUN:-mpirun}" "${opts[@]}" ${extra[@]+"${extra[@]}"} \
    "$RANK_EXIT" "${TRAIN_CMD[@]}" "$@"
