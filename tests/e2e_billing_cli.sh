#!/usr/bin/env bash
# meterctl billing commands on a fresh ledger: price book checks without a
# ledger, what `tenant create` prints, credit grant currencies, and the
# replay summary when meterd rejects frames.
# Usage: bash tests/e2e_billing_cli.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
source_dir=$2
work=$(mktemp -d /tmp/hm-e2e-billing-XXXXXX)
meterd_pid=
cleanup() {
  [ -n "$meterd_pid" ] && kill "$meterd_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export METER_DATA=$work/data
meterctl=$build/meterctl
failures=0

pass() { echo "ok   $1"; }
failed() {
  echo "FAIL $1"
  failures=$((failures + 1))
}

# expect_error "what" "text the error must contain" command...
expect_error() {
  local what=$1 needle=$2
  shift 2
  local output status=0
  output=$("$@" 2>&1) || status=$?
  if [ "$status" -eq 0 ]; then
    failed "$what: exit status 0, expected an error; output: $output"
  elif ! grep -qF -- "$needle" <<<"$output"; then
    failed "$what: error does not contain \"$needle\"; output: $output"
  else
    pass "$what"
  fi
}

# A price book is checked before any ledger exists, and the check makes none.
if $meterctl pricebook check "$source_dir/data/pricebooks/default.json" | grep -q ": valid$" &&
   [ ! -e "$METER_DATA" ]; then
  pass "pricebook check without a ledger"
else
  failed "pricebook check without a ledger"
fi
printf '{"name": "bad", "currency": "USD", "gpu_hour": {"H100": 2.5}}\n' >"$work/bad.json"
expect_error "pricebook check of a bad book without a ledger" '$.gpu_hour.H100' \
  $meterctl pricebook check "$work/bad.json"

# tenant create prints the id and the name.
if $meterctl tenant create acme --service-start 2024-01-01 |
   grep -qE '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12} acme$'; then
  pass "tenant create prints ID NAME"
else
  failed "tenant create does not print ID NAME"
fi

# Without a price book a grant needs its currency; with one it must match the book's.
expect_error "grant without a book or currency" "--currency CODE" $meterctl credit grant acme 5.00
if $meterctl credit grant acme 5.00 --currency EUR | grep -q "5.00 EUR"; then
  pass "grant in a given currency before any book"
else
  failed "grant in a given currency before any book"
fi
$meterctl pricebook load "$source_dir/data/pricebooks/default.json" >/dev/null
expect_error "grant in another currency than the book" "omit --currency" \
  $meterctl credit grant acme 10.00 --currency EUR
expect_error "grant in another currency names the book's" "bills in USD" \
  $meterctl credit grant acme 10.00 --currency EUR
if $meterctl credit grant acme 10.00 | grep -q "10.00 USD" &&
   $meterctl credit grant acme 1.00 --currency USD | grep -q "1.00 USD"; then
  pass "grant in the book's currency"
else
  failed "grant in the book's currency"
fi
if $meterctl usage acme --period 2024-01 2>&1 >/dev/null | grep -q "credit grant 1 is in EUR"; then
  pass "the draft names the grant it cannot use"
else
  failed "the draft does not name the grant in EUR"
fi

# Frames that meterd rejects are counted by status in the replay summary, with exit status 1.
$meterctl tenant create beta --service-start 2024-01-01 >/dev/null
$meterctl key create acme --keys-file "$work/keys" >/dev/null
$meterctl key create beta --keys-file "$work/keys-beta" >/dev/null
$build/meterd --data "$METER_DATA" --tcp-port 0 --udp-port 0 --port-file "$work/ports" \
  2>"$work/meterd.log" &
meterd_pid=$!
for _ in $(seq 100); do [ -s "$work/ports" ] && break; sleep 0.05; done
port=$(sed -n 's/^tcp=\([0-9]*\) .*/\1/p' "$work/ports")
trace=$source_dir/data/traces/AzureLLMInferenceTrace_conv.csv

# replay_rejects "what" KEYS_FILE "status name"
replay_rejects() {
  local what=$1 keys=$2 status_name=$3 status=0
  $meterctl replay --keys "$keys" --trace "$trace" --limit 50 --tcp "127.0.0.1:$port" --quiet \
    >"$work/replay.out" 2>"$work/replay.err" || status=$?
  if [ "$status" -ne 1 ]; then
    failed "$what: exit status $status, expected 1: $(cat "$work/replay.out" "$work/replay.err")"
  elif ! grep -qE "^replay: [0-9]+ frames? rejected" "$work/replay.err" ||
       ! grep -q "^replay:   $status_name: [0-9]* frame" "$work/replay.err"; then
    failed "$what: the summary does not count $status_name: $(cat "$work/replay.err")"
  else
    pass "$what"
  fi
}

key_id=$(awk '{print $3}' "$work/keys" | cut -d_ -f2)
$meterctl key revoke "$key_id" >/dev/null
replay_rejects "replay with a revoked key" "$work/keys" revoked_key
umask 077
zeros=0000000000000000000000000000000000000000000000000000000000000000
awk -v zeros="$zeros" '{$3 = substr($3, 1, 21) zeros; print}' "$work/keys-beta" \
  >"$work/keys-bad-secret"
replay_rejects "replay with a wrong secret" "$work/keys-bad-secret" bad_mac
awk '{$3 = "hmk_0123456789abcdef_" substr($3, 22); print}' "$work/keys-beta" >"$work/keys-unknown"
replay_rejects "replay with an unknown key" "$work/keys-unknown" unknown_key
acme_id=$(awk '{print $1}' "$work/keys")
awk -v id="$acme_id" '{$1 = id; print}' "$work/keys-beta" >"$work/keys-other-tenant"
replay_rejects "replay with another tenant's key" "$work/keys-other-tenant" wrong_tenant
kill -TERM "$meterd_pid"
wait "$meterd_pid" || true
meterd_pid=

if [ "$failures" -gt 0 ]; then
  echo "$failures checks failed"
  exit 1
fi
echo "all checks passed"
