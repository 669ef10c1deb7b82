#!/usr/bin/env bash
# Free text on documents and records, seals checked by Python's json module,
# invoice files under concurrent closes and failed writes, and the price book
# checks of decimals, names and GPU or model keys.
# Usage: bash tests/e2e_billing_text.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
work=$(mktemp -d /tmp/hm-e2e-text-XXXXXX)
trap 'rm -rf "$work"' EXIT
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
  elif grep -qi "out of memory" <<<"$output"; then
    failed "$what: reports out of memory; output: $output"
  else
    pass "$what"
  fi
}

cat >"$work/book.json" <<'EOF'
{"name": "text-2024", "currency": "USD", "base_fee": "100.00"}
EOF
for i in 1 2 3 4 5 6; do
  $meterctl tenant create "t$i" --service-start 2024-01-01 >/dev/null
done
$meterctl pricebook load "$work/book.json" >/dev/null
$meterctl close --period 2024-01 >/dev/null 2>&1

# Control characters, invalid UTF-8 and over-long text are rejected before anything is stored.
newline_reason=$(printf 'two\nlines')
expect_error "void reason with a line break" "--reason contains the control character U+000A" \
  $meterctl invoice void HM-000001 --reason "$newline_reason"
expect_error "void reason with invalid UTF-8" "--reason is not valid UTF-8 (byte 0xff" \
  $meterctl invoice void HM-000001 --reason "$(printf 'bad \377')"
expect_error "credit note reason with an escape" "--reason contains the control character U+001B" \
  $meterctl invoice credit-note HM-000001 --amount 1.00 --reason "$(printf 'a\033[2Jb')"
expect_error "credit note reason of 501 bytes" "--reason is 501 bytes, more than the 500 allowed" \
  $meterctl invoice credit-note HM-000001 --amount 1.00 --reason "$(printf 'x%.0s' $(seq 501))"
expect_error "grant note with a tab" "--note contains the control character U+0009" \
  $meterctl credit grant t1 5.00 --note "$(printf 'a\tb')"
expect_error "grant note with invalid UTF-8" "--note is not valid UTF-8" \
  $meterctl credit grant t1 5.00 --note "$(printf '\300\257')"
$meterctl credit grant t1 5.00 --note "launch" >/dev/null
expect_error "revoke reason with DEL" "--reason contains the control character U+007F" \
  $meterctl credit revoke 1 --reason "$(printf 'x\177')"
if $meterctl invoice list | grep -q "HM-CN-" ||
   ! $meterctl invoice show HM-000001 | grep -q "status finalized" ||
   ! $meterctl credit list t1 | grep -q "5.00             5.00"; then
  failed "rejected text changed the ledger"
else
  pass "rejected text changes nothing"
fi

# Text in UTF-8 with quotes and backslashes is stored, and every seal verifies in Python.
$meterctl invoice credit-note HM-000002 --amount 2.50 \
  --reason 'Ausfall “Région” 5 € \ "quoted" ✓ 😀' >/dev/null
$meterctl invoice void HM-000003 --reason 'wrong tier — ümlaut / "x"' >/dev/null
$meterctl credit revoke 1 --reason 'granted by mistake — ✓' >/dev/null
$meterctl close --period 2024-01 >/dev/null 2>&1
numbers=$($meterctl invoice list | awk 'NR > 1 { print $1 }')
for number in $numbers; do
  $meterctl invoice show "$number" --json >"$work/$number.json"
done
if python3 - "$work" $numbers <<'EOF'
import hashlib
import json
import sys

folder, numbers = sys.argv[1], sys.argv[2:]
bad = 0
for number in numbers:
    with open(f"{folder}/{number}.json", encoding="utf-8") as file:
        document = json.load(file)
    seal = document.pop("sha256")
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if hashlib.sha256(canonical.encode("utf-8")).hexdigest() != seal:
        print(f"seal of {number} does not verify")
        bad += 1
print(f"{len(numbers)} documents checked")
sys.exit(1 if bad or len(numbers) < 8 else 0)
EOF
then
  pass "every seal verifies with Python's json module"
else
  failed "a seal does not verify with Python's json module"
fi

# Concurrent closes write their files under names of their own: no failure, exit 0.
concurrent_ok=1
for month in 02 03 04; do
  $meterctl close --period 2024-$month >"$work/o1" 2>"$work/e1" & first=$!
  $meterctl close --period 2024-$month >"$work/o2" 2>"$work/e2" & second=$!
  status=0
  wait $first || status=$?
  wait $second || status=$?
  if [ "$status" -ne 0 ] || grep -q "failed" "$work/e1" "$work/e2"; then
    concurrent_ok=0
    cat "$work/e1" "$work/e2"
  fi
done
leftovers=$(find "$METER_DATA/invoices" -name '.*.json.*' | wc -l)
if [ "$concurrent_ok" -eq 1 ] && [ "$leftovers" -eq 0 ]; then
  pass "concurrent closes write every file"
else
  failed "concurrent closes: failures or $leftovers temporary files left"
fi

# A file that cannot be written after the commit makes the close exit 1; a rerun writes it.
rm -rf "$METER_DATA/invoices/2024-05"
touch "$METER_DATA/invoices/2024-05"
expect_error "close with an unwritable invoice folder" \
  "run \`meterctl close --period 2024-05\` again" $meterctl close --period 2024-05
if $meterctl invoice list --period 2024-05 | grep -q "finalized"; then
  pass "the close is committed although its files failed"
else
  failed "the close was not committed"
fi
rm "$METER_DATA/invoices/2024-05"
if $meterctl close --period 2024-05 >/dev/null 2>&1 &&
   [ -f "$METER_DATA/invoices/2024-05/t1.json" ]; then
  pass "a rerun writes the missing files"
else
  failed "a rerun does not write the missing files"
fi

# Price books: integer digits count leading zeros, keys are what usage can report.
check_book() {
  local what=$1 needle=$2 book=$3
  printf '%s\n' "$book" >"$work/check.json"
  expect_error "$what" "$needle" $meterctl pricebook check "$work/check.json"
}
check_book "price with 24 integer digits" '$.base_fee: decimal "000000000000000000000001" is too large' \
  '{"name": "b", "currency": "USD", "base_fee": "000000000000000000000001"}'
check_book "GPU type with a space" '$.gpu_hour["H 100"]: GPU type name has the byte 0x20' \
  '{"name": "b", "currency": "USD", "gpu_hour": {"H 100": "1.00"}}'
check_book "GPU type with a control character" '$.gpu_hour["H\x01"]' \
  '{"name": "b", "currency": "USD", "gpu_hour": {"H\u0001": "1.00"}}'
check_book "model with a non-ASCII letter" '$.tokens_per_million["m\xc3\xa9"]: model name has the byte 0xc3' \
  '{"name": "b", "currency": "USD", "tokens_per_million": {"mé": {"input": "1.00"}}}'
check_book "book name with a bidi override" '$.name: name contains the bidirectional control U+202E' \
  '{"name": "a\u202eb", "currency": "USD"}'
check_book "discount name with a C1 control" '$.discounts[0].name: name contains the control character 0x9b' \
  '{"name": "b", "currency": "USD", "gpu_hour": {"*": "1.00"}, "discounts": [{"name": "x\u009b", "applies_to": ["gpu"], "driver": "gpu_hours", "mode": "volume", "tiers": [{"above": "1", "percent": "5"}]}]}'
printf '%s\n' '{"name": "ok ✓", "currency": "USD", "gpu_hour": {"nvidia/H100_80GB*x": "1.00"}, "base_fee": "000000000000000001"}' \
  >"$work/check.json"
if $meterctl pricebook check "$work/check.json" | grep -q ": valid$"; then
  pass "names in UTF-8, printable keys and 18 integer digits are valid"
else
  failed "a valid book was rejected: $($meterctl pricebook check "$work/check.json" 2>&1)"
fi

if [ "$failures" -gt 0 ]; then
  echo "$failures failures"
  exit 1
fi
echo "all passed"
