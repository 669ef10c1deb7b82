#!/usr/bin/env bash
# meterctl replay against a meterd that does not acknowledge, and against one
# that rejects every event as too old.
#
# 1. The ledger stays full (METER_TEST_FULL_COMMITS), so meterd holds every
#    frame without an ack. replay --quiet must say, after each ack timeout,
#    how many frames are pending and why, then give up after
#    --reconnect-attempts with exit status 1.
# 2. meterd runs with --max-event-age-days 1 and the 2023 trace: every frame
#    is rejected as event_too_old, and the summary must name meterd's option.
#
# Arguments: BUILD_DIR SOURCE_DIR.
set -euo pipefail
build=${1:?usage: e2e_replay_stuck.sh BUILD_DIR SOURCE_DIR}
source_dir=${2:?usage: e2e_replay_stuck.sh BUILD_DIR SOURCE_DIR}
trace=$source_dir/data/traces/AzureLLMInferenceTrace_code.csv

work=$(mktemp -d /tmp/hm-replay-stuck-XXXXXX)
meterd_pid=
cleanup() {
  set +e
  [ -n "$meterd_pid" ] && kill -9 "$meterd_pid" 2>/dev/null && wait "$meterd_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "e2e_replay_stuck: FAILED: $*" >&2
  exit 1
}

data=$work/data
"$build/meterctl" --data "$data" tenant create stuck-0 --service-start 2023-01-01 >/dev/null
"$build/meterctl" --data "$data" key create stuck-0 --keys-file "$work/keys" >/dev/null

# Starts meterd on free ports with extra options; sets meterd_pid and tcp.
start_meterd() {
  rm -f "$work/ports"
  "$build/meterd" --data "$data" --tcp-port 0 --udp-port 0 --port-file "$work/ports" "$@" \
    2>"$work/meterd.log" &
  meterd_pid=$!
  for _ in $(seq 500); do [ -s "$work/ports" ] && break; sleep 0.01; done
  read -r tcp_field _ <"$work/ports" || fail "meterd did not start: $(cat "$work/meterd.log")"
  tcp=${tcp_field#tcp=}
}
stop_meterd() {
  kill "$meterd_pid"
  wait "$meterd_pid" || fail "meterd exited with $? after SIGTERM"
  meterd_pid=
}

# ---- 1. a ledger that stays full: report pending frames, then give up
METER_TEST_FULL_COMMITS=1000000 start_meterd
set +e
timeout 60 "$build/meterctl" replay --keys "$work/keys" --trace "$trace" --limit 200 \
  --tcp "127.0.0.1:$tcp" --quiet --ack-timeout-ms 500 --reconnect-attempts 2 \
  >"$work/replay.out" 2>"$work/replay.err"
status=$?
set -e
[ "$status" -eq 1 ] || fail "replay exited with $status, expected 1: $(cat "$work/replay.err")"
grep -q "frames (.* events) pending without an ack" "$work/replay.err" ||
  fail "no pending frames reported: $(cat "$work/replay.err")"
grep -q "no ack within --ack-timeout-ms: meterd holds frames without acks while its ledger is full" \
  "$work/replay.err" || fail "the reason names no full ledger: $(cat "$work/replay.err")"
grep -q "attempt 2 of 2" "$work/replay.err" || fail "the attempts are not counted"
grep -q "gave up after 2 connection attempts without an ack" "$work/replay.err" ||
  fail "no give-up line: $(cat "$work/replay.err")"
grep -q "undelivered=" "$work/replay.out" || fail "no summary line"
stop_meterd

# ---- 2. events older than --max-event-age-days: the fix names meterd's option
start_meterd --max-event-age-days 1
set +e
timeout 60 "$build/meterctl" replay --keys "$work/keys" --trace "$trace" --limit 50 \
  --tcp "127.0.0.1:$tcp" --quiet >"$work/replay.out" 2>"$work/replay.err"
status=$?
set -e
[ "$status" -eq 1 ] || fail "replay of too old events exited with $status, expected 1"
grep -q "event_too_old: .*older than meterd's --max-event-age-days allows" "$work/replay.err" ||
  fail "event_too_old names no fix: $(cat "$work/replay.err")"
stop_meterd
echo "e2e_replay_stuck: passed"
