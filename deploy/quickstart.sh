#!/usr/bin/env bash
# Installs corral's packages, builds it (Release) and runs a local cluster in the
# foreground through corral-scheduler: corral-router on 127.0.0.1:8000 in front of
# two CPU replicas of the bundled digits model, supervised (restarted when they die).
# Ctrl-C stops everything: the scheduler drains the replicas and the router first.
#
# Environment: CORRAL_PORT (default 8000), CORRAL_RPC_PORT (default 8001),
# CORRAL_ADMIN_PORT (default 8002), CORRAL_CONTROL_PORT (default 8003).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
port="${CORRAL_PORT:-8000}"
rpc_port="${CORRAL_RPC_PORT:-8001}"
admin_port="${CORRAL_ADMIN_PORT:-8002}"
control_port="${CORRAL_CONTROL_PORT:-8003}"

./deploy/setup.sh
echo "quickstart: building (Release) in build/" >&2
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target corral-router corral-replica corralctl \
    corral-scheduler >/dev/null

# deploy/cluster.json with this run's ports; oversubscribe, so that a one-core machine
# still runs both replicas.
config="$root/build/quickstart-cluster.json"
cat > "$config" <<JSON
{
  "model_repository": "$root/models",
  "router": {"listen": "127.0.0.1:$port", "rpc_listen": "tcp://127.0.0.1:$rpc_port",
             "control_listen": "127.0.0.1:$control_port", "threads": 1},
  "admin": {"listen": "127.0.0.1:$admin_port"},
  "oversubscribe": true,
  "models": [{"name": "digits", "version": 1, "replicas": 2, "devices": ["cpu"], "threads": 1}]
}
JSON

sched=""
# Ctrl-C reaches the scheduler too (same process group): it drains and stops the
# cluster, so this script only waits for it. Any other exit sends it SIGTERM.
on_int() {
    trap - INT TERM EXIT
    echo >&2
    echo "quickstart: stopping the cluster (the scheduler drains every process)" >&2
    [ -n "$sched" ] && wait "$sched" 2>/dev/null || true
}
cleanup() {
    trap - INT TERM EXIT
    if [ -n "$sched" ] && kill -0 "$sched" 2>/dev/null; then
        echo "quickstart: stopping the cluster (the scheduler drains every process)" >&2
        kill -TERM "$sched" 2>/dev/null || true
        wait "$sched" 2>/dev/null || true
    fi
}
trap on_int INT
trap cleanup TERM EXIT

./build/scheduler/corral-scheduler --config "$config" --state-dir "$root/build/quickstart-state" &
sched=$!

for _ in $(seq 1 300); do
    if curl -fs "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1; then break; fi
    kill -0 "$sched" 2>/dev/null || { echo "quickstart: corral-scheduler exited during start-up" >&2; exit 1; }
    sleep 0.1
done
curl -fs "http://127.0.0.1:$port/v2/health/ready" >/dev/null \
    || { echo "quickstart: the cluster did not become ready" >&2; exit 1; }

label="$(cat models/digits/sample.label 2>/dev/null || echo '?')"
cat <<MSG

corral is serving the digits model on http://127.0.0.1:$port (2 replicas, supervised by
corral-scheduler: a replica that dies is replaced).
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

Metrics: http://127.0.0.1:$port/metrics. Cluster status, as corral-scheduler sees it:

  ./build/client/corralctl status --admin 127.0.0.1:$admin_port

Logs: $root/build/quickstart-state/. Press Ctrl-C to stop.
MSG
./build/client/corralctl status --admin "127.0.0.1:$admin_port" || true
wait "$sched" || true
echo "quickstart: corral-scheduler exited" >&2
