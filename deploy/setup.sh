#!/usr/bin/env bash
# Installs everything corral needs on a Debian 12 machine, idempotently:
#   - the Debian packages of the C runtime, the build and the test suite
#     (apt-get update runs only when one of them is missing; libb64-0d is for the
#     perf_analyzer that bench/perf_analyzer.sh fetches);
#   - with --python, the pinned Python tooling (deploy/requirements.txt) into a
#     virtualenv outside the source tree, keyed by the requirements file's hash,
#     so a fresh clone reuses it. The venv path is printed on the last line.
#
# Environment: CORRAL_CACHE (default ~/.cache/corral) holds the virtualenvs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
want_python=0
for a in "$@"; do
    case "$a" in
        --python) want_python=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option '$a' (expected --python or --help)" >&2; exit 2 ;;
    esac
done

pkgs=(build-essential cmake pkg-config curl ca-certificates
      libuv1-dev libhttp-parser-dev libnng-dev libjansson-dev
      libprotobuf-c-dev protobuf-c-compiler libonnx-dev libdnnl-dev
      libcmocka-dev libonnx-testdata prometheus wrk chromium
      libjpeg62-turbo-dev libpng-dev libwebp-dev   # image decoding (classify endpoint)
      libb64-0d
      dnsmasq-base iproute2   # the multi-host test (dnsmasq's binary, not its service)
      systemd                 # systemd-analyze verify, for deploy/systemd/'s units
      python3 python3-venv python3-dev)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if ((want_python)); then
    req="$here/deploy/requirements.txt"
    hash="$(sha256sum "$req" | cut -c1-16)"
    cache="${CORRAL_CACHE:-$HOME/.cache/corral}"
    venv="$cache/venv-$hash"
    if [ ! -f "$venv/.complete" ]; then
        echo "setup: creating Python virtualenv $venv (first run downloads several GB)" >&2
        rm -rf "$venv"
        mkdir -p "$cache"
        /usr/bin/python3 -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip >&2
        "$venv/bin/pip" install -q -r "$req" >&2
        touch "$venv/.complete"
    fi
    echo "$venv"
fi
