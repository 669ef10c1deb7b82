#!/usr/bin/env bash
# The master key that wraps the signing keys, end to end. meterctl creates
# DATA/master.key with its first key, and meterd verifies frames with the
# wrapped key. meterd does not start when the file is missing, is another
# master key or is readable by others, and its message names the file and
# the fix. A rotation with `meterctl key rewrap` moves the keys to a new master
# key, after which only the new file starts meterd.
#
# Usage: bash tests/e2e_master_key.sh BUILD_DIR SOURCE_DIR
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: bash $0 BUILD_DIR SOURCE_DIR" >&2
  exit 1
fi
build_dir=$(cd "$1" && pwd)
source_dir=$(cd "$2" && pwd)
meterd=$build_dir/meterd
meterctl=$build_dir/meterctl
trace=$source_dir/data/traces/AzureLLMInferenceTrace_code.csv

work=$(mktemp -d "${TMPDIR:-/tmp}/e2e_master_key.XXXXXX")
meterd_pid=
cleanup() {
  set +e
  [ -n "$meterd_pid" ] && kill "$meterd_pid" 2>/dev/null && wait "$meterd_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "e2e_master_key: FAIL: $*" >&2
  exit 1
}

data=$work/data
mkdir -p "$data"
export METER_DATA=$data

# Starts meterd with the given extra options; sets tcp_port.
meterd_start() {
  rm -f "$data/ports"
  "$meterd" --data "$data" --tcp-port 0 --udp-port 0 --port-file "$data/ports" "$@" \
    2>"$work/meterd.log" &
  meterd_pid=$!
  for _ in $(seq 100); do
    [ -s "$data/ports" ] && break
    kill -0 "$meterd_pid" 2>/dev/null || fail "meterd exited at start: $(cat "$work/meterd.log")"
    sleep 0.05
  done
  tcp_port=$(sed -n 's/^tcp=\([0-9]*\) .*/\1/p' "$data/ports")
  [ -n "$tcp_port" ] || fail "no port in $data/ports after 5 s"
}

meterd_stop() {
  kill "$meterd_pid"
  wait "$meterd_pid" || true
  meterd_pid=
}

# Runs meterd, which must exit 1 at start with a message that contains $1.
meterd_start_rejected() {
  local expected=$1
  shift
  set +e
  "$meterd" --data "$data" --tcp-port 0 --udp-port 0 "$@" 2>"$work/refused.log"
  local status=$?
  set -e
  [ "$status" -eq 1 ] || fail "meterd started or exited with $status, expected 1 ($expected)"
  grep -qF -- "$expected" "$work/refused.log" ||
    fail "meterd's message lacks \"$expected\": $(cat "$work/refused.log")"
}

# Replays the first 200 rows of a trace; prints the summary's value of $1 (stored, duplicates).
replay_count() {
  "$meterctl" replay --keys "$data/keys" --trace "$trace" --limit 200 \
    --tcp "127.0.0.1:$tcp_port" --quiet | sed -n "s/.* $1=\\([0-9]*\\).*/\\1/p"
}

echo "== the first key creates the master key file, readable by its owner only"
"$meterctl" tenant create acme-ai --service-start 2023-11-01 >/dev/null
"$meterctl" key create acme-ai --keys-file "$data/keys" 2>"$work/create.err" >/dev/null
grep -qF "created the master key file $data/master.key" "$work/create.err" ||
  fail "key create did not report the new master key file: $(cat "$work/create.err")"
[ "$(stat -c %a "$data/master.key")" = 600 ] || fail "master.key has mode $(stat -c %a "$data/master.key")"
key_id=$(sed -n 's/.*hmk_\([0-9a-f]\{16\}\)_.*/\1/p' "$data/keys" | head -1)
[ -n "$key_id" ] || fail "no key in $data/keys"
# The signing key is HMAC-SHA256(secret, label); it must not appear in the ledger file.
secret=$(sed -n 's/.*hmk_[0-9a-f]\{16\}_\([0-9a-f]\{64\}\).*/\1/p' "$data/keys" | head -1)
signing=$(python3 -c 'import hmac, hashlib, sys
print(hmac.new(bytes.fromhex(sys.argv[1]), b"harpoon-meter frame signing v1", hashlib.sha256).hexdigest())' "$secret")
if python3 -c 'import sys; sys.exit(0 if bytes.fromhex(sys.argv[1]) in open(sys.argv[2], "rb").read() else 1)' \
  "$signing" "$data/data.mdb"; then
  fail "the signing key is stored as it is in data.mdb"
fi
"$meterctl" key create acme-ai 2>"$work/create.err" >/dev/null
if grep -q "created the master key" "$work/create.err"; then
  fail "a second key created another master key file"
fi

echo "== meterd verifies frames with the wrapped key"
meterd_start
stored=$(replay_count stored)
[ "${stored:-0}" -gt 0 ] || fail "meterd stored no events with the wrapped key"
"$meterctl" master-key create "$work/early.key" >/dev/null
if METER_MASTER_KEY=$work/early.key "$meterctl" key rewrap --old-master-key "$data/master.key" \
  2>"$work/busy.err"; then
  fail "key rewrap ran while meterd was serving the directory"
fi
grep -qF "is serving $data, and it keeps the master key it started with: stop it" "$work/busy.err" ||
  fail "unclear key rewrap error beside meterd: $(cat "$work/busy.err")"
meterd_stop

echo "== meterd refuses a missing, foreign or readable master key file"
mv "$data/master.key" "$work/master.key"
meterd_start_rejected "the master key file $data/master.key is missing, and 2 keys of the ledger are wrapped"
[ ! -e "$data/master.key" ] || fail "meterd made a new master key while keys are wrapped"
"$meterctl" master-key create "$work/other.key" >/dev/null
meterd_start_rejected "2 keys of the ledger are wrapped with master key" --master-key "$work/other.key"
# The id in meterd's message is the one that master-key id prints for the file that wrapped them.
ours=$("$meterctl" master-key id "$work/master.key" | sed -n 's/^master key \([0-9a-f]\{16\}\) in .*/\1/p')
[ -n "$ours" ] || fail "master-key id printed no id"
grep -qF "wrapped with master key $ours, not with" "$work/refused.log" ||
  fail "meterd's message does not name master key $ours: $(cat "$work/refused.log")"
cp -p "$work/master.key" "$work/open.key"
chmod 644 "$work/open.key"
meterd_start_rejected "can be read by its group or others (mode 0644); run \`chmod 600 $work/open.key\`" \
  --master-key "$work/open.key"
if "$meterctl" master-key create "$work/other.key" 2>"$work/exists.err"; then
  fail "master-key create replaced an existing file"
fi
grep -qF "cannot create the master key file $work/other.key: it exists, and keys may be wrapped with it; give another path" "$work/exists.err" ||
  fail "unclear master-key create error: $(cat "$work/exists.err")"

echo "== command-line errors name the value and the fix"
# meterctl_fails EXPECTED ARGS...: meterctl exits 1 with EXPECTED in its message.
meterctl_fails() {
  local expected=$1
  shift
  if "$meterctl" "$@" 2>"$work/usage.err"; then
    fail "meterctl $* succeeded"
  fi
  grep -qF -- "$expected" "$work/usage.err" ||
    fail "meterctl $* printed no \"$expected\": $(cat "$work/usage.err")"
}
meterctl_fails "usage: meterctl master-key create FILE, or meterctl master-key id FILE" master-key
meterctl_fails "usage: meterctl master-key create FILE" master-key drop "$work/x.key"
meterctl_fails "cannot open the master key file $work/missing.key: No such file or directory" \
  master-key id "$work/missing.key"
meterctl_fails "usage: meterctl [--master-key FILE] key rewrap --old-master-key FILE" key rewrap
meterctl_fails "unexpected argument \"--old\"" key rewrap --old "$work/master.key"

echo "== a rotation moves the keys to a new master key"
if METER_MASTER_KEY=$work/none.key "$meterctl" key rewrap --old-master-key "$work/master.key" \
  2>"$work/none.err"; then
  fail "key rewrap ran without a new master key file"
fi
grep -qF "give the new master key with --master-key FILE" "$work/none.err" ||
  fail "unclear key rewrap error without a new master key: $(cat "$work/none.err")"
"$meterctl" master-key create "$work/new.key" >/dev/null
METER_MASTER_KEY=$work/new.key "$meterctl" key rewrap --old-master-key "$work/master.key" \
  >"$work/rewrap.out" || fail "key rewrap failed"
grep -q "^rewrapped 2 keys with master key" "$work/rewrap.out" ||
  fail "unexpected rewrap output: $(cat "$work/rewrap.out")"
meterd_start_rejected "wrapped with master key" --master-key "$work/master.key"
meterd_start --master-key "$work/new.key"
# The same frames again: each is verified with the rewrapped key, and each event is a duplicate.
duplicates=$(replay_count duplicates)
[ "${duplicates:-0}" = "$stored" ] ||
  fail "meterd with the new master key found ${duplicates:-no} duplicates of $stored events"
meterd_stop

echo "e2e_master_key: passed"
