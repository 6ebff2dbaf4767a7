#!/usr/bin/env bash
# Installs everything, builds corral and runs the whole test suite with ctest:
# first a Release build, then the same suite on an address+undefined sanitizer
# build. Set CORRAL_SANITIZE=0 to skip the sanitizer pass. The Release pass includes
# a soak of a whole cluster (CORRAL_SOAK_MINUTES, default 2; 0 skips it). After the
# Release pass, the libFuzzer targets run briefly where clang is installed
# (CORRAL_FUZZ_SECONDS each).
# Last, the concurrency tests run on a thread sanitizer build (CORRAL_TSAN=0 skips it).
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

CORRAL_SOAK_MINUTES="${CORRAL_SOAK_MINUTES:-2}" run_suite build -DCMAKE_BUILD_TYPE=Release
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

# The thread sanitizer pass: the tests labelled router, replica or batching (the router
# and replica servers, the batcher, the SP transport, libcorral), less the single-threaded
# parser tests, on a TSan build; tests/README.md says why this subset. The servers the
# Python tests start are TSan builds too: every report, from any process, lands in
# build-tsan/tsan-reports/ and fails the pass even when the test around it passed.
tsan_pass() {
    local dir=build-tsan logs="$root/build-tsan/tsan-reports" rc=0
    echo "== configure and build $dir (thread sanitizer)"
    cmake -S . -B "$dir" -DCORRAL_PYTHON="$py" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCORRAL_TSAN=ON -DCORRAL_CUDA=OFF >/dev/null
    cmake --build "$dir" -j "$jobs"
    # TSan maps its shadow memory at fixed addresses, which some kernels' address
    # randomisation collides with ("unexpected memory mapping"); then the pass runs with
    # randomisation off for its own processes (setarch -R), never by changing a sysctl.
    local prefix=() probe
    probe="$("$dir/router/corral-router" --help 2>&1 || true)"
    if [[ "$probe" == *"unexpected memory mapping"* ]]; then
        echo "== TSan cannot map its shadow memory here: running the pass under setarch -R"
        prefix=(setarch "$(uname -m)" -R)
    fi
    rm -rf "$logs"
    mkdir -p "$logs"
    echo "== ctest $dir (labels router|replica|batching, under TSan)"
    # oneDNN's OpenMP runtime is not built with TSan: one compute thread keeps it out.
    OMP_NUM_THREADS=1 \
    TSAN_OPTIONS="halt_on_error=0:exitcode=66:second_deadlock_stack=1:log_path=$logs/tsan:suppressions=$root/tests/tsan.supp${TSAN_OPTIONS:+:$TSAN_OPTIONS}" \
        "${prefix[@]}" ctest --test-dir "$dir" --output-on-failure -j "$jobs" --timeout 900 \
        -L 'router|replica|batching' -E '^router_test_(jdoc|jnum_format|oip_.*)$' || rc=$?
    local n
    n="$(find "$logs" -type f -name 'tsan.*' | wc -l)"
    if [ "$n" != 0 ]; then
        find "$logs" -type f -name 'tsan.*' -exec cat {} +
        echo "== TSan: $n process(es) reported, above (logs in $logs)"
        return 1
    fi
    return "$rc"
}
if [ "${CORRAL_TSAN:-1}" != 0 ]; then
    tsan_pass
fi
