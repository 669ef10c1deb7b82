#!/usr/bin/env bash
# Counts meterd's heap allocations for loads of different sizes, to show
# that its ingest path allocates per batch, not per event.
#
#   bench/alloc_count.sh [BUILD_DIR]
#
# Runs meterd four times, on a fresh ledger of 4 tenants each time, with the
# preload library libhm_alloc_count.so (bench/alloc/alloc_count.c). The runs
# replay 0, 1,000, 5,000 and all rows of every bundled trace over TCP, then
# stop meterd with SIGTERM. Each line gives the events stored and the calls
# of malloc, calloc, realloc, posix_memalign and aligned_alloc that the
# whole process made, start and stop included.
set -euo pipefail
source_dir=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$source_dir/build}
library=$build/libhm_alloc_count.so
[ -f "$library" ] || { echo "alloc_count.sh: $library is missing; build the target hm_alloc_count" >&2; exit 2; }
work=$(mktemp -d -t hm-alloc-XXXXXX)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
pid=

traces=()
for trace in "$source_dir"/data/traces/*.csv "$source_dir"/data/traces/*.jsonl; do
  traces+=(--trace "$trace")
done

printf '%10s %10s %12s\n' rows events allocations
for rows in 0 1000 5000 all; do
  data=$work/data-$rows
  export METER_DATA=$data
  for name in alloc-a alloc-b alloc-c alloc-d; do
    "$build/meterctl" tenant create "$name" >/dev/null
    "$build/meterctl" key create "$name" --keys-file "$work/keys-$rows.txt" >/dev/null
  done
  LD_PRELOAD=$library HM_ALLOC_COUNT_FILE=$work/count-$rows "$build/meterd" --tcp-port 0 \
    --udp-port 0 --port-file "$work/ports-$rows" --log-level warn &
  pid=$!
  for _ in $(seq 300); do [ -s "$work/ports-$rows" ] && break; sleep 0.05; done
  read -r tcp _ <"$work/ports-$rows"
  events=0
  if [ "$rows" != 0 ]; then
    limit=()
    [ "$rows" = all ] || limit=(--limit "$rows")
    line=$("$build/meterctl" replay --keys "$work/keys-$rows.txt" "${traces[@]}" "${limit[@]}" \
      --tcp "127.0.0.1:${tcp#tcp=}" --quiet)
    events=$(sed -n 's/.* stored=\([0-9]*\).*/\1/p' <<<"$line")
  fi
  kill -TERM "$pid"
  wait "$pid"
  pid=
  printf '%10s %10s %12s\n' "$rows" "$events" "$(cut -d' ' -f2 "$work/count-$rows")"
done
