#!/usr/bin/env bash
# Creates (once) the small virtualenv that holds the Kubernetes manifest checkers
# (deploy/k8s/requirements-validate.txt: kubernetes-validate, checkov, PyYAML) and
# prints its python on the last line. It is kept apart from the main tooling venv
# (deploy/setup.sh --python) and keyed by the hash of its own requirements file, so
# changing one never rebuilds the other, and a fresh clone reuses it.
#
# Exit status: 0 and the python's path; 3 when PyPI cannot be reached (the caller
# skips); 1 on any other failure (the caller fails).
#
# Environment: CORRAL_CACHE (default ~/.cache/corral) holds the virtualenvs;
# PYTHON (default /usr/bin/python3, else python3) makes it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements-validate.txt"
hash="$(sha256sum "$req" | cut -c1-16)"
cache="${CORRAL_CACHE:-$HOME/.cache/corral}"
venv="$cache/venv-k8s-$hash"
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else py="$(command -v python3)"; fi
fi

if [ ! -f "$venv/.complete" ]; then
    index="${PIP_INDEX_URL:-https://pypi.org/simple}"
    if ! "$py" - "$index" <<'PY' >&2
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/pip/", timeout=10).read(1)
except Exception as e:
    print("tools-venv: %s is unreachable: %s" % (sys.argv[1], e))
    sys.exit(1)
PY
    then
        exit 3
    fi
    echo "tools-venv: creating $venv (kubernetes-validate, checkov)" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
    touch "$venv/.complete"
fi
echo "$venv/bin/python"
