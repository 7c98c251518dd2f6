#!/usr/bin/env bash
# Equality with the JavaScript encoder (tests/test_tokenizer.js). Skips (exit 77) only when node or the
# GPT-2 files are genuinely not on this machine; any other trouble is a failure.
#   test_tokenizer_js.sh LOOM TEST_TOKENIZER_BATCH [TINYSHAKESPEARE]
set -uo pipefail
LOOM=${1:?usage: test_tokenizer_js.sh LOOM TEST_TOKENIZER_BATCH [TINYSHAKESPEARE]}
BATCH=${2:?usage: test_tokenizer_js.sh LOOM TEST_TOKENIZER_BATCH [TINYSHAKESPEARE]}
SHAKESPEARE=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd)
if ! command -v node > /dev/null 2>&1; then
  echo "SKIP: node not found: the reference (the JavaScript encoder of npm gpt-3-encoder) needs Node.js"
  exit 77
fi
# where loom looks for the files (include/loom/tokenizer.h), in its order
cands=()
[[ -n "${LOOM_GPT2_DIR:-}" ]] && cands+=("$LOOM_GPT2_DIR")
cands+=("$(cd "$(dirname "$LOOM")" 2> /dev/null && pwd || dirname "$LOOM")/share/gpt2")
[[ -n "${HOME:-}" ]] && cands+=("$HOME/.cache/loom/gpt2")
cands+=(/usr/local/share/loom/gpt2)
dir=
for c in "${cands[@]}"; do
  if [[ -f "$c/encoder.json" ]]; then dir=$c; break; fi
done
if [[ -z "$dir" ]]; then
  echo "SKIP: GPT-2 tokenizer files not found in ${cands[*]}; fetch them with scripts/fetch_gpt2_tokenizer.sh DIR"
  exit 77
fi
if [[ ! -f "$dir/vocab.bpe" || ! -f "$dir/Encoder.js" ]]; then
  echo "SKIP: $dir has encoder.json but not vocab.bpe and Encoder.js (the JavaScript reference);" \
       "run scripts/fetch_gpt2_tokenizer.sh $dir"
  exit 77
fi
echo "GPT-2 files and JavaScript encoder: $dir (node $(node --version))"
export LOOM_GPT2_DIR=$dir
node "$HERE/test_tokenizer.js" --gpt2-dir "$dir" --loom "$LOOM" --batch "$BATCH" --shakespeare "$SHAKESPEARE"
