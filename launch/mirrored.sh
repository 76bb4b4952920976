#!/usr/bin/env bash
# tf.distribute.MirroredStrategy: one process driving every GPU of this host. No
# Horovod, no MPI, no ssh.
#
# Usage:
#   launch/mirrored.sh [trainer flags...]
#   CUDA_VISIBLE_DEVICES=0,1 launch/mirrored.sh --flagfile=configs/mnist_mnistm.cfg --model_dir=runs/m2
#
# It runs:
#   <python> -m dann_dist.train --strategy=mirrored [flags]
# (flags given later win, as with any absl flag). One replica per visible GPU; choose the
# GPUs with CUDA_VISIBLE_DEVICES. Without GPUs it runs one replica on the CPU (the
# trainer's tests split the CPU into logical devices to get several). --batch_size is the
# global batch per domain and must be divisible by the number of GPUs.
#
# Environment: DANN_TRAIN_CMD (trainer command, default `<python> -m dann_dist.train`),
# PYTHON, DRY_RUN=1 (print the command only).

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

run_or_print "${TRAIN_CMD[@]}" --strategy=mirrored "$@"
