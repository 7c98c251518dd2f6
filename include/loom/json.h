/* loom/json.h: a strict JSON reader (configs, checkpoint metadata) and writer (metrics lines, manifests).
 *
 *   loom_json *cfg = NULL;
 *   LOOM_CALL(loom_json_parse_file("run.json", &cfg));     // "run.json: line 3 col 9: expected ..."
 *   const loom_json *lr = loom_json_get(loom_json_get(cfg, "optim"), "lr");
 *   double x = (lr && lr->type == LOOM_JSON_NUMBER) ? lr->number : 3e-4;
 *   for (const loom_json *m = cfg->child; m; m = m->next) printf("%s\n", m->key);
 *   loom_json_free(&cfg);
 *
 *   loom_strbuf sb;
 *   loom_strbuf_init(&sb);
 *   loom_strbuf_printf(&sb, "{\"step\":%lld,\"loss\":", (long long)step);
 *   loom_json_write_number(&sb, loss);                     // NaN/Inf become null
 *   loom_strbuf_append(&sb, "}\n", 2);
 *   if (!sb.failed) fputs(sb.buf, f);
 *   loom_strbuf_free(&sb);
 *
 * The reader follows RFC 8259 strictly and rejects, with a "line L col C: expected X, found Y" message
 * (LOOM_ERR_FORMAT): trailing commas, comments, leading zeros, NaN/Infinity, numbers that overflow a
 * double, raw control characters or invalid UTF-8 in strings, bad escapes or unpaired surrogates,
 * duplicate keys, keys containing \u0000, nesting deeper than LOOM_JSON_MAX_DEPTH, and anything after
 * the value. A leading UTF-8 byte order mark is skipped. Number reading and writing ignore the C locale.
 * Not Collective; no state outside the caller's objects (errors go to loom_error_message()). */
#ifndef LOOM_JSON_H
#define LOOM_JSON_H

#include <stddef.h>

#include "loom/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_JSON_MAX_DEPTH 256 /* nested arrays/objects; one more is a parse error */

typedef enum {
    LOOM_JSON_NULL,
    LOOM_JSON_BOOL,
    LOOM_JSON_NUMBER,
    LOOM_JSON_STRING,
    LOOM_JSON_ARRAY,
    LOOM_JSON_OBJECT
} loom_json_type;

typedef struct loom_json loom_json;
struct loom_json {
    loom_json_type type;
    char *key;         /* member name when inside an object, else NULL */
    int boolean;       /* LOOM_JSON_BOOL: 0 or 1 */
    double number;     /* LOOM_JSON_NUMBER */
    char *string;      /* LOOM_JSON_STRING: NUL-terminated UTF-8, escapes decoded (may hold \0: see string_len) */
    size_t string_len; /* bytes in string, not counting the terminator */
    loom_json *child;  /* first element/member (ARRAY/OBJECT), in document order */
    loom_json *next;   /* next sibling */
    size_t n_children; /* elements/members (ARRAY/OBJECT) */
};

/* Parses `len` bytes of `text` (need not be NUL-terminated) into a new tree (*out, free with
 * loom_json_free). On error *out is NULL and the status is LOOM_ERR_FORMAT (LOOM_ERR_NOMEM,
 * LOOM_ERR_INVALID_ARG). */
LOOM_NODISCARD loom_status loom_json_parse(const char *text, size_t len, loom_json **out);
/* Reads and parses a file: LOOM_ERR_IO names the path and the system's reason; parse errors are
 * prefixed with the path ("cfg.json: line 2 col 5: ..."). */
LOOM_NODISCARD loom_status loom_json_parse_file(const char *path, loom_json **out);
/* Frees a tree from loom_json_parse (iteratively: any depth); NULL-safe; sets *j to NULL. */
void loom_json_free(loom_json **j);
/* The member `key` of object `obj`; NULL if missing, if obj is NULL or if obj is not an object. */
const loom_json *loom_json_get(const loom_json *obj, const char *key);
/* The name of a type ("null", "boolean", "number", "string", "array", "object"), for messages. */
const char *loom_json_type_name(loom_json_type t);

/* A growable string buffer. buf is NULL until the first append, then always NUL-terminated; `failed`
 * is set when an allocation fails, after which appends do nothing (check it once at the end). */
typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} loom_strbuf;

void loom_strbuf_init(loom_strbuf *sb);
void loom_strbuf_free(loom_strbuf *sb); /* releases buf and re-initialises */
void loom_strbuf_printf(loom_strbuf *sb, const char *fmt, ...) LOOM_PRINTF(2, 3);
void loom_strbuf_append(loom_strbuf *sb, const char *s, size_t n);

/* Appends `s` as a quoted JSON string: '"', '\\' and control characters are escaped; bytes that are not
 * valid UTF-8 are written as \ufffd so the output is always valid JSON. NULL is written as null. */
void loom_json_write_string(loom_strbuf *sb, const char *s);
/* Same for `n` bytes that may contain \0. */
void loom_json_write_string_n(loom_strbuf *sb, const char *s, size_t n);
/* Appends the shortest decimal that reads back as exactly `x` (at most 17 significant digits);
 * NaN and infinities are written as null. */
void loom_json_write_number(loom_strbuf *sb, double x);
/* Appends `j` as compact JSON (no whitespace), members in order. LOOM_ERR_INVALID_ARG for a
 * hand-built tree that is not valid (a member without a key, a bad type, nesting over the limit);
 * LOOM_ERR_NOMEM if sb failed. */
LOOM_NODISCARD loom_status loom_json_serialize(const loom_json *j, loom_strbuf *sb);

#ifdef __cplusplus
}
#endif
#endif
