#!/usr/bin/env bash
# Per-rank wrapper: the launchers put it in front of the trainer command so that they can
# exit with the trainer's own status (see launch/_ranks.sh for why and how it is combined).
#
# Usage: launch/_rank_exit.sh CMD [ARGS...]
#
# Runs CMD, writes "<status> <microseconds since 1970>" to a file
# $DANN_RANK_STATUS_DIR/rank-<rank>.<host>.<pid> and exits with CMD's status. Without
# DANN_RANK_STATUS_DIR, or where that directory does not exist (a remote host that does not
# share it), it just execs CMD. SIGTERM and SIGINT are passed on to CMD at once: horovodrun
# and mpirun signal only the process they started, which is this one.

set -u

dir=${DANN_RANK_STATUS_DIR:-}
if [[ -z "$dir" || ! -d "$dir" ]]; then
    exec "$@"
fi

# In the background so that the traps run as soon as a signal arrives (bash defers traps
# while a foreground child runs). Bash ignores SIGINT/SIGQUIT in background children;
# `trap -` gives CMD the default dispositions back, and stdin is kept.
( trap - INT QUIT; exec "$@" ) <&0 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT

rc=0
wait "$child" || rc=$?
# A trap interrupts `wait` with 128+signal while CMD still runs: keep waiting for it.
while (( rc > 128 )) && kill -0 "$child" 2>/dev/null; do
    rc=0
    wait "$child" || rc=$?
done

rank=${HOROVOD_RANK:-${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${PMI_RANK:-${SLURM_PROCID:-x}}}}}
stamp=${EPOCHREALTIME:-}
stamp=${stamp//[!0-9]/}   # bash >= 5: seconds and 6 decimals, whatever the locale's point
[[ -n "$stamp" ]] || stamp="$(date +%s)000000"
name="rank-${rank}.${HOSTNAME:-host}.$$"
# Written under a temporary name and renamed, so the launcher never reads half a line.
if printf '%s %s\n' "$rc" "$stamp" >"$dir/.$name" 2>/dev/null; then
    mv -f "$dir/.$name" "$dir/$name" 2>/dev/null
fi
exit "$rc"
