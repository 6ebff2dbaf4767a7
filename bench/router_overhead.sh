#!/usr/bin/env bash
# Router overhead benchmark on the digits model (one CPU replica):
#   1. p50 of a direct request to the replica with the router's own transport
#      (corral-direct-rpc, closed loop, one at a time), and with libcorral (corralctl)
#   2. p50 through the router's RPC endpoint (corralctl)
#   3. p50 through the router over HTTP (wrk, 1 connection, keep-alive), and with
#      corral-http-rtt (a blocking client as lean as corral-direct-rpc)
#   4. max req/s over HTTP at concurrency 64 through ONE router thread (wrk)
#   5. the router's own ceiling: req/s of GET /v2/health/live at concurrency 64
#      (wrk, keep-alive), which the router answers without a replica
# and prints overhead = HTTP p50 - direct p50 (corral-direct-rpc), and for the RPC
# path the same with libcorral on both sides. Targets: overhead <= 50 us,
# >= 30000 req/s. Figures are reported, not asserted.
#
# Usage: bench/router_overhead.sh [DURATION_SECONDS]
# Environment: CORRAL_BUILD (default build/), REQUESTS (closed-loop count, default
# 20000), CONCURRENCY (default 64), WRK_THREADS (default 2), ROUTER_THREADS
# (default 1), REPLICAS (default 1), CEILING_ONLY (1: run only step 5, e.g. with
# ROUTER_THREADS=2 to compare thread counts).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
duration="${1:-${DURATION:-10}}"
build="${CORRAL_BUILD:-$root/build}"
requests="${REQUESTS:-20000}"
conc="${CONCURRENCY:-64}"
wrk_threads="${WRK_THREADS:-2}"
router_threads="${ROUTER_THREADS:-1}"
n_replicas="${REPLICAS:-1}"
ceiling_only="${CEILING_ONLY:-0}"
router="$build/router/corral-router"
replica="$build/replica/corral-replica"
ctl="$build/client/corralctl"
direct_bench="$build/bench/corral-direct-rpc"
http_rtt="$build/bench/corral-http-rtt"

die() { echo "router_overhead: $*" >&2; exit 1; }
for b in "$router" "$replica" "$ctl" "$direct_bench" "$http_rtt"; do [ -x "$b" ] || die "missing $b (build first, or set CORRAL_BUILD)"; done
command -v wrk >/dev/null || die "wrk is not installed (Debian package wrk)"
[ -f models/digits/sample.json ] || die "models/digits/sample.json is missing"

work="$(mktemp -d "${TMPDIR:-/tmp}/corral-overhead.XXXXXX")"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_log FILE REGEX: prints the first match of REGEX in FILE, waiting up to 60 s.
wait_log() {
    local i m
    for i in $(seq 600); do
        m="$(grep -oE "$2" "$1" | head -n 1 || true)"
        if [ -n "$m" ]; then echo "$m"; return 0; fi
        sleep 0.1
    done
    cat "$1" >&2
    die "no match for '$2' in $1"
}

rep_args=()
for i in $(seq "$n_replicas"); do
    "$replica" --model-repo models --model digits --listen tcp://127.0.0.1:0 --device cpu \
        >"$work/replica$i.log" 2>&1 &
    pids+=($!)
    url="$(wait_log "$work/replica$i.log" 'tcp://127\.0\.0\.1:[0-9]+')"
    rep_args+=(--replica "digits=$url")
    [ "$i" = 1 ] && direct="$url"
done
"$router" --listen 127.0.0.1:0 --rpc-listen tcp://127.0.0.1:0 --threads "$router_threads" \
    "${rep_args[@]}" >"$work/router.log" 2>&1 &
pids+=($!)
rpc_port="$(wait_log "$work/router.log" 'RPC listening on tcp://127\.0\.0\.1:[0-9]+' | sed 's/.*://')"
http_port="$(wait_log "$work/router.log" 'listening on http://127\.0\.0\.1:[0-9]+' | sed 's/.*://')"
for i in $(seq 100); do
    curl -fs "http://127.0.0.1:$http_port/v2/health/ready" >/dev/null && break
    sleep 0.1
done

result() { grep -oE "$2=[0-9.]+" <<<"$1" | cut -d= -f2; }
t=$(( wrk_threads < conc ? wrk_threads : conc ))

# ceiling: step 5, GET /v2/health/live at concurrency $conc with wrk's figures line.
ceiling() {
    local out reqs us errs
    cat >"$work/get.lua" <<'EOF'
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
EOF
    out="$(wrk -t"$t" -c"$conc" -d"${duration}s" -s "$work/get.lua" "http://127.0.0.1:$http_port/v2/health/live" | grep RESULT)"
    reqs="$(result "$out" requests)"; us="$(result "$out" duration_us)"; errs="$(result "$out" errors)"
    echo "router ceiling, GET /v2/health/live c=$conc, $router_threads router thread(s): $(awk -v r="$reqs" -v u="$us" \
        'BEGIN { printf "%.0f", r / (u / 1e6) }') req/s  p50 $(result "$out" p50_us) us  p99 $(result "$out" p99_us) us  errors $errs"
}
if [ "$ceiling_only" = 1 ]; then
    ceiling
    exit 0
fi

out="$("$direct_bench" "$direct" digits models/digits/sample.json "$requests")" ||
    die "corral-direct-rpc failed: $out"
direct_p50="$(result "$out" p50_us)"
echo "direct to the replica:          p50 ${direct_p50} us  p99 $(result "$out" p99_us) us  (router's transport)"
out="$("$ctl" infer --rpc "$direct" --model digits --repeat "$requests" models/digits/sample.json 2>&1 >/dev/null)"
ctl_p50="$(result "$out" p50_us)"
echo "direct to the replica, libcorral: p50 ${ctl_p50} us  p99 $(result "$out" p99_us) us"
out="$("$ctl" infer --rpc "tcp://127.0.0.1:$rpc_port" --model digits --repeat "$requests" models/digits/sample.json 2>&1 >/dev/null)"
rpc_p50="$(result "$out" p50_us)"
echo "through the router, RPC:        p50 ${rpc_p50} us  p99 $(result "$out" p99_us) us"

export BODY_FILE="$root/models/digits/sample.json"
out="$(wrk -t1 -c1 -d"${duration}s" -s bench/wrk_post.lua "http://127.0.0.1:$http_port/v2/models/digits/infer" | grep RESULT)"
http_p50="$(result "$out" p50_us)"
echo "through the router, HTTP c=1:   p50 ${http_p50} us  p99 $(result "$out" p99_us) us  ($(result "$out" requests) requests, wrk)"
out="$("$http_rtt" 127.0.0.1 "$http_port" /v2/models/digits/infer models/digits/sample.json "$requests")" ||
    die "corral-http-rtt failed: $out"
lean_p50="$(result "$out" p50_us)"
echo "through the router, HTTP c=1:   p50 ${lean_p50} us  p99 $(result "$out" p99_us) us  (corral-http-rtt)"
out="$(wrk -t"$t" -c"$conc" -d"${duration}s" -s bench/wrk_post.lua "http://127.0.0.1:$http_port/v2/models/digits/infer" | grep RESULT)"
reqs="$(result "$out" requests)"; us="$(result "$out" duration_us)"
errs=$(( $(result "$out" errors_status) + $(result "$out" errors_read) + $(result "$out" errors_timeout) ))
rps="$(awk -v r="$reqs" -v u="$us" 'BEGIN { printf "%.0f", r / (u / 1e6) }')"
echo "HTTP c=$conc, $router_threads router thread(s), $n_replicas replica(s): ${rps} req/s  p50 $(result "$out" p50_us) us  p99 $(result "$out" p99_us) us  errors $errs"
ceiling
echo "RESULT overhead_http_us=$(awk -v a="$http_p50" -v b="$direct_p50" 'BEGIN { printf "%.1f", a - b }') overhead_http_lean_us=$(awk -v a="$lean_p50" -v b="$direct_p50" 'BEGIN { printf "%.1f", a - b }') overhead_rpc_us=$(awk -v a="$rpc_p50" -v b="$ctl_p50" 'BEGIN { printf "%.1f", a - b }') rps_c${conc}=${rps}"
