#!/usr/bin/env bash
# Smoke test of meterbench: a few thousand events through every peer that is
# installed (meterd over TCP and UDP, LMDB, SQLite, PostgreSQL, Redis, the
# socket sink), and a close of a small month. meterbench --smoke exits 1
# unless every peer stored exactly the events sent and its rollups equal the
# ones computed from the events, and the close finalized every invoice.
# PostgreSQL and Redis are skipped, with a message, when their servers are not
# installed; as root, PostgreSQL runs as the postgres user. Then each
# command-line error is checked for its message.
#
# Usage: bash tests/e2e_bench_smoke.sh BUILD_DIR SOURCE_DIR
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: bash $0 BUILD_DIR SOURCE_DIR" >&2
  exit 1
fi
build_dir=$(cd "$1" && pwd)
meterbench=$build_dir/meterbench

fail() {
  echo "e2e_bench_smoke: FAIL: $*" >&2
  exit 1
}

[ -x "$meterbench" ] ||
  fail "$meterbench is missing: install libpq-dev and libsqlite3-dev (engine/install-deps.sh), then rebuild"

work=$(mktemp -d "${TMPDIR:-/tmp}/e2e_bench_smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== meterbench --smoke"
if ! "$meterbench" --smoke >"$work/out" 2>"$work/err"; then
  cat "$work/err" >&2
  fail "meterbench --smoke exited with status $?"
fi
cat "$work/err"
for peer in meterd-tcp lmdb-raw sqlite meterd-udp socket-ceiling; do
  grep -Eq "^meterbench: $peer +[0-9]+ .* ok" "$work/err" || fail "$peer did not pass its check"
done
for peer in postgres-copy redis-hincrby; do
  if grep -Eq "^meterbench: $peer +skipped" "$work/err"; then
    echo "e2e_bench_smoke: NOTE: $peer skipped: its server is not installed (engine/install-deps.sh installs it)"
  else
    grep -Eq "^meterbench: $peer +[0-9]+ .* ok \(rollups equal\)" "$work/err" ||
      fail "$peer did not pass its check"
  fi
done
grep -Eq "^meterbench: meterd-tcp .* ok \(rollups equal\)" "$work/err" ||
  fail "meterd-tcp rollups were not compared"
grep -Eq "^meterbench: close +[0-9.]+ s for 20 tenants and 5000 events .* ok: 20 finalized invoices" \
  "$work/err" || fail "the close phase did not pass its check"

echo "== a report goes to ./meterbench-results by default, never into the source tree"
source_dir=$(cd "$2" && pwd)
published=$(sha256sum "$source_dir/bench/RESULTS.md" "$source_dir/bench/throughput.png")
if ! (cd "$work" && "$meterbench" --quick --peers socket --events 1000 --loads 0.5 \
  --duration 0.1) >"$work/out" 2>"$work/err"; then
  cat "$work/err" >&2
  fail "meterbench --quick --peers socket failed"
fi
[ -s "$work/meterbench-results/RESULTS.md" ] ||
  fail "no meterbench-results/RESULTS.md in the working directory; output: $(cat "$work/err")"
grep -q "socket-ceiling" "$work/meterbench-results/RESULTS.md" ||
  fail "meterbench-results/RESULTS.md has no socket-ceiling row"
# The open-loop row of a TCP stream: p99 in field 9, how late the sender was at p99 in field 12.
# Each frame's latency includes its own lateness, so the p99 of one bounds that of the other.
row=$(grep -E '^\| socket-ceiling \| 0\.50' "$work/meterbench-results/RESULTS.md" || true)
[ -n "$row" ] || fail "no open-loop row of socket-ceiling at 0.50 in RESULTS.md"
echo "$row" | awk -F'|' '{
    gsub(/[ ,]/, "", $9); gsub(/[ ,]/, "", $12)
    exit !($12 ~ /^[0-9]+\.[0-9][0-9]$/ && $12 + 0 <= $9 + 0) }' ||
  fail "the sender's lateness at p99 is missing or above the latency's p99: $row"
now=$(sha256sum "$source_dir/bench/RESULTS.md" "$source_dir/bench/throughput.png")
[ "$now" = "$published" ] ||
  fail "a run without --out changed bench/RESULTS.md or bench/throughput.png"

echo "== command-line errors name the value and the fix"
expect_error() {
  local expected=$1
  shift
  local status=0
  "$meterbench" "$@" >"$work/out" 2>"$work/err" || status=$?
  [ "$status" -eq 2 ] || fail "meterbench $* exited with $status, expected 2"
  grep -qF -- "$expected" "$work/err" ||
    fail "meterbench $* printed '$(cat "$work/err")', expected '$expected'"
}
expect_error 'invalid --loads "0.5,2": expected up to 8 comma-separated fractions above 0 and at most 1' \
  --smoke --loads 0.5,2
expect_error 'invalid --peers "mysql": expected meterd-tcp, lmdb, sqlite, postgres, redis, meterd-udp, socket or close' \
  --peers meterd-tcp,mysql
expect_error 'invalid --events "12x": expected an integer from 1000 to 20000000' --events 12x
expect_error 'invalid --duration "0": expected seconds from 0.1 to 120' --duration 0
expect_error 'invalid --events-per-frame "5000": expected an integer from 1 to 4096' \
  --events-per-frame 5000
expect_error 'invalid --tenants "0": expected an integer from 1 to 64' --tenants 0
expect_error 'invalid --months "7": expected an integer from 1 to 6' --months 7
expect_error 'invalid --open-max "12": expected an integer from 1000 to 100000000' --open-max 12
expect_error 'invalid --index-memory "0": expected an integer from 1 to 1048576' --index-memory 0
expect_error 'invalid --close-events "12": expected an integer from 1000 to 1000000000' \
  --close-events 12
expect_error 'invalid --close-tenants "0": expected an integer from 1 to 100000' --close-tenants 0
expect_error '--quick and --smoke cannot be combined; give one of them' --smoke --quick
expect_error 'missing value for --out, or unknown option' --out
expect_error 'unknown option --fast' --fast 1
expect_error 'unexpected argument "quick"' quick
"$meterbench" --help | grep -q -- "--smoke" || fail "--help does not list --smoke"
echo "e2e_bench_smoke: ok"
