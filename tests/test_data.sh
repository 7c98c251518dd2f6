#!/usr/bin/env bash
# `loom data prepare` end to end, on a corpus made here: shards decode back to the input exactly (byte, char,
# and gpt2 when its files are found), the train/val split is positional, chunked and parallel preparation
# gives the same shards as one chunk on one thread, rank shares are disjoint and make up the single-process
# batch, `loom train --data DIR` trains on a dataset, and damaged datasets fail with a clear one-line error.
set -uo pipefail
# grep -q exits at the first match; under pipefail the writer then dies of SIGPIPE
# and the pipeline fails at random, so read all input and drop it instead.
grepq() { grep "$@" >/dev/null; }
LOOM=${1:?usage: test_data.sh LOOM_BINARY TEST_DATA_BINARY [BUILD_DIR]}
TD=${2:?usage: test_data.sh LOOM_BINARY TEST_DATA_BINARY [BUILD_DIR]}
BUILD=${3:-}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
# check NAME -- command...: succeeds
check() {
  local name=$1; shift 2
  if "$@" > "$W/check.out" 2>&1; then ok "$name"; else bad "$name"; cat "$W/check.out"; fi
}
# expect_error NAME PATTERN -- command...: non-zero exit, exactly one stderr line (log lines aside) matching PATTERN
expect_error() {
  local name=$1 pattern=$2; shift 3
  "$@" > "$W/out" 2> "$W/err"
  local rc=$? lines
  lines=$(grep -v '^\[loom' "$W/err" | wc -l)
  if [[ $rc -ne 0 && $lines -eq 1 ]] && grep -v '^\[loom' "$W/err" | grepq -iE -e "$pattern"; then
    ok "$name: $(grep -v '^\[loom' "$W/err")"
  else
    bad "$name (exit $rc, $lines error lines, expected /$pattern/):"; cat "$W/err"
  fi
}
# poke FILE OFFSET BYTE: overwrite one byte (decimal value)
poke() { printf "$(printf '\\%03o' "$3")" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
peek() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
flip() { poke "$1" "$2" $(( $(peek "$1" "$2") ^ 1 )); }

# ---- the corpus: nested directories, Unicode, invalid UTF-8, CRLF, whitespace runs; plus files to skip
C="$W/corpus"
mkdir -p "$C/b/c" "$C/.git"
printf "Hello, world. It's a test: we've 3 files, they'll see.\n\nTwo  spaces,   three, tabs\there.  \n \n  \nend" > "$C/a.txt"
printf 'caf\xc3\xa9 \xe2\x82\xac5 \xf0\x9f\x98\x80 emoji, nbsp:\xc2\xa0x ideographic:\xe3\x80\x80y\r\ncrlf\r\n' > "$C/b/c/d.txt"
printf 'invalid \xff\xfe bytes, a lone lead \xc3( and a cut \xe2\x82 sequence\n' >> "$C/b/c/d.txt"
# a longer document: many lines, many safe and unsafe cut points
awk 'BEGIN { srand(7); w[0]="the"; w[1]="Loom"; w[2]="weaves"; w[3]="  "; w[4]="42"; w[5]="don'"'"'t"; w[6]="\n";
  w[7]="tokens,"; w[8]="\t"; w[9]="x\n\n"; w[10]="  \n"; w[11]="(ok)";
  for (i = 0; i < 30000; i++) { printf "%s", w[int(rand() * 12)]; if (rand() < 0.7) printf " " } }' > "$C/b/e.txt"
printf 'binary\0file' > "$C/b/skip.dat"   # NUL in the first 4 KiB: skipped
: > "$C/empty.txt"                         # empty: skipped
printf 'hidden\n' > "$C/.git/HEAD"          # dot-entries: skipped
ln -s a.txt "$C/link.txt"                  # symbolic links inside a directory: skipped
DOCS=("$C/a.txt" "$C/b/c/d.txt" "$C/b/e.txt") # path order (strcmp)
cat "${DOCS[@]}" > "$W/expect_plain.txt"

decode_all() { "$LOOM" data decode "$1" && "$LOOM" data decode "$1" --split val; }

for tok in byte char; do
  D="$W/ds_$tok"
  check "$tok: prepare" -- "$LOOM" -q data prepare "$C" --out "$D" --tokenizer "$tok" --val-fraction 0.2
  decode_all "$D" > "$W/dec_$tok.txt"
  check "$tok: shards decode to the input exactly" -- cmp "$W/dec_$tok.txt" "$W/expect_plain.txt"
  check "$tok: split is positional (floor(n * 0.8) train tokens)" -- "$TD" split "$D" 0.2
  # chunked and parallel == one chunk on one thread, file for file (shards, manifest, tokenizer file)
  "$LOOM" -q data prepare "$C" --out "$W/one_$tok" --tokenizer "$tok" --val-fraction 0.2 --shard-tokens 3000 \
    --threads 1 --chunk-bytes 1073741824 > /dev/null
  "$LOOM" -q data prepare "$C" --out "$W/many_$tok" --tokenizer "$tok" --val-fraction 0.2 --shard-tokens 3000 \
    --threads 3 --chunk-bytes 16 > /dev/null
  check "$tok: chunked (16 B) on 3 threads == one chunk on 1 thread, byte for byte" -- \
    diff -r "$W/one_$tok" "$W/many_$tok"
  check "$tok: small shards hold the same token stream" -- \
    cmp <("$TD" tokens "$D") <("$TD" tokens "$W/many_$tok")
  check "$tok: 4 rank shares make up the single-process batch" -- "$TD" ranks "$W/many_$tok" 4 2 16 20
  check "$tok: loom train --data DIR" -- "$LOOM" -q train --preset demo --data "$D" --steps 3 --batch 2 --seq-len 16 \
    --threads 2 --peak-gflops 1 --out "$W/run_$tok"
  [[ $(grep -c '"loss"' "$W/run_$tok/metrics.jsonl" 2>/dev/null) -eq 3 ]] && ok "$tok: 3 training steps logged" ||
    bad "$tok: expected 3 loss lines in $W/run_$tok/metrics.jsonl"
done

# ---- resume on a dataset is exact (the sampler state in the checkpoint covers shard datasets too)
losses() { grep -o '"step":[0-9]*,"loss":[^,]*' "$1"; }
rs=(--preset demo --data "$W/many_char" --steps 6 --batch 2 --seq-len 16 --threads 2 --peak-gflops 1 --eval-interval 3)
"$LOOM" -q train "${rs[@]}" --out "$W/rs_a" > /dev/null
"$LOOM" -q train "${rs[@]}" --out "$W/rs_b" --stop-after 3 > /dev/null
"$LOOM" -q train "${rs[@]}" --out "$W/rs_b" --resume > /dev/null
check "resume on a sharded dataset: same losses as the uninterrupted run" -- \
  diff <(losses "$W/rs_a/metrics.jsonl") <(losses "$W/rs_b/metrics.jsonl")
check "resume on a sharded dataset: same final checkpoint" -- cmp "$W/rs_a/checkpoint.bin" "$W/rs_b/checkpoint.bin"

# ---- one file, nanoGPT's split: the first 90% of the characters train, the last 10% validation
S="$W/single.txt"
{ for i in $(seq 1 300); do printf 'First Citizen %d:\nBefore we proceed any further, hear me speak. \xc3\xa9\n\n' "$i"; done; } > "$S"
for tok in byte char; do
  D="$W/single_$tok"
  "$LOOM" -q data prepare "$S" --out "$D" --tokenizer "$tok" > /dev/null
  check "$tok single file: floor(0.9 n) train tokens" -- "$TD" split "$D" 0.1
  decode_all "$D" > "$W/single_dec.txt"
  check "$tok single file: decodes to the file" -- cmp "$W/single_dec.txt" "$S"
done
check "byte dataset draws the batches the text loader draws from the same file" -- \
  "$TD" same "$S" "$W/single_byte" 4 32 20
# the tokenizer stored in the dataset is a loom tokenizer file that encodes the text to the dataset's tokens
same_as_encode() { # DATASET TOKENIZER FILE...: `loom tokenizer encode` of each file, joined by EOT ($EOT, if set)
  local ds=$1 tok=$2; shift 2
  local f first=1
  for f in "$@"; do
    [[ $first -eq 1 ]] || { [[ -n "${EOT:-}" ]] && echo "$EOT"; }
    first=0
    "$LOOM" tokenizer encode --tokenizer "$tok" < "$f" | tr ' ' '\n' | grep . || return 1
  done > "$W/encoded.txt"
  "$TD" tokens "$ds" | cmp - "$W/encoded.txt"
}
check "char: DIR/tokenizer.char encodes the file to the dataset's tokens" -- \
  same_as_encode "$W/single_char" "$W/single_char/tokenizer.char" "$S"
check "char: directory corpus, same" -- same_as_encode "$W/ds_char" "$W/ds_char/tokenizer.char" "${DOCS[@]}"

# ---- preparing again into the same directory replaces the dataset (old shards removed)
"$LOOM" -q data prepare "$C" --out "$W/again" --tokenizer byte --shard-tokens 1000 > /dev/null
"$LOOM" -q data prepare "$S" --out "$W/again" --tokenizer byte > /dev/null
check "re-prepare: only the new shards remain" -- test "$(ls "$W/again" | tr '\n' ' ')" = "dataset.json train_000000.bin val_000000.bin "
check "re-prepare: the new dataset verifies" -- "$LOOM" data info "$W/again"

# ---- damaged datasets: one clear line, for `data info` and `train`
G="$W/many_byte"
damage() { rm -rf "$W/bad"; cp -r "$G" "$W/bad"; }
SH="$W/bad/train_000001.bin"
damage; truncate -s -1 "$SH"
expect_error "truncated shard" "train_000001.bin.*(truncated|header says)" -- "$LOOM" data info "$W/bad"
expect_error "truncated shard (train)" "train_000001.bin.*truncated" -- "$LOOM" -q train --preset demo --data "$W/bad" \
  --steps 1 --batch 2 --seq-len 16 --threads 2 --peak-gflops 1 --out "$W/run_bad"
damage; truncate -s 10 "$SH"
expect_error "shard shorter than its header" "shorter than the 64-byte header" -- "$LOOM" data info "$W/bad"
damage; flip "$SH" 1000
expect_error "flipped token byte" "train_000001.bin.*checksum mismatch" -- "$LOOM" data info "$W/bad"
damage; poke "$SH" 24 $(( ($(peek "$SH" 24) + 1) % 256 ))
expect_error "header count lying" "train_000001.bin: header says [0-9]+ tokens" -- "$LOOM" data info "$W/bad"
damage; flip "$SH" 44
expect_error "flipped header byte" "header checksum mismatch" -- "$LOOM" data info "$W/bad"
damage; poke "$SH" 0 88
expect_error "bad magic" "not a loom token shard" -- "$LOOM" data info "$W/bad"
damage; rm "$SH"
expect_error "missing shard" "cannot open shard.*train_000001.bin" -- "$LOOM" data info "$W/bad"
damage; cp "$W/bad/train_000002.bin" "$SH"
expect_error "shards swapped" "disagrees with dataset.json" -- "$LOOM" data info "$W/bad"
damage; sed -i 's/"tokens": 3000, "first_token": 3000/"tokens": 2999, "first_token": 3000/' "$W/bad/dataset.json"
expect_error "manifest count lying" "dataset.json: .*(tile|add up)" -- "$LOOM" data info "$W/bad"
damage; sed -i 's/"file": "train_000001.bin"/"file": "..\/train_000001.bin"/' "$W/bad/dataset.json"
expect_error "manifest path escaping the directory" "plain file name" -- "$LOOM" data info "$W/bad"
damage; printf '{"format": "loom.dataset",' > "$W/bad/dataset.json"
expect_error "malformed manifest" "dataset.json: line 1" -- "$LOOM" data info "$W/bad"
expect_error "model vocabulary smaller than the dataset's" "vocabulary of 256.*model.vocab_size 100" -- \
  "$LOOM" -q train --preset demo --set model.vocab_size=100 --data "$G" --steps 1 --batch 2 --seq-len 16 --threads 2 \
  --peak-gflops 1 --out "$W/run_bad"

# ---- command-line mistakes
expect_error "missing input" "input .*nope.*No such file" -- "$LOOM" data prepare "$W/nope" --out "$W/x"
expect_error "no --out" "--out DIR is required" -- "$LOOM" data prepare "$C"
expect_error "bad val fraction" "val-fraction" -- "$LOOM" data prepare "$C" --out "$W/x" --val-fraction 1
expect_error "unknown option" "unknown option --shards" -- "$LOOM" data prepare "$C" --out "$W/x" --shards 3
expect_error "unknown tokenizer file" "nope.json" -- "$LOOM" -q data prepare "$C" --out "$W/x" --tokenizer "$W/nope.json"
mkdir -p "$W/bin_only" && printf 'a\0b' > "$W/bin_only/x.bin"
expect_error "no text in the inputs" "no text files" -- "$LOOM" -q data prepare "$W/bin_only" --out "$W/x"

# ---- GPT-2 BPE, when its files are here
GPT2=""
for d in "${LOOM_GPT2_DIR:-}" "${BUILD:+$BUILD/share/gpt2}"; do
  [[ -n "$d" && -f "$d/encoder.json" && -f "$d/vocab.bpe" ]] && { GPT2=$d; break; }
done
if [[ -z "$GPT2" ]]; then
  echo "skip gpt2: no encoder.json + vocab.bpe in \$LOOM_GPT2_DIR or ${BUILD:-<build>}/share/gpt2 (scripts/fetch_gpt2_tokenizer.sh)"
else
  export LOOM_GPT2_DIR=$GPT2
  D="$W/ds_gpt2"
  check "gpt2: prepare" -- "$LOOM" -q data prepare "$C" --out "$D" --tokenizer gpt2 --val-fraction 0.2
  { cat "$C/a.txt"; printf '<|endoftext|>'; cat "$C/b/c/d.txt"; printf '<|endoftext|>'; cat "$C/b/e.txt"; } > "$W/expect_eot.txt"
  decode_all "$D" > "$W/dec_gpt2.txt"
  check "gpt2: shards decode to the documents joined by <|endoftext|>" -- cmp "$W/dec_gpt2.txt" "$W/expect_eot.txt"
  check "gpt2: split is positional" -- "$TD" split "$D" 0.2
  "$LOOM" -q data prepare "$C" --out "$W/one_gpt2" --tokenizer gpt2 --shard-tokens 2000 --threads 1 \
    --chunk-bytes 1073741824 > /dev/null
  "$LOOM" -q data prepare "$C" --out "$W/many_gpt2" --tokenizer gpt2 --shard-tokens 2000 --threads 3 \
    --chunk-bytes 16 > /dev/null
  check "gpt2: chunked (16 B) on 3 threads == whole files on 1 thread, byte for byte" -- \
    diff -r "$W/one_gpt2" "$W/many_gpt2"
  EOT=50256 check "gpt2: each document tokenizes as the whole file does, documents joined by 50256" -- \
    same_as_encode "$D" gpt2 "${DOCS[@]}"
  check "gpt2: loom train --data DIR" -- "$LOOM" -q train --preset demo --set model.vocab_size=50304 --data "$D" \
    --steps 2 --batch 2 --seq-len 16 --threads 2 --peak-gflops 1 --out "$W/run_gpt2"
fi

echo "data_prepare: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
