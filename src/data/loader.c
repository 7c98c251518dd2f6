/* Data sources and the deterministic window sampler (include/loom/data.h).
 *
 * Three kinds of source share one sampler: synthetic tokens, a token stream held in memory (text read as
 * bytes, a .bin of uint16), and a prepared dataset whose shards are memory-mapped. A window is T+1
 * consecutive tokens of one split's stream at an offset drawn from the generator; for shards the stream
 * is the split's shards end to end, so a window may continue from one shard into the next. */
#define _DEFAULT_SOURCE /* MAP_PRIVATE etc. under -std=c11 */
#include "loom/data.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef enum { SRC_SYNTHETIC, SRC_MEMORY, SRC_SHARDS } source_kind;

typedef struct {
    void *map;                   /* the whole file, MAP_PRIVATE read-only */
    size_t map_size;
    const unsigned char *tokens; /* map + header */
    uint32_t width;
    int64_t n, start;            /* tokens; position of the first within its split's stream */
} shard_map;

struct loom_data {
    source_kind kind;
    int64_t vocab;       /* the model's vocabulary given at open (0: not checked at open) */
    int64_t data_vocab;  /* the tokenizer's vocabulary, 0 if unknown */
    int64_t max_token;   /* largest id in the data (an upper bound for text: 255) */
    int32_t eot;
    int loss_mask;       /* SRC_SHARDS: bit 31 of a token marks a target without loss */
    int64_t last_valid;  /* targets with a loss in the last draw's global batch */
    int32_t *tokens;     /* SRC_MEMORY: all tokens; train = [0, n_train), val = [n_train, n) */
    int64_t n, n_train;
    shard_map *shards;   /* SRC_SHARDS: training shards, then validation shards */
    int n_shards;
    int first_shard[2], n_split_shards[2];
    int64_t split_tokens[2];
    int rank, nranks;
    uint64_t seed;
    loom_rng train_rng, val_rng;
    uint64_t batches_drawn;
    char tokenizer[4096 + 256];
    char source[4096];
    char desc[512];
};

static loom_status append_bytes(loom_data *d, const unsigned char *buf, size_t n, int64_t *cap) {
    if (d->n + (int64_t)n > *cap) {
        int64_t nc = (*cap ? *cap * 2 : 1 << 20);
        while (nc < d->n + (int64_t)n) nc *= 2;
        int32_t *t = realloc(d->tokens, (size_t)nc * sizeof(int32_t));
        LOOM_CHECK(t != NULL, LOOM_ERR_NOMEM, "out of memory reading the corpus (%lld tokens)", (long long)nc);
        d->tokens = t;
        *cap = nc;
    }
    for (size_t i = 0; i < n; i++) d->tokens[d->n + (int64_t)i] = buf[i];
    d->n += (int64_t)n;
    return LOOM_OK;
}

static int looks_like_text(const unsigned char *buf, size_t n) {
    for (size_t i = 0; i < n && i < 4096; i++)
        if (buf[i] == 0) return 0;
    return 1;
}

static loom_status read_file(const char *path, unsigned char **out, size_t *n) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    LOOM_CHECK(f != NULL, LOOM_ERR_IO, "cannot open data file %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (len < 0) {
        fclose(f);
        return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot size %s", path);
    }
    unsigned char *buf = malloc((size_t)len + 1);
    if (!buf) {
        fclose(f);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory reading %s", path);
    }
    size_t got = fread(buf, 1, (size_t)len, f);
    fclose(f);
    if (got != (size_t)len) {
        free(buf);
        return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "short read of %s", path);
    }
    *out = buf;
    *n = got;
    return LOOM_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Regular text files of a directory, in name order (binary files, e.g. fortune's .dat indexes, and
 * symbolic links are skipped; not recursive: `loom data prepare` walks trees). */
static loom_status load_dir(loom_data *d, const char *dir, int64_t *cap, int *files) {
    DIR *dp = opendir(dir);
    LOOM_CHECK(dp != NULL, LOOM_ERR_IO, "cannot open data directory %s: %s", dir, strerror(errno));
    char **names = NULL;
    size_t nn = 0, cn = 0;
    struct dirent *de;
    loom_status st = LOOM_OK;
    while ((de = readdir(dp)) != NULL) {
        if (de->d_name[0] == '.') continue;
        if (nn == cn) {
            cn = cn ? cn * 2 : 64;
            char **t = realloc(names, cn * sizeof *names);
            if (!t) { st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory"); break; }
            names = t;
        }
        names[nn] = strdup(de->d_name);
        if (names[nn]) nn++;
    }
    closedir(dp);
    if (nn) qsort(names, nn, sizeof *names, cmp_str);
    for (size_t i = 0; i < nn && st == LOOM_OK; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct stat sb;
        if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        unsigned char *buf;
        size_t n;
        st = read_file(path, &buf, &n);
        if (st != LOOM_OK) break;
        if (looks_like_text(buf, n)) {
            st = append_bytes(d, buf, n, cap);
            (*files)++;
        }
        free(buf);
    }
    for (size_t i = 0; i < nn; i++) free(names[i]);
    free(names);
    return st;
}

/* ---- prepared datasets ---- */

static loom_status map_shard(const char *path, const loom_dataset_shard *e, const loom_dataset_manifest *m,
                             shard_map *out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    LOOM_CHECK(fd >= 0, LOOM_ERR_IO, "cannot open shard %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "shard %s is not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < LOOM_SHARD_HEADER_BYTES) { /* too short to map or decode */
        close(fd);
        return loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__,
                              "shard %s: %zu bytes, shorter than the %d-byte header (truncated)", path, size,
                              LOOM_SHARD_HEADER_BYTES);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int mmap_errno = errno;
    close(fd);
    LOOM_CHECK(map != MAP_FAILED, LOOM_ERR_IO, "cannot map shard %s: %s", path, strerror(mmap_errno));
    out->map = map;
    out->map_size = size;
    loom_shard_header h;
    LOOM_CALL(loom_shard_header_decode(map, size, path, &h));
    LOOM_CHECK(h.n_tokens == e->n_tokens && (int)h.split == (int)e->split && h.first_token == e->first_token &&
                   h.data_crc32c == e->crc32c,
               LOOM_ERR_FORMAT,
               "shard %s: header (%lld %s tokens from %lld, crc %08x) disagrees with dataset.json (%lld %s tokens "
               "from %lld, crc %08x)",
               path, (long long)h.n_tokens, h.split ? "val" : "train", (long long)h.first_token, h.data_crc32c,
               (long long)e->n_tokens, e->split ? "val" : "train", (long long)e->first_token, e->crc32c);
    LOOM_CHECK(h.vocab_size == m->vocab_size && h.token_bytes == m->token_bytes &&
                   !(h.flags & LOOM_SHARD_LOSS_MASK) == !m->loss_mask, LOOM_ERR_FORMAT,
               "shard %s: vocabulary %lld / %u-byte tokens%s, but dataset.json says %lld / %u%s", path,
               (long long)h.vocab_size, h.token_bytes, h.flags ? " with a loss mask" : "", (long long)m->vocab_size,
               m->token_bytes, m->loss_mask ? " with a loss mask" : "");
    LOOM_CALL(loom_shard_check_tokens(map, &h, path));
    out->tokens = (const unsigned char *)map + LOOM_SHARD_HEADER_BYTES;
    out->width = h.token_bytes;
    out->n = h.n_tokens;
    return LOOM_OK;
}

static loom_status load_dataset(loom_data *d, const char *dir, const char *manifest_path) {
    unsigned char *text;
    size_t len;
    LOOM_CALL(read_file(manifest_path, &text, &len));
    loom_dataset_manifest *m = NULL;
    loom_status st = loom_dataset_manifest_parse((const char *)text, len, manifest_path, &m);
    free(text);
    LOOM_CALL(st);
    d->shards = calloc((size_t)(m->n_shards ? m->n_shards : 1), sizeof *d->shards);
    if (!d->shards) {
        loom_dataset_manifest_free(&m);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    for (int i = 0; i < m->n_shards; i++) {
        const loom_dataset_shard *e = &m->shards[i];
        char path[4096 + 300];
        snprintf(path, sizeof path, "%s/%s", dir, e->file);
        st = map_shard(path, e, m, &d->shards[i]);
        d->n_shards = i + 1; /* mapped (or half-mapped) shards are unmapped by loom_data_free */
        if (st != LOOM_OK) break;
        int s = (int)e->split;
        if (d->n_split_shards[s] == 0) d->first_shard[s] = i;
        d->shards[i].start = d->split_tokens[s];
        d->split_tokens[s] += e->n_tokens;
        d->n_split_shards[s]++;
    }
    if (st == LOOM_OK) {
        d->kind = SRC_SHARDS;
        d->data_vocab = m->vocab_size;
        d->max_token = m->vocab_size - 1;
        d->eot = m->eot;
        d->loss_mask = m->loss_mask;
        if (m->tokenizer_file[0]) { /* absolute, so that a checkpoint can record it for later use elsewhere */
            char abs[PATH_MAX];
            snprintf(d->tokenizer, sizeof d->tokenizer, "%s/%s", realpath(dir, abs) ? abs : dir, m->tokenizer_file);
        } else {
            snprintf(d->tokenizer, sizeof d->tokenizer, "%s", m->tokenizer);
        }
        snprintf(d->desc, sizeof d->desc,
                 "%s (%s tokens, vocabulary %lld; %lld train + %lld val tokens (val_fraction %g, fixed at prepare) "
                 "in %d shards)",
                 dir, m->tokenizer, (long long)m->vocab_size, (long long)d->split_tokens[0],
                 (long long)d->split_tokens[1], m->val_fraction, m->n_shards);
    }
    loom_dataset_manifest_free(&m);
    LOOM_CALL(st);
    return LOOM_OK;
}

static loom_status load_source(loom_data *d, const char *source, double val_fraction) {
    struct stat sb;
    LOOM_CHECK(stat(source, &sb) == 0, LOOM_ERR_IO, "data source %s: %s (use a dataset directory from `loom data "
               "prepare`, a text file, a directory of text files, a .bin of uint16 tokens, or 'synthetic')",
               source, strerror(errno));
    int64_t cap = 0;
    size_t len = strlen(source);
    if (S_ISDIR(sb.st_mode)) {
        char manifest[4096 + 32];
        snprintf(manifest, sizeof manifest, "%s/dataset.json", source);
        if (access(manifest, F_OK) == 0) return load_dataset(d, source, manifest);
        int files = 0;
        LOOM_CALL(load_dir(d, source, &cap, &files));
        LOOM_CHECK(files > 0, LOOM_ERR_IO, "data directory %s holds no text files and no dataset.json", source);
        snprintf(d->desc, sizeof d->desc, "%s (%d text files, byte-level)", source, files);
        d->data_vocab = 256;
    } else if (len > 4 && strcmp(source + len - 4, ".bin") == 0) {
        unsigned char *buf;
        size_t n;
        LOOM_CALL(read_file(source, &buf, &n));
        if (n % 2 != 0) {
            free(buf);
            return loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                  "%s: a .bin token file holds uint16 tokens, but its size %zu is odd (truncated?)",
                                  source, n);
        }
        d->n = (int64_t)(n / 2);
        d->tokens = malloc((size_t)(d->n ? d->n : 1) * sizeof(int32_t));
        if (!d->tokens) { free(buf); return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory"); }
        d->max_token = 0;
        for (int64_t i = 0; i < d->n; i++) {
            d->tokens[i] = (int32_t)(buf[2 * i] | (buf[2 * i + 1] << 8));
            if (d->tokens[i] > d->max_token) d->max_token = d->tokens[i];
        }
        free(buf);
        snprintf(d->desc, sizeof d->desc, "%s (uint16 tokens)", source);
    } else {
        unsigned char *buf;
        size_t n;
        LOOM_CALL(read_file(source, &buf, &n));
        loom_status st = append_bytes(d, buf, n, &cap);
        free(buf);
        LOOM_CALL(st);
        snprintf(d->desc, sizeof d->desc, "%s (byte-level)", source);
        d->data_vocab = 256;
    }
    if (d->data_vocab == 256) {
        d->max_token = 255;
        snprintf(d->tokenizer, sizeof d->tokenizer, "byte");
    }
    d->kind = SRC_MEMORY;
    d->n_train = loom_data_split_point(d->n, val_fraction);
    return LOOM_OK;
}

loom_status loom_data_open(const char *source, int64_t vocab, double val_fraction, uint64_t seed, loom_data **out) {
    *out = NULL;
    LOOM_CHECK(val_fraction >= 0 && val_fraction < 1, LOOM_ERR_CONFIG,
               "data.val_fraction must be in [0, 1), got %g", val_fraction);
    const int synthetic = strcmp(source, "synthetic") == 0;
    LOOM_CHECK(vocab >= 2 || (vocab == 0 && !synthetic), LOOM_ERR_CONFIG, "vocabulary size %lld too small",
               (long long)vocab);
    loom_data *d = calloc(1, sizeof *d);
    LOOM_CHECK(d != NULL, LOOM_ERR_NOMEM, "out of memory");
    d->vocab = vocab;
    d->seed = seed;
    d->eot = -1;
    d->nranks = 1;
    snprintf(d->source, sizeof d->source, "%s", source);
    if (synthetic) {
        d->kind = SRC_SYNTHETIC;
        d->max_token = vocab - 1;
        snprintf(d->desc, sizeof d->desc, "synthetic (uniform random tokens over %lld)", (long long)vocab);
    } else {
        loom_status st = load_source(d, source, val_fraction);
        if (st == LOOM_OK && vocab > 0) st = loom_data_check_vocab(d, vocab);
        if (st != LOOM_OK) {
            loom_data_free(&d);
            loom_error_trace(__FILE__, __LINE__, __func__);
            return st;
        }
    }
    loom_rng_seed(&d->train_rng, seed ^ 0x7261696eull);
    loom_data_reset_val(d);
    *out = d;
    return LOOM_OK;
}

loom_status loom_data_check_vocab(const loom_data *d, int64_t vocab) {
    LOOM_CHECK(vocab >= 2, LOOM_ERR_CONFIG, "vocabulary size %lld too small", (long long)vocab);
    if (d->kind == SRC_SYNTHETIC)
        LOOM_CHECK(vocab <= d->vocab, LOOM_ERR_CONFIG, "synthetic data was opened for a vocabulary of %lld, not %lld",
                   (long long)d->vocab, (long long)vocab);
    if (d->kind == SRC_SHARDS)
        LOOM_CHECK(d->data_vocab <= vocab, LOOM_ERR_CONFIG,
                   "dataset %s was tokenized with a vocabulary of %lld, larger than model.vocab_size %lld "
                   "(set model.vocab_size to at least %lld)",
                   d->source, (long long)d->data_vocab, (long long)vocab, (long long)d->data_vocab);
    else if (d->data_vocab == 256)
        LOOM_CHECK(vocab >= 256, LOOM_ERR_CONFIG, "byte-level text needs model.vocab_size >= 256, got %lld",
                   (long long)vocab);
    else if (d->kind == SRC_MEMORY && d->max_token >= vocab) {
        for (int64_t i = 0; i < d->n; i++)
            LOOM_CHECK(d->tokens[i] < vocab, LOOM_ERR_FORMAT, "%s: token %d at %lld is outside the model's "
                       "vocabulary of %lld", d->desc, d->tokens[i], (long long)i, (long long)vocab);
    }
    return LOOM_OK;
}

void loom_data_free(loom_data **pd) {
    if (!pd || !*pd) return;
    loom_data *d = *pd;
    for (int i = 0; i < d->n_shards; i++)
        if (d->shards[i].map) munmap(d->shards[i].map, d->shards[i].map_size);
    free(d->shards);
    free(d->tokens);
    free(d);
    *pd = NULL;
}

const char *loom_data_describe(const loom_data *d) { return d->desc; }
int64_t loom_data_vocab_size(const loom_data *d) { return d->data_vocab; }
const char *loom_data_tokenizer(const loom_data *d) { return d->tokenizer[0] ? d->tokenizer : NULL; }
int32_t loom_data_eot(const loom_data *d) { return d->eot; }
int loom_data_has_loss_mask(const loom_data *d) { return d->loss_mask; }
int64_t loom_data_last_valid(const loom_data *d) { return d->last_valid; }

int64_t loom_data_num_tokens(const loom_data *d, loom_split split) {
    if (d->kind == SRC_SYNTHETIC) return INT64_MAX;
    if (d->kind == SRC_SHARDS) return d->split_tokens[split];
    return split == LOOM_SPLIT_TRAIN ? d->n_train : d->n - d->n_train;
}

loom_status loom_data_set_rank(loom_data *d, int rank, int nranks) {
    LOOM_CHECK(nranks >= 1 && rank >= 0 && rank < nranks, LOOM_ERR_INVALID_ARG,
               "data rank %d of %d: expected 0 <= rank < nranks", rank, nranks);
    d->rank = rank;
    d->nranks = nranks;
    return LOOM_OK;
}

/* count tokens of the split's stream from position off (within the split) into dst; as targets, -1 where a
 * loss mask says no loss (else the mask bit is dropped); dst NULL: only count the targets with a loss */
static int64_t copy_tokens(const loom_data *d, loom_split split, int64_t off, int64_t count, int32_t *dst, int targets) {
    int64_t valid = count;
    if (d->kind == SRC_MEMORY) {
        if (dst) memcpy(dst, d->tokens + (split == LOOM_SPLIT_TRAIN ? 0 : d->n_train) + off, (size_t)count * sizeof(int32_t));
        return valid;
    }
    /* binary search for the shard holding off */
    int lo = d->first_shard[split], hi = lo + d->n_split_shards[split] - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (d->shards[mid].start <= off) lo = mid;
        else hi = mid - 1;
    }
    for (int s = lo; count > 0; s++) {
        const shard_map *m = &d->shards[s];
        int64_t at = off - m->start, k = m->n - at < count ? m->n - at : count;
        if (m->width == 2) {
            const uint16_t *t = (const uint16_t *)(const void *)m->tokens + at;
            for (int64_t i = 0; dst && i < k; i++) dst[i] = t[i];
        } else {
            const uint32_t *t = (const uint32_t *)(const void *)m->tokens + at;
            for (int64_t i = 0; i < k; i++) {
                const int none = targets && (t[i] & LOOM_TOKEN_NO_LOSS);
                valid -= none;
                if (dst) dst[i] = none ? -1 : (int32_t)(t[i] & ~LOOM_TOKEN_NO_LOSS);
            }
        }
        if (dst) dst += k;
        off += k;
        count -= k;
    }
    return valid;
}

loom_status loom_data_read(const loom_data *d, loom_split split, int64_t off, int64_t count, int32_t *dst) {
    LOOM_CHECK(d->kind != SRC_SYNTHETIC, LOOM_ERR_INVALID_ARG, "synthetic data has no token stream to read");
    const int64_t n = loom_data_num_tokens(d, split);
    LOOM_CHECK(off >= 0 && count >= 0 && off <= n && count <= n - off, LOOM_ERR_INVALID_ARG,
               "tokens [%lld, %lld) are outside the %s split's %lld", (long long)off, (long long)(off + count),
               split == LOOM_SPLIT_TRAIN ? "training" : "validation", (long long)n);
    if (count > 0) copy_tokens(d, split, off, count, dst, 0);
    return LOOM_OK;
}

loom_status loom_data_next(loom_data *d, loom_split split, int64_t B, int64_t T, int32_t *tokens, int32_t *targets) {
    loom_rng *r = split == LOOM_SPLIT_TRAIN ? &d->train_rng : &d->val_rng;
    /* the global batch is B*nranks windows; this rank keeps rows [rank*B, (rank+1)*B) */
    const int64_t mine = (int64_t)d->rank * B, total = B * d->nranks;
    if (d->kind == SRC_SYNTHETIC) {
        for (int64_t g = 0; g < total; g++) {
            const int keep = g >= mine && g < mine + B;
            const int64_t b = g - mine;
            int32_t prev = (int32_t)loom_rng_below(r, (uint64_t)d->vocab);
            for (int64_t t = 0; t < T; t++) {
                int32_t next = (int32_t)loom_rng_below(r, (uint64_t)d->vocab);
                if (keep) {
                    tokens[b * T + t] = prev;
                    targets[b * T + t] = next;
                }
                prev = next;
            }
        }
    } else {
        const int64_t n = loom_data_num_tokens(d, split);
        LOOM_CHECK(n > T + 1, LOOM_ERR_CONFIG,
                   "the %s split has %lld tokens, fewer than one window of %lld (lower --seq-len or add data)",
                   split == LOOM_SPLIT_TRAIN ? "training" : "validation", (long long)n, (long long)(T + 1));
        d->last_valid = 0;
        for (int64_t g = 0; g < total; g++) {
            int64_t off = (int64_t)loom_rng_below(r, (uint64_t)(n - T - 1) + 1);
            const int own = g >= mine && g < mine + B;
            if (!own && !d->loss_mask) continue;
            const int64_t b = g - mine;
            if (own) copy_tokens(d, split, off, T, tokens + b * T, 0);
            d->last_valid += copy_tokens(d, split, off + 1, T, own ? targets + b * T : NULL, 1);
        }
    }
    if (!d->loss_mask) d->last_valid = total * T;
    if (split == LOOM_SPLIT_TRAIN) d->batches_drawn++;
    return LOOM_OK;
}

void loom_data_reset_val(loom_data *d) { loom_rng_seed(&d->val_rng, d->seed ^ 0x76616c00ull); }

loom_data_state loom_data_get_state(const loom_data *d) {
    loom_data_state s;
    s.train_rng = d->train_rng;
    s.batches_drawn = d->batches_drawn;
    return s;
}

void loom_data_set_state(loom_data *d, const loom_data_state *s) {
    d->train_rng = s->train_rng;
    d->batches_drawn = s->batches_drawn;
}
