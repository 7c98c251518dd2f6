/* Key/value caching through the model's one forward (gpt.c's blocks). The keys and values live in a paged
 * pool (vLLM's PagedAttention layout): fixed blocks of block_len positions, every layer's keys and values of
 * a block side by side as in a qkv row, and a block table per sequence saying which block holds its
 * positions [i*block_len, (i+1)*block_len). One cached forward advances several sequences at once: each
 * brings a segment of new tokens (a prompt, a chunk of one, or the one token a decode step feeds), all
 * segments' rows go through every product together, and only positions, RoPE and attention are per segment.
 * While it runs the forward asks here for the embedding, the RoPE tables and attention, and the head
 * scores only the rows whose logits are wanted. Single-sequence generation (loom_model_kv_reset/step/prefill)
 * is the same path with a pool of its own and one segment. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

struct loom_kv_pool {
    loom_model *m;
    int64_t n_blocks, block_len, kvw2; /* kvw2: one position's key and value (2 KV hd elements) */
    int bf16;                   /* the keys and values stored as bf16 (else fp32) */
    size_t bytes;
    float *mem;
    void *kv;                   /* [L][n_blocks][block_len][kvw2] fp32 or bf16 elements */
    float *cos_t, *sin_t;       /* (max_seq_len, hd/2) RoPE tables */
    int32_t *tables_dev;        /* block tables staged for a backend the host cannot address */
    int64_t tables_cap;
};

/* the cached forward in progress: its segments and where each one's rows start */
typedef struct {
    loom_kv_pool *pool;
    const loom_kv_segment *segs;
    int64_t n_segs;
    int64_t *row0;
    const int32_t **tables; /* each segment's block table where the kernels read it */
    loom_attention_decode_args *calls; /* a layer's decode calls, one per segment at most, run as one batch */
} kv_run;

/* a single sequence's cache (loom_model_kv_reset/step/prefill) */
struct loom_kv_cache {
    loom_kv_pool *pool;
    int32_t *table;
    int64_t max_len, pos;
};

size_t loom_kv_pool_block_bytes(const loom_model *m, int64_t block_len, int bf16) {
    return (size_t)(m->cfg.n_layer * block_len * 2 * m->KV * m->hd) * (bf16 ? sizeof(uint16_t) : sizeof(float));
}

loom_status loom_kv_pool_create(loom_model *m, int64_t n_blocks, int64_t block_len, int bf16, loom_kv_pool **out) {
    *out = NULL;
    LOOM_CHECK(m->tp_size == 1 && m->sp_size == 1 && m->first && m->last && m->n_chunks == 1, LOOM_ERR_UNSUPPORTED,
               "generation runs on one rank holding the whole model (this one is cut over tp=%d, sp=%d, or a "
               "pipeline part); generate from its checkpoint", m->tp_size, m->sp_size);
    LOOM_CHECK(n_blocks >= 1 && block_len >= 1 && n_blocks <= INT32_MAX, LOOM_ERR_INVALID_ARG,
               "a key/value pool needs at least one block of at least one position (%lld blocks of %lld)",
               (long long)n_blocks, (long long)block_len);
    loom_kv_pool *p = calloc(1, sizeof *p);
    LOOM_CHECK(p != NULL, LOOM_ERR_NOMEM, "out of memory");
    const int64_t half = m->hd / 2, T = m->cfg.max_seq_len;
    p->m = m;
    p->n_blocks = n_blocks;
    p->block_len = block_len;
    p->kvw2 = 2 * m->KV * m->hd;
    p->bf16 = bf16 != 0;
    /* the cache in floats (a bf16 cache: half as many, rounded up), then the RoPE tables */
    const int64_t elems = m->cfg.n_layer * n_blocks * block_len * p->kvw2, table = (T * half + 15) / 16 * 16;
    const int64_t cache = p->bf16 ? (elems + 31) / 32 * 16 : elems;
    p->bytes = (size_t)(cache + 2 * table) * sizeof(float);
    loom_status st = loom_buf_alloc(m->be, m->mem, LOOM_MEM_WORKSPACE, p->bytes, (void **)&p->mem);
    if (st != LOOM_OK) {
        free(p);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    p->kv = p->mem;
    p->cos_t = p->mem + cache;
    p->sin_t = p->cos_t + table;
    *out = p;
    float *tab = malloc((size_t)(2 * T * half + 1) * sizeof(float)); /* RoPE tables, in double */
    LOOM_CHECK(tab != NULL, LOOM_ERR_NOMEM, "out of memory");
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < half; i++) {
            double inv = pow(m->cfg.rope_theta, -2.0 * (double)i / (double)m->hd);
            tab[t * half + i] = (float)cos((double)t * inv);
            tab[(T + t) * half + i] = (float)sin((double)t * inv);
        }
    st = loom_buf_upload(m->be, p->cos_t, tab, (size_t)(T * half) * sizeof(float));
    if (st == LOOM_OK) st = loom_buf_upload(m->be, p->sin_t, tab + T * half, (size_t)(T * half) * sizeof(float));
    free(tab);
    return st;
}

void loom_kv_pool_free(loom_kv_pool **pp) {
    loom_kv_pool *p = *pp;
    if (!p) return;
    loom_buf_free(p->m->be, p->m->mem, LOOM_MEM_WORKSPACE, p->mem, p->bytes);
    if (p->tables_dev)
        loom_buf_free(p->m->be, p->m->mem, LOOM_MEM_WORKSPACE, p->tables_dev, (size_t)p->tables_cap * sizeof(int32_t));
    free(p);
    *pp = NULL;
}

int64_t loom_kv_pool_blocks(const loom_kv_pool *p) { return p->n_blocks; }
int64_t loom_kv_pool_block_len(const loom_kv_pool *p) { return p->block_len; }

/* ---- what the model's forward asks while a cached forward runs (gpt.c) ---- */

int loom_kv_decoding(const loom_model *m) { return m->kv_run != NULL; }

int64_t loom_kv_num_segments(const loom_model *m) { return m->kv_run ? ((const kv_run *)m->kv_run)->n_segs : 0; }

void loom_kv_segment_rows(const loom_model *m, int64_t s, int64_t *row0, int64_t *n, int *adapter) {
    const kv_run *r = (const kv_run *)m->kv_run;
    *row0 = r->row0[s];
    *n = r->segs[s].n;
    *adapter = r->segs[s].adapter;
}


/* token rows -> embeddings (+ the positions' wpe rows), segment by segment */
loom_status loom_kv_embed(loom_model *m, const int32_t *tok, const float *wte, const float *wpe, float *out) {
    const kv_run *r = (const kv_run *)m->kv_run;
    for (int64_t s = 0; s < r->n_segs; s++) {
        const int64_t r0 = r->row0[s], pos = r->segs[s].pos;
        LOOM_CALL(loom_k_embedding_forward(m->be, &(loom_embedding_forward_args){.out = out + r0 * m->C,
                                           .tokens = tok + r0, .wte = wte, .wpe = wpe ? wpe + pos * m->C : NULL,
                                           .B = 1, .T = r->segs[s].n, .C = m->C, .wte16 = loom_model_wte16(m)}));
    }
    return LOOM_OK;
}

loom_status loom_kv_rope(loom_model *m, float *qkv) {
    const kv_run *r = (const kv_run *)m->kv_run;
    const int64_t half = m->hd / 2;
    for (int64_t s = 0; s < r->n_segs; s++) {
        const int64_t pos = r->segs[s].pos;
        LOOM_CALL(loom_k_rope(m->be, &(loom_rope_args){.qkv = qkv + r->row0[s] * m->Cq, .cos_t = r->pool->cos_t + pos * half,
                              .sin_t = r->pool->sin_t + pos * half, .B = 1, .T = r->segs[s].n, .H = m->H,
                              .KV = m->KV, .hd = m->hd, .inverse = 0}));
    }
    return LOOM_OK;
}

/* Layer l's attention: each segment's new keys and values (after RoPE) into its blocks, then its queries
 * against its cache. A segment with nothing cached before it is the training forward's causal attention
 * over its own rows (their keys and values rounded as a bf16 cache stores them); after cached positions,
 * and for every row on a batch-invariant backend (a row's arithmetic then the same in any segment), the
 * decode kernel over the block table. */
loom_status loom_kv_attention(loom_model *m, int64_t l) {
    const kv_run *r = (const kv_run *)m->kv_run;
    const loom_kv_pool *p = r->pool;
    layer_acts *a = &m->acts[l];
    const int64_t Ca = m->H * m->hd, bl = p->block_len, kvw2 = p->kvw2;
    const int64_t layer0 = l * p->n_blocks * bl * kvw2; /* element offsets */
    float *layer = p->bf16 ? NULL : (float *)p->kv + layer0;
    uint16_t *layer16 = p->bf16 ? (uint16_t *)p->kv + layer0 : NULL;
    int64_t n_calls = 0;
    for (int64_t s = 0; s < r->n_segs; s++) {
        const loom_kv_segment *sg = &r->segs[s];
        const int64_t r0 = r->row0[s];
        for (int64_t t = 0; t < sg->n; t++) { /* k|v lie side by side in a qkv row */
            const int64_t j = sg->pos + t;
            const int64_t at = ((int64_t)sg->blocks[j / bl] * bl + j % bl) * kvw2;
            const float *src = a->qkv + (r0 + t) * m->Cq + Ca;
            if (p->bf16) LOOM_CALL(loom_k_f32_to_bf16(m->be, &(loom_f32_to_bf16_args){.dst = layer16 + at, .src = src, .n = kvw2}));
            else LOOM_CALL(loom_buf_copy(m->be, layer + at, src, (size_t)kvw2 * sizeof(float)));
        }
        const int own_rows = sg->pos == 0 && !loom_backend_batch_invariant(m->be); /* the training kernel */
        /* a bf16 cache: the prompt's own attention sees its keys and values as the cache holds them, as every
         * later row will, so a sequence recomputed after preemption (its generated tokens now prompt rows)
         * gets the values its decode steps had */
        if (own_rows && p->bf16) {
            float *kv = a->qkv + r0 * m->Cq + Ca;
            LOOM_CALL(loom_k_round_bf16(m->be, &(loom_round_bf16_args){kv, m->Cq, kv, m->Cq, sg->n, kvw2}));
        }
        if (own_rows)
            LOOM_CALL(loom_k_attention_forward(m->be, &(loom_attention_forward_args){.out = a->atty + r0 * Ca,
                                               .lse = a->lse, .qkv = a->qkv + r0 * m->Cq, .B = 1, .T = sg->n,
                                               .H = m->H, .KV = m->KV, .hd = m->hd}));
        else /* each segment reads only its own blocks and rows: the calls wait until every key is written */
            r->calls[n_calls++] = (loom_attention_decode_args){.out = a->atty + r0 * Ca, .q = a->qkv + r0 * m->Cq,
                                  .k = layer, .v = layer ? layer + kvw2 / 2 : NULL, .k16 = layer16,
                                  .v16 = layer16 ? layer16 + kvw2 / 2 : NULL, .ld = kvw2, .n = sg->pos + sg->n,
                                  .H = m->H, .KV = m->KV, .hd = m->hd, .rows = sg->n, .qs = m->Cq, .os = Ca,
                                  .blocks = r->tables[s], .block_len = bl, .block_stride = bl * kvw2};
    }
    if (n_calls == 1) return loom_k_attention_decode(m->be, &r->calls[0]);
    if (n_calls > 1)
        return loom_k_attention_decode_batch(m->be, &(loom_attention_decode_batch_args){r->calls, n_calls});
    return LOOM_OK;
}

/* Moves the rows whose logits are wanted (each wanting segment's last) to the front of x (rows of row_bytes:
 * C floats, or C bf16 values where the model stores the final norm's output so; in order: each goes to a row
 * at or before its own); returns how many. */
int64_t loom_kv_logit_rows(loom_model *m, void *x, size_t row_bytes, loom_status *st) {
    const kv_run *r = (const kv_run *)m->kv_run;
    int64_t n = 0;
    *st = LOOM_OK;
    for (int64_t s = 0; s < r->n_segs && *st == LOOM_OK; s++) {
        if (!r->segs[s].logits) continue;
        const int64_t row = r->row0[s] + r->segs[s].n - 1;
        if (row != n) *st = loom_buf_copy(m->be, (char *)x + n * row_bytes, (char *)x + row * row_bytes, row_bytes);
        n++;
    }
    return n;
}

/* the segments' block tables where the kernels read them: host memory, or staged into the pool's buffer */
static loom_status stage_tables(loom_kv_pool *p, const loom_kv_segment *segs, int64_t n_segs, const int32_t **tables) {
    loom_model *m = p->m;
    int64_t need = 0;
    for (int64_t s = 0; s < n_segs; s++) {
        tables[s] = segs[s].blocks;
        need += (segs[s].pos + segs[s].n + p->block_len - 1) / p->block_len;
    }
    if (loom_backend_host_accessible(m->be)) return LOOM_OK;
    if (need > p->tables_cap) {
        if (p->tables_dev)
            loom_buf_free(m->be, m->mem, LOOM_MEM_WORKSPACE, p->tables_dev, (size_t)p->tables_cap * sizeof(int32_t));
        p->tables_dev = NULL;
        p->tables_cap = 0;
        LOOM_CALL(loom_buf_alloc(m->be, m->mem, LOOM_MEM_WORKSPACE, (size_t)need * sizeof(int32_t), (void **)&p->tables_dev));
        p->tables_cap = need;
    }
    int64_t at = 0;
    for (int64_t s = 0; s < n_segs; s++) {
        const int64_t nb = (segs[s].pos + segs[s].n + p->block_len - 1) / p->block_len;
        LOOM_CALL(loom_buf_upload(m->be, p->tables_dev + at, segs[s].blocks, (size_t)nb * sizeof(int32_t)));
        tables[s] = p->tables_dev + at;
        at += nb;
    }
    return LOOM_OK;
}

static loom_status check_segments(loom_model *m, const loom_kv_pool *p, const loom_kv_segment *segs, int64_t n_segs,
                                  int64_t *rows, int64_t *n_logits) {
    *rows = *n_logits = 0;
    LOOM_CHECK(n_segs >= 1, LOOM_ERR_INVALID_ARG, "a cached forward needs at least one segment");
    for (int64_t s = 0; s < n_segs; s++) {
        const loom_kv_segment *sg = &segs[s];
        LOOM_CHECK(sg->n >= 1 && sg->pos >= 0 && sg->pos + sg->n <= m->cfg.max_seq_len && sg->blocks, LOOM_ERR_INVALID_ARG,
                   "segment %lld: %lld new tokens after %lld cached ones (the context is %lld positions)",
                   (long long)s, (long long)sg->n, (long long)sg->pos, (long long)m->cfg.max_seq_len);
        LOOM_CHECK(sg->adapter >= 0 && sg->adapter <= m->n_sets, LOOM_ERR_INVALID_ARG,
                   "segment %lld: adapter set %d, the model has %d", (long long)s, sg->adapter, m->n_sets);
        for (int64_t i = 0; i < sg->n; i++)
            LOOM_CHECK(sg->tokens[i] >= 0 && sg->tokens[i] < m->V, LOOM_ERR_INVALID_ARG,
                       "token %d is outside the vocabulary [0, %lld)", sg->tokens[i], (long long)m->V);
        for (int64_t i = 0; i < (sg->pos + sg->n + p->block_len - 1) / p->block_len; i++)
            LOOM_CHECK(sg->blocks[i] >= 0 && sg->blocks[i] < p->n_blocks, LOOM_ERR_INVALID_ARG,
                       "segment %lld: block %d is outside the pool's %lld", (long long)s, sg->blocks[i],
                       (long long)p->n_blocks);
        *rows += sg->n;
        *n_logits += sg->logits != 0;
    }
    return LOOM_OK;
}

static int rows_fit(const loom_model *m, int64_t rows) {
    return m->act_mem && (rows <= m->cap_T || rows <= m->cap_B);
}

loom_status loom_model_kv_prepare(loom_model *m, int64_t rows) {
    if (rows_fit(m, rows) || (m->has_grads && m->act_mem)) return LOOM_OK; /* a training model's stay as they are */
    return loom_model_reserve(m, rows, 1, LOOM_RECOMPUTE_NONE);
}

loom_status loom_model_kv_forward(loom_model *m, loom_kv_pool *p, const loom_kv_segment *segs, int64_t n_segs,
                                  float *logits) {
    LOOM_CHECK(p && p->m == m, LOOM_ERR_INVALID_ARG, "the key/value pool belongs to another model");
    int64_t rows, n_logits;
    LOOM_CALL(check_segments(m, p, segs, n_segs, &rows, &n_logits));
    LOOM_CALL(loom_model_kv_prepare(m, rows));
    LOOM_CHECK(rows_fit(m, rows), LOOM_ERR_INVALID_ARG,
               "%lld rows in one cached forward exceed what the training model's activations hold (%lld)",
               (long long)rows, (long long)(m->cap_T > m->cap_B ? m->cap_T : m->cap_B));
    /* the rows go through the forward as one sequence of the reserved shape, or as a batch of one-token
     * sequences (positions and attention come from the segments either way) */
    int64_t B = 1, T = rows;
    if (rows > m->cap_T) B = rows, T = 1;
    int32_t *tokens = malloc((size_t)rows * sizeof(int32_t));
    int64_t *row0 = malloc((size_t)n_segs * sizeof(int64_t));
    const int32_t **tables = malloc((size_t)n_segs * sizeof(*tables));
    loom_attention_decode_args *calls = malloc((size_t)n_segs * sizeof(*calls));
    loom_status st = tokens && row0 && tables && calls ? LOOM_OK : LOOM_ERR_NOMEM;
    if (st != LOOM_OK) loom_error_set(st, __FILE__, __LINE__, __func__, "out of memory");
    for (int64_t s = 0, at = 0; st == LOOM_OK && s < n_segs; at += segs[s].n, s++) {
        row0[s] = at;
        memcpy(tokens + at, segs[s].tokens, (size_t)segs[s].n * sizeof(int32_t));
    }
    if (st == LOOM_OK) st = stage_tables(p, segs, n_segs, tables);
    if (st == LOOM_OK) {
        kv_run run = {p, segs, n_segs, row0, tables, calls};
        const loom_model_hooks hooks = m->hooks; /* the sequences are this rank's alone, parameters resident */
        memset(&m->hooks, 0, sizeof m->hooks);
        m->kv_run = &run;
        st = loom_model_forward(m, tokens, NULL, B, T, NULL);
        m->kv_run = NULL;
        m->hooks = hooks;
    }
    if (st == LOOM_OK && logits && n_logits)
        st = loom_buf_download(m->be, logits, m->logits, (size_t)(n_logits * m->V) * sizeof(float));
    free(tokens);
    free(row0);
    free(tables);
    free(calls);
    if (st != LOOM_OK) loom_error_trace(__FILE__, __LINE__, __func__);
    return st;
}

/* ---- one sequence (loom generate): a pool of its own whose blocks are the positions in order ---- */

void loom_kv_cache_free(loom_model *m) {
    if (!m->kv) return;
    loom_kv_pool_free(&m->kv->pool);
    free(m->kv->table);
    free(m->kv);
    m->kv = NULL;
}

#define SOLO_BLOCK 64

loom_status loom_model_kv_reset(loom_model *m, int64_t max_len, int bf16) {
    LOOM_CHECK(max_len >= 1 && max_len <= m->cfg.max_seq_len, LOOM_ERR_INVALID_ARG,
               "generation length %lld must be in [1, max_seq_len=%lld]", (long long)max_len,
               (long long)m->cfg.max_seq_len);
    if (m->kv && m->kv->max_len >= max_len && m->kv->pool->bf16 == (bf16 != 0)) {
        m->kv->pos = 0;
        return LOOM_OK;
    }
    loom_kv_cache_free(m);
    struct loom_kv_cache *kv = calloc(1, sizeof *kv);
    LOOM_CHECK(kv != NULL, LOOM_ERR_NOMEM, "out of memory");
    const int64_t nb = (max_len + SOLO_BLOCK - 1) / SOLO_BLOCK;
    kv->table = malloc((size_t)nb * sizeof(int32_t));
    if (!kv->table) {
        free(kv);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    loom_status st = loom_kv_pool_create(m, nb, SOLO_BLOCK, bf16, &kv->pool);
    if (st != LOOM_OK) {
        free(kv->table);
        free(kv);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    for (int64_t i = 0; i < nb; i++) kv->table[i] = (int32_t)i;
    kv->max_len = max_len;
    m->kv = kv;
    return LOOM_OK;
}

int64_t loom_model_kv_position(const loom_model *m) { return m->kv ? m->kv->pos : 0; }

/* n tokens of the one sequence through a cached forward; the logits of the last to host memory */
static loom_status solo_forward(loom_model *m, const int32_t *tokens, int64_t n, float *logits) {
    struct loom_kv_cache *kv = m->kv;
    LOOM_CHECK(kv != NULL, LOOM_ERR_INVALID_ARG, "call loom_model_kv_reset before feeding tokens");
    LOOM_CHECK(kv->pos + n <= kv->max_len, LOOM_ERR_INVALID_ARG, "the sequence is full (%lld positions)",
               (long long)kv->max_len);
    const loom_kv_segment seg = {.tokens = tokens, .n = n, .pos = kv->pos, .blocks = kv->table, .logits = 1};
    LOOM_CALL(loom_model_kv_forward(m, kv->pool, &seg, 1, logits));
    kv->pos += n;
    return LOOM_OK;
}

loom_status loom_model_kv_step(loom_model *m, int32_t token, float *logits) {
    return solo_forward(m, &token, 1, logits);
}

loom_status loom_model_kv_prefill(loom_model *m, const int32_t *tokens, int64_t n, float *logits) {
    LOOM_CHECK(m->kv != NULL, LOOM_ERR_INVALID_ARG, "call loom_model_kv_reset before loom_model_kv_prefill");
    LOOM_CHECK(n >= 1, LOOM_ERR_INVALID_ARG, "a prefill needs at least one token");
    /* one pass where the activations allow it: an inference model reserves them, a training model's
     * (sampling between steps) are used only as far as they reach */
    const int64_t chunk = !m->act_mem ? 1 : m->cap_T > m->cap_B ? m->cap_T : m->cap_B;
    if (!m->has_grads || n <= chunk) return solo_forward(m, tokens, n, logits);
    for (int64_t i = 0; i < n; i += chunk) LOOM_CALL(solo_forward(m, tokens + i, n - i < chunk ? n - i : chunk, logits));
    return LOOM_OK;
}
