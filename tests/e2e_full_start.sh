#!/usr/bin/env bash
# Starting on a full or read-only file system. meterd and meterctl must end
# with an error that names the data directory, the cause and the fix, never
# with SIGBUS from LMDB's lock file mapping. A ledger made before the disk
# filled must still open, and --stats-file must put the counters elsewhere.
#
# The --stats-file checks run as any user; the rest needs root to mount a
# tmpfs and a read-only bind mount, and exits 77 (skipped) otherwise.
# Arguments: BUILD_DIR SOURCE_DIR.
set -euo pipefail
build=${1:?usage: e2e_full_start.sh BUILD_DIR SOURCE_DIR}

work=$(mktemp -d /tmp/hm-full-start-XXXXXX)
mnt=$work/mnt
ro=$work/ro
meterd_pid=
cleanup() {
  set +e # every step of the cleanup runs, even after one fails
  [ -n "$meterd_pid" ] && kill -9 "$meterd_pid" 2>/dev/null && wait "$meterd_pid" 2>/dev/null
  mountpoint -q "$ro" && umount "$ro"
  mountpoint -q "$mnt" && umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "e2e_full_start: FAILED: $*" >&2
  exit 1
}

# ---- --stats-file errors name the value and the fix; nothing is opened
set +e
"$build/meterd" --data "$work/unused" --stats-file "$work/missing-dir/stats.json" 2>"$work/err"
status=$?
set -e
[ "$status" -eq 2 ] || fail "meterd accepted a --stats-file in a missing directory (exit $status)"
grep -q "invalid --stats-file \"$work/missing-dir/stats.json\": directory $work/missing-dir does not exist" \
  "$work/err" || fail "unclear --stats-file error: $(cat "$work/err")"
set +e
"$build/meterd" --data "$work/unused" --stats-file "$work" 2>"$work/err"
status=$?
set -e
[ "$status" -eq 2 ] || fail "meterd accepted a directory as --stats-file (exit $status)"
grep -q "it is a directory" "$work/err" || fail "unclear --stats-file error: $(cat "$work/err")"
for bad in 0 abc 1048577; do
  set +e
  "$build/meterd" --data "$work/unused" --index-memory "$bad" 2>"$work/err"
  status=$?
  set -e
  [ "$status" -eq 2 ] || fail "meterd accepted --index-memory $bad (exit $status)"
  grep -qF "invalid --index-memory \"$bad\": expected an integer from 1 to 1048576" "$work/err" ||
    fail "unclear --index-memory error: $(cat "$work/err")"
done
[ ! -e "$work/unused" ] || fail "meterd created the data directory before rejecting an option"

if [ "$(id -u)" -ne 0 ]; then
  echo "e2e_full_start: skipped: needs root to mount a tmpfs (run as root, as CI does)"
  exit 77
fi
mkdir -p "$mnt" "$ro"
if ! mount -t tmpfs -o size=4m,mode=0700 tmpfs "$mnt"; then
  echo "e2e_full_start: skipped: mounting a tmpfs failed although running as root" \
       "(a container without CAP_SYS_ADMIN?)"
  exit 77
fi

# A ledger made while the disk had room, then a full disk.
"$build/meterctl" --data "$mnt/data" tenant create full-0 --service-start 2024-01-01 >/dev/null
dd if=/dev/zero of="$mnt/ballast" bs=64k 2>/dev/null || true

# ---- a new ledger on the full disk: an error, not SIGBUS
set +e
timeout 20 "$build/meterd" --data "$mnt/fresh" --tcp-port 0 --udp-port 0 \
  --port-file "$work/ports-fresh" 2>"$work/meterd-fresh.log"
status=$?
set -e
[ "$status" -eq 1 ] || fail "meterd on a full disk exited with $status, expected 1: $(cat "$work/meterd-fresh.log")"
tail -n 1 "$work/meterd-fresh.log" |
  grep -q "no space left on device in $mnt/fresh; free disk space" ||
  fail "meterd's last line names no cause and fix: $(tail -n 1 "$work/meterd-fresh.log")"
set +e
timeout 20 "$build/meterctl" --data "$mnt/fresh2" tenant create x >"$work/meterctl.log" 2>&1
status=$?
set -e
[ "$status" -eq 1 ] || fail "meterctl on a full disk exited with $status, expected 1"
tail -n 1 "$work/meterctl.log" | grep -q "no space left on device in $mnt/fresh2" ||
  fail "meterctl's last line names no cause: $(tail -n 1 "$work/meterctl.log")"

# ---- the ledger made before the disk filled still opens, and its stats go elsewhere
"$build/meterctl" --data "$mnt/data" usage full-0 --period 2024-05 >/dev/null ||
  fail "meterctl usage failed on a full disk"
"$build/meterd" --data "$mnt/data" --tcp-port 0 --udp-port 0 --port-file "$work/ports" \
  --stats-file "$work/stats.json" 2>"$work/meterd.log" &
meterd_pid=$!
for _ in $(seq 500); do [ -s "$work/ports" ] && break; sleep 0.01; done
[ -s "$work/ports" ] || fail "meterd did not start on the full disk: $(cat "$work/meterd.log")"
grep -q '"frames_received": 0' "$work/stats.json" || fail "no stats in the --stats-file path"
kill "$meterd_pid"
wait "$meterd_pid" || fail "meterd exited with $? after SIGTERM"
meterd_pid=
[ ! -e "$mnt/data/meterd-stats.json" ] || fail "the stats went to the data directory"
rm -f "$mnt/ballast"

# ---- a read-only data directory: the cause and the fix on the last line
mount --bind "$mnt/data" "$ro"
mount -o remount,bind,ro "$ro"
set +e
"$build/meterctl" --data "$ro" verify full-0 --period 2024-06 >"$work/verify.log" 2>&1
status=$?
set -e
[ "$status" -eq 1 ] || fail "meterctl verify on a read-only mount exited with $status"
tail -n 1 "$work/verify.log" | grep -q "$ro is on a read-only file system; remount it read-write" ||
  fail "the last line names no cause and fix: $(tail -n 1 "$work/verify.log")"
echo "e2e_full_start: passed"
