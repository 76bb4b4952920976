# Sourced by launch/_common.sh and launch/slurm.sbatch; not a launcher itself.
#
# Why: horovodrun exits 1 whenever any rank exits non-zero, whatever the rank's status, so
# "stopped by SIGTERM after a checkpoint" (143), "bad flag" (2) and "NaN loss" (3) all look
# the same to whoever runs it (Slurm requeue logic, a CI job, a shell script). The launchers
# therefore put launch/_rank_exit.sh in front of the trainer command: each rank writes its
# exit status to a file in a temporary directory, and after the launcher (horovodrun,
# mpirun, srun) returns, the status is combined as follows:
#   - the launcher exited 0: 0 (an elastic job may have lost workers on the way);
#   - otherwise the status of the rank that failed FIRST, which is the status every rank
#     agrees on when they agree; when they do not, the first failure is the cause and the
#     later ones are the launcher stopping the rest (143 or 137);
#   - no rank wrote a non-zero status (the ranks were SIGKILLed, or ran on other hosts that
#     do not see the directory): the launcher's own status.
#
# Provides:
#   RANK_EXIT            the per-rank wrapper to put in front of the trainer command
#   ranks_begin          creates the status directory under $RANK_STATUS_ROOT (default
#                        $TMPDIR or /tmp), exports DANN_RANK_STATUS_DIR and removes the
#                        directory when the calling script exits
#   ranks_run CMD...     runs CMD in the background, passes SIGTERM/SIGINT on to it, waits;
#                        sets RANKS_LAUNCHER_RC (CMD's status) and RANKS_SIGNALLED (1 after
#                        SIGTERM/SIGINT)
#   ranks_status         prints the combined status (the rule above)
#   run_ranks CMD...     all three, then exits with the combined status

RANK_EXIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/_rank_exit.sh"

ranks_begin() {
    local root=${RANK_STATUS_ROOT:-${TMPDIR:-/tmp}}
    DANN_RANK_STATUS_DIR=$(mktemp -d "$root/dann-rank-status.XXXXXX" 2>/dev/null) || {
        echo "error: cannot create a directory in RANK_STATUS_ROOT=$root (set it to a" \
             "writable directory)" >&2
        exit 2
    }
    export DANN_RANK_STATUS_DIR
    # shellcheck disable=SC2064  # expand now: the path is fixed from here on
    trap "rm -rf -- '$DANN_RANK_STATUS_DIR'" EXIT
}

_ranks_forward() {
    RANKS_SIGNALLED=1
    echo "launch: SIG$1: passing it on (the trainer checkpoints and stops)" >&2
    kill "-$1" "$_ranks_child" 2>/dev/null || true
}

ranks_run() {
    RANKS_SIGNALLED=0
    # In the background so that SIGTERM/SIGINT reach the launcher at once (bash defers traps
    # while a foreground child runs); `trap -` undoes bash's SIGINT/SIGQUIT-ignore for
    # background children.
    ( trap - INT QUIT; exec "$@" ) <&0 &
    _ranks_child=$!
    trap '_ranks_forward TERM' TERM
    trap '_ranks_forward INT' INT
    RANKS_LAUNCHER_RC=0
    wait "$_ranks_child" || RANKS_LAUNCHER_RC=$?
    # A trap interrupts `wait` with 128+signal while CMD still runs: keep waiting for it.
    while (( RANKS_LAUNCHER_RC > 128 )) && kill -0 "$_ranks_child" 2>/dev/null; do
        RANKS_LAUNCHER_RC=0
        wait "$_ranks_child" || RANKS_LAUNCHER_RC=$?
    done
    trap - TERM INT
}

ranks_status() {
    local file status stamp rest first="" first_stamp=""
    if (( RANKS_LAUNCHER_RC == 0 )); then
        echo 0
        return
    fi
    for file in "${DANN_RANK_STATUS_DIR:?ranks_begin first}"/rank-*; do
        [[ -f "$file" ]] && read -r status stamp rest <"$file" || continue
        [[ "$status" =~ ^[0-9]+$ && "$stamp" =~ ^[0-9]+$ ]] && (( status != 0 )) || continue
        if [[ -z "$first" ]] || (( stamp < first_stamp )); then
            first=$status
            first_stamp=$stamp
        fi
    done
    echo "${first:-$RANKS_LAUNCHER_RC}"
}

run_ranks() {
    ranks_begin
    ranks_run "$@"
    local rc
    rc=$(ranks_status)
    if [[ "$rc" != "$RANKS_LAUNCHER_RC" ]]; then
        echo "launch: $(basename "$1") exited $RANKS_LAUNCHER_RC; the ranks' status is $rc" >&2
    fi
    exit "$rc"
}
