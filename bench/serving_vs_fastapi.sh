#!/usr/bin/env bash
# Serving benchmark: corral (router + 2 CPU replicas) against the FastAPI + PyTorch
# baseline (bench/fastapi_server.py under uvicorn --workers 2), both serving the same
# model with the same weights on loopback, driven by wrk with keep-alive at several
# concurrencies. The model is models/digits by default, or the MLP 784-512-10 of
# bench/models/zoo.py with MODEL=mlp.
#
# Usage: bench/serving_vs_fastapi.sh [DURATION_SECONDS]
#
# Builds nothing: it expects corral-router and corral-replica in build/ (or the
# paths below) and the tooling virtualenv (deploy/setup.sh --python).
#
# Environment:
#   MODEL         digits (default: models/digits and its sample) or mlp (the zoo's
#                 MLP 784-512-10 with torch seed 0 weights, saved as a state_dict,
#                 exported into a temporary repository with deploy/export/export.py
#                 and verified by corral-replica when it is built; the request is
#                 one row of 784 values drawn with seed 0; FastAPI loads the same
#                 state_dict)
#   MAX_BATCH     give the model a batching section with this max_batch_size
#                 (max_queue_delay_us 0; 16 is what the export tool gives by default);
#                 default none (unbatched: the MLP is exported with --no-batching)
#   DURATION      seconds per measurement (default 10; the argument wins)
#   CONCURRENCY   connection counts to measure (default "1 16 64")
#   SERVERS       which servers to measure (default "corral fastapi")
#   CORRAL_BUILD  build directory (default build/ of this tree)
#   CORRAL_ROUTER, CORRAL_REPLICA   the binaries (default in CORRAL_BUILD)
#   CORRAL_PYTHON the virtualenv's python (default: deploy/setup.sh --python)
#   WRK_THREADS   wrk threads, capped at the connection count (default 2)
#   ROUTER_THREADS  corral-router --threads (default 1)
#   REPLICA_ARGS  extra corral-replica options, e.g. "--overlap off" (default none)
#
# Output: one line per measurement,
#   server=corral conc=16 rps=... p50_ms=... p99_ms=... errors=0
# then, when both servers ran, corral/fastapi ratios per concurrency.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
duration="${1:-${DURATION:-10}}"
concurrency="${CONCURRENCY:-1 16 64}"
servers="${SERVERS:-corral fastapi}"
build="${CORRAL_BUILD:-$root/build}"
router="${CORRAL_ROUTER:-$build/router/corral-router}"
replica="${CORRAL_REPLICA:-$build/replica/corral-replica}"
wrk_threads="${WRK_THREADS:-2}"
model="${MODEL:-digits}"
max_batch="${MAX_BATCH:-}"
router_threads="${ROUTER_THREADS:-1}"
read -r -a replica_args <<<"${REPLICA_ARGS:-}"

die() { echo "serving_vs_fastapi: $*" >&2; exit 1; }

[[ "$duration" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive number of seconds, got '$duration'"
command -v wrk >/dev/null || die "wrk is not installed (Debian package wrk)"
command -v curl >/dev/null || die "curl is not installed"
if [[ " $servers " == *" corral "* ]]; then
    [ -x "$router" ] || die "no corral-router at $router (build it, or set CORRAL_ROUTER / CORRAL_BUILD)"
    [ -x "$replica" ] || die "no corral-replica at $replica (build it, or set CORRAL_REPLICA / CORRAL_BUILD)"
fi
py="${CORRAL_PYTHON:-}"
if [ -z "$py" ]; then
    venv="$("$root/deploy/setup.sh" --python | tail -n 1)" || die "deploy/setup.sh --python failed"
    py="$venv/bin/python"
fi
[ -x "$py" ] || die "no python at $py (set CORRAL_PYTHON)"
case "$model" in
    digits) [ -f models/digits/sample.json ] || die "models/digits/sample.json is missing (run models/digits/train.py)" ;;
    mlp) ;;
    *) die "MODEL must be digits or mlp, got '$model'" ;;
esac
[ -z "$max_batch" ] || [[ "$max_batch" =~ ^[1-9][0-9]*$ ]] ||
    die "MAX_BATCH must be a positive number of rows, got '$max_batch'"
[[ "$router_threads" =~ ^[1-9][0-9]*$ ]] || die "ROUTER_THREADS must be a positive number, got '$router_threads'"

work="$(mktemp -d "${TMPDIR:-/tmp}/corral-bench.XXXXXX")"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports, asked of the kernel; a race with another process is possible
# but rare, and shows as a failed start below.
read -r -a ports <<<"$("$py" -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
')"
router_port=${ports[0]} fastapi_port=${ports[1]} rep_a=${ports[2]} rep_b=${ports[3]}

# The model both servers run: model_repo/model_name for corral, fastapi_env for the
# FastAPI workers, corral_body for the OIP request and fastapi_body for the same row.
fastapi_env=()
if [ "$model" = digits ]; then
    model_repo=models model_name=digits corral_body="$root/models/digits/sample.json"
    if [ -n "$max_batch" ]; then
        # The bundled model's versions, with a config.json that adds the batching section.
        model_repo="$work/repo"
        mkdir -p "$work/repo/digits"
        ln -s "$root/models/digits/"[0-9]* "$root/models/digits/labels.txt" "$work/repo/digits/"
        "$py" -c '
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["batching"] = {"max_batch_size": int(sys.argv[3]), "max_queue_delay_us": 0}
json.dump(cfg, open(sys.argv[2], "w"), indent=2)
' "$root/models/digits/config.json" "$work/repo/digits/config.json" "$max_batch"
    fi
else
    model_repo="$work/repo" model_name=mlp corral_body="$work/corral_body.json"
    # One set of weights for both servers: a state_dict saved here is what the export
    # traces and what the FastAPI workers load.
    "$py" -c '
import json, sys
import torch
from bench.models.zoo import mlp
torch.manual_seed(0)
torch.save(mlp().state_dict(), sys.argv[1])
row = torch.rand(784, generator=torch.Generator().manual_seed(0)).tolist()
json.dump({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": row}]},
          open(sys.argv[2], "w"))
' "$work/mlp.pt" "$corral_body" || die "could not write the MLP weights and request"
    verify=()
    [ -x "$replica" ] && verify=(--replica "$replica")
    batching=(--no-batching)
    [ -n "$max_batch" ] && batching=(--max-batch-size "$max_batch" --queue-delay-us 0)
    "$py" deploy/export/export.py --builder bench.models.zoo:mlp --checkpoint "$work/mlp.pt" \
        --input input:-1x784:FP32 --output logits --repo "$work/repo" --name mlp "${verify[@]}" \
        "${batching[@]}" >"$work/export.log" 2>&1 ||
        { tail -n 30 "$work/export.log" >&2; die "exporting the MLP failed"; }
    fastapi_env=(FASTAPI_BUILDER=bench.models.zoo:mlp "FASTAPI_STATE_DICT=$work/mlp.pt")
fi
"$py" -c '
import json, sys
d = json.load(open(sys.argv[1]))
json.dump({"input": d["inputs"][0]["data"]}, open(sys.argv[2], "w"))
' "$corral_body" "$work/fastapi_body.json"

# wait_http URL NAME LOG: polls until URL answers 200, or fails after 60 s.
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"

# check_answer URL BODY: one request up front, so a server answering errors is not
# mistaken for a fast one; prints the predicted class.
check_answer() {
    local out
    out="$(curl -sS -f -X POST -H 'Content-Type: application/json' --data @"$2" "$1")" ||
        die "POST $1 failed: ${out:-no answer}"
    "$py" -c '
import json, sys
r = json.loads(sys.argv[1])
if "prediction" in r:
    print(r["prediction"])
else:
    o = r["outputs"][0]
    print(max(range(len(o["data"])), key=lambda i: o["data"][i]))
' "$out"
}

declare -A rps p50 p99
measure() { # SERVER URL BODY
    local server=$1 url=$2 body=$3 c t line req dur errs
    for c in $concurrency; do
        t=$(( wrk_threads < c ? wrk_threads : c ))
        line="$(BODY_FILE="$body" wrk -t"$t" -c"$c" -d"${duration}s" --latency \
                -s "$root/bench/wrk_post.lua" "$url" | grep '^RESULT ')" ||
            die "wrk against $url at concurrency $c produced no result"
        read -r req dur p50u p99u errs <<<"$(awk '{
            for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            print v["requests"], v["duration_us"], v["p50_us"], v["p99_us"],
                  v["errors_connect"] + v["errors_read"] + v["errors_write"] + v["errors_status"] + v["errors_timeout"]
        }' <<<"$line")"
        rps[$server,$c]=$(awk -v r="$req" -v d="$dur" 'BEGIN { printf "%.1f", r / (d / 1e6) }')
        p50[$server,$c]=$(awk -v u="$p50u" 'BEGIN { printf "%.3f", u / 1000 }')
        p99[$server,$c]=$(awk -v u="$p99u" 'BEGIN { printf "%.3f", u / 1000 }')
        echo "server=$server conc=$c rps=${rps[$server,$c]} p50_ms=${p50[$server,$c]} p99_ms=${p99[$server,$c]} errors=$errs"
    done
}

echo "# model $model${max_batch:+ (max_batch_size $max_batch)}; ${duration}s per point, concurrency: $concurrency; $(nproc) CPUs; wrk shares them with the servers"

if [[ " $servers " == *" corral "* ]]; then
    "$replica" --model-repo "$model_repo" --model "$model_name" --listen "tcp://127.0.0.1:$rep_a" --device cpu \
        --threads 1 "${replica_args[@]}" >"$work/replica_a.log" 2>&1 & pids+=($!)
    "$replica" --model-repo "$model_repo" --model "$model_name" --listen "tcp://127.0.0.1:$rep_b" --device cpu \
        --threads 1 "${replica_args[@]}" >"$work/replica_b.log" 2>&1 & pids+=($!)
    "$router" --listen "127.0.0.1:$router_port" --threads "$router_threads" --replica "$model_name=tcp://127.0.0.1:$rep_a" \
        --replica "$model_name=tcp://127.0.0.1:$rep_b" >"$work/router.log" 2>&1 & pids+=($!)
    wait_http "http://127.0.0.1:$router_port/v2/health/ready" corral-router "$work/router.log"
    # Ready means the router is up; wait until the model itself answers through it.
    wait_http "http://127.0.0.1:$router_port/v2/models/$model_name/ready" "model $model_name" "$work/router.log"
    echo "# corral: router :$router_port ($router_threads thread(s)), replicas :$rep_a :$rep_b; sample predicted as $(check_answer \
        "http://127.0.0.1:$router_port/v2/models/$model_name/infer" "$corral_body")"
    measure corral "http://127.0.0.1:$router_port/v2/models/$model_name/infer" "$corral_body"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    pids=()
fi

if [[ " $servers " == *" fastapi "* ]]; then
    env "${fastapi_env[@]}" "$py" -m uvicorn bench.fastapi_server:app --host 127.0.0.1 --port "$fastapi_port" --workers 2 \
        --log-level warning --no-access-log >"$work/fastapi.log" 2>&1 & pids+=($!)
    wait_http "http://127.0.0.1:$fastapi_port/health" "uvicorn (FastAPI)" "$work/fastapi.log"
    # Both workers load the model; give the second one a moment after the first answers.
    sleep 2
    echo "# fastapi: uvicorn --workers 2 :$fastapi_port; sample predicted as $(check_answer \
        "http://127.0.0.1:$fastapi_port/predict" "$work/fastapi_body.json")"
    measure fastapi "http://127.0.0.1:$fastapi_port/predict" "$work/fastapi_body.json"
fi

if [[ " $servers " == *" corral "* && " $servers " == *" fastapi "* ]]; then
    for c in $concurrency; do
        awk -v c="$c" -v r1="${rps[corral,$c]}" -v r2="${rps[fastapi,$c]}" \
            -v a1="${p50[corral,$c]}" -v a2="${p50[fastapi,$c]}" \
            -v b1="${p99[corral,$c]}" -v b2="${p99[fastapi,$c]}" 'BEGIN {
            printf "ratio conc=%s rps_corral/fastapi=%.2f p50_fastapi/corral=%.2f p99_fastapi/corral=%.2f\n",
                   c, (r2 > 0 ? r1 / r2 : 0), (a1 > 0 ? a2 / a1 : 0), (b1 > 0 ? b2 / b1 : 0) }'
    done
fi
