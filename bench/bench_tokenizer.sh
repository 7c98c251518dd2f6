#!/usr/bin/env bash
# Encode speed of loom's GPT-2 tokenizer against the JavaScript encoder (npm gpt-3-encoder, the reference
# loom equals token for token), side by side on one file. Prints; asserts nothing.
#   bench/bench_tokenizer.sh [FILE] [RUNS]        FILE default ../shared/data/tinyshakespeare.txt, RUNS 5
#   LOOM=build/loom  JS_WHOLE=1 (also time one whole-file JavaScript call; see below)
# Runs alternate (JavaScript, loom, JavaScript, ...), each in a fresh process with a cold word cache, and
# the medians are compared:
#   encode  MB/s of the encoding alone, timed inside each process (loom: `encode --stats`; JavaScript:
#           around its encode calls), file already in memory, tokenizer already loaded;
#   total   MB/s of the whole process as a user runs it (start, load the tokenizer, read, encode, write ids).
# The JavaScript encoder appends each pre-token's ids with Array.concat, which is quadratic in the output
# (one call on all of tinyshakespeare takes about 6 minutes), so it is timed on the file in pieces of about
# 2,000 characters cut where its regex ends a match anyway (after a "\n" with non-space on both sides: the
# ids are the same as for the whole, tests/test_tokenizer.js checks it): its linear best case, the
# conservative comparison. JS_WHOLE=1 adds one whole-file call, as a user calling encode(text) would.
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${1:-../shared/data/tinyshakespeare.txt}
RUNS=${2:-5}
LOOM=${LOOM:-build/loom}
[[ -f "$FILE" ]] || { echo "bench_tokenizer: $FILE not found" >&2; exit 1; }
[[ -x "$LOOM" ]] || { echo "bench_tokenizer: $LOOM not built (cmake --build build)" >&2; exit 1; }
command -v node > /dev/null || { echo "bench_tokenizer: node not found (the JavaScript reference needs it)" >&2; exit 1; }
dir=
for c in ${LOOM_GPT2_DIR:-} "$(dirname "$LOOM")/share/gpt2" "${HOME:-}/.cache/loom/gpt2" /usr/local/share/loom/gpt2; do
  [[ -f "$c/encoder.json" && -f "$c/Encoder.js" ]] && { dir=$c; break; }
done
[[ -n "$dir" ]] || { echo "bench_tokenizer: GPT-2 files + Encoder.js not found: scripts/fetch_gpt2_tokenizer.sh build/share/gpt2" >&2; exit 1; }
export LOOM_GPT2_DIR=$dir
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat > "$W/js.js" <<'JS'
const t0 = process.hrtime.bigint();
const { encode } = require(process.argv[2]);
const fs = require('fs');
const raw = fs.readFileSync(process.argv[3]);
const text = raw.toString('utf8');
const whole = process.argv[4] === 'whole';
const pieces = [];
if (whole) pieces.push(text);
else {
  let s = 0;
  for (let i = 1; i + 1 < text.length; i++)
    if (text[i] === '\n' && !/\s/u.test(text[i - 1]) && !/\s/u.test(text[i + 1]) && i + 1 - s >= 2000) {
      pieces.push(text.slice(s, i + 1));
      s = i + 1;
    }
  pieces.push(text.slice(s));
}
const t1 = process.hrtime.bigint();
const out = [];
for (const p of pieces) for (const id of encode(p)) out.push(id);
const t2 = process.hrtime.bigint();
process.stdout.write(out.join(' ') + '\n');
const enc = Number(t2 - t1) / 1e9;
console.error(`js_encode_s=${enc} js_load_s=${Number(t1 - t0) / 1e9} tokens=${out.length}`);
JS
bytes=$(wc -c < "$FILE")
now() { date +%s%N; }
median() { sort -g | awk '{a[NR]=$1} END{if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
echo "file $FILE ($bytes bytes); loom $LOOM; JavaScript encoder $dir/Encoder.js (node $(node --version))"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
printf '%-4s %14s %14s %14s %14s\n' run js_encode loom_encode js_total loom_total
: > "$W/je"; : > "$W/le"; : > "$W/jt"; : > "$W/lt"
for r in $(seq 1 "$RUNS"); do
  a=$(now); node "$W/js.js" "$(cd "$dir" && pwd)/Encoder.js" "$FILE" > "$W/js.ids" 2> "$W/js.err"; b=$(now)
  js_enc=$(grep -o 'js_encode_s=[0-9.e-]*' "$W/js.err" | cut -d= -f2)
  c=$(now); "$LOOM" tokenizer encode --stats --input "$FILE" > "$W/loom.ids" 2> "$W/loom.err"; d=$(now)
  loom_enc=$(grep -o 'tokens in [0-9.]* s' "$W/loom.err" | awk '{print $3}')
  je=$(awk -v b="$bytes" -v s="$js_enc" 'BEGIN{printf "%.3f", b/1e6/s}')
  le=$(awk -v b="$bytes" -v s="$loom_enc" 'BEGIN{printf "%.3f", b/1e6/s}')
  jt=$(awk -v b="$bytes" -v n="$((b - a))" 'BEGIN{printf "%.3f", b/1e6/(n/1e9)}')
  lt=$(awk -v b="$bytes" -v n="$((d - c))" 'BEGIN{printf "%.3f", b/1e6/(n/1e9)}')
  echo "$je" >> "$W/je"; echo "$le" >> "$W/le"; echo "$jt" >> "$W/jt"; echo "$lt" >> "$W/lt"
  printf '%-4s %10s MB/s %10s MB/s %10s MB/s %10s MB/s\n' "$r" "$je" "$le" "$jt" "$lt"
done
if cmp -s "$W/js.ids" "$W/loom.ids"; then same="identical ids"; else same="THE IDS DIFFER"; fi
mje=$(median < "$W/je"); mle=$(median < "$W/le"); mjt=$(median < "$W/jt"); mlt=$(median < "$W/lt")
echo "median encode: JavaScript $mje MB/s, loom $mle MB/s: loom/JavaScript = $(awk -v a="$mle" -v b="$mje" 'BEGIN{printf "%.1f", a/b}')x"
echo "median total:  JavaScript $mjt MB/s, loom $mlt MB/s: loom/JavaScript = $(awk -v a="$mlt" -v b="$mjt" 'BEGIN{printf "%.1f", a/b}')x"
echo "outputs: $same ($(wc -w < "$W/loom.ids") tokens)"
if [[ "${JS_WHOLE:-0}" == 1 ]]; then
  a=$(now); node "$W/js.js" "$(cd "$dir" && pwd)/Encoder.js" "$FILE" whole > /dev/null 2> "$W/js.err"; b=$(now)
  js_enc=$(grep -o 'js_encode_s=[0-9.e-]*' "$W/js.err" | cut -d= -f2)
  echo "JavaScript, one encode(text) call on the whole file: $(awk -v b="$bytes" -v s="$js_enc" 'BEGIN{printf "%.3f", b/1e6/s}') MB/s" \
       "(loom/JavaScript = $(awk -v a="$mle" -v b="$bytes" -v s="$js_enc" 'BEGIN{printf "%.0f", a/(b/1e6/s)}')x)"
fi
