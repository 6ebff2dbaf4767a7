# shellcheck shell=bash
# Shell helpers the serving benchmarks share (bench/serving_vs_fastapi.sh,
# bench/perf_analyzer.sh); sourced, not run. Messages name the calling script.

# wait_http URL NAME LOG: polls until URL answers 200; after 60 s prints the tail of
# LOG and exits 1.
wait_http() {
    local _
    for _ in $(seq 1 300); do
        if curl -sf -o /dev/null "$1"; then return 0; fi
        sleep 0.2
    done
    echo "${0##*/}: $2 did not become ready at $1 within 60 s; its log:" >&2
    tail -n 30 "$3" >&2 || true
    exit 1
}
