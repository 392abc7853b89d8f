#!/usr/bin/env bash
# The sanitizer jobs of CI, each a clang build in its own folder (default build-asan / build-tsan):
#   tools/sanitize.sh asan [BUILD_DIR]   the whole suite under ASan + UBSan + LSan, then the libFuzzer targets
#                                        for 25 s each (fuzz.short); excluded: test_install (it builds a downstream
#                                        project with the system compiler, which cannot link the sanitizer runtime)
#                                        and the isa_* reruns (the GCC job runs every dispatch path)
#   tools/sanitize.sh tsan [BUILD_DIR]   the concurrency tests (threads sharing one model or one detector, models
#                                        with their own thread budgets side by side, a forward on another thread)
#                                        and the soak runs under TSan
# OpenMP under TSan: clang builds use LLVM's libomp; its barriers and locks are made visible to TSan by the Archer
# tool (libarcher.so, shipped with libomp), loaded through OMP_TOOL_LIBRARIES. The job fails if Archer is missing,
# so no OpenMP report is ever silenced by a suppression list.
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:?usage: tools/sanitize.sh asan|tsan [BUILD_DIR]}"
build="${2:-build-$job}"
# the library at -O3 as released; the tests' and the command line's own code at -O0: instrumented, that code builds
# in less than half the time, and the suite (whose heavy work is the library's) runs about a tenth longer
common=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ -DMAMBACV_CUDA=OFF -DMAMBACV_BUILD_TESTS=ON
        -DMAMBACV_TEST_OPT=-O0 -DMAMBACV_CLI_OPT=-O0)
case "$job" in
  asan)
    cmake -S . -B "$build" "${common[@]}" -DMAMBACV_FUZZ=ON > "$build.cmake.log" 2>&1 || { cat "$build.cmake.log"; exit 1; }
    cmake --build "$build" -j2
    export ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1
    export UBSAN_OPTIONS=print_stacktrace=1
    export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp"
    ctest --test-dir "$build" --output-on-failure -j2 -E '^(test_install|isa_)|^Install\.'
    ;;
  tsan)
    cmake -S . -B "$build" "${common[@]}" -DMAMBACV_SANITIZE=thread > "$build.cmake.log" 2>&1 || { cat "$build.cmake.log"; exit 1; }
    cmake --build "$build" -j2 --target test_context test_vim test_vmamba test_mask_rcnn mambacv_soak
    archer="$(readlink -f "$(dirname "$(readlink -f "$(command -v clang++)")")/../lib/libarcher.so")"
    [ -f "$archer" ] || { echo "tools/sanitize.sh: no libarcher.so beside clang's libomp ($archer)" >&2; exit 1; }
    export OMP_TOOL_LIBRARIES="$archer"
    # ignore_noninstrumented_modules: accesses made inside libraries built without TSan (libomp itself, OpenCV,
    # libstdc++) are not tracked - what Archer asks for; every access of mambacv's own code still is
    export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ignore_noninstrumented_modules=1"
    ctest --test-dir "$build" --output-on-failure -j2 \
      -R 'Concurrent|SideBySide|OnAnotherThread|ThreadsShare|^soak\.'
    ;;
  *) echo "tools/sanitize.sh: unknown job '$job' (asan or tsan)" >&2; exit 2 ;;
esac
