#!/usr/bin/env bash
# Fuzzes longer than the test suite does: tests/fuzz/run.sh SECONDS [TARGET...]
# Configures and builds the fuzz build (build-fuzz, clang, -DCORRAL_FUZZ=ON; override the
# folder with CORRAL_FUZZ_BUILD) when needed, then runs each target (all by default:
# jdoc oip_request config aliases scrape httphead wire onnx image image_upload sp_stream
# http) for SECONDS from its committed corpus and regressions plus what earlier runs
# found, printing execs/s, total execs and crashes per target. Exits non-zero when any target
# crashed; the crashing input is in build-fuzz/tests/fuzz/work/crash/TARGET/ (commit it
# under regressions/TARGET/ with the fix).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
secs="${1:?usage: tests/fuzz/run.sh SECONDS [TARGET...]}"
shift
command -v clang >/dev/null || { echo "tests/fuzz/run.sh: clang not found" >&2; exit 2; }
dir="${CORRAL_FUZZ_BUILD:-$root/build-fuzz}"
cmake -S "$root" -B "$dir" -DCORRAL_FUZZ=ON -DCMAKE_C_COMPILER=clang >/dev/null
cmake --build "$dir" -j "${CORRAL_JOBS:-$(nproc)}" >/dev/null
targets=("$@")
if [ ${#targets[@]} = 0 ]; then
    targets=(jdoc oip_request config aliases scrape httphead wire onnx image image_upload sp_stream http)
fi
status=0
for t in "${targets[@]}"; do
    "$here/fuzz_one.sh" "$dir/tests/fuzz/fuzz_$t" "$t" "$secs" "$here" "$dir/tests/fuzz/work" \
        || status=1
done
exit $status
