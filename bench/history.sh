#!/usr/bin/env bash
# Measures meterd's ingest at several commits in one sitting, so that the
# effect of each change is compared on the same machine under the same
# conditions (docs/PERFORMANCE.md).
#
#   bench/history.sh [--runs N] [--events N] [--window N] COMMIT...
#
# Builds meterd, meterctl and meterbench of each commit in a temporary git
# worktree (RelWithDebInfo), runs that commit's own
# `meterbench --peers meterd-tcp --events N --loads 0.5 --window W` N times
# (default 3 runs of 3,000,000 events with 512 frames in flight, so that
# commits whose meterbench had another default run alike), and prints one
# line per run: the commit, its subject, the closed-loop events per second
# and the p50 and p99 ack latency at half of that run's closed-loop maximum.
# The worktrees are removed at the end. Needs the packages of
# engine/install-deps.sh.
set -euo pipefail
runs=3
events=3000000
window=512
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --events) events=$2; shift 2 ;;
    --window) window=$2; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "history.sh: name at least one commit; see --help" >&2; exit 2; }

source_dir=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d -t hm-history-XXXXXX) # under $TMPDIR, default /tmp
cleanup() {
  for tree in "$work"/tree-*; do
    [ -d "$tree" ] && git -C "$source_dir" worktree remove --force "$tree" >/dev/null 2>&1
  done
  rm -rf "$work"
}
trap cleanup EXIT

printf '%-8s %-12s %12s %8s %8s  %s\n' commit run events/s p50_ms p99_ms subject
for commit in "$@"; do
  short=$(git -C "$source_dir" rev-parse --short=7 "$commit")
  subject=$(git -C "$source_dir" log -1 --format=%s "$commit")
  tree=$work/tree-$short
  git -C "$source_dir" worktree add --detach "$tree" "$commit" >/dev/null 2>&1
  cmake -S "$tree" -B "$tree/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$work/cmake-$short.log"
  cmake --build "$tree/build" -j"$(nproc)" --target meterd meterctl meterbench \
    >>"$work/cmake-$short.log" 2>&1 ||
    { echo "history.sh: $short does not build; see $work/cmake-$short.log" >&2; exit 1; }
  for run in $(seq "$runs"); do
    out=$work/out-$short-$run
    mkdir -p "$out/tmp"
    # --keep-temp leaves results.json in the run's directory under $TMPDIR.
    (cd "$work" && TMPDIR=$out/tmp "$tree/build/meterbench" --peers meterd-tcp \
      --events "$events" --window "$window" --loads 0.5 --duration 2 --traces "$tree/data/traces" --keep-temp \
      --out "$out" >"$out.log" 2>&1) ||
      { echo "history.sh: meterbench of $short failed; see $out.log" >&2; exit 1; }
    python3 - "$out"/tmp/*/results.json "$short" "$run" "$subject" <<'EOF'
import json, sys
path, commit, run, subject = sys.argv[1:5]
peers = [peer for peer in json.load(open(path))["peers"] if peer["name"] == "meterd-tcp"]
if not peers:
    raise SystemExit("history.sh: no meterd-tcp in " + path)
peer = peers[0]
closed = peer["closed_eps"]
half = [load for load in peer.get("open", []) if abs(load["load"] - 0.5) < 1e-9]
p50 = half[0]["p50_ms"] if half else float("nan")
p99 = half[0]["p99_ms"] if half else float("nan")
print("%-8s %-12s %12.0f %8.2f %8.2f  %s" % (commit, run, closed, p50, p99, subject[:60]))
EOF
  done
done
