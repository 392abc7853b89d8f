#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan), makes their seed corpora and runs each for SECONDS
# (default 60). Corpora grow in BUILD/fuzz-corpus/<target> across runs; a crash leaves its input in BUILD/fuzz-crashes
# and makes the script exit 1. Needs clang and libomp-dev (Debian: clang libomp-dev).
#   tools/fuzz.sh [SECONDS] [BUILD_DIR] [--prebuilt]     e.g. tools/fuzz.sh 600 build-fuzz
# --prebuilt: BUILD_DIR is an already built -DMAMBACV_FUZZ=ON tree (the fuzz.short test of the sanitizer job).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
build="${2:-build-fuzz}"
if [ "${3:-}" != "--prebuilt" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DMAMBACV_FUZZ=ON \
    -DMAMBACV_BUILD_TESTS=OFF -DMAMBACV_CUDA=OFF > "$build.cmake.log" 2>&1 || { cat "$build.cmake.log"; exit 1; }
  cmake --build "$build" -j2 --target fuzz_safetensors fuzz_pth fuzz_config fuzz_image mambacv_fuzz_seeds
fi
seeds="$build/fuzz-seeds"
ASAN_OPTIONS=detect_leaks=0 "$build/tests/fuzz/mambacv_fuzz_seeds" "$seeds" configs/*.json
mkdir -p "$build/fuzz-crashes"
status=0
for t in safetensors pth config image; do
  corpus="$build/fuzz-corpus/$t"
  mkdir -p "$corpus"
  echo "== fuzz_$t: ${seconds}s"
  # -rss_limit_mb: the loaders' own bounds keep memory far below it; a timeout of 10 s per input catches hangs
  if ! ASAN_OPTIONS=detect_leaks=1 "$build/tests/fuzz/fuzz_$t" "$corpus" "$seeds/$t" -max_total_time="$seconds" \
      -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 -artifact_prefix="$build/fuzz-crashes/$t-" \
      > "$build/fuzz-$t.log" 2>&1; then
    status=1
    tail -40 "$build/fuzz-$t.log"
  fi
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|cov: ' "$build/fuzz-$t.log" | tail -3
done
rm -f /dev/shm/mambacv_fuzz_* /tmp/mambacv_fuzz_*  # the per-process input files of the targets
exit $status
