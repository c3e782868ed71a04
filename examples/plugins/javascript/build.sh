#!/usr/bin/env bash
# Builds this plugin into a WebAssembly component, plugin.wasm (or the path
# given as the first argument): installs the pinned componentize-js from
# package-lock.json into node_modules once, then runs build.mjs.
# Needs Node.js 20 or newer and the npm registry.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d node_modules/@bytecodealliance/componentize-js ] \
    || ! cmp -s package-lock.json node_modules/.package-lock.json.installed; then
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.package-lock.json.installed
fi
node build.mjs "${1:-plugin.wasm}"
