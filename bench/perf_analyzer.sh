#!/usr/bin/env bash
# Triton's own load generator, perf_analyzer, against corral: a router and two CPU
# replicas of models/digits (given a batching section, so perf_analyzer can send
# batches), measured at batch 1 and 4 with JSON and with binary tensors.
#
# perf_analyzer comes from the pinned tritonclient 2.51.0 wheel (the newest whose
# binary runs on Debian 12's glibc 2.36), downloaded with pip but never installed
# (that wheel wants numpy < 2, the tooling virtualenv has numpy 2); the binary is
# extracted with libcudart.so.12 from the pinned nvidia-cuda-runtime-cu12 wheel,
# both checked against their SHA-256, into a cache outside the source tree keyed by
# both versions. It also needs Debian's libb64-0d (deploy/setup.sh installs it).
#
# Usage:
#   bench/perf_analyzer.sh [--fetch] [--url HOST:PORT] [--model NAME]
#     --fetch        fetch and extract only; the last line printed is the directory
#                    holding bin/perf_analyzer and lib/ (run it with
#                    LD_LIBRARY_PATH=DIR/lib); exit 1 with the reason when it cannot
#     --url          measure a router already running there instead of starting one
#     --model        the model to measure with --url (default digits); it must batch
#                    (max_batch_size >= 4) for the batch 4 runs
#
# Environment:
#   WINDOW_MS      perf_analyzer's measurement window (default 2000)
#   STABILITY      perf_analyzer -s: the spread, in percent, of three windows in a row
#                  that counts as stable (default 25; perf_analyzer's own default of 10
#                  is seldom met on a shared 2-core machine)
#   CONCURRENCY    perf_analyzer --concurrency-range (default 1)
#   BATCHES        batch sizes (default "1 4")
#   FORMATS        tensor formats (default "json binary")
#   MAX_BATCH      max_batch_size given to digits (default 8; max_queue_delay_us 0)
#   CORRAL_BUILD   build directory (default build/ of this tree)
#   CORRAL_PYTHON  a python with pip, for the download (default: the tooling
#                  virtualenv of deploy/setup.sh --python)
#   CORRAL_CACHE   where the extracted binary is kept (default ~/.cache/corral)
#   PA_WHEELS      a directory already holding the two wheels (no download)
#
# Output: one line per run,
#   perf_analyzer batch=4 tensors=binary conc=1 infer_per_s=... req_per_s=... p50_us=...
#   p90_us=... p99_us=... server_fail=0
# and the exact perf_analyzer command above each. Exit status 1 when perf_analyzer
# fails (any request error makes it fail) or the server counted a failed request.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

pa_version=2.51.0
pa_wheel=tritonclient-2.51.0-py3-none-manylinux1_x86_64.whl
pa_sha256=c485bb0123bdf310f90bc8b03d3489b28df2ffed55b30c7eee0b795b48113d52
cudart_version=12.9.79
cudart_wheel=nvidia_cuda_runtime_cu12-12.9.79-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
cudart_sha256=25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3

die() { echo "perf_analyzer.sh: $*" >&2; exit 1; }

fetch_only=0 url="" model=""
while (($#)); do
    case "$1" in
        --fetch) fetch_only=1 ;;
        --url) [ $# -ge 2 ] || die "--url needs HOST:PORT"; url="$2"; shift ;;
        --model) [ $# -ge 2 ] || die "--model needs a name"; model="$2"; shift ;;
        -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[ -z "$model" ] || [ -n "$url" ] || die "--model applies to --url only"
model="${model:-digits}"
window="${WINDOW_MS:-2000}"
stability="${STABILITY:-25}"
conc="${CONCURRENCY:-1}"
batches="${BATCHES:-1 4}"
formats="${FORMATS:-json binary}"
max_batch="${MAX_BATCH:-8}"
[[ "$window" =~ ^[1-9][0-9]*$ ]] || die "WINDOW_MS must be a positive number, got '$window'"
[[ "$stability" =~ ^[1-9][0-9]*$ ]] || die "STABILITY must be a positive number, got '$stability'"
[[ "$conc" =~ ^[1-9][0-9]*$ ]] || die "CONCURRENCY must be a positive number, got '$conc'"
[[ "$max_batch" =~ ^[1-9][0-9]*$ ]] || die "MAX_BATCH must be a positive number, got '$max_batch'"
for b in $batches; do
    [[ "$b" =~ ^[1-9][0-9]*$ ]] || die "BATCHES must hold positive numbers, got '$b'"
done
for f in $formats; do
    [[ "$f" == json || "$f" == binary ]] || die "FORMATS must hold json or binary, got '$f'"
done

# ---- fetch: the pinned wheels, checked, the binary and libcudart extracted ----

cache="${CORRAL_CACHE:-$HOME/.cache/corral}"
dest="$cache/perf_analyzer-$pa_version-cudart$cudart_version"

# Everything this script starts or writes is undone on exit: a failed fetch leaves no
# half-extracted directory (a finished one is renamed into place whole).
fetch_tmp="" work="" pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -z "$work" ] || rm -rf "$work"
    [ -z "$fetch_tmp" ] || rm -rf "$fetch_tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fetch() {
    [ "$(uname -m)" = x86_64 ] ||
        die "the perf_analyzer of the tritonclient $pa_version wheel is x86_64 only (this is $(uname -m))"
    # Not grep -q: it would stop reading early, and ldconfig's SIGPIPE fail the pipeline.
    ldconfig -p 2>/dev/null | grep 'libb64\.so\.0d' >/dev/null ||
        die "perf_analyzer needs libb64.so.0d: install Debian's libb64-0d (deploy/setup.sh does)"
    if [ -f "$dest/.complete" ]; then
        return 0
    fi
    local py="${CORRAL_PYTHON:-}" tmp w
    mkdir -p "$cache"
    tmp="$(mktemp -d "$cache/.perf_analyzer.XXXXXX")"
    fetch_tmp="$tmp"
    if [ -n "${PA_WHEELS:-}" ]; then
        cp "$PA_WHEELS/$pa_wheel" "$PA_WHEELS/$cudart_wheel" "$tmp/" ||
            die "PA_WHEELS=$PA_WHEELS does not hold $pa_wheel and $cudart_wheel"
    else
        if [ -z "$py" ]; then
            local venv
            venv="$("$root/deploy/setup.sh" --python | tail -n 1)" ||
                die "deploy/setup.sh --python failed"
            py="$venv/bin/python"
        fi
        "$py" -m pip download -q --no-deps --only-binary=:all: -d "$tmp" \
            "tritonclient==$pa_version" "nvidia-cuda-runtime-cu12==$cudart_version" >&2 ||
            die "pip could not download tritonclient==$pa_version and" \
                "nvidia-cuda-runtime-cu12==$cudart_version (no network? PA_WHEELS=DIR names" \
                "a directory holding the two wheels)"
    fi
    for w in "$pa_wheel:$pa_sha256" "$cudart_wheel:$cudart_sha256"; do
        [ -f "$tmp/${w%%:*}" ] || die "pip did not fetch ${w%%:*} (got: $(ls "$tmp"))"
        echo "${w#*:}  $tmp/${w%%:*}" | sha256sum -c --quiet - >&2 ||
            die "${w%%:*} does not have the pinned SHA-256 ${w#*:}"
    done
    python3 - "$tmp" "$pa_wheel" "$cudart_wheel" "$pa_version" <<'EOF' ||
import os, sys, zipfile
tmp, pa, cudart, version = sys.argv[1:]
out = os.path.join(tmp, "out")
for wheel, member, dest in (
        (pa, "tritonclient-%s.data/data/bin/perf_analyzer" % version, "bin/perf_analyzer"),
        (cudart, "nvidia/cuda_runtime/lib/libcudart.so.12", "lib/libcudart.so.12")):
    with zipfile.ZipFile(os.path.join(tmp, wheel)) as z:
        path = os.path.join(out, dest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(member) as src, open(path, "wb") as dst:
            dst.write(src.read())
        os.chmod(path, 0o755)
EOF
        die "could not extract perf_analyzer from the wheels"
    if ! LD_LIBRARY_PATH="$tmp/out/lib" "$tmp/out/bin/perf_analyzer" --version >/dev/null \
            2>"$tmp/err"; then
        cat "$tmp/err" >&2
        LD_LIBRARY_PATH="$tmp/out/lib" ldd "$tmp/out/bin/perf_analyzer" 2>&1 |
            grep -i 'not found' >&2 || true
        die "the extracted perf_analyzer does not run here (a library missing or too old: see above)"
    fi
    touch "$tmp/out/.complete"
    rm -rf "$dest"
    mv "$tmp/out" "$dest"
}

fetch
pa="$dest/bin/perf_analyzer"
if ((fetch_only)); then
    echo "$dest"
    exit 0
fi

# ---- the cluster, unless one was named ----

work="$(mktemp -d "${TMPDIR:-/tmp}/corral-pa.XXXXXX")"

# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"

if [ -z "$url" ]; then
    build="${CORRAL_BUILD:-$root/build}"
    router="$build/router/corral-router" replica="$build/replica/corral-replica"
    [ -x "$router" ] || die "no corral-router at $router (build it, or set CORRAL_BUILD)"
    [ -x "$replica" ] || die "no corral-replica at $replica (build it, or set CORRAL_BUILD)"
    # digits as shipped does not batch (max_batch_size 0): perf_analyzer could then only
    # send batch 1. A copy with a batching section lets it send batches of 4.
    mkdir -p "$work/repo"
    cp -r models/digits "$work/repo/digits"
    python3 - "$work/repo/digits/config.json" "$max_batch" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["batching"] = {"max_batch_size": int(sys.argv[2]), "max_queue_delay_us": 0}
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
EOF
    read -r -a ports <<<"$(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
')"
    for p in "${ports[1]}" "${ports[2]}"; do
        "$replica" --model-repo "$work/repo" --model digits --listen "tcp://127.0.0.1:$p" \
            --device cpu --threads 1 >"$work/replica_$p.log" 2>&1 & pids+=($!)
    done
    "$router" --listen "127.0.0.1:${ports[0]}" --threads 1 --rpc-listen off \
        --control-listen off \
        --replica "digits=tcp://127.0.0.1:${ports[1]}" \
        --replica "digits=tcp://127.0.0.1:${ports[2]}" \
        >"$work/router.log" 2>&1 & pids+=($!)
    url="127.0.0.1:${ports[0]}"
    wait_http "http://$url/v2/models/digits/ready" "model digits" "$work/router.log"
fi

# Failed requests as the router's statistics count them (every replica of the model).
server_fails() {
    curl -sf "http://$url/v2/models/$model/stats" | python3 -c '
import json, sys
print(sum(e["inference_stats"]["fail"]["count"] for e in json.load(sys.stdin)["model_stats"]))'
}

echo "# perf_analyzer $pa_version against corral at $url, model $model; window $window ms," \
     "concurrency $conc; $(nproc) CPUs shared by everything"
status=0
for b in $batches; do
    for f in $formats; do
        before="$(server_fails)" || die "cannot read the statistics of model $model at $url"
        cmd=(perf_analyzer -m "$model" -u "$url" -i http -b "$b" --concurrency-range "$conc"
             --input-tensor-format "$f" --output-tensor-format "$f" -p "$window" -s "$stability")
        echo "# ${cmd[*]}"
        rc=0
        LD_LIBRARY_PATH="$dest/lib" "$pa" "${cmd[@]:1}" -f "$work/pa.csv" >"$work/pa.log" 2>&1 ||
            rc=$?
        if [ "$rc" = 2 ]; then
            # perf_analyzer's exit status 2: no stable measurement (a busy machine), not an
            # error in any request.
            echo "perf_analyzer batch=$b tensors=$f UNSTABLE (no $stability% stable windows;" \
                 "raise STABILITY or WINDOW_MS)" >&2
            status=1
            continue
        elif [ "$rc" != 0 ]; then
            tail -n 20 "$work/pa.log" >&2
            echo "perf_analyzer batch=$b tensors=$f FAILED (exit $rc)" >&2
            status=1
            continue
        fi
        after="$(server_fails)"
        # CSV: Concurrency,Inferences/Second,...,p50 latency,p90 latency,p95 latency,p99 latency
        awk -F, -v b="$b" -v f="$f" -v fail="$((after - before))" '
            NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
            NR == 2 { printf "perf_analyzer batch=%s tensors=%s conc=%s infer_per_s=%s " \
                             "req_per_s=%.1f p50_us=%s p90_us=%s p99_us=%s server_fail=%s\n",
                             b, f, $col["Concurrency"], $col["Inferences/Second"],
                             $col["Inferences/Second"] / b, $col["p50 latency"],
                             $col["p90 latency"], $col["p99 latency"], fail }' "$work/pa.csv"
        [ "$after" = "$before" ] || status=1
    done
done
exit "$status"
