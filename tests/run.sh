#!/usr/bin/env bash
# Installs everything, builds corral and runs the whole test suite with ctest:
# first a Release build, then the same suite on an address+undefined sanitizer
# build. Set CORRAL_SANITIZE=0 to skip the sanitizer pass. After the Release pass, the
# libFuzzer targets run briefly where clang is installed (CORRAL_FUZZ_SECONDS each).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv="$(./deploy/setup.sh --python | tail -n 1)"
# The CUDA backend is built whenever nvcc exists, also where the toolkit is not on PATH.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="$PATH:/usr/local/cuda/bin"
fi
py="$venv/bin/python3"
jobs="$(nproc)"

run_suite() {
    local dir="$1"; shift
    echo "== configure and build $dir ($*)"
    cmake -S . -B "$dir" -DCORRAL_PYTHON="$py" "$@" >/dev/null
    cmake --build "$dir" -j "$jobs"
    echo "== ctest $dir"
    ctest --test-dir "$dir" --output-on-failure -j "$jobs" --timeout 900
}

run_suite build -DCMAKE_BUILD_TYPE=Release
# The libFuzzer targets (tests/fuzz/), in the Release pass only: ctest replays each
# target's committed corpus and regressions, then fuzzes it for CORRAL_FUZZ_SECONDS
# (10 by default); a crash fails the run. tests/fuzz/run.sh SECONDS fuzzes longer.
if command -v clang >/dev/null; then
    echo "== configure and build build-fuzz (clang, libFuzzer)"
    cmake -S . -B build-fuzz -DCORRAL_FUZZ=ON -DCMAKE_C_COMPILER=clang \
        -DCORRAL_FUZZ_SECONDS="${CORRAL_FUZZ_SECONDS:-10}" >/dev/null
    cmake --build build-fuzz -j "$jobs"
    echo "== ctest build-fuzz"
    rm -f build-fuzz/tests/fuzz/work/log/summary
    CORRAL_FUZZ_SEED="${CORRAL_FUZZ_SEED:-1}" \
        ctest --test-dir build-fuzz --output-on-failure -j "$jobs" --timeout 300
    cat build-fuzz/tests/fuzz/work/log/summary
else
    echo "== fuzz targets skipped: clang not found (tests/fuzz/ needs clang's libFuzzer)"
fi
if [ "${CORRAL_SANITIZE:-1}" != 0 ]; then
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
        run_suite build-asan -DCMAKE_BUILD_TYPE=Debug -DCORRAL_SANITIZE=ON
fi
