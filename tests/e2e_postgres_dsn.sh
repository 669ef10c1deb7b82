#!/usr/bin/env bash
# Mistyped PostgreSQL DSNs never show any part of their password. For each
# DSN, `meterctl db migrate` and `meterctl export postgres` must fail and
# print neither the password nor the listed parts of it: the text after an
# unencoded '@' or '/', the word after an unquoted space, the start of a
# long password. A private cluster on 127.0.0.1 (tests/pg_cluster.sh)
# serves the DSNs that name its port.
# Needs the postgresql and libpq-dev packages (engine/install-deps.sh).
# Usage: bash tests/e2e_postgres_dsn.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
source_dir=$2
work=$(mktemp -d /tmp/hm-e2e-pgdsn-XXXXXX)
cleanup() {
  bash "$source_dir/tests/pg_cluster.sh" stop "$work" || true
  rm -rf "$work"
}
trap cleanup EXIT
meterctl=$build/meterctl
export METER_DATA=$work/data
unset METER_PG_DSN METER_SQL_DIR
failures=0
pass() { echo "ok   $1"; }
failed() {
  echo "FAIL $1"
  failures=$((failures + 1))
}

bash "$source_dir/tests/pg_cluster.sh" start "$work" >/dev/null
# shellcheck disable=SC1091
. "$work/env"
P=$PGPORT
closed=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
$meterctl tenant create one >/dev/null

# probe LABEL SECRET DSN [PART...] [-- NEEDLE]: both commands fail, show neither the secret nor
# any PART, and (when given) contain NEEDLE.
probe() {
  local label=$1 secret=$2 dsn=$3
  shift 3
  local parts=() needle=
  while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then
      needle=$2
      break
    fi
    parts+=("$1")
    shift
  done
  local command
  for command in "db migrate" "export postgres"; do
    local output status=0 leak=
    # shellcheck disable=SC2086
    output=$(env -u PGPASSWORD $meterctl $command --dsn "$dsn" 2>&1) || status=$?
    grep -qF -- "$secret" <<<"$output" && leak="the password"
    local part
    for part in "${parts[@]}"; do
      grep -qF -- "$part" <<<"$output" && leak="$leak \"$part\""
    done
    if [ "$status" = 0 ]; then
      failed "$label ($command): exit status 0"
    elif [ -n "$leak" ]; then
      failed "$label ($command): the output shows $leak: $output"
    elif [ -n "$needle" ] && ! grep -qF -- "$needle" <<<"$output"; then
      failed "$label ($command): no \"$needle\" in: $output"
    else
      pass "$label ($command)"
    fi
  done
}

unparsable="the DSN cannot be parsed"
probe kv-wrong-password 'Wr0ng#p@ss:w/rd' \
  "host=127.0.0.1 port=$P dbname=meter user=meter password=Wr0ng#p@ss:w/rd" \
  -- "password authentication failed"
probe kv-quoted "a b\\'c d" "host=127.0.0.1 port=$P dbname=meter user=meter password='a b\\'c d'" \
  "b'c"
probe kv-closed-port S3cretClosed \
  "host=127.0.0.1 port=$closed dbname=meter user=meter password=S3cretClosed"
probe kv-bad-database S3cretBadDb "host=127.0.0.1 port=$P dbname=nosuch user=meter password=S3cretBadDb"
probe kv-ssl-required S3cretSsl \
  "host=127.0.0.1 port=$P dbname=meter user=meter password=S3cretSsl sslmode=require"
probe kv-bad-sslmode S3cretMode "host=127.0.0.1 port=$P password=S3cretMode sslmode=S3cretMode"
probe kv-unterminated S3cretUnterm "host=127.0.0.1 password='S3cretUnterm" -- "$unparsable"
probe kv-junk-after S3cretJunk "host=127.0.0.1 password=S3cretJunk junk" junk -- "$unparsable"
probe kv-spaces-around-equals S3cretSp "host=127.0.0.1 port=$closed password = S3cretSp"
probe kv-unquoted-space 'Correct Horse9' \
  "host=127.0.0.1 port=$P dbname=meter user=meter password=Correct Horse9" Horse9 -- "$unparsable"
probe kv-unquoted-space-equals 'x=Horse7' \
  "host=127.0.0.1 port=$P dbname=meter user=meter password=pw1 x=Horse7" Horse7 pw1 -- "$unparsable"
probe uri-percent 'p@ss/w:rd' "postgresql://meter:p%40ss%2Fw%3Ard@127.0.0.1:$P/meter" 'p%40ss%2Fw%3Ard'
probe uri-query S3cretQ "postgresql://meter@127.0.0.1:$P/meter?password=S3cretQ"
probe uri-query-closed S3cretQC \
  "postgresql://meter@127.0.0.1:$closed/meter?password=S3cretQC&sslmode=disable"
probe uri-raw-at 'Secret@Part2' "postgresql://meter:Secret@Part2@127.0.0.1:$P/meter" Part2 \
  -- "more than one \"@\""
probe uri-raw-at-bad-port 'Top@Secret99' "postgresql://meter:Top@Secret99@127.0.0.1:notaport/meter" \
  Secret99 -- "$unparsable"
probe uri-raw-slash 'Pa/ssw0rdX' "postgresql://meter:Pa/ssw0rdX@127.0.0.1:$P/meter" ssw0rdX \
  -- "write them as %2F"
probe uri-raw-question 'Pa?ssw0rdY' "postgresql://meter:Pa?ssw0rdY@127.0.0.1:$P/meter" ssw0rdY
probe uri-raw-hash 'Pa#ssw0rdZ' "postgresql://meter:Pa#ssw0rdZ@127.0.0.1:$P/meter" ssw0rdZ
probe postgres-scheme-raw-slash 'Pb/ssw0rdW' "postgres://meter:Pb/ssw0rdW@127.0.0.1:$P/meter" ssw0rdW
probe uri-bad-percent 'S3cret%zzQ' "postgresql://meter:S3cret%zzQ@127.0.0.1:$P/meter" S3cret
probe uri-bad-percent-elsewhere S3cretPct "postgresql://meter:S3cretPct@127.0.0.1:$P/me%zzter"
probe uri-encoded-password-bad S3cr3tEnc "postgresql://meter:%53%33cr3tEnc@127.0.0.1:$P/me%zzter" \
  '%53%33cr3tEnc' 3cr3tEnc
probe uri-ipv6-unterminated S3cretV6 "postgresql://meter:S3cretV6@[127.0.0.1/meter"
probe uri-bad-query S3cretBQ "postgresql://meter:S3cretBQ@127.0.0.1:$P/meter?foo"
probe uri-query-password-percent 'a b&c' \
  "postgresql://meter@127.0.0.1:$closed/meter?password=a%20b%26c&x" 'a%20b%26c'
probe uri-bad-sslmode S3cretS "postgresql://meter:S3cretS@127.0.0.1:$P/meter?sslmode=bogus"
long=$(python3 -c 'print("L0ng" * 140)')
probe uri-long-password-bad "$long" "postgresql://meter:$long@[127.0.0.1/meter" "${long:0:8}"
long=$(python3 -c 'print("Q" + "w3" * 600)')
probe uri-long-password-two-at "$long@x" "postgresql://meter:$long@x@127.0.0.1:$P/meter" \
  "${long:0:6}" "${long: -6}"
probe kv-long-unquoted-space "$long tail9" \
  "host=127.0.0.1 port=$P user=meter password=$long tail9" "${long:0:6}" tail9
mid=$(python3 -c 'print("M" * 440)')
probe uri-boundary XYZSECRET123 "postgresql://meter:XYZSECRET123@127.0.0.1:$P/$mid?foo" XYZSEC
probe uri-boundary-user XYZSECRET456 \
  "postgresql://$(python3 -c 'print("u" * 440)'):XYZSECRET456@[127.0.0.1/meter" XYZSEC

echo
if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
