/* The loom tokenizer file (docs/FORMATS-tokenizer.md): a 48-byte header (magic, version, kind, counts,
 * payload size and CRC-32C, header CRC-32C), then the payload: a BPE's merges or a char vocabulary's
 * characters, then the special tokens. Every count and size is checked against the file before it is
 * used; any mismatch is a one-line error that names the file and the field. */
#define _DEFAULT_SOURCE /* fsync */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/crc32c.h"
#include "tokenizer_impl.h"

#define TOKFILE_MAGIC "LOOMTOKN"
#define TOKFILE_VERSION 1u
#define TOKFILE_HEADER 48
#define TOKFILE_BPE 1u
#define TOKFILE_CHAR 2u
#define TOKFILE_MAX_SPECIAL_LEN 4096u

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

loom_status loom_tokenizer_serialize(const loom_tokenizer *t, void **data, size_t *len) {
    LOOM_CHECK(data && len, LOOM_ERR_INVALID_ARG, "loom_tokenizer_serialize: data and len must not be NULL");
    *data = NULL;
    *len = 0;
    LOOM_CHECK(t != NULL, LOOM_ERR_INVALID_ARG, "loom_tokenizer_serialize: no tokenizer");
    LOOM_CHECK(t->kind == LOOM_TOK_KIND_BPE || t->kind == LOOM_TOK_KIND_CHAR, LOOM_ERR_INVALID_ARG,
               "tokenizer %s is of kind %s: only bpe and char tokenizers are saved to a file", t->name,
               loom_tokenizer_kind(t));
    int bpe = t->kind == LOOM_TOK_KIND_BPE;
    int64_t n_entries = bpe ? t->n_merges : t->n_chars;
    size_t payload = 0;
    if (bpe) payload += (size_t)n_entries * 8;
    else payload += (size_t)n_entries + (size_t)(t->off[n_entries] - t->off[0]);
    for (int k = 0; k < t->n_special; k++) payload += 4 + t->special[k].len;
    uint8_t *b = malloc(TOKFILE_HEADER + payload);
    LOOM_CHECK(b != NULL, LOOM_ERR_NOMEM, "out of memory serializing a tokenizer (%zu bytes)", payload);
    uint8_t *p = b + TOKFILE_HEADER;
    if (bpe) {
        for (int64_t i = 0; i < n_entries; i++) {
            put32(p, t->merges[2 * i]);
            put32(p + 4, t->merges[2 * i + 1]);
            p += 8;
        }
    } else {
        for (int64_t i = 0; i < n_entries; i++) {
            size_t l = (size_t)(t->off[i + 1] - t->off[i]);
            *p++ = (uint8_t)l;
            memcpy(p, t->blob + t->off[i], l);
            p += l;
        }
    }
    for (int k = 0; k < t->n_special; k++) {
        put32(p, (uint32_t)t->special[k].len);
        memcpy(p + 4, t->special[k].bytes, t->special[k].len);
        p += 4 + t->special[k].len;
    }
    memcpy(b, TOKFILE_MAGIC, 8);
    put32(b + 8, TOKFILE_VERSION);
    put32(b + 12, bpe ? TOKFILE_BPE : TOKFILE_CHAR);
    put32(b + 16, (uint32_t)t->vocab_size);
    put32(b + 20, (uint32_t)n_entries);
    put32(b + 24, (uint32_t)t->n_special);
    put32(b + 28, 0);
    put64(b + 32, (uint64_t)payload);
    put32(b + 40, loom_crc32c(0, b + TOKFILE_HEADER, payload));
    put32(b + 44, loom_crc32c(0, b, 44));
    *data = b;
    *len = TOKFILE_HEADER + payload;
    return LOOM_OK;
}

loom_status loom_tokenizer_save(const loom_tokenizer *t, const char *path) {
    LOOM_CHECK(path != NULL, LOOM_ERR_INVALID_ARG, "loom_tokenizer_save: no path");
    void *data;
    size_t len;
    LOOM_CALL(loom_tokenizer_serialize(t, &data, &len));
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(data);
        return TOK_ERR(LOOM_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    int ok = fwrite(data, 1, len, f) == len && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    ok = (fclose(f) == 0) && ok;
    free(data);
    if (!ok) {
        remove(tmp);
        return TOK_ERR(LOOM_ERR_IO, "%s: write failed: %s", tmp, strerror(err));
    }
    if (rename(tmp, path) != 0) {
        err = errno;
        remove(tmp);
        return TOK_ERR(LOOM_ERR_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(err));
    }
    return LOOM_OK;
}

loom_status loom_tokenizer_load_memory(const void *data, size_t len, const char *name, loom_tokenizer **out) {
    LOOM_CHECK(out != NULL, LOOM_ERR_INVALID_ARG, "loom_tokenizer_load_memory: out is NULL");
    *out = NULL;
    LOOM_CHECK(data != NULL || len == 0, LOOM_ERR_INVALID_ARG, "loom_tokenizer_load_memory: data is NULL");
    if (!name) name = "tokenizer";
    const uint8_t *b = data;
    LOOM_CHECK(len > 0, LOOM_ERR_FORMAT, "%s: empty file, not a loom tokenizer file", name);
    LOOM_CHECK(memcmp(b, TOKFILE_MAGIC, len < 8 ? len : 8) == 0, LOOM_ERR_FORMAT,
               "%s: not a loom tokenizer file (it does not start with \"%s\")", name, TOKFILE_MAGIC);
    LOOM_CHECK(len >= TOKFILE_HEADER, LOOM_ERR_FORMAT, "%s: truncated: %zu bytes, less than the %d-byte header", name,
               len, TOKFILE_HEADER);
    uint32_t version = get32(b + 8);
    LOOM_CHECK(version == TOKFILE_VERSION, LOOM_ERR_FORMAT,
               "%s: tokenizer file version %u; this loom reads version %u", name, version, TOKFILE_VERSION);
    LOOM_CHECK(get32(b + 44) == loom_crc32c(0, b, 44), LOOM_ERR_CHECKSUM,
               "%s: header checksum mismatch (stored %08x, computed %08x): the file is damaged", name,
               get32(b + 44), loom_crc32c(0, b, 44));
    uint32_t kind = get32(b + 12), vocab = get32(b + 16), n_entries = get32(b + 20), n_special = get32(b + 24);
    uint32_t flags = get32(b + 28);
    uint64_t payload = get64(b + 32);
    LOOM_CHECK(kind == TOKFILE_BPE || kind == TOKFILE_CHAR, LOOM_ERR_FORMAT,
               "%s: unknown tokenizer kind %u (1 = bpe, 2 = char)", name, kind);
    LOOM_CHECK(flags == 0, LOOM_ERR_FORMAT, "%s: unknown flags 0x%x", name, flags);
    LOOM_CHECK(payload <= len - TOKFILE_HEADER, LOOM_ERR_FORMAT,
               "%s: truncated: the header promises %llu payload bytes, the file holds %zu", name,
               (unsigned long long)payload, len - TOKFILE_HEADER);
    LOOM_CHECK(payload == len - TOKFILE_HEADER, LOOM_ERR_FORMAT,
               "%s: %zu bytes after the %llu-byte payload the header describes", name,
               (size_t)(len - TOKFILE_HEADER - payload), (unsigned long long)payload);
    const uint8_t *p = b + TOKFILE_HEADER, *end = p + payload;
    LOOM_CHECK(get32(b + 40) == loom_crc32c(0, p, (size_t)payload), LOOM_ERR_CHECKSUM,
               "%s: payload checksum mismatch (stored %08x, computed %08x): the file is damaged", name, get32(b + 40),
               loom_crc32c(0, p, (size_t)payload));
    uint64_t expect = (kind == TOKFILE_BPE ? 256u : 0u) + (uint64_t)n_entries + n_special;
    LOOM_CHECK(vocab == expect && vocab <= INT32_MAX, LOOM_ERR_FORMAT,
               "%s: vocabulary of %u, but %s%u %s and %u special tokens make %llu", name, vocab,
               kind == TOKFILE_BPE ? "256 bytes, " : "", n_entries, kind == TOKFILE_BPE ? "merges" : "characters",
               n_special, (unsigned long long)expect);
    LOOM_CHECK((uint64_t)n_special * 5 <= payload, LOOM_ERR_FORMAT,
               "%s: %u special tokens do not fit in the %llu-byte payload", name, n_special,
               (unsigned long long)payload);
    loom_tokenizer *t = NULL;
    loom_status st = LOOM_OK;
    uint8_t **cp = NULL;
    size_t *cl = NULL;
    LOOM_CALL(loom_tok_alloc(kind == TOKFILE_BPE ? LOOM_TOK_KIND_BPE : LOOM_TOK_KIND_CHAR, name, &t));
    if (kind == TOKFILE_BPE) {
        LOOM_CHECK_GOTO(st, (uint64_t)n_entries * 8 <= (uint64_t)(end - p), LOOM_ERR_FORMAT, out,
                        "%s: %u merges need %llu bytes; the payload has %zu", name, n_entries,
                        (unsigned long long)n_entries * 8, (size_t)(end - p));
        t->merges = malloc((size_t)n_entries * 8 + 8);
        LOOM_CHECK_GOTO(st, t->merges != NULL, LOOM_ERR_NOMEM, out, "out of memory for %u merges", n_entries);
        for (uint32_t i = 0; i < n_entries; i++) {
            t->merges[2 * i] = get32(p);
            t->merges[2 * i + 1] = get32(p + 4);
            p += 8;
        }
        t->n_merges = n_entries;
    } else {
        LOOM_CHECK_GOTO(st, n_entries <= (uint64_t)(end - p), LOOM_ERR_FORMAT, out,
                        "%s: %u characters do not fit in the payload", name, n_entries);
        t->n_chars = n_entries;
    }
    /* char entries and specials are read into one token list */
    size_t n_tok = (kind == TOKFILE_CHAR ? n_entries : 0) + (size_t)n_special;
    cp = calloc(n_tok + 1, sizeof *cp);
    cl = calloc(n_tok + 1, sizeof *cl);
    LOOM_CHECK_GOTO(st, cp && cl, LOOM_ERR_NOMEM, out, "out of memory for %zu tokens", n_tok);
    size_t k = 0;
    if (kind == TOKFILE_CHAR) {
        for (uint32_t i = 0; i < n_entries; i++, k++) {
            LOOM_CHECK_GOTO(st, p < end, LOOM_ERR_FORMAT, out, "%s: the payload ends inside character %u", name, i);
            size_t l = *p++;
            LOOM_CHECK_GOTO(st, l >= 1 && l <= 4 && l <= (size_t)(end - p), LOOM_ERR_FORMAT, out,
                            "%s: character %u has length %zu (1..4, within the payload)", name, i, l);
            cp[k] = (uint8_t *)p;
            cl[k] = l;
            if (i > 0) {
                size_t m = l < cl[k - 1] ? l : cl[k - 1];
                int c = memcmp(cp[k - 1], p, m);
                LOOM_CHECK_GOTO(st, c < 0 || (c == 0 && cl[k - 1] < l), LOOM_ERR_FORMAT, out,
                                "%s: characters %u and %u are not in increasing byte order", name, i - 1, i);
            }
            p += l;
        }
    }
    for (uint32_t i = 0; i < n_special; i++, k++) {
        LOOM_CHECK_GOTO(st, end - p >= 4, LOOM_ERR_FORMAT, out, "%s: the payload ends inside special token %u", name,
                        i);
        uint32_t l = get32(p);
        p += 4;
        LOOM_CHECK_GOTO(st, l >= 1 && l <= TOKFILE_MAX_SPECIAL_LEN && l <= (size_t)(end - p), LOOM_ERR_FORMAT, out,
                        "%s: special token %u has length %u (1..%u, within the payload)", name, i, l,
                        TOKFILE_MAX_SPECIAL_LEN);
        cp[k] = (uint8_t *)p;
        cl[k] = l;
        p += l;
    }
    LOOM_CHECK_GOTO(st, p == end, LOOM_ERR_FORMAT, out, "%s: %zu payload bytes left over after the last entry", name,
                    (size_t)(end - p));
    int32_t base = (int32_t)(vocab - n_special);
    size_t first_special = kind == TOKFILE_CHAR ? n_entries : 0;
    for (uint32_t i = 0; i < n_special; i++) {
        st = loom_tok_add_special(t, cp[first_special + i], cl[first_special + i], base + (int32_t)i);
        if (st != LOOM_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", loom_error_message());
            st = TOK_ERR(LOOM_ERR_FORMAT, "%s: %s", name, msg);
            goto out;
        }
    }
    if (kind == TOKFILE_BPE) {
        LOOM_CALL_GOTO(st, loom_tok_build_bpe(t, name), out);
    } else {
        LOOM_CALL_GOTO(st, loom_tok_set_tokens(t, (int64_t)n_tok, (const uint8_t *const *)cp, cl), out);
        LOOM_CALL_GOTO(st, loom_tok_build_char(t, name), out);
    }
    *out = t;
    t = NULL;
out:
    free(cp);
    free(cl);
    loom_tokenizer_free(&t);
    return st;
}
