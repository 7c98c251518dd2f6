/* Data sources and the deterministic window sampler (include/loom/data.h). */
#include "loom/data.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct loom_data {
    int synthetic;
    int64_t vocab;
    int32_t *tokens;  /* all tokens; train = [0, n_train), val = [n_train, n) */
    int64_t n, n_train;
    uint64_t seed;
    loom_rng train_rng, val_rng;
    uint64_t batches_drawn;
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
 * symbolic links are skipped). */
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

static loom_status load_source(loom_data *d, const char *source) {
    struct stat sb;
    LOOM_CHECK(stat(source, &sb) == 0, LOOM_ERR_IO, "data source %s: %s (use a text file, a directory of text "
               "files, a .bin of uint16 tokens, or 'synthetic')", source, strerror(errno));
    int64_t cap = 0;
    size_t len = strlen(source);
    if (S_ISDIR(sb.st_mode)) {
        int files = 0;
        LOOM_CALL(load_dir(d, source, &cap, &files));
        LOOM_CHECK(files > 0, LOOM_ERR_IO, "data directory %s holds no text files", source);
        snprintf(d->desc, sizeof d->desc, "%s (%d text files, byte-level)", source, files);
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
        for (int64_t i = 0; i < d->n; i++) d->tokens[i] = (int32_t)(buf[2 * i] | (buf[2 * i + 1] << 8));
        free(buf);
        for (int64_t i = 0; i < d->n; i++)
            LOOM_CHECK(d->tokens[i] < d->vocab, LOOM_ERR_FORMAT, "%s: token %d at %lld is outside the model's vocabulary "
                       "of %lld", source, d->tokens[i], (long long)i, (long long)d->vocab);
        snprintf(d->desc, sizeof d->desc, "%s (uint16 tokens)", source);
    } else {
        unsigned char *buf;
        size_t n;
        LOOM_CALL(read_file(source, &buf, &n));
        loom_status st = append_bytes(d, buf, n, &cap);
        free(buf);
        LOOM_CALL(st);
        snprintf(d->desc, sizeof d->desc, "%s (byte-level)", source);
    }
    if (strstr(d->desc, "byte-level"))
        LOOM_CHECK(d->vocab >= 256, LOOM_ERR_CONFIG, "byte-level text needs model.vocab_size >= 256, got %lld",
                   (long long)d->vocab);
    return LOOM_OK;
}

loom_status loom_data_open(const char *source, int64_t vocab, double val_fraction, uint64_t seed, loom_data **out) {
    *out = NULL;
    LOOM_CHECK(val_fraction >= 0 && val_fraction < 1, LOOM_ERR_CONFIG,
               "data.val_fraction must be in [0, 1), got %g", val_fraction);
    LOOM_CHECK(vocab >= 2, LOOM_ERR_CONFIG, "vocabulary size %lld too small", (long long)vocab);
    loom_data *d = calloc(1, sizeof *d);
    LOOM_CHECK(d != NULL, LOOM_ERR_NOMEM, "out of memory");
    d->vocab = vocab;
    d->seed = seed;
    if (strcmp(source, "synthetic") == 0) {
        d->synthetic = 1;
        snprintf(d->desc, sizeof d->desc, "synthetic (uniform random tokens over %lld)", (long long)vocab);
    } else {
        loom_status st = load_source(d, source);
        if (st != LOOM_OK) {
            loom_data_free(&d);
            loom_error_trace(__FILE__, __LINE__, __func__);
            return st;
        }
        d->n_train = d->n - (int64_t)((double)d->n * val_fraction);
    }
    loom_rng_seed(&d->train_rng, seed ^ 0x7261696eull);
    loom_data_reset_val(d);
    *out = d;
    return LOOM_OK;
}

void loom_data_free(loom_data **pd) {
    if (!pd || !*pd) return;
    free((*pd)->tokens);
    free(*pd);
    *pd = NULL;
}

const char *loom_data_describe(const loom_data *d) { return d->desc; }

int64_t loom_data_num_tokens(const loom_data *d, loom_split split) {
    if (d->synthetic) return INT64_MAX;
    return split == LOOM_SPLIT_TRAIN ? d->n_train : d->n - d->n_train;
}

loom_status loom_data_next(loom_data *d, loom_split split, int64_t B, int64_t T, int32_t *tokens, int32_t *targets) {
    loom_rng *r = split == LOOM_SPLIT_TRAIN ? &d->train_rng : &d->val_rng;
    if (d->synthetic) {
        for (int64_t b = 0; b < B; b++) {
            int32_t prev = (int32_t)loom_rng_below(r, (uint64_t)d->vocab);
            for (int64_t t = 0; t < T; t++) {
                int32_t next = (int32_t)loom_rng_below(r, (uint64_t)d->vocab);
                tokens[b * T + t] = prev;
                targets[b * T + t] = next;
                prev = next;
            }
        }
    } else {
        int64_t lo = split == LOOM_SPLIT_TRAIN ? 0 : d->n_train;
        int64_t hi = split == LOOM_SPLIT_TRAIN ? d->n_train : d->n;
        LOOM_CHECK(hi - lo > T + 1, LOOM_ERR_CONFIG,
                   "the %s split has %lld tokens, fewer than one window of %lld (lower --seq-len or add data)",
                   split == LOOM_SPLIT_TRAIN ? "training" : "validation", (long long)(hi - lo), (long long)(T + 1));
        for (int64_t b = 0; b < B; b++) {
            int64_t off = lo + (int64_t)loom_rng_below(r, (uint64_t)(hi - lo - T - 1) + 1);
            memcpy(tokens + b * T, d->tokens + off, (size_t)T * sizeof(int32_t));
            memcpy(targets + b * T, d->tokens + off + 1, (size_t)T * sizeof(int32_t));
        }
    }
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
