/* Strict JSON reader (RFC 8259) and writer (see include/loom/json.h).
 *
 * The reader is recursive descent; recursion is bounded by LOOM_JSON_MAX_DEPTH because the depth is
 * checked before each container is entered. Errors carry a 1-based line and column (in characters)
 * computed only when an error happens. Duplicate keys are found per object after it is read, by
 * sorting its members (O(n log n), so a huge object cannot make the reader quadratic). */
#include "loom/json.h"

#include <errno.h>
#include <float.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A parsed node and the input offset of its key (for duplicate-key messages). loom_json is the first
 * member, so the two share an address and free() of either releases the node. */
typedef struct {
    loom_json j;
    size_t key_at;
} json_node;

typedef struct {
    const unsigned char *s;
    size_t len, pos;
    size_t begin;     /* 3 after a UTF-8 byte order mark, else 0 */
    const char *name; /* file name that prefixes messages, or NULL */
    int depth;        /* containers open around pos */
    char *scratch;    /* the string being decoded */
    size_t scratch_len, scratch_cap;
} json_parser;

/* Inside the recursive reader errors are passed up without adding a trace frame per level (a deep
 * document would fill the trace with identical frames); JSON_ERR records the line that found it. */
#define JSON_TRY(expr)                               \
    do {                                             \
        loom_status json_try_s_ = (expr);            \
        if (json_try_s_ != LOOM_OK) return json_try_s_; \
    } while (0)
#define JSON_ERR(p, at, ...) json_error((p), (at), __LINE__, __VA_ARGS__)

static void json_line_col(const json_parser *p, size_t at, size_t *line, size_t *col) {
    size_t l = 1, c = 1;
    for (size_t i = p->begin; i < at && i < p->len; i++) {
        if (p->s[i] == '\n') {
            l++;
            c = 1;
        } else if ((p->s[i] & 0xC0) != 0x80) {
            c++; /* count characters, not UTF-8 continuation bytes */
        }
    }
    *line = l;
    *col = c;
}

/* What stands at `at`, for "found ..." */
static const char *json_describe(const json_parser *p, size_t at, char buf[16]) {
    if (at >= p->len) return "end of input";
    unsigned char c = p->s[at];
    if (c >= 0x20 && c < 0x7f) snprintf(buf, 16, "'%c'", c);
    else snprintf(buf, 16, "byte 0x%02x", (unsigned)c);
    return buf;
}

/* A key shortened and with control characters replaced, safe to put in a message. */
static const char *json_excerpt(const char *key, char out[48]) {
    size_t i = 0;
    for (; key[i] && i < 40; i++) {
        unsigned char c = (unsigned char)key[i];
        out[i] = (c < 0x20 || c == 0x7f) ? '?' : key[i];
    }
    if (key[i]) memcpy(out + i, "...", 4);
    else out[i] = '\0';
    return out;
}

static loom_status json_error(const json_parser *p, size_t at, int src_line, const char *fmt, ...)
    LOOM_PRINTF(4, 5);
static loom_status json_error(const json_parser *p, size_t at, int src_line, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t line, col;
    json_line_col(p, at, &line, &col);
    return loom_error_set(LOOM_ERR_FORMAT, __FILE__, src_line, "loom_json_parse", "%s%sline %zu col %zu: %s",
                          p->name ? p->name : "", p->name ? ": " : "", line, col, msg);
}

static loom_status json_nomem(const json_parser *p) {
    return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__,
                          "%s%sout of memory parsing JSON (%zu bytes of input)", p->name ? p->name : "",
                          p->name ? ": " : "", p->len);
}

static int json_scratch_put(json_parser *p, const void *src, size_t n) {
    if (p->scratch_cap - p->scratch_len < n + 1) {
        size_t cap = p->scratch_cap ? p->scratch_cap : 64;
        while (cap - p->scratch_len < n + 1) {
            if (cap > SIZE_MAX / 2) return 0;
            cap *= 2;
        }
        char *b = realloc(p->scratch, cap);
        if (!b) return 0;
        p->scratch = b;
        p->scratch_cap = cap;
    }
    memcpy(p->scratch + p->scratch_len, src, n);
    p->scratch_len += n;
    return 1;
}

/* Length of the valid UTF-8 sequence at s (n > 0 bytes available), or 0 if it is not (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF). */
static size_t json_utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t k;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        k = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < k || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < k; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return k;
}

static size_t json_utf8_encode(unsigned long cp, unsigned char out[4]) {
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

static void json_skip_ws(json_parser *p) {
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static loom_status json_hex4(const json_parser *p, size_t at, unsigned long *out) {
    unsigned long v = 0;
    for (size_t i = 0; i < 4; i++) {
        int c = at + i < p->len ? p->s[at + i] : -1, d = -1;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        char b[16];
        if (d < 0) return JSON_ERR(p, at + i, "expected 4 hex digits after \\u, found %s", json_describe(p, at + i, b));
        v = v * 16 + (unsigned long)d;
    }
    *out = v;
    return LOOM_OK;
}

/* Reads the string whose opening quote is at pos into a new NUL-terminated buffer. */
static loom_status json_parse_string(json_parser *p, char **out, size_t *out_len) {
    size_t open = p->pos++;
    char b[16];
    p->scratch_len = 0;
    for (;;) {
        size_t run = p->pos;
        while (run < p->len && p->s[run] >= 0x20 && p->s[run] < 0x80 && p->s[run] != '"' && p->s[run] != '\\') run++;
        if (run > p->pos && !json_scratch_put(p, p->s + p->pos, run - p->pos)) return json_nomem(p);
        p->pos = run;
        if (p->pos >= p->len) {
            size_t l, c;
            json_line_col(p, open, &l, &c);
            return JSON_ERR(p, p->pos, "expected '\"' to close the string opened at line %zu col %zu, found end of input",
                            l, c);
        }
        unsigned char ch = p->s[p->pos];
        if (ch == '"') {
            p->pos++;
            break;
        }
        if (ch < 0x20)
            return JSON_ERR(p, p->pos, "expected a character or escape in a string, found %s (control characters "
                            "must be written as escapes such as \\n)", json_describe(p, p->pos, b));
        if (ch >= 0x80) {
            size_t k = json_utf8_len(p->s + p->pos, p->len - p->pos);
            if (!k) return JSON_ERR(p, p->pos, "expected UTF-8 text in a string, found invalid %s", json_describe(p, p->pos, b));
            if (!json_scratch_put(p, p->s + p->pos, k)) return json_nomem(p);
            p->pos += k;
            continue;
        }
        /* a backslash */
        size_t esc = p->pos;
        int e = esc + 1 < p->len ? p->s[esc + 1] : -1;
        unsigned char u[4];
        size_t k = 1;
        switch (e) {
        case '"': case '\\': case '/': u[0] = (unsigned char)e; break;
        case 'b': u[0] = '\b'; break;
        case 'f': u[0] = '\f'; break;
        case 'n': u[0] = '\n'; break;
        case 'r': u[0] = '\r'; break;
        case 't': u[0] = '\t'; break;
        case 'u': {
            unsigned long cp, lo;
            JSON_TRY(json_hex4(p, esc + 2, &cp));
            p->pos = esc + 6;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return JSON_ERR(p, esc, "expected a high surrogate \\uD800-\\uDBFF before the low surrogate \\u%04lX, "
                                "found none", cp);
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                    return JSON_ERR(p, p->pos, "expected a low surrogate \\uDC00-\\uDFFF after \\u%04lX, found %s", cp,
                                    json_describe(p, p->pos, b));
                JSON_TRY(json_hex4(p, p->pos + 2, &lo));
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return JSON_ERR(p, p->pos, "expected a low surrogate \\uDC00-\\uDFFF after \\u%04lX, found \\u%04lX",
                                    cp, lo);
                p->pos += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            k = json_utf8_encode(cp, u);
            if (!json_scratch_put(p, u, k)) return json_nomem(p);
            continue;
        }
        default:
            return JSON_ERR(p, esc + 1, "expected an escape character (one of \" \\ / b f n r t u) after '\\', found %s",
                            json_describe(p, esc + 1, b));
        }
        if (!json_scratch_put(p, u, k)) return json_nomem(p);
        p->pos = esc + 2;
    }
    char *s = malloc(p->scratch_len + 1);
    if (!s) return json_nomem(p);
    if (p->scratch_len) memcpy(s, p->scratch, p->scratch_len);
    s[p->scratch_len] = '\0';
    *out = s;
    *out_len = p->scratch_len;
    return LOOM_OK;
}

static int json_is_digit(const json_parser *p, size_t i) { return i < p->len && p->s[i] >= '0' && p->s[i] <= '9'; }

/* The decimal point of the current C locale, which strtod and printf use. */
static const char *json_decimal_point(void) {
    const struct lconv *lc = localeconv();
    return (lc && lc->decimal_point && lc->decimal_point[0]) ? lc->decimal_point : ".";
}

static loom_status json_parse_number(json_parser *p, loom_json *v) {
    size_t start = p->pos, i = p->pos;
    char b[16];
    if (p->s[i] == '-') i++;
    if (i < p->len && p->s[i] == '0') {
        i++;
        if (json_is_digit(p, i))
            return JSON_ERR(p, i, "expected '.', 'e' or the end of a number after a leading 0, found %s (leading zeros "
                            "are not allowed)", json_describe(p, i, b));
    } else if (json_is_digit(p, i)) {
        while (json_is_digit(p, i)) i++;
    } else {
        return JSON_ERR(p, i, "expected a digit after '-', found %s", json_describe(p, i, b));
    }
    if (i < p->len && p->s[i] == '.') {
        i++;
        if (!json_is_digit(p, i)) return JSON_ERR(p, i, "expected a digit after '.', found %s", json_describe(p, i, b));
        while (json_is_digit(p, i)) i++;
    }
    if (i < p->len && (p->s[i] == 'e' || p->s[i] == 'E')) {
        i++;
        if (i < p->len && (p->s[i] == '+' || p->s[i] == '-')) i++;
        if (!json_is_digit(p, i)) return JSON_ERR(p, i, "expected a digit in the exponent, found %s", json_describe(p, i, b));
        while (json_is_digit(p, i)) i++;
    }
    /* strtod follows the locale's decimal point: copy the text and put that in place of '.' */
    const char *dp = json_decimal_point();
    size_t n = i - start, dpn = strlen(dp);
    char local[96], *buf = n + dpn < sizeof local ? local : malloc(n + dpn + 1);
    if (!buf) return json_nomem(p);
    size_t k = 0;
    for (size_t j = start; j < i; j++) {
        if (p->s[j] == '.') {
            memcpy(buf + k, dp, dpn);
            k += dpn;
        } else {
            buf[k++] = (char)p->s[j];
        }
    }
    buf[k] = '\0';
    char *end = NULL;
    double x = strtod(buf, &end);
    int ok = end == buf + k && isfinite(x);
    if (buf != local) free(buf);
    if (!ok)
        return JSON_ERR(p, start, "expected a number a double can hold (magnitude below 1.8e308), found %.*s%s",
                        (int)(n < 40 ? n : 40), (const char *)p->s + start, n > 40 ? "..." : "");
    v->number = x;
    p->pos = i;
    return LOOM_OK;
}

static loom_status json_parse_literal(json_parser *p, const char *word) {
    char b[16];
    size_t i = 0;
    for (; word[i]; i++)
        if (p->pos + i >= p->len || p->s[p->pos + i] != (unsigned char)word[i])
            return JSON_ERR(p, p->pos + i, "expected '%s', found %s", word, json_describe(p, p->pos + i, b));
    p->pos += i;
    return LOOM_OK;
}

static int json_member_cmp(const void *a, const void *b) {
    const json_node *x = *(const json_node *const *)a, *y = *(const json_node *const *)b;
    int c = strcmp(x->j.key, y->j.key);
    return c ? c : (x->key_at > y->key_at) - (x->key_at < y->key_at);
}

static loom_status json_check_duplicates(json_parser *p, loom_json *obj) {
    json_node **m = malloc(obj->n_children * sizeof *m);
    if (!m) return json_nomem(p);
    size_t n = 0;
    for (loom_json *c = obj->child; c; c = c->next) m[n++] = (json_node *)(void *)c;
    qsort(m, n, sizeof *m, json_member_cmp);
    const json_node *dup = NULL, *first = NULL;
    for (size_t i = 1; i < n; i++) {
        if (strcmp(m[i]->j.key, m[i - 1]->j.key) == 0 && (!dup || m[i]->key_at < dup->key_at)) {
            dup = m[i];
            first = m[i - 1];
        }
    }
    loom_status st = LOOM_OK;
    if (dup) {
        size_t l, c;
        char kb[48];
        json_line_col(p, first->key_at, &l, &c);
        st = JSON_ERR(p, dup->key_at, "expected unique member names, found \"%s\" again (first at line %zu col %zu)",
                      json_excerpt(dup->j.key, kb), l, c);
    }
    free(m);
    return st;
}

static loom_status json_parse_value(json_parser *p, loom_json *v);

/* An array or object; its opening bracket is at pos. Members are linked into v as they are read, so
 * on error the caller frees everything from the root. */
static loom_status json_parse_container(json_parser *p, loom_json *v) {
    int obj = p->s[p->pos] == '{';
    char close = obj ? '}' : ']', b[16], kb[48];
    const char *what = obj ? "object" : "array";
    if (p->depth >= LOOM_JSON_MAX_DEPTH)
        return JSON_ERR(p, p->pos, "expected at most %d nested arrays/objects, found more", LOOM_JSON_MAX_DEPTH);
    p->depth++;
    v->type = obj ? LOOM_JSON_OBJECT : LOOM_JSON_ARRAY;
    size_t open = p->pos++;
    json_skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        p->depth--;
        return LOOM_OK;
    }
    loom_json **tail = &v->child;
    for (;;) {
        json_node *c = calloc(1, sizeof *c);
        if (!c) return json_nomem(p);
        *tail = &c->j;
        tail = &c->j.next;
        v->n_children++;
        if (obj) {
            size_t klen = 0;
            json_skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != '"')
                return JSON_ERR(p, p->pos, "expected '\"' to start a member name, found %s", json_describe(p, p->pos, b));
            c->key_at = p->pos;
            JSON_TRY(json_parse_string(p, &c->j.key, &klen));
            if (strlen(c->j.key) != klen)
                return JSON_ERR(p, c->key_at, "expected a member name without \\u0000, found \"%s\\u0000...\"",
                                json_excerpt(c->j.key, kb));
            json_skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':')
                return JSON_ERR(p, p->pos, "expected ':' after member name \"%s\", found %s", json_excerpt(c->j.key, kb),
                                json_describe(p, p->pos, b));
            p->pos++;
        }
        JSON_TRY(json_parse_value(p, &c->j));
        json_skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            break;
        }
        size_t l, col;
        json_line_col(p, open, &l, &col);
        return JSON_ERR(p, p->pos, "expected ',' or '%c' in the %s opened at line %zu col %zu, found %s", close, what, l,
                        col, json_describe(p, p->pos, b));
    }
    if (obj && v->n_children > 1) JSON_TRY(json_check_duplicates(p, v));
    p->depth--;
    return LOOM_OK;
}

static loom_status json_parse_value(json_parser *p, loom_json *v) {
    char b[16];
    json_skip_ws(p);
    if (p->pos >= p->len) return JSON_ERR(p, p->pos, "expected a value, found end of input");
    unsigned char c = p->s[p->pos];
    switch (c) {
    case '{': case '[': return json_parse_container(p, v);
    case '"': v->type = LOOM_JSON_STRING; return json_parse_string(p, &v->string, &v->string_len);
    case 't': v->type = LOOM_JSON_BOOL; v->boolean = 1; return json_parse_literal(p, "true");
    case 'f': v->type = LOOM_JSON_BOOL; return json_parse_literal(p, "false");
    case 'n': v->type = LOOM_JSON_NULL; return json_parse_literal(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            v->type = LOOM_JSON_NUMBER;
            return json_parse_number(p, v);
        }
        return JSON_ERR(p, p->pos, "expected a value (object, array, string, number, true, false or null), found %s",
                        json_describe(p, p->pos, b));
    }
}

static loom_status json_parse_named(const char *text, size_t len, const char *name, loom_json **out) {
    LOOM_CHECK(out, LOOM_ERR_INVALID_ARG, "loom_json_parse: out is NULL");
    *out = NULL;
    LOOM_CHECK(text || len == 0, LOOM_ERR_INVALID_ARG, "loom_json_parse: text is NULL but len is %zu", len);
    json_parser p;
    memset(&p, 0, sizeof p);
    p.s = (const unsigned char *)(text ? text : "");
    p.len = len;
    p.name = name;
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) p.pos = p.begin = 3;
    json_node *root = calloc(1, sizeof *root);
    if (!root) return json_nomem(&p);
    loom_status st = json_parse_value(&p, &root->j);
    if (st == LOOM_OK) {
        char b[16];
        json_skip_ws(&p);
        if (p.pos < p.len)
            st = JSON_ERR(&p, p.pos, "expected end of input after the value, found %s", json_describe(&p, p.pos, b));
    }
    free(p.scratch);
    loom_json *r = &root->j;
    if (st != LOOM_OK) {
        loom_json_free(&r);
        return st;
    }
    *out = r;
    return LOOM_OK;
}

loom_status loom_json_parse(const char *text, size_t len, loom_json **out) {
    LOOM_CALL(json_parse_named(text, len, NULL, out));
    return LOOM_OK;
}

loom_status loom_json_parse_file(const char *path, loom_json **out) {
    LOOM_CHECK(out, LOOM_ERR_INVALID_ARG, "loom_json_parse_file: out is NULL");
    *out = NULL;
    LOOM_CHECK(path, LOOM_ERR_INVALID_ARG, "loom_json_parse_file: path is NULL");
    FILE *f = fopen(path, "rb");
    LOOM_CHECK(f, LOOM_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    loom_status st = LOOM_OK;
    for (;;) {
        if (cap - len < 4096) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *nb = ncap > cap ? realloc(buf, ncap) : NULL;
            if (!nb) {
                st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory reading %s (%zu bytes)",
                                    path, len);
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f))
                st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot read %s: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (st == LOOM_OK) {
        st = json_parse_named(buf, len, path, out);
        if (st != LOOM_OK) loom_error_trace(__FILE__, __LINE__, __func__);
    }
    free(buf);
    return st;
}

void loom_json_free(loom_json **j) {
    if (!j || !*j) return;
    /* Iterative: a node's children are spliced onto the list still to free, so any depth is fine and
     * each child list is walked once. The root's own `next` is not followed. */
    loom_json *todo = *j;
    int root = 1;
    *j = NULL;
    while (todo) {
        loom_json *n = todo;
        todo = root ? NULL : n->next;
        root = 0;
        if (n->child) {
            loom_json *t = n->child;
            while (t->next) t = t->next;
            t->next = todo;
            todo = n->child;
        }
        free(n->key);
        free(n->string);
        free(n);
    }
}

const loom_json *loom_json_get(const loom_json *obj, const char *key) {
    if (!obj || obj->type != LOOM_JSON_OBJECT || !key) return NULL;
    for (const loom_json *c = obj->child; c; c = c->next)
        if (c->key && strcmp(c->key, key) == 0) return c;
    return NULL;
}

const char *loom_json_type_name(loom_json_type t) {
    switch (t) {
    case LOOM_JSON_NULL: return "null";
    case LOOM_JSON_BOOL: return "boolean";
    case LOOM_JSON_NUMBER: return "number";
    case LOOM_JSON_STRING: return "string";
    case LOOM_JSON_ARRAY: return "array";
    case LOOM_JSON_OBJECT: return "object";
    }
    return "unknown";
}

/* ---- writing ---- */

void loom_strbuf_init(loom_strbuf *sb) {
    sb->buf = NULL;
    sb->len = sb->cap = 0;
    sb->failed = 0;
}

void loom_strbuf_free(loom_strbuf *sb) {
    if (!sb) return;
    free(sb->buf);
    loom_strbuf_init(sb);
}

/* Room for `extra` more bytes and a terminator; sets failed and returns 0 if there cannot be. */
static int strbuf_reserve(loom_strbuf *sb, size_t extra) {
    if (sb->failed) return 0;
    if (extra >= SIZE_MAX - sb->len - 1) goto fail;
    size_t need = sb->len + extra + 1, cap = sb->cap ? sb->cap : 64;
    if (need <= sb->cap) return 1;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *b = realloc(sb->buf, cap);
    if (!b) goto fail;
    sb->buf = b;
    sb->cap = cap;
    return 1;
fail:
    sb->failed = 1;
    return 0;
}

void loom_strbuf_append(loom_strbuf *sb, const char *s, size_t n) {
    if (!sb || !strbuf_reserve(sb, n)) return;
    if (n) memcpy(sb->buf + sb->len, s, n);
    sb->len += n;
    sb->buf[sb->len] = '\0';
}

void loom_strbuf_printf(loom_strbuf *sb, const char *fmt, ...) {
    if (!sb || sb->failed) return;
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    size_t avail = sb->cap - sb->len;
    int n = vsnprintf(sb->buf ? sb->buf + sb->len : NULL, sb->buf ? avail : 0, fmt, ap);
    if (n >= 0 && (size_t)n >= avail && strbuf_reserve(sb, (size_t)n))
        vsnprintf(sb->buf + sb->len, sb->cap - sb->len, fmt, ap2);
    if (n < 0) sb->failed = 1;
    if (!sb->failed) sb->len += (size_t)n;
    if (sb->buf) sb->buf[sb->len] = '\0'; /* undo a truncated first attempt */
    va_end(ap2);
    va_end(ap);
}

void loom_json_write_string_n(loom_strbuf *sb, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;
    loom_strbuf_append(sb, "\"", 1);
    while (i < n) {
        unsigned char c = u[i];
        size_t k = json_utf8_len(u + i, n - i);
        if (k && c >= 0x20 && c != '"' && c != '\\') {
            i += k;
            continue;
        }
        loom_strbuf_append(sb, s + run, i - run);
        char e[7] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0};
        switch (k ? c : 0x100) {
        case '"': loom_strbuf_append(sb, "\\\"", 2); break;
        case '\\': loom_strbuf_append(sb, "\\\\", 2); break;
        case '\b': loom_strbuf_append(sb, "\\b", 2); break;
        case '\f': loom_strbuf_append(sb, "\\f", 2); break;
        case '\n': loom_strbuf_append(sb, "\\n", 2); break;
        case '\r': loom_strbuf_append(sb, "\\r", 2); break;
        case '\t': loom_strbuf_append(sb, "\\t", 2); break;
        case 0x100: loom_strbuf_append(sb, "\\ufffd", 6); break; /* not UTF-8 */
        default: loom_strbuf_append(sb, e, 6); break;
        }
        run = ++i;
    }
    loom_strbuf_append(sb, s + run, i - run);
    loom_strbuf_append(sb, "\"", 1);
}

void loom_json_write_string(loom_strbuf *sb, const char *s) {
    if (!s) loom_strbuf_append(sb, "null", 4);
    else loom_json_write_string_n(sb, s, strlen(s));
}

void loom_json_write_number(loom_strbuf *sb, double x) {
    if (!isfinite(x)) {
        loom_strbuf_append(sb, "null", 4);
        return;
    }
    /* For a normal double, %.15g is the shortest form whenever one of <= 15 digits reads back exactly
     * (DBL_DIG); else 16, else 17 (always exact). Subnormals hold fewer digits: try from 1. printf and
     * strtod agree on the locale's decimal point, which then becomes '.' */
    char buf[64];
    for (int prec = fabs(x) < DBL_MIN ? 1 : 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, x);
        if (prec == 17 || strtod(buf, NULL) == x) break;
    }
    const char *dp = json_decimal_point();
    char *at = strcmp(dp, ".") ? strstr(buf, dp) : NULL;
    if (!at) {
        loom_strbuf_append(sb, buf, strlen(buf));
        return;
    }
    loom_strbuf_append(sb, buf, (size_t)(at - buf));
    loom_strbuf_append(sb, ".", 1);
    loom_strbuf_append(sb, at + strlen(dp), strlen(at + strlen(dp)));
}

static loom_status json_serialize_value(const loom_json *j, loom_strbuf *sb, int depth) {
    switch (j->type) {
    case LOOM_JSON_NULL: loom_strbuf_append(sb, "null", 4); break;
    case LOOM_JSON_BOOL: loom_strbuf_append(sb, j->boolean ? "true" : "false", j->boolean ? 4 : 5); break;
    case LOOM_JSON_NUMBER: loom_json_write_number(sb, j->number); break;
    case LOOM_JSON_STRING: loom_json_write_string_n(sb, j->string ? j->string : "", j->string ? j->string_len : 0); break;
    case LOOM_JSON_ARRAY:
    case LOOM_JSON_OBJECT: {
        int obj = j->type == LOOM_JSON_OBJECT;
        LOOM_CHECK(depth < LOOM_JSON_MAX_DEPTH, LOOM_ERR_INVALID_ARG,
                   "loom_json_serialize: nesting deeper than %d arrays/objects", LOOM_JSON_MAX_DEPTH);
        loom_strbuf_append(sb, obj ? "{" : "[", 1);
        size_t i = 0;
        for (const loom_json *c = j->child; c && !sb->failed; c = c->next, i++) {
            if (i) loom_strbuf_append(sb, ",", 1);
            if (obj) {
                LOOM_CHECK(c->key, LOOM_ERR_INVALID_ARG, "loom_json_serialize: object member %zu has no key", i);
                loom_json_write_string(sb, c->key);
                loom_strbuf_append(sb, ":", 1);
            }
            JSON_TRY(json_serialize_value(c, sb, depth + 1));
        }
        loom_strbuf_append(sb, obj ? "}" : "]", 1);
        break;
    }
    default:
        return loom_error_set(LOOM_ERR_INVALID_ARG, __FILE__, __LINE__, __func__,
                              "loom_json_serialize: node type %d is not a loom_json_type", (int)j->type);
    }
    return LOOM_OK;
}

loom_status loom_json_serialize(const loom_json *j, loom_strbuf *sb) {
    LOOM_CHECK(j && sb, LOOM_ERR_INVALID_ARG, "loom_json_serialize: %s is NULL", j ? "sb" : "j");
    LOOM_CALL(json_serialize_value(j, sb, 0));
    LOOM_CHECK(!sb->failed, LOOM_ERR_NOMEM, "loom_json_serialize: out of memory (%zu bytes written)", sb->len);
    return LOOM_OK;
}
