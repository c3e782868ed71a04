#!/usr/bin/env bash
# Builds this plugin into a WebAssembly component, plugin.wasm (or the path
# given as the first argument): installs the pinned componentize-py into
# .venv once, writes the Python bindings of the WIT world into bindings/
# (the unit tests import them too), and componentizes app.py.
# Needs python3 (3.11 or newer) and PyPI.
set -euo pipefail
cd "$(dirname "$0")"

wit=wit/v0.1
world=repeater
out=${1:-plugin.wasm}

if [ ! -x .venv/bin/componentize-py ] || ! cmp -s requirements.txt .venv/requirements.txt; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    cp requirements.txt .venv/requirements.txt
fi
# Only this project's venv is searched for packages, never the machine's.
export VIRTUAL_ENV="$PWD/.venv"

rm -rf bindings
.venv/bin/componentize-py --quiet -d "$wit" -w "$world" bindings bindings
.venv/bin/componentize-py --quiet -d "$wit" -w "$world" componentize app -p . -p bindings -o "$out"
echo "built $out ($(wc -c <"$out") bytes)"
