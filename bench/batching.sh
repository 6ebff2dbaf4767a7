#!/usr/bin/env bash
# Dynamic batching benchmark (reported, not asserted). Drives one corral-replica
# directly over NNG with bench/batching_load.c (closed loop: each client sends a
# request and waits for its answer before the next).
#
#   bench/batching.sh [BUILD_DIR] [SECONDS]
#
# 1. MLP 784-512-10 at concurrency 64: unbatched (no batching section) against
#    dynamic batching (max_batch_size 64), the latter with the compute section on
#    its own thread (--overlap on) and inline (--overlap off).
# 2. Variable-length sequences (lengths uniform in 8..128, rows 1): padding
#    efficiency with buckets 16/32/64/128 against a single 128 bucket.
# 3. resnet18 at concurrency 1, 8 and 32, batched (max_batch_size 32) against
#    max_batch_size 1, when RESNET_REPO names a model repository holding a
#    resnet18 export that this build's engine can run.
# Environment: THREADS (engine threads per replica, default 1).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
secs="${2:-5}"
threads="${THREADS:-1}"
replica="$build/replica/corral-replica"
load="$build/tests/batching_load"
[ -x "$load" ] || load="$(find "$build" -name batching_load -type f -perm -u+x | head -n 1)"
if [ ! -x "$replica" ] || [ -z "$load" ]; then
    echo "build corral first (corral-replica and batching_load under $build)" >&2
    exit 1
fi
work="$(mktemp -d -t corral-batching-bench-XXXXXX)"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# serve REPO MODEL [replica args...]: starts a replica and sets $url.
serve() {
    local repo="$1" model="$2"; shift 2
    "$replica" --model-repo "$repo" --model "$model" --listen tcp://127.0.0.1:0 \
        --threads "$threads" "$@" >"$work/$model.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
        url="$(sed -n 's/.*serving model .* on \(tcp:[^ ]*\) (.*/\1/p' "$work/$model.log")"
        [ -n "$url" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$work/$model.log" >&2
    return 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

echo "== machine: $(nproc) CPUs, engine threads per replica: $threads, $secs s per run"

echo "== MLP 784-512-10, concurrency 64"
"$load" write "$work" mlp_unbatched mlp
"$load" write "$work" mlp_batched mlp '{"max_batch_size": 64, "max_queue_delay_us": 0}'
serve "$work" mlp_unbatched
echo "-- unbatched"
"$load" run "$url" input 64 "$secs" 784
stop
for ov in on off; do
    serve "$work" mlp_batched --overlap "$ov"
    echo "-- batched, max_batch_size 64, overlap $ov"
    "$load" run "$url" input 64 "$secs" 784
    stop
done

echo "== sequences of length 8..128 (one row each), concurrency 32"
buckets='{"max_batch_size": 8, "max_queue_delay_us": 2000, "inputs": {"x": {"dims": {"1": %s}}},
  "outputs": {"h": {"dims": {"1": {"input": "x", "dim": 1}}}, "y": {"dims": {"1": {"input": "x", "dim": 1}}}}}'
# shellcheck disable=SC2059
"$load" write "$work" seq_buckets seq "$(printf "$buckets" '[16, 32, 64, 128]')"
# shellcheck disable=SC2059
"$load" write "$work" seq_single seq "$(printf "$buckets" '[128]')"
for m in seq_buckets seq_single; do
    serve "$work" "$m"
    echo "-- $m"
    "$load" run "$url" x 32 "$secs" 1,8 8 128
    stop
done

echo "== resnet18"
if [ -z "${RESNET_REPO:-}" ] || [ ! -f "$RESNET_REPO/resnet18/config.json" ]; then
    echo "skipped: set RESNET_REPO to a model repository holding resnet18 (deploy/export/export.py"
    echo "         --builder bench.models.zoo:resnet18 ...) once the engine runs it"
    exit 0
fi
for mb in 32 1; do
    rm -rf "$work/r"; mkdir -p "$work/r/resnet18"
    ln -s "$RESNET_REPO/resnet18/"[0-9]* "$work/r/resnet18/"
    "${PYTHON:-python3}" - "$RESNET_REPO/resnet18/config.json" "$work/r/resnet18/config.json" "$mb" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg.pop("labels", None)
cfg["batching"] = {"max_batch_size": int(sys.argv[3]), "max_queue_delay_us": 0}
json.dump(cfg, open(sys.argv[2], "w"))
EOF
    serve "$work/r" resnet18
    for c in 1 8 32; do
        echo "-- resnet18 max_batch_size $mb"
        "$load" run "$url" input "$c" "$secs" 3,224,224
    done
    stop
done
