#!/usr/bin/env bash
# A period close killed with SIGKILL: each tenant's month is closed whole or
# not at all (invoice, closed flag, billed state and credit uses together),
# invoice numbers are never skipped, and running the close again finishes it.
#
# Kills meterctl at the fixed points of METER_TEST_CRASH_AT (engine/lib/billing.c)
# and then at CLOSE_KILLS random moments (default 30). Each attempt starts from
# the same copy of a ledger with 8 tenants, usage from crash_load and credit
# grants, and is checked with `crash_check close`. Arguments: BUILD_DIR SOURCE_DIR.
set -euo pipefail
build=${1:?usage: e2e_crash_close.sh BUILD_DIR SOURCE_DIR}
source_dir=${2:?usage: e2e_crash_close.sh BUILD_DIR SOURCE_DIR}
kills=${CLOSE_KILLS:-30}
seed=${CLOSE_SEED:-$(date +%s)}
RANDOM=$seed

work=$(mktemp -d /tmp/hm-crash-close-XXXXXX)
meterd_pid=
cleanup() {
  set +e # every step of the cleanup runs, even after one fails
  [ -n "$meterd_pid" ] && kill -9 "$meterd_pid" 2>/dev/null && wait "$meterd_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "e2e_crash_close: FAILED: $*" >&2
  exit 1
}
meterctl() { "$build/meterctl" --data "$work/data" "$@"; }
check() { "$build/tests/crash_check" close "$work/data" 2024-04 "$1"; }

# A ledger with usage in April 2024 for 8 tenants, 4 of them with credit.
pristine=$work/pristine
for i in 0 1 2 3 4 5 6 7; do
  "$build/meterctl" --data "$pristine" tenant create "close-$i" --service-start 2024-04-01 \
    >/dev/null
  "$build/meterctl" --data "$pristine" key create "close-$i" --keys-file "$work/keys.txt" \
    >/dev/null
done
"$build/meterctl" --data "$pristine" pricebook load "$source_dir/data/pricebooks/default.json" \
  >/dev/null
for i in 0 2 4 6; do
  "$build/meterctl" --data "$pristine" credit grant "close-$i" 150.00 >/dev/null
done
mkdir -p "$work/load"
"$build/meterd" --data "$pristine" --tcp-port 0 --udp-port 0 --port-file "$work/ports" \
  --log-level warn &
meterd_pid=$!
for _ in $(seq 500); do [ -s "$work/ports" ] && break; sleep 0.01; done
read -r tcp udp <"$work/ports" || fail "meterd did not start"
"$build/tests/crash_load" --keys "$work/keys.txt" --out "$work/load" --tcp-port "${tcp#tcp=}" \
  --udp-port "${udp#udp=}" --tcp-senders 8 --udp-senders 0 --rate 2000 --seconds 2 >/dev/null
kill "$meterd_pid"
wait "$meterd_pid"
meterd_pid=

restore() {
  rm -rf "$work/data"
  cp -a "$pristine" "$work/data"
}

# Runs the close to its end and checks that every tenant is closed, numbers gapless.
finish() {
  meterctl close --period 2024-04 >/dev/null 2>"$work/close.err" ||
    { cat "$work/close.err" >&2; fail "the close after $1 did not finish"; }
  check all >/dev/null || { check all; fail "state after finishing the close after $1"; }
}

# 1. The fixed points. Before the commit nothing may be stored; after it, everything.
for point in close-after-rate close-mid-store close-before-commit close-after-commit; do
  restore
  status=0
  METER_TEST_CRASH_AT=$point "$build/meterctl" --data "$work/data" close --period 2024-04 \
    >/dev/null 2>&1 &
  wait $! 2>/dev/null || status=$?
  [ "$status" -eq 137 ] || fail "meterctl did not die at $point (exit $status)"
  expect=none
  [ "$point" = close-after-commit ] && expect=all
  check "$expect" >/dev/null || { check "$expect"; fail "state after a kill at $point"; }
  finish "$point"
  [ -s "$work/data/invoices/2024-04/close-0.json" ] || fail "no invoice file after $point"
done

# 2. A failing commit (as a failed disk write) leaves the month open everywhere.
restore
METER_TEST_FAIL_COMMITS=1 "$build/meterctl" --data "$work/data" close --period 2024-04 \
  >/dev/null 2>&1 && fail "the close reported success although its commit failed"
check none >/dev/null || { check none; fail "state after a failed commit"; }
finish "a failed commit"

# 3. Random moments: measure one close, then kill within 0 to 1.5 times its duration.
restore
started=$(date +%s%N)
meterctl close --period 2024-04 >/dev/null
duration_us=$((($(date +%s%N) - started) / 1000))
window_us=$((duration_us * 3 / 2))
none=0
all=0
for attempt in $(seq "$kills"); do
  restore
  delay_us=$(((RANDOM * 32768 + RANDOM) % (window_us + 1)))
  "$build/meterctl" --data "$work/data" close --period 2024-04 >/dev/null 2>&1 &
  pid=$!
  sleep "$(printf '%d.%06d' $((delay_us / 1000000)) $((delay_us % 1000000)))"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  result=$(check any) || { echo "$result"; fail "state after a kill at ${delay_us} us (attempt $attempt)"; }
  case $result in
    *" closed=0 "*) none=$((none + 1)) ;;
    *) all=$((all + 1)) ;;
  esac
  finish "a kill at ${delay_us} us"
done
echo "e2e_crash_close: passed: 4 fixed kill points, a failed commit, $kills random kills" \
     "within ${window_us} us (a close takes ${duration_us} us): $none before the commit," \
     "$all after; seed $seed"
