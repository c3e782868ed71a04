#!/usr/bin/env bash
# Builds this plugin into a WebAssembly component, plugin.wasm (or the path
# given as the first argument): installs the componentize-js pinned in
# package.json and package-lock.json into node_modules unless that version
# is there already, then runs build.mjs.
# Needs Node.js 20 or newer and the npm registry.
set -euo pipefail
cd "$(dirname "$0")"

tool=@bytecodealliance/componentize-js
wanted=$(node -p "require('./package.json').devDependencies['$tool']")
installed=$(node -p "require('./node_modules/$tool/package.json').version" 2>/dev/null || true)
if [ "$wanted" != "$installed" ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
node build.mjs "${1:-plugin.wasm}"
