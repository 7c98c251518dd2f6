/* Token shard headers and the dataset manifest (dataset.json): encode, decode, validate
 * (include/loom/data.h; the format is docs/FORMATS-data.md). Everything here works on bytes in memory, so
 * the fuzz test (tests/fuzz_shard.c) drives exactly the code the loader runs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/crc32c.h"
#include "loom/data.h"
#include "loom/json.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token shards hold little-endian tokens that loom reads in place: a big-endian host needs a byte swap here"
#endif

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }
static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t token_at(const unsigned char *tok, uint32_t width, size_t i) {
    return width == 2 ? (uint32_t)tok[2 * i] | (uint32_t)tok[2 * i + 1] << 8 : get_u32(tok + 4 * i);
}

/* Header layout (64 bytes; docs/FORMATS-data.md):
 *  0 magic[8]  8 version  12 header_bytes  16 token_bytes  20 data_crc32c  24 n_tokens(u64)
 * 32 vocab_size(u64)  40 split  44 index  48 first_token(u64)  56 flags(u32; was reserved, zero)  60 header_crc32c */
void loom_shard_header_encode(const loom_shard_header *h, unsigned char out[LOOM_SHARD_HEADER_BYTES]) {
    memset(out, 0, LOOM_SHARD_HEADER_BYTES);
    memcpy(out, LOOM_SHARD_MAGIC, 8);
    put_u32(out + 8, h->version);
    put_u32(out + 12, LOOM_SHARD_HEADER_BYTES);
    put_u32(out + 16, h->token_bytes);
    put_u32(out + 20, h->data_crc32c);
    put_u64(out + 24, (uint64_t)h->n_tokens);
    put_u64(out + 32, (uint64_t)h->vocab_size);
    put_u32(out + 40, h->split);
    put_u32(out + 44, h->index);
    put_u64(out + 48, (uint64_t)h->first_token);
    put_u32(out + 56, h->flags);
    put_u32(out + 60, loom_crc32c(0, out, 60));
}

loom_status loom_shard_header_decode(const void *file, size_t size, const char *name, loom_shard_header *out) {
    const unsigned char *p = file;
    memset(out, 0, sizeof *out);
    LOOM_CHECK(size >= LOOM_SHARD_HEADER_BYTES, LOOM_ERR_FORMAT,
               "shard %s: %zu bytes, shorter than the %d-byte header (truncated)", name, size,
               LOOM_SHARD_HEADER_BYTES);
    LOOM_CHECK(memcmp(p, LOOM_SHARD_MAGIC, 8) == 0, LOOM_ERR_FORMAT,
               "shard %s: not a loom token shard (bad magic; expected \"%s\")", name, LOOM_SHARD_MAGIC);
    uint32_t version = get_u32(p + 8), hbytes = get_u32(p + 12), width = get_u32(p + 16);
    LOOM_CHECK(version == LOOM_SHARD_VERSION, LOOM_ERR_FORMAT,
               "shard %s: format version %u, this loom reads version %u", name, version, LOOM_SHARD_VERSION);
    LOOM_CHECK(hbytes == LOOM_SHARD_HEADER_BYTES, LOOM_ERR_FORMAT, "shard %s: header size %u, expected %d", name,
               hbytes, LOOM_SHARD_HEADER_BYTES);
    LOOM_CHECK(width == 2 || width == 4, LOOM_ERR_FORMAT, "shard %s: token width %u bytes, expected 2 or 4", name,
               width);
    uint64_t n = get_u64(p + 24), avail = (uint64_t)(size - LOOM_SHARD_HEADER_BYTES);
    /* size first: a truncated file or a lying count is named as such, before the header checksum */
    LOOM_CHECK(n <= avail / width && n * width == avail, LOOM_ERR_FORMAT,
               "shard %s: header says %llu tokens (%llu bytes) but the file holds %llu bytes of tokens "
               "(truncated, or the header is corrupt)",
               name, (unsigned long long)n, n <= UINT64_MAX / width ? (unsigned long long)(n * width) : ~0ull,
               (unsigned long long)avail);
    uint32_t hcrc = get_u32(p + 60), want = loom_crc32c(0, p, 60);
    LOOM_CHECK(hcrc == want, LOOM_ERR_CHECKSUM,
               "shard %s: header checksum mismatch (stored %08x, computed %08x): the header is corrupt", name, hcrc,
               want);
    const uint32_t flags = get_u32(p + 56);
    LOOM_CHECK((flags & ~LOOM_SHARD_LOSS_MASK) == 0 && (!flags || width == 4), LOOM_ERR_FORMAT,
               "shard %s: header flags %08x (known: 1, a loss mask on 4-byte tokens)", name, flags);
    uint64_t vocab = get_u64(p + 32), first = get_u64(p + 48);
    uint32_t split = get_u32(p + 40);
    LOOM_CHECK(vocab >= 1 && vocab <= (width == 2 ? 65536u : (uint64_t)INT32_MAX), LOOM_ERR_FORMAT,
               "shard %s: vocabulary size %llu does not fit %u-byte tokens", name, (unsigned long long)vocab, width);
    LOOM_CHECK(split <= 1, LOOM_ERR_FORMAT, "shard %s: split %u, expected 0 (train) or 1 (val)", name, split);
    LOOM_CHECK(first <= (uint64_t)INT64_MAX - n, LOOM_ERR_FORMAT, "shard %s: first token position %llu out of range",
               name, (unsigned long long)first);
    out->version = version;
    out->token_bytes = width;
    out->data_crc32c = get_u32(p + 20);
    out->split = split;
    out->index = get_u32(p + 44);
    out->n_tokens = (int64_t)n;
    out->vocab_size = (int64_t)vocab;
    out->first_token = (int64_t)first;
    out->flags = flags;
    return LOOM_OK;
}

loom_status loom_shard_check_tokens(const void *file, const loom_shard_header *h, const char *name) {
    const unsigned char *tok = (const unsigned char *)file + LOOM_SHARD_HEADER_BYTES;
    const size_t nbytes = (size_t)h->n_tokens * h->token_bytes;
    /* blocks of 1 MiB: the checksum and the range check read each block once while it is in cache; a
     * damaged shard is reported as such (checksum) before any out-of-range token it may hold */
    const size_t block = (size_t)1 << 20;
    uint32_t crc = 0;
    int64_t bad_at = -1;
    for (size_t at = 0; at < nbytes; at += block) {
        size_t len = nbytes - at < block ? nbytes - at : block;
        crc = loom_crc32c(crc, tok + at, len);
        if (bad_at >= 0) continue;
        uint32_t mx = 0;
        size_t k = len / h->token_bytes;
        if (h->token_bytes == 2) {
            const uint16_t *t = (const uint16_t *)(const void *)(tok + at);
            for (size_t i = 0; i < k; i++) mx = t[i] > mx ? t[i] : mx;
        } else {
            const uint32_t *t = (const uint32_t *)(const void *)(tok + at);
            const uint32_t id = h->flags & LOOM_SHARD_LOSS_MASK ? ~LOOM_TOKEN_NO_LOSS : ~0u;
            for (size_t i = 0; i < k; i++) mx = (t[i] & id) > mx ? (t[i] & id) : mx;
        }
        if ((int64_t)mx >= h->vocab_size) /* find the first offender for the message */
            for (size_t i = 0; i < k && bad_at < 0; i++)
                if ((int64_t)(token_at(tok + at, h->token_bytes, i) & ~LOOM_TOKEN_NO_LOSS) >= h->vocab_size)
                    bad_at = (int64_t)(at / h->token_bytes + i);
    }
    LOOM_CHECK(crc == h->data_crc32c, LOOM_ERR_CHECKSUM,
               "shard %s: token data checksum mismatch (header %08x, computed %08x): the shard is corrupt", name,
               h->data_crc32c, crc);
    LOOM_CHECK(bad_at < 0, LOOM_ERR_FORMAT, "shard %s: token %u at position %lld is outside the vocabulary of %lld",
               name, bad_at < 0 ? 0u : token_at(tok, h->token_bytes, (size_t)bad_at), (long long)bad_at,
               (long long)h->vocab_size);
    return LOOM_OK;
}

int64_t loom_data_split_point(int64_t n, double val_fraction) {
    if (n <= 0) return 0;
    double x = floor((double)n * (1.0 - val_fraction));
    if (x < 0) return 0;
    if (x > (double)n) return n;
    return (int64_t)x;
}

/* ---- dataset.json ---- */

/* A member that must be an integer in [lo, hi]. */
static loom_status get_int(const loom_json *obj, const char *key, const char *where, const char *name, double lo,
                           double hi, int64_t *out) {
    const loom_json *v = loom_json_get(obj, key);
    LOOM_CHECK(v != NULL, LOOM_ERR_FORMAT, "%s: %s has no \"%s\"", name, where, key);
    LOOM_CHECK(v->type == LOOM_JSON_NUMBER, LOOM_ERR_FORMAT, "%s: %s.%s is a %s, expected an integer", name, where,
               key, loom_json_type_name(v->type));
    LOOM_CHECK(v->number == floor(v->number) && v->number >= lo && v->number <= hi, LOOM_ERR_FORMAT,
               "%s: %s.%s is %.17g, expected an integer in [%.0f, %.0f]", name, where, key, v->number, lo, hi);
    *out = (int64_t)v->number;
    return LOOM_OK;
}

/* s with anything but printable ASCII shown as '?', for messages that must stay on one line */
static const char *printable(const char *s, char *out, size_t cap) {
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++) out[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    out[i] = '\0';
    return out;
}

/* A member that must be a string of 1..cap-1 bytes without NUL; plain=1 also demands a plain file name
 * (no '/', not starting with '.'), so a manifest cannot point outside its directory. */
static loom_status get_str(const loom_json *obj, const char *key, const char *where, const char *name, int plain,
                           char *out, size_t cap) {
    const loom_json *v = loom_json_get(obj, key);
    LOOM_CHECK(v != NULL, LOOM_ERR_FORMAT, "%s: %s has no \"%s\"", name, where, key);
    LOOM_CHECK(v->type == LOOM_JSON_STRING, LOOM_ERR_FORMAT, "%s: %s.%s is a %s, expected a string", name, where,
               key, loom_json_type_name(v->type));
    LOOM_CHECK(v->string_len >= 1 && v->string_len < cap && memchr(v->string, 0, v->string_len) == NULL,
               LOOM_ERR_FORMAT, "%s: %s.%s must be 1 to %zu bytes without NUL", name, where, key, cap - 1);
    char shown[64];
    if (plain)
        LOOM_CHECK(v->string[0] != '.' && strchr(v->string, '/') == NULL && strchr(v->string, '\\') == NULL,
                   LOOM_ERR_FORMAT, "%s: %s.%s \"%s\" must be a plain file name inside the dataset directory", name,
                   where, key, printable(v->string, shown, sizeof shown));
    memcpy(out, v->string, v->string_len + 1);
    return LOOM_OK;
}

#define MAX_TOKENS 9007199254740992.0 /* 2^53: counts are JSON numbers (doubles) */

static loom_status parse_manifest(const loom_json *j, const char *name, loom_dataset_manifest *m) {
    LOOM_CHECK(j->type == LOOM_JSON_OBJECT, LOOM_ERR_FORMAT, "%s: expected a JSON object, found a %s", name,
               loom_json_type_name(j->type));
    const loom_json *fmt = loom_json_get(j, "format");
    LOOM_CHECK(fmt && fmt->type == LOOM_JSON_STRING && strcmp(fmt->string, "loom.dataset") == 0, LOOM_ERR_FORMAT,
               "%s: not a loom dataset manifest (\"format\" must be \"loom.dataset\")", name);
    int64_t version, vocab, eot, width;
    LOOM_CALL(get_int(j, "version", "the manifest", name, 0, 1e9, &version));
    LOOM_CHECK(version == 1, LOOM_ERR_FORMAT, "%s: dataset format version %lld, this loom reads version 1", name,
               (long long)version);
    LOOM_CALL(get_str(j, "tokenizer", "the manifest", name, 0, m->tokenizer, sizeof m->tokenizer));
    const loom_json *tf = loom_json_get(j, "tokenizer_file");
    if (tf && tf->type != LOOM_JSON_NULL)
        LOOM_CALL(get_str(j, "tokenizer_file", "the manifest", name, 1, m->tokenizer_file, sizeof m->tokenizer_file));
    LOOM_CALL(get_int(j, "vocab_size", "the manifest", name, 1, (double)INT32_MAX, &vocab));
    LOOM_CALL(get_int(j, "eot", "the manifest", name, -1, (double)vocab - 1, &eot));
    LOOM_CALL(get_int(j, "token_bytes", "the manifest", name, 2, 4, &width));
    const loom_json *lm = loom_json_get(j, "loss_mask");
    LOOM_CHECK(!lm || lm->type == LOOM_JSON_BOOL, LOOM_ERR_FORMAT, "%s: loss_mask must be true or false", name);
    m->loss_mask = lm && lm->boolean;
    LOOM_CHECK(width == (m->loss_mask || vocab > 65536 ? 4 : 2), LOOM_ERR_FORMAT,
               "%s: token_bytes %lld does not match vocab_size %lld (2 up to 65536, else 4; 4 with a loss mask)", name,
               (long long)width, (long long)vocab);
    m->vocab_size = vocab;
    m->eot = (int32_t)eot;
    m->token_bytes = (uint32_t)width;
    const loom_json *vf = loom_json_get(j, "val_fraction");
    LOOM_CHECK(vf && vf->type == LOOM_JSON_NUMBER && vf->number >= 0 && vf->number < 1, LOOM_ERR_FORMAT,
               "%s: val_fraction must be a number in [0, 1)", name);
    m->val_fraction = vf->number;
    const loom_json *sh = loom_json_get(j, "shards");
    LOOM_CHECK(sh && sh->type == LOOM_JSON_ARRAY, LOOM_ERR_FORMAT, "%s: \"shards\" must be an array", name);
    LOOM_CHECK(sh->n_children <= 1000000, LOOM_ERR_FORMAT, "%s: %zu shards, more than the 1000000 allowed", name,
               sh->n_children);
    m->shards = calloc(sh->n_children ? sh->n_children : 1, sizeof *m->shards);
    LOOM_CHECK(m->shards != NULL, LOOM_ERR_NOMEM, "out of memory");
    int64_t pos = 0;
    int seen_val = 0;
    for (const loom_json *s = sh->child; s; s = s->next) {
        char where[64];
        snprintf(where, sizeof where, "shards[%d]", m->n_shards);
        LOOM_CHECK(s->type == LOOM_JSON_OBJECT, LOOM_ERR_FORMAT, "%s: %s is a %s, expected an object", name, where,
                   loom_json_type_name(s->type));
        loom_dataset_shard *d = &m->shards[m->n_shards];
        char split[8], shown[64];
        LOOM_CALL(get_str(s, "file", where, name, 1, d->file, sizeof d->file));
        LOOM_CALL(get_str(s, "split", where, name, 0, split, sizeof split));
        LOOM_CHECK(!strcmp(split, "train") || !strcmp(split, "val"), LOOM_ERR_FORMAT,
                   "%s: %s.split is \"%s\", expected \"train\" or \"val\"", name, where,
                   printable(split, shown, sizeof shown));
        d->split = strcmp(split, "train") == 0 ? LOOM_SPLIT_TRAIN : LOOM_SPLIT_VAL;
        int64_t crc;
        LOOM_CALL(get_int(s, "tokens", where, name, 0, MAX_TOKENS, &d->n_tokens));
        LOOM_CALL(get_int(s, "first_token", where, name, 0, MAX_TOKENS, &d->first_token));
        LOOM_CALL(get_int(s, "crc32c", where, name, 0, 4294967295.0, &crc));
        d->crc32c = (uint32_t)crc;
        LOOM_CHECK(d->split == LOOM_SPLIT_VAL || !seen_val, LOOM_ERR_FORMAT,
                   "%s: %s is a training shard after a validation shard (training shards come first)", name, where);
        seen_val |= d->split == LOOM_SPLIT_VAL;
        LOOM_CHECK(d->first_token == pos, LOOM_ERR_FORMAT,
                   "%s: %s starts at token %lld, but the shards before it end at %lld (shards must tile the stream)",
                   name, where, (long long)d->first_token, (long long)pos);
        LOOM_CHECK(d->n_tokens <= (int64_t)MAX_TOKENS - pos, LOOM_ERR_FORMAT, "%s: token counts overflow", name);
        pos += d->n_tokens;
        m->tokens[d->split] += d->n_tokens;
        for (int k = 0; k < m->n_shards; k++)
            LOOM_CHECK(strcmp(m->shards[k].file, d->file) != 0, LOOM_ERR_FORMAT, "%s: shard file %s is listed twice",
                       name, printable(d->file, shown, sizeof shown));
        m->n_shards++;
    }
    const loom_json *tok = loom_json_get(j, "tokens");
    LOOM_CHECK(tok && tok->type == LOOM_JSON_OBJECT, LOOM_ERR_FORMAT, "%s: \"tokens\" must be an object", name);
    int64_t nt, nv;
    LOOM_CALL(get_int(tok, "train", "tokens", name, 0, MAX_TOKENS, &nt));
    LOOM_CALL(get_int(tok, "val", "tokens", name, 0, MAX_TOKENS, &nv));
    LOOM_CHECK(nt == m->tokens[0] && nv == m->tokens[1], LOOM_ERR_FORMAT,
               "%s: tokens says train %lld / val %lld, the shards add up to %lld / %lld", name, (long long)nt,
               (long long)nv, (long long)m->tokens[0], (long long)m->tokens[1]);
    return LOOM_OK;
}

loom_status loom_dataset_manifest_parse(const char *text, size_t len, const char *name, loom_dataset_manifest **out) {
    *out = NULL;
    loom_json *j = NULL;
    loom_status st = loom_json_parse(text, len, &j);
    if (st != LOOM_OK) { /* prefix the file name to the parser's "line L col C" message */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", loom_error_message());
        return loom_error_set(st, __FILE__, __LINE__, __func__, "%s: %s", name, msg);
    }
    loom_dataset_manifest *m = calloc(1, sizeof *m);
    if (!m) {
        loom_json_free(&j);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    st = parse_manifest(j, name, m);
    loom_json_free(&j);
    if (st != LOOM_OK) {
        loom_dataset_manifest_free(&m);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    *out = m;
    return LOOM_OK;
}

void loom_dataset_manifest_free(loom_dataset_manifest **m) {
    if (!m || !*m) return;
    free((*m)->shards);
    free(*m);
    *m = NULL;
}
