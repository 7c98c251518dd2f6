#!/usr/bin/env bash
# Issue 3, "a published result reproduced": nanoGPT's README CPU recipe for character-level Tiny Shakespeare
# (4 layers, 4 heads, width 128, context 64, batch 12, 2,000 iterations, lr 1e-3 -> 1e-4 cosine over 2,000 with 100
# warm-up, AdamW beta2 0.99, weight decay 0.1, clip 1.0, no dropout, 90/10 split; README: val loss ~1.88), trained
# by loom and by a PyTorch implementation of the same recipe (bench/torch_nanogpt_char.py, in the tuned environment
# of shared PERFORMANCE.md via bench/peer_env.sh), side by side, alternating, per seed, 2 threads each.
#
# Usage: scripts/reproduce_nanogpt.sh [SEEDS...]        (default seeds: 1 2 3)
# Environment: OUT (default runs/nanogpt; everything is written under it), LOOM (default build/loom),
#   DATA (default ../shared/data/tinyshakespeare.txt), PYTHON (default /usr/bin/python3, which has torch),
#   THREADS (default 2), STEPS (default 2000; the recipe is 2000, fewer only for a quick trial).
# Prints a table (seed, loom val_loss, loom wall s, torch val_loss, torch wall s), the means, the wall-time ratio
# and PASS/FAIL lines for the two bars (loom mean val_loss <= 1.88; loom mean wall < torch mean wall); draws the
# loom loss curves ($OUT/loss.png) and writes a generated sample ($OUT/sample.txt).
# Wall time = the whole command (process start to exit: for torch, interpreter start, import, data and all nine
# evaluations; for loom, data loading, training, its eight evaluations and the checkpoint), measured here.
# Exits non-zero only when a run fails (a missed bar prints FAIL but is not an error of this script).
set -uo pipefail
cd "$(dirname "$0")/.."

SEEDS=("$@")
[ ${#SEEDS[@]} -eq 0 ] && SEEDS=(1 2 3)
OUT="${OUT:-runs/nanogpt}"
W="$OUT"
LOOM="${LOOM:-build/loom}"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
PYTHON="${PYTHON:-/usr/bin/python3}"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-2000}"
BAR_LOSS=1.88

die() { echo "reproduce_nanogpt: error: $*" >&2; exit 1; }
warn() { echo "reproduce_nanogpt: warning: $*" >&2; }
now() { date +%s.%N; }
# the share of all cores busy over the next second (from /proc/stat), in percent: what is running besides us. The
# load average cannot tell: it decays over minutes, so right after one of our own runs it still reads ~2 here.
cpu_ticks() { awk '/^cpu /{ print $2+$3+$4+$7+$8+$9, $5+$6 }' /proc/stat; } # busy, idle (+ iowait)
busy_pct() {
    local a b
    a=$(cpu_ticks)
    sleep 1
    b=$(cpu_ticks)
    echo "$a $b" | awk '{ t = ($3 - $1) + ($4 - $2); printf "%.0f", (t > 0 ? 100 * ($3 - $1) / t : 0) }'
}
check_idle() { # $1: what is about to run
    local b
    b=$(busy_pct)
    [ "$b" -gt 25 ] && warn "the cores were ${b}% busy before $1: other work is running, times are not clean"
    return 0
}
# the last "val_loss" of a metrics log (loom's {"step":N,"val_loss":X} or the peer's {"step": N, "val_loss": X, ...})
last_val_loss() {
    grep '"val_loss"' "$1" 2>/dev/null | tail -n 1 | sed -E 's/.*"val_loss"[[:space:]]*:[[:space:]]*([^,}[:space:]]+).*/\1/'
}
# runs "$@" with stdout+stderr to $1's log; sets RUN_WALL (s), RUN_RSS (MiB or "?"), returns the command's status
timed() {
    local log="$1"; shift
    local t0 t1 rc rssf="$log.rss"
    rm -f "$rssf"
    t0=$(now)
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f '%M' -o "$rssf" "$@" > "$log" 2>&1
    else
        "$@" > "$log" 2>&1
    fi
    rc=$?
    t1=$(now)
    RUN_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    RUN_RSS="?"
    if [ -s "$rssf" ]; then
        RUN_RSS=$(tail -n 1 "$rssf" | awk '$1 ~ /^[0-9]+$/ { printf "%.0f", $1 / 1024; ok = 1 } END { if (!ok) printf "?" }')
    fi
    return $rc
}

[ -x "$LOOM" ] || die "$LOOM not found: build loom first (scripts/setup.sh)"
[ -f "$DATA" ] || die "$DATA not found (the Tiny Shakespeare text)"
"$PYTHON" -c 'import torch' 2> /dev/null || die "$PYTHON cannot import torch (scripts/setup.sh --test installs it)"
mkdir -p "$W" || die "cannot create $W"

echo "nanoGPT shakespeare-char CPU recipe: loom vs PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__)') (tuned env), seeds ${SEEDS[*]}, $THREADS threads, $STEPS steps; outputs in $OUT"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); cores $(busy_pct)% busy now"

# (0) the character-level dataset, once: 65-symbol vocabulary, the last 10% of the file for validation
echo "preparing $W/shakespeare_char ..."
if ! "$LOOM" data prepare "$DATA" --tokenizer char --val-fraction 0.1 --out "$W/shakespeare_char" > "$W/prepare.log" 2>&1; then
    cat "$W/prepare.log" >&2
    die "'$LOOM data prepare $DATA --tokenizer char --val-fraction 0.1 --out $W/shakespeare_char' failed"
fi

failed=0
rows=()
for s in "${SEEDS[@]}"; do
    # (a) loom
    check_idle "loom seed $s"
    rm -rf "$W/loom-$s"
    echo "seed $s: loom train ..."
    if timed "$W/loom-$s.log" "$LOOM" -q train --preset nanogpt-char --data "$W/shakespeare_char" --seed "$s" \
        --threads "$THREADS" --steps "$STEPS" --batch 12 --seq-len 64 --out "$W/loom-$s" \
        --set optim.lr=1e-3 --set optim.min_lr=1e-4 --set optim.warmup_steps=100 --set optim.decay_steps="$STEPS" \
        --set optim.beta2=0.99 --set optim.weight_decay=0.1 --set optim.grad_clip=1.0 \
        --set train.eval_interval=250 --set train.eval_batches=20; then
        lw=$RUN_WALL lrss=$RUN_RSS
        lv=$(last_val_loss "$W/loom-$s/metrics.jsonl")
        [ -n "$lv" ] || { warn "no val_loss in $W/loom-$s/metrics.jsonl"; lv=nan; failed=1; }
    else
        warn "loom seed $s failed (exit $?); its log, $W/loom-$s.log, ends:"
        tail -n 20 "$W/loom-$s.log" >&2
        lw=nan lv=nan lrss=? failed=1
    fi
    echo "seed $s: loom val_loss $lv, wall ${lw} s, peak RSS ${lrss} MiB"

    # (b) PyTorch, the same seed
    check_idle "torch seed $s"
    rm -rf "$W/torch-$s"
    echo "seed $s: torch (bench/torch_nanogpt_char.py) ..."
    if timed "$W/torch-$s.log" bench/peer_env.sh "$PYTHON" bench/torch_nanogpt_char.py --data "$DATA" --seed "$s" \
        --threads "$THREADS" --max-iters "$STEPS" --eval-interval 250 --eval-iters 20 \
        --metrics "$W/torch-$s.metrics.jsonl" --out "$W/torch-$s" --quiet; then
        tw=$RUN_WALL trss=$RUN_RSS
        tv=$(last_val_loss "$W/torch-$s.metrics.jsonl")
        [ -n "$tv" ] || { warn "no val_loss in $W/torch-$s.metrics.jsonl"; tv=nan; failed=1; }
        tin=$(grep '"summary"' "$W/torch-$s.log" | tail -n 1 | sed -E 's/.*"wall_s"[[:space:]]*:[[:space:]]*([0-9.]+).*/\1/')
        grep -q '"tuned_env": false' "$W/torch-$s.log" && warn "torch seed $s did not run in the tuned environment"
    else
        warn "torch seed $s failed (exit $?); its log, $W/torch-$s.log, ends:"
        tail -n 20 "$W/torch-$s.log" >&2
        tw=nan tv=nan trss=? tin=nan failed=1
    fi
    echo "seed $s: torch val_loss $tv, wall ${tw} s (in-run ${tin:-?} s), peak RSS ${trss} MiB"
    rows+=("$s $lv $lw $tv $tw ${tin:-nan} $lrss $trss")
done

# the table, the means, the bars
printf '%s\n' "${rows[@]}" > "$W/results.tsv"
awk -v bar="$BAR_LOSS" '
function isnum(x) { return x ~ /^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$/ }
BEGIN {
    printf "\n%-6s %14s %12s %15s %13s %16s %10s %10s\n", "seed", "loom val_loss", "loom wall s", "torch val_loss",
        "torch wall s", "torch in-run s", "loom MiB", "torch MiB"
}
{
    printf "%-6s %14s %12s %15s %13s %16s %10s %10s\n", $1, $2, $3, $4, $5, $6, $7, $8
    n++
    for (i = 2; i <= 6; i++) if (isnum($i)) { sum[i] += $i; cnt[i]++ }
}
END {
    for (i = 2; i <= 6; i++) mean[i] = (cnt[i] == n && n > 0) ? sum[i] / n : "nan"
    printf "%-6s %14s %12s %15s %13s %16s\n", "mean",
        isnum(mean[2]) ? sprintf("%.4f", mean[2]) : "nan", isnum(mean[3]) ? sprintf("%.2f", mean[3]) : "nan",
        isnum(mean[4]) ? sprintf("%.4f", mean[4]) : "nan", isnum(mean[5]) ? sprintf("%.2f", mean[5]) : "nan",
        isnum(mean[6]) ? sprintf("%.2f", mean[6]) : "nan"
    if (isnum(mean[3]) && isnum(mean[5]) && mean[3] > 0)
        printf "wall-time ratio torch/loom (means): %.2fx (loom/torch %.3f)\n", mean[5] / mean[3], mean[3] / mean[5]
    else
        printf "wall-time ratio: n/a (a run failed)\n"
    printf "%s: loom mean val_loss <= %.2f (%s)\n", (isnum(mean[2]) && mean[2] <= bar) ? "PASS" : "FAIL", bar,
        isnum(mean[2]) ? sprintf("%.4f", mean[2]) : "nan"
    printf "%s: loom wall < torch wall (mean) (%s s vs %s s)\n",
        (isnum(mean[3]) && isnum(mean[5]) && mean[3] < mean[5]) ? "PASS" : "FAIL",
        isnum(mean[3]) ? sprintf("%.2f", mean[3]) : "nan", isnum(mean[5]) ? sprintf("%.2f", mean[5]) : "nan"
}' "$W/results.tsv" | tee "$W/results.txt"
echo "cores busy after the runs: $(busy_pct)%" | tee -a "$W/results.txt"

# the loss curves and a sample (failures here are warnings)
logs=()
for s in "${SEEDS[@]}"; do [ -s "$W/loom-$s/metrics.jsonl" ] && logs+=("$W/loom-$s/metrics.jsonl"); done
if [ ${#logs[@]} -gt 0 ]; then
    if "$LOOM" plot "${logs[@]}" --out "$OUT/loss.png" \
        --title "loom, nanoGPT shakespeare-char CPU recipe (L4 H4 C128 T64 B12, $STEPS steps), seeds ${SEEDS[*]}" \
        > "$W/plot.log" 2>&1; then
        echo "loss curves: $OUT/loss.png"
    else
        warn "loom plot failed (see $W/plot.log)"
    fi
    s1=${SEEDS[0]}
    if [ -s "$W/loom-$s1/metrics.jsonl" ] && [ -s "$W/torch-$s1.metrics.jsonl" ]; then
        "$LOOM" plot "$W/loom-$s1/metrics.jsonl" "$W/torch-$s1.metrics.jsonl" --out "$OUT/loss_loom_vs_torch.png" \
            --title "loom vs PyTorch (bench/torch_nanogpt_char.py), seed $s1" > "$W/plot_vs.log" 2>&1 &&
            echo "loom vs torch, seed $s1: $OUT/loss_loom_vs_torch.png" || warn "loom plot (loom vs torch) failed (see $W/plot_vs.log)"
    fi
fi
s1=${SEEDS[0]}
if [ -d "$W/loom-$s1" ]; then
    if "$LOOM" generate --ckpt "$W/loom-$s1" --max-tokens 300 --seed 1 > "$OUT/sample.txt" 2> "$W/generate.log"; then
        echo "sample (loom generate --ckpt $W/loom-$s1 --max-tokens 300 --seed 1), also in $OUT/sample.txt:"
        echo "----"
        cat "$OUT/sample.txt"
        echo "----"
    else
        warn "loom generate failed (see $W/generate.log)"
    fi
fi
exit $failed
