#!/usr/bin/env bash
# Elastic Horovod (Gloo): training continues when workers die or hosts come and go.
#
# Usage:
#   launch/horovod_elastic.sh [trainer flags...]                  # this machine, 2 workers
#   DISCOVERY=/path/discover_hosts.sh MIN_NP=2 MAX_NP=8 launch/horovod_elastic.sh \
#       --flagfile=configs/mnist_mnistm.cfg --model_dir=/shared/runs/elastic
#
# It runs:
#   horovodrun -np NP --min-np MIN_NP --max-np MAX_NP --host-discovery-script DISCOVERY \
#       --elastic-timeout ELASTIC_TIMEOUT [--reset-limit N] [--blacklist-cooldown-range LO HI] \
#       --gloo $HOROVODRUN_ARGS launch/_rank_exit.sh <python> -m dann_dist.train --elastic [flags]
# and exits 0 when horovodrun does (workers may have died on the way), else with the status
# of the first worker that failed, not horovodrun's 1 (see launch/_ranks.sh;
# RANK_STATUS_ROOT as in launch/horovod_hosts.sh).
#
# What happens: every --elastic_commit_every steps each worker copies the whole training
# state (the three models, their optimizers, the step; the step is also the input
# position) to memory and checks for host changes. When a worker dies, the others roll
# back to the last commit, Horovod blacklists the dead worker's host, re-forms the job
# with the workers left (at least MIN_NP) and training goes on with the same GLOBAL batch
# (--batch_size split over fewer workers) until --train_steps. Rank 0 is the chief and
# writes --model_dir; if rank 0 dies, the next worker becomes rank 0 and takes over.
# When fewer than MIN_NP slots remain, the job ends with an error after ELASTIC_TIMEOUT
# seconds (a dead worker never leaves the others waiting forever); rerunning the command
# resumes from the newest checkpoint in --model_dir.
#
# DISCOVERY: an executable that prints one `host:slots` line per available host; hosts
# that disappear from its output are removed, new ones added (between MIN_NP and MAX_NP
# workers). Default: tests/elastic_discovery.sh, this machine under two names
# (localhost:1, 127.0.0.1:1): Horovod blacklists a failed worker's whole host, so two
# names let one local worker die and the other continue. Several hosts need the same as
# launch/horovod_hosts.sh: passwordless ssh, the same repository and venv paths, the data
# on every host and --model_dir on a shared filesystem (a new rank 0 writes there).
#
# Environment:
#   DISCOVERY          host discovery script (see above)
#   MIN_NP, MAX_NP     fewest / most workers (default 1 / 2)
#   NP                 workers at start (default MAX_NP)
#   ELASTIC_TIMEOUT    seconds to wait for MIN_NP slots after a failure (default 120)
#   RESET_LIMIT        end the job after this many resets (default: no limit)
#   COOLDOWN           "LO HI": a blacklisted host may return after LO..HI seconds
#                      (default: never)
#   IFACE, SSH_PORT, SSH_IDENTITY_FILE   as in launch/horovod_hosts.sh
#   HOROVODRUN, HOROVODRUN_ARGS, RANK_STATUS_ROOT, DANN_TRAIN_CMD, PYTHON
#                      as in launch/horovod_local.sh
#   DRY_RUN=1          print the command instead of running it
# Needs: Horovod built with TensorFlow and Gloo (`make setup` does it).

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

local_default=0
if [[ -z "${DISCOVERY:-}" ]]; then
    DISCOVERY="$DANN_ROOT/tests/elastic_discovery.sh"
    local_default=1
fi
[[ -x "$DISCOVERY" ]] || die "DISCOVERY=$DISCOVERY is not an executable file (chmod +x it)"

MIN_NP=${MIN_NP:-1}
MAX_NP=${MAX_NP:-2}
NP=${NP:-$MAX_NP}
ELASTIC_TIMEOUT=${ELASTIC_TIMEOUT:-120}
for name in MIN_NP MAX_NP NP ELASTIC_TIMEOUT; do
    is_uint "${!name}" && (( ${!name} > 0 )) || die "$name must be a positive integer, got '${!name}'"
done
(( MIN_NP <= NP && NP <= MAX_NP )) || die "need MIN_NP <= NP <= MAX_NP, got $MIN_NP, $NP, $MAX_NP"

opts=(-np "$NP" --min-np "$MIN_NP" --max-np "$MAX_NP" --host-discovery-script "$DISCOVERY"
      --elastic-timeout "$ELASTIC_TIMEOUT")
if [[ -n "${RESET_LIMIT:-}" ]]; then
    is_uint "$RESET_LIMIT" || die "RESET_LIMIT must be a non-negative integer, got '$RESET_LIMIT'"
    opts+=(--reset-limit "$RESET_LIMIT")
fi
if [[ -n "${COOLDOWN:-}" ]]; then
    read -r lo hi <<<"$COOLDOWN"
    is_uint "${lo:-}" && is_uint "${hi:-}" || die "COOLDOWN must be 'LO HI' in seconds, got '$COOLDOWN'"
    opts+=(--blacklist-cooldown-range "$lo" "$hi")
fi
opts+=(--gloo)
[[ -n "${IFACE:-}" ]] && opts+=(--network-interface "$IFACE")
[[ -n "${SSH_PORT:-}" ]] && opts+=(-p "$SSH_PORT")
[[ -n "${SSH_IDENTITY_FILE:-}" ]] && opts+=(-i "$SSH_IDENTITY_FILE")
read -r -a extra <<<"${HOROVODRUN_ARGS:-}"

# Workers on this machine only: each gets its share of the cores.
(( local_default )) && split_cpu_threads "$MAX_NP"

flags=("$@")
[[ " ${flags[*]-} " == *" --elastic "* ]] || flags=(--elastic ${flags[@]+"${flags[@]}"})

run_ranks_or_print "${HOROVODRUN:-horovodrun}" "${opts[@]}" ${extra[@]+"${extra[@]}"} \
    "$RANK_EXIT" "${TRAIN_CMD[@]}" "${flags[@]}"
