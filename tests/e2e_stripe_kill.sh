#!/usr/bin/env bash
# meterctl export stripe killed with SIGKILL and run again: Stripe ends with
# every invoice, item and credit note exactly once, and exactly as many
# executed creates as one clean run makes. First the exporter kills itself right after each
# successful reply in turn (HM_STRIPE_KILL_AFTER=k: Stripe has executed the
# request, the ledger has not stored its result), then it is killed at
# random times in a bounded loop.
# Usage: bash tests/e2e_stripe_kill.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
source_dir=$2
# shellcheck source=tests/stripe_lib.sh
. "$source_dir/tests/stripe_lib.sh"
stripe_setup
$meterctl tenant set acme --stripe-customer cus_acme001 >/dev/null
$meterctl tenant set beta --stripe-customer cus_beta002 >/dev/null
$meterctl tenant set yen --stripe-customer cus_yen003 >/dev/null
$meterctl invoice credit-note HM-000002 --amount 1.00 --reason goodwill >/dev/null
cp -a "$METER_DATA" "$work/pristine"
standin_start
export STRIPE_API_KEY=$api_key
export_command=($meterctl export stripe --api-base "http://127.0.0.1:$standin_port" --rate 1000)

restore() {
  rm -rf "$METER_DATA"
  cp -a "$work/pristine" "$METER_DATA"
  standin_post /_test/reset '{}' >/dev/null
}

# Executed POSTs: the GET of an invoice before its credit note may be repeated after a kill.
executed() {
  standin_query "sum(1 for r in s['requests'] if r.get('executed') and r['method'] == 'POST')"
}

# notes_once: every credit note of the ledger is in Stripe exactly once, issued.
notes_once() {
  standin_query "sorted((n['metadata']['credit_note_number'], n['amount'], n['status'])
                        for n in s['credit_notes']) == [('HM-CN-000001', 100, 'issued')]"
}

# One clean run gives the number of requests a whole export takes.
"${export_command[@]}" >"$work/clean.out" 2>&1
requests=$(sed -n 's/.* requests=\([0-9]*\) .*/\1/p' "$work/clean.out")
expect_count "a clean export takes 3 invoices + 22 items + 3 finalizes + 2 for the credit note" \
  "$requests" 30
creates=$(executed)
expect_count "a clean export executes 29 creates" "$creates" 29
stripe_verify "after a clean run" || true
expect_count "credit note once after a clean run" "$(notes_once)" True

# ---- Killed after each reply in turn ----

for k in $(seq 1 "$requests"); do
  restore
  status=0
  HM_STRIPE_KILL_AFTER=$k "${export_command[@]}" >"$work/killed.out" 2>&1 || status=$?
  if [ "$status" -ne 137 ]; then
    failed "kill after reply $k: exit status $status, expected 137 (SIGKILL)"
    continue
  fi
  status=0
  "${export_command[@]}" >"$work/resumed.out" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    failed "rerun after a kill after reply $k: exit status $status: $(cat "$work/resumed.out")"
    continue
  fi
  verify_output=$(stripe_verify "after a kill after reply $k") || true
  got=$(executed)
  once=$(notes_once)
  if grep -q '^ok' <<<"$verify_output" && [ "$got" = "$creates" ] && [ "$once" = True ]; then
    pass "kill after reply $k, rerun: each invoice, item and credit note once, $got creates executed"
  else
    failed "kill after reply $k: $verify_output; $got creates executed, expected $creates; credit note once: $once"
  fi
done

# ---- Killed at random times ----

restore
standin_post /_test/delay '{"ms": 15}' >/dev/null
kills=0
for attempt in $(seq 1 10); do
  wait_ms=$((RANDOM % 400))
  "${export_command[@]}" >>"$work/random.out" 2>&1 &
  pid=$!
  sleep "$((wait_ms / 1000)).$(printf '%03d' $((wait_ms % 1000)))"
  if kill -KILL "$pid" 2>/dev/null; then
    kills=$((kills + 1))
  fi
  wait "$pid" 2>/dev/null || true
  echo "     random kill $attempt after ${wait_ms} ms"
done
status=0
"${export_command[@]}" >"$work/final.out" 2>&1 || status=$?
expect_count "final run after $kills random kills exits 0" "$status" 0
stripe_verify "after random kills" || true
expect_count "random kills: each create executed once" "$(executed)" "$creates"
expect_count "random kills: credit note once" "$(notes_once)" True

if grep -rqF "$api_key" "$work"/*.out "$work/standin.log" "$work/standin.err"; then
  failed "the API key appears in an output"
else
  pass "the API key appears in no output"
fi
stripe_finish
