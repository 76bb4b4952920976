#!/usr/bin/env bash
# N MultiWorkerMirroredStrategy workers on this host (tests, trying multi-worker out).
#
# Usage:
#   launch/multi_worker_local.sh N [trainer flags...]
#   launch/multi_worker_local.sh N COMMAND [ARGS...]
#   launch/multi_worker_local.sh 2 --flagfile=configs/smoke.cfg --model_dir=runs/mw2
#   launch/multi_worker_local.sh 2 python tests/run_synthetic.py --strategy=multi_worker --model_dir=/tmp/mw
#
# Picks N free localhost ports and starts N workers, worker i with
#   TF_CONFIG={"cluster": {"worker": ["localhost:P0", ...]}, "task": {"type": "worker", "index": i}}
# Worker 0 is the chief (it alone keeps --model_dir's checkpoints, events and export).
# Without COMMAND (nothing, or flags starting with '-') each worker runs
#   $DANN_TRAIN_CMD --strategy=multi_worker [flags]    (default `<python> -m dann_dist.train`)
# With COMMAND, each worker runs COMMAND ARGS as given (the trainer's --strategy=auto picks
# multi_worker itself from TF_CONFIG).
#
# Output: worker i writes to $LOG_DIR/worker-i.log; the chief's log is also shown here
# live (QUIET=1: not). When all workers exit 0 this exits 0. As soon as one fails, the
# others get SIGTERM (the trainer checkpoints and stops), then SIGKILL after $GRACE
# seconds, the failed worker's last log lines are printed, and this exits with its
# status. After $TIMEOUT seconds all workers are stopped the same way and this exits
# 124. SIGINT/SIGTERM to this script are passed to the workers as SIGTERM (graceful
# stop; rerun the same command to resume).
#
# Environment:
#   TIMEOUT          seconds before everything is stopped (default 86400)
#   GRACE            seconds between SIGTERM and SIGKILL (default 20)
#   LOG_DIR          directory of the worker logs (default: a new mktemp -d directory)
#   QUIET=1          do not echo the chief's log
#   DANN_TRAIN_CMD, PYTHON   the default trainer command (see launch/_common.sh)
# CPU only (no GPU visible): each worker gets cores/N TensorFlow threads unless
# TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS are set. With GPUs, every worker uses
# every visible GPU: on one GPU host prefer launch/mirrored.sh, or set
# CUDA_VISIBLE_DEVICES per worker yourself.

set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[[ $# -ge 1 ]] && is_uint "$1" && (( $1 > 0 )) || die "usage: $0 N [trainer flags... | COMMAND ARGS...]"
N=$1
shift
if [[ $# -eq 0 || "$1" == -* ]]; then
    cmd=("${TRAIN_CMD[@]}" --strategy=multi_worker "$@")
else
    cmd=("$@")
fi
TIMEOUT=${TIMEOUT:-86400}
GRACE=${GRACE:-20}
is_uint "$TIMEOUT" && is_uint "$GRACE" || die "TIMEOUT and GRACE are whole seconds"
LOG_DIR=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/multi_worker.XXXXXX")}
mkdir -p "$LOG_DIR"
split_cpu_threads "$N"

# N distinct free ports: bind all of them at once, then release them for the workers.
port_python=$(command -v python3 || command -v python) || die "python3 is needed to find free ports"
read -r -a ports <<<"$("$port_python" - "$N" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("localhost", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
(( ${#ports[@]} == N )) || die "could not find $N free ports"
workers=$(printf '"localhost:%s", ' "${ports[@]}")
workers=${workers%, }

pids=()
status=()
tail_pid=""

log() { echo "[multi_worker_local] $*" >&2; }

stop_workers() {  # SIGTERM to every live worker, SIGKILL to those left after $GRACE s.
    local i deadline
    for i in "${!pids[@]}"; do
        [[ -z "${status[i]}" ]] && kill -TERM -- "-${pids[i]}" 2>/dev/null
    done
    deadline=$(( SECONDS + GRACE ))
    while (( SECONDS < deadline )); do
        local alive=0
        for i in "${!pids[@]}"; do
            kill -0 "${pids[i]}" 2>/dev/null && alive=1
        done
        (( alive )) || break
        sleep 0.5
    done
    for i in "${!pids[@]}"; do
        if kill -0 "${pids[i]}" 2>/dev/null; then
            log "worker $i did not stop within ${GRACE}s: SIGKILL"
            kill -KILL -- "-${pids[i]}" 2>/dev/null
        fi
    done
    for i in "${!pids[@]}"; do
        if [[ -z "${status[i]}" ]]; then
            wait "${pids[i]}" 2>/dev/null
            status[i]=$?
        fi
    done
}

finish() {  # finish EXIT_CODE: stop what is left, report, exit.
    trap - INT TERM
    stop_workers
    [[ -n "$tail_pid" ]] && kill "$tail_pid" 2>/dev/null && wait "$tail_pid" 2>/dev/null
    local i
    for i in "${!pids[@]}"; do
        log "worker $i exited with status ${status[i]} (log: $LOG_DIR/worker-$i.log)"
    done
    exit "$1"
}

on_signal() {
    log "caught SIG$1: stopping the workers (they checkpoint first)"
    finish $(( 128 + $2 ))
}
trap 'on_signal INT 2' INT
trap 'on_signal TERM 15' TERM

log "$N workers on ports ${ports[*]}; logs in $LOG_DIR; timeout ${TIMEOUT}s"
for (( i = 0; i < N; i++ )); do
    : >"$LOG_DIR/worker-$i.log"
    # Own session per worker: its whole process tree can be signalled as a group.
    TF_CONFIG="{\"cluster\": {\"worker\": [$workers]}, \"task\": {\"type\": \"worker\", \"index\": $i}}" \
        setsid "${cmd[@]}" >"$LOG_DIR/worker-$i.log" 2>&1 </dev/null &
    pids[i]=$!
    status[i]=""
done
if [[ "${QUIET:-0}" != 1 ]]; then
    tail -n +1 -F --pid=$$ "$LOG_DIR/worker-0.log" 2>/dev/null &
    tail_pid=$!
fi

deadline=$(( SECONDS + TIMEOUT ))
running=$N
while (( running > 0 )); do
    for i in "${!pids[@]}"; do
        [[ -n "${status[i]}" ]] && continue
        kill -0 "${pids[i]}" 2>/dev/null && continue
        wait "${pids[i]}"
        status[i]=$?
        running=$(( running - 1 ))
        if (( status[i] != 0 )); then
            log "worker $i failed with status ${status[i]}; stopping the others. Its last lines:"
            tail -n 30 "$LOG_DIR/worker-$i.log" | sed "s/^/  [worker $i] /" >&2
            finish "${status[i]}"
        fi
    done
    if (( running > 0 && SECONDS >= deadline )); then
        log "timeout: workers still running after ${TIMEOUT}s; stopping them"
        finish 124
    fi
    (( running > 0 )) && sleep 0.5
done
finish 0
