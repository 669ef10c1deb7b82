#!/usr/bin/env bash
# End-to-end replay test. It replays the first 3000 rows of each bundled
# trace as 3 tenants over TCP, then again over UDP, where every event is a
# duplicate. It then closes November 2023 and compares every invoice, line
# by line and to the cent, with tests/oracle/billing_oracle.py. The oracle
# computes the invoices from docs/REPLAY.md and docs/PRICING.md without the
# engine.
#
# acme-ai is rated with the default price book. borealis-labs has its own
# book with half-even rounding, "*" fallbacks, cached input at the input
# price and a graduated GPU discount. Its base fee of 100.005 is an exact
# tie, so the rounding mode shows in the total. cobalt-health has a JPY book
# with a volume discount. The low tiers of both books make their discounts
# apply to this slice.
#
# Usage: bash tests/e2e_replay.sh BUILD_DIR SOURCE_DIR
# Exits 0 when everything matches, 1 on any failure or mismatch.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: bash $0 BUILD_DIR SOURCE_DIR" >&2
  exit 1
fi
build_dir=$(cd "$1" && pwd)
source_dir=$(cd "$2" && pwd)
meterd=$build_dir/meterd
meterctl=$build_dir/meterctl
oracle_dir=$source_dir/tests/oracle
pricebook=$source_dir/data/pricebooks/default.json
period=2023-11
limit=3000
tenants=(acme-ai borealis-labs cobalt-health)
tenant_pricebooks=("borealis-labs=$source_dir/tests/data/pricebooks/e2e-graduated.json"
                   "cobalt-health=$source_dir/tests/data/pricebooks/e2e-volume-jpy.json")
traces=("$source_dir/data/traces/AzureLLMInferenceTrace_code.csv"
        "$source_dir/data/traces/AzureLLMInferenceTrace_conv.csv"
        "$source_dir/data/traces/conversation_trace.jsonl")

fail() {
  echo "e2e_replay: FAIL: $*" >&2
  exit 1
}

for program in "$meterd" "$meterctl"; do
  [ -x "$program" ] || fail "$program is missing; build it with: cmake --build $build_dir"
done
command -v python3 >/dev/null || fail "python3 is missing; the oracle needs it"

work=$(mktemp -d "${TMPDIR:-/tmp}/e2e_replay.XXXXXX")
meterd_pid=
cleanup() {
  if [ -n "$meterd_pid" ] && kill -0 "$meterd_pid" 2>/dev/null; then
    kill -KILL "$meterd_pid" 2>/dev/null || true
    wait "$meterd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

data=$work/data
mkdir -p "$data"
export METER_DATA=$data
started=$SECONDS

echo "== oracle self-test on the worked examples of docs/PRICING.md and docs/REPLAY.md"
python3 "$oracle_dir/billing_oracle.py" --self-test || fail "the oracle's self-test failed"

echo "== tenants, keys and the price book"
for name in "${tenants[@]}"; do
  "$meterctl" tenant create "$name" --service-start 2023-11-01 >/dev/null
  "$meterctl" key create "$name" --keys-file "$data/keys"
done
"$meterctl" pricebook load "$pricebook" >/dev/null
oracle_books=()
for entry in "${tenant_pricebooks[@]}"; do
  "$meterctl" pricebook load "${entry#*=}" --tenant "${entry%%=*}" >/dev/null
  oracle_books+=(--tenant-pricebook "$entry")
done

trace_options=()
for trace in "${traces[@]}"; do
  trace_options+=(--trace "$trace")
done
python3 "$oracle_dir/billing_oracle.py" --keys "$data/keys" --pricebook "$pricebook" \
  "${oracle_books[@]}" "${trace_options[@]}" --limit "$limit" --period "$period" >"$work/oracle.json" ||
  fail "the oracle failed"
expected_events=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["events"])' \
  "$work/oracle.json")
echo "oracle: $expected_events events expected"

echo "== starting meterd on 127.0.0.1"
"$meterd" --data "$data" --host 127.0.0.1 --tcp-port 0 --udp-port 0 \
  --port-file "$data/ports" --log-level warn 2>"$work/meterd.log" &
meterd_pid=$!
for _ in $(seq 100); do
  [ -s "$data/ports" ] && break
  kill -0 "$meterd_pid" 2>/dev/null || fail "meterd exited at start: $(cat "$work/meterd.log")"
  sleep 0.05
done
tcp_port=$(sed -n 's/^tcp=\([0-9]*\) .*/\1/p' "$data/ports")
udp_port=$(sed -n 's/.* udp=\([0-9]*\).*/\1/p' "$data/ports")
[ -n "$tcp_port" ] && [ -n "$udp_port" ] || fail "no ports in $data/ports after 5 s"

# Prints the value of KEY=VALUE in a replay summary line, or fails.
summary_value() {
  local value
  value=$(printf '%s\n' "$2" | sed -n "s/.* $1=\([0-9]*\).*/\1/p")
  [ -n "$value" ] || fail "no $1= in the replay summary: $2"
  echo "$value"
}

echo "== replay over TCP"
tcp_summary=$("$meterctl" replay --keys "$data/keys" "${trace_options[@]}" --limit "$limit" \
  --tcp "127.0.0.1:$tcp_port" --quiet) || fail "TCP replay exited with status $?"
echo "$tcp_summary"
[ "$(summary_value events "$tcp_summary")" = "$expected_events" ] ||
  fail "TCP replay sent $(summary_value events "$tcp_summary") events; the oracle expects $expected_events"
[ "$(summary_value stored "$tcp_summary")" = "$expected_events" ] ||
  fail "TCP replay stored $(summary_value stored "$tcp_summary") of $expected_events events"
for counter in duplicates conflicts rejected undelivered; do
  [ "$(summary_value "$counter" "$tcp_summary")" = 0 ] ||
    fail "TCP replay into an empty ledger reports $counter=$(summary_value "$counter" "$tcp_summary")"
done

echo "== replay of the same rows over UDP: every event is already stored"
udp_summary=$("$meterctl" replay --keys "$data/keys" "${trace_options[@]}" --limit "$limit" \
  --udp "127.0.0.1:$udp_port" --quiet) || fail "UDP replay exited with status $?"
echo "$udp_summary"
[ "$(summary_value events "$udp_summary")" = "$expected_events" ] ||
  fail "UDP replay sent $(summary_value events "$udp_summary") events; the oracle expects $expected_events"
[ "$(summary_value undelivered "$udp_summary")" = 0 ] || fail "UDP replay could not send every datagram"

# Reads one counter of the meterd stats file, which meterd rewrites every 2 s and at stop.
stats_value() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
    "$data/meterd-stats.json" "$1" 2>/dev/null || echo missing
}
# UDP is not acknowledged: wait up to 10 s for meterd to count every datagram.
expected_received=$((2 * expected_events))
for _ in $(seq 50); do
  if [ -s "$data/meterd-stats.json" ]; then
    received=$(( $(stats_value events_stored) + $(stats_value events_duplicate) ))
    [ "$received" -ge "$expected_received" ] && break
  fi
  sleep 0.2
done

echo "== stopping meterd with SIGTERM"
kill -TERM "$meterd_pid"
meterd_status=0
wait "$meterd_pid" || meterd_status=$?
meterd_pid=
[ "$meterd_status" = 0 ] || fail "meterd exited with status $meterd_status after SIGTERM; log: $(cat "$work/meterd.log")"

echo "stats: $(cat "$data/meterd-stats.json")"
stored=$(stats_value events_stored)
duplicates=$(stats_value events_duplicate)
conflicts=$(stats_value events_conflict)
[ "$stored" = "$expected_events" ] ||
  fail "meterd stored $stored events; the TCP replay stored $expected_events and the UDP replay must add none"
[ "$conflicts" = 0 ] || fail "meterd counted $conflicts conflicts; a replay of the same rows has none"
# NOTE: loopback UDP can drop datagrams when meterd's receive buffer is full,
# so fewer duplicates than events is reported but does not fail the test.
[ "$duplicates" -gt 0 ] || fail "meterd counted no duplicate event: the UDP replay reached nothing"
if [ "$duplicates" != "$expected_events" ]; then
  echo "e2e_replay: warning: $duplicates of $expected_events UDP events reached meterd" >&2
fi
bad_frames=$(python3 -c '
import json, sys
frames = json.load(open(sys.argv[1]))["frames"]
print(" ".join(f"{k}={v}" for k, v in sorted(frames.items()) if k != "accepted" and v))
' "$data/meterd-stats.json")
[ -z "$bad_frames" ] || fail "meterd rejected frames: $bad_frames"

echo "== restart: the stats file describes the index built from the ledger before any frame"
rm -f "$data/ports" "$data/meterd-stats.json"
"$meterd" --data "$data" --host 127.0.0.1 --tcp-port 0 --udp-port 0 \
  --port-file "$data/ports" --log-level warn 2>"$work/meterd-restart.log" &
meterd_pid=$!
for _ in $(seq 100); do
  [ -s "$data/ports" ] && [ -s "$data/meterd-stats.json" ] && break
  kill -0 "$meterd_pid" 2>/dev/null || fail "meterd exited at restart: $(cat "$work/meterd-restart.log")"
  sleep 0.05
done
index_ids=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["index"]["ids"])' \
  "$data/meterd-stats.json")
kill -TERM "$meterd_pid"
wait "$meterd_pid" || fail "meterd exited with an error after its restart: $(cat "$work/meterd-restart.log")"
meterd_pid=
[ "$index_ids" = "$expected_events" ] ||
  fail "after the restart the stats file listed $index_ids ids in the index; the ledger holds $expected_events events"

echo "== verify the rollups against the ledger"
for name in "${tenants[@]}"; do
  "$meterctl" verify "$name" --period "$period" || fail "meterctl verify $name --period $period failed"
done

echo "== close $period"
"$meterctl" close --period "$period" --invoices "$work/invoices" >/dev/null ||
  fail "meterctl close --period $period failed"

compare_arguments=()
for name in "${tenants[@]}"; do
  "$meterctl" invoice show "$name" --period "$period" --json >"$work/invoice-$name.json" ||
    fail "meterctl invoice show $name --period $period --json failed"
  compare_arguments+=("$name=$work/invoice-$name.json")
done

echo "== compare every invoice with the oracle"
python3 "$oracle_dir/compare_invoices.py" "$work/oracle.json" "${compare_arguments[@]}" ||
  fail "the engine's invoices differ from the oracle (differences above)"

echo "e2e_replay: PASS in $((SECONDS - started)) s"
