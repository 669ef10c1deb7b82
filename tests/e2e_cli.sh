#!/usr/bin/env bash
# meterctl and meterd on bad input: each error names the value and the fix,
# exits nonzero and changes nothing; API key secrets never reach a log.
# Usage: bash tests/e2e_cli.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
source_dir=$2
work=$(mktemp -d /tmp/hm-e2e-cli-XXXXXX)
meterd_pid=
cleanup() {
  [ -n "$meterd_pid" ] && kill "$meterd_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export METER_DATA=$work/data
meterctl=$build/meterctl
failures=0

# expect_error "what" "text the error must contain" command...
expect_error() {
  local what=$1 needle=$2
  shift 2
  local output status=0
  output=$("$@" 2>&1) || status=$?
  if [ "$status" -eq 0 ]; then
    echo "FAIL $what: exit status 0, expected an error; output: $output"
    failures=$((failures + 1))
  elif ! grep -qF -- "$needle" <<<"$output"; then
    echo "FAIL $what: error does not contain \"$needle\"; output: $output"
    failures=$((failures + 1))
  else
    echo "ok   $what"
  fi
}

$meterctl tenant create acme >/dev/null
expect_error "period with month 13" '"2024-13"' $meterctl usage acme --period 2024-13
expect_error "period format named" "YYYY-MM" $meterctl usage acme --period 2024-13
expect_error "missing period" "missing --period" $meterctl usage acme
expect_error "unknown tenant" '"nobody"' $meterctl usage nobody --period 2024-01
expect_error "unknown tenant fix" "meterctl tenant list" $meterctl usage nobody --period 2024-01
expect_error "tenant name with a space" '"bad name"' $meterctl tenant create "bad name"
expect_error "duplicate tenant" "already exists" $meterctl tenant create acme
expect_error "tenant name with an escape shown escaped" 'a\x1b[31mb' $meterctl tenant create "$(printf 'a\033[31mb')"
expect_error "invalid tenant id" '"not-a-uuid"' $meterctl tenant create other --id not-a-uuid
expect_error "invalid service start" '"2024-02-30x"' $meterctl tenant create other --service-start 2024-02-30x
expect_error "service start that does not exist" '"2024-02-30"' $meterctl tenant create other --service-start 2024-02-30
expect_error "tenant name shaped like a UUID" "not shaped like a UUID" \
  $meterctl tenant create B96D2E9D-560F-4E27-B499-F49A3D1CF284
expect_error "close of a month that has not ended" "has not ended yet" $meterctl close --period 2099-12
expect_error "invalid key id" '"xyz"' $meterctl key revoke xyz
expect_error "unknown key id" "not found" $meterctl key revoke 0123456789abcdef
expect_error "unknown command" '"frobnicate"' $meterctl frobnicate
expect_error "unexpected argument" '"--bogus"' $meterctl tenant create other --bogus 1
expect_error "missing price book file" "$work/missing.json" $meterctl pricebook load "$work/missing.json"

cat >"$work/bad-book.json" <<'JSON'
{"name": "bad", "currency": "USD", "gpu_hour": {"H100": 2.5}, "tokens_per_million": {"m": {"input": "3,00"}}}
JSON
expect_error "price book number" '$.gpu_hour.H100' $meterctl pricebook check "$work/bad-book.json"
expect_error "price book bad decimal" '$.tokens_per_million.m.input' $meterctl pricebook check "$work/bad-book.json"
expect_error "bad price book not stored" "no default price book" \
  bash -c "$meterctl pricebook load '$work/bad-book.json' >/dev/null 2>&1; $meterctl pricebook show"

# Issuers, tenant settings, credits, documents and settings: each bad value is named.
expect_error "unknown issuer on create" '"nobody"' $meterctl tenant create other-co --issuer nobody
expect_error "unknown issuer fix" "meterctl issuer list" $meterctl tenant set acme --issuer nobody
expect_error "lower-case prefix" '"ac"' $meterctl issuer add acme-inc --prefix ac
expect_error "prefix too long" '"ABCDEFGHIJKLM"' $meterctl issuer add acme-inc --prefix ABCDEFGHIJKLM
expect_error "prefix with a dash" '"A-B"' $meterctl issuer add acme-inc --prefix A-B
expect_error "missing prefix" "missing --prefix" $meterctl issuer add acme-inc
expect_error "prefix of the default issuer" '"HM" is taken' $meterctl issuer add other --prefix HM
$meterctl issuer add acme-inc --prefix ACME >/dev/null
expect_error "issuer added twice" "already exists" $meterctl issuer add acme-inc --prefix ACME2
expect_error "default issuer added" "already exists" $meterctl issuer add default --prefix DEF
expect_error "issuer name" '"bad name"' $meterctl issuer add "bad name" --prefix BAD
expect_error "support tier" '"gold"' $meterctl tenant set acme --support-tier gold
expect_error "service end before start" "ends before it starts" \
  $meterctl tenant create early --service-start 2024-05-01 --service-end 2024-04-01
expect_error "service end date" '"2024-13-01"' $meterctl tenant set acme --service-end 2024-13-01
expect_error "tenant set without options" "usage: meterctl tenant set" $meterctl tenant set acme
expect_error "credit amount with a comma" '"1,00"' $meterctl credit grant acme 1,00 --currency USD
expect_error "credit amount below the minor unit" '"0.001"' $meterctl credit grant acme 0.001 --currency USD
expect_error "credit amount negative" '"-5"' $meterctl credit grant acme -5 --currency USD
expect_error "credit currency" '"usd"' $meterctl credit grant acme 5 --currency usd
expect_error "credit currency without a book" "--currency CODE" $meterctl credit grant acme 5
expect_error "credit expiry" '"2024-02-30"' $meterctl credit grant acme 5 --currency USD --expires 2024-02-30
expect_error "unknown document" '"HM-000999"' $meterctl invoice show HM-000999
expect_error "void without a reason" "missing --reason" $meterctl invoice void HM-000001
expect_error "credit note without an amount" "missing --amount" \
  $meterctl invoice credit-note HM-000001 --reason x
expect_error "unknown invoice subcommand" '"frob"' $meterctl invoice frob
expect_error "unknown setting" '"close-grace"' $meterctl settings set close-grace 1
expect_error "grace hours" '"many"' $meterctl settings set close-grace-hours many
$meterctl tenant create other-co --service-start 2023-11-01 --support-tier pro --issuer acme-inc \
  --service-end 2031-01-01 >/dev/null
if $meterctl tenant list | grep "other-co" | grep -q "pro  *acme-inc  *2023-11-01  *2031-01-01" &&
   $meterctl tenant list | grep "acme " | grep -q "none  *default"; then
  echo "ok   tenant list shows the settings"
else
  echo "FAIL tenant list does not show the settings: $($meterctl tenant list)"
  failures=$((failures + 1))
fi
$meterctl tenant set other-co --stripe-customer cus_OtherCo01 >/dev/null
if $meterctl tenant list | grep "other-co" | grep -q "2031-01-01  *cus_OtherCo01$" &&
   $meterctl tenant list | head -1 | grep -q "end  *stripe$" &&
   $meterctl tenant list | grep "acme " | grep -q "  -  *-$"; then
  echo "ok   tenant list shows the Stripe customer"
else
  echo "FAIL tenant list does not show the Stripe customer: $($meterctl tenant list)"
  failures=$((failures + 1))
fi
if $meterctl issuer list | grep -q "acme-inc  *ACME  *ACME-000001, ACME-CN-000001"; then
  echo "ok   issuer list shows the prefixes"
else
  echo "FAIL issuer list: $($meterctl issuer list)"
  failures=$((failures + 1))
fi

# other-co is in service from 2023-11, so a close of 2024-01 first leaves a gap.
expect_error "close with an earlier open month" "tenant other-co: 2023-11 (in service)" \
  $meterctl close --period 2024-01
expect_error "close with an earlier open month names the flag" "--allow-gaps" \
  $meterctl close --period 2024-01
# A close without any price book fails for every tenant and closes nothing.
expect_error "close without a price book" "meterctl pricebook load" \
  $meterctl close --period 2024-01 --allow-gaps
$meterctl pricebook load "$source_dir/data/pricebooks/default.json" >/dev/null
if $meterctl close --period 2024-01 --allow-gaps >/dev/null; then
  echo "ok   close after loading a price book"
else
  echo "FAIL close after loading a price book"
  failures=$((failures + 1))
fi
expect_error "invoice of an open period" "the period is open" $meterctl invoice show acme --period 2024-02
if $meterctl close --period 2024-01 --allow-gaps | grep -q "nothing to close"; then
  echo "ok   second close of a period reports nothing to close"
else
  echo "FAIL second close of a period"
  failures=$((failures + 1))
fi
# A tenant created without a service start pays no base fee for months before it existed.
if $meterctl usage acme --period 2023-11 | grep -q "Base platform fee"; then
  echo "FAIL base fee charged before the service start"
  failures=$((failures + 1))
else
  echo "ok   no base fee before the service start"
fi
expect_error "unknown tenant subcommand" "use tenant create, tenant set or tenant list" $meterctl tenant

expect_error "meterd port out of range" '"70000"' $build/meterd --data "$work/data" --tcp-port 70000
expect_error "meterd log level" '"loud"' $build/meterd --data "$work/data" --log-level loud

touch "$work/open-keys" && chmod 644 "$work/open-keys"
expect_error "keys file readable by others" "chmod 600" \
  $meterctl key create acme --keys-file "$work/open-keys"
if [ -s "$work/open-keys" ] || $meterctl key list acme | grep -q active; then
  echo "FAIL a key was made for a keys file that others can read"
  failures=$((failures + 1))
else
  echo "ok   no key made for a keys file that others can read"
fi
expect_error "mistyped data directory" "no ledger in $work/typo" $meterctl --data "$work/typo" tenant list
if [ -e "$work/typo" ]; then
  echo "FAIL a read command created a ledger in a mistyped directory"
  failures=$((failures + 1))
fi

# Secrets: a key's secret appears in no log line of meterd or of the replay.
$meterctl tenant create beta --service-start 2023-11-01 >/dev/null
$meterctl key create acme --keys-file "$work/keys" >/dev/null
$meterctl key create beta --keys-file "$work/keys" >/dev/null
secret=$(awk '{print $3}' "$work/keys" | sed 's/^hmk_[0-9a-f]*_//')
$build/meterd --data "$work/data" --tcp-port 0 --udp-port 0 --port-file "$work/ports" \
  --log-level debug 2>"$work/meterd.log" &
meterd_pid=$!
for _ in $(seq 100); do [ -s "$work/ports" ] && break; sleep 0.05; done
port=$(sed -n 's/^tcp=\([0-9]*\) .*/\1/p' "$work/ports")
expect_error "second meterd on one ledger" "another meterd (pid $meterd_pid)" \
  $build/meterd --data "$work/data" --tcp-port 0 --udp-port 0
$meterctl replay --keys "$work/keys" --trace "$source_dir/data/traces/AzureLLMInferenceTrace_code.csv" \
  --limit 200 --tcp "127.0.0.1:$port" >"$work/replay.out" 2>&1
$meterctl replay --keys "$work/keys" --trace "$source_dir/data/traces/conversation_trace.jsonl" \
  --limit 200 --tcp "127.0.0.1:$port" >>"$work/replay.out" 2>&1
kill -TERM "$meterd_pid"
wait "$meterd_pid"
meterd_pid=
if ! grep -q "stored=[1-9]" "$work/replay.out"; then
  echo "FAIL the replay stored nothing, so the log check would prove nothing: $(cat "$work/replay.out")"
  failures=$((failures + 1))
elif grep -qF "$secret" "$work/meterd.log" "$work/replay.out"; then
  echo "FAIL a key secret reached a log"
  failures=$((failures + 1))
else
  echo "ok   no secret in the logs"
fi

# A tenant whose own book lacks a used model stays open; the other tenant closes.
python3 - "$source_dir/data/pricebooks/default.json" "$work/no-kimi.json" <<'PYTHON'
import json, sys
book = json.load(open(sys.argv[1]))
del book["tokens_per_million"]["kimi-chat"]
json.dump(book, open(sys.argv[2], "w"))
PYTHON
$meterctl pricebook load "$work/no-kimi.json" --tenant acme >/dev/null
expect_error "close with one unpriced tenant" 'no price for input tokens of model "kimi-chat"' \
  $meterctl close --period 2023-11
if $meterctl invoice show beta --period 2023-11 >/dev/null 2>&1 &&
   ! $meterctl invoice show acme --period 2023-11 >/dev/null 2>&1; then
  echo "ok   the priced tenant closed and the unpriced one stayed open"
else
  echo "FAIL one unpriced tenant changed what the others close"
  failures=$((failures + 1))
fi
$meterctl pricebook load "$source_dir/data/pricebooks/default.json" --tenant acme >/dev/null
if $meterctl close --period 2023-11 | grep -q "closed: 1 invoice$"; then
  echo "ok   the second close seals the tenant that stayed open"
else
  echo "FAIL the second close did not seal the remaining tenant"
  failures=$((failures + 1))
fi

# Out of descriptors: meterd fits its connection limit to the open file limit, does not spin
# when accept fails, and keeps serving.
(ulimit -Sn 100 && ulimit -Hn 100 &&
   exec $build/meterd --data "$work/data" --tcp-port 0 --udp-port 0 --port-file "$work/ports2" \
     --max-connections 1000) 2>"$work/meterd-fd.log" &
meterd_pid=$!
for _ in $(seq 100); do [ -s "$work/ports2" ] && break; sleep 0.05; done
port=$(sed -n 's/^tcp=\([0-9]*\) .*/\1/p' "$work/ports2")
python3 - "$port" <<'PYTHON'
import socket, sys, time
sockets = []
for _ in range(150):
    try:
        sockets.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2))
    except OSError:
        pass
time.sleep(1.5)
for s in sockets:
    s.close()
PYTHON
sleep 0.5
if grep -q "connections_max lowered from 1000" "$work/meterd-fd.log" &&
   [ "$(wc -l <"$work/meterd-fd.log")" -lt 200 ] &&
   $meterctl replay --keys "$work/keys" --trace "$source_dir/data/traces/AzureLLMInferenceTrace_conv.csv" \
     --limit 20 --tcp "127.0.0.1:$port" --quiet >/dev/null 2>&1; then
  echo "ok   meterd within the open file limit keeps serving"
else
  echo "FAIL meterd at the open file limit: $(wc -l <"$work/meterd-fd.log") log lines"
  failures=$((failures + 1))
fi
kill -TERM "$meterd_pid"
wait "$meterd_pid" || true
meterd_pid=

# Usage that arrives after the close is counted apart in `meterctl usage`.
$build/meterd --data "$work/data" --tcp-port 0 --udp-port 0 --port-file "$work/ports3" 2>/dev/null &
meterd_pid=$!
for _ in $(seq 100); do [ -s "$work/ports3" ] && break; sleep 0.05; done
port=$(sed -n 's/^tcp=\([0-9]*\) .*/\1/p' "$work/ports3")
$meterctl replay --keys "$work/keys" --trace "$source_dir/data/traces/AzureLLMInferenceTrace_conv.csv" \
  --limit 300 --tcp "127.0.0.1:$port" --quiet >/dev/null 2>&1
kill -TERM "$meterd_pid"
wait "$meterd_pid" || true
meterd_pid=
if $meterctl usage beta --period 2023-11 | grep -q "arrived after the close"; then
  echo "ok   usage after the close is reported apart"
else
  echo "FAIL usage after the close is not reported"
  failures=$((failures + 1))
fi

# Invoice files are copies of the ledger: a missing one is written again by the next close.
rm -f "$METER_DATA/invoices/2023-11/beta.json"
$meterctl close --period 2023-11 >/dev/null 2>&1
if [ -s "$METER_DATA/invoices/2023-11/beta.json" ] &&
   diff -q <($meterctl invoice show beta --period 2023-11 --json) \
     "$METER_DATA/invoices/2023-11/beta.json" >/dev/null; then
  echo "ok   a missing invoice file is written again from the ledger"
else
  echo "FAIL a missing invoice file was not written again"
  failures=$((failures + 1))
fi

# A rebuild of the rollups recounts the stored events and changes no total.
usage_before=$($meterctl usage beta --period 2023-11)
rebuild_out=$($meterctl rollups rebuild 2>&1)
if echo "$rebuild_out" | grep -Eq "^rollups rebuilt: [1-9][0-9]* stored events recounted into [1-9][0-9]* rollup rows$" &&
   [ "$usage_before" = "$($meterctl usage beta --period 2023-11)" ] &&
   $meterctl verify beta --period 2023-11 >/dev/null; then
  echo "ok   rollups rebuild keeps every total"
else
  echo "FAIL rollups rebuild: $rebuild_out"
  failures=$((failures + 1))
fi
expect_error "rollups without rebuild" "usage: meterctl rollups rebuild" $meterctl rollups

# README lists every command exactly as `meterctl --help` prints it, between two markers.
readme_help=$(sed -n '/^<!-- meterctl --help -->$/,/^<!-- end of meterctl --help -->$/p' \
  "$source_dir/README.md" | sed '1,2d;$d' | sed '$d')
if [ -n "$readme_help" ] && [ "$readme_help" = "$($meterctl --help)" ]; then
  echo "ok   README lists the commands of meterctl --help"
else
  echo "FAIL README's command list differs from meterctl --help:"
  diff <(echo "$readme_help") <($meterctl --help) || true
  failures=$((failures + 1))
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures checks failed"
  exit 1
fi
echo "all checks passed"
