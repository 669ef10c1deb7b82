#!/usr/bin/env bash
# Profiles meterd while meterbench drives its closed loop, and prints where
# the CPU time goes: the share of each thread of the machine, then the top
# functions of meterd's ingest loop (thread "meterd") and of its commit
# thread ("meterd-commit"), as docs/PERFORMANCE.md quotes them.
#
#   bench/profile.sh [--events N] [--seconds S] [BUILD_DIR]
#
# Samples every CPU with `perf record -e cpu-clock -a -g` for S seconds
# (default 1) from the moment the closed loop starts; N events (default
# 3,000,000) keep the loop running that long. cpu-clock works where the
# hardware counters are not available, as on virtual machines. Needs perf
# (Debian's linux-perf) and root, or kernel.perf_event_paranoid <= -1.
set -euo pipefail
events=3000000
seconds=1
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
source_dir=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$source_dir/build}
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
work=$(mktemp -d -t hm-profile-XXXXXX) # under $TMPDIR, default /tmp
trap 'kill $bench_pid 2>/dev/null || true; rm -rf "$work"' EXIT

"$build/meterbench" --peers meterd-tcp --events "$events" --loads 0.5 --duration 1 \
  --out "$work/out" >"$work/bench.log" 2>&1 &
bench_pid=$!
for _ in $(seq 600); do
  grep -q "closed loop:" "$work/bench.log" && break
  kill -0 "$bench_pid" 2>/dev/null || { cat "$work/bench.log" >&2; exit 1; }
  sleep 0.05
done
perf record -e cpu-clock -a -g -o "$work/perf.data" -- sleep "$seconds" >/dev/null 2>&1
wait "$bench_pid"
grep "closed loop: $events events" "$work/bench.log" | sed 's/^meterbench: *//'

echo "== CPU share by thread (all CPUs; swapper is idle time)"
perf report -i "$work/perf.data" --no-children --sort comm --stdio 2>/dev/null |
  grep -E '^ +[0-9]' | sed -n 1,8p
for thread in meterd meterd-commit ledger-spill; do
  echo "== top functions of thread $thread (share of all samples)"
  perf report -i "$work/perf.data" --comm "$thread" --no-children --sort symbol --stdio \
    -g none 2>/dev/null | grep -E '^ +[0-9]' | sed -n 1,15p
done
