/* Unit tests for loom/json.h. Exits non-zero if any check fails.
 *
 *   gcc -std=c11 -Iinclude src/core/status.c src/core/json.c tests/test_json.c -o test_json && ./test_json */
#define _POSIX_C_SOURCE 200809L /* mkstemp, unlink, write */
#include "loom/json.h"

#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int passed, failed;
} tally;

#define CHECK(t, cond)                                                        \
    do {                                                                      \
        if (cond) {                                                           \
            (t)->passed++;                                                    \
        } else {                                                              \
            (t)->failed++;                                                    \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
        }                                                                     \
    } while (0)

static loom_status parse_str(const char *s, loom_json **out) { return loom_json_parse(s, strlen(s), out); }

/* Parses s, serializes it and compares with `want` (NULL: s itself). */
static void check_roundtrip(tally *t, const char *s, const char *want) {
    loom_json *j = NULL;
    loom_status st = parse_str(s, &j);
    CHECK(t, st == LOOM_OK);
    if (st != LOOM_OK) {
        fprintf(stderr, "  input %s: %s\n", s, loom_error_message());
        return;
    }
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    CHECK(t, loom_json_serialize(j, &sb) == LOOM_OK);
    const char *w = want ? want : s;
    CHECK(t, sb.buf && strcmp(sb.buf, w) == 0);
    if (!sb.buf || strcmp(sb.buf, w) != 0) fprintf(stderr, "  input %s: got %s, want %s\n", s, sb.buf, w);
    loom_strbuf_free(&sb);
    loom_json_free(&j);
}

static void check_error(tally *t, const char *s, size_t len, const char *want) {
    loom_json *j = (loom_json *)&j; /* not NULL: parse must clear it */
    loom_error_clear();
    loom_status st = loom_json_parse(s, len, &j);
    const char *msg = loom_error_message();
    CHECK(t, st == LOOM_ERR_FORMAT);
    CHECK(t, j == NULL);
    CHECK(t, strstr(msg, want) != NULL);
    if (st != LOOM_ERR_FORMAT || !strstr(msg, want))
        fprintf(stderr, "  input [%.*s]: status %s, message \"%s\", want \"%s\"\n", (int)(len < 60 ? len : 60), s,
                loom_status_name(st), msg, want);
    if (st == LOOM_OK) loom_json_free(&j);
}
#define ERR(t, s, want) check_error((t), (s), sizeof(s) - 1, (want))

static void test_basic(tally *t) {
    const char *cfg = "{\n  \"model\": {\"n_layer\": 12, \"d_model\": 768, \"bias\": false},\n"
                      "  \"optim\": {\"lr\": 3e-4, \"betas\": [0.9, 0.95]},\n  \"name\": \"gpt2-small\",\n"
                      "  \"note\": null, \"tie\": true\n}\n";
    loom_json *j = NULL;
    CHECK(t, parse_str(cfg, &j) == LOOM_OK);
    if (!j) return;
    CHECK(t, j->type == LOOM_JSON_OBJECT && j->n_children == 5 && j->key == NULL);
    const loom_json *m = loom_json_get(j, "model");
    CHECK(t, m && m->type == LOOM_JSON_OBJECT && m->n_children == 3);
    CHECK(t, m && strcmp(m->child->key, "n_layer") == 0 && m->child->number == 12);
    const loom_json *nl = loom_json_get(m, "d_model");
    CHECK(t, nl && nl->type == LOOM_JSON_NUMBER && nl->number == 768);
    const loom_json *bias = loom_json_get(m, "bias");
    CHECK(t, bias && bias->type == LOOM_JSON_BOOL && bias->boolean == 0);
    const loom_json *betas = loom_json_get(loom_json_get(j, "optim"), "betas");
    CHECK(t, betas && betas->type == LOOM_JSON_ARRAY && betas->n_children == 2);
    CHECK(t, betas && betas->child->number == 0.9 && betas->child->next->number == 0.95 && !betas->child->next->next);
    CHECK(t, betas && betas->child->key == NULL);
    CHECK(t, loom_json_get(loom_json_get(j, "optim"), "lr")->number == 3e-4);
    const loom_json *name = loom_json_get(j, "name");
    CHECK(t, name && name->type == LOOM_JSON_STRING && strcmp(name->string, "gpt2-small") == 0 && name->string_len == 10);
    CHECK(t, loom_json_get(j, "note") && loom_json_get(j, "note")->type == LOOM_JSON_NULL);
    CHECK(t, loom_json_get(j, "tie") && loom_json_get(j, "tie")->boolean == 1);
    CHECK(t, loom_json_get(j, "missing") == NULL);
    CHECK(t, loom_json_get(betas, "x") == NULL);
    CHECK(t, loom_json_get(NULL, "x") == NULL);
    CHECK(t, loom_json_get(j, NULL) == NULL);
    const char *order[] = {"model", "optim", "name", "note", "tie"};
    int i = 0, in_order = 1;
    for (const loom_json *c = j->child; c; c = c->next, i++) in_order &= i < 5 && strcmp(c->key, order[i]) == 0;
    CHECK(t, in_order && i == 5);
    loom_json_free(&j);
    CHECK(t, j == NULL);
    loom_json_free(&j); /* NULL-safe */
    loom_json_free(NULL);

    /* scalars at top level, whitespace, BOM, input that is not NUL-terminated */
    CHECK(t, parse_str(" \t\r\n 42 \n", &j) == LOOM_OK && j->type == LOOM_JSON_NUMBER && j->number == 42);
    loom_json_free(&j);
    CHECK(t, parse_str("\xEF\xBB\xBF{\"a\":1}", &j) == LOOM_OK && j->n_children == 1);
    loom_json_free(&j);
    CHECK(t, loom_json_parse("[1]garbage", 3, &j) == LOOM_OK && j->n_children == 1);
    loom_json_free(&j);
    CHECK(t, parse_str("[]", &j) == LOOM_OK && j->type == LOOM_JSON_ARRAY && j->n_children == 0 && !j->child);
    loom_json_free(&j);
    CHECK(t, parse_str("{ }", &j) == LOOM_OK && j->type == LOOM_JSON_OBJECT && j->n_children == 0);
    loom_json_free(&j);
    CHECK(t, parse_str("\"\"", &j) == LOOM_OK && j->string_len == 0 && j->string && j->string[0] == '\0');
    loom_json_free(&j);
    /* an object with many keys (duplicate check by sorting) */
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_strbuf_append(&sb, "{", 1);
    for (int k = 0; k < 20000; k++) loom_strbuf_printf(&sb, "%s\"k%d\":%d", k ? "," : "", (k * 7919) % 20000, k);
    loom_strbuf_append(&sb, "}", 1);
    CHECK(t, loom_json_parse(sb.buf, sb.len, &j) == LOOM_OK && j->n_children == 20000);
    CHECK(t, loom_json_get(j, "k7919") && loom_json_get(j, "k7919")->number == 1);
    loom_json_free(&j);
    loom_strbuf_free(&sb);
}

static void test_strings(tally *t) {
    loom_json *j = NULL;
    CHECK(t, parse_str("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"", &j) == LOOM_OK);
    CHECK(t, j && strcmp(j->string, "a\"b\\c/d\b\f\n\r\t") == 0 && j->string_len == 12);
    loom_json_free(&j);
    CHECK(t, parse_str("\"\\u00e9\\u20AC\\uD83D\\uDE00 \xC3\xA9\"", &j) == LOOM_OK);
    CHECK(t, j && strcmp(j->string, "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80 \xC3\xA9") == 0 && j->string_len == 12);
    loom_json_free(&j);
    CHECK(t, parse_str("\"a\\u0000b\"", &j) == LOOM_OK && j->string_len == 3 && memcmp(j->string, "a\0b", 4) == 0);
    loom_json_free(&j);
    CHECK(t, parse_str("\"\xF4\x8F\xBF\xBF\xEF\xBF\xBF\"", &j) == LOOM_OK && j->string_len == 7); /* U+10FFFF U+FFFF */
    loom_json_free(&j);
    check_roundtrip(t, "\"a\\u0000b\"", NULL);
    check_roundtrip(t, "\"\\u00e9\\u001f\\/\"", "\"\xC3\xA9\\u001f/\"");
    check_roundtrip(t, "\"\\uD83D\\uDE00\"", "\"\xF0\x9F\x98\x80\"");
}

static void test_numbers(tally *t) {
    static const struct {
        const char *s;
        double v;
    } ok[] = {{"0", 0},       {"-0", -0.0},       {"1", 1},          {"-1", -1},     {"1.5", 1.5},
              {"-0.25", -0.25}, {"1e3", 1e3},     {"1E+3", 1e3},     {"1e-3", 1e-3}, {"0.5e1", 5},
              {"123456789012", 123456789012.0}, {"9007199254740993", 9007199254740992.0},
              {"1e-400", 0},  {"1.7976931348623157e308", 1.7976931348623157e308}, {"0e0", 0},
              {"2.2250738585072014e-308", 2.2250738585072014e-308}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        loom_json *j = NULL;
        loom_status st = parse_str(ok[i].s, &j);
        CHECK(t, st == LOOM_OK && j->type == LOOM_JSON_NUMBER && j->number == ok[i].v);
        if (st != LOOM_OK) fprintf(stderr, "  number %s: %s\n", ok[i].s, loom_error_message());
        loom_json_free(&j);
    }
    loom_json *j = NULL;
    CHECK(t, parse_str("-0", &j) == LOOM_OK && signbit(j->number));
    loom_json_free(&j);

    static const struct {
        double x;
        const char *want;
    } wr[] = {{0.0, "0"}, {-0.0, "-0"}, {1.0, "1"}, {100.0, "100"}, {1.5, "1.5"}, {0.1, "0.1"},
              {0.1 + 0.2, "0.30000000000000004"}, {1.0 / 3.0, "0.3333333333333333"}, {1e21, "1e+21"},
              {3e-4, "0.0003"}, {1e-7, "1e-07"}, {5e-324, "5e-324"}, {-1.5e-320, "-1.5e-320"}, {2.2250738585072014e-308, "2.2250738585072014e-308"},
              {1.7976931348623157e308, "1.7976931348623157e+308"}, {NAN, "null"}, {INFINITY, "null"},
              {-INFINITY, "null"}, {123456789.0, "123456789"}};
    for (size_t i = 0; i < sizeof wr / sizeof wr[0]; i++) {
        loom_strbuf sb;
        loom_strbuf_init(&sb);
        loom_json_write_number(&sb, wr[i].x);
        CHECK(t, sb.buf && strcmp(sb.buf, wr[i].want) == 0);
        if (!sb.buf || strcmp(sb.buf, wr[i].want)) fprintf(stderr, "  write %.17g: got %s want %s\n", wr[i].x, sb.buf, wr[i].want);
        loom_strbuf_free(&sb);
    }
    /* every finite double reads back bit-exact (random bit patterns) */
    uint64_t r = 0x9E3779B97F4A7C15ull;
    int exact = 1, n = 0;
    for (int i = 0; i < 20000; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        double x;
        memcpy(&x, &r, sizeof x);
        if (!isfinite(x)) continue;
        loom_strbuf sb;
        loom_strbuf_init(&sb);
        loom_json_write_number(&sb, x);
        loom_json *v = NULL;
        if (loom_json_parse(sb.buf, sb.len, &v) != LOOM_OK || memcmp(&v->number, &x, sizeof x) != 0) {
            if (exact) fprintf(stderr, "  %.17g wrote %s, did not read back\n", x, sb.buf);
            exact = 0;
        }
        n++;
        loom_json_free(&v);
        loom_strbuf_free(&sb);
    }
    CHECK(t, exact && n > 15000);
}

static void test_errors(tally *t) {
    ERR(t, "", "line 1 col 1: expected a value, found end of input");
    ERR(t, "   \n  ", "line 2 col 3: expected a value, found end of input");
    ERR(t, "[1,]", "line 1 col 4: expected a value (object, array, string, number, true, false or null), found ']'");
    ERR(t, "[1,2,]", "col 6: expected a value");
    ERR(t, "{\"a\":1,}", "line 1 col 8: expected '\"' to start a member name, found '}'");
    ERR(t, "{'a':1}", "col 2: expected '\"' to start a member name, found '''");
    ERR(t, "{a:1}", "col 2: expected '\"' to start a member name, found 'a'");
    ERR(t, "{1:2}", "col 2: expected '\"' to start a member name, found '1'");
    ERR(t, "{\"a\" 1}", "col 6: expected ':' after member name \"a\", found '1'");
    ERR(t, "{\"a\":}", "col 6: expected a value");
    ERR(t, "[1 2]", "col 4: expected ',' or ']' in the array opened at line 1 col 1, found '2'");
    ERR(t, "[1,2", "col 5: expected ',' or ']' in the array opened at line 1 col 1, found end of input");
    ERR(t, "{\"a\":1", "col 7: expected ',' or '}' in the object opened at line 1 col 1, found end of input");
    ERR(t, "[", "col 2: expected a value, found end of input");
    ERR(t, "]", "col 1: expected a value");
    ERR(t, "1 2", "col 3: expected end of input after the value, found '2'");
    ERR(t, "[] x", "col 4: expected end of input after the value, found 'x'");
    ERR(t, "{}}", "col 3: expected end of input");
    ERR(t, "// comment\n{}", "line 1 col 1: expected a value");
    ERR(t, "{} /* c */", "col 4: expected end of input");
    ERR(t, "01", "col 2: expected '.', 'e' or the end of a number after a leading 0, found '1'");
    ERR(t, "-01", "col 3: expected '.', 'e'");
    ERR(t, "-", "col 2: expected a digit after '-', found end of input");
    ERR(t, "-a", "col 2: expected a digit after '-', found 'a'");
    ERR(t, "+1", "col 1: expected a value");
    ERR(t, ".5", "col 1: expected a value");
    ERR(t, "1.", "col 3: expected a digit after '.', found end of input");
    ERR(t, "1.e5", "col 3: expected a digit after '.', found 'e'");
    ERR(t, "1e", "col 3: expected a digit in the exponent, found end of input");
    ERR(t, "1e+", "col 4: expected a digit in the exponent");
    ERR(t, "0x10", "col 2: expected end of input after the value, found 'x'");
    ERR(t, "NaN", "col 1: expected a value (object, array, string, number, true, false or null), found 'N'");
    ERR(t, "Infinity", "found 'I'");
    ERR(t, "-Infinity", "col 2: expected a digit after '-', found 'I'");
    ERR(t, "1e999", "col 1: expected a number a double can hold (magnitude below 1.8e308), found 1e999");
    ERR(t, "-1e309", "found -1e309");
    ERR(t, "tru", "col 4: expected 'true', found end of input");
    ERR(t, "nul", "expected 'null', found end of input");
    ERR(t, "falsy", "col 5: expected 'false', found 'y'");
    ERR(t, "True", "col 1: expected a value");
    ERR(t, "truex", "col 5: expected end of input");
    ERR(t, "\"abc", "col 5: expected '\"' to close the string opened at line 1 col 1, found end of input");
    ERR(t, "\"a\nb\"", "col 3: expected a character or escape in a string, found byte 0x0a");
    ERR(t, "\"a\tb\"", "found byte 0x09");
    ERR(t, "\"\\x\"", "col 3: expected an escape character (one of \" \\ / b f n r t u) after '\\', found 'x'");
    ERR(t, "\"\\", "col 3: expected an escape character");
    ERR(t, "\"\\u12\"", "col 6: expected 4 hex digits after \\u, found '\"'");
    ERR(t, "\"\\u12G4\"", "col 6: expected 4 hex digits after \\u, found 'G'");
    ERR(t, "\"\\uD800\"", "col 8: expected a low surrogate \\uDC00-\\uDFFF after \\uD800, found '\"'");
    ERR(t, "\"\\uD800\\u0041\"", "col 8: expected a low surrogate \\uDC00-\\uDFFF after \\uD800, found \\u0041");
    ERR(t, "\"\\uD800\\uD800\"", "found \\uD800");
    ERR(t, "\"\\uDC00\"", "col 2: expected a high surrogate \\uD800-\\uDBFF before the low surrogate \\uDC00");
    ERR(t, "\"\xff\"", "col 2: expected UTF-8 text in a string, found invalid byte 0xff");
    ERR(t, "\"\xC0\xAF\"", "found invalid byte 0xc0");                /* overlong '/' */
    ERR(t, "\"\xE0\x80\xAF\"", "found invalid byte 0xe0");            /* overlong */
    ERR(t, "\"\xED\xA0\x80\"", "found invalid byte 0xed");            /* UTF-8 encoded surrogate */
    ERR(t, "\"\xF4\x90\x80\x80\"", "found invalid byte 0xf4");        /* above U+10FFFF */
    ERR(t, "\"\xE2\x82\"", "found invalid byte 0xe2");                /* truncated */
    ERR(t, "\"\x80\"", "found invalid byte 0x80");                    /* stray continuation */
    ERR(t, "{\"a\":1,\"b\":2,\"a\":3}", "col 14: expected unique member names, found \"a\" again (first at line 1 col 2)");
    ERR(t, "{\"a\":1,\"a\":1,\"a\":1}", "col 8: expected unique member names");
    ERR(t, "{\"x\":{\"k\":1,\n \"k\":2}}", "line 2 col 2: expected unique member names, found \"k\" again (first at line 1 col 7)");
    ERR(t, "{\"a\\u0000b\":1}", "col 2: expected a member name without \\u0000");
    ERR(t, "\x00", "col 1: expected a value (object, array, string, number, true, false or null), found byte 0x00");
    ERR(t, "[1]\x00", "col 4: expected end of input after the value, found byte 0x00");
    ERR(t, "{\n  \"a\": 1,\n  \"b\": ?\n}", "line 3 col 8: expected a value");
    ERR(t, "[\"\xC3\xA9\", x]", "line 1 col 7: expected a value"); /* columns count characters */
    ERR(t, "\xEF\xBB\xBF x", "line 1 col 2: expected a value");       /* BOM is not a column */
    ERR(t, "\xEF\xBB", "col 1: expected a value (object, array, string, number, true, false or null), found byte 0xef");

    /* bad arguments */
    loom_json *j = NULL;
    CHECK(t, loom_json_parse(NULL, 3, &j) == LOOM_ERR_INVALID_ARG && j == NULL);
    CHECK(t, loom_json_parse("1", 1, NULL) == LOOM_ERR_INVALID_ARG);
    CHECK(t, loom_json_parse(NULL, 0, &j) == LOOM_ERR_FORMAT && j == NULL);
    CHECK(t, loom_json_parse_file(NULL, &j) == LOOM_ERR_INVALID_ARG);
}

static void test_depth(tally *t) {
    size_t n = 100000;
    char *s = malloc(2 * n + 1);
    if (!s) return;
    memset(s, '[', n);
    memset(s + n, ']', n);
    loom_json *j = NULL;
    /* exactly the limit parses (and serializes) */
    memcpy(s + LOOM_JSON_MAX_DEPTH, s + n, LOOM_JSON_MAX_DEPTH);
    CHECK(t, loom_json_parse(s, 2 * LOOM_JSON_MAX_DEPTH, &j) == LOOM_OK);
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    CHECK(t, j && loom_json_serialize(j, &sb) == LOOM_OK && sb.len == 2 * LOOM_JSON_MAX_DEPTH);
    loom_strbuf_free(&sb);
    loom_json_free(&j);
    memset(s, '[', n);
    CHECK(t, loom_json_parse(s, 2 * LOOM_JSON_MAX_DEPTH + 2, &j) == LOOM_ERR_FORMAT && j == NULL);
    CHECK(t, strstr(loom_error_message(), "col 257: expected at most 256 nested arrays/objects") != NULL);
    CHECK(t, loom_json_parse(s, 2 * n, &j) == LOOM_ERR_FORMAT && j == NULL);
    for (size_t i = 0; i < n; i++) s[i] = (i % 2) ? '[' : '{';
    CHECK(t, loom_json_parse(s, n, &j) == LOOM_ERR_FORMAT && j == NULL); /* "{[" fails at the key */
    for (size_t i = 0; i < n / 6; i++) memcpy(s + 6 * i, "{\"a\":[", 6);
    CHECK(t, loom_json_parse(s, n / 6 * 6, &j) == LOOM_ERR_FORMAT && strstr(loom_error_message(), "nested"));
    free(s);

    /* a hand-built tree deeper than the limit: serialize refuses, free copes iteratively */
    loom_json *root = NULL, **at = &root;
    int built = 1;
    for (int i = 0; i < 100000 && built; i++) {
        *at = calloc(1, sizeof **at);
        if (!*at) built = 0;
        else {
            (*at)->type = LOOM_JSON_ARRAY;
            (*at)->n_children = 1;
            at = &(*at)->child;
        }
    }
    loom_strbuf_init(&sb);
    CHECK(t, built && loom_json_serialize(root, &sb) == LOOM_ERR_INVALID_ARG);
    CHECK(t, strstr(loom_error_message(), "nesting deeper than 256"));
    loom_strbuf_free(&sb);
    loom_json_free(&root);
    CHECK(t, root == NULL);
}

static void test_serialize(tally *t) {
    check_roundtrip(t, "{ \"a\" : [ 1 , 2.5 , -3e-2 ] , \"b\" : { } , \"c\" : [ ] , \"d\" : null , \"e\" : true ,"
                       " \"f\" : false , \"g\" : \"x\\ny\" }",
                    "{\"a\":[1,2.5,-0.03],\"b\":{},\"c\":[],\"d\":null,\"e\":true,\"f\":false,\"g\":\"x\\ny\"}");
    check_roundtrip(t, "[[[[]]],{\"\":{\"\":[]}}]", NULL);
    check_roundtrip(t, "1E2", "100");
    check_roundtrip(t, "\"\\u007f\\u0080\"", "\"\x7f\xC2\x80\"");

    /* hand-built trees */
    loom_json s = {.type = LOOM_JSON_STRING, .string = NULL};
    loom_json num = {.type = LOOM_JSON_NUMBER, .number = NAN, .next = &s};
    loom_json arr = {.type = LOOM_JSON_ARRAY, .child = &num, .n_children = 2};
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    CHECK(t, loom_json_serialize(&arr, &sb) == LOOM_OK && strcmp(sb.buf, "[null,\"\"]") == 0);
    loom_strbuf_free(&sb);
    loom_json obj = {.type = LOOM_JSON_OBJECT, .child = &num, .n_children = 2};
    CHECK(t, loom_json_serialize(&obj, &sb) == LOOM_ERR_INVALID_ARG);
    CHECK(t, strstr(loom_error_message(), "member 0 has no key") != NULL);
    loom_strbuf_free(&sb);
    loom_json bad = {.type = (loom_json_type)42};
    CHECK(t, loom_json_serialize(&bad, &sb) == LOOM_ERR_INVALID_ARG);
    CHECK(t, loom_json_serialize(NULL, &sb) == LOOM_ERR_INVALID_ARG);
    CHECK(t, loom_json_serialize(&s, NULL) == LOOM_ERR_INVALID_ARG);
    loom_strbuf_free(&sb);
    sb.failed = 1; /* as after an allocation failure */
    CHECK(t, loom_json_serialize(&arr, &sb) == LOOM_ERR_NOMEM && sb.len == 0 && sb.buf == NULL);
    loom_strbuf_free(&sb);
    CHECK(t, strcmp(loom_json_type_name(LOOM_JSON_OBJECT), "object") == 0);
    CHECK(t, strcmp(loom_json_type_name(LOOM_JSON_BOOL), "boolean") == 0);
}

static void test_write_string(tally *t) {
    static const struct {
        const char *in;
        size_t n;
        const char *want;
    } c[] = {{"plain", 5, "\"plain\""},
             {"q\"b\\s/", 6, "\"q\\\"b\\\\s/\""},
             {"\b\f\n\r\t\x01\x1f\x7f", 8, "\"\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\""},
             {"a\0b", 3, "\"a\\u0000b\""},
             {"\xC3\xA9\xF0\x9F\x98\x80", 6, "\"\xC3\xA9\xF0\x9F\x98\x80\""},
             {"x\xffy\xC3", 4, "\"x\\ufffdy\\ufffd\""},
             {"\xED\xA0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\""},
             {"", 0, "\"\""}};
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        loom_strbuf sb;
        loom_strbuf_init(&sb);
        loom_json_write_string_n(&sb, c[i].in, c[i].n);
        CHECK(t, sb.buf && strcmp(sb.buf, c[i].want) == 0);
        if (!sb.buf || strcmp(sb.buf, c[i].want)) fprintf(stderr, "  write_string case %zu: got %s\n", i, sb.buf);
        /* the output is always valid JSON that reads back */
        loom_json *j = NULL;
        CHECK(t, loom_json_parse(sb.buf, sb.len, &j) == LOOM_OK);
        loom_json_free(&j);
        loom_strbuf_free(&sb);
    }
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_json_write_string(&sb, "tab\there");
    loom_json_write_string(&sb, NULL);
    CHECK(t, strcmp(sb.buf, "\"tab\\there\"null") == 0);
    loom_strbuf_free(&sb);
}

static void test_strbuf(tally *t) {
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    CHECK(t, sb.buf == NULL && sb.len == 0 && !sb.failed);
    loom_strbuf_append(&sb, "", 0);
    CHECK(t, sb.buf && sb.buf[0] == '\0' && sb.len == 0);
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    loom_strbuf_printf(&sb, "%d-%s", 7, "ab");
    loom_strbuf_printf(&sb, "[%s]", big);
    loom_strbuf_append(&sb, "tail", 4);
    CHECK(t, sb.len == 4 + 5001 + 4 && strncmp(sb.buf, "7-ab[xxx", 8) == 0 && strcmp(sb.buf + sb.len - 5, "]tail") == 0);
    CHECK(t, strlen(sb.buf) == sb.len && sb.cap > sb.len);
    for (int i = 0; i < 1000; i++) loom_strbuf_printf(&sb, "%s", "0123456789");
    CHECK(t, sb.len == 5009 + 10000 && strlen(sb.buf) == sb.len);
    loom_strbuf_free(&sb);
    CHECK(t, sb.buf == NULL && sb.len == 0 && sb.cap == 0);
    loom_strbuf_printf(&sb, "abc");
    sb.failed = 1; /* appends after a failure are no-ops and keep the terminator */
    loom_strbuf_printf(&sb, "%s", big);
    loom_strbuf_append(&sb, "def", 3);
    loom_json_write_number(&sb, 1.5);
    CHECK(t, sb.len == 3 && strcmp(sb.buf, "abc") == 0);
    loom_strbuf_free(&sb);
    CHECK(t, sb.failed == 0);
}

static void test_file(tally *t) {
    char path[] = "/tmp/loom_test_json_XXXXXX";
    int fd = mkstemp(path);
    CHECK(t, fd >= 0);
    if (fd < 0) return;
    const char *good = "{\"a\": [1, 2]}\n";
    CHECK(t, write(fd, good, strlen(good)) == (ssize_t)strlen(good));
    close(fd);
    loom_json *j = NULL;
    CHECK(t, loom_json_parse_file(path, &j) == LOOM_OK && j && loom_json_get(j, "a")->n_children == 2);
    loom_json_free(&j);
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs("{\n  \"a\": [1, 2,]\n}\n", f);
        fclose(f);
    }
    CHECK(t, loom_json_parse_file(path, &j) == LOOM_ERR_FORMAT && j == NULL);
    char want[128];
    snprintf(want, sizeof want, "%s: line 2 col 14: expected a value", path);
    CHECK(t, strncmp(loom_error_message(), want, strlen(want)) == 0);
    if (strncmp(loom_error_message(), want, strlen(want))) fprintf(stderr, "  got %s\n", loom_error_message());
    /* a file larger than the first read buffer */
    f = fopen(path, "wb");
    if (f) {
        fputc('[', f);
        for (int i = 0; i < 100000; i++) fprintf(f, "%s%d", i ? "," : "", i);
        fputc(']', f);
        fclose(f);
    }
    CHECK(t, loom_json_parse_file(path, &j) == LOOM_OK && j->n_children == 100000);
    loom_json_free(&j);
    unlink(path);
    CHECK(t, loom_json_parse_file(path, &j) == LOOM_ERR_IO && j == NULL);
    CHECK(t, strstr(loom_error_message(), path) && strstr(loom_error_message(), "No such file"));
    CHECK(t, loom_json_parse_file("/tmp", &j) == LOOM_ERR_IO && strstr(loom_error_message(), "/tmp"));
    CHECK(t, loom_json_parse_file("/dev/null", &j) == LOOM_ERR_FORMAT &&
             strstr(loom_error_message(), "/dev/null: line 1 col 1: expected a value, found end of input"));
}

/* Numbers ignore the locale's decimal point (only checked where such a locale is installed). */
static void test_locale(tally *t) {
    const char *names[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8"};
    const char *got = NULL;
    for (size_t i = 0; i < 4 && !got; i++) got = setlocale(LC_NUMERIC, names[i]);
    if (!got) {
        printf("note: no locale with a decimal comma installed; locale test skipped\n");
        return;
    }
    loom_json *j = NULL;
    CHECK(t, parse_str("[1.5, 2.25e1]", &j) == LOOM_OK && j->child->number == 1.5 && j->child->next->number == 22.5);
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    CHECK(t, j && loom_json_serialize(j, &sb) == LOOM_OK && strcmp(sb.buf, "[1.5,22.5]") == 0);
    loom_strbuf_free(&sb);
    loom_json_free(&j);
    setlocale(LC_NUMERIC, "C");
}

int main(void) {
    tally t = {0, 0};
    test_basic(&t);
    test_strings(&t);
    test_numbers(&t);
    test_errors(&t);
    test_depth(&t);
    test_serialize(&t);
    test_write_string(&t);
    test_strbuf(&t);
    test_file(&t);
    test_locale(&t);
    printf("test_json: %d passed, %d failed\n", t.passed, t.failed);
    return t.failed ? 1 : 0;
}
