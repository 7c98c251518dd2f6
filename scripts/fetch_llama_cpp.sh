#!/usr/bin/env bash
# Installs llama.cpp's Node.js binding, node-llama-cpp (pinned), with its prebuilt CPU binary only, into
# DEST_DIR/node_modules: the independent reference the GGUF export test runs loom's exported models in.
# loom itself does not use it. Idempotent.
#   scripts/fetch_llama_cpp.sh build/peers/llama-cpp      (setup.sh does this)
# Environment: LLAMA_CPP_NPM_VERSION (default 3.21.1).
set -euo pipefail
dest=${1:?usage: fetch_llama_cpp.sh DEST_DIR}
version=${LLAMA_CPP_NPM_VERSION:-3.21.1}
if [[ -f "$dest/node_modules/node-llama-cpp/package.json" ]] &&
   grep -q "\"version\": \"$version\"" "$dest/node_modules/node-llama-cpp/package.json" &&
   [[ -d "$dest/node_modules/@node-llama-cpp/linux-x64" ]]; then
  echo "fetch_llama_cpp: $dest already holds node-llama-cpp $version"
  exit 0
fi
if ! command -v npm > /dev/null 2>&1; then
  echo "fetch_llama_cpp: error: npm not found (Debian: apt-get install npm)" >&2
  exit 1
fi
mkdir -p "$dest"
# the optional dependencies are every platform's binaries (CUDA, Vulkan: ~700 MB); only the CPU one is needed
(cd "$dest" && npm install --no-audit --no-fund --no-save --omit=optional \
   "node-llama-cpp@$version" "@node-llama-cpp/linux-x64@$version" > npm-install.log 2>&1) || {
  echo "fetch_llama_cpp: error: npm install failed (see $dest/npm-install.log)" >&2
  exit 1
}
echo "fetch_llama_cpp: node-llama-cpp $version in $dest"
