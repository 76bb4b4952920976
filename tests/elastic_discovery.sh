#!/bin/sh
# Host discovery script for Elastic Horovod on ONE machine (tests/test_elastic.py, and the
# default of launch/horovod_elastic.sh). horovodrun runs it about once a second and reads
# `host:slots` lines.
#
# It names this machine twice, one slot each: `localhost:1` and `127.0.0.1:1`. Horovod's
# elastic driver blacklists the HOST of a worker that fails; with both slots on one name
# (localhost:2) the first death blacklists the whole machine and the job stops instead of
# continuing. Both names resolve to an address of a local interface, so horovodrun starts
# both workers directly, without ssh (horovod/runner/gloo_run.py, util/network.py).
#
# ELASTIC_HOSTS_FILE: when set and the file exists, its lines are printed instead, so that a
# test or a user can remove or add "hosts" while the job runs by editing that file.
if [ -n "${ELASTIC_HOSTS_FILE:-}" ] && [ -f "$ELASTIC_HOSTS_FILE" ]; then
    cat "$ELASTIC_HOSTS_FILE"
else
    echo localhost:1
    echo 127.0.0.1:1
fi
