#!/usr/bin/env bash
# meterctl db migrate and export postgres against a real PostgreSQL server,
# a private cluster on 127.0.0.1 (tests/pg_cluster.sh). Checks: migrations
# applied once and verified, clear connection errors that never show the
# password, and an export killed with SIGKILL at random moments that still
# ends with every ledger event exactly once.
# Needs the postgresql and libpq-dev packages (engine/install-deps.sh).
# Usage: bash tests/e2e_postgres.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
source_dir=$2
work=$(mktemp -d /tmp/hm-e2e-postgres-XXXXXX)
meterd_pid=
export_pid=
cleanup() {
  [ -n "$meterd_pid" ] && kill "$meterd_pid" 2>/dev/null || true
  [ -n "$export_pid" ] && kill -9 "$export_pid" 2>/dev/null || true
  bash "$source_dir/tests/pg_cluster.sh" stop "$work" || true
  rm -rf "$work"
}
trap cleanup EXIT
meterctl=$build/meterctl
export METER_DATA=$work/data
unset METER_PG_DSN METER_SQL_DIR
failures=0

pass() { echo "ok   $1"; }
failed() {
  echo "FAIL $1"
  failures=$((failures + 1))
}

# expect_error "what" "text the output must contain" command...: a nonzero exit with that text.
expect_error() {
  local what=$1 needle=$2
  shift 2
  local output status=0
  output=$("$@" 2>&1) || status=$?
  if [ "$status" -eq 0 ]; then
    failed "$what: exit status 0, expected an error; output: $output"
  elif ! grep -qF -- "$needle" <<<"$output"; then
    failed "$what: output does not contain \"$needle\"; output: $output"
  else
    pass "$what"
  fi
  last_output=$output
}

# expect_hidden "what" "secret": the last output must not contain the secret.
expect_hidden() {
  if grep -qF -- "$2" <<<"$last_output"; then
    failed "$1: the output shows the password: $last_output"
  else
    pass "$1"
  fi
}

echo "== starting PostgreSQL on 127.0.0.1"
bash "$source_dir/tests/pg_cluster.sh" start "$work" >/dev/null
# shellcheck disable=SC1091
. "$work/env"
export PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
dsn_of() { echo "host=127.0.0.1 port=$PGPORT dbname=$1 user=meter password=$PGPASSWORD"; }
sql() { psql -X -q -t -A -d "${database:-meter}" -c "$1"; }
for name in concurrent changed failing; do
  psql -X -q -d meter -c "CREATE DATABASE $name"
done
dsn=$(dsn_of meter)

echo "== migrations"
output=$($meterctl db migrate --dsn "$dsn")
if grep -q "3 applied now, 0 before" <<<"$output"; then
  pass "first migrate applies 3"
else
  failed "first migrate: $output"
fi
output=$($meterctl db migrate --dsn "$dsn")
if grep -q "0 applied now, 3 before" <<<"$output" && ! grep -q "applied 0" <<<"$output"; then
  pass "second migrate is a no-op"
else
  failed "second migrate: $output"
fi
[ "$(sql "SELECT count(*) FROM schema_migrations")" = 3 ] && pass "schema_migrations has 3 rows" ||
  failed "schema_migrations rows: $(sql "SELECT count(*) FROM schema_migrations")"
expected_checksum=$(sha256sum "$source_dir/sql/002_invoices.sql" | cut -d' ' -f1)
[ "$(sql "SELECT checksum FROM schema_migrations WHERE version = 2")" = "$expected_checksum" ] &&
  pass "checksum recorded is the file's SHA-256" || failed "checksum of 002 differs"

# Two runs at once: the advisory lock makes one wait, and each migration is applied once.
$meterctl db migrate --dsn "$(dsn_of concurrent)" >"$work/m1.log" 2>&1 &
first=$!
$meterctl db migrate --dsn "$(dsn_of concurrent)" >"$work/m2.log" 2>&1 &
second=$!
status1=0 status2=0
wait "$first" || status1=$?
wait "$second" || status2=$?
applied=$(cat "$work/m1.log" "$work/m2.log" | grep -c "^migrate: applied" || true)
if [ "$status1" = 0 ] && [ "$status2" = 0 ] && [ "$applied" = 3 ] &&
  [ "$(database=concurrent sql "SELECT count(*) FROM schema_migrations")" = 3 ]; then
  pass "concurrent migrations apply each file once"
else
  failed "concurrent migrations: status $status1 $status2, $applied applied: $(cat "$work/m1.log" "$work/m2.log")"
fi

cp -r "$source_dir/sql" "$work/sql"
$meterctl db migrate --dsn "$(dsn_of changed)" --migrations "$work/sql" >/dev/null
echo "-- a comment added after the migration was applied" >>"$work/sql/002_invoices.sql"
expect_error "changed migration" "002_invoices.sql changed after it was applied" \
  $meterctl db migrate --dsn "$(dsn_of changed)" --migrations "$work/sql"
expect_error "changed migration names the fix" "put the change in a new migration file" \
  env METER_SQL_DIR="$work/sql" $meterctl db migrate --dsn "$(dsn_of changed)"
cp "$source_dir/sql/002_invoices.sql" "$work/sql/002_invoices.sql"

echo "SELEC broken;" >"$work/sql/004_broken.sql"
expect_error "failing migration names the file" "migration 004_broken.sql failed and was rolled back" \
  $meterctl db migrate --dsn "$(dsn_of changed)" --migrations "$work/sql"
[ "$(database=changed sql "SELECT max(version) FROM schema_migrations")" = 3 ] &&
  pass "failing migration is not recorded" || failed "failing migration was recorded"
rm "$work/sql/004_broken.sql"
echo "x" >"$work/sql/5_bad name.sql"
expect_error "migration file name" '"5_bad name.sql"' \
  $meterctl db migrate --dsn "$(dsn_of failing)" --migrations "$work/sql"
rm "$work/sql/5_bad name.sql"
mv "$work/sql/002_invoices.sql" "$work/sql/004_invoices.sql"
expect_error "applied migration without a file" "has no file of that version" \
  $meterctl db migrate --dsn "$(dsn_of changed)" --migrations "$work/sql"
expect_error "missing migrations directory" "$work/nowhere" \
  $meterctl db migrate --dsn "$dsn" --migrations "$work/nowhere"

echo "== connection errors"
secret=S3cr3t-pass-$RANDOM
expect_error "missing DSN" "missing --dsn DSN (or \$METER_PG_DSN)" $meterctl db migrate
expect_error "invalid DSN" "invalid PostgreSQL DSN" \
  $meterctl db migrate --dsn "host=127.0.0.1 password=$secret bogus=1"
expect_hidden "invalid DSN hides the password" "$secret"
expect_error "invalid URI" "invalid PostgreSQL DSN" \
  $meterctl db migrate --dsn "postgresql://meter:$secret@[127.0.0.1/meter"
expect_hidden "invalid URI hides the password" "$secret"
expect_error "invalid port" 'invalid integer value "notaport"' \
  $meterctl db migrate --dsn "postgresql://meter:$secret@127.0.0.1:notaport/meter"
expect_hidden "invalid port hides the password" "$secret"
closed_port=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
expect_error "unreachable server" "host 127.0.0.1 port $closed_port database meter" \
  $meterctl db migrate --dsn "host=127.0.0.1 port=$closed_port dbname=meter user=meter password=$secret"
expect_hidden "unreachable server hides the password" "$secret"
expect_error "wrong password" "password authentication failed" \
  $meterctl db migrate --dsn "host=127.0.0.1 port=$PGPORT dbname=meter user=meter password=$secret"
expect_hidden "wrong password is not printed" "$secret"
expect_error "wrong password in a URI" "password authentication failed" \
  $meterctl db migrate --dsn "postgresql://meter:$secret@127.0.0.1:$PGPORT/meter"
expect_hidden "wrong password in a URI is not printed" "$secret"
expect_error "unknown database" '"nosuchdb" does not exist' \
  $meterctl db migrate --dsn "$(dsn_of nosuchdb)"
output=$(METER_PG_DSN=$dsn $meterctl db migrate 2>&1) && grep -q "0 applied now" <<<"$output" &&
  pass "DSN from METER_PG_DSN" || failed "DSN from METER_PG_DSN: $output"
if grep -qF "$PGPASSWORD" <<<"$output"; then
  failed "migrate output shows the password: $output"
else
  pass "migrate output hides the password"
fi

echo "== usage from the bundled traces"
tenants=(acme-ai borealis-labs cobalt-health dune-robotics)
for name in "${tenants[@]}"; do
  $meterctl tenant create "$name" --service-start 2023-11-01 >/dev/null
  $meterctl key create "$name" --keys-file "$work/keys" >/dev/null
done
expect_error "export before the schema" "run \`meterctl db migrate --dsn DSN\` first" \
  $meterctl export postgres --dsn "$(dsn_of failing)"
expect_error "export target" '"mysql"' $meterctl export mysql --dsn "$dsn"
expect_error "batch rows" '"0"' $meterctl export postgres --dsn "$dsn" --batch-rows 0
expect_error "kill hook value" '"soon"' \
  env METER_EXPORT_TEST_KILL_AFTER_ROWS=soon $meterctl export postgres --dsn "$dsn"
expect_error "export of an unknown tenant" '"nobody"' \
  $meterctl export postgres --dsn "$dsn" --tenant nobody

"$build/meterd" --data "$METER_DATA" --host 127.0.0.1 --tcp-port 0 --udp-port 0 \
  --port-file "$work/ports" --log-level warn 2>"$work/meterd.log" &
meterd_pid=$!
for _ in $(seq 100); do [ -s "$work/ports" ] && break; sleep 0.05; done
port=$(sed -n 's/^tcp=\([0-9]*\) .*/\1/p' "$work/ports")
[ -n "$port" ] || { echo "FAIL meterd did not start: $(cat "$work/meterd.log")"; exit 1; }
# Each trace is its own source of events, so the later replay of the other two adds events.
replay() {
  $meterctl replay --keys "$work/keys" --tcp "127.0.0.1:$port" --quiet "$@"
}
summary=$(replay --trace "$source_dir/data/traces/AzureLLMInferenceTrace_code.csv")
stored_first=$(sed -n 's/.* stored=\([0-9]*\) .*/\1/p' <<<"$summary")
echo "$summary"

# Checks that usage_events contains each tenant's arrivals 1..N exactly once, N its checkpoint.
check_consistent() {
  local bad
  bad=$(sql "SELECT count(*) FROM (SELECT e.tenant_id, count(*) AS rows,
               count(DISTINCT e.ledger_seq) AS seqs, max(e.ledger_seq) AS top,
               min(c.ledger_seq) AS checkpoint
             FROM usage_events e LEFT JOIN export_checkpoints c USING (tenant_id)
             GROUP BY e.tenant_id) AS t
           WHERE rows <> seqs OR rows <> top OR checkpoint IS NULL OR rows <> checkpoint")
  [ "$bad" = 0 ]
}

echo "== export, killed at a fixed row and at random moments"
status=0
output=$(METER_EXPORT_TEST_KILL_AFTER_ROWS=2500 $meterctl export postgres --dsn "$dsn" \
  --batch-rows 1000 2>&1) || status=$?
if [ "$status" = 137 ] && [ "$(sql "SELECT count(*) FROM usage_events")" = 2000 ]; then
  pass "killed in the middle of a COPY keeps the 2 committed batches"
else
  failed "fixed kill: status $status, rows $(sql "SELECT count(*) FROM usage_events"): $output"
fi
check_consistent && pass "consistent after the fixed kill" || failed "inconsistent after the fixed kill"

# Events stored after an export go to the next run. Bounded: 5 kills, each after 50 to
# 449 ms; a run that finishes first is fine.
replay --trace "$source_dir/data/traces/AzureLLMInferenceTrace_conv.csv" \
  --trace "$source_dir/data/traces/conversation_trace.jsonl" >/dev/null
for round in 1 2 3 4 5; do
  $meterctl export postgres --dsn "$dsn" --batch-rows 2000 >"$work/export-$round.log" 2>&1 &
  export_pid=$!
  sleep "0.$(printf '%03d' $((50 + RANDOM % 400)))"
  kill -9 "$export_pid" 2>/dev/null || true
  wait "$export_pid" 2>/dev/null || true
  export_pid=
  if check_consistent; then
    pass "round $round: consistent after kill -9 ($(sql "SELECT count(*) FROM usage_events") rows)"
  else
    failed "round $round: usage_events and checkpoints disagree after kill -9"
  fi
done
kill -TERM "$meterd_pid"
wait "$meterd_pid" || true
meterd_pid=

output=$($meterctl export postgres --dsn "$dsn" --batch-rows 2000 2>&1) || failed "final export: $output"
stored_total=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["events_stored"])' \
  "$METER_DATA/meterd-stats.json" 2>/dev/null || echo unknown)
rows=$(sql "SELECT count(*) FROM usage_events")
if [ "$rows" = "$stored_total" ] && check_consistent; then
  pass "final export: $rows rows, every stored event once"
else
  failed "final export: $rows rows for $stored_total stored events (first replay stored $stored_first)"
fi
for name in "${tenants[@]}"; do
  ledger_events=$($meterctl usage "$name" --period 2023-11 | awk '$1 == "events" { sum += $3 } END { print sum + 0 }')
  exported=$(sql "SELECT count(*) FROM usage_events e JOIN tenants t ON t.id = e.tenant_id
                  WHERE t.organization_name = '$name' AND e.timestamp >= '2023-11-01'
                  AND e.timestamp < '2023-12-01'")
  if [ -n "$ledger_events" ] && [ "$ledger_events" = "$exported" ]; then
    pass "$name: $exported events of 2023-11, as the ledger counts"
  else
    failed "$name: ledger counts ${ledger_events:-nothing} events of 2023-11, exported $exported"
  fi
done
output=$($meterctl export postgres --dsn "$dsn" 2>&1)
grep -q "usage events          0 new" <<<"$output" && pass "rerun exports nothing new" ||
  failed "rerun: $output"
if grep -qF "$PGPASSWORD" "$work"/export-*.log || grep -qF "$PGPASSWORD" <<<"$output"; then
  failed "an export printed the password"
else
  pass "exports never print the password"
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
