#!/usr/bin/env bash
# meterctl rerate and meterctl invoice explain against a real meterd on
# loopback. Two tenants send usage of May and June 2024 from small traces
# written here; May is closed. The re-rated totals are checked against
# amounts computed by hand below, the explanations against the events sent,
# and every bad input of both commands against its error message.
# Usage: bash tests/e2e_rerate.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
work=$(mktemp -d /tmp/hm-e2e-rerate-XXXXXX)
meterd_pid=
cleanup() {
  if [ -n "$meterd_pid" ]; then
    kill "$meterd_pid" 2>/dev/null || true
    wait "$meterd_pid" 2>/dev/null || true
  fi
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
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

# expect_row "what" OUTPUT TENANT STATUS CURRENT RERATED DIFFERENCE
expect_row() {
  local what=$1 output=$2
  shift 2
  local want="$*" got
  got=$(awk -v tenant="$1" '$1 == tenant { $1 = $1; print }' <<<"$output")
  if [ "$got" = "$want" ]; then
    pass "$what"
  else
    failed "$what: expected row \"$want\", got \"$got\"; output: $output"
  fi
}

# ---- Price books ----

# The book the tenants are billed with. gpu_hour 3.60 is 0.001 per GPU-second.
cat >"$work/current.json" <<'JSON'
{"name": "e2e-current", "currency": "USD", "base_fee": "10.00",
 "gpu_hour": {"*": "3.60"},
 "tokens_per_million": {"*": {"input": "1.00", "output": "2.00"}},
 "api_calls_per_million": "1000000",
 "gpu_volume_discount": {"mode": "volume", "tiers": [{"above_hours": "0", "percent": "10"}]}}
JSON
# The book to re-rate with. gpu_hour 7.20 is 0.002 per GPU-second; 0.50 per API call.
cat >"$work/new.json" <<'JSON'
{"name": "e2e-new", "currency": "USD", "base_fee": "20.00",
 "gpu_hour": {"A100": "7.20"},
 "tokens_per_million": {"*": {"input": "0.50", "output": "4.00"}},
 "api_calls_per_million": "500000"}
JSON
cat >"$work/yen.json" <<'JSON'
{"name": "e2e-yen", "currency": "JPY", "base_fee": "1000"}
JSON
# Three errors: a number that is not a string, a decimal comma and an unknown key.
cat >"$work/bad.json" <<'JSON'
{"name": "bad", "currency": "USD", "gpu_hour": {"A100": 7.2},
 "tokens_per_million": {"*": {"input": "0,50"}}, "colour": "blue"}
JSON

# ---- Usage ----
#
# Each tenant replays its own trace with its own keys file (one tenant per
# file, so every row belongs to it). Per row: one inference and one API call
# event. Per minute with rows: one A100 event of 60 s per started 250,000
# tokens (input + output) of that minute (docs/REPLAY.md).
#
# acme, May: row 1: 1,000,000 in, 500,000 out -> 6 GPUs -> 360 s
#            row 2:   200,000 in,  50,000 out -> 1 GPU  ->  60 s
#   input 1,200,000, output 550,000, 2 API calls, A100 420 s in 2 events
# acme, June: row 3: 3,000,000 in, 1,000,000 out -> 16 GPUs -> 960 s
# beta, May: rows 1 and 2 in one minute: 2,000,000 + 0 and 500,000 + 250,000
#   -> 2,750,000 tokens -> 11 GPUs -> 660 s in 1 event
#   input 2,500,000, output 250,000, 2 API calls
cat >"$work/acme_code.csv" <<'CSV'
TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-10 10:00:00.0000000,1000000,500000
2024-05-20 12:00:30.0000000,200000,50000
2024-06-05 08:00:00.0000000,3000000,1000000
CSV
cat >"$work/beta_code.csv" <<'CSV'
TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-15 00:00:00.0000000,2000000,0
2024-05-15 00:00:10.0000000,500000,250000
CSV

$meterctl tenant create acme --service-start 2024-05-01 >/dev/null
$meterctl tenant create beta --service-start 2024-05-01 >/dev/null
$meterctl key create acme --keys-file "$work/keys-acme" >/dev/null
$meterctl key create beta --keys-file "$work/keys-beta" >/dev/null
$meterctl pricebook load "$work/current.json" >/dev/null

$build/meterd --data "$METER_DATA" --host 127.0.0.1 --tcp-port 0 --udp-port 0 \
  --port-file "$work/ports" --log-level warn 2>"$work/meterd.log" &
meterd_pid=$!
for _ in $(seq 100); do [ -s "$work/ports" ] && break; sleep 0.05; done
port=$(sed -n 's/^tcp=\([0-9]*\) .*/\1/p' "$work/ports")
[ -n "$port" ] || { echo "FAIL meterd did not start: $(cat "$work/meterd.log")"; exit 1; }
for tenant in acme beta; do
  summary=$($meterctl replay --keys "$work/keys-$tenant" --trace "$work/${tenant}_code.csv" \
    --tcp "127.0.0.1:$port" --quiet)
  # acme: 3 rows in 3 minutes -> 6 row events + 3 GPU events; beta: 2 rows in 1 minute -> 4 + 1.
  want=$([ "$tenant" = acme ] && echo 9 || echo 5)
  if grep -q " stored=$want " <<<"$summary"; then
    pass "replay of $tenant stored $want events"
  else
    failed "replay of $tenant: expected stored=$want; $summary"
  fi
done
kill -TERM "$meterd_pid"
wait "$meterd_pid" || true
meterd_pid=

$meterctl close --period 2024-05 >/dev/null

# ---- rerate of a closed period ----
#
# acme, May, current book:
#   base 10.00 + GPU 420 s x 0.001 = 0.42 + input 1.2 x 1.00 = 1.20
#   + output 0.55 x 2.00 = 1.10 + API 2 x 1.00 = 2.00 = 14.72
#   discount 10 % of 0.42 = 0.042 -> 0.04; total 14.68
# acme, May, new book:
#   20.00 + 420 x 0.002 = 0.84 + 1.2 x 0.50 = 0.60 + 0.55 x 4.00 = 2.20
#   + 2 x 0.50 = 1.00 -> 24.64; difference 24.64 - 14.68 = 9.96
# beta, May, current book:
#   10.00 + 660 x 0.001 = 0.66 + 2.5 x 1.00 = 2.50 + 0.25 x 2.00 = 0.50 + 2.00 = 15.66
#   discount 0.066 -> 0.07; total 15.59
# beta, May, new book:
#   20.00 + 660 x 0.002 = 1.32 + 2.5 x 0.50 = 1.25 + 0.25 x 4.00 = 1.00 + 1.00 = 24.57
#   difference 24.57 - 15.59 = 8.98
# total: 14.68 + 15.59 = 30.27; 24.64 + 24.57 = 49.21; 9.96 + 8.98 = 18.94
before=$(md5sum <"$METER_DATA/data.mdb")
status=0
output=$($meterctl rerate --period 2024-05 --book "$work/new.json" 2>&1) || status=$?
if [ "$status" -eq 0 ]; then
  pass "rerate exits 0"
else
  failed "rerate exit status $status: $output"
fi
expect_row "rerate acme May" "$output" acme finalized 14.68 24.64 9.96
expect_row "rerate beta May" "$output" beta finalized 15.59 24.57 8.98
expect_row "rerate total May" "$output" total 30.27 49.21 18.94
if [ "$(md5sum <"$METER_DATA/data.mdb")" = "$before" ]; then
  pass "rerate leaves the ledger file unchanged"
else
  failed "rerate changed the ledger file"
fi

# Under the book that billed them, the re-rated totals equal the sealed ones.
output=$($meterctl rerate --period 2024-05 --book "$work/current.json" 2>&1)
expect_row "rerate under the billing book: acme" "$output" acme finalized 14.68 14.68 0.00
expect_row "rerate under the billing book: total" "$output" total 30.27 30.27 0.00

# ---- rerate of an open period (drafts) ----
#
# acme, June, current: 10.00 + 960 x 0.001 = 0.96 + 3.00 + 1.0 x 2.00 = 2.00 + 1.00 = 16.96,
#   discount 0.096 -> 0.10; total 16.86
# acme, June, new: 20.00 + 960 x 0.002 = 1.92 + 3.0 x 0.50 = 1.50 + 1.0 x 4.00 = 4.00
#   + 0.50 = 27.92; difference 27.92 - 16.86 = 11.06
output=$($meterctl rerate --period 2024-06 --book "$work/new.json" --tenant acme 2>&1)
expect_row "rerate acme June draft" "$output" acme draft 16.86 27.92 11.06
expect_row "rerate one tenant total" "$output" total 16.86 27.92 11.06
# beta has no June usage: base fee only, 10.00 against 20.00.
output=$($meterctl rerate --period 2024-06 --book "$work/new.json" 2>&1)
expect_row "rerate beta June base fee only" "$output" beta draft 10.00 20.00 10.00
expect_row "rerate June total" "$output" total 26.86 47.92 21.06

# ---- invoice explain ----

$meterctl invoice explain acme --period 2024-05 --json >"$work/explain-may.json"
# Per meter, the events of the usage lines: 2 GPU events (420 s), 2 inference events each for
# input and output tokens, 2 API calls. The checks must match these and the quantities sent.
python3 - "$work/explain-may.json" <<'PYTHON' && pass "explain May: events add up per meter" ||
import json, sys
from collections import Counter
result = json.load(open(sys.argv[1]))
assert result["status"] == "finalized", result["status"]
lines = result["lines"]
events, quantity = Counter(), Counter()
for line in lines:
    rollup = line.get("rollup")
    if rollup:
        assert rollup["key"].startswith(result["tenant_id"] + "/2024-05/" + rollup["meter"]), rollup
        events[rollup["meter"]] += rollup["events"]
        quantity[rollup["meter"]] += int(rollup["quantity"])
want_events = {"gpu_seconds": 2, "input_tokens": 2, "output_tokens": 2, "api_calls": 2}
want_quantity = {"gpu_seconds": 420, "input_tokens": 1200000, "output_tokens": 550000,
                 "api_calls": 2}
assert dict(events) == want_events, dict(events)
assert dict(quantity) == want_quantity, dict(quantity)
for check in result["events_check"]:
    assert check["match"], check
    assert check["line_events"] == want_events[check["meter"]], check
assert sum(c["period_events"] for c in result["events_check"]) == 8
PYTHON
  failed "explain May: events do not add up; $(cat "$work/explain-may.json")"

python3 - "$work/explain-may.json" <<'PYTHON' && pass "explain May: base fee and discount" ||
import json, sys
result = json.load(open(sys.argv[1]))
lines = result["lines"]
fee = lines[0]["fee"]
# May has 31 days: 2,678,400 seconds, all of them in service from 2024-05-01.
assert fee["price"] == "10.00", fee
assert fee["service_seconds"] == 2678400, fee
assert fee["period_seconds"] == 2678400, fee
discount = [line for line in lines if line["kind"] == "discount"][0]["discount"]
gpu_lines = [line["line"] for line in lines if line["kind"] == "gpu"]
assert discount["applies_to_lines"] == gpu_lines, discount
assert discount["base"] == "0.42", discount
# 420 GPU-seconds / 3600 = 0.1166... GPU-hours, shown to 12 digits.
assert discount["driver_quantity"] == "0.116666666667", discount
assert discount["driver_raw_quantity"] == "420", discount
PYTHON
  failed "explain May: fee or discount; $(cat "$work/explain-may.json")"

output=$($meterctl invoice explain acme --period 2024-05)
if grep -q "gpu_seconds *2 *2  match" <<<"$output" &&
   grep -q "api_calls *2 *2  match" <<<"$output"; then
  pass "explain table shows the events check"
else
  failed "explain table: $output"
fi
output=$($meterctl invoice explain acme --period 2024-05 --line 2 --json)
if python3 -c '
import json, sys
r = json.loads(sys.argv[1])
assert len(r["lines"]) == 1, r
assert r["lines"][0]["line"] == 2, r
' "$output"; then
  pass "explain --line 2 explains one line"
else
  failed "explain --line 2: $output"
fi
# The June draft of acme: 960 GPU-seconds in 1 event.
output=$($meterctl invoice explain acme --period 2024-06 --json)
if python3 -c '
import json, sys
r = json.loads(sys.argv[1])
assert r["status"] == "draft"
gpu = [l["rollup"] for l in r["lines"] if l["kind"] == "gpu"]
assert [g["quantity"] for g in gpu] == ["960"] and [g["events"] for g in gpu] == [1], gpu
' "$output"; then
  pass "explain of a draft"
else
  failed "explain of a draft: $output"
fi

# ---- Bad input ----

expect_error "rerate without --period" "missing --period" $meterctl rerate --book "$work/new.json"
expect_error "rerate with an invalid period" '"2024-13"' \
  $meterctl rerate --period 2024-13 --book "$work/new.json"
expect_error "rerate without --book" "missing --book" $meterctl rerate --period 2024-05
expect_error "rerate with a missing book file" "$work/missing.json" \
  $meterctl rerate --period 2024-05 --book "$work/missing.json"
expect_error "rerate bad book: count" "bad.json: 3 errors" \
  $meterctl rerate --period 2024-05 --book "$work/bad.json"
expect_error "rerate bad book: number path" '$.gpu_hour.A100' \
  $meterctl rerate --period 2024-05 --book "$work/bad.json"
expect_error "rerate bad book: decimal path" '$.tokens_per_million["*"].input' \
  $meterctl rerate --period 2024-05 --book "$work/bad.json"
expect_error "rerate bad book: unknown key path" '$.colour: unknown key' \
  $meterctl rerate --period 2024-05 --book "$work/bad.json"
expect_error "rerate unknown tenant" '"nobody"' \
  $meterctl rerate --period 2024-05 --book "$work/new.json" --tenant nobody
expect_error "rerate unexpected argument" '"--bogus"' \
  $meterctl rerate --period 2024-05 --book "$work/new.json" --bogus
expect_error "explain without --period" "missing --period" $meterctl invoice explain acme
expect_error "explain unknown tenant" '"nobody"' $meterctl invoice explain nobody --period 2024-05
expect_error "explain --line out of range" "pick --line 1 to" \
  $meterctl invoice explain acme --period 2024-05 --line 99
expect_error "explain --line 0" 'invalid --line "0"' \
  $meterctl invoice explain acme --period 2024-05 --line 0
expect_error "explain --line not a number" 'invalid --line "two"' \
  $meterctl invoice explain acme --period 2024-05 --line two
expect_error "explain without a tenant" "usage: meterctl invoice explain" $meterctl invoice explain

# A tenant billed in yen cannot be re-rated with a book in dollars; the others still are.
$meterctl tenant create gamma --service-start 2024-05-01 >/dev/null
$meterctl pricebook load "$work/yen.json" --tenant gamma >/dev/null
expect_error "rerate currency mismatch" "is in JPY, but price book $work/new.json prices in USD" \
  $meterctl rerate --period 2024-06 --book "$work/new.json" --tenant gamma
status=0
output=$($meterctl rerate --period 2024-05 --book "$work/new.json" 2>&1) || status=$?
if [ "$status" -eq 1 ] && grep -q "tenant gamma" <<<"$output"; then
  pass "rerate of all tenants reports the tenant in another currency and exits 1"
else
  failed "rerate with one tenant in another currency: status $status; $output"
fi
expect_row "the others are re-rated beside it" "$output" total 30.27 49.21 18.94

if [ "$failures" -gt 0 ]; then
  echo "$failures checks failed"
  exit 1
fi
echo "all checks passed"
