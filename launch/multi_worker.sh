#!/usr/bin/env bash
# tf.distribute.MultiWorkerMirroredStrategy: one worker process per host, each driving
# all of its host's GPUs; run this script once on every host.
#
# Usage (on each host, same WORKERS, its own INDEX):
#   WORKERS=host1:12345,host2:12345 INDEX=0 launch/multi_worker.sh [trainer flags...]   # on host1
#   WORKERS=host1:12345,host2:12345 INDEX=1 launch/multi_worker.sh [trainer flags...]   # on host2
#
# It sets
#   TF_CONFIG={"cluster": {"worker": ["host1:12345", "host2:12345"]},
#              "task": {"type": "worker", "index": INDEX}}
# and runs
#   <python> -m dann_dist.train --strategy=multi_worker [flags]
# WORKERS is host:port per worker, in the same order on every host; each port must be
# free on its host and reachable from all the others (TCP, gRPC). Worker 0 is the chief:
# it alone keeps checkpoints, TensorBoard events and the export in --model_dir; the
# other workers take part in every save (the strategy requires it) but write to a
# scratch directory under --model_dir that is deleted again. On resume the chief's
# checkpoint is restored and its values copied to every worker, so --model_dir needs to
# be complete on the chief's host only. Every worker loads the data itself and must be
# given the same flags.
# Failures: workers wait for each other at start-up, without a time limit, and while
# they wait TensorFlow ignores SIGTERM (stop them with SIGKILL). Once training runs, a
# worker that dies makes the others fail within seconds (UnavailableError); rerun all
# of them to resume. For several local workers (tests, trying it out) use
# launch/multi_worker_local.sh, which stops the others when one fails.
#
# Environment: WORKERS, INDEX (required); DANN_TRAIN_CMD (trainer command, default
# `<python> -m dann_dist.train`), PYTHON, DRY_RUN=1 (print TF_CONFIG and the command).

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[[ -n "${WORKERS:-}" ]] || die "set WORKERS=host1:port,host2:port (the same list on every worker)"
is_uint "${INDEX:-}" || die "set INDEX to this worker's position in WORKERS (0 = chief)"

IFS=',' read -r -a worker_list <<<"$WORKERS"
(( INDEX < ${#worker_list[@]} )) || die "INDEX=$INDEX but WORKERS lists ${#worker_list[@]} workers"
quoted=()
for worker in "${worker_list[@]}"; do
    [[ "$worker" =~ ^[^:\",[:space:]]+:[0-9]+$ ]] || die "WORKERS entry '$worker' is not host:port"
    quoted+=("\"$worker\"")
done
joined=$(IFS=','; echo "${quoted[*]}")
export TF_CONFIG="{\"cluster\": {\"worker\": [${joined//,/, }]}, \"task\": {\"type\": \"worker\", \"index\": $INDEX}}"

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "TF_CONFIG=$TF_CONFIG"
fi
run_or_print "${TRAIN_CMD[@]}" --strategy=multi_worker "$@"
