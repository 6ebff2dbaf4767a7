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
# 4. The export tool's default (docs/from-pytorch.md): no batching section against
#    {"max_batch_size": 16, "max_queue_delay_us": 0}, at concurrency 1 and 64, for
#    models/digits, the MLP 784-512-10 and (with RESNET_REPO) resnet18, whose runs
#    take RESNET_SECS (default: twice SECONDS).
# Environment: THREADS (engine threads per replica, default 1); SECTIONS (default
# "mlp seq resnet18 default": which of the four to run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
secs="${2:-5}"
threads="${THREADS:-1}"
sections=" ${SECTIONS:-mlp seq resnet18 default} "
resnet_secs="${RESNET_SECS:-$((secs * 2))}"
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

# variant SRC_MODEL_DIR NAME BATCHING_JSON|none: $work/v/NAME, the source model's
# versions with its config.json given that batching section (none: without one).
variant() {
    mkdir -p "$work/v/$2"
    ln -s "$1/"[0-9]* "$work/v/$2/"
    "${PYTHON:-python3}" - "$1/config.json" "$work/v/$2/config.json" "$3" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg.pop("labels", None)
cfg.pop("batching", None)
if sys.argv[3] != "none":
    cfg["batching"] = json.loads(sys.argv[3])
json.dump(cfg, open(sys.argv[2], "w"))
EOF
}
have_resnet() { [ -n "${RESNET_REPO:-}" ] && [ -f "$RESNET_REPO/resnet18/config.json" ]; }

echo "== machine: $(nproc) CPUs, engine threads per replica: $threads, $secs s per run"

if [[ "$sections" == *" mlp "* ]]; then
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
fi

if [[ "$sections" == *" seq "* ]]; then
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
fi

if [[ "$sections" == *" resnet18 "* ]]; then
echo "== resnet18"
if ! have_resnet; then
    echo "skipped: set RESNET_REPO to a model repository holding resnet18 (deploy/export/export.py"
    echo "         --builder bench.models.zoo:resnet18 ...) once the engine runs it"
else
for mb in 32 1; do
    variant "$RESNET_REPO/resnet18" "resnet18_mb$mb" "{\"max_batch_size\": $mb, \"max_queue_delay_us\": 0}"
    serve "$work/v" "resnet18_mb$mb"
    for c in 1 8 32; do
        echo "-- resnet18 max_batch_size $mb"
        "$load" run "$url" input "$c" "$secs" 3,224,224
    done
    stop
done
fi
fi

if [[ "$sections" == *" default "* ]]; then
# The export tool's default section against none, the two replicas one after the
# other at each concurrency so that both see the same moment of a shared machine.
default_json='{"max_batch_size": 16, "max_queue_delay_us": 0}'
"$load" write "$work" mlp_none mlp
"$load" write "$work" mlp_default mlp "$default_json"
variant "$root/models/digits" digits_none none
variant "$root/models/digits" digits_default "$default_json"
models="digits:$work/v:64:$secs mlp:$work:784:$secs"
if have_resnet; then
    variant "$RESNET_REPO/resnet18" resnet18_none none
    variant "$RESNET_REPO/resnet18" resnet18_default "$default_json"
    models="$models resnet18:$work/v:3,224,224:$resnet_secs"
fi
echo "== export default ($default_json) against no batching section, concurrency 1 and 64"
for m in $models; do
    IFS=: read -r name repo dims s <<<"$m"
    for c in 1 64; do
        for v in none default; do
            serve "$repo" "${name}_$v"
            echo "-- $name batching $v, concurrency $c, $s s"
            "$load" run "$url" input "$c" "$s" "$dims"
            stop
        done
    done
done
have_resnet || echo "(resnet18 skipped: set RESNET_REPO to a repository holding its export)"
fi
