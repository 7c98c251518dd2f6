/* A miniature GPT-2 style encoder.json + vocab.bpe (the 256 byte tokens, a few merges including the comma
 * look-alike that JavaScript's "left,right" keys create: `",` + `"` has rank 6, the rank of `"` + `,"`, so
 * `","` is one token in JavaScript, two in Python), and <|endoftext|>), for the tests and the fuzzer,
 * which must not depend on the real files. Included (#include "test_tokenizer_mini.c") by
 * tests/test_tokenizer.c and tests/fuzz_tokenizer.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* merges in GPT-2's alphabet ("Ġ" is the space), in rank order */
static const char *const mini_merges[][2] = {
    {"\xc4\xa0", "t"}, {"h", "e"}, {"\xc4\xa0t", "he"}, {"i", "n"}, {"in", "g"}, {"\xc4\xa0", "a"},
    {"\"", ",\""}, {"\"", ","}, {",", "\""}, {"<", "|"}, {"e", "r"}, {"\xc4\xa0", "w"}, {"o", "r"},
    {"\xc4\xa0w", "or"}, {"l", "d"}, {"\xc4\xa0wor", "ld"}, {"'", "s"}, {"\xc4\xa0", "\xc4\xa0"},
};

/* GPT-2's alphabet: the code point that stands for byte b */
static unsigned mini_cp(int b) {
    int n = 0;
    for (int c = 0; c < 256; c++) {
        int self = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
        if (c == b) return self ? (unsigned)c : 256u + (unsigned)n;
        if (!self) n++;
    }
    return 0;
}

static size_t mini_put_cp(char *o, unsigned cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* appends s as a JSON string */
static size_t mini_put_json(char *o, const char *s) {
    size_t n = 0;
    o[n++] = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') o[n++] = '\\';
        o[n++] = *s;
    }
    o[n++] = '"';
    return n;
}

static char *mini_encoder_json(size_t *len) {
    char *o = malloc(16384);
    size_t n = 0;
    int id = 0;
    o[n++] = '{';
    for (int b = 0; b < 256; b++) {
        char tok[4];
        size_t l = mini_put_cp(tok, mini_cp(b));
        tok[l] = '\0';
        n += mini_put_json(o + n, tok);
        n += (size_t)sprintf(o + n, ": %d, ", id++);
    }
    for (size_t m = 0; m < sizeof mini_merges / sizeof mini_merges[0]; m++) {
        char tok[64];
        snprintf(tok, sizeof tok, "%s%s", mini_merges[m][0], mini_merges[m][1]);
        n += mini_put_json(o + n, tok);
        n += (size_t)sprintf(o + n, ": %d, ", id++);
    }
    n += (size_t)sprintf(o + n, "\"<|endoftext|>\": %d}", id++);
    o[n] = '\0';
    *len = n;
    return o;
}

static char *mini_vocab_bpe(size_t *len) {
    char *o = malloc(4096);
    size_t n = (size_t)sprintf(o, "#version: 0.2\n");
    for (size_t m = 0; m < sizeof mini_merges / sizeof mini_merges[0]; m++)
        n += (size_t)sprintf(o + n, "%s %s\n", mini_merges[m][0], mini_merges[m][1]);
    *len = n;
    return o;
}
