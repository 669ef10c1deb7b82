#!/usr/bin/env bash
# Measures how long meterd takes from its start to listening on a large ledger.
#
#   tests/crash/restart_time.sh [EVENTS] [BUILD_DIR]
#
# Writes EVENTS events (default 3,000,000) for 4 tenants with crash_fill. Then
# it starts meterd 5 times after a SIGTERM stop and 5 times after a SIGKILL,
# each time until its port file appears, and prints the times in milliseconds
# with the ledger's size. Finally `meterctl verify` recounts one tenant's May.
set -euo pipefail
events=${1:-3000000}
source_dir=$(cd "$(dirname "$0")/../.." && pwd)
build=${2:-$source_dir/build}
work=$(mktemp -d -t hm-restart-XXXXXX) # under $TMPDIR, default /tmp
trap 'rm -rf "$work"' EXIT
data=$work/data

started=$(date +%s%N)
"$build/tests/crash_fill" "$data" "$events" 4
fill_s=$((($(date +%s%N) - started) / 1000000000))
size=$(du -sh --apparent-size "$data/data.mdb" | cut -f1)
disk=$(du -sh "$data/data.mdb" | cut -f1)

# Starts meterd, waits for its port file, prints the milliseconds it took, stops it with $1.
measure() {
  rm -f "$work/ports"
  local begin end pid
  begin=$(date +%s%N)
  "$build/meterd" --data "$data" --tcp-port 0 --udp-port 0 --port-file "$work/ports" \
    --log-level warn &
  pid=$!
  for _ in $(seq 3000); do [ -s "$work/ports" ] && break; sleep 0.001; done
  end=$(date +%s%N)
  [ -s "$work/ports" ] || { echo "restart_time: meterd did not listen" >&2; exit 1; }
  kill "-$1" "$pid"
  wait "$pid" 2>/dev/null || true
  echo $(((end - begin) / 1000000))
}

after_term=()
after_kill=()
for _ in 1 2 3 4 5; do after_term+=("$(measure TERM)"); done
for _ in 1 2 3 4 5; do after_kill+=("$(measure KILL)"); done
echo "restart_time: $events events, data.mdb $size ($disk on disk), written in ${fill_s} s"
echo "restart_time: start to listening ms after SIGTERM: ${after_term[*]}"
echo "restart_time: start to listening ms after SIGKILL: ${after_kill[*]}"
"$build/meterctl" --data "$data" verify fill-0 --period 2024-05
