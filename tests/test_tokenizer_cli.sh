#!/usr/bin/env bash
# `loom tokenizer` as a user meets it: every --help, byte/char/bpe encode and decode with exact round trips
# (also of input longer than one 16 MiB read), training on tinyshakespeare (65 characters; BPE 1024 in a
# few seconds), GPT-2 when its files are installed, and one-line errors for bad tokenizer files, a broken
# encoder.json, a missing vocab.bpe and bad ids.
#   test_tokenizer_cli.sh LOOM [TINYSHAKESPEARE]
set -uo pipefail
# grep -q exits at the first match; under pipefail the writer then dies of SIGPIPE
# and the pipeline fails at random, so read all input and drop it instead.
grepq() { grep "$@" >/dev/null; }
LOOM=${1:?usage: test_tokenizer_cli.sh LOOM [TINYSHAKESPEARE]}
TS=${2:-}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }
skip() { echo "SKIP $1"; }

# --- help and usage ---
"$LOOM" tokenizer --help | grepq 'encode' && ok "tokenizer --help" || bad "tokenizer --help"
for c in encode decode train info; do
  "$LOOM" tokenizer $c --help | grepq "usage: loom tokenizer $c" && ok "help $c" || bad "help $c"
done
"$LOOM" tokenizer > /dev/null 2>&1; [[ $? -eq 2 ]] && ok "no command: exit 2" || bad "no command"
"$LOOM" tokenizer frobnicate > /dev/null 2>&1; [[ $? -eq 2 ]] && ok "unknown command: exit 2" || bad "unknown command"
"$LOOM" tokenizer encode --bogus > /dev/null 2>&1; [[ $? -eq 2 ]] && ok "unknown option: exit 2" || bad "unknown option"

# --- byte ---
[[ $(printf 'hi\xff' | "$LOOM" tokenizer encode --tokenizer byte) == "104 105 255" ]] && ok "byte encode" || bad "byte encode"
printf '\x00\x01 \xfe\xff' > "$W/b"
"$LOOM" tokenizer encode --tokenizer byte < "$W/b" | "$LOOM" tokenizer decode --tokenizer byte | cmp -s - "$W/b" \
  && ok "byte round trip" || bad "byte round trip"
[[ $(printf '' | "$LOOM" tokenizer encode --tokenizer byte) == "" ]] && ok "empty input: an empty line" || bad "empty input"

# one-line error: exit 1, one line on stderr, containing $2
one_line_error() { # what, pattern, command...
  local what=$1 pat=$2
  shift 2
  "$@" > /dev/null 2> "$W/err" < /dev/null
  local rc=$?
  if [[ $rc -eq 1 && $(wc -l < "$W/err") -eq 1 ]] && grep -q -- "$pat" "$W/err"; then ok "$what: $(cat "$W/err")"
  else bad "$what (exit $rc): $(cat "$W/err")"; fi
}
echo "12 abc" > "$W/ids"
one_line_error "decode of a non-number" "found 'a'" "$LOOM" tokenizer decode --tokenizer byte --input "$W/ids"
echo "12 256" > "$W/ids"
one_line_error "decode of an id outside the vocabulary" "token id 256" "$LOOM" tokenizer decode --tokenizer byte --input "$W/ids"
one_line_error "unknown tokenizer" "no-such-tokenizer" "$LOOM" tokenizer encode --tokenizer no-such-tokenizer

# --- training: a corpus (tinyshakespeare if it is there) ---
if [[ -n "$TS" && -f "$TS" ]]; then corpus=$TS; else
  skip "tinyshakespeare not found at ${TS:-(not given)}: training on a generated corpus"
  corpus=$W/corpus.txt
  for i in $(seq 1 3000); do echo "Line $i: the quick brown fox's $((i * 7)) jumps, over the lazy dog; naïve café."; done > "$corpus"
fi
start=$(date +%s.%N)
"$LOOM" tokenizer train "$corpus" --vocab-size 1024 --out "$W/bpe.tok" > "$W/train.out" && ok "train bpe: $(cat "$W/train.out")" \
  || bad "train bpe"
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b - a}')
awk -v s="$secs" 'BEGIN{exit !(s < 10)}' && ok "bpe 1024 trained in $secs s" || bad "bpe training took $secs s"
"$LOOM" tokenizer info --tokenizer "$W/bpe.tok" | grepq -x 'vocab_size 1024' && ok "info: vocab 1024" || bad "info vocab"
"$LOOM" tokenizer encode --tokenizer "$W/bpe.tok" < "$corpus" > "$W/ids" && \
  "$LOOM" tokenizer decode --tokenizer "$W/bpe.tok" < "$W/ids" | cmp -s - "$corpus" && ok "bpe round trip of the corpus" \
  || bad "bpe round trip"
[[ $(tr ' ' '\n' < "$W/ids" | wc -l) -lt $(wc -c < "$corpus") ]] && ok "bpe: fewer ids than bytes" || bad "bpe compression"
[[ $(printf 'a<|endoftext|>b' | "$LOOM" tokenizer encode --tokenizer "$W/bpe.tok" | wc -w) -eq 3 ]] \
  && ok "bpe: <|endoftext|> is one id" || bad "bpe special"
[[ $(printf 'a<|endoftext|>b' | "$LOOM" tokenizer encode --tokenizer "$W/bpe.tok" --no-special | wc -w) -gt 3 ]] \
  && ok "bpe --no-special: as text" || bad "bpe --no-special"
# longer than one 16 MiB read: streamed in pieces, still exact
for i in $(seq 1 $((20000000 / $(wc -c < "$corpus") + 1))); do cat "$corpus"; done > "$W/big"
"$LOOM" tokenizer encode --tokenizer "$W/bpe.tok" --stats < "$W/big" 2> "$W/stats" > "$W/bigids" && \
  "$LOOM" tokenizer decode --tokenizer "$W/bpe.tok" < "$W/bigids" | cmp -s - "$W/big" \
  && ok "$(wc -c < "$W/big")-byte input streamed, round trip exact ($(cat "$W/stats"))" || bad "big input"

if [[ "$corpus" == "$TS" ]]; then
  "$LOOM" tokenizer train "$TS" --kind char --out "$W/char.tok" > /dev/null && \
    "$LOOM" tokenizer info --tokenizer "$W/char.tok" | grepq -x 'vocab_size 65' && ok "char tokenizer of tinyshakespeare: 65 ids" \
    || bad "char tokenizer: $("$LOOM" tokenizer info --tokenizer "$W/char.tok" | grep vocab)"
  [[ $(printf 'hii there' | "$LOOM" tokenizer encode --tokenizer "$W/char.tok") == "46 47 47 1 58 46 43 56 43" ]] \
    && ok "char ids as nanoGPT's shakespeare_char" || bad "char ids"
  "$LOOM" tokenizer encode --tokenizer "$W/char.tok" < "$TS" | "$LOOM" tokenizer decode --tokenizer "$W/char.tok" | cmp -s - "$TS" \
    && ok "char round trip" || bad "char round trip"
  one_line_error "char: a character outside the vocabulary" "U+00E9" sh -c "printf 'caf\303\251' | '$LOOM' tokenizer encode --tokenizer '$W/char.tok'"
else
  skip "char tokenizer on tinyshakespeare (65 ids): ${TS:-tinyshakespeare} not found"
fi

# --- bad tokenizer files ---
head -c 30 "$W/bpe.tok" > "$W/trunc.tok"
one_line_error "truncated file" "truncated" "$LOOM" tokenizer encode --tokenizer "$W/trunc.tok"
head -c $(($(wc -c < "$W/bpe.tok") - 5)) "$W/bpe.tok" > "$W/trunc2.tok"
one_line_error "truncated payload" "truncated" "$LOOM" tokenizer encode --tokenizer "$W/trunc2.tok"
{ printf 'NOTATOKN'; tail -c +9 "$W/bpe.tok"; } > "$W/magic.tok"
one_line_error "wrong magic" "not a loom tokenizer file" "$LOOM" tokenizer encode --tokenizer "$W/magic.tok"
cp "$W/bpe.tok" "$W/crc.tok"
printf '\x7f' | dd of="$W/crc.tok" bs=1 seek=100 conv=notrunc 2> /dev/null
one_line_error "bad checksum" "checksum mismatch" "$LOOM" tokenizer encode --tokenizer "$W/crc.tok"
echo '{"a": 1,' > "$W/encoder.json"
mkdir -p "$W/g2" && cp "$W/encoder.json" "$W/g2/"
touch "$W/g2/vocab.bpe"
one_line_error "malformed encoder.json" "encoder.json: line 2 col 1" "$LOOM" tokenizer encode --tokenizer "$W/g2"
mkdir -p "$W/g3" && cp "$W/encoder.json" "$W/g3/"
one_line_error "missing vocab.bpe" "vocab.bpe: cannot open" "$LOOM" tokenizer encode --tokenizer "$W/g3"

# --- GPT-2, when its files are installed ---
if "$LOOM" tokenizer info --tokenizer gpt2 > "$W/info" 2> /dev/null; then
  [[ $(printf 'Hello world\n' | "$LOOM" tokenizer encode) == "15496 995 198" ]] && ok "gpt2: Hello world" || bad "gpt2 encode"
  [[ $(printf '<|endoftext|>' | "$LOOM" tokenizer encode) == "50256" ]] && ok "gpt2: <|endoftext|> is 50256" || bad "gpt2 eot"
  [[ $(printf '<|endoftext|>' | "$LOOM" tokenizer encode --no-special) == "27 91 437 1659 5239 91 29" ]] \
    && ok "gpt2 --no-special: as the JavaScript encoder" || bad "gpt2 --no-special"
  grep -qx 'vocab_size 50257' "$W/info" && grep -qx 'eot 50256' "$W/info" && ok "gpt2 info" || bad "gpt2 info"
  printf 'caf\xc3\xa9 \xff\xfe\xc3 ok' > "$W/inv"
  "$LOOM" tokenizer encode < "$W/inv" | "$LOOM" tokenizer decode | cmp -s - "$W/inv" && ok "gpt2: invalid UTF-8 round trip" \
    || bad "gpt2 invalid UTF-8"
  mkdir -p "$W/g4"
  gdir=$(dirname "$LOOM")/share/gpt2
  [[ -f "$gdir/encoder.json" ]] || gdir=${LOOM_GPT2_DIR:-}
  if [[ -f "$gdir/encoder.json" ]]; then
    cp "$gdir/encoder.json" "$W/g4/" && { head -5 "$gdir/vocab.bpe"; echo "Ġ t h"; } > "$W/g4/vocab.bpe"
    one_line_error "malformed vocab.bpe" "vocab.bpe line 6: expected two tokens" "$LOOM" tokenizer encode --tokenizer "$W/g4"
  fi
else
  skip "gpt2 parts: GPT-2 files not installed (scripts/fetch_gpt2_tokenizer.sh build/share/gpt2)"
fi
echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
