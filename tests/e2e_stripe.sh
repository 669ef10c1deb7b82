#!/usr/bin/env bash
# meterctl export stripe against tests/stripe_standin.py on loopback, over TLS
# with a self-signed certificate made here. Three tenants (two in USD, one in
# JPY) send May 2024 usage to a real meterd; May is closed and exported. The
# test checks exact amounts per line and per invoice, every invoice and item
# exactly once through injected faults (429, 500 with Stripe-Should-Retry, a
# reply slower than the timeout, a connection dropped after the request was
# executed), voids, --check, bad keys and options, a missing customer id, and
# that the API key appears in no output. Credit notes: one that waits for its
# invoice, one whose reply is lost, their voids before their invoices' voids,
# one against a paid invoice, --check of a changed amount, and Stripe's
# rejections. The exporter killed with SIGKILL
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
# A credit note of acme's invoice waits while the invoice cannot be exported. Its reason is one of
# Stripe's reasons, so it is sent as the reason too.
$meterctl invoice credit-note HM-000001 --amount 2.00 --reason duplicate >/dev/null
expect_error "tenant without customer id" \
  'tenant acme has no Stripe customer id; set it with `meterctl tenant set acme --stripe-customer cus_...`' \
  $meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --tenant acme
expect_count "nothing created for a tenant without customer id" "$(standin_count invoices)" 0
grep -qF "HM-CN-000001 acme 2024-05 2.00 USD: waits for invoice HM-000001, which is not finalized in Stripe yet" \
  "$work/commands.out" && pass "credit note waits for its invoice" ||
  failed "credit note does not wait: $(tail -3 "$work/commands.out")"
grep -q "credit_notes=1 credit_notes_exported=0 credit_notes_voided=0 credit_notes_unchanged=0 credit_notes_waiting=1" \
  "$work/commands.out" && pass "waiting credit note counted" || failed "waiting credit note not counted"
expect_count "no credit note sent before its invoice" "$(standin_count credit_notes)" 0
$meterctl tenant set acme --stripe-customer cus_acme001 >/dev/null

# ---- Export through every fault ----

# The first invoice create fails with 500 (retry allowed), the second item gets 429, the third
# item is executed and its connection dropped, the first finalize is executed and answered
# after the 2 s timeout, the credit note is executed and its connection dropped. Each must be
# retried with the same idempotency key.
standin_faults '[
  {"method": "POST", "path_prefix": "/v1/invoices", "kind": "500", "should_retry": "true"},
  {"method": "POST", "path_prefix": "/v1/invoiceitems", "kind": "429", "retry_after": 1, "skip": 1},
  {"method": "POST", "path_prefix": "/v1/invoiceitems", "kind": "drop", "skip": 2},
  {"method": "POST", "path_prefix": "/v1/invoices/in_", "kind": "delay", "ms": 2500},
  {"method": "POST", "path_prefix": "/v1/credit_notes", "kind": "drop"}]'
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
expect_count "every fault was applied" "$(standin_faults_applied)" 5
grep -q 'Authorization: Bearer \[REDACTED\]' "$work/export.err" &&
  pass "debug output shows the Authorization header redacted" ||
  failed "debug output has no redacted Authorization header"
stripe_verify "after the export through faults" || true
grep -qE "^HM-CN-000001 acme 2024-05 2.00 USD: exported as Stripe credit note cn_[A-Za-z0-9]+ of in_[A-Za-z0-9]+ \(issued\)$" \
  "$work/export.out" && pass "credit note exported after its invoice in the same run" ||
  failed "credit note export: $(cat "$work/export.out")"
expect_count "credit note created once through a lost reply" "$(standin_query "
  [(n['amount'], n['currency'], n['reason'], n['metadata'], n['memo'], n['status'])
   for n in s['credit_notes']]")" \
  "[(200, 'usd', 'duplicate', {'credit_note_number': 'HM-CN-000001', 'invoice_number': 'HM-000001', 'tenant_id': '$($meterctl tenant list | awk '$2 == "acme" { print $1 }')'}, 'Credit note HM-CN-000001 of invoice HM-000001: duplicate', 'issued')]"
expect_count "credit note key from its number" "$(standin_query "
  sorted({r['idempotency_key'] for r in s['requests'] if r['path'] == '/v1/credit_notes'})")" \
  "['hm-HM-CN-000001-credit-note']"
expect_count "credit note lowers the Stripe invoice's amount due" "$(standin_query "
  [(i['total'], i['amount_due'], i['pre_payment_credit_notes_amount']) for i in s['invoices']
   if i['metadata'].get('invoice_number') == 'HM-000001']")" "[(1468, 1268, 200)]"

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
grep -q "exported=0 voided=0 unchanged=3 failed=0 credit_notes=1 credit_notes_exported=0 credit_notes_voided=0 credit_notes_unchanged=1 credit_notes_waiting=0 requests=0" \
  <<<"$output" && pass "rerun sends no request" || failed "rerun: $output"

# ---- --check ----

status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --check 2>&1) ||
  status=$?
expect_count "check exits 0" "$status" 0
grep -q "matching=4 different=0" <<<"$output" && pass "check: all match" || failed "check: $output"
grep -qE "^HM-CN-000001 cn_[A-Za-z0-9]+: matches \(amount 2.00 USD of HM-000001, Stripe status issued\)$" \
  <<<"$output" && pass "check: credit note matches" || failed "check: $output"
# expect_check_difference "what" CHANGE RESTORE LINE: after the stand-in's /_test/tamper CHANGE,
# --check exits 1 and prints LINE; RESTORE then sets Stripe's copy back.
expect_check_difference() {
  standin_post /_test/tamper "$2" >/dev/null
  local status=0 output
  output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --check 2>&1) ||
    status=$?
  expect_count "$1: check exits 1" "$status" 1
  grep -qF "$4" <<<"$output" && pass "$1: check names the difference" ||
    failed "$1: check output: $output"
  standin_post /_test/tamper "$3" >/dev/null
}
acme_note=$(standin_query "s['credit_notes'][0]['id']")
expect_check_difference "changed credit note amount" \
  "{\"credit_note\": \"$acme_note\", \"amount\": 201}" \
  "{\"credit_note\": \"$acme_note\", \"amount\": 200}" \
  "HM-CN-000001 $acme_note: DIFFERENT amount: ours 2.00 USD, Stripe 2.01 usd"
yen_invoice=$(standin_invoice_id HM-000003)
expect_check_difference "changed invoice total" \
  "{\"invoice\": \"$yen_invoice\", \"total\": 1519}" \
  "{\"invoice\": \"$yen_invoice\", \"total\": 1518}" \
  "HM-000003 $yen_invoice: DIFFERENT total: ours 1518 JPY, Stripe 1519 JPY"

# ---- Void, a new revision and a credit note ----

expect_error "void of a credited invoice needs --with-credit-notes" "--with-credit-notes" \
  $meterctl invoice void HM-000001 --reason "wrong customer"
$meterctl invoice void HM-000001 --reason "wrong customer" --with-credit-notes >/dev/null
# Stripe-Should-Retry: false is obeyed: one attempt, an error, nothing stored. The credit note's
# void goes first and succeeds; the invoice's void is the one that fails.
standin_faults '[{"method": "POST", "path_prefix": "/v1/invoices/in_", "kind": "500",
                  "should_retry": "false"}]'
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" 2>&1) || status=$?
expect_count "void with Stripe-Should-Retry false exits 1" "$status" 1
expect_count "Stripe-Should-Retry false: one attempt" \
  "$(standin_query "sum(1 for r in s['requests']
                         if r['path'].startswith('/v1/invoices/') and r['path'].endswith('/void'))")" 1
expect_count "credit note voided before its invoice" "$(standin_query "
  [r['path'].split('/')[2] for r in s['requests'] if r['path'].endswith('/void')]")" \
  "['credit_notes', 'invoices']"
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" 2>&1) || status=$?
expect_count "void export exits 0" "$status" 0
grep -q "HM-000001 acme 2024-05 14.68 USD: voided Stripe invoice" <<<"$output" &&
  pass "void exported" || failed "void export: $output"
grep -q "HM-CN-000001 acme 2024-05 2.00 USD: unchanged, Stripe credit note cn_.* (void)" \
  <<<"$output" && pass "credit note void kept" || failed "credit note void: $output"
expect_status "Stripe invoice of HM-000001 is void" HM-000001 void
expect_count "Stripe credit note of HM-CN-000001 is void" \
  "$(standin_query "[n['status'] for n in s['credit_notes']]")" "['void']"
$meterctl close --period 2024-05 >/dev/null 2>&1
$meterctl invoice credit-note HM-000002 --amount 1.00 --reason "goodwill" >/dev/null
# The yen invoice is paid in Stripe, so its credit note goes to the customer's credit balance.
standin_post /_test/pay "{\"invoice\": \"$yen_invoice\"}" >/dev/null
$meterctl invoice credit-note HM-000003 --amount 18 --reason "outage" >/dev/null
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" 2>&1) || status=$?
expect_count "export of the revision exits 0" "$status" 0
grep -q "HM-000004 acme 2024-05 14.68 USD: exported as" <<<"$output" &&
  pass "revision 2 exported as a new invoice" || failed "revision export: $output"
grep -qE "HM-CN-000002 beta 2024-05 1.00 USD: exported as Stripe credit note cn_[A-Za-z0-9]+ of in_[A-Za-z0-9]+ \(issued\)$" \
  <<<"$output" && pass "credit note of an open invoice exported" || failed "credit note: $output"
grep -qE "HM-CN-000003 yen 2024-05 18 JPY: exported as Stripe credit note cn_[A-Za-z0-9]+ of $yen_invoice \(issued\), 18 JPY to the customer's credit balance$" \
  <<<"$output" && pass "credit note of a paid invoice exported" || failed "credit note: $output"
expect_count "no reason sent for a free text reason" "$(standin_query "
  [n['reason'] for n in s['credit_notes'] if n['metadata']['credit_note_number'] == 'HM-CN-000002']")" \
  "[None]"
expect_count "paid invoice: the credit note is post-payment" "$(standin_query "
  [(i['amount_due'], i['post_payment_credit_notes_amount']) for i in s['invoices']
   if i['id'] == '$yen_invoice']")" "[(1518, 18)]"
expect_total "acme revision 2 total" HM-000004 1468 usd
grep -q '"idempotency_key": "hm-HM-000004-r2-invoice"' "$work/standin.log" &&
  pass "revision 2 keys carry r2" || failed "no key hm-HM-000004-r2-invoice in the request log"
stripe_verify "after void and revision" || true
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --check 2>&1) ||
  status=$?
expect_count "check after void exits 0" "$status" 0
grep -q "matching=7 different=0" <<<"$output" && pass "check after void: all match" ||
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
grep -q "invoices=6 matching=8 different=0 not_exported_void=1 failed=0 credit_notes=3" <<<"$output" &&
  pass "check counts a void before export apart" || failed "check of void before export: $output"
grep -qF "HM-000005 -: not exported: void before its export finished" <<<"$output" &&
  pass "check names the invoice void before export" ||
  failed "check of void before export: $output"

# ---- Credit notes that Stripe rejects ----

# A credit note above what Stripe's invoice still allows: Stripe's total of HM-000006 is lowered
# to 10.00, and the credit note of 12.00 exceeds it.
acme_invoice=$(standin_invoice_id HM-000006)
standin_post /_test/tamper "{\"invoice\": \"$acme_invoice\", \"total\": 1000}" >/dev/null
$meterctl invoice credit-note HM-000006 --amount 12.00 --reason "outage" >/dev/null
expect_error "credit note above the Stripe invoice's total" \
  "credit note HM-CN-000004 of invoice HM-000006: POST /v1/credit_notes: HTTP 400 invalid_request_error code credit_note_amount_too_large param amount: The credit note amount (1200) exceeds the invoice's total (1000)" \
  $meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --tenant acme
grep -q "export failed credit_note=HM-CN-000004" "$work/commands.out" &&
  pass "failed credit note logged" || failed "no log line for the failed credit note"
grep -q "failed=1 credit_notes=2 credit_notes_exported=0" "$work/commands.out" &&
  pass "failed credit note counted" || failed "failed credit note not counted"
standin_post /_test/tamper "{\"invoice\": \"$acme_invoice\", \"total\": 1468}" >/dev/null
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --tenant acme 2>&1) ||
  status=$?
expect_count "credit note sent once Stripe's invoice allows it" "$status" 0
# A void in the ledger whose credit note Stripe cannot void, because beta's invoice is paid:
# the credit note fails with Stripe's error, and the invoice waits for it.
beta_invoice=$(standin_invoice_id HM-000002)
standin_post /_test/pay "{\"invoice\": \"$beta_invoice\"}" >/dev/null
$meterctl invoice void HM-000002 --reason "wrong price" --with-credit-notes >/dev/null
expect_error "credit note void of a paid invoice" \
  "credit note HM-CN-000002 of invoice HM-000002: POST /v1/credit_notes/cn_" \
  $meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --tenant beta
grep -qF "A credit note can only be voided while its invoice is open" "$work/commands.out" &&
  pass "Stripe's reason is shown" || failed "Stripe's reason missing: $(tail -5 "$work/commands.out")"
grep -qF "invoice HM-000002 is not voided in Stripe: its credit note HM-CN-000002" \
  "$work/commands.out" && pass "invoice void waits for its credit note's void" ||
  failed "invoice void not blocked: $(tail -5 "$work/commands.out")"
expect_status "Stripe invoice of HM-000002 stays paid" HM-000002 paid

# A credit note whose create failed is voided in the ledger once its invoice was paid in Stripe.
# The create sent again is rejected, because the stored split no longer fits a paid invoice. So
# Stripe never made it, and the exporter records that nothing is left to void instead of
# failing on every run.
$meterctl invoice credit-note HM-000006 --amount 1.00 --reason "goodwill" >/dev/null
standin_faults '[{"method": "POST", "path_prefix": "/v1/credit_notes", "kind": "500",
                  "should_retry": "false"}]'
$meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --tenant acme \
  >"$work/stuck.out" 2>&1 || true
grep -q "export failed credit_note=HM-CN-000005" "$work/stuck.out" &&
  pass "credit note create failed once" || failed "create of HM-CN-000005: $(cat "$work/stuck.out")"
standin_post /_test/pay "{\"invoice\": \"$acme_invoice\"}" >/dev/null
$meterctl invoice void HM-000006 --reason "wrong customer" --with-credit-notes >/dev/null
$meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --tenant acme \
  >"$work/stuck.out" 2>&1 || true
grep -qF "HM-CN-000005 acme 2024-05 1.00 USD: void before it reached Stripe, which rejected its create" \
  "$work/stuck.out" && pass "void credit note never created is settled" ||
  failed "void credit note never created: $(cat "$work/stuck.out")"
$meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --tenant acme \
  >"$work/stuck.out" 2>&1 || true
grep -qF "HM-CN-000005 acme 2024-05 1.00 USD: void before export, nothing sent to Stripe" \
  "$work/stuck.out" && pass "a rerun sends nothing for it" ||
  failed "rerun for the void credit note: $(cat "$work/stuck.out")"
expect_count "no Stripe credit note for HM-CN-000005" "$(standin_query "
  sum(1 for n in s['credit_notes'] if n['metadata'].get('credit_note_number') == 'HM-CN-000005')")" 0

# ---- A credit note that Stripe has and the ledger does not ----

# A credit note made in Stripe beside the exported one (by hand, or by a rerun after Stripe
# forgot the idempotency key) changes no total, only the invoice's credit note amounts. The yen
# invoice is paid by now, so the extra 100 JPY goes to the customer's credit balance.
# stripe_api PATH [FORM...]: POST to the stand-in's Stripe API; prints the object's id.
stripe_api() {
  python3 - "$base$1" "$api_key" "$work/tls.crt" "${@:2}" <<'PYTHON'
import base64, json, ssl, sys, urllib.parse, urllib.request
url, key, cafile, form = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
body = urllib.parse.urlencode([tuple(field.split("=", 1)) for field in form]).encode()
auth = base64.b64encode((key + ":").encode()).decode()
request = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Authorization": "Basic " + auth})
context = ssl.create_default_context(cafile=cafile)
try:
    print(json.load(urllib.request.urlopen(request, context=context))["id"])
except urllib.error.HTTPError as error:
    sys.exit("POST %s: %d %s" % (url, error.code, error.read().decode()))
PYTHON
}
yen_invoice=$(standin_invoice_id HM-000003)
extra_note=$(stripe_api /v1/credit_notes "invoice=$yen_invoice" amount=100 credit_amount=100)
status=0
output=$($meterctl export stripe --api-base "$base" --ca-file "$work/tls.crt" --check \
  --tenant yen 2>&1) ||
  status=$?
expect_count "credit note made beside the export: check exits 1" "$status" 1
grep -qF "HM-000003 $yen_invoice: DIFFERENT credit notes: ours 18 JPY exported, Stripe counts 118 JPY" \
  <<<"$output" && pass "check names the credit notes Stripe counts" ||
  failed "check of a credit note made beside the export: $output"
[ -n "$extra_note" ] || failed "the stand-in made no credit note"

# ---- The key never reaches any output ----

if grep -rqF "$api_key" "$work"/*.out "$work"/*.err "$work/standin.log" "$work/standin.err"; then
  failed "the API key appears in an output: $(grep -rlF "$api_key" "$work")"
else
  pass "the API key appears in no output"
fi

stripe_finish
