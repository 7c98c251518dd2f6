#!/usr/bin/env bash
# Installs OpenAI's official Node.js client, the npm package openai (pinned), into DEST_DIR/node_modules: the
# independent client `loom serve`'s test (tests/test_serve.py, through tests/serve_openai.mjs) drives the server
# with, so the server is checked against what real client code sends and parses, not against our own reading of
# the API. loom itself does not use it. openai 5.x has no dependencies (it uses the runtime's fetch); its peer
# dependencies (ws, zod) are optional and not installed. It runs on Node.js 18 and 20 (its README names 20 as
# supported: on 18 only file uploads, which we do not use, need a global File). Idempotent.
#   scripts/fetch_openai_client.sh build/peers/openai      (setup.sh --test does this)
# Environment: OPENAI_NPM_VERSION (default 5.23.2).
set -euo pipefail
dest=${1:?usage: fetch_openai_client.sh DEST_DIR}
version=${OPENAI_NPM_VERSION:-5.23.2}
pkg_json="$dest/node_modules/openai/package.json"
if [[ -f "$pkg_json" ]] && grep -q "\"version\": \"$version\"" "$pkg_json"; then
  echo "fetch_openai_client: $dest already holds openai $version"
  exit 0
fi
if ! command -v npm > /dev/null 2>&1; then
  echo "fetch_openai_client: error: npm not found (Debian: apt-get install npm)" >&2
  exit 1
fi
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
# a package.json of its own makes DEST_DIR the install root (npm would otherwise look for one further up)
[[ -f "$dest/package.json" ]] || echo '{"name": "loom-peer-openai", "private": true}' > "$dest/package.json"
(cd "$dest" && npm install --no-audit --no-fund --no-save --no-package-lock --omit=optional --ignore-scripts \
   "openai@$version" > npm-install.log 2>&1) || {
  echo "fetch_openai_client: error: npm install failed (see $dest/npm-install.log)" >&2
  exit 1
}
if ! grep -q "\"version\": \"$version\"" "$pkg_json" 2>/dev/null; then
  echo "fetch_openai_client: error: openai $version is not in $dest/node_modules after npm install" >&2
  exit 1
fi
echo "fetch_openai_client: openai $version in $dest"
