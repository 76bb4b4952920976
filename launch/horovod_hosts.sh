#!/usr/bin/env bash
# Horovod (Gloo) across several hosts.
#
# Usage:
#   HOSTS=host1:4,host2:4 launch/horovod_hosts.sh [trainer flags...]
#   HOSTS=host1:4,host2:4 NP=6 launch/horovod_hosts.sh --flagfile=configs/mnist_mnistm.cfg
#
# HOSTS is horovodrun's -H list: host:slots, one slot per process (per GPU). NP defaults
# to the sum of the slots. Run it on one of the hosts (normally host1); rank 0 runs on
# the first host and is the chief: it alone writes --model_dir.
# It runs:
#   horovodrun -np NP -H HOSTS --gloo [--network-interface IFACE] $HOROVODRUN_ARGS \
#       launch/_rank_exit.sh <python> -m dann_dist.train [flags]
# and exits with the ranks' status, not horovodrun's 1 (see launch/horovod_local.sh and
# launch/_ranks.sh). The ranks write it to a directory under RANK_STATUS_ROOT (default
# $TMPDIR, else /tmp) of the launching host: set RANK_STATUS_ROOT to a directory on a
# shared filesystem so that the other hosts' ranks count too; otherwise only the
# launching host's ranks do (they fail or stop like the others in most cases).
#
# What every host needs:
#   - passwordless ssh from the launching host (`ssh host2 true` must work without a
#     prompt; add the hosts to ~/.ssh/known_hosts first; SSH_PORT / SSH_IDENTITY_FILE
#     are passed on as horovodrun's -p / -i);
#   - the repository at the same path and the same venv at the same path: horovodrun
#     runs `cd $PWD; <python> ...` over ssh, and <python> is the absolute path of the
#     launching host's interpreter;
#   - the data: each process loads it itself, so --data_dir (or the default cache) must
#     hold it on every host, or point to a shared filesystem;
#   - --model_dir on a shared filesystem if any host other than the first may become
#     rank 0 on a later run (resume reads the chief's checkpoints).
# Network: Horovod's Gloo rendezvous and all-reduce use TCP between all hosts. On hosts
# with several interfaces set IFACE=eth0 (the interface the hosts reach each other on).
# GPUs: one process per GPU; each rank takes the GPU of its local rank. For GPU
# all-reduce Horovod must be built with HOROVOD_GPU_OPERATIONS=NCCL; then NCCL carries
# the gradients (NCCL_SOCKET_IFNAME=eth0 picks its interface, NCCL_DEBUG=INFO shows
# what it chose, NCCL_IB_DISABLE=1 forces TCP when InfiniBand misbehaves). Horovod
# exports the launching environment (NCCL_*, TF_*, PYTHONPATH) to every rank.
#
# Environment: HOSTS (required), NP, IFACE, SSH_PORT, SSH_IDENTITY_FILE, HOROVODRUN,
# HOROVODRUN_ARGS, RANK_STATUS_ROOT, DANN_TRAIN_CMD, PYTHON, DRY_RUN=1 (print the command
# only).

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[[ -n "${HOSTS:-}" ]] || die "set HOSTS=host1:slots,host2:slots (e.g. HOSTS=node1:4,node2:4)"

total=0
IFS=',' read -r -a host_list <<<"$HOSTS"
for entry in "${host_list[@]}"; do
    [[ "$entry" =~ ^[^:,[:space:]]+:([0-9]+)$ ]] || die "HOSTS entry '$entry' is not host:slots"
    total=$(( total + BASH_REMATCH[1] ))
done
NP=${NP:-$total}
is_uint "$NP" && (( NP > 0 && NP <= total )) || die "NP=$NP must be in 1..$total (the slots of HOSTS)"

opts=(-np "$NP" -H "$HOSTS" --gloo)
[[ -n "${IFACE:-}" ]] && opts+=(--network-interface "$IFACE")
[[ -n "${SSH_PORT:-}" ]] && opts+=(-p "$SSH_PORT")
[[ -n "${SSH_IDENTITY_FILE:-}" ]] && opts+=(-i "$SSH_IDENTITY_FILE")
read -r -a extra <<<"${HOROVODRUN_ARGS:-}"

run_ranks_or_print "${HOROVODRUN:-horovodrun}" "${opts[@]}" ${extra[@]+"${extra[@]}"} \
    "$RANK_EXIT" "${TRAIN_CMD[@]}" "$@"
