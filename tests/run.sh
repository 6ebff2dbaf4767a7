#!/usr/bin/env bash
# Installs everything, builds corral and runs the whole test suite with ctest:
# first a Release build, then the same suite on an address+undefined sanitizer
# build. Set CORRAL_SANITIZE=0 to skip the sanitizer pass.
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
if [ "${CORRAL_SANITIZE:-1}" != 0 ]; then
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
        run_suite build-asan -DCMAKE_BUILD_TYPE=Debug -DCORRAL_SANITIZE=ON
fi
