#!/usr/bin/env bash
# Installs corral's packages, builds it (Release) and runs a local cluster in the
# foreground: corral-router on 127.0.0.1:8000 in front of two CPU replicas of the
# bundled digits model. Ctrl-C stops every process it started.
#
# Environment: CORRAL_PORT (default 8000), CORRAL_RPC_PORT (default 8001),
# CORRAL_REPLICA_PORTS (default "9101 9102").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
port="${CORRAL_PORT:-8000}"
rpc_port="${CORRAL_RPC_PORT:-8001}"
read -r -a rports <<< "${CORRAL_REPLICA_PORTS:-9101 9102}"

./deploy/setup.sh
echo "quickstart: building (Release) in build/" >&2
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target corral-router corral-replica corralctl >/dev/null

pids=()
cleanup() {
    trap - INT TERM EXIT
    echo >&2
    echo "quickstart: stopping ${#pids[@]} processes" >&2
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap cleanup INT TERM EXIT

replica_args=()
for p in "${rports[@]}"; do
    ./build/replica/corral-replica --model-repo models --model digits \
        --listen "tcp://127.0.0.1:$p" --device cpu &
    pids+=($!)
    replica_args+=(--replica "digits=tcp://127.0.0.1:$p")
done
./build/router/corral-router --listen "127.0.0.1:$port" --rpc-listen "tcp://127.0.0.1:$rpc_port" \
    "${replica_args[@]}" &
pids+=($!)

for _ in $(seq 1 100); do
    if curl -fs "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1; then break; fi
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "quickstart: a process exited during start-up" >&2; exit 1; }
    done
    sleep 0.1
done
curl -fs "http://127.0.0.1:$port/v2/health/ready" >/dev/null \
    || { echo "quickstart: the cluster did not become ready" >&2; exit 1; }

label="$(cat models/digits/sample.label 2>/dev/null || echo '?')"
cat <<MSG

corral is serving the digits model on http://127.0.0.1:$port (2 replicas).
Classify a bundled sample (a handwritten $label) by pasting:

  curl -s -X POST http://127.0.0.1:$port/v2/models/digits/infer \\
       -H 'Content-Type: application/json' -d @$root/models/digits/sample.json

The answer's "logits" are the scores of the digits 0-9; the largest is the prediction.
To print just the predicted digit:

  curl -s -X POST http://127.0.0.1:$port/v2/models/digits/infer \\
       -d @$root/models/digits/sample.json | python3 -c \\
       'import json,sys; d=json.load(sys.stdin)["outputs"][0]["data"]; print(max(range(10), key=d.__getitem__))'

Services can use the RPC endpoint tcp://127.0.0.1:$rpc_port (libcorral), e.g.:

  ./build/client/corralctl infer --rpc tcp://127.0.0.1:$rpc_port --model digits models/digits/sample.json

Metrics: http://127.0.0.1:$port/metrics. Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}" || true
echo "quickstart: a process exited; stopping the rest" >&2
