/* LoRA adapters over frozen weights: their layout, initial values, and their part of the forward and
 * backward of the products that carry them.
 *
 * An adapter is one Hugging Face module's (PEFT's unit): it covers a block of rows of one of loom's fused
 * weights (LLaMA's q, k and v rows of the qkv weight; gate and up of gate_up) or all of them (GPT-2's
 * c_attn, every proj). For input x (N x fan_in) and output block y (N x rows):
 *   forward   u = drop(x) A^T (N x r), kept for the backward;   y += s u B^T
 *   backward  du = s dy B;  dB (+)= s dy^T u;  dA (+)= du^T drop(x);  dx += drop'(du A)
 * Dropout draws its mask from a counter-based hash, so the backward (and a recomputed forward) sees the
 * forward's mask without storing it. The adapters' products are small (r columns): they run in fp32 in
 * every precision, as PEFT keeps adapters in fp32 beside a low-precision base. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/rng.h"

#include "model_impl.h"

#define MAX_PIECES 7 /* LLaMA: q, k, v, o, gate, up, down */

typedef struct {
    int role;          /* LORA_* */
    int64_t in, rows;  /* fan-in; output rows of the block */
    int64_t col;       /* its first output column in the product's result */
} lora_piece;

struct lora_state {
    loom_lora_config cfg;
    float scale;
    int n_pieces;                    /* per block, the same in every block */
    lora_piece pieces[MAX_PIECES];
    int64_t *a_off, *b_off;          /* [L][n_pieces]: where A and B lie in the adapter buffer */
    int64_t cap_N;                   /* rows the activations below hold */
    float *u;                        /* training: [L][n_pieces] (N x r) each; inference: one (N x r) */
    float *du, *xd, *dxd;            /* (N x r), (N x max fan-in) twice: dropout's input and input gradient */
    float *dw;                       /* (2C) the frozen norms' weight gradients, computed and dropped */
    size_t u_bytes, du_bytes, x_bytes;
    int training;
    uint64_t micro;                  /* micro-batches run in training: the dropout stream's counter */
    float *own;                      /* a serving set's adapters (NULL: the model's flat parameters) */
    size_t own_bytes;
};

/* ---- the config ---- */

static int role_bits(const char *t, size_t n) {
    static const struct { const char *name; int bits; } names[] = {
        {"qkv", LOOM_LORA_QKV}, {"proj", LOOM_LORA_PROJ}, {"fc", LOOM_LORA_FC}, {"gate_up", LOOM_LORA_FC},
        {"down", LOOM_LORA_DOWN}, {"attn", LOOM_LORA_ATTN}, {"mlp", LOOM_LORA_MLP}, {"all", LOOM_LORA_ALL}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i].name) == n && !strncmp(names[i].name, t, n)) return names[i].bits;
    return 0;
}

static loom_status parse_number(const char *key, const char *v, size_t n, double lo, double hi, double *out) {
    char buf[64], *end;
    LOOM_CHECK(n > 0 && n < sizeof buf, LOOM_ERR_CONFIG, "--lora: %s needs a value", key);
    memcpy(buf, v, n);
    buf[n] = '\0';
    const double x = strtod(buf, &end);
    LOOM_CHECK(*end == '\0' && isfinite(x) && x >= lo && x <= hi, LOOM_ERR_CONFIG,
               "--lora: %s must be a number in [%g, %g], got '%s'", key, lo, hi, buf);
    *out = x;
    return LOOM_OK;
}

loom_status loom_lora_config_parse(const char *spec, loom_lora_config *out) {
    loom_lora_config c = {.r = 8, .alpha = -1, .dropout = 0, .targets = LOOM_LORA_QKV, .rslora = 0};
    LOOM_CHECK(spec != NULL, LOOM_ERR_CONFIG, "--lora: no spec");
    int targets = 0;
    const char *key = NULL; /* the key a bare item continues (targets=attn,mlp) */
    size_t key_n = 0;
    for (const char *p = spec; *p;) {
        const char *e = strchr(p, ',');
        const size_t n = e ? (size_t)(e - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        const char *v = eq ? eq + 1 : p;
        const size_t vn = eq ? n - (size_t)(eq + 1 - p) : n;
        if (eq) {
            key = p;
            key_n = (size_t)(eq - p);
        }
        LOOM_CHECK(key != NULL, LOOM_ERR_CONFIG, "--lora: '%.*s' is not key=value (keys: r, alpha, dropout, targets, rslora)",
                   (int)n, p);
#define IS(k) (key_n == strlen(k) && !strncmp(key, k, key_n))
        LOOM_CHECK(eq || IS("targets"), LOOM_ERR_CONFIG, "--lora: '%.*s' is not key=value", (int)n, p);
        double x;
        if (IS("r")) {
            LOOM_CALL(parse_number("r", v, vn, 1, 4096, &x));
            LOOM_CHECK(x == floor(x), LOOM_ERR_CONFIG, "--lora: r must be a whole number");
            c.r = (int)x;
        } else if (IS("alpha")) {
            LOOM_CALL(parse_number("alpha", v, vn, 1e-6, 1e6, &c.alpha));
        } else if (IS("dropout")) {
            LOOM_CALL(parse_number("dropout", v, vn, 0, 0.95, &c.dropout));
        } else if (IS("rslora")) {
            LOOM_CALL(parse_number("rslora", v, vn, 0, 1, &x));
            c.rslora = x != 0;
        } else if (IS("targets")) {
            const int bits = role_bits(v, vn);
            LOOM_CHECK(bits != 0, LOOM_ERR_CONFIG,
                       "--lora: unknown target '%.*s' (roles: qkv, proj, fc or gate_up, down; groups: attn, mlp, all%s)",
                       (int)vn, v, vn == 4 && !strncmp(v, "head", 4) ? "; the head is not a target yet" : "");
            targets |= bits;
        } else {
            return loom_error_set(LOOM_ERR_CONFIG, __FILE__, __LINE__, __func__,
                                  "--lora: unknown key '%.*s' (keys: r, alpha, dropout, targets, rslora)", (int)key_n, key);
        }
#undef IS
        p += n;
        if (*p == ',') p++;
    }
    if (targets) c.targets = targets;
    if (c.alpha < 0) c.alpha = c.r; /* PEFT's default lora_alpha is 8 with r 8: scale 1 */
    *out = c;
    return LOOM_OK;
}

void loom_lora_config_format(const loom_lora_config *c, char *buf, size_t n) {
    static const char *const roles[] = {"qkv", "proj", "fc", "down"};
    int k = snprintf(buf, n, "r=%d,alpha=%.17g,dropout=%.17g,rslora=%d,targets=", c->r, c->alpha, c->dropout, c->rslora);
    const char *sep = "";
    for (int i = 0; i < 4 && k > 0 && (size_t)k < n; i++)
        if (c->targets & (1 << i)) {
            k += snprintf(buf + k, n - (size_t)k, "%s%s", sep, roles[i]);
            sep = ",";
        }
}

/* ---- the layout ---- */

static const char *piece_name(const loom_model *m, const lora_piece *pc, int index_in_role) {
    const int gpt = m->cfg.family == LOOM_FAMILY_GPT2;
    switch (pc->role) {
    case LORA_QKV: return gpt ? "attn.qkv" : (const char *[]){"attn.q", "attn.k", "attn.v"}[index_in_role];
    case LORA_PROJ: return "attn.proj";
    case LORA_FC: return gpt ? "mlp.fc" : (const char *[]){"mlp.gate", "mlp.up"}[index_in_role];
    default: return gpt ? "mlp.proj" : "mlp.down";
    }
}

/* an adapter tensor of d0 x d1 at *cur (64-byte aligned views); its view into infos when given */
static void add_adapter(loom_model *m, loom_param_info *infos, const char *name, int layer, int64_t d0, int64_t d1,
                        int64_t *cur, int64_t *off) {
    *off = *cur;
    *cur += (d0 * d1 + 15) / 16 * 16;
    if (!infos) return;
    loom_param_info *p = &infos[m->n_infos];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->offset = *off;
    p->ndim = 2;
    p->shape[0] = p->full_shape[0] = d0;
    p->shape[1] = p->full_shape[1] = d1;
    p->numel = d0 * d1;
    p->layer = layer;
    p->decay = 1; /* PEFT under the Hugging Face Trainer decays every weight that is not a bias or a norm */
    p->tp_split = LOOM_TP_REPLICATED;
    p->canon_offset = *off;
    p->seed_index = m->n_infos;
    m->n_infos++;
    m->n_params += p->numel;
}

/* The adapters of cfg over m's blocks: their pieces, scale and offsets (*size floats in all); with infos,
 * their views too (m->infos, m->n_infos, m->n_params) and the units' starts in m->unit_lo. */
static loom_status lora_plan(loom_model *m, const loom_lora_config *cfg, loom_param_info *infos,
                             struct lora_state **out, int64_t *size) {
    LOOM_CHECK(cfg->r >= 1 && cfg->alpha > 0 && cfg->dropout >= 0 && cfg->dropout < 1 && (cfg->targets & LOOM_LORA_ALL) &&
                   !(cfg->targets & ~LOOM_LORA_ALL), LOOM_ERR_CONFIG, "LoRA: r >= 1, alpha > 0, dropout in [0, 1) and a target");
    struct lora_state *s = calloc(1, sizeof *s);
    LOOM_CHECK(s != NULL, LOOM_ERR_NOMEM, "out of memory");
    *out = s;
    s->cfg = *cfg;
    s->scale = (float)(cfg->alpha / (cfg->rslora ? sqrt((double)cfg->r) : (double)cfg->r));
    const int gpt = m->cfg.family == LOOM_FAMILY_GPT2;
    const int64_t C = m->C, F = m->F, qd = m->H * m->hd, kvd = m->KV * m->hd;
    if (cfg->targets & LOOM_LORA_QKV) {
        if (gpt) s->pieces[s->n_pieces++] = (lora_piece){LORA_QKV, C, m->Cq, 0};
        else {
            s->pieces[s->n_pieces++] = (lora_piece){LORA_QKV, C, qd, 0};
            s->pieces[s->n_pieces++] = (lora_piece){LORA_QKV, C, kvd, qd};
            s->pieces[s->n_pieces++] = (lora_piece){LORA_QKV, C, kvd, qd + kvd};
        }
    }
    if (cfg->targets & LOOM_LORA_PROJ) s->pieces[s->n_pieces++] = (lora_piece){LORA_PROJ, qd, C, 0};
    if (cfg->targets & LOOM_LORA_FC) {
        s->pieces[s->n_pieces++] = (lora_piece){LORA_FC, C, F, 0};
        if (!gpt) s->pieces[s->n_pieces++] = (lora_piece){LORA_FC, C, F, F};
    }
    if (cfg->targets & LOOM_LORA_DOWN) s->pieces[s->n_pieces++] = (lora_piece){LORA_DOWN, F, C, 0};
    s->a_off = malloc((size_t)(m->L * s->n_pieces + 1) * sizeof(int64_t));
    s->b_off = malloc((size_t)(m->L * s->n_pieces + 1) * sizeof(int64_t));
    LOOM_CHECK(s->a_off && s->b_off, LOOM_ERR_NOMEM, "out of memory");
    /* the same units as the weights': the embedding's (empty), one per block, the head's (empty) */
    int64_t cur = 0;
    int u = 0;
    if (infos) m->unit_lo[u++] = 0;
    for (int64_t l = 0; l < m->L; l++) {
        if (infos) m->unit_lo[u++] = cur;
        int seen[LORA_N_ROLES] = {0};
        for (int i = 0; i < s->n_pieces; i++) {
            const lora_piece *pc = &s->pieces[i];
            const char *nm = piece_name(m, pc, seen[pc->role]++);
            char name[64];
            snprintf(name, sizeof name, "h.%lld.%s.lora_A", (long long)m->layer_g[l], nm);
            add_adapter(m, infos, name, (int)m->layer_g[l], cfg->r, pc->in, &cur, &s->a_off[l * s->n_pieces + i]);
            snprintf(name, sizeof name, "h.%lld.%s.lora_B", (long long)m->layer_g[l], nm);
            add_adapter(m, infos, name, (int)m->layer_g[l], pc->rows, cfg->r, &cur, &s->b_off[l * s->n_pieces + i]);
        }
    }
    if (infos) {
        m->unit_lo[u++] = cur;
        m->unit_lo[u] = cur;
        m->n_units = u;
    }
    *size = cur;
    return LOOM_OK;
}

static void free_state(struct lora_state *s, loom_model *m) {
    if (!s) return;
    if (s->own) loom_buf_free(m->be, m->mem, LOOM_MEM_PARAMS, s->own, s->own_bytes);
    free(s->a_off);
    free(s->b_off);
    free(s);
}

loom_status loom_lora_build(loom_model *m, const loom_lora_config *cfg) {
    LOOM_CHECK(m->tp_size == 1 && m->sp_size <= 1 && m->first && m->last && m->n_chunks == 1, LOOM_ERR_UNSUPPORTED,
               "LoRA runs without tensor, sequence or pipeline parallelism yet (data parallel and ZeRO 0-3 compose)");
    /* the whole model's layout becomes the frozen weights' */
    m->w_infos = m->infos;
    m->w_n_infos = m->n_infos;
    m->w_size = m->buf_size;
    m->w_n_params = m->n_params;
    free(m->row_blocks);
    const int cap = (int)m->L * 14; /* at most 7 adapters of 2 tensors a block */
    m->infos = calloc((size_t)(cap ? cap : 1), sizeof *m->infos);
    m->row_blocks = calloc((size_t)(cap ? cap : 1), sizeof *m->row_blocks);
    LOOM_CHECK(m->infos && m->row_blocks, LOOM_ERR_NOMEM, "out of memory");
    m->n_infos = 0;
    m->n_params = 0;
    int64_t size;
    LOOM_CALL(lora_plan(m, cfg, m->infos, &m->lora, &size));
    m->buf_size = m->canon_size = size;
    return LOOM_OK;
}

loom_status loom_model_add_adapter_set(loom_model *m, const loom_lora_config *cfg, const float *params, int64_t n,
                                       int *index) {
    LOOM_CHECK(!m->lora && !m->has_grads, LOOM_ERR_INVALID_ARG,
               "adapter sets go on an inference model without adapters of its own");
    LOOM_CHECK(m->n_sets < LOOM_MAX_ADAPTER_SETS, LOOM_ERR_CONFIG, "at most %d adapter sets", LOOM_MAX_ADAPTER_SETS);
    LOOM_CHECK(m->tp_size == 1 && m->n_chunks == 1 && m->first && m->last, LOOM_ERR_UNSUPPORTED,
               "adapter sets serve a whole model on one rank");
    struct lora_state *s = NULL;
    int64_t size = 0;
    loom_status st = lora_plan(m, cfg, NULL, &s, &size);
    if (st == LOOM_OK && n != size)
        st = loom_error_set(LOOM_ERR_MISMATCH, __FILE__, __LINE__, __func__,
                            "adapters of %lld floats, their LoRA config over this model needs %lld", (long long)n,
                            (long long)size);
    if (st == LOOM_OK) {
        s->own_bytes = (size_t)(size ? size : 1) * sizeof(float);
        st = loom_buf_alloc(m->be, m->mem, LOOM_MEM_PARAMS, s->own_bytes, (void **)&s->own);
    }
    if (st == LOOM_OK) st = loom_buf_upload(m->be, s->own, params, (size_t)size * sizeof(float));
    if (st != LOOM_OK) {
        free_state(s, m);
        return st;
    }
    m->sets[m->n_sets++] = s;
    *index = m->n_sets;
    return LOOM_OK;
}

int loom_model_num_adapter_sets(const loom_model *m) { return m->n_sets; }

void loom_lora_free_sets(loom_model *m) {
    for (int i = 0; i < m->n_sets; i++) free_state(m->sets[i], m);
    m->n_sets = 0;
    loom_buf_free(m->be, m->mem, LOOM_MEM_ACTS, m->set_u, m->set_u_bytes);
    m->set_u = NULL;
    m->set_u_bytes = 0;
}

void loom_lora_free(loom_model *m) {
    loom_lora_free_sets(m);
    if (!m->lora) return;
    loom_lora_release(m);
    free_state(m->lora, m);
    m->lora = NULL;
}

const loom_lora_config *loom_model_lora(const loom_model *m) { return m->lora ? &m->lora->cfg : NULL; }

double loom_model_train_flops_per_token(const loom_model *m, int64_t T) {
    double f = loom_model_config_flops_per_token(&m->cfg, T);
    if (m->lora) f += -2.0 * (double)loom_model_config_product_params(&m->cfg) + 6.0 * (double)m->n_params;
    return f;
}
float *loom_lora_dw_scratch(loom_model *m) { return m->lora->dw; }

void loom_lora_init_range(const loom_model *m, uint64_t seed, int64_t begin, int64_t end, float *dst) {
    memset(dst, 0, (size_t)(end - begin) * sizeof(float)); /* B and the padding: zero */
    for (int i = 0; i < m->n_infos; i++) {
        const loom_param_info *p = &m->infos[i];
        const size_t len = strlen(p->name);
        if (p->name[len - 1] != 'A') continue;
        const int64_t lo = p->offset > begin ? p->offset : begin;
        const int64_t hi = p->offset + p->numel < end ? p->offset + p->numel : end;
        if (lo >= hi) continue;
        const double bound = 1.0 / sqrt((double)p->shape[1]);
        loom_rng r;
        loom_rng_seed(&r, seed * 0x9e3779b97f4a7c15ull + 0x10a0ull + (uint64_t)p->seed_index);
        for (int64_t j = 0; j < hi - p->offset; j++) {
            const float v = (float)((2.0 * loom_rng_uniform(&r) - 1.0) * bound);
            if (j >= lo - p->offset) dst[p->offset + j - begin] = v;
        }
    }
}

/* ---- activations ---- */

static int64_t max_fan_in(const struct lora_state *s) {
    int64_t k = 0;
    for (int i = 0; i < s->n_pieces; i++) k = s->pieces[i].in > k ? s->pieces[i].in : k;
    return k;
}

loom_status loom_lora_reserve(loom_model *m, int64_t N) {
    struct lora_state *s = m->lora;
    if (!s || N <= s->cap_N) return LOOM_OK;
    loom_lora_release(m);
    const int64_t r = s->cfg.r, per = N * r;
    s->u_bytes = (size_t)(m->has_grads ? m->L * s->n_pieces * per : per) * sizeof(float);
    s->du_bytes = (size_t)per * sizeof(float);
    s->x_bytes = s->cfg.dropout > 0 ? (size_t)(N * max_fan_in(s)) * sizeof(float) : 0;
    LOOM_CHECK(!s->x_bytes || loom_backend_host_accessible(m->be), LOOM_ERR_UNSUPPORTED,
               "LoRA dropout runs on the CPU backend only yet (%s: use dropout=0)", loom_backend_name(m->be));
    LOOM_CALL(loom_buf_alloc(m->be, m->mem, LOOM_MEM_ACTS, s->u_bytes, (void **)&s->u));
    if (m->has_grads) {
        LOOM_CALL(loom_buf_alloc(m->be, m->mem, LOOM_MEM_ACTS, s->du_bytes, (void **)&s->du));
        LOOM_CALL(loom_buf_alloc(m->be, m->mem, LOOM_MEM_ACTS, (size_t)(2 * m->C) * sizeof(float), (void **)&s->dw));
    }
    if (s->x_bytes) {
        LOOM_CALL(loom_buf_alloc(m->be, m->mem, LOOM_MEM_ACTS, s->x_bytes, (void **)&s->xd));
        if (m->has_grads) LOOM_CALL(loom_buf_alloc(m->be, m->mem, LOOM_MEM_ACTS, s->x_bytes, (void **)&s->dxd));
    }
    s->cap_N = N;
    return LOOM_OK;
}

void loom_lora_release(loom_model *m) {
    struct lora_state *s = m->lora;
    if (!s) return;
    loom_buf_free(m->be, m->mem, LOOM_MEM_ACTS, s->u, s->u_bytes);
    loom_buf_free(m->be, m->mem, LOOM_MEM_ACTS, s->du, s->du_bytes);
    loom_buf_free(m->be, m->mem, LOOM_MEM_ACTS, s->xd, s->x_bytes);
    loom_buf_free(m->be, m->mem, LOOM_MEM_ACTS, s->dxd, s->x_bytes);
    loom_buf_free(m->be, m->mem, LOOM_MEM_ACTS, s->dw, (size_t)(2 * m->C) * sizeof(float));
    s->u = s->du = s->xd = s->dxd = s->dw = NULL;
    s->cap_N = 0;
}

/* ---- dropout ---- */

void loom_model_lora_seek(loom_model *m, uint64_t micro_batches) {
    if (m->lora) m->lora->micro = micro_batches;
}

void loom_lora_begin_micro(loom_model *m, int training) {
    if (!m->lora) return;
    m->lora->training = training;
    if (training) m->lora->micro++;
}

/* dropout is on in training's forward and backward, never while generating (a training model sampling) */
static int dropping(const loom_model *m) { return m->lora->training && m->lora->cfg.dropout > 0 && !loom_kv_decoding(m); }

/* SplitMix64's finaliser over (stream key, element): an independent uniform per element */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t mask_key(const loom_model *m, int64_t l, int piece) {
    const struct lora_state *s = m->lora;
    return mix64(s->micro * 0x9e3779b97f4a7c15ull ^ mix64((uint64_t)(m->layer_g[l] * MAX_PIECES + piece) + 0x1d0ull));
}

/* dst = src * mask / (1 - p), the mask's elements kept with probability 1 - p (host memory: the CPU backend) */
static void apply_mask(const loom_model *m, uint64_t key, const float *src, int64_t ld, int64_t N, int64_t n,
                       float *dst) {
    const double p = m->lora->cfg.dropout;
    const double keep = (1.0 - p) * 18446744073709551616.0; /* 2^64 (1 - p), clamped: p near 0 keeps all */
    const uint64_t keep_below = keep >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)keep;
    const float inv = (float)(1.0 / (1.0 - p));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < n; j++)
            dst[i * n + j] = mix64(key + (uint64_t)(i * n + j) * 0x9e3779b97f4a7c15ull) < keep_below ? src[i * ld + j] * inv : 0.0f;
}

/* the adapter's input: x itself, or its dropped-out copy in scratch */
static const float *adapter_input(loom_model *m, int64_t l, int i, const float *x, int64_t N) {
    struct lora_state *s = m->lora;
    if (!dropping(m)) return x;
    apply_mask(m, mask_key(m, l, i), x, s->pieces[i].in, N, s->pieces[i].in, s->xd);
    return s->xd;
}

/* ---- forward and backward ---- */

static float *u_of(const loom_model *m, int64_t l, int i, int64_t N) {
    const struct lora_state *s = m->lora;
    return m->has_grads ? s->u + (l * s->n_pieces + i) * N * s->cfg.r : s->u;
}

int loom_lora_has(const loom_model *m, int role) {
    for (int i = 0; m->lora && i < m->lora->n_pieces; i++)
        if (m->lora->pieces[i].role == role) return 1;
    return 0;
}

loom_status loom_lora_forward(loom_model *m, int64_t l, int role, const float *x, float *y, int64_t ldy, int64_t N,
                              float beta) {
    struct lora_state *s = m->lora;
    if (!s) return LOOM_OK;
    LOOM_CALL(loom_lora_reserve(m, N));
    const int64_t r = s->cfg.r;
    for (int i = 0; i < s->n_pieces; i++) {
        const lora_piece *pc = &s->pieces[i];
        if (pc->role != role) continue;
        const float *A = m->params + s->a_off[l * s->n_pieces + i], *B = m->params + s->b_off[l * s->n_pieces + i];
        float *u = u_of(m, l, i, N);
        const float *xd = adapter_input(m, l, i, x, N);
        LOOM_CALL(loom_k_matmul(m->be, &(loom_gemm){0, 1, N, r, pc->in, 1.0f, xd, pc->in, A, pc->in, 0.0f, u, r}));
        LOOM_CALL(loom_k_matmul(m->be, &(loom_gemm){0, 1, N, pc->rows, r, s->scale, u, r, B, r, beta, y + pc->col, ldy}));
    }
    return LOOM_OK;
}

loom_status loom_lora_backward(loom_model *m, int64_t l, int role, const float *x, const float *dy, int64_t ldy,
                               float *dx, float dx_beta, int64_t N, int acc) {
    struct lora_state *s = m->lora;
    if (!s) return LOOM_OK;
    const int64_t r = s->cfg.r;
    const float beta = acc ? 1.0f : 0.0f;
    for (int i = 0; i < s->n_pieces; i++) {
        const lora_piece *pc = &s->pieces[i];
        if (pc->role != role) continue;
        const int64_t ao = s->a_off[l * s->n_pieces + i], bo = s->b_off[l * s->n_pieces + i];
        const float *A = m->params + ao, *B = m->params + bo, *u = u_of(m, l, i, N), *g = dy + pc->col;
        LOOM_CALL(loom_k_matmul(m->be, &(loom_gemm){0, 0, N, r, pc->rows, s->scale, g, ldy, B, r, 0.0f, s->du, r}));
        LOOM_CALL(loom_k_matmul(m->be, &(loom_gemm){1, 0, pc->rows, r, N, s->scale, g, ldy, u, r, beta, m->grads + bo, r}));
        const float *xd = adapter_input(m, l, i, x, N);
        LOOM_CALL(loom_k_matmul(m->be, &(loom_gemm){1, 0, r, pc->in, N, 1.0f, s->du, r, xd, pc->in, beta, m->grads + ao, pc->in}));
        if (!dropping(m)) {
            LOOM_CALL(loom_k_matmul(m->be, &(loom_gemm){0, 0, N, pc->in, r, 1.0f, s->du, r, A, pc->in, dx_beta, dx, pc->in}));
        } else {
            LOOM_CALL(loom_k_matmul(m->be, &(loom_gemm){0, 0, N, pc->in, r, 1.0f, s->du, r, A, pc->in, 0.0f, s->dxd, pc->in}));
            apply_mask(m, mask_key(m, l, i), s->dxd, pc->in, N, pc->in, s->dxd);
            for (int64_t k = 0; k < N * pc->in; k++) dx[k] = s->dxd[k] + (dx_beta != 0.0f ? dx[k] : 0.0f);
        }
        dx_beta = 1.0f; /* the role's next adapters add to it */
    }
    return LOOM_OK;
}

/* ---- merging ---- */

loom_status loom_model_lora_merged(loom_model *m, float *dst) {
    struct lora_state *s = m->lora;
    LOOM_CHECK(s != NULL, LOOM_ERR_INVALID_ARG, "the model has no LoRA adapters to merge");
    LOOM_CHECK(m->w_resident < 0, LOOM_ERR_UNSUPPORTED, "a bf16-held base cannot be merged in fp32 (load it in fp32)");
    loom_backend *be = m->be;
    LOOM_CALL(loom_buf_download(be, dst, m->w, (size_t)m->w_size * sizeof(float)));
    float *ad = malloc((size_t)(m->buf_size ? m->buf_size : 1) * sizeof(float));
    LOOM_CHECK(ad != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_status st = loom_buf_download(be, ad, m->params, (size_t)m->buf_size * sizeof(float));
    const int64_t r = s->cfg.r;
    for (int64_t l = 0; st == LOOM_OK && l < m->L; l++)
        for (int i = 0; i < s->n_pieces; i++) {
            const lora_piece *pc = &s->pieces[i];
            static const int weight_of[LORA_N_ROLES] = {W_QKV_W, W_ATTN_PROJ_W, W_FC_W, W_MLP_PROJ_W};
            float *W = dst + m->layer_off[l * W_COUNT + weight_of[pc->role]] + pc->col * pc->in; /* its rows */
            const float *A = ad + s->a_off[l * s->n_pieces + i], *B = ad + s->b_off[l * s->n_pieces + i];
            /* W[o, k] += scale * sum_j B[o, j] A[j, k], in double: the merged weights round once */
#pragma omp parallel for schedule(static)
            for (int64_t o = 0; o < pc->rows; o++)
                for (int64_t k = 0; k < pc->in; k++) {
                    double acc = 0.0;
                    for (int64_t j = 0; j < r; j++) acc += (double)B[o * r + j] * (double)A[j * pc->in + k];
                    W[o * pc->in + k] = (float)((double)W[o * pc->in + k] + (double)s->scale * acc);
                }
        }
    free(ad);
    return st;
}

/* ---- serving: adapter sets, segment by segment ---- */

loom_status loom_lora_forward_sets(loom_model *m, int64_t l, int role, const float *x, float *y, int64_t ldy) {
    if (!m->n_sets || !loom_kv_decoding(m)) return LOOM_OK;
    const int64_t n_segs = loom_kv_num_segments(m);
    for (int64_t g = 0; g < n_segs;) {
        int64_t row0, n, r0b, nb;
        int k, kb;
        loom_kv_segment_rows(m, g, &row0, &n, &k);
        /* the following segments of the same set, rows contiguous: one product for them all */
        for (g++; g < n_segs; g++) {
            loom_kv_segment_rows(m, g, &r0b, &nb, &kb);
            if (kb != k || r0b != row0 + n) break;
            n += nb;
        }
        if (k == 0) continue;
        const struct lora_state *s = m->sets[k - 1];
        const int64_t r = s->cfg.r;
        if ((size_t)(n * r) * sizeof(float) > m->set_u_bytes) {
            loom_buf_free(m->be, m->mem, LOOM_MEM_ACTS, m->set_u, m->set_u_bytes);
            m->set_u = NULL;
            m->set_u_bytes = (size_t)(n * r) * sizeof(float);
            LOOM_CALL(loom_buf_alloc(m->be, m->mem, LOOM_MEM_ACTS, m->set_u_bytes, (void **)&m->set_u));
        }
        for (int i = 0; i < s->n_pieces; i++) {
            const lora_piece *pc = &s->pieces[i];
            if (pc->role != role) continue;
            const float *A = s->own + s->a_off[l * s->n_pieces + i], *B = s->own + s->b_off[l * s->n_pieces + i];
            LOOM_CALL(loom_k_matmul(m->be, &(loom_gemm){0, 1, n, r, pc->in, 1.0f, x + row0 * pc->in, pc->in, A, pc->in,
                                                        0.0f, m->set_u, r}));
            LOOM_CALL(loom_k_matmul(m->be, &(loom_gemm){0, 1, n, pc->rows, r, s->scale, m->set_u, r, B, r, 1.0f,
                                                        y + row0 * ldy + pc->col, ldy}));
        }
    }
    return LOOM_OK;
}
