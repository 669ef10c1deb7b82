#!/usr/bin/env bash
# Shows that meterd's own memory does not grow with the events it stores.
# For each event count it runs meterbench's closed loop over TCP, then
# prints the events per second, meterd's peak RssAnon (sampled every 20 ms),
# and its RssAnon and RssFile at the end of the loop.
#
#   bench/memory.sh [--index-memory MIB] [BUILD_DIR] [EVENTS ...]
#
# EVENTS default to 3000000 8000000 20000000. --index-memory passes the
# bound of the id index to meterd (default 128 MiB, see meterd --help).
# Each count is one meterbench run, with a half-load phase of 1 s.
set -euo pipefail
source_dir=$(cd "$(dirname "$0")/.." && pwd)
index_memory=
if [ "${1:-}" = --index-memory ]; then
  index_memory=$2
  shift 2
fi
build=$source_dir/build
if [ $# -gt 0 ] && [ -d "$1" ]; then
  build=$1
  shift
fi
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(3000000 8000000 20000000)
[ -x "$build/meterbench" ] || { echo "memory.sh: $build/meterbench is missing; build first" >&2; exit 2; }
work=$(mktemp -d -t hm-memory-XXXXXX)
trap 'rm -rf "$work"' EXIT

extra=(--keep-temp)
[ -z "$index_memory" ] || extra+=(--index-memory "$index_memory")
printf '%12s %14s %16s %20s %12s\n' events events/s "peak RssAnon MiB" "RssAnon at end MiB" "RssFile MiB"
for events in "${counts[@]}"; do
  "$build/meterbench" --peers meterd-tcp --events "$events" --loads 0.5 --duration 1 \
    "${extra[@]}" --out "$work/$events" >"$work/$events.log" 2>&1 ||
    { cat "$work/$events.log" >&2; exit 1; }
  kept=$(sed -n 's/^meterbench: kept //p' "$work/$events.log")
  python3 - "$kept/results.json" "$events" <<'EOF'
import json, sys
results = json.load(open(sys.argv[1]))
peer = next(p for p in results["peers"] if p["name"] == "meterd-tcp")
mib = lambda kib: f"{kib / 1024:.1f}" if kib >= 0 else "n/a"
print(f"{int(sys.argv[2]):12,d} {peer['closed_eps']:14,.0f} {mib(peer['rss_anon_peak_kib']):>16} "
      f"{mib(peer['rss_anon_kib']):>20} {mib(peer['rss_file_kib']):>12}")
EOF
  rm -rf "$kept"
done
