/* safetensors: reading (validated, memory-mapped), sharded models with an index, and writing
 * (docs/FORMATS-hf.md). A file is an 8-byte little-endian header length N, N bytes of JSON
 * ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {string: string}}), then the
 * data area, which the tensors tile exactly in ascending offset order. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io_impl.h"
#include "loom/hf.h"
#include "loom/json.h"
#include "loom/log.h"
#include "loom/tensor.h"

/* ------------------------------------------------------------------------------------------------------ */
/* dtypes */

static const struct {
    const char *name;
    size_t size;
} st_dtypes[LOOM_ST_DTYPE_COUNT] = {
    [LOOM_ST_BOOL] = {"BOOL", 1},       [LOOM_ST_U8] = {"U8", 1},     [LOOM_ST_I8] = {"I8", 1},
    [LOOM_ST_F8_E5M2] = {"F8_E5M2", 1}, [LOOM_ST_F8_E4M3] = {"F8_E4M3", 1},
    [LOOM_ST_I16] = {"I16", 2},         [LOOM_ST_U16] = {"U16", 2},   [LOOM_ST_F16] = {"F16", 2},
    [LOOM_ST_BF16] = {"BF16", 2},       [LOOM_ST_I32] = {"I32", 4},   [LOOM_ST_U32] = {"U32", 4},
    [LOOM_ST_F32] = {"F32", 4},         [LOOM_ST_F64] = {"F64", 8},   [LOOM_ST_I64] = {"I64", 8},
    [LOOM_ST_U64] = {"U64", 8},
};

const char *loom_st_dtype_name(loom_st_dtype d) {
    return (unsigned)d < LOOM_ST_DTYPE_COUNT ? st_dtypes[d].name : "?";
}

size_t loom_st_dtype_size(loom_st_dtype d) { return (unsigned)d < LOOM_ST_DTYPE_COUNT ? st_dtypes[d].size : 0; }

loom_status loom_st_dtype_from_name(const char *name, loom_st_dtype *out) {
    for (int i = 0; i < LOOM_ST_DTYPE_COUNT; i++)
        if (strcmp(name, st_dtypes[i].name) == 0) {
            *out = (loom_st_dtype)i;
            return LOOM_OK;
        }
    return loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__,
                          "unknown dtype '%.40s' (safetensors dtypes: BOOL U8 I8 F8_E5M2 F8_E4M3 I16 U16 F16 BF16 "
                          "I32 U32 F32 F64 I64 U64)",
                          name);
}

/* ------------------------------------------------------------------------------------------------------ */
/* one file */

struct loom_st_file {
    char *path;             /* path or label */
    const unsigned char *base;
    size_t size;
    int mapped;             /* munmap on close */
    loom_json *header;      /* tensor names point into it */
    const loom_json *metadata;
    int n;
    loom_st_tensor *tensors; /* data order */
    int *by_name;            /* indices, sorted by name */
};

/* A JSON number that is an exact non-negative integer of at most 2^53 (every safetensors size is). */
static int json_uint(const loom_json *v, int64_t *out) {
    if (!v || v->type != LOOM_JSON_NUMBER) return 0;
    double x = v->number;
    if (!(x >= 0 && x <= 9007199254740992.0) || x != floor(x)) return 0;
    *out = (int64_t)x;
    return 1;
}

/* Orders of pointers to tensors (qsort has no context argument, so no tensor array index is needed). */
static int tensor_ptr_offset_cmp(const void *a, const void *b) {
    const loom_st_tensor *x = *(const loom_st_tensor *const *)a, *y = *(const loom_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int tensor_ptr_name_cmp(const void *a, const void *b) {
    const loom_st_tensor *x = *(const loom_st_tensor *const *)a, *y = *(const loom_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

void loom_st_file_close(loom_st_file **pf) {
    if (!pf || !*pf) return;
    loom_st_file *f = *pf;
    if (f->mapped && f->base) munmap((void *)f->base, f->size);
    loom_json_free(&f->header);
    free(f->tensors);
    free(f->by_name);
    free(f->path);
    free(f);
    *pf = NULL;
}

/* Describes a shape for messages: "[3, 4]". */
static void shape_text(const int64_t *shape, int ndim, char *buf, size_t cap) {
    size_t at = 0;
    at += (size_t)snprintf(buf + at, cap - at, "[");
    for (int i = 0; i < ndim && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (at < cap) snprintf(buf + at, cap - at, "]");
}

#define ST_FAIL(...) return loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__, __VA_ARGS__)

/* Validates one header entry into t (data pointer set by the caller). */
static loom_status parse_entry(const loom_st_file *f, const loom_json *e, uint64_t data_len, loom_st_tensor *t) {
    const char *label = f->path, *name = e->key;
    t->name = name;
    t->file = f->path;
    if (e->type != LOOM_JSON_OBJECT)
        ST_FAIL("%s: tensor '%.200s': header entry is a %s, expected an object with dtype, shape, data_offsets", label,
                name, loom_json_type_name(e->type));
    const loom_json *dt = loom_json_get(e, "dtype"), *sh = loom_json_get(e, "shape"),
                    *off = loom_json_get(e, "data_offsets");
    if (!dt || dt->type != LOOM_JSON_STRING)
        ST_FAIL("%s: tensor '%.200s': no \"dtype\" string in its header entry", label, name);
    if (loom_st_dtype_from_name(dt->string, &t->dtype) != LOOM_OK)
        ST_FAIL("%s: tensor '%.200s': unknown dtype '%.40s'", label, name, dt->string);
    if (!sh || sh->type != LOOM_JSON_ARRAY) ST_FAIL("%s: tensor '%.200s': no \"shape\" array in its header entry", label, name);
    if (sh->n_children > LOOM_ST_MAX_DIMS)
        ST_FAIL("%s: tensor '%.200s': %zu dimensions, loom reads at most %d", label, name, sh->n_children,
                LOOM_ST_MAX_DIMS);
    t->ndim = (int)sh->n_children;
    int i = 0, empty = 0;
    for (const loom_json *d = sh->child; d; d = d->next, i++) {
        int64_t v;
        if (!json_uint(d, &v))
            ST_FAIL("%s: tensor '%.200s': shape[%d] is not a non-negative integer", label, name, i);
        t->shape[i] = v;
        if (v == 0) empty = 1;
    }
    uint64_t numel = 1;
    int overflow = 0;
    for (int k = 0; k < t->ndim && !empty; k++) {
        if (numel > (uint64_t)INT64_MAX / (uint64_t)t->shape[k]) overflow = 1;
        else numel *= (uint64_t)t->shape[k];
    }
    if (empty) numel = 0;
    size_t es = loom_st_dtype_size(t->dtype);
    if (overflow || numel > (uint64_t)INT64_MAX / es)
        ST_FAIL("%s: tensor '%.200s': shape is too large (the byte count overflows 64 bits)", label, name);
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)(numel * es);
    int64_t b = 0, en = 0;
    if (!off || off->type != LOOM_JSON_ARRAY || off->n_children != 2 || !json_uint(off->child, &b) ||
        !json_uint(off->child->next, &en))
        ST_FAIL("%s: tensor '%.200s': \"data_offsets\" must be [begin, end], two non-negative integers", label, name);
    if (b > en) ST_FAIL("%s: tensor '%.200s': data_offsets [%lld, %lld] end before they begin", label, name,
                        (long long)b, (long long)en);
    if ((uint64_t)en > data_len)
        ST_FAIL("%s: tensor '%.200s': data_offsets [%lld, %lld] reach past the end of the data area (%llu bytes; "
                "truncated file?)",
                label, name, (long long)b, (long long)en, (unsigned long long)data_len);
    if ((uint64_t)(en - b) != numel * es) {
        char s[160];
        shape_text(t->shape, t->ndim, s, sizeof s);
        ST_FAIL("%s: tensor '%.200s': shape %s of %s needs %llu bytes but data_offsets [%lld, %lld] span %lld", label,
                name, s, st_dtypes[t->dtype].name, (unsigned long long)(numel * es), (long long)b, (long long)en,
                (long long)(en - b));
    }
    t->begin = b;
    return LOOM_OK;
}

static loom_status parse_header(loom_st_file *f) {
    const char *label = f->path;
    if (f->size < 8)
        ST_FAIL("%s: truncated: %zu bytes, but a safetensors file starts with an 8-byte header length", label, f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->base[i];
    if (hlen > f->size - 8)
        ST_FAIL("%s: header length %llu is more than the %zu bytes that follow it (truncated file, or not safetensors)",
                label, (unsigned long long)hlen, f->size - 8);
    if (hlen > LOOM_ST_MAX_HEADER)
        ST_FAIL("%s: header length %llu is over the format's limit of %llu bytes", label, (unsigned long long)hlen,
                (unsigned long long)LOOM_ST_MAX_HEADER);
    if (hlen < 2 || f->base[8] != '{')
        ST_FAIL("%s: the header (%llu bytes) does not start with '{' (not a safetensors file?)", label,
                (unsigned long long)hlen);
    if (loom_json_parse((const char *)f->base + 8, (size_t)hlen, &f->header) != LOOM_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", loom_error_message());
        ST_FAIL("%s: header JSON: %s", label, msg);
    }
    if (f->header->type != LOOM_JSON_OBJECT) ST_FAIL("%s: the header is not a JSON object", label);
    uint64_t data_len = f->size - 8 - hlen;
    const unsigned char *data = f->base + 8 + hlen;
    int n = 0;
    for (const loom_json *e = f->header->child; e; e = e->next) {
        if (strcmp(e->key, "__metadata__") == 0) {
            if (e->type != LOOM_JSON_OBJECT) ST_FAIL("%s: \"__metadata__\" must be an object of strings", label);
            for (const loom_json *m = e->child; m; m = m->next)
                if (m->type != LOOM_JSON_STRING)
                    ST_FAIL("%s: \"__metadata__\" value '%.100s' is a %s, expected a string", label, m->key,
                            loom_json_type_name(m->type));
            f->metadata = e;
        } else {
            n++;
        }
    }
    f->n = n;
    f->tensors = calloc(n ? (size_t)n : 1, sizeof *f->tensors);
    f->by_name = calloc(n ? (size_t)n : 1, sizeof *f->by_name);
    loom_st_tensor **order = calloc(n ? (size_t)n : 1, sizeof *order);
    if (!f->tensors || !f->by_name || !order) {
        free(order);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "%s: out of memory for %d tensors",
                              label, n);
    }
    loom_st_tensor *tmp = calloc(n ? (size_t)n : 1, sizeof *tmp);
    if (!tmp) {
        free(order);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "%s: out of memory", label);
    }
    loom_status st = LOOM_OK;
    int k = 0;
    for (const loom_json *e = f->header->child; e && st == LOOM_OK; e = e->next) {
        if (strcmp(e->key, "__metadata__") == 0) continue;
        st = parse_entry(f, e, data_len, &tmp[k]);
        if (st == LOOM_OK) {
            tmp[k].data = data + tmp[k].begin;
            order[k] = &tmp[k];
            k++;
        }
    }
    if (st == LOOM_OK) {
        /* the tensors must tile the data area: ascending, no overlap, no gap, nothing after the last */
        qsort(order, (size_t)n, sizeof *order, tensor_ptr_offset_cmp);
        uint64_t at = 0;
        for (int i = 0; i < n && st == LOOM_OK; i++) {
            const loom_st_tensor *t = order[i];
            uint64_t b = (uint64_t)t->begin, e = b + t->nbytes;
            if (b < at)
                st = loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                    "%s: tensor '%.200s' data_offsets [%llu, %llu] overlap tensor '%.200s' (which ends "
                                    "at %llu)",
                                    label, t->name, (unsigned long long)b, (unsigned long long)e, order[i - 1]->name,
                                    (unsigned long long)at);
            else if (b > at)
                st = loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                    "%s: tensor '%.200s' data_offsets [%llu, %llu] leave a gap: bytes %llu..%llu of the "
                                    "data area belong to no tensor",
                                    label, t->name, (unsigned long long)b, (unsigned long long)e,
                                    (unsigned long long)at, (unsigned long long)b);
            at = e;
        }
        if (st == LOOM_OK && at != data_len)
            st = loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                "%s: the tensors cover %llu bytes of a %llu-byte data area (the header does not describe "
                                "the file)",
                                label, (unsigned long long)at, (unsigned long long)data_len);
    }
    if (st == LOOM_OK) {
        for (int i = 0; i < n; i++) f->tensors[i] = *order[i];
        for (int i = 0; i < n; i++) order[i] = &f->tensors[i];
        qsort(order, (size_t)n, sizeof *order, tensor_ptr_name_cmp);
        for (int i = 0; i < n; i++) f->by_name[i] = (int)(order[i] - f->tensors);
    }
    free(order);
    free(tmp);
    return st;
}

static loom_status file_new(const char *label, loom_st_file **out) {
    loom_st_file *f = calloc(1, sizeof *f);
    LOOM_CHECK(f != NULL, LOOM_ERR_NOMEM, "out of memory");
    f->path = strdup(label ? label : "(memory)");
    if (!f->path) {
        free(f);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    *out = f;
    return LOOM_OK;
}

loom_status loom_st_file_parse(const void *bytes, size_t size, const char *label, loom_st_file **out) {
    LOOM_CHECK(out != NULL && (bytes != NULL || size == 0), LOOM_ERR_INVALID_ARG, "loom_st_file_parse: bad arguments");
    *out = NULL;
    loom_st_file *f = NULL;
    LOOM_CALL(file_new(label, &f));
    f->base = bytes;
    f->size = size;
    loom_status st = parse_header(f);
    if (st != LOOM_OK) {
        loom_st_file_close(&f);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    *out = f;
    return LOOM_OK;
}

loom_status loom_st_file_open(const char *path, loom_st_file **out) {
    LOOM_CHECK(out != NULL && path != NULL, LOOM_ERR_INVALID_ARG, "loom_st_file_open: bad arguments");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    LOOM_CHECK(fd >= 0, LOOM_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    int stat_ok = fstat(fd, &sb) == 0, err = errno;
    if (!stat_ok || !S_ISREG(sb.st_mode)) {
        close(fd);
        return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "%s: %s", path,
                              stat_ok ? "not a regular file" : strerror(err));
    }
    loom_st_file *f = NULL;
    loom_status st = file_new(path, &f);
    if (st != LOOM_OK) {
        close(fd);
        return st;
    }
    f->size = (size_t)sb.st_size;
    if (f->size > 0) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int map_err = errno;
            close(fd);
            loom_st_file_close(&f);
            return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot map %s: %s", path, strerror(map_err));
        }
        f->base = p;
        f->mapped = 1;
    } else {
        f->base = (const unsigned char *)"";
    }
    close(fd);
    st = parse_header(f);
    if (st != LOOM_OK) {
        loom_st_file_close(&f);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    *out = f;
    return LOOM_OK;
}

const char *loom_st_file_path(const loom_st_file *f) { return f->path; }
int loom_st_file_num_tensors(const loom_st_file *f) { return f->n; }
const loom_st_tensor *loom_st_file_tensor(const loom_st_file *f, int i) {
    return i >= 0 && i < f->n ? &f->tensors[i] : NULL;
}

const loom_st_tensor *loom_st_file_find(const loom_st_file *f, const char *name) {
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const loom_st_tensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

const char *loom_st_file_metadata(const loom_st_file *f, const char *key) {
    const loom_json *v = loom_json_get(f->metadata, key);
    return v && v->type == LOOM_JSON_STRING ? v->string : NULL;
}

loom_status loom_st_tensor_read_f32(const loom_st_tensor *t, float *dst, int64_t n) {
    LOOM_CHECK(t != NULL && (dst != NULL || n == 0), LOOM_ERR_INVALID_ARG, "loom_st_tensor_read_f32: bad arguments");
    LOOM_CHECK(n == t->numel, LOOM_ERR_INVALID_ARG, "%s: tensor '%s' has %lld elements, the caller expects %lld",
               t->file, t->name, (long long)t->numel, (long long)n);
    const unsigned char *src = t->data;
    switch (t->dtype) {
    case LOOM_ST_F32:
        if (n) memcpy(dst, src, t->nbytes);
        return LOOM_OK;
    case LOOM_ST_BF16:
    case LOOM_ST_F16: {
        int bf = t->dtype == LOOM_ST_BF16;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2); /* the data need not be aligned */
            dst[i] = bf ? loom_bf16_to_f32(h) : loom_f16_to_f32(h);
        }
        return LOOM_OK;
    }
    default:
        return loom_error_set(LOOM_ERR_UNSUPPORTED, __FILE__, __LINE__, __func__,
                              "%s: tensor '%s' is %s; loom reads F32, BF16 and F16 weights", t->file, t->name,
                              loom_st_dtype_name(t->dtype));
    }
}

/* ------------------------------------------------------------------------------------------------------ */
/* the index of a sharded model */

typedef struct {
    loom_json *json; /* the strings point into it */
} index_priv;

void loom_st_index_free(loom_st_index **pix) {
    if (!pix || !*pix) return;
    loom_st_index *ix = *pix;
    index_priv *p = ix->priv_;
    if (p) loom_json_free(&p->json);
    free(p);
    free(ix->tensor);
    free(ix->file);
    free(ix->files);
    free(ix);
    *pix = NULL;
}

static int plain_file_name(const loom_json *v) {
    if (!v || v->type != LOOM_JSON_STRING || v->string_len == 0 || strlen(v->string) != v->string_len) return 0;
    if (strchr(v->string, '/') || strcmp(v->string, ".") == 0 || strcmp(v->string, "..") == 0) return 0;
    return 1;
}

loom_status loom_st_index_parse(const char *text, size_t len, const char *label, loom_st_index **out) {
    LOOM_CHECK(out != NULL, LOOM_ERR_INVALID_ARG, "loom_st_index_parse: out is NULL");
    *out = NULL;
    if (!label) label = "(index)";
    loom_json *j = NULL;
    if (loom_json_parse(text, len, &j) != LOOM_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", loom_error_message());
        ST_FAIL("%s: %s", label, msg);
    }
    loom_status st = LOOM_OK;
    loom_st_index *ix = calloc(1, sizeof *ix);
    index_priv *p = calloc(1, sizeof *p);
    if (!ix || !p) {
        free(ix);
        free(p);
        loom_json_free(&j);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    ix->priv_ = p;
    p->json = j;
    ix->total_size = -1;
    const loom_json *wm = loom_json_get(j, "weight_map"), *meta = loom_json_get(j, "metadata");
    if (j->type != LOOM_JSON_OBJECT) {
        st = loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s: not a JSON object", label);
        goto fail;
    }
    if (!wm || wm->type != LOOM_JSON_OBJECT) {
        st = loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__,
                            "%s: no \"weight_map\" object (tensor name -> shard file)", label);
        goto fail;
    }
    if (meta && meta->type != LOOM_JSON_OBJECT && meta->type != LOOM_JSON_NULL) {
        st = loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s: \"metadata\" must be an object", label);
        goto fail;
    }
    const loom_json *ts = loom_json_get(meta, "total_size");
    if (ts && !json_uint(ts, &ix->total_size)) {
        st = loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__,
                            "%s: metadata.total_size must be a non-negative integer", label);
        goto fail;
    }
    size_t n = wm->n_children;
    if (n > (size_t)1 << 24) {
        st = loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s: %zu tensors in the weight_map", label, n);
        goto fail;
    }
    ix->tensor = calloc(n ? n : 1, sizeof *ix->tensor);
    ix->file = calloc(n ? n : 1, sizeof *ix->file);
    ix->files = calloc(n ? n : 1, sizeof *ix->files);
    if (!ix->tensor || !ix->file || !ix->files) {
        st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
        goto fail;
    }
    for (const loom_json *e = wm->child; e; e = e->next) {
        if (!plain_file_name(e)) {
            st = loom_error_set(LOOM_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                "%s: weight_map['%.200s'] must be a shard file name in the same directory (a non-empty "
                                "string without '/')",
                                label, e->key);
            goto fail;
        }
        int f = 0;
        /* shards are few: a linear search over the distinct names */
        while (f < ix->n_files && strcmp(ix->files[f], e->string) != 0) f++;
        if (f == ix->n_files) ix->files[ix->n_files++] = e->string;
        ix->tensor[ix->n] = e->key;
        ix->file[ix->n] = ix->files[f];
        ix->n++;
    }
    *out = ix;
    return LOOM_OK;
fail:
    loom_st_index_free(&ix);
    return st;
}

/* ------------------------------------------------------------------------------------------------------ */
/* a model: one file, or shards with an index */

struct loom_st_model {
    char *source;
    int n_files;
    loom_st_file **files;
    int n;
    const loom_st_tensor **by_name;
};

void loom_st_model_close(loom_st_model **pm) {
    if (!pm || !*pm) return;
    loom_st_model *m = *pm;
    for (int i = 0; i < m->n_files; i++) loom_st_file_close(&m->files[i]);
    free(m->files);
    free(m->by_name);
    free(m->source);
    free(m);
    *pm = NULL;
}

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t at = a;
    if (a && dir[a - 1] != '/') p[at++] = '/';
    memcpy(p + at, name, b + 1);
    return p;
}

static loom_status read_text_file(const char *path, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    LOOM_CHECK(f != NULL, LOOM_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (cap - n < 4096) {
            char *nb = cap < ((size_t)1 << 30) ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    LOOM_CHECK(buf != NULL, LOOM_ERR_NOMEM, "%s: out of memory (or larger than 1 GiB)", path);
    if (err) {
        free(buf);
        return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "reading %s failed", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return LOOM_OK;
}

static loom_status model_index(loom_st_model *m) {
    m->n = 0;
    for (int i = 0; i < m->n_files; i++) m->n += loom_st_file_num_tensors(m->files[i]);
    m->by_name = calloc(m->n ? (size_t)m->n : 1, sizeof *m->by_name);
    LOOM_CHECK(m->by_name != NULL, LOOM_ERR_NOMEM, "out of memory");
    int k = 0;
    for (int i = 0; i < m->n_files; i++)
        for (int j = 0; j < loom_st_file_num_tensors(m->files[i]); j++) m->by_name[k++] = loom_st_file_tensor(m->files[i], j);
    qsort(m->by_name, (size_t)m->n, sizeof *m->by_name, tensor_ptr_name_cmp);
    for (int i = 1; i < m->n; i++)
        LOOM_CHECK(strcmp(m->by_name[i - 1]->name, m->by_name[i]->name) != 0, LOOM_ERR_FORMAT,
                   "%s: tensor '%.200s' is in two shards, %s and %s", m->source, m->by_name[i]->name,
                   m->by_name[i - 1]->file, m->by_name[i]->file);
    return LOOM_OK;
}

typedef struct {
    const char *name;
    int i;
} index_entry;

static int index_entry_cmp(const void *a, const void *b) {
    return strcmp(((const index_entry *)a)->name, ((const index_entry *)b)->name);
}

static loom_status model_open_sharded(loom_st_model *m, const char *dir, const char *index_path) {
    index_entry *sorted = NULL;
    char *text = NULL;
    size_t len = 0;
    LOOM_CALL(read_text_file(index_path, &text, &len));
    loom_st_index *ix = NULL;
    loom_status st = loom_st_index_parse(text, len, index_path, &ix);
    free(text);
    LOOM_CALL(st);
    m->files = calloc(ix->n_files ? (size_t)ix->n_files : 1, sizeof *m->files);
    LOOM_CHECK_GOTO(st, m->files != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    LOOM_CHECK_GOTO(st, ix->n_files > 0, LOOM_ERR_FORMAT, done, "%s: the weight_map is empty", index_path);
    for (int i = 0; i < ix->n_files; i++) {
        char *p = path_join(dir, ix->files[i]);
        LOOM_CHECK_GOTO(st, p != NULL, LOOM_ERR_NOMEM, done, "out of memory");
        st = loom_st_file_open(p, &m->files[i]);
        free(p);
        if (st != LOOM_OK) {
            loom_error_trace(__FILE__, __LINE__, __func__);
            goto done;
        }
        m->n_files++;
    }
    /* index and shards agree */
    for (int i = 0; i < ix->n; i++) {
        int f = 0;
        while (ix->files[f] != ix->file[i]) f++;
        LOOM_CHECK_GOTO(st, loom_st_file_find(m->files[f], ix->tensor[i]) != NULL, LOOM_ERR_FORMAT, done,
                        "%s: tensor '%.200s' is mapped to %s, which does not hold it", index_path, ix->tensor[i],
                        ix->files[f]);
    }
    /* every shard tensor is in the index, mapped to that shard: look names up in a sorted copy */
    sorted = calloc(ix->n > 0 ? (size_t)ix->n : 1u, sizeof *sorted);
    LOOM_CHECK_GOTO(st, sorted != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    for (int i = 0; i < ix->n; i++) sorted[i] = (index_entry){ix->tensor[i], i};
    qsort(sorted, (size_t)ix->n, sizeof *sorted, index_entry_cmp);
    for (int f = 0; f < ix->n_files; f++)
        for (int j = 0; j < loom_st_file_num_tensors(m->files[f]); j++) {
            const loom_st_tensor *t = loom_st_file_tensor(m->files[f], j);
            index_entry key = {t->name, -1};
            const index_entry *hit = bsearch(&key, sorted, (size_t)ix->n, sizeof *sorted, index_entry_cmp);
            int i = hit ? hit->i : -1;
            LOOM_CHECK_GOTO(st, i >= 0, LOOM_ERR_FORMAT, done, "%s: tensor '%.200s' is not in the index %s",
                            t->file, t->name, index_path);
            LOOM_CHECK_GOTO(st, ix->file[i] == ix->files[f], LOOM_ERR_FORMAT, done,
                            "%s: tensor '%.200s' is here but the index maps it to %s", t->file, t->name, ix->file[i]);
        }
    LOOM_CALL_GOTO(st, model_index(m), done);
done:
    free(sorted);
    loom_st_index_free(&ix);
    return st;
}

loom_status loom_st_model_open(const char *path, loom_st_model **out) {
    LOOM_CHECK(out != NULL && path != NULL, LOOM_ERR_INVALID_ARG, "loom_st_model_open: bad arguments");
    *out = NULL;
    struct stat sb;
    LOOM_CHECK(stat(path, &sb) == 0, LOOM_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    loom_st_model *m = calloc(1, sizeof *m);
    LOOM_CHECK(m != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_status st = LOOM_OK;
    if (S_ISREG(sb.st_mode)) {
        m->source = strdup(path);
        m->files = calloc(1, sizeof *m->files);
        LOOM_CHECK_GOTO(st, m->source && m->files, LOOM_ERR_NOMEM, fail, "out of memory");
        LOOM_CALL_GOTO(st, loom_st_file_open(path, &m->files[0]), fail);
        m->n_files = 1;
        LOOM_CALL_GOTO(st, model_index(m), fail);
    } else {
        char *index = path_join(path, "model.safetensors.index.json"), *single = path_join(path, "model.safetensors");
        LOOM_CHECK_GOTO(st, index && single, LOOM_ERR_NOMEM, fail_paths, "out of memory");
        if (access(index, F_OK) == 0) {
            m->source = index;
            index = NULL;
            LOOM_CALL_GOTO(st, model_open_sharded(m, path, m->source), fail_paths);
        } else if (access(single, F_OK) == 0) {
            m->source = single;
            single = NULL;
            m->files = calloc(1, sizeof *m->files);
            LOOM_CHECK_GOTO(st, m->files != NULL, LOOM_ERR_NOMEM, fail_paths, "out of memory");
            LOOM_CALL_GOTO(st, loom_st_file_open(m->source, &m->files[0]), fail_paths);
            m->n_files = 1;
            LOOM_CALL_GOTO(st, model_index(m), fail_paths);
        } else {
            st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__,
                                "%s holds neither model.safetensors nor model.safetensors.index.json", path);
        }
    fail_paths:
        free(index);
        free(single);
        if (st != LOOM_OK) goto fail;
    }
    *out = m;
    return LOOM_OK;
fail:
    loom_st_model_close(&m);
    return st;
}

const char *loom_st_model_source(const loom_st_model *m) { return m->source; }
int loom_st_model_num_files(const loom_st_model *m) { return m->n_files; }
int loom_st_model_num_tensors(const loom_st_model *m) { return m->n; }
const loom_st_tensor *loom_st_model_tensor(const loom_st_model *m, int i) { return i >= 0 && i < m->n ? m->by_name[i] : NULL; }

const loom_st_tensor *loom_st_model_find(const loom_st_model *m, const char *name) {
    int lo = 0, hi = m->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, m->by_name[mid]->name);
        if (c == 0) return m->by_name[mid];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------------------ */
/* writing */

static loom_status spec_nbytes(const loom_st_spec *s, size_t *out) {
    LOOM_CHECK((unsigned)s->dtype < LOOM_ST_DTYPE_COUNT, LOOM_ERR_INVALID_ARG, "tensor '%s': bad dtype %d", s->name,
               (int)s->dtype);
    LOOM_CHECK(s->ndim >= 0 && s->ndim <= LOOM_ST_MAX_DIMS, LOOM_ERR_INVALID_ARG, "tensor '%s': %d dimensions",
               s->name, s->ndim);
    uint64_t n = loom_st_dtype_size(s->dtype);
    for (int i = 0; i < s->ndim; i++) {
        LOOM_CHECK(s->shape[i] >= 0 && (s->shape[i] == 0 || n <= (uint64_t)INT64_MAX / (uint64_t)s->shape[i]),
                   LOOM_ERR_INVALID_ARG, "tensor '%s': bad shape", s->name);
        n *= (uint64_t)s->shape[i];
    }
    *out = (size_t)n;
    return LOOM_OK;
}

loom_status loom_st_write(const char *path, const loom_st_spec *specs, int n, loom_st_fill_fn fill, void *ctx) {
    LOOM_CHECK(path && (specs || n == 0) && n >= 0 && fill, LOOM_ERR_INVALID_ARG, "loom_st_write: bad arguments");
    loom_strbuf h;
    loom_strbuf_init(&h);
    loom_strbuf_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t at = 0;
    size_t max_bytes = 0;
    for (int i = 0; i < n; i++) {
        size_t nb;
        loom_status st = spec_nbytes(&specs[i], &nb);
        if (st != LOOM_OK) {
            loom_strbuf_free(&h);
            return st;
        }
        if (nb > max_bytes) max_bytes = nb;
        loom_strbuf_append(&h, ",", 1);
        loom_json_write_string(&h, specs[i].name);
        loom_strbuf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", loom_st_dtype_name(specs[i].dtype));
        for (int d = 0; d < specs[i].ndim; d++) loom_strbuf_printf(&h, "%s%lld", d ? "," : "", (long long)specs[i].shape[d]);
        loom_strbuf_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)at,
                           (unsigned long long)(at + nb));
        at += nb;
    }
    loom_strbuf_append(&h, "}", 1);
    while (!h.failed && h.len % 8 != 0) loom_strbuf_append(&h, " ", 1); /* 8 + len: data starts 8-byte aligned */
    if (h.failed) {
        loom_strbuf_free(&h);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    unsigned char *buf = malloc(max_bytes ? max_bytes : 1);
    int fd = -1;
    loom_status st = LOOM_OK;
    LOOM_CHECK_GOTO(st, tmp && buf, LOOM_ERR_NOMEM, done, "out of memory (%zu bytes for one tensor)", max_bytes);
    loom_io_tmp_path(tmp, plen + 32, path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    LOOM_CHECK_GOTO(st, fd >= 0, LOOM_ERR_IO, done, "cannot create %s: %s", tmp, strerror(errno));
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    LOOM_CALL_GOTO(st, loom_io_write_all(fd, len8, 8, tmp), done);
    LOOM_CALL_GOTO(st, loom_io_write_all(fd, h.buf, h.len, tmp), done);
    for (int i = 0; i < n; i++) {
        size_t nb = 0;
        LOOM_CALL_GOTO(st, spec_nbytes(&specs[i], &nb), done);
        LOOM_CALL_GOTO(st, fill(ctx, i, buf, nb), done);
        LOOM_CALL_GOTO(st, loom_io_write_all(fd, buf, nb, tmp), done);
    }
    LOOM_CHECK_GOTO(st, fsync(fd) == 0, LOOM_ERR_IO, done, "fsync %s: %s", tmp, strerror(errno));
    LOOM_CHECK_GOTO(st, close(fd) == 0, LOOM_ERR_IO, done, "closing %s: %s", tmp, strerror(errno));
    fd = -1;
    LOOM_CHECK_GOTO(st, rename(tmp, path) == 0, LOOM_ERR_IO, done, "cannot rename %s to %s: %s", tmp, path,
                    strerror(errno));
done:
    if (fd >= 0) close(fd);
    if (st != LOOM_OK && tmp) unlink(tmp);
    free(tmp);
    free(buf);
    loom_strbuf_free(&h);
    return st;
}

/* Calls the caller's fill for a shard's local index. */
typedef struct {
    loom_st_fill_fn fill;
    void *ctx;
    int first;
} shard_ctx;

static loom_status shard_fill(void *ctx, int i, void *dst, size_t nbytes) {
    shard_ctx *s = ctx;
    return s->fill(s->ctx, s->first + i, dst, nbytes);
}

static int is_shard_name(const char *s) {
    unsigned a, b;
    int end = 0;
    return sscanf(s, "model-%5u-of-%5u.safetensors%n", &a, &b, &end) == 2 && s[end] == '\0';
}

static int spec_name_cmp(const void *a, const void *b) {
    return strcmp((*(const loom_st_spec *const *)a)->name, (*(const loom_st_spec *const *)b)->name);
}

/* Removes `name` in dir if it exists (a stale file of the other layout), saying so. */
static loom_status remove_stale(const char *dir, const char *name) {
    char *p = path_join(dir, name);
    LOOM_CHECK(p != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_status st = LOOM_OK;
    if (access(p, F_OK) == 0) {
        if (unlink(p) == 0) LOOM_INFO("removed stale %s", p);
        else st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot remove stale %s: %s", p, strerror(errno));
    }
    free(p);
    return st;
}

loom_status loom_st_write_model(const char *dir, const loom_st_spec *specs, int n, int64_t max_shard_bytes,
                                loom_st_fill_fn fill, void *ctx) {
    LOOM_CHECK(dir && (specs || n == 0) && n >= 0 && fill && max_shard_bytes >= 0, LOOM_ERR_INVALID_ARG,
               "loom_st_write_model: bad arguments");
    /* plan the shards: tensors in order, a new shard when the next would pass the limit */
    int *shard_of = calloc(n ? (size_t)n : 1, sizeof *shard_of);
    LOOM_CHECK(shard_of != NULL, LOOM_ERR_NOMEM, "out of memory");
    int n_shards = 1;
    uint64_t in_shard = 0, total = 0;
    loom_status st = LOOM_OK;
    for (int i = 0; i < n; i++) {
        size_t nb;
        LOOM_CALL_GOTO(st, spec_nbytes(&specs[i], &nb), done);
        if (max_shard_bytes > 0 && in_shard > 0 && in_shard + nb > (uint64_t)max_shard_bytes) {
            n_shards++;
            in_shard = 0;
        }
        shard_of[i] = n_shards - 1;
        in_shard += nb;
        total += nb;
    }
    LOOM_CHECK_GOTO(st, n_shards <= 99999, LOOM_ERR_INVALID_ARG, done,
                    "%d shards: the shard size limit %lld is too small", n_shards, (long long)max_shard_bytes);
    if (n_shards == 1) {
        char *p = path_join(dir, "model.safetensors");
        LOOM_CHECK_GOTO(st, p != NULL, LOOM_ERR_NOMEM, done, "out of memory");
        st = loom_st_write(p, specs, n, fill, ctx);
        free(p);
        LOOM_CALL_GOTO(st, st, done);
        LOOM_CALL_GOTO(st, remove_stale(dir, "model.safetensors.index.json"), done);
    } else {
        char name[64];
        int first = 0;
        for (int s = 0; s < n_shards; s++) {
            int last = first;
            while (last < n && shard_of[last] == s) last++;
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
            char *p = path_join(dir, name);
            LOOM_CHECK_GOTO(st, p != NULL, LOOM_ERR_NOMEM, done, "out of memory");
            shard_ctx sc = {fill, ctx, first};
            st = loom_st_write(p, specs + first, last - first, shard_fill, &sc);
            free(p);
            LOOM_CALL_GOTO(st, st, done);
            first = last;
        }
        /* the index, weight_map sorted by name (as transformers writes it) */
        const loom_st_spec **sorted = malloc((size_t)n * sizeof *sorted);
        LOOM_CHECK_GOTO(st, sorted != NULL, LOOM_ERR_NOMEM, done, "out of memory");
        for (int i = 0; i < n; i++) sorted[i] = &specs[i];
        qsort(sorted, (size_t)n, sizeof *sorted, spec_name_cmp);
        loom_strbuf ix;
        loom_strbuf_init(&ix);
        loom_strbuf_printf(&ix, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {",
                           (unsigned long long)total);
        for (int i = 0; i < n; i++) {
            int k = (int)(sorted[i] - specs);
            loom_strbuf_printf(&ix, "%s\n    ", i ? "," : "");
            loom_json_write_string(&ix, specs[k].name);
            loom_strbuf_printf(&ix, ": \"model-%05d-of-%05d.safetensors\"", shard_of[k] + 1, n_shards);
        }
        loom_strbuf_printf(&ix, "\n  }\n}\n");
        free(sorted);
        char *p = path_join(dir, "model.safetensors.index.json"), *tmp = p ? malloc(strlen(p) + 32) : NULL;
        if (ix.failed || !p || !tmp) {
            st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
        } else {
            loom_io_tmp_path(tmp, strlen(p) + 32, p);
            int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (fd < 0) {
                st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", tmp, strerror(errno));
            } else {
                st = loom_io_write_all(fd, ix.buf, ix.len, tmp);
                if (st == LOOM_OK && fsync(fd) != 0)
                    st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "fsync %s: %s", tmp, strerror(errno));
                close(fd);
                if (st == LOOM_OK && rename(tmp, p) != 0)
                    st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot rename %s to %s: %s", tmp, p,
                                        strerror(errno));
                if (st != LOOM_OK) unlink(tmp);
            }
        }
        free(tmp);
        free(p);
        loom_strbuf_free(&ix);
        LOOM_CALL_GOTO(st, st, done);
        LOOM_CALL_GOTO(st, remove_stale(dir, "model.safetensors"), done);
    }
    /* shards of an earlier export that this one did not write */
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char keep[64];
        snprintf(keep, sizeof keep, "-of-%05d.safetensors", n_shards);
        while ((e = readdir(d)) != NULL) {
            if (!is_shard_name(e->d_name)) continue;
            if (n_shards > 1 && strstr(e->d_name, keep) && atoi(e->d_name + 6) <= n_shards) continue;
            st = remove_stale(dir, e->d_name);
            if (st != LOOM_OK) break;
        }
        closedir(d);
        LOOM_CALL_GOTO(st, st, done);
    }
done:
    free(shard_of);
    return st;
}
