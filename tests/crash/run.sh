#!/usr/bin/env bash
# Kills meterd with SIGKILL at random moments under a steady load and checks
# the ledger after every kill.
#
#   tests/crash/run.sh CYCLES [BUILD_DIR]
#
# There are four tenants. For the whole run crash_load runs 4 TCP senders,
# which resend unacknowledged frames and log every accepted ack, and 2 UDP
# senders, at 1,000 events per second each. Each cycle waits a random delay, kills
# meterd, runs `crash_check events` on the ledger (acknowledged events all
# stored, no event counted twice, every rollup equal to its recount) and
# starts meterd again. At the end `meterctl verify` recounts every tenant and
# month once more.
#
# Environment: CRASH_SEED (random seed, default the current time),
# CRASH_KILL_MIN_MS and CRASH_KILL_MAX_MS (the delay range after meterd
# listens, default 20 and 1000), CRASH_RATE (events per second per sender,
# default 1000), CRASH_KEEP=1 keeps the work directory.
# Exit status: 0 when every check passed, 1 at the first failure, 2 on a usage error.
set -euo pipefail

# The braces make bash read the whole script before it runs, so editing this
# file during a long run cannot change that run.
{
cycles=${1:-}
source_dir=$(cd "$(dirname "$0")/../.." && pwd)
build=${2:-$source_dir/build}
if ! [[ $cycles =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: tests/crash/run.sh CYCLES [BUILD_DIR]; CYCLES is a positive integer" >&2
  exit 2
fi
for program in meterd meterctl crash_load crash_check; do
  path=$build/$program
  [ -x "$path" ] || path=$build/tests/$program
  if [ ! -x "$path" ]; then
    echo "run.sh: $program not found in $build or $build/tests; build first" \
         "(cmake --build $build)" >&2
    exit 2
  fi
  declare "bin_${program}=$path"
done

seed=${CRASH_SEED:-$(date +%s)}
kill_min=${CRASH_KILL_MIN_MS:-20}
kill_max=${CRASH_KILL_MAX_MS:-1000}
rate=${CRASH_RATE:-1000}
RANDOM=$seed

work=$(mktemp -d -t hm-crash-XXXXXX) # under $TMPDIR, default /tmp
data=$work/data
load=$work/load
mkdir -p "$load"
meterd_pid=
load_pid=

cleanup() {
  set +e # every step of the cleanup runs, even after one fails
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null
  [ -n "$meterd_pid" ] && kill -9 "$meterd_pid" 2>/dev/null && wait "$meterd_pid" 2>/dev/null
  if [ "${CRASH_KEEP:-0}" = 1 ]; then
    echo "run.sh: work directory kept: $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

fail() {
  echo "run.sh: FAILED: $*" >&2
  echo "run.sh: last lines of the meterd log:" >&2
  tail -n 20 "$work/meterd.log" >&2 || true
  CRASH_KEEP=1
  exit 1
}

now_ms() { date +%s%3N; }

tcp_port=0
udp_port=0
restart_ms=()

# Starts meterd and waits until it listens (its port file appears), at most 15 s.
start_meterd() {
  rm -f "$work/ports"
  local started
  started=$(now_ms)
  "$bin_meterd" --data "$data" --tcp-port "$tcp_port" --udp-port "$udp_port" \
    --port-file "$work/ports" --log-level warn 2>>"$work/meterd.log" &
  meterd_pid=$!
  for _ in $(seq 1500); do
    if [ -s "$work/ports" ]; then
      restart_ms+=($(($(now_ms) - started)))
      read -r tcp udp <"$work/ports"
      tcp_port=${tcp#tcp=}
      udp_port=${udp#udp=}
      return 0
    fi
    kill -0 "$meterd_pid" 2>/dev/null || fail "meterd exited at start"
    sleep 0.01
  done
  fail "meterd did not listen within 15 s"
}

for i in 0 1 2 3; do
  "$bin_meterctl" --data "$data" tenant create "crash-$i" --service-start 2024-01-01 >/dev/null
  "$bin_meterctl" --data "$data" key create "crash-$i" --keys-file "$work/keys.txt" >/dev/null
done

start_meterd
"$bin_crash_load" --keys "$work/keys.txt" --out "$load" --tcp-port "$tcp_port" \
  --udp-port "$udp_port" --rate "$rate" >"$work/load.log" 2>&1 &
load_pid=$!

echo "run.sh: $cycles cycles, seed $seed, kill after ${kill_min}-${kill_max} ms, work $work"
run_start=$(now_ms)
last=
for cycle in $(seq "$cycles"); do
  delay=$((kill_min + (RANDOM * 32768 + RANDOM) % (kill_max - kill_min + 1)))
  sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
  kill -0 "$load_pid" 2>/dev/null || fail "crash_load exited (see $work/load.log)"
  kill -9 "$meterd_pid"
  wait "$meterd_pid" 2>/dev/null || true
  meterd_pid=
  if ! last=$("$bin_crash_check" events "$data" "$load"); then
    echo "$last" >&2
    fail "check after cycle $cycle (killed after $delay ms)"
  fi
  if [ $((cycle % 50)) -eq 0 ] || [ "$cycle" -eq "$cycles" ]; then
    echo "run.sh: cycle $cycle: $last"
  fi
  start_meterd
done

# The end: stop the senders, stop meterd cleanly, and check once more.
kill "$load_pid"
load_status=0
wait "$load_pid" || load_status=$?
load_pid=
kill "$meterd_pid"
wait "$meterd_pid" || fail "meterd exited with $? after SIGTERM"
meterd_pid=
last=$("$bin_crash_check" events "$data" "$load") || { echo "$last" >&2; fail "final check"; }
for i in 0 1 2 3; do
  for period in 2024-04 2024-05 2024-06; do
    "$bin_meterctl" --data "$data" verify "crash-$i" --period "$period" >/dev/null ||
      fail "meterctl verify crash-$i --period $period"
  done
done
tail -n 5 "$work/load.log"
[ "$load_status" -eq 0 ] || fail "crash_load saw rejected frames or conflicts (exit $load_status)"

sorted=$(printf '%s\n' "${restart_ms[@]:1}" | sort -n)
count=$(printf '%s\n' "$sorted" | wc -l)
median=$(printf '%s\n' "$sorted" | sed -n "$(((count + 1) / 2))p")
echo "run.sh: PASSED $cycles cycles in $((($(now_ms) - run_start) / 1000)) s, seed $seed;" \
     "final: $last; restart to listening ms: min $(printf '%s\n' "$sorted" | head -1)" \
     "median $median max $(printf '%s\n' "$sorted" | tail -1)"
exit 0
}
