/* GPT-2's pre-tokenizer written out by hand over code points, so that it splits text exactly as the
 * JavaScript encoder's regex does:
 *
 *   /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu
 *
 * At each position the first alternative that matches wins and its quantifiers are greedy. Every
 * character is a letter, a number, white space or "other" (the classes are disjoint: the generator checks),
 * so some alternative always matches and the matches tile the text. Hence, at a position i:
 *   - "'" followed by s, t, m, d, re, ve or ll: that contraction (ASCII, case-sensitive);
 *   - an ASCII space followed by a letter, number or other character: the space and the run of that class;
 *   - a letter, number or other character: the run of its class ("other" runs swallow apostrophes);
 *   - white space: the run of white space, less its last character when a non-space follows and the run
 *     is longer than one (\s+(?!\S) gives one back), or the single character (\s+).
 * Invalid UTF-8 bytes (which JavaScript never sees: it would have replaced them) are one-byte "other"
 * characters, so they join runs of punctuation and keep every byte of the input. */
#define _GNU_SOURCE /* memmem */
#include <string.h>

#include "tokenizer_impl.h"

/* Classes of ASCII. */
static const uint8_t ascii_class[128] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 0, 0, /* \t \n \v \f \r */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* space */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, /* 0-9 */
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* A-O */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, /* P-Z */
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* a-o */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, /* p-z */
};

int loom_tok_cp_class(uint32_t cp) {
    if (cp < 128) return ascii_class[cp];
    int32_t lo = 0, hi = loom_tok_n_ranges - 1;
    while (lo <= hi) {
        int32_t mid = (lo + hi) / 2;
        if (cp < loom_tok_ranges[mid].first) hi = mid - 1;
        else if (cp > loom_tok_ranges[mid].last) lo = mid + 1;
        else return (int)loom_tok_ranges[mid].cls;
    }
    return LOOM_TOK_OTHER;
}

size_t loom_tok_utf8_next(const uint8_t *s, size_t avail, uint32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1Fu;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0Fu;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07u;
        min = 0x10000;
    } else {
        *cp = LOOM_TOK_INVALID_CP;
        return 1;
    }
    if (avail < n) {
        *cp = LOOM_TOK_INVALID_CP;
        return 1;
    }
    for (size_t k = 1; k < n; k++) {
        if ((s[k] & 0xC0) != 0x80) {
            *cp = LOOM_TOK_INVALID_CP;
            return 1;
        }
        v = (v << 6) | (s[k] & 0x3Fu);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = LOOM_TOK_INVALID_CP;
        return 1;
    }
    *cp = v;
    return n;
}

/* Class and length of the character at s[i] (i < end). */
static inline int char_class(const uint8_t *s, size_t i, size_t end, size_t *len) {
    uint8_t c = s[i];
    if (c < 0x80) {
        *len = 1;
        return ascii_class[c];
    }
    uint32_t cp;
    *len = loom_tok_utf8_next(s + i, end - i, &cp);
    return cp == LOOM_TOK_INVALID_CP ? LOOM_TOK_OTHER : loom_tok_cp_class(cp);
}

/* The end of the run of class k that starts at i. */
static inline size_t run_end(const uint8_t *s, size_t i, size_t end, int k) {
    while (i < end) {
        uint8_t c = s[i];
        if (c < 0x80) { /* ASCII fast path */
            if (ascii_class[c] != k) break;
            i++;
            continue;
        }
        size_t l;
        if (char_class(s, i, end, &l) != k) break;
        i += l;
    }
    return i;
}

size_t loom_tok_pretok(const uint8_t *s, size_t i, size_t end) {
    uint8_t c = s[i];
    if (c == '\'' && i + 1 < end) {
        uint8_t d = s[i + 1];
        if (d == 's' || d == 't' || d == 'm' || d == 'd') return i + 2;
        if (i + 2 < end) {
            uint8_t e = s[i + 2];
            if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) return i + 3;
        }
    }
    size_t l;
    int k = char_class(s, i, end, &l);
    if (c == ' ' && i + 1 < end) {
        size_t l1;
        int k1 = char_class(s, i + 1, end, &l1);
        if (k1 != LOOM_TOK_SPACE) return run_end(s, i + 1 + l1, end, k1); /* " ?X+" */
    }
    if (k != LOOM_TOK_SPACE) return run_end(s, i + l, end, k);
    /* white space: \s+(?!\S) then \s+ */
    size_t last = i, j = i + l;
    while (j < end) {
        size_t lj;
        if (char_class(s, j, end, &lj) != LOOM_TOK_SPACE) break;
        last = j;
        j += lj;
    }
    if (j == end) return end;   /* the run reaches the end: all of it */
    if (last > i) return last;  /* a non-space follows: all but the last character */
    return j;                   /* a single white-space character before a non-space */
}

size_t loom_tok_find_special(const loom_tokenizer *t, const uint8_t *s, size_t i, size_t end, int *which) {
    size_t best = end;
    *which = -1;
    for (int k = 0; k < t->n_special; k++) {
        const loom_tok_special *sp = &t->special[k];
        if (sp->len > end - i) continue;
        size_t lim = best < end ? best + sp->len : end; /* an earlier start only */
        if (lim > end) lim = end;
        const uint8_t *p = memmem(s + i, lim - i, sp->bytes, sp->len);
        if (!p) continue;
        size_t at = (size_t)(p - s);
        if (at < best || (at == best && sp->len > t->special[*which].len)) {
            best = at;
            *which = k;
        }
    }
    return best;
}
