#!/usr/bin/env bash
# The soak: a corral-scheduler cluster (router, 2 replicas of digits, 1 of an image model)
# under mixed load (HTTP JSON, HTTP binary tensors, RPC, images) for MINUTES, a replica
# SIGKILLed every 30 s, a rolling update and a scale change in the middle; at the end
# every request answered exactly once, the router's and the scheduler's /metrics equal
# to what the soak counted, and their resident memory flat. tests/soak.py says what runs
# and what is checked; tests/README.md ("Soak") how to read its output.
#
#   tests/soak.sh MINUTES [BUILD_DIR] [DRIVER OPTIONS]   # by hand (BUILD_DIR: build)
#   tests/soak.sh --ctest BUILD_DIR                       # the ctest entry integration_soak
#
# --ctest runs CORRAL_SOAK_MINUTES minutes (at most 4: the entry's timeout is 400 s) and
# skips (exit 77) when it is unset or 0, or on a sanitizer build; tests/run.sh sets it to
# 2 in its Release pass.
# The driver runs on $CORRAL_PYTHON, else the tooling virtualenv (deploy/setup.sh
# --python). Output goes to $CORRAL_SOAK_OUT, else BUILD_DIR/soak/ (replaced each run).
# DRIVER OPTIONS: --kill-every S, --rate X, --rss-bound F, --break drop-answer|kill-router.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    echo "usage: tests/soak.sh MINUTES [BUILD_DIR] [DRIVER OPTIONS] | tests/soak.sh --ctest BUILD_DIR" >&2
    exit 2
}

[ $# -ge 1 ] || usage
if [ "$1" = --ctest ]; then
    [ $# -eq 2 ] || usage
    minutes="${CORRAL_SOAK_MINUTES:-0}"
    if [ "$minutes" = 0 ]; then
        echo "skipped: the soak runs only when CORRAL_SOAK_MINUTES is set (tests/run.sh's Release pass sets 2)"
        exit 77
    fi
    if ! awk -v m="$minutes" 'BEGIN { exit !(m + 0 > 0 && m + 0 <= 4) }'; then
        echo "soak: under ctest CORRAL_SOAK_MINUTES must be a number of minutes from 0 to 4 (the entry's timeout is 400 s), not '$minutes'; run longer soaks by hand: tests/soak.sh MINUTES BUILD_DIR" >&2
        exit 1
    fi
    build="$2"
    shift 2
    # A sanitizer build's servers are several times slower and bigger: RSS and latency
    # figures would say nothing about corral's.
    if grep -Eq '^CORRAL_(SANITIZE|TSAN):BOOL=(ON|1|TRUE)$' "$build/CMakeCache.txt" 2>/dev/null; then
        echo "skipped: the soak runs on Release builds only; $build is a sanitizer build"
        exit 77
    fi
else
    minutes="$1"
    shift
    build=build
    if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then
        build="$1"
        shift
    fi
    if ! awk -v m="$minutes" 'BEGIN { exit !(m + 0 > 0) }'; then
        echo "soak: MINUTES must be a positive number, not '$minutes'" >&2
        usage
    fi
fi

build="$(cd "$build" 2>/dev/null && pwd)" || { echo "soak: no build directory '$build'" >&2; exit 1; }
for b in scheduler/corral-scheduler router/corral-router replica/corral-replica client/corralctl; do
    if [ ! -x "$build/$b" ]; then
        echo "soak: $build/$b is missing: build corral first (cmake -S . -B BUILD_DIR -DCMAKE_BUILD_TYPE=Release && cmake --build BUILD_DIR)" >&2
        exit 1
    fi
done

py="${CORRAL_PYTHON:-}"
if [ -z "$py" ]; then
    py="$("$root/deploy/setup.sh" --python | tail -n 1)/bin/python3"
fi
out="${CORRAL_SOAK_OUT:-$build/soak}"

echo "soak: $minutes min on $build, output in $out"
exec "$py" "$root/tests/soak.py" --minutes "$minutes" --build "$build" --root "$root" --out "$out" "$@"
