#!/usr/bin/env bash
# Quick start: installs what is missing, builds, starts meterd on a local
# ledger, replays the bundled traces as four tenants, closes November 2023
# and prints the invoices.
set -euo pipefail
cd "$(dirname "$0")"

bash engine/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target meterd meterctl >/dev/null

data=${METER_DATA:-meter-data}
if [ -e "$data" ] && [ ! -e "$data/.demo" ]; then
  echo "demo: $data contains a ledger that this demo did not create; set METER_DATA to a new directory" >&2
  exit 1
fi
rm -rf "$data"
mkdir -p "$data"
touch "$data/.demo"
export METER_DATA=$data
meterctl=build/meterctl

echo "== tenants, keys and the default price book"
for name in acme-ai borealis-labs cobalt-health dune-robotics; do
  $meterctl tenant create "$name" --service-start 2023-11-01 >/dev/null
  $meterctl key create "$name" --keys-file "$data/keys"
done
$meterctl pricebook load data/pricebooks/default.json

echo "== starting meterd on 127.0.0.1 (log: $data/meterd.log)"
build/meterd --tcp-port 0 --udp-port 0 --port-file "$data/ports" 2>"$data/meterd.log" &
meterd_pid=$!
trap 'kill $meterd_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$data/ports" ] && break; sleep 0.05; done
tcp_port=$(sed -n 's/^tcp=\([0-9]*\) .*/\1/p' "$data/ports")

traces=(--trace data/traces/AzureLLMInferenceTrace_code.csv
        --trace data/traces/AzureLLMInferenceTrace_conv.csv
        --trace data/traces/conversation_trace.jsonl)
echo "== replaying the Azure 2023 and Mooncake traces over TCP"
$meterctl replay --keys "$data/keys" "${traces[@]}" --tcp "127.0.0.1:$tcp_port"
echo "== replaying them again: every event is already stored, so nothing is counted twice"
$meterctl replay --keys "$data/keys" "${traces[@]}" --tcp "127.0.0.1:$tcp_port" --quiet

kill -TERM $meterd_pid
wait $meterd_pid
trap - EXIT

echo "== closing November 2023"
$meterctl close --period 2023-11
for name in acme-ai borealis-labs cobalt-health dune-robotics; do
  echo
  $meterctl invoice show "$name" --period 2023-11
done
echo
echo "Invoices as JSON: $data/invoices/2023-11/"
