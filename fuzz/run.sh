#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for SECONDS seconds,
# starting from its seed corpus in tests/corpus/<target>/. Exits 1 when any
# target crashes, leaks, hits undefined behavior or breaks an invariant; the
# input that did it is saved under the output folder and its path printed.
#
# usage: fuzz/run.sh SECONDS [TARGET...]
#   BUILD_DIR  build directory (default build-fuzz-clang under the source tree)
#   OUT_DIR    new corpus entries and crash inputs (default a new folder under /tmp)
#   JOBS       targets run at once (default: the number of CPUs)
set -euo pipefail
source_dir="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: fuzz/run.sh SECONDS [TARGET...]: SECONDS must be a whole number above 0, got" \
       "\"$seconds\"" >&2
  exit 2
fi
shift
build_dir="${BUILD_DIR:-$source_dir/build-fuzz-clang}"
out_dir="${OUT_DIR:-$(mktemp -d /tmp/hm-fuzz-XXXXXX)}"
jobs="${JOBS:-$(nproc)}"

if ! command -v clang >/dev/null; then
  echo "fuzz/run.sh: clang not found; run engine/install-deps.sh (packages clang and" \
       "libclang-rt-14-dev)" >&2
  exit 2
fi
CC=clang cmake -S "$source_dir" -B "$build_dir" -DHM_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  >"$out_dir/cmake.log"
cmake --build "$build_dir" -j"$(nproc)" --target fuzz >>"$out_dir/cmake.log"

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  for path in "$source_dir"/fuzz/fuzz_*.c; do
    targets+=("$(basename "$path" .c)")
  done
fi

# Runs one target; its log is $out_dir/<target>.log.
run_target() {
  local target="$1" binary="$build_dir/fuzz/$1"
  local corpus="$out_dir/$target-corpus" seeds="$source_dir/tests/corpus/$target"
  if [ ! -x "$binary" ]; then
    echo "fuzz/run.sh: unknown target $target (no $binary)" >&2
    return 1
  fi
  mkdir -p "$corpus" "$out_dir/$target-crashes"
  # -timeout: one input running 10 s is a hang; -rss_limit_mb bounds memory per target.
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$binary" "$corpus" "$seeds" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$out_dir/$target-crashes/" \
    >"$out_dir/$target.log" 2>&1
}

failed=0
pids=()
names=()
for target in "${targets[@]}"; do
  run_target "$target" &
  pids+=($!)
  names+=("$target")
  if [ "${#pids[@]}" -ge "$jobs" ]; then
    if ! wait "${pids[0]}"; then failed=1; echo "FAIL ${names[0]}"; else echo "ok   ${names[0]}"; fi
    pids=("${pids[@]:1}")
    names=("${names[@]:1}")
  fi
done
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then failed=1; echo "FAIL ${names[$i]}"; else echo "ok   ${names[$i]}"; fi
done

# One line per target: runs, coverage and corpus size, from libFuzzer's final stats.
for target in "${targets[@]}"; do
  log="$out_dir/$target.log"
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  units=$(find "$out_dir/$target-corpus" -type f | wc -l)
  echo "$target: runs=${runs:-?} cov=${cov:-?} new_corpus_units=$units seconds=$seconds"
  for crash in "$out_dir/$target-crashes"/*; do
    [ -e "$crash" ] || continue
    echo "  crash input: $crash (log: $log)"
    grep -m3 -E 'ERROR: |runtime error|invariant broken' "$log" | sed 's/^/  /' || true
  done
done
if [ "$failed" -ne 0 ]; then
  echo "fuzz/run.sh: a target failed; logs and inputs in $out_dir" >&2
  exit 1
fi
echo "fuzz/run.sh: every target ran $seconds s without a finding; logs in $out_dir"
