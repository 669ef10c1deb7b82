#!/usr/bin/env bash
# meterctl export stripe against tests/stripe_standin.py on loopback, for the
# cases where the export must refuse or change course: an --api-base whose
# user info hides another host, a key file that is a FIFO, three-decimal
# currency amounts that Stripe cannot collect, an invoice voided while its
# export was half done (its draft is deleted, never finalized), two exports
# at once, and certificates that are expired or for another host.
# Usage: bash tests/e2e_stripe_hardening.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
source_dir=$2
# shellcheck source=tests/stripe_lib.sh
. "$source_dir/tests/stripe_lib.sh"
tls_pids=()
hardening_cleanup() {
  local pid
  for pid in "${tls_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  stripe_cleanup
}
trap hardening_cleanup EXIT
stripe_setup

# Two more tenants billed in KWD, a three-decimal currency: 1.234 KWD and 1.230 KWD.
for tenant in dinar fils; do
  $meterctl tenant create $tenant --service-start 2024-05-01 >/dev/null
done
cat >"$work/dinar.json" <<'JSON'
{"name": "e2e-kwd", "currency": "KWD", "base_fee": "1.234", "api_calls_per_million": "1"}
JSON
cat >"$work/fils.json" <<'JSON'
{"name": "e2e-kwd-round", "currency": "KWD", "base_fee": "1.230", "api_calls_per_million": "1"}
JSON
$meterctl pricebook load "$work/dinar.json" --tenant dinar >/dev/null
$meterctl pricebook load "$work/fils.json" --tenant fils >/dev/null
$meterctl close --period 2024-05 >/dev/null
dinar_number=$($meterctl invoice list | awk '$2 == "invoice" && $3 == "dinar" { print $1 }')
$meterctl tenant set acme --stripe-customer cus_acme001 >/dev/null
$meterctl tenant set beta --stripe-customer cus_beta002 >/dev/null
$meterctl tenant set yen --stripe-customer cus_yen003 >/dev/null
$meterctl tenant set dinar --stripe-customer cus_dinar004 >/dev/null
$meterctl tenant set fils --stripe-customer cus_fils005 >/dev/null
standin_start --customers cus_acme001,cus_beta002,cus_yen003,cus_dinar004,cus_fils005
base=http://127.0.0.1:$standin_port
export STRIPE_API_KEY=$api_key

# ---- An --api-base whose host is not the one its first characters name ----

# libcurl connects to the host after '@': here the stand-in, which must receive nothing.
expect_error "user info before a loopback host" "has a user name or password" \
  $meterctl export stripe --api-base "http://localhost:1@127.0.0.1:$standin_port"
expect_error "user info that hides another host" "has a user name or password" \
  $meterctl export stripe --api-base "http://127.0.0.1:x@attacker.example/"
expect_error "a query in the API base" "it has a query" \
  $meterctl export stripe --api-base "$base/?x=1"
expect_count "nothing reached the stand-in" "$(standin_query "len(s['requests'])")" 0
if grep -qF "attacker.example" "$work/commands.out"; then
  failed "an error repeats the user info of the URL"
else
  pass "errors do not repeat the user info of the URL"
fi

# ---- A key file that is a FIFO fails at once ----

mkfifo -m 600 "$work/key.fifo"
status=0
output=$(timeout 10 env -u STRIPE_API_KEY $meterctl export stripe --api-base "$base" \
  --api-key-file "$work/key.fifo" 2>&1) || status=$?
if [ "$status" = 1 ] && grep -qF "$work/key.fifo is not a regular file (it is a FIFO)" <<<"$output"; then
  pass "a FIFO as key file is refused without waiting"
else
  failed "FIFO key file: status $status: $output"
fi

# ---- Three-decimal currencies; two exports at once ----

# The fils export is slowed by a reply 2.5 s late; a second export meanwhile fails on the lock.
standin_faults '[{"method": "POST", "path_prefix": "/v1/invoices", "kind": "delay", "ms": 2500}]'
$meterctl export stripe --api-base "$base" --tenant fils --timeout 10 >"$work/fils.out" 2>&1 &
fils_pid=$!
sleep 0.8
expect_error "a second export at once" "another \`meterctl export stripe\` is running" \
  $meterctl export stripe --api-base "$base" --tenant dinar
status=0
wait "$fils_pid" || status=$?
expect_count "the first export ends well" "$status" 0
expect_total "1.230 KWD exported" "$($meterctl invoice list | awk '$2 == "invoice" && $3 == "fils" { print $1 }')" 1230 kwd
expect_error "KWD amount not a multiple of 10" \
  "invoice $dinar_number is not exported: Stripe requires KWD amounts (a three-decimal currency) to be multiples of 10 minor units" \
  $meterctl export stripe --api-base "$base" --tenant dinar
grep -qF 'is 1.234 KWD' "$work/commands.out" && pass "the error names the amount" || failed "the error does not name 1.234 KWD"
expect_count "nothing sent for the KWD invoice" \
  "$(standin_query "sum(1 for i in s['invoices'] if i['customer'] == 'cus_dinar004')")" 0
# A credit note of 0.005 KWD on the exported 1.230 KWD invoice: the same rule, nothing sent.
fils_number=$($meterctl invoice list | awk '$2 == "invoice" && $3 == "fils" { print $1 }')
$meterctl invoice credit-note "$fils_number" --amount 0.005 --reason "rounding" >/dev/null
expect_error "KWD credit note not a multiple of 10" \
  "is not exported: Stripe requires KWD amounts (a three-decimal currency) to be multiples of 10 minor units, with a last digit of 0, and it is 0.005 KWD" \
  $meterctl export stripe --api-base "$base" --tenant fils
expect_count "nothing sent for the KWD credit note" "$(standin_count credit_notes)" 0

# ---- Voided while its export was half done: the draft is deleted, never finalized ----

# acme: killed after the invoice and 2 items, voided, exported with the void request failing.
status=0
HM_STRIPE_KILL_AFTER=3 $meterctl export stripe --api-base "$base" --tenant acme \
  >/dev/null 2>&1 || status=$?
expect_count "export killed after 3 replies" "$status" 137
acme_invoice=$(standin_invoice_id HM-000001)
$meterctl invoice void HM-000001 --reason "wrong customer" >/dev/null
standin_faults '[{"method": "POST", "path_prefix": "/v1/invoices/in_", "kind": "500",
                  "should_retry": "false"}]'
status=0
output=$($meterctl export stripe --api-base "$base" --tenant acme 2>&1) || status=$?
expect_count "export of the half-done void exits 0" "$status" 0
grep -qF "HM-000001 acme 2024-05 14.68 USD: void before its export finished; deleted the Stripe draft $acme_invoice" \
  <<<"$output" && pass "the draft is deleted" || failed "half-done void: $output"
expect_count "no finalize or item after the void" "$(standin_query "sum(1 for r in s['requests']
  if r['path'] == '/v1/invoices/$acme_invoice/finalize' or r['path'] == '/v1/invoiceitems'
  and r['idempotency_key'].startswith('hm-HM-000001-r1-item-') and
  int(r['idempotency_key'].rsplit('-', 1)[1]) >= 2)")" 0
expect_count "the draft and its items are gone" "$(standin_query "
  [i['id'] for i in s['invoices'] if i['id'] == '$acme_invoice'] +
  [i['id'] for i in s['invoiceitems'] if i['invoice'] == '$acme_invoice']")" "[]"
output=$($meterctl export stripe --api-base "$base" --tenant acme 2>&1)
grep -qF "HM-000001 acme 2024-05 14.68 USD: unchanged" <<<"$output" &&
  pass "a rerun sends nothing for the deleted draft" || failed "rerun after delete: $output"

# beta: the reply to DELETE is lost (killed after it); the rerun finds the draft gone.
HM_STRIPE_KILL_AFTER=2 $meterctl export stripe --api-base "$base" --tenant beta \
  >/dev/null 2>&1 || true
beta_invoice=$(standin_invoice_id HM-000002)
$meterctl invoice void HM-000002 --reason "duplicate" >/dev/null
standin_faults '[]'
status=0
HM_STRIPE_KILL_AFTER=1 $meterctl export stripe --api-base "$base" --tenant beta \
  >/dev/null 2>&1 || status=$?
expect_count "killed after the DELETE reply" "$status" 137
status=0
output=$($meterctl export stripe --api-base "$base" --tenant beta 2>&1) || status=$?
expect_count "rerun after a lost DELETE reply exits 0" "$status" 0
grep -qF "deleted the Stripe draft $beta_invoice" <<<"$output" &&
  pass "a lost DELETE reply ends as deleted" || failed "lost DELETE reply: $output"

# yen: voided while its items are sent (a reply held 3 s); the status is read again before
# the finalize, so the draft is deleted.
standin_faults '[{"method": "POST", "path_prefix": "/v1/invoiceitems", "kind": "delay",
                  "ms": 3000, "skip": 1}]'
$meterctl export stripe --api-base "$base" --tenant yen --timeout 10 >"$work/yen.out" 2>&1 &
yen_pid=$!
sleep 1
$meterctl invoice void HM-000003 --reason "wrong price book" >/dev/null
status=0
wait "$yen_pid" || status=$?
yen_invoice=$(grep -o 'deleted the Stripe draft in_[A-Za-z0-9]*' "$work/yen.out" | awk '{ print $5 }')
if [ "$status" = 0 ] && [ -n "$yen_invoice" ]; then
  pass "voided during its export: the draft is deleted"
else
  failed "void during export: status $status: $(cat "$work/yen.out")"
fi
expect_count "no finalize for the invoice voided during its export" \
  "$(standin_query "sum(1 for r in s['requests'] if r['path'].endswith('/finalize')
                    and r['idempotency_key'].startswith('hm-HM-000003-'))")" 0
for tenant in acme beta yen; do
  status=0
  output=$($meterctl export stripe --api-base "$base" --check --tenant $tenant 2>&1) ||
    status=$?
  [ "$status" = 0 ] && grep -qF "matching=0 different=0 not_exported_void=1" <<<"$output" &&
    pass "check: the deleted draft of $tenant counts as void, not exported" ||
    failed "check of $tenant: $output"
done

# ---- Certificates: the fix named fits the problem ----

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/ca.key" -out "$work/ca.crt" -days 2 \
  -subj /CN=hm-test-ca 2>/dev/null
# A certificate for 127.0.0.1 that expired in 2020, signed by the CA.
mkdir -p "$work/ca"
: >"$work/ca/index"
echo 01 >"$work/ca/serial"
cat >"$work/ca.cnf" <<CNF
[ca]
default_ca = test_ca
[test_ca]
database = $work/ca/index
serial = $work/ca/serial
new_certs_dir = $work/ca
default_md = sha256
policy = any
copy_extensions = none
unique_subject = no
x509_extensions = server
[any]
commonName = supplied
[server]
subjectAltName = IP:127.0.0.1
CNF
openssl req -newkey rsa:2048 -nodes -keyout "$work/expired.key" -out "$work/expired.csr" \
  -subj /CN=127.0.0.1 2>/dev/null
openssl ca -batch -config "$work/ca.cnf" -cert "$work/ca.crt" -keyfile "$work/ca.key" \
  -in "$work/expired.csr" -out "$work/expired.crt" -startdate 20200101000000Z \
  -enddate 20200201000000Z -notext 2>/dev/null
# A self-signed certificate for "localhost" only, reached as 127.0.0.1.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/other.key" -out "$work/other.crt" \
  -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null

# tls_standin CERT KEY: starts a stand-in over TLS and prints its port.
tls_standin() {
  local port_file=$work/tls-$RANDOM.port
  python3 "$source_dir/tests/stripe_standin.py" --port-file "$port_file" \
    --api-key-file "$work/api.key" --tls-cert "$1" --tls-key "$2" 2>>"$work/standin.err" &
  tls_pids+=($!)
  for _ in $(seq 200); do [ -s "$port_file" ] && break; sleep 0.05; done
  tls_port=$(cat "$port_file")
}
tls_standin "$work/expired.crt" "$work/expired.key"
expect_error "expired certificate: renew it" "has expired: renew it on the server" \
  $meterctl export stripe --check --tenant fils --api-base "https://127.0.0.1:$tls_port" \
  --ca-file "$work/ca.crt"
grep -qF -- "--ca-file FILE" <<<"$(tail -n 3 "$work/commands.out")" &&
  failed "expired certificate: the error still suggests --ca-file" ||
  pass "expired certificate: no --ca-file advice"
tls_standin "$work/other.crt" "$work/other.key"
expect_error "certificate of another host" "certificate is for another host name" \
  $meterctl export stripe --check --tenant fils --api-base "https://127.0.0.1:$tls_port" \
  --ca-file "$work/other.crt"
expect_error "unknown issuer: give the CA" "with --ca-file FILE" \
  $meterctl export stripe --check --tenant fils --api-base "https://127.0.0.1:$tls_port"

if grep -rqF "$api_key" "$work"/*.out "$work/standin.log" "$work/standin.err"; then
  failed "the API key appears in an output"
else
  pass "the API key appears in no output"
fi
stripe_finish
