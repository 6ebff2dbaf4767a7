#!/usr/bin/env bash
# corral's engine against ONNX Runtime and PyTorch, one thread each, on the same
# .onnx files: resnet18 (batch 1 and 32), mobilenet_v2 (1) and an MLP 784-512-10
# (1 and 64), then the replica's memory per model. Prints one line per row:
#   model=resnet18 batch=1 corral_ms=... ort_ms=... torch_ms=... corral/ort=0.93
#
# usage: bench/engine_vs_ort.sh [options of bench/engine_vs_ort.py]
#   e.g. bench/engine_vs_ort.sh --rows mlp:1,mlp:64 --rounds 5
#        bench/engine_vs_ort.sh --docs docs/benchmarks.md
# Environment: CORRAL_BUILD (default: build) is the CMake build directory, configured
# and built here when its targets are missing; CORRAL_PYTHON (default: the virtualenv of
# deploy/setup.sh --python) runs the Python side.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CORRAL_BUILD:-$root/build}"
py="${CORRAL_PYTHON:-}"
if [ -z "$py" ]; then
    py="$("$root/deploy/setup.sh" --python | tail -n 1)/bin/python3"
fi
if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCORRAL_PYTHON="$py" >/dev/null
fi
if ! cmake --build "$build" -j "$(nproc)" --target corral-engine-bench >/dev/null; then
    echo "engine_vs_ort: building corral-engine-bench in $build failed (is bench/ added to the" \
         "top-level CMakeLists.txt?)" >&2
    exit 1
fi
# The replica memory measurement needs the replica and the router; without them it
# reports n/a, the timings still run.
if ! cmake --build "$build" -j "$(nproc)" --target corral-replica corral-router >/dev/null 2>&1; then
    echo "engine_vs_ort: warning: building corral-replica and corral-router in $build failed;" \
         "the replica memory figures use whatever binaries are there" >&2
fi
exec "$py" "$root/bench/engine_vs_ort.py" --build "$build" "$@"
