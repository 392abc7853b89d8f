#!/usr/bin/env bash
# The GPU check: the CUDA op tests (each CUDA kernel against its CPU reference), compute-sanitizer memcheck on the
# scan kernel where the toolkit has it, and a short table last.
#   tools/gpu_check.sh pack [BUILD_DIR]    on a machine with the build dependencies: configures BUILD_DIR (default
#                                          build-cuda) with CUDA on, builds the CUDA test programs (they need no
#                                          OpenCV) and puts them, with the non-CUDA shared libraries they load, in
#                                          BUILD_DIR/gpu-bundle
#   tools/gpu_check.sh run [BUNDLE_DIR]    on the GPU machine (it needs only the NVIDIA driver; compute-sanitizer is
#                                          used when on PATH or under /usr/local/cuda): runs the bundle
# A bundle made elsewhere travels as a folder (e.g. copied with the working tree); nothing in it is machine-specific
# beyond the x86-64 Linux ABI of the libraries it carries.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:?usage: tools/gpu_check.sh pack [BUILD_DIR] | run [BUNDLE_DIR]}"
case "$mode" in
  pack)
    build="${2:-build-cuda}"
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMAMBACV_CUDA=ON > "$build.cmake.log" 2>&1 \
      || { cat "$build.cmake.log"; exit 1; }
    cmake --build "$build" -j2 --target test_cuda_scan
    bundle="$build/gpu-bundle"
    rm -rf "$bundle" && mkdir -p "$bundle/lib"
    cp "$build/tests/cuda/test_cuda_scan" "$bundle/"
    # the shared libraries outside glibc and the CUDA driver (libgomp, libstdc++, libgcc_s)
    ldd "$bundle/test_cuda_scan" | awk '/=> \// {print $3}' \
      | grep -E 'libgomp|libstdc\+\+|libgcc_s|libomp' | xargs -r -I{} cp -L {} "$bundle/lib/"
    echo "gpu bundle: $bundle ($(du -sh "$bundle" | cut -f1))"
    ;;
  run)
    bundle="${2:-build-cuda/gpu-bundle}"
    export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    logs="${GPU_CHECK_LOGS:-$bundle/logs}"  # where the logs go (set it where the bundle is read-only)
    mkdir -p "$logs"
    rows=()
    status=0
    for t in "$bundle"/test_cuda_*; do
      [ -f "$t" ] && [ -x "$t" ] || continue
      name="$(basename "$t")"
      if "$t" --gtest_brief=1 > "$logs/$name.log" 2>&1; then r="pass"; else r="FAIL"; status=1; fi
      skipped="$(grep -o '\[  SKIPPED \] [0-9]* test' "$logs/$name.log" | awk '{print $4}' | tail -1 || true)"
      worst="$(grep -o 'worst relative L2 cuda vs reference: [0-9.e+-]*' "$logs/$name.log" | tail -1 | awk '{print $NF}' || true)"
      tail -5 "$logs/$name.log"
      rows+=("| $name | $r | ${skipped:-0} skipped | worst rel L2 ${worst:-n/a} |")
    done
    sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
    if [ -x "$sanitizer" ]; then
      if "$sanitizer" --tool memcheck --error-exitcode 3 "$bundle/test_cuda_scan" \
          --gtest_filter='CudaScan.MatchesReferenceModelShapes:CudaScan.MatchesReferenceEveryStateSize' \
          > "$logs/memcheck.log" 2>&1; then m="clean"; else m="ERRORS (see $logs/memcheck.log)"; status=1; fi
      tail -3 "$logs/memcheck.log"
      rows+=("| memcheck (scan) | $m | | |")
    else
      rows+=("| memcheck (scan) | not run: no compute-sanitizer | | |")
    fi
    echo
    echo "| check | result | | |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    exit $status
    ;;
  *) echo "tools/gpu_check.sh: unknown mode '$mode' (pack or run)" >&2; exit 2 ;;
esac
