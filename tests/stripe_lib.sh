# Helpers of the Stripe export tests (e2e_stripe.sh, e2e_stripe_kill.sh), sourced by them.
# Expects $build and $source_dir; sets $work, $meterctl, $api_key, $standin_port.

work=$(mktemp -d /tmp/hm-e2e-stripe-XXXXXX)
meterd_pid=
standin_pid=
failures=0
meterctl=$build/meterctl
export METER_DATA=$work/data

stripe_cleanup() {
  for pid in "$meterd_pid" "$standin_pid"; do
    if [ -n "$pid" ]; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap stripe_cleanup EXIT

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
  printf '%s\n' "$output" >>"$work/commands.out"
  if [ "$status" -eq 0 ]; then
    failed "$what: exit status 0, expected an error; output: $output"
  elif ! grep -qF -- "$needle" <<<"$output"; then
    failed "$what: error does not contain \"$needle\"; output: $output"
  else
    pass "$what"
  fi
}

# expect_count "what" GOT WANT
expect_count() {
  if [ "$2" = "$3" ]; then pass "$1"; else failed "$1: got $2, expected $3"; fi
}

# ---- Ledger with closed May 2024 invoices ----

# Usage from small traces, as in e2e_rerate.sh (docs/REPLAY.md says how rows become events):
# acme gets the May rows of its acme trace, beta and yen each the beta trace. yen is billed in JPY.
stripe_setup() {
  cat >"$work/usd.json" <<'JSON'
{"name": "e2e-usd", "currency": "USD", "base_fee": "10.00",
 "gpu_hour": {"*": "3.60"},
 "tokens_per_million": {"*": {"input": "1.00", "output": "2.00"}},
 "api_calls_per_million": "1000000",
 "gpu_volume_discount": {"mode": "volume", "tiers": [{"above_hours": "0", "percent": "10"}]}}
JSON
  cat >"$work/yen.json" <<'JSON'
{"name": "e2e-yen", "currency": "JPY", "base_fee": "1000",
 "gpu_hour": {"*": "360"},
 "tokens_per_million": {"*": {"input": "150", "output": "300"}},
 "api_calls_per_million": "1000000"}
JSON
  cat >"$work/acme_code.csv" <<'CSV'
TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-10 10:00:00.0000000,1000000,500000
2024-05-20 12:00:30.0000000,200000,50000
CSV
  cat >"$work/two_code.csv" <<'CSV'
TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-15 00:00:00.0000000,2000000,0
2024-05-15 00:00:10.0000000,500000,250000
CSV
  cp "$work/two_code.csv" "$work/beta_code.csv"
  cp "$work/two_code.csv" "$work/yen_code.csv"
  local tenant
  for tenant in acme beta yen; do
    $meterctl tenant create $tenant --service-start 2024-05-01 >/dev/null
    $meterctl key create $tenant --keys-file "$work/keys-$tenant" >/dev/null
  done
  $meterctl pricebook load "$work/usd.json" >/dev/null
  $meterctl pricebook load "$work/yen.json" --tenant yen >/dev/null
  $meterctl credit grant beta 5.00 >/dev/null

  $build/meterd --data "$METER_DATA" --host 127.0.0.1 --tcp-port 0 --udp-port 0 \
    --port-file "$work/ports" --log-level warn 2>"$work/meterd.err" &
  meterd_pid=$!
  for _ in $(seq 100); do [ -s "$work/ports" ] && break; sleep 0.05; done
  local port
  port=$(sed -n 's/^tcp=\([0-9]*\) .*/\1/p' "$work/ports")
  [ -n "$port" ] || { echo "FAIL meterd did not start: $(cat "$work/meterd.err")"; exit 1; }
  for tenant in acme beta yen; do
    $meterctl replay --keys "$work/keys-$tenant" --trace "$work/${tenant}_code.csv" \
      --tcp "127.0.0.1:$port" --quiet >>"$work/replay.out"
  done
  kill -TERM "$meterd_pid"
  wait "$meterd_pid" || true
  meterd_pid=
  $meterctl close --period 2024-05 >"$work/close.out"
  api_key=sk_test_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  (umask 077 && printf '%s\n' "$api_key" >"$work/api.key")
}

# ---- The stand-in ----

standin_scheme=http
standin_start() {
  rm -f "$work/standin.port"
  [ "${1:-}" = --tls-cert ] && standin_scheme=https
  python3 "$source_dir/tests/stripe_standin.py" --port-file "$work/standin.port" \
    --api-key-file "$work/api.key" --customers cus_acme001,cus_beta002,cus_yen003 \
    --log "$work/standin.log" "$@" 2>"$work/standin.err" &
  standin_pid=$!
  for _ in $(seq 200); do [ -s "$work/standin.port" ] && break; sleep 0.05; done
  standin_port=$(cat "$work/standin.port" 2>/dev/null || true)
  [ -n "$standin_port" ] || { echo "FAIL stand-in did not start: $(cat "$work/standin.err")"; exit 1; }
}

# standin_post PATH JSON: a test endpoint of the stand-in.
standin_post() {
  python3 - "$standin_scheme://127.0.0.1:$standin_port$1" "$2" "$work/tls.crt" <<'PYTHON'
import os, ssl, sys, urllib.request
url, body, cafile = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
context = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
request = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(request, context=context).read().decode())
PYTHON
}

standin_faults() { standin_post /_test/faults "{\"faults\": $1}" >/dev/null; }

# standin_query EXPRESSION: evaluates a Python expression over the stand-in's state `s`.
standin_query() {
  python3 - "$standin_scheme://127.0.0.1:$standin_port/_test/state" "$1" "$work/tls.crt" <<'PYTHON'
import json, ssl, sys, urllib.request
url, expression, cafile = sys.argv[1], sys.argv[2], sys.argv[3]
context = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
s = json.load(urllib.request.urlopen(url, context=context))
print(eval("(" + expression.strip() + ")"))
PYTHON
}

standin_count() { standin_query "len(s['$1'])"; }
standin_faults_applied() { standin_query "sum(f.get('applied', 0) for f in s['faults'])"; }
standin_requests_to() { standin_query "sum(1 for r in s['requests'] if r['path'].endswith('$1'))"; }
standin_invoice_id() {
  standin_query "[i['id'] for i in s['invoices'] if i['metadata'].get('invoice_number') == '$1'][0]"
}

# expect_total "what" NUMBER TOTAL_MINOR CURRENCY: the one Stripe invoice of NUMBER has this total.
expect_total() {
  local got
  got=$(standin_query "[(i['total'], i['currency']) for i in s['invoices']
                        if i['metadata'].get('invoice_number') == '$2']")
  expect_count "$1" "$got" "[($3, '$4')]"
}

expect_status() {
  local got
  got=$(standin_query "[i['status'] for i in s['invoices']
                        if i['metadata'].get('invoice_number') == '$2']")
  expect_count "$1" "$got" "['$3']"
}

# expect_item "what" NUMBER LINE_KIND TEXT: the item of that kind carries TEXT in its JSON.
expect_item() {
  local got
  got=$(standin_query "[json.dumps(i) for i in s['invoiceitems']
                        if i['metadata'].get('invoice_number') == '$2'
                        and i['metadata'].get('line_kind') == '$3']")
  if grep -qF -- "$4" <<<"$got"; then pass "$1"; else failed "$1: item is $got"; fi
}

# stripe_verify "when": every finalized or void invoice of the ledger is in Stripe exactly once,
# with one item per line (and one for credits) of exactly the line's amount.
stripe_verify() {
  mkdir -p "$work/documents"
  rm -f "$work/documents"/*.json
  local number
  for number in $($meterctl invoice list | awk 'NR > 1 && $2 == "invoice" { print $1 }'); do
    $meterctl invoice show "$number" --json >"$work/documents/$number.json"
  done
  local output status=0
  output=$(python3 - "$standin_scheme://127.0.0.1:$standin_port/_test/state" \
    "$work/tls.crt" "$work/documents" <<'PYTHON'
import glob, json, os, ssl, sys, urllib.request
url, cafile, folder = sys.argv[1:4]
context = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
state = json.load(urllib.request.urlopen(url, context=context))
problems = []
by_number = {}
for invoice in state["invoices"]:
    by_number.setdefault(invoice["metadata"].get("invoice_number"), []).append(invoice)
items = {}
for item in state["invoiceitems"]:
    key = (item["metadata"].get("invoice_number"), int(item["metadata"].get("line_index", -1)))
    items.setdefault(key, []).append(item)
for key, found in items.items():
    if len(found) != 1:
        problems.append("%s item %d exists %d times" % (key[0], key[1], len(found)))
documents = 0
for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    document = json.load(open(path))
    number = document["number"]
    if document["status"] not in ("finalized", "void"):
        continue
    found = by_number.get(number, [])
    if document["status"] == "void" and not found:
        continue
    documents += 1
    if len(found) != 1:
        problems.append("%s is in Stripe %d times" % (number, len(found)))
        continue
    invoice = found[0]
    expected = [line["amount_minor"] for line in document["lines"]]
    if document["credits_applied"]["amount_minor"] > 0:
        expected.append(-document["credits_applied"]["amount_minor"])
    for index, amount in enumerate(expected):
        got = items.get((number, index), [])
        if len(got) != 1 or got[0]["amount"] != amount or got[0]["invoice"] != invoice["id"]:
            problems.append("%s item %d: expected %d on %s, got %s" % (
                number, index, amount, invoice["id"],
                [(i["amount"], i["invoice"]) for i in got]))
    if invoice["lines"]["total_count"] != len(expected):
        problems.append("%s has %d items in Stripe, expected %d" % (
            number, invoice["lines"]["total_count"], len(expected)))
    if invoice["total"] != document["total"]["amount_minor"]:
        problems.append("%s total %d, expected %d" % (
            number, invoice["total"], document["total"]["amount_minor"]))
    wanted = ("void",) if document["status"] == "void" else ("open", "paid")
    if invoice["status"] not in wanted:
        problems.append("%s status %s, expected %s" % (number, invoice["status"], wanted))
orphans = [i["id"] for i in state["invoiceitems"] if i["invoice"] is None]
if orphans:
    problems.append("items on no invoice: %s" % orphans)
print("\n".join(problems) if problems else "%d invoices, %d items, each once" % (
    documents, len(state["invoiceitems"])))
sys.exit(1 if problems else 0)
PYTHON
  ) || status=$?
  if [ "$status" -eq 0 ]; then
    pass "Stripe has each invoice and item once with exact amounts $1 ($output)"
  else
    failed "Stripe differs from the ledger $1: $output"
    return 1
  fi
}

stripe_finish() {
  if [ "$failures" -ne 0 ]; then
    echo "$failures failure(s)"
    exit 1
  fi
  echo "all passed"
}
