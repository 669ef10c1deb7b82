#!/usr/bin/env bash
# meterctl export stripe against tests/stripe_standin.py on loopback, over TLS
# with a self-signed certificate made here. Three tenants (two in USD, one in
# JPY) send May 2024 usage to a real meterd; May is closed and exported. The
# test checks exact amounts per line and per invoice, every invoice and item
# exactly once through injected faults (429, 500 with Stripe-Should-Retry, a
# reply slower than the timeout, a connection dropped after the request was
# executed), voids, --check, bad keys and options, a missing customer id, and
# that the API key appears in no output. The exporter killed with SIGKILL
# is tested in e2e_stripe_kill.sh.
# Usage: bash tests/e2e_stripe.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
source_dir=$2
# shellcheck source=tests/stripe_lib.sh
. "$source_dir/tests/stripe_lib.sh"
stripe_setup

# The stand-in's own conventions (auth, idempotency, form keys, error shapes) come first.
if python3 "$source_dir/tests/stripe_standin.py" --self-test >"$work/selftest.out" 2>&1; then
  pass "stand-in self-test"
else
  failed "stand-in self-test: $(grep -v '^ok' "$work/selftest.out")"
fi

# ---- A stand-in over TLS ----

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/tls.key" -out "$work/tls.crt" \
  -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null
standin_start --tls-cert "$work/tls.crt" --tls-key "$work/tls.key"
base=https://127.0.0.1:$standin_port
export STRIPE_API_KEY=$api_key

# ---- Options and keys: each error names the value and the fix, and sends nothing ----

expect_error "API key on the command line" "set STRIPE_API_KEY or use --api-key-file" \
  $meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --api-key "$api_key"
expect_error "no API key" "missing Stripe API key" \
  env -u STRIPE_API_KEY $meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt"
printf '%s\n' "$api_key" >"$work/open-key"
chmod 644 "$work/open-key"
expect_error "API key file readable by others" "chmod 600 $work/open-key" \
  env -u STRIPE_API_KEY $meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" \
  --api-key-file "$work/open-key"
printf 'not a key\n' >"$work/bad-key-file"
chmod 600 "$work/bad-key-file"
expect_error "API key file without a key" "does not contain one Stripe secret key" \
  env -u STRIPE_API_KEY $meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" \
  --api-key-file "$work/bad-key-file"
expect_error "plain http to another host" 'invalid --api-base "http://192.0.2.1"' \
  $meterctl export stripe --api-base http://192.0.2.1
expect_error "rate out of range" 'invalid --rate "0"' \
  $meterctl export stripe --api-base "$base" --rate 0
expect_error "unknown option" '"--colour"' $meterctl export stripe --colour blue
expect_error "unknown tenant" '"nobody"' $meterctl export stripe --tenant nobody
expect_error "invalid customer id" 'invalid --stripe-customer "customer-1"' \
  $meterctl tenant set acme --stripe-customer customer-1

# ---- A tenant without a Stripe customer id ----

$meterctl tenant set beta --stripe-customer cus_beta002 >/dev/null
$meterctl tenant set yen --stripe-customer cus_yen003 >/dev/null
expect_error "certificate not trusted without --ca-file" "SSL certificate problem" \
  $meterctl export stripe --api-base "$base" --tenant beta
expect_error "bad API key" "HTTP 401 invalid_request_error" \
  env STRIPE_API_KEY=sk_test_wrongkey0000 $meterctl export stripe --api-base "$base" \
  --ca-file "$work/tls.crt" --tenant beta
expect_error "bad API key names the fix" \
  "Stripe rejected the API key: check that STRIPE_API_KEY, or the file given with --api-key-file" \
  env STRIPE_API_KEY=sk_test_wrongkey0000 $meterctl export stripe --api-base "$base" \
  --ca-file "$work/tls.crt" --tenant beta
expect_count "nothing created by the rejected runs" "$(standin_count invoices)" 0
expect_error "tenant without customer id" \
  'tenant acme has no Stripe customer id; set it with `meterctl tenant set acme --stripe-customer cus_...`' \
  $meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --tenant acme
expect_count "nothing created for a tenant without customer id" "$(standin_count invoices)" 0
$meterctl tenant set acme --stripe-customer cus_acme001 >/dev/null

# ---- Export through every fault ----

# The first invoice create fails with 500 (retry allowed), the second item gets 429, the third
# item is executed and its connection dropped, the first finalize is executed and answered
# after the 2 s timeout. Each must be retried with the same idempotency key.
standin_faults '[
  {"method": "POST", "path_prefix": "/v1/invoices", "kind": "500", "should_retry": "true"},
  {"method": "POST", "path_prefix": "/v1/invoiceitems", "kind": "429", "retry_after": 1, "skip": 1},
  {"method": "POST", "path_prefix": "/v1/invoiceitems", "kind": "drop", "skip": 2},
  {"method": "POST", "path_prefix": "/v1/invoices/in_", "kind": "delay", "ms": 2500}]'
status=0
$meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --timeout 2 --debug \
  >"$work/export.out" 2>"$work/export.err" || status=$?
expect_count "export through faults exits 0" "$status" 0
grep -q 'reason="HTTP 500"' "$work/export.err" && pass "500 retried" || failed "500 not retried"
grep -q 'reason="HTTP 429" delay_ms=1' "$work/export.err" && pass "429 retried after Retry-After" ||
  failed "429 not retried with Retry-After: $(grep retry "$work/export.err")"
# libcurl itself resends a request whose reused connection died before any reply, and the
# exporter retries otherwise: either way the same key must come back as a replay.
for fault in drop delay; do
  expect_count "$fault: the executed request was sent again and replayed" "$(standin_query "
    sorted({r['idempotency_key'] for r in s['requests'] if r.get('fault') == '$fault'}
           & {r['idempotency_key'] for r in s['requests'] if r.get('idempotency') == 'replayed'})
    == sorted({r['idempotency_key'] for r in s['requests'] if r.get('fault') == '$fault'}) != []")" True
done
grep -q 'reason="Operation timed out after' "$work/export.err" && pass "timeout retried" ||
  failed "timeout not retried: $(grep retry "$work/export.err")"
expect_count "every fault was applied" "$(standin_faults_applied)" 4
grep -q 'Authorization: Bearer \[REDACTED\]' "$work/export.err" &&
  pass "debug output shows the Authorization header redacted" ||
  failed "debug output has no redacted Authorization header"
stripe_verify "after the export through faults" || true

# Hand-computed totals. acme: 14.68 (see e2e_rerate.sh). beta: 15.59 less a credit of 5.00 =
# 10.59. yen: base 1000 + GPU 660 s at 360/h = 66 + input 2.5M at 150/M = 375 + output 0.25M at
# 300/M = 75 + 2 API calls at 1 = 2, total 1518 JPY.
expect_total "acme total" HM-000001 1468 usd
expect_total "beta total" HM-000002 1059 usd
expect_total "yen total" HM-000003 1518 jpy
expect_item "yen input tokens as a sub-yen decimal unit price" HM-000003 input_tokens \
  '"unit_amount_decimal": "0.00015"'
expect_item "acme API calls as a decimal" HM-000001 api_calls '"quantity_decimal": "2"'
expect_item "acme discount as a negative amount" HM-000001 discount '"amount": -4'
expect_item "beta credits as a negative item" HM-000002 credits '"amount": -500'

# ---- A rerun sends nothing ----

status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" 2>&1) || status=$?
expect_count "rerun exits 0" "$status" 0
grep -q "exported=0 voided=0 unchanged=3 failed=0 credit_notes_not_exported=0 requests=0" \
  <<<"$output" && pass "rerun sends no request" || failed "rerun: $output"

# ---- --check ----

status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --check 2>&1) ||
  status=$?
expect_count "check exits 0" "$status" 0
grep -q "matching=3 different=0" <<<"$output" && pass "check: all match" || failed "check: $output"
yen_invoice=$(standin_invoice_id HM-000003)
standin_post /_test/tamper "{\"invoice\": \"$yen_invoice\", \"total\": 1519}" >/dev/null
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --check 2>&1) ||
  status=$?
expect_count "check of a changed total exits 1" "$status" 1
grep -qF "HM-000003 $yen_invoice: DIFFERENT total: ours 1518 JPY, Stripe 1519 JPY" <<<"$output" &&
  pass "check names the difference" || failed "check output: $output"
standin_post /_test/tamper "{\"invoice\": \"$yen_invoice\", \"total\": 1518}" >/dev/null

# ---- Void, a new revision and a credit note ----

$meterctl invoice void HM-000001 --reason "wrong customer" >/dev/null
# Stripe-Should-Retry: false is obeyed: one attempt, an error, nothing stored.
standin_faults '[{"method": "POST", "path_prefix": "/v1/invoices/in_", "kind": "500",
                  "should_retry": "false"}]'
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" 2>&1) || status=$?
expect_count "void with Stripe-Should-Retry false exits 1" "$status" 1
expect_count "Stripe-Should-Retry false: one attempt" \
  "$(standin_requests_to '/void')" 1
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" 2>&1) || status=$?
expect_count "void export exits 0" "$status" 0
grep -q "HM-000001 acme 2024-05 14.68 USD: voided Stripe invoice" <<<"$output" &&
  pass "void exported" || failed "void export: $output"
expect_status "Stripe invoice of HM-000001 is void" HM-000001 void
$meterctl close --period 2024-05 >/dev/null 2>&1
$meterctl invoice credit-note HM-000002 --amount 1.00 --reason "goodwill" >/dev/null
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" 2>&1) || status=$?
expect_count "export of the revision exits 0" "$status" 0
grep -q "HM-000004 acme 2024-05 14.68 USD: exported as" <<<"$output" &&
  pass "revision 2 exported as a new invoice" || failed "revision export: $output"
grep -q "HM-CN-000001 beta 2024-05 1.00 USD: credit note of HM-000002 not exported" <<<"$output" &&
  pass "credit note listed as not exported" || failed "credit note: $output"
expect_total "acme revision 2 total" HM-000004 1468 usd
grep -q '"idempotency_key": "hm-HM-000004-r2-invoice"' "$work/standin.log" &&
  pass "revision 2 keys carry r2" || failed "no key hm-HM-000004-r2-invoice in the request log"
stripe_verify "after void and revision" || true
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --check 2>&1) ||
  status=$?
expect_count "check after void exits 0" "$status" 0
grep -q "matching=4 different=0" <<<"$output" && pass "check after void: all match" ||
  failed "check after void: $output"

# ---- --check with an invoice voided before its export ----

# HM-000004 is exported and then voided; its revision HM-000005 is voided before any export, so
# --check lists it apart from the matching invoices; HM-000006 is the exported revision.
$meterctl invoice void HM-000004 --reason "wrong customer again" >/dev/null
$meterctl close --period 2024-05 >/dev/null 2>&1
$meterctl invoice void HM-000005 --reason "wrong meter" >/dev/null
$meterctl close --period 2024-05 >/dev/null 2>&1
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" 2>&1) || status=$?
expect_count "export of a void before export exits 0" "$status" 0
grep -q "HM-000005 acme 2024-05 14.68 USD: void before export, nothing sent to Stripe" \
  <<<"$output" && pass "void before export sends nothing" || failed "void before export: $output"
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --check 2>&1) ||
  status=$?
expect_count "check with a void before export exits 0" "$status" 0
grep -q "invoices=6 matching=5 different=0 not_exported_void=1 failed=0" <<<"$output" &&
  pass "check counts a void before export apart" || failed "check of void before export: $output"
grep -qF "HM-000005 -: not exported: void before its export finished" <<<"$output" &&
  pass "check names the invoice void before export" ||
  failed "check of void before export: $output"

# ---- The key never reaches any output ----

if grep -rqF "$api_key" "$work"/*.out "$work"/*.err "$work/standin.log" "$work/standin.err"; then
  failed "the API key appears in an output: $(grep -rlF "$api_key" "$work")"
else
  pass "the API key appears in no output"
fi

stripe_finish
