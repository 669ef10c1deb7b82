#!/usr/bin/env bash
# Kills meterd with SIGKILL 50 times under a load of TCP and UDP senders
# (tests/crash/run.sh). After every kill each acknowledged event must be
# stored, none counted twice, and every rollup equal to its recount.
# docs/RELIABILITY.md gives the long run. Arguments: BUILD_DIR SOURCE_DIR.
set -euo pipefail
build=${1:?usage: e2e_crash_kill.sh BUILD_DIR SOURCE_DIR}
source_dir=${2:?usage: e2e_crash_kill.sh BUILD_DIR SOURCE_DIR}
# Shorter delays and half the default rate keep it near a minute, also under ASan.
export CRASH_KILL_MAX_MS=${CRASH_KILL_MAX_MS:-600}
export CRASH_RATE=${CRASH_RATE:-500}
exec bash "$source_dir/tests/crash/run.sh" 50 "$build"
