#!/usr/bin/env bash
# Runs a ThreadSanitizer build of meterd under load and fails on any report.
#
#   tests/tsan/run.sh TSAN_BUILD_DIR [BUILD_DIR]
#
# meterd has three threads: the ingest loop, the commit thread and a helper
# that faults in the next arena of the id index. With a bound on the index's
# memory, spill threads write the index's runs and reaper threads free the
# replaced ones. The Criterion test programs do not run under
# ThreadSanitizer, so this script drives the sanitized meterd from the
# normal build's meterctl: three tenants, every bundled trace replayed over
# TCP twice (the second time every event is a duplicate) and once over UDP,
# with `--index-memory 1` so that the index spills several times, then a
# SIGTERM stop. Exits 1 when meterd printed a ThreadSanitizer report, a
# replay failed, or the index wrote no run.
set -euo pipefail
source_dir=$(cd "$(dirname "$0")/../.." && pwd)
tsan_build=${1:?usage: tests/tsan/run.sh TSAN_BUILD_DIR [BUILD_DIR]}
build=${2:-$source_dir/build}
work=$(mktemp -d -t hm-tsan-XXXXXX)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
export METER_DATA=$work/data

for name in tsan-a tsan-b tsan-c; do
  "$build/meterctl" tenant create "$name" --service-start 2023-11-01 >/dev/null
  "$build/meterctl" key create "$name" --keys-file "$work/keys.txt" >/dev/null
done
"$build/meterctl" pricebook load "$source_dir/data/pricebooks/default.json" >/dev/null

TSAN_OPTIONS="halt_on_error=0 exitcode=66" "$tsan_build/meterd" --tcp-port 0 --udp-port 0 \
  --port-file "$work/ports" --index-memory 1 2>"$work/meterd.err" &
pid=$!
for _ in $(seq 300); do [ -s "$work/ports" ] && break; sleep 0.05; done
[ -s "$work/ports" ] || { cat "$work/meterd.err" >&2; echo "tsan: meterd did not listen" >&2; exit 1; }
read -r tcp udp <"$work/ports"
tcp=${tcp#tcp=}
udp=${udp#udp=}

traces=()
for trace in "$source_dir"/data/traces/*.csv "$source_dir"/data/traces/*.jsonl; do
  traces+=(--trace "$trace")
done
for round in 1 2; do
  "$build/meterctl" replay --keys "$work/keys.txt" "${traces[@]}" --tcp "127.0.0.1:$tcp" --quiet
done
"$build/meterctl" replay --keys "$work/keys.txt" "${traces[@]}" --udp "127.0.0.1:$udp" --quiet
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=

reports=$(grep -c "WARNING: ThreadSanitizer" "$work/meterd.err" || true)
if [ "$reports" != 0 ] || [ "$status" != 0 ]; then
  cat "$work/meterd.err" >&2
  echo "tsan: FAIL: $reports ThreadSanitizer reports, meterd exit status $status" >&2
  exit 1
fi
runs=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["index"]["runs"])' \
  "$METER_DATA/meterd-stats.json")
if [ "$runs" = 0 ]; then
  echo "tsan: FAIL: the id index wrote no run, so its spill threads were not checked" >&2
  exit 1
fi
echo "tsan: meterd ran its threads under load without a ThreadSanitizer report" \
  "($runs runs of the id index at the stop)"
