/* KV-cache decoding equals full recomputation; sampling is deterministic and its filters behave.
 * Tolerance: the cached path sums attention and GEMV products in another order than the blocked training
 * forward, so logits agree to float rounding: |d| <= 1e-5 + 1e-5*max|logit| (measured errors ~1e-6). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/backend.h"
#include "loom/generate.h"
#include "loom/model.h"
#include "loom/rng.h"
#include "loom/tensor.h"

static int pass, fail;
static void check(int ok, const char *name, double err, double tol) {
    printf("%s %s %.3e %.3e\n", ok ? "ok" : "FAIL", name, err, tol);
    if (ok) pass++; else fail++;
}

/* the preset's family at a test's size: 2 layers, width 64 (llama: 2 kv heads of 4), vocabulary 101 */
static loom_status tiny_config(const char *preset, int llama, loom_model_config *c) {
    LOOM_CALL(loom_model_config_preset(preset, c));
    c->n_layer = 2;
    c->n_head = 4;
    c->n_kv_head = llama ? 2 : 4;
    c->d_model = 64;
    c->d_ff = llama ? 96 : 256;
    c->vocab_size = 101;
    c->max_seq_len = 48;
    c->init_std = 0.1;
    return LOOM_OK;
}

static int run_family(loom_backend *be, const char *preset, int llama) {
    loom_model_config c;
    if (tiny_config(preset, llama, &c) != LOOM_OK) return 1;
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *m;
    const int64_t T = 40;
    if (loom_model_init(&c, be, &mem, NULL, &m) || loom_model_reserve(m, 1, T, LOOM_RECOMPUTE_NONE) ||
        loom_model_init_weights(m, 7)) {
        fprintf(stderr, "%s\n", loom_error_message());
        return 1;
    }
    int32_t tok[64];
    loom_rng r;
    loom_rng_seed(&r, 3);
    for (int64_t i = 0; i < T; i++) tok[i] = (int32_t)loom_rng_below(&r, (uint64_t)c.vocab_size);
    if (loom_model_forward(m, tok, NULL, 1, T, NULL)) return 1;
    float *full = malloc((size_t)(T * c.vocab_size) * sizeof(float)), *lg = malloc((size_t)(T * c.vocab_size) * sizeof(float));
    if (!full || !lg || loom_model_read_logits(m, full)) return 1;
    double maxabs = 0, err = 0;
    for (int64_t i = 0; i < T * c.vocab_size; i++) maxabs = fmax(maxabs, fabs(full[i]));
    if (loom_model_kv_reset(m, T, 0)) return 1;
    for (int64_t t = 0; t < T; t++) {
        if (loom_model_kv_step(m, tok[t], lg)) return 1;
        for (int64_t v = 0; v < c.vocab_size; v++) err = fmax(err, fabs(lg[v] - full[t * c.vocab_size + v]));
    }
    char name[128];
    double tol = 1e-5 + 1e-5 * maxabs;
    snprintf(name, sizeof name, "%s_kv_cache_logits_equal_full_forward_T%lld", preset, (long long)T);
    check(err <= tol, name, err, tol);
    /* a second sequence after reset reuses the cache and gives the same logits again */
    if (loom_model_kv_reset(m, T, 0)) return 1;
    double err2 = 0;
    for (int64_t t = 0; t < 5; t++) {
        if (loom_model_kv_step(m, tok[t], lg)) return 1;
        for (int64_t v = 0; v < c.vocab_size; v++) err2 = fmax(err2, fabs(lg[v] - full[t * c.vocab_size + v]));
    }
    snprintf(name, sizeof name, "%s_kv_cache_reset", preset);
    check(err2 <= tol, name, err2, tol);
    /* a batched prefill of T-1 tokens (one forward), then a step: the same logits at both positions */
    double err3 = 0;
    if (loom_model_kv_reset(m, T, 0) || loom_model_kv_prefill(m, tok, T - 1, lg)) return 1;
    for (int64_t v = 0; v < c.vocab_size; v++) err3 = fmax(err3, fabs(lg[v] - full[(T - 2) * c.vocab_size + v]));
    if (loom_model_kv_position(m) != T - 1 || loom_model_kv_step(m, tok[T - 1], lg)) return 1;
    for (int64_t v = 0; v < c.vocab_size; v++) err3 = fmax(err3, fabs(lg[v] - full[(T - 1) * c.vocab_size + v]));
    snprintf(name, sizeof name, "%s_kv_prefill_then_step_equal_full_forward", preset);
    check(err3 <= tol, name, err3, tol);
    /* generation: same seed, same tokens; greedy equals top_k=1 */
    loom_sample_config sc = loom_sample_config_default();
    sc.max_tokens = 20;
    sc.top_k = 10;
    sc.top_p = 0.9;
    int32_t *a = NULL, *b = NULL, *g = NULL, *k1 = NULL;
    int64_t na, nb, ng, nk;
    if (loom_generate(m, NULL, tok, 4, &sc, NULL, NULL, &a, &na) || loom_generate(m, NULL, tok, 4, &sc, NULL, NULL, &b, &nb))
        return 1;
    snprintf(name, sizeof name, "%s_generate_same_seed_same_tokens", preset);
    check(na == nb && na == 20 && memcmp(a, b, (size_t)na * 4) == 0, name, 0, 0);
    sc.temperature = 0;
    if (loom_generate(m, NULL, tok, 4, &sc, NULL, NULL, &g, &ng)) return 1;
    sc.temperature = 1.0;
    sc.top_k = 1;
    sc.top_p = 1.0;
    if (loom_generate(m, NULL, tok, 4, &sc, NULL, NULL, &k1, &nk)) return 1;
    snprintf(name, sizeof name, "%s_greedy_equals_top_k_1", preset);
    check(ng == nk && memcmp(g, k1, (size_t)ng * 4) == 0, name, 0, 0);
    /* greedy continuation equals argmax of the full forward on the extended sequence */
    int32_t ext[64];
    memcpy(ext, tok, 4 * sizeof(int32_t));
    memcpy(ext + 4, g, (size_t)ng * sizeof(int32_t));
    int ok = 1;
    if (loom_model_reserve(m, 1, 4 + ng - 1, LOOM_RECOMPUTE_NONE) == LOOM_OK &&
        loom_model_forward(m, ext, NULL, 1, 4 + ng - 1, NULL) == LOOM_OK && loom_model_read_logits(m, lg) == LOOM_OK) {
        for (int64_t t = 3; t < 4 + ng - 1; t++) {
            int64_t best = 0;
            for (int64_t v = 1; v < c.vocab_size; v++)
                if (lg[t * c.vocab_size + v] > lg[t * c.vocab_size + best]) best = v;
            if (best != ext[t + 1]) ok = 0;
        }
    } else ok = 0;
    snprintf(name, sizeof name, "%s_greedy_matches_full_forward_argmax", preset);
    check(ok, name, 0, 0);
    /* past the context the window slides and generation goes on, deterministically */
    sc.max_tokens = 100;
    int32_t *lim = NULL, *lim2 = NULL;
    int64_t nl, nl2;
    loom_generate_stats gs;
    if (loom_generate(m, NULL, tok, 4, &sc, NULL, &gs, &lim, &nl) ||
        loom_generate(m, NULL, tok, 4, &sc, NULL, NULL, &lim2, &nl2))
        return 1;
    snprintf(name, sizeof name, "%s_slides_past_context", preset);
    check(nl == 100 && gs.context_full && nl2 == nl && memcmp(lim, lim2, (size_t)nl * 4) == 0, name, (double)nl, 100);
    free(lim2);
    free(a); free(b); free(g); free(k1); free(lim); free(full); free(lg);
    loom_model_free(&m);
    return 0;
}

/* bf16 decoding (loom generate --precision bf16): the KV-cache path multiplies with the weights' bf16 copy as
 * the bf16 training forward does, so its logits equal that forward's to float rounding (the fp32 test's
 * tolerance; measured: identical), and follow fp32's within bf16's error (measured 0.4% of the largest logit;
 * bound 2%); they must differ from fp32's (else the products did not run in bf16). */
/* Weights held in bf16 only (weights_bf16, what a bf16 checkpoint load gives inference): written in pieces,
 * each made bf16 and its fp32 matrices given back. Against m16 (fp32 weights beside their bf16 copy) whose
 * weights are first rounded to bf16 values, so the one thing the first holds differently (the embedding read
 * from its bf16 rows) reads the same values: the cached logits must be the same bits. And the memory: the
 * bf16 copy plus what reads fp32 (norms, biases, the position table, pages the matrices share with them). */
static int run_bf16_only(const loom_model_config *c, loom_backend *be, loom_model *m16, const char *preset) {
    const int64_t T = 24, V = c->vocab_size, n = loom_model_weights_size(m16), piece = 4096;
    float *w16 = loom_model_weights(m16);
    for (int64_t i = 0; i < n; i++) w16[i] = loom_bf16_to_f32(loom_f32_to_bf16(w16[i]));
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *mb;
    const loom_model_options ob = {.precision = LOOM_PRECISION_BF16, .weights_bf16 = 1};
    if (loom_model_refresh_low_precision(m16) || loom_model_init(c, be, &mem, &ob, &mb)) return 1;
    for (int64_t lo = 0; lo < n; lo += piece) {
        const int64_t hi = lo + piece < n ? lo + piece : n;
        memcpy(loom_model_weights(mb) + lo, w16 + lo, (size_t)(hi - lo) * sizeof(float));
        if (loom_model_weights_done(mb, lo, hi)) return 1;
    }
    const double params = (double)mem.current[LOOM_MEM_PARAMS], copy = 2.0 * (double)n, fp32 = 4.0 * (double)n;
    if (loom_model_refresh_low_precision(mb) || loom_model_reserve(mb, 1, T, LOOM_RECOMPUTE_NONE) ||
        loom_model_kv_reset(mb, T, 0) || loom_model_kv_reset(m16, T, 0))
        return 1;
    float *la = malloc((size_t)V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));
    int32_t tok[32];
    loom_rng r;
    loom_rng_seed(&r, 9);
    double err = 0;
    for (int64_t t = 0; t < T; t++) {
        tok[t] = (int32_t)loom_rng_below(&r, (uint64_t)V);
        if (!la || !lb || loom_model_kv_step(m16, tok[t], la) || loom_model_kv_step(mb, tok[t], lb)) return 1;
        for (int64_t v = 0; v < V; v++) err = fmax(err, fabs((double)la[v] - (double)lb[v]));
    }
    char name[128];
    snprintf(name, sizeof name, "%s_bf16_only_weights_give_the_same_logits", preset);
    check(err == 0, name, err, 0);
    /* the tiny model's fp32 remainder is large beside its matrices (GPT-2 124M: 241 of 475 MiB) */
    snprintf(name, sizeof name, "%s_bf16_only_weights_hold_the_copy_and_at_most_a_third_of_fp32", preset);
    check(params >= copy && params <= copy + fp32 / 3, name, params / fp32, (copy + fp32 / 3) / fp32);
    free(la);
    free(lb);
    loom_model_free(&mb);
    check(mem.current[LOOM_MEM_PARAMS] == 0, "bf16_only_weights_freed_to_the_byte", (double)mem.current[LOOM_MEM_PARAMS], 0);
    return 0;
}

static int run_bf16(loom_backend *be, const char *preset, int llama) {
    loom_model_config c;
    if (tiny_config(preset, llama, &c) != LOOM_OK) return 1;
    const int64_t T = 24, V = c.vocab_size;
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *m32, *m16;
    const loom_model_options o16 = {.precision = LOOM_PRECISION_BF16};
    if (loom_model_init(&c, be, &mem, NULL, &m32) || loom_model_init_weights(m32, 7) ||
        loom_model_init(&c, be, &mem, &o16, &m16) || loom_model_init_weights(m16, 7) ||
        loom_model_refresh_low_precision(m16) || loom_model_reserve(m16, 1, T, LOOM_RECOMPUTE_NONE))
        return 1;
    int32_t tok[32];
    loom_rng r;
    loom_rng_seed(&r, 5);
    for (int64_t i = 0; i < T; i++) tok[i] = (int32_t)loom_rng_below(&r, (uint64_t)V);
    float *full = malloc((size_t)(T * V) * sizeof(float)), *l16 = malloc((size_t)V * sizeof(float)),
          *l32 = malloc((size_t)V * sizeof(float));
    if (!full || !l16 || !l32 || loom_model_forward(m16, tok, NULL, 1, T, NULL) || loom_model_read_logits(m16, full) ||
        loom_model_kv_reset(m16, T, 0) || loom_model_kv_reset(m32, T, 0))
        return 1;
    double maxabs = 0, e_full = 0, e_32 = 0;
    for (int64_t t = 0; t < T; t++) {
        if (loom_model_kv_step(m16, tok[t], l16) || loom_model_kv_step(m32, tok[t], l32)) return 1;
        for (int64_t v = 0; v < V; v++) {
            maxabs = fmax(maxabs, fabs(l32[v]));
            e_full = fmax(e_full, fabs(l16[v] - full[t * V + v]));
            e_32 = fmax(e_32, fabs(l16[v] - l32[v]));
        }
    }
    char name[128];
    const double tol_full = 1e-5 + 1e-5 * maxabs, tol_32 = 2e-2 * maxabs;
    snprintf(name, sizeof name, "%s_bf16_kv_logits_follow_bf16_forward", preset);
    check(e_full <= tol_full, name, e_full, tol_full);
    snprintf(name, sizeof name, "%s_bf16_kv_logits_follow_fp32", preset);
    check(e_32 <= tol_32, name, e_32, tol_32);
    snprintf(name, sizeof name, "%s_bf16_kv_logits_differ_from_fp32", preset);
    check(e_32 > 1e-4 * maxabs, name, e_32, 1e-4 * maxabs);
    free(full); free(l16); free(l32);
    loom_model_free(&m32);
    if (run_bf16_only(&c, be, m16, preset)) return 1;
    loom_model_free(&m16);
    return 0;
}

/* ---- batch invariance: a sequence's logits do not depend on what it is batched with ----
 * Three sequences (prompts of 5, 23 and 30 tokens, then 6 decoded tokens each) run alone, then together as a
 * continuous-batching server runs them: two prompts whole and the third's first 8 tokens in one forward, its
 * rest beside two decode rows in the next, then decode rows together; and the first recomputed from its
 * prompt and 3 generated tokens in one segment, as after preemption. On a batch-invariant backend every
 * logit must be the same bits as alone; on the default one this prints how far they are (few-row kernels
 * for small batches, the GEMM for large ones, the training attention for prompts). */
enum { INV_SEQS = 3, INV_DEC = 6, INV_BLOCKS = 10, INV_BL = 4, INV_CHUNK = 8 };

typedef struct {
    loom_model *m;
    loom_kv_pool *pool;
    int64_t V;
    int32_t tables[INV_SEQS][INV_BLOCKS];
} inv_run;

/* one forward over segments (seq, first token, n, pos, logits wanted); the wanted logits into out, in order */
static int inv_forward(inv_run *r, const int32_t *const *tok, const int *seq, const int64_t *n, const int64_t *pos,
                       const int *want, int n_segs, float *out) {
    loom_kv_segment segs[INV_SEQS];
    for (int k = 0; k < n_segs; k++)
        segs[k] = (loom_kv_segment){.tokens = tok[k], .n = n[k], .pos = pos[k], .blocks = r->tables[seq[k]],
                                    .logits = want[k]};
    return loom_model_kv_forward(r->m, r->pool, segs, n_segs, out) != LOOM_OK;
}

static double bits_apart(const float *a, const float *b, int64_t n) {
    double e = 0;
    for (int64_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, sizeof(float))) e = fmax(e, fabs((double)a[i] - (double)b[i]) + 1e-30);
    return e;
}

static int run_invariance(loom_backend *be, const char *preset, int llama, loom_precision prec, int kv_bf16) {
    loom_model_config c;
    if (tiny_config(preset, llama, &c) != LOOM_OK) return 1;
    c.d_model = 256; /* sums long enough that their order shows in bf16 too */
    c.d_ff = llama ? 384 : 1024;
    loom_mem mem;
    loom_mem_init(&mem);
    inv_run r = {.V = c.vocab_size};
    const loom_model_options o = {.precision = prec};
    if (loom_model_init(&c, be, &mem, &o, &r.m) || loom_model_init_weights(r.m, 7) ||
        loom_model_refresh_low_precision(r.m) ||
        loom_kv_pool_create(r.m, INV_SEQS * INV_BLOCKS, INV_BL, kv_bf16, &r.pool))
        return 1;
    for (int s = 0; s < INV_SEQS; s++)
        for (int b = 0; b < INV_BLOCKS; b++) r.tables[s][b] = s * INV_BLOCKS + b;
    const int64_t len[INV_SEQS] = {5, 23, 30}, V = r.V;
    int32_t tok[INV_SEQS][40];
    loom_rng g;
    loom_rng_seed(&g, 11);
    for (int s = 0; s < INV_SEQS; s++)
        for (int64_t i = 0; i < len[s] + INV_DEC; i++) tok[s][i] = (int32_t)loom_rng_below(&g, (uint64_t)V);
    /* alone: logits after the prompt, then after each decoded token */
    float *solo = malloc((size_t)(INV_SEQS * (INV_DEC + 1) * V) * sizeof(float));
    float *got = malloc((size_t)(INV_SEQS * V) * sizeof(float));
    if (!solo || !got) return 1;
#define SOLO(s, t) (solo + ((s) * (INV_DEC + 1) + (t)) * V)
    for (int s = 0; s < INV_SEQS; s++) {
        const int32_t *t0 = tok[s];
        if (inv_forward(&r, &t0, &s, &len[s], &(int64_t){0}, &(int){1}, 1, SOLO(s, 0))) return 1;
        for (int t = 0; t < INV_DEC - 1; t++) {
            const int32_t *tt = tok[s] + len[s] + t;
            if (inv_forward(&r, &tt, &s, &(int64_t){1}, &(int64_t){len[s] + t}, &(int){1}, 1, SOLO(s, t + 1))) return 1;
        }
    }
    double err = 0;
    /* together: prompts 0 and 1 whole and a chunk of prompt 2 (36 rows: past the few-row kernel's 32); then 2's
     * rest beside 0's and 1's first decodes */
    {
        const int32_t *tk[3] = {tok[0], tok[1], tok[2]};
        const int sq[3] = {0, 1, 2}, wt[3] = {1, 1, 0};
        const int64_t n[3] = {len[0], len[1], INV_CHUNK}, ps[3] = {0, 0, 0};
        if (inv_forward(&r, tk, sq, n, ps, wt, 3, got)) return 1;
        err = fmax(err, fmax(bits_apart(got, SOLO(0, 0), V), bits_apart(got + V, SOLO(1, 0), V)));
    }
    {
        const int32_t *tk[3] = {tok[0] + len[0], tok[1] + len[1], tok[2] + INV_CHUNK};
        const int sq[3] = {0, 1, 2}, wt[3] = {1, 1, 1};
        const int64_t n[3] = {1, 1, len[2] - INV_CHUNK}, ps[3] = {len[0], len[1], INV_CHUNK};
        if (inv_forward(&r, tk, sq, n, ps, wt, 3, got)) return 1;
        err = fmax(err, fmax(bits_apart(got, SOLO(0, 1), V), bits_apart(got + V, SOLO(1, 1), V)));
        err = fmax(err, bits_apart(got + 2 * V, SOLO(2, 0), V));
    }
    for (int t = 1; t < INV_DEC - 1; t++) { /* 0 and 1 at their (t+1)-th decode, 2 at its t-th */
        const int32_t *tk[3] = {tok[0] + len[0] + t, tok[1] + len[1] + t, tok[2] + len[2] + t - 1};
        const int sq[3] = {0, 1, 2}, wt[3] = {1, 1, 1};
        const int64_t n[3] = {1, 1, 1}, ps[3] = {len[0] + t, len[1] + t, len[2] + t - 1};
        if (inv_forward(&r, tk, sq, n, ps, wt, 3, got)) return 1;
        err = fmax(err, fmax(bits_apart(got, SOLO(0, t + 1), V), bits_apart(got + V, SOLO(1, t + 1), V)));
        err = fmax(err, bits_apart(got + 2 * V, SOLO(2, t), V));
    }
    { /* 0 recomputed from its prompt and its first 3 decoded tokens, beside 1's next decode */
        const int32_t *tk[2] = {tok[0], tok[1] + len[1] + INV_DEC - 1};
        const int sq[2] = {0, 1}, wt[2] = {1, 0};
        const int64_t n[2] = {len[0] + 3, 1}, ps[2] = {0, len[1] + INV_DEC - 1};
        if (inv_forward(&r, tk, sq, n, ps, wt, 2, got)) return 1;
        err = fmax(err, bits_apart(got, SOLO(0, 3), V));
    }
#undef SOLO
    char name[160];
    snprintf(name, sizeof name, "%s_%s%s_%s", preset, prec == LOOM_PRECISION_BF16 ? "bf16" : "fp32",
             kv_bf16 ? "_bf16_cache" : "", loom_backend_batch_invariant(be) ?
             "batch_invariant_logits_equal_alone_to_the_bit" : "default_backend_logits_beside_alone_(info)");
    if (loom_backend_batch_invariant(be)) check(err == 0, name, err, 0);
    else printf("info %s: largest difference %.3e\n", name, err);
    free(solo);
    free(got);
    loom_kv_pool_free(&r.pool);
    loom_model_free(&r.m);
    return 0;
}

int main(int argc, char **argv) { /* test_generate [device] */
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = 2;
    bc.quiet = 1;
    bc.device = argc > 1 ? argv[1] : "cpu";
    loom_backend *be;
    if (loom_backend_init(&bc, &be)) return 1;
    /* nanogpt-char: GPT-2 without biases and with the exact GELU */
    if (run_family(be, "demo", 0) || run_family(be, "llama-tiny", 1) || run_family(be, "nanogpt-char", 0) ||
        (!strcmp(bc.device, "cpu") && (run_bf16(be, "demo", 0) || run_bf16(be, "llama-tiny", 1)))) {
        fprintf(stderr, "error: %s\n", loom_error_message());
        return 1;
    }
    if (!strcmp(bc.device, "cpu") || !strcmp(bc.device, "cpu-isolated")) {
        loom_backend *bi;
        bc.batch_invariant = 1;
        if (loom_backend_init(&bc, &bi)) return 1;
        for (int inv = 0; inv < 2; inv++) {
            loom_backend *b = inv ? bi : be;
            if (run_invariance(b, "demo", 0, LOOM_PRECISION_FP32, 0) || run_invariance(b, "demo", 0, LOOM_PRECISION_BF16, 0) ||
                run_invariance(b, "demo", 0, LOOM_PRECISION_BF16, 1) || run_invariance(b, "llama-tiny", 1, LOOM_PRECISION_FP32, 0) ||
                run_invariance(b, "llama-tiny", 1, LOOM_PRECISION_BF16, 1)) {
                fprintf(stderr, "error: %s\n", loom_error_message());
                return 1;
            }
        }
        loom_backend_free(&bi);
    }
    loom_backend_free(&be);
    printf("%d passed, %d failed\n", pass, fail);
    return fail != 0;
}
