#!/usr/bin/env bash
# A full disk under meterd: the ledger lives on a 16 MiB tmpfs that a ballast
# file fills while TCP and UDP senders run. meterd must stop acknowledging, so
# the senders keep their frames. It must count the UDP frames it drops, log
# one "ledger full" error with the fix and keep serving reads (meterctl usage).
# Once the ballast is deleted it must resume by itself, with every
# acknowledged event stored and every rollup equal to its recount.
#
# Needs root to mount the tmpfs; exits 77 (skipped) otherwise. Arguments: BUILD_DIR SOURCE_DIR.
set -euo pipefail
build=${1:?usage: e2e_full_disk.sh BUILD_DIR SOURCE_DIR}

if [ "$(id -u)" -ne 0 ]; then
  echo "e2e_full_disk: skipped: needs root to mount a tmpfs (run as root, as CI does)"
  exit 77
fi
work=$(mktemp -d /tmp/hm-full-disk-XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt" "$work/load"
if ! mount -t tmpfs -o size=16m,mode=0700 tmpfs "$mnt"; then
  rmdir "$mnt"
  rm -rf "$work"
  echo "e2e_full_disk: skipped: mounting a tmpfs failed although running as root" \
       "(a container without CAP_SYS_ADMIN?)"
  exit 77
fi
meterd_pid=
load_pid=
cleanup() {
  set +e # every step of the cleanup runs, even after one fails
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null
  [ -n "$meterd_pid" ] && kill -9 "$meterd_pid" 2>/dev/null && wait "$meterd_pid" 2>/dev/null
  umount "$mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "e2e_full_disk: FAILED: $*" >&2
  echo "--- meterd log" >&2
  cut -c1-300 "$work/meterd.log" >&2 || true
  exit 1
}

data=$mnt/data
"$build/meterctl" --data "$data" tenant create disk-0 --service-start 2024-01-01 >/dev/null
"$build/meterctl" --data "$data" key create disk-0 --keys-file "$work/keys.txt" >/dev/null
"$build/meterd" --data "$data" --tcp-port 0 --udp-port 0 --port-file "$work/ports" \
  --map-size 256 --log-level info 2>"$work/meterd.log" &
meterd_pid=$!
for _ in $(seq 500); do [ -s "$work/ports" ] && break; sleep 0.01; done
read -r tcp udp <"$work/ports" || fail "meterd did not start"
"$build/tests/crash_load" --keys "$work/keys.txt" --out "$work/load" --tcp-port "${tcp#tcp=}" \
  --udp-port "${udp#udp=}" --tcp-senders 1 --udp-senders 1 --rate 4000 >"$work/load.log" 2>&1 &
load_pid=$!

acked() { cat "$work/load"/acked-*.log 2>/dev/null | wc -l; }
for _ in $(seq 100); do [ "$(acked)" -gt 0 ] && break; sleep 0.05; done
[ "$(acked)" -gt 0 ] || fail "no ack before the disk filled"

# Fill the disk: dd stops at ENOSPC.
dd if=/dev/zero of="$mnt/ballast" bs=64k 2>/dev/null || true
for _ in $(seq 200); do grep -q "ledger full:" "$work/meterd.log" && break; sleep 0.05; done
grep -q "ledger full:" "$work/meterd.log" || fail "meterd logged no ledger full error"
sleep 0.5
held=$(acked)
sleep 2
[ "$(acked)" -eq "$held" ] || fail "acks went on while the disk was full ($held, then $(acked))"
"$build/meterctl" --data "$data" usage disk-0 --period 2024-05 >/dev/null ||
  fail "meterctl usage failed while the disk was full"
errors=$(grep -c "ledger full:" "$work/meterd.log")
[ "$errors" -eq 1 ] || fail "$errors ledger full errors logged, expected 1"
grep "ledger full:" "$work/meterd.log" | grep -q "free disk" || fail "the error names no fix"

# Free the disk: meterd commits the held batch at its next retry, within 8 s.
rm -f "$mnt/ballast"
for _ in $(seq 300); do grep -q "ledger full state ended" "$work/meterd.log" && break; sleep 0.05; done
grep -q "ledger full state ended" "$work/meterd.log" || fail "meterd did not resume"
resumed=$(acked)
sleep 1
[ "$(acked)" -gt "$resumed" ] || fail "no acks after the disk was freed"

kill "$load_pid"
wait "$load_pid" || fail "crash_load saw rejected frames or conflicts"
load_pid=
kill "$meterd_pid"
wait "$meterd_pid" || fail "meterd exited with $? after SIGTERM"
meterd_pid=
dropped=$(sed -n 's/.*"udp_dropped_full": \([0-9]*\).*/\1/p' "$data/meterd-stats.json")
[ "${dropped:-0}" -gt 0 ] || fail "no UDP frame counted as dropped while full"
# A write cut short by the full disk must hold frames back, never fail them.
grep -q '"store_failed": 0' "$data/meterd-stats.json" ||
  fail "frames were acknowledged as store_failed: $(cat "$data/meterd-stats.json")"
"$build/tests/crash_check" events "$data" "$work/load" || fail "ledger check after the full disk"
for period in 2024-04 2024-05 2024-06; do
  "$build/meterctl" --data "$data" verify disk-0 --period "$period" >/dev/null ||
    fail "meterctl verify --period $period"
done
echo "e2e_full_disk: passed: $(acked) acks, held at $held during the full disk," \
     "$dropped UDP frames dropped while full"
