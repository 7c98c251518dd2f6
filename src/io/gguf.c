/* GGUF export (include/loom/gguf.h, docs/FORMATS-gguf.md): the header (metadata and tensor descriptions) is
 * built in memory, then the tensors are converted one at a time and streamed after it into a temporary
 * file that is renamed into place. */
#define _DEFAULT_SOURCE /* fsync */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/gguf.h"
#include "loom/tensor.h"

enum { GGUF_VERSION = 3, GGUF_ALIGN = 32 };
enum { T_U32 = 4, T_I32 = 5, T_F32 = 6, T_BOOL = 7, T_STR = 8, T_ARR = 9 }; /* metadata value types */
enum { TOKEN_NORMAL = 1, TOKEN_CONTROL = 3 };

loom_gguf_options loom_gguf_options_default(void) { return (loom_gguf_options){.dtype = LOOM_GGUF_F32, .name = "loom"}; }

/* ---- a growing byte buffer ---- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int failed;
} gbuf;

static void put(gbuf *b, const void *x, size_t n) {
    if (b->failed) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, x, n);
    b->n += n;
}
static void put_u32(gbuf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(gbuf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(gbuf *b, const char *s, size_t n) {
    put_u64(b, n);
    put(b, s, n);
}

/* metadata pairs: key, type, value */
static void kv_str(gbuf *b, const char *k, const char *v) {
    put_str(b, k, strlen(k));
    put_u32(b, T_STR);
    put_str(b, v, strlen(v));
}
static void kv_u32(gbuf *b, const char *k, uint32_t v) {
    put_str(b, k, strlen(k));
    put_u32(b, T_U32);
    put_u32(b, v);
}
static void kv_f32(gbuf *b, const char *k, float v) {
    put_str(b, k, strlen(k));
    put_u32(b, T_F32);
    put(b, &v, 4);
}
static void kv_bool(gbuf *b, const char *k, int v) {
    put_str(b, k, strlen(k));
    put_u32(b, T_BOOL);
    const uint8_t x = (uint8_t)(v != 0);
    put(b, &x, 1);
}
static void kv_array(gbuf *b, const char *k, uint32_t elem_type, uint64_t n) { /* the elements follow */
    put_str(b, k, strlen(k));
    put_u32(b, T_ARR);
    put_u32(b, elem_type);
    put_u64(b, n);
}

/* ---- the tokenizer as llama.cpp's "gpt2" BPE: tokens spelled in GPT-2's byte-to-unicode alphabet ---- */

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for 256, 257, ... in order */
static uint32_t byte_char(uint8_t c) {
    if ((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174) return c;
    uint32_t n = 0;
    for (uint32_t x = 0; x < c; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) n++;
    return 256 + n;
}

static void put_utf8(gbuf *b, uint32_t cp) {
    uint8_t u[2];
    if (cp < 0x80) {
        u[0] = (uint8_t)cp;
        put(b, u, 1);
    } else { /* byte_char is below 0x800 */
        u[0] = (uint8_t)(0xC0 | (cp >> 6));
        u[1] = (uint8_t)(0x80 | (cp & 0x3F));
        put(b, u, 2);
    }
}

/* token id's text: a special token as its own text, others byte by byte in the unicode alphabet */
static void token_text(gbuf *b, const loom_tokenizer *t, int32_t id) {
    size_t len = 0;
    const char *s = loom_tokenizer_token_bytes(t, id, &len);
    if (loom_tokenizer_is_special(t, id)) {
        put(b, s, len);
        return;
    }
    for (size_t i = 0; i < len; i++) put_utf8(b, byte_char((uint8_t)s[i]));
}

static loom_status put_tokenizer(gbuf *h, const loom_tokenizer *t, int64_t model_vocab, uint64_t *n_kv) {
    LOOM_CHECK(loom_tokenizer_is_byte_level(t), LOOM_ERR_UNSUPPORTED,
               "GGUF export needs a byte-level tokenizer (gpt2, a trained BPE or byte); a char tokenizer has no "
               "llama.cpp equivalent");
    const int64_t V = loom_tokenizer_vocab_size(t);
    LOOM_CHECK(V <= model_vocab, LOOM_ERR_MISMATCH, "the tokenizer has %lld tokens, the model only %lld",
               (long long)V, (long long)model_vocab);
    int32_t *merges = NULL;
    int64_t n_merges = 0;
    LOOM_CALL(loom_tokenizer_merges(t, &merges, &n_merges));
    kv_str(h, "tokenizer.ggml.model", "gpt2");
    kv_str(h, "tokenizer.ggml.pre", "gpt-2");
    /* the model's rows past the tokenizer's (a vocabulary padded for speed) get placeholder tokens */
    kv_array(h, "tokenizer.ggml.tokens", T_STR, (uint64_t)model_vocab);
    gbuf tx = {0};
    for (int64_t id = 0; id < model_vocab; id++) {
        tx.n = 0;
        if (id < V) token_text(&tx, t, (int32_t)id);
        else {
            char pad[32];
            put(&tx, pad, (size_t)snprintf(pad, sizeof pad, "[PAD%lld]", (long long)id));
        }
        put_str(h, (const char *)tx.p, tx.n);
    }
    kv_array(h, "tokenizer.ggml.token_type", T_I32, (uint64_t)model_vocab);
    for (int64_t id = 0; id < model_vocab; id++) {
        const int32_t ty = id >= V || loom_tokenizer_is_special(t, (int32_t)id) ? TOKEN_CONTROL : TOKEN_NORMAL;
        put(h, &ty, 4);
    }
    kv_array(h, "tokenizer.ggml.merges", T_STR, (uint64_t)n_merges);
    for (int64_t i = 0; i < n_merges; i++) {
        tx.n = 0;
        token_text(&tx, t, merges[2 * i]);
        put(&tx, " ", 1);
        token_text(&tx, t, merges[2 * i + 1]);
        put_str(h, (const char *)tx.p, tx.n);
    }
    const int fail = tx.failed;
    free(tx.p);
    free(merges);
    LOOM_CHECK(!fail, LOOM_ERR_NOMEM, "out of memory for the tokenizer's tokens");
    *n_kv += 5;
    const int32_t eot = loom_tokenizer_eot(t);
    if (eot >= 0) {
        kv_u32(h, "tokenizer.ggml.bos_token_id", (uint32_t)eot);
        kv_u32(h, "tokenizer.ggml.eos_token_id", (uint32_t)eot);
        *n_kv += 2;
    }
    kv_bool(h, "tokenizer.ggml.add_bos_token", 0); /* loom's models see no begin token */
    *n_kv += 1;
    return LOOM_OK;
}

/* ---- tensors: llama.cpp's names for loom's views ---- */

typedef struct {
    char name[64];
    const float *src;    /* rows x cols floats; NULL: zeros (a gpt2 bias loom's model does not have) */
    int64_t rows, cols;
    int64_t rope_heads;  /* > 0: q or k rows of that many heads, reordered to GGML's rotary pairs */
    loom_gguf_dtype type;
} gtensor;

static size_t type_size(loom_gguf_dtype t) { return t == LOOM_GGUF_F32 ? 4 : 2; }
static uint64_t align_up(uint64_t x) { return (x + GGUF_ALIGN - 1) / GGUF_ALIGN * GGUF_ALIGN; }

typedef struct {
    gtensor *t;
    int n, cap;
    loom_gguf_dtype dtype;
    int failed;
} tlist;

static void add(tlist *l, const char *name, const float *src, int64_t rows, int64_t cols, int64_t rope_heads) {
    if (l->n == l->cap) {
        const int cap = l->cap ? 2 * l->cap : 64;
        gtensor *q = realloc(l->t, (size_t)cap * sizeof *q);
        if (!q) {
            l->failed = 1;
            return;
        }
        l->t = q;
        l->cap = cap;
    }
    gtensor *g = &l->t[l->n++];
    snprintf(g->name, sizeof g->name, "%s", name);
    g->src = src;
    g->rows = rows;
    g->cols = cols;
    g->rope_heads = rope_heads;
    g->type = rows > 1 ? l->dtype : LOOM_GGUF_F32; /* vectors stay F32, as llama.cpp's converter keeps them */
}

/* the view `name` of m: its data, rows and columns (a vector: 1 x n); NULL if the model has none */
static const float *view(loom_model *m, const char *name, int64_t *rows, int64_t *cols) {
    const loom_param_info *p = loom_model_find_param(m, name);
    if (!p) return NULL;
    *rows = p->ndim == 2 ? p->shape[0] : 1;
    *cols = p->ndim == 2 ? p->shape[1] : p->shape[0];
    return loom_model_params(m) + p->offset;
}

/* one view under a llama.cpp name; gpt2's absent biases as zeros of width `zero_cols` */
static void add_view(tlist *l, loom_model *m, const char *loom_name, const char *gguf_name, int64_t zero_cols) {
    int64_t r = 0, c = 0;
    const float *src = view(m, loom_name, &r, &c);
    if (src) add(l, gguf_name, src, r, c, 0);
    else if (zero_cols > 0) add(l, gguf_name, NULL, 1, zero_cols, 0);
}

static loom_status build_tensors(loom_model *m, tlist *l) {
    const loom_model_config *c = loom_model_get_config(m);
    const int gpt = c->family == LOOM_FAMILY_GPT2;
    const int64_t C = c->d_model, hd = C / c->n_head, F = c->d_ff;
    char ln[64], gn[64];
    int64_t r = 0, cols = 0;
    add_view(l, m, "wte", "token_embd.weight", 0);
    if (gpt) add_view(l, m, "wpe", "position_embd.weight", 0);
    for (int64_t i = 0; i < c->n_layer; i++) {
#define MAP(loom_suffix, gguf_suffix, zeros)                                       \
    do {                                                                           \
        snprintf(ln, sizeof ln, "h.%lld.%s", (long long)i, loom_suffix);           \
        snprintf(gn, sizeof gn, "blk.%lld.%s", (long long)i, gguf_suffix);         \
        add_view(l, m, ln, gn, zeros);                                             \
    } while (0)
        if (gpt) {
            MAP("ln_1.weight", "attn_norm.weight", 0);
            MAP("ln_1.bias", "attn_norm.bias", C);
            MAP("attn.qkv.weight", "attn_qkv.weight", 0);
            MAP("attn.qkv.bias", "attn_qkv.bias", 3 * C);
            MAP("attn.proj.weight", "attn_output.weight", 0);
            MAP("attn.proj.bias", "attn_output.bias", C);
            MAP("ln_2.weight", "ffn_norm.weight", 0);
            MAP("ln_2.bias", "ffn_norm.bias", C);
            MAP("mlp.fc.weight", "ffn_up.weight", 0);
            MAP("mlp.fc.bias", "ffn_up.bias", F);
            MAP("mlp.proj.weight", "ffn_down.weight", 0);
            MAP("mlp.proj.bias", "ffn_down.bias", C);
            continue;
        }
        MAP("attn_norm.weight", "attn_norm.weight", 0);
        /* the fused q|k|v and gate|up rows split into llama.cpp's separate tensors */
        static const char *const qkv[3] = {"attn_q", "attn_k", "attn_v"};
        const int64_t qkv_rows[3] = {c->n_head * hd, c->n_kv_head * hd, c->n_kv_head * hd};
        const int64_t heads[3] = {c->n_head, c->n_kv_head, 0};
        for (int w = 0; w < 2; w++) { /* weight, then bias */
            snprintf(ln, sizeof ln, "h.%lld.attn.qkv.%s", (long long)i, w ? "bias" : "weight");
            const float *src = view(m, ln, &r, &cols);
            if (!src) continue;
            if (w) cols = 1; /* a bias: one column per row */
            for (int k = 0, r0 = 0; k < 3; r0 += (int)qkv_rows[k], k++) {
                snprintf(gn, sizeof gn, "blk.%lld.%s.%s", (long long)i, qkv[k], w ? "bias" : "weight");
                if (w) add(l, gn, src + r0, 1, qkv_rows[k], 0);
                else add(l, gn, src + r0 * cols, qkv_rows[k], cols, heads[k]);
                if (w) l->t[l->n - 1].rope_heads = heads[k]; /* the bias rows move with their weight rows */
            }
        }
        MAP("attn.proj.weight", "attn_output.weight", 0);
        MAP("attn.proj.bias", "attn_output.bias", 0);
        MAP("mlp_norm.weight", "ffn_norm.weight", 0);
        snprintf(ln, sizeof ln, "h.%lld.mlp.gate_up.weight", (long long)i);
        const float *gu = view(m, ln, &r, &cols);
        if (gu) {
            snprintf(gn, sizeof gn, "blk.%lld.ffn_gate.weight", (long long)i);
            add(l, gn, gu, F, cols, 0);
            snprintf(gn, sizeof gn, "blk.%lld.ffn_up.weight", (long long)i);
            add(l, gn, gu + F * cols, F, cols, 0);
        }
        MAP("mlp.down.weight", "ffn_down.weight", 0);
#undef MAP
    }
    add_view(l, m, gpt ? "ln_f.weight" : "norm_f.weight", "output_norm.weight", 0);
    if (gpt) add_view(l, m, "ln_f.bias", "output_norm.bias", C);
    /* the head: its own, or the tied embedding written again (llama.cpp reads output.weight) */
    if (loom_model_find_param(m, "lm_head.weight")) add_view(l, m, "lm_head.weight", "output.weight", 0);
    else add_view(l, m, "wte", "output.weight", 0);
    LOOM_CHECK(!l->failed, LOOM_ERR_NOMEM, "out of memory");
    return LOOM_OK;
}

/* tensor g's bytes into dst: rows reordered for rotary heads (row 2i <- i, 2i+1 <- i + hd/2 in each head) */
static void convert(const gtensor *g, uint8_t *dst) {
    const int vec_rope = g->rope_heads > 0 && g->rows == 1; /* a q or k bias: its elements are the rows */
    const int64_t units = vec_rope ? g->cols : g->rows, width = vec_rope ? 1 : g->cols;
    const int64_t hd = g->rope_heads > 0 ? units / g->rope_heads : 0;
    for (int64_t u = 0; u < units; u++) {
        int64_t from = u;
        if (hd > 0) {
            const int64_t head = u / hd, j = u % hd;
            from = head * hd + (j % 2 ? hd / 2 + j / 2 : j / 2);
        }
        for (int64_t k = 0; k < width; k++) {
            const int64_t at = u * width + k;
            const float v = g->src ? g->src[from * width + k] : 0.0f;
            if (g->type == LOOM_GGUF_F32) memcpy(dst + 4 * at, &v, 4);
            else {
                const uint16_t h = g->type == LOOM_GGUF_F16 ? loom_f32_to_f16(v) : loom_f32_to_bf16(v);
                memcpy(dst + 2 * at, &h, 2);
            }
        }
    }
}

static void put_metadata(gbuf *h, const loom_model_config *c, const char *name, uint64_t *n_kv) {
    const int gpt = c->family == LOOM_FAMILY_GPT2;
    const char *arch = gpt ? "gpt2" : "llama";
    char k[96];
#define KEY(suffix) (snprintf(k, sizeof k, "%s.%s", arch, suffix), k)
    kv_str(h, "general.architecture", arch);
    kv_str(h, "general.name", name);
    kv_u32(h, "general.alignment", GGUF_ALIGN);
    kv_u32(h, KEY("context_length"), (uint32_t)c->max_seq_len);
    kv_u32(h, KEY("embedding_length"), (uint32_t)c->d_model);
    kv_u32(h, KEY("feed_forward_length"), (uint32_t)c->d_ff);
    kv_u32(h, KEY("block_count"), (uint32_t)c->n_layer);
    kv_u32(h, KEY("attention.head_count"), (uint32_t)c->n_head);
    *n_kv += 8;
    if (gpt) {
        kv_f32(h, KEY("attention.layer_norm_epsilon"), (float)c->norm_eps);
        *n_kv += 1;
    } else {
        kv_u32(h, KEY("attention.head_count_kv"), (uint32_t)c->n_kv_head);
        kv_f32(h, KEY("attention.layer_norm_rms_epsilon"), (float)c->norm_eps);
        kv_f32(h, KEY("rope.freq_base"), (float)c->rope_theta);
        kv_u32(h, KEY("rope.dimension_count"), (uint32_t)(c->d_model / c->n_head));
        kv_u32(h, KEY("vocab_size"), (uint32_t)c->vocab_size);
        *n_kv += 5;
    }
#undef KEY
}

static loom_status write_file(const char *path, const gbuf *head, const tlist *l) {
    const size_t plen = strlen(path) + 16;
    char *tmp = malloc(plen);
    LOOM_CHECK(tmp != NULL, LOOM_ERR_NOMEM, "out of memory");
    snprintf(tmp, plen, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        const loom_status st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", tmp,
                                              strerror(errno));
        free(tmp);
        return st;
    }
    static const uint8_t zeros[GGUF_ALIGN];
    uint64_t at = align_up(head->n);
    int ok = fwrite(head->p, 1, head->n, f) == head->n && fwrite(zeros, 1, at - head->n, f) == at - head->n;
    size_t cap = 0;
    uint8_t *buf = NULL;
    for (int i = 0; ok && i < l->n; i++) {
        const gtensor *g = &l->t[i];
        const size_t bytes = (size_t)(g->rows * g->cols) * type_size(g->type), padded = align_up(bytes);
        if (padded > cap) {
            free(buf);
            cap = padded;
            buf = malloc(cap);
            if (!buf) break;
        }
        memset(buf + bytes, 0, padded - bytes);
        convert(g, buf);
        ok = fwrite(buf, 1, padded, f) == padded;
    }
    const int err = errno;
    ok = ok && buf != NULL && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    free(buf);
    if (!ok || rename(tmp, path) != 0) {
        const loom_status st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot write %s: %s", path,
                                              strerror(errno ? errno : err));
        unlink(tmp);
        free(tmp);
        return st;
    }
    free(tmp);
    return LOOM_OK;
}

loom_status loom_gguf_write(loom_model *m, const loom_tokenizer *tok, const char *path, const loom_gguf_options *opt) {
    const loom_gguf_options o = opt ? *opt : loom_gguf_options_default();
    const loom_model_config *c = loom_model_get_config(m);
    LOOM_CHECK(o.dtype == LOOM_GGUF_F32 || o.dtype == LOOM_GGUF_F16 || o.dtype == LOOM_GGUF_BF16, LOOM_ERR_INVALID_ARG,
               "GGUF dtype must be f32, f16 or bf16");
    LOOM_CHECK(c->family == LOOM_FAMILY_LLAMA || c->gelu == LOOM_GELU_TANH, LOOM_ERR_UNSUPPORTED,
               "llama.cpp's gpt2 architecture uses the tanh GELU; this model uses the exact (erf) one");
    tlist l = {.dtype = o.dtype};
    gbuf h = {0};
    loom_status st = build_tensors(m, &l);
    if (st == LOOM_OK) {
        uint64_t n_kv = 0;
        gbuf meta = {0};
        put_metadata(&meta, c, o.name ? o.name : "loom", &n_kv);
        st = put_tokenizer(&meta, tok, c->vocab_size, &n_kv);
        put(&h, "GGUF", 4);
        put_u32(&h, GGUF_VERSION);
        put_u64(&h, (uint64_t)l.n);
        put_u64(&h, n_kv);
        put(&h, meta.p, meta.n);
        h.failed |= meta.failed;
        free(meta.p);
        uint64_t off = 0;
        for (int i = 0; i < l.n; i++) { /* name, dims (innermost first), type, offset in the data area */
            const gtensor *g = &l.t[i];
            put_str(&h, g->name, strlen(g->name));
            put_u32(&h, g->rows > 1 ? 2 : 1);
            put_u64(&h, (uint64_t)g->cols);
            if (g->rows > 1) put_u64(&h, (uint64_t)g->rows);
            put_u32(&h, (uint32_t)g->type);
            put_u64(&h, off);
            off += align_up((uint64_t)(g->rows * g->cols) * type_size(g->type));
        }
        if (st == LOOM_OK && h.failed) st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    if (st == LOOM_OK) st = write_file(path, &h, &l);
    free(h.p);
    free(l.t);
    return st;
}
