/* `loom data prepare`: text files -> token shards + dataset.json (include/loom/data.h,
 * docs/FORMATS-data.md).
 *
 * The pipeline streams. A reader walks the input files in order and cuts each into chunks of about
 * chunk_bytes at a *safe boundary*: a cut where tokenizing the two sides separately gives the same tokens
 * as tokenizing the whole (byte: anywhere; char: before any byte that is not a UTF-8 continuation byte;
 * BPE tokenizers (gpt2, trained files): just before an ASCII space or newline that has a printable ASCII
 * character on both sides, see cut_point). A batch of chunks (a few per thread) is tokenized in parallel,
 * then written in order, so the output does not depend on the thread count or the chunk size. Tokens go to
 * numbered part files of shard_tokens each; once the stream's length is known, the parts are renamed to
 * train_NNNNNN.bin / val_NNNNNN.bin (headers rewritten in place) and the one part that straddles the
 * train/val boundary is cut in two. dataset.json is written last (temporary file, fsync, rename), so a
 * directory with a dataset.json always holds a complete dataset. */
#define _DEFAULT_SOURCE /* strdup, fsync, lstat, realpath under -std=c11 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/chat.h"
#include "loom/crc32c.h"
#include "loom/data.h"
#include "loom/json.h"
#include "loom/log.h"
#include "loom/tokenizer.h"

#define ERR(code, ...) loom_error_set((code), __FILE__, __LINE__, __func__, __VA_ARGS__)

loom_data_prepare_config loom_data_prepare_config_default(void) {
    loom_data_prepare_config c;
    memset(&c, 0, sizeof c);
    c.tokenizer = "gpt2";
    c.val_fraction = 0.1;
    c.shard_tokens = 100000000;
    c.threads = 0;
    c.chunk_bytes = 1 << 20;
    c.format = "text";
    c.chat_template = "plain";
    return c;
}

/* ---- input files ---- */

typedef struct {
    char **paths;
    int64_t n, cap;
} file_list;

static void file_list_free(file_list *l) {
    for (int64_t i = 0; i < l->n; i++) free(l->paths[i]);
    free(l->paths);
    memset(l, 0, sizeof *l);
}

static loom_status file_list_add(file_list *l, const char *path) {
    if (l->n == l->cap) {
        int64_t nc = l->cap ? l->cap * 2 : 256;
        char **p = realloc(l->paths, (size_t)nc * sizeof *p);
        LOOM_CHECK(p != NULL, LOOM_ERR_NOMEM, "out of memory listing input files");
        l->paths = p;
        l->cap = nc;
    }
    l->paths[l->n] = strdup(path);
    LOOM_CHECK(l->paths[l->n] != NULL, LOOM_ERR_NOMEM, "out of memory listing input files");
    l->n++;
    return LOOM_OK;
}

static int cmp_path(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Regular files under dir, recursively; entries starting with '.' and symbolic links are skipped (no
 * cycles, nothing outside the tree). */
static loom_status walk_dir(const char *dir, file_list *l, int depth) {
    LOOM_CHECK(depth < 64, LOOM_ERR_IO, "directory %s is nested more than 64 levels deep", dir);
    DIR *dp = opendir(dir);
    LOOM_CHECK(dp != NULL, LOOM_ERR_IO, "cannot open input directory %s: %s", dir, strerror(errno));
    loom_status st = LOOM_OK;
    struct dirent *de;
    while (st == LOOM_OK && (de = readdir(dp)) != NULL) {
        if (de->d_name[0] == '.') continue;
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path) {
            st = ERR(LOOM_ERR_IO, "path too long: %s/%s", dir, de->d_name);
            break;
        }
        struct stat sb;
        if (lstat(path, &sb) != 0) continue;
        if (S_ISDIR(sb.st_mode)) st = walk_dir(path, l, depth + 1);
        else if (S_ISREG(sb.st_mode)) st = file_list_add(l, path);
    }
    closedir(dp);
    return st;
}

/* 1: text (no NUL byte in the first 4 KiB, like the text loader), 0: binary or empty, <0: unreadable */
static int text_file(const char *path, int64_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    unsigned char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    int text = n > 0 && memchr(buf, 0, n) == NULL;
    struct stat sb;
    *size = fstat(fileno(f), &sb) == 0 ? (int64_t)sb.st_size : 0;
    fclose(f);
    return text;
}

static loom_status collect_inputs(const char *const *inputs, int n_inputs, file_list *out, int64_t *skipped,
                                  int64_t *total_bytes) {
    file_list all;
    memset(&all, 0, sizeof all);
    loom_status st = LOOM_OK;
    for (int i = 0; i < n_inputs && st == LOOM_OK; i++) {
        struct stat sb;
        if (stat(inputs[i], &sb) != 0) {
            st = ERR(LOOM_ERR_IO, "input %s: %s", inputs[i], strerror(errno));
        } else if (S_ISDIR(sb.st_mode)) {
            int64_t first = all.n;
            st = walk_dir(inputs[i], &all, 0);
            if (st == LOOM_OK && all.n > first)
                qsort(all.paths + first, (size_t)(all.n - first), sizeof *all.paths, cmp_path);
        } else if (S_ISREG(sb.st_mode)) {
            st = file_list_add(&all, inputs[i]);
        } else {
            st = ERR(LOOM_ERR_IO, "input %s is neither a regular file nor a directory", inputs[i]);
        }
    }
    *skipped = 0;
    *total_bytes = 0;
    for (int64_t i = 0; i < all.n && st == LOOM_OK; i++) {
        int64_t size = 0;
        int t = text_file(all.paths[i], &size);
        if (t < 0) st = ERR(LOOM_ERR_IO, "cannot read input %s: %s", all.paths[i], strerror(errno));
        else if (t == 0) {
            LOOM_DEBUG("prepare: skipping %s (%s)", all.paths[i], size ? "binary" : "empty");
            (*skipped)++;
        } else {
            st = file_list_add(out, all.paths[i]);
            *total_bytes += size;
        }
    }
    file_list_free(&all);
    if (st == LOOM_OK && out->n == 0) st = ERR(LOOM_ERR_IO, "the inputs hold no text files");
    return st;
}

/* ---- tokenizers, as prepare sees them ---- */

typedef enum { TOK_BYTE, TOK_CHAR, TOK_BPE } tok_kind; /* decides where text may be cut */

typedef struct {
    tok_kind kind;
    loom_tokenizer *lib;   /* char and BPE: src/tokenizer; byte is encoded here */
    int64_t vocab;
    int32_t eot;
    char name[256];
} prep_tok;

static int graphic(unsigned char c) { return c > 0x20 && c < 0x7f; }

/* The largest safe cut in (0, len] of buf, or 0 if there is none (the caller then reads further).
 * BPE: GPT-2's pre-tokenizer ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)
 * never joins a printable ASCII character with a following space or newline, and a space or newline
 * followed by a printable character starts a new piece in which only that one whitespace character is
 * kept (" x" is one piece, "\n" alone is one piece), and the only look-ahead ((?!\S)) inspects whitespace
 * runs, which cannot cross the cut. So "X|_Y" (X, Y printable ASCII, _ a space or newline) splits the
 * text into pieces that tokenize exactly as they do in the whole. Unicode whitespace is not ASCII, so
 * demanding ASCII on both sides also keeps multi-byte whitespace (U+00A0, U+3000) away from the cut. */
static size_t cut_point(tok_kind kind, const unsigned char *buf, size_t len) {
    if (len < 2) return 0;
    if (kind == TOK_BYTE) return len; /* anywhere */
    if (kind == TOK_CHAR) {
        for (size_t p = len - 1; p > 0; p--)
            if ((buf[p] & 0xC0) != 0x80) return p;
        return 0;
    }
    for (size_t p = len - 2; p > 0; p--)
        if ((buf[p] == ' ' || buf[p] == '\n') && graphic(buf[p - 1]) && graphic(buf[p + 1])) return p;
    return 0;
}

/* Text is text: a literal "<|endoftext|>" in a file is encoded as its characters (nanoGPT's
 * encode_ordinary); end-of-text ids come only from document boundaries. */
static loom_status tok_encode(const prep_tok *t, const unsigned char *text, size_t len, int32_t **ids, int64_t *n) {
    *ids = NULL;
    *n = 0;
    if (t->lib) {
        LOOM_CALL(loom_tokenizer_encode_ex(t->lib, (const char *)text, len, LOOM_TOKENIZER_NO_SPECIAL, ids, n, NULL));
        return LOOM_OK;
    }
    int32_t *out = malloc((len ? len : 1) * sizeof(int32_t));
    LOOM_CHECK(out != NULL, LOOM_ERR_NOMEM, "out of memory tokenizing a chunk of %zu bytes", len);
    for (size_t i = 0; i < len; i++) out[i] = text[i];
    *n = (int64_t)len;
    *ids = out;
    return LOOM_OK;
}

/* ---- the chunk reader ---- */

typedef struct {
    unsigned char *buf;
    size_t len, cap;
    int64_t doc;       /* index of the document (file) it belongs to */
    int first;         /* the first chunk of its document */
    int32_t *ids;      /* tokens, after encoding */
    int64_t n_ids;
    loom_status st;
    char err[512];
} chunk;

typedef struct {
    const file_list *files;
    tok_kind kind;
    size_t chunk_bytes;
    int64_t file;      /* index of the file being read; files->n when done */
    FILE *f;
    int first;         /* the next chunk is the first of its file */
    unsigned char *carry;
    size_t carry_len, carry_cap;
    int64_t bytes;     /* read so far */
} reader;

static loom_status grow(unsigned char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return LOOM_OK;
    size_t nc = *cap ? *cap : 4096;
    while (nc < need) nc *= 2;
    unsigned char *b = realloc(*buf, nc);
    LOOM_CHECK(b != NULL, LOOM_ERR_NOMEM, "out of memory (a chunk of %zu bytes)", need);
    *buf = b;
    *cap = nc;
    return LOOM_OK;
}

/* Fills c with the next chunk; *got = 0 at the end of the inputs. */
static loom_status reader_next(reader *r, chunk *c, int *got) {
    *got = 0;
    while (r->file < r->files->n) {
        const char *path = r->files->paths[r->file];
        if (!r->f) {
            r->f = fopen(path, "rb");
            LOOM_CHECK(r->f != NULL, LOOM_ERR_IO, "cannot open input %s: %s", path, strerror(errno));
            r->first = 1;
            r->carry_len = 0;
        }
        /* start from the carried tail of the last chunk; read until a safe cut or the end of the file */
        c->len = 0;
        LOOM_CALL(grow(&c->buf, &c->cap, r->carry_len + r->chunk_bytes));
        if (r->carry_len) memcpy(c->buf, r->carry, r->carry_len);
        c->len = r->carry_len;
        r->carry_len = 0;
        int eof = 0;
        size_t cut = 0, searched = 0;
        for (;;) {
            size_t want = c->len < r->chunk_bytes ? r->chunk_bytes - c->len : r->chunk_bytes;
            LOOM_CALL(grow(&c->buf, &c->cap, c->len + want));
            size_t got_n = fread(c->buf + c->len, 1, want, r->f);
            LOOM_CHECK(!ferror(r->f), LOOM_ERR_IO, "cannot read input %s: %s", path, strerror(errno));
            c->len += got_n;
            r->bytes += (int64_t)got_n;
            if (got_n < want) {
                eof = 1;
                break;
            }
            if (c->len < r->chunk_bytes) continue;
            cut = cut_point(r->kind, c->buf + searched, c->len - searched);
            if (cut) {
                cut += searched;
                break;
            }
            /* no safe cut yet: read on (the search resumes near the end of what was searched) */
            searched = c->len > 2 ? c->len - 2 : 0;
        }
        if (eof) {
            fclose(r->f);
            r->f = NULL;
            r->file++;
        } else {
            LOOM_CALL(grow(&r->carry, &r->carry_cap, c->len - cut));
            if (c->len > cut) memcpy(r->carry, c->buf + cut, c->len - cut);
            r->carry_len = c->len - cut;
            c->len = cut;
        }
        if (c->len == 0) continue; /* the file ended exactly at a cut */
        c->doc = r->file - (eof ? 1 : 0);
        c->first = r->first;
        r->first = 0;
        *got = 1;
        return LOOM_OK;
    }
    return LOOM_OK;
}

static void reader_close(reader *r) {
    if (r->f) fclose(r->f);
    free(r->carry);
    memset(r, 0, sizeof *r);
}

/* ---- the shard writer: numbered part files, split and named at the end ---- */

typedef struct {
    const char *dir;
    uint32_t width;
    int loss_mask;     /* ids may carry LOOM_TOKEN_NO_LOSS (4-byte tokens) */
    int64_t vocab, shard_tokens;
    FILE *f;
    int n_parts;
    int64_t *part_n;
    uint32_t *part_crc;
    int64_t in_part, total;
    uint32_t crc;
    unsigned char *stage;
    size_t stage_len, stage_cap;
} writer;

static void part_path(const writer *w, int i, char *out, size_t cap) { snprintf(out, cap, "%s/part_%06d.tmp", w->dir, i); }

static loom_status close_file(FILE *f, const char *path) {
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    int e = errno;
    bad |= fclose(f) != 0;
    LOOM_CHECK(!bad, LOOM_ERR_IO, "cannot write %s: %s", path, strerror(e ? e : errno));
    return LOOM_OK;
}

static loom_status writer_end_part(writer *w) {
    if (!w->f) return LOOM_OK;
    char path[PATH_MAX + 32];
    part_path(w, w->n_parts - 1, path, sizeof path);
    w->crc = loom_crc32c(w->crc, w->stage, w->stage_len);
    size_t n = w->stage_len ? fwrite(w->stage, 1, w->stage_len, w->f) : 0;
    int ok = n == w->stage_len;
    w->stage_len = 0;
    FILE *f = w->f;
    w->f = NULL;
    if (!ok) {
        fclose(f);
        return ERR(LOOM_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    LOOM_CALL(close_file(f, path));
    w->part_n[w->n_parts - 1] = w->in_part;
    w->part_crc[w->n_parts - 1] = w->crc;
    return LOOM_OK;
}

static loom_status writer_begin_part(writer *w) {
    int64_t *pn = realloc(w->part_n, (size_t)(w->n_parts + 1) * sizeof *pn);
    LOOM_CHECK(pn != NULL, LOOM_ERR_NOMEM, "out of memory");
    w->part_n = pn;
    uint32_t *pc = realloc(w->part_crc, (size_t)(w->n_parts + 1) * sizeof *pc);
    LOOM_CHECK(pc != NULL, LOOM_ERR_NOMEM, "out of memory");
    w->part_crc = pc;
    char path[PATH_MAX + 32];
    part_path(w, w->n_parts, path, sizeof path);
    w->f = fopen(path, "wb");
    LOOM_CHECK(w->f != NULL, LOOM_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    w->n_parts++;
    unsigned char zero[LOOM_SHARD_HEADER_BYTES] = {0}; /* the header is written when the split is known */
    LOOM_CHECK(fwrite(zero, 1, sizeof zero, w->f) == sizeof zero, LOOM_ERR_IO, "cannot write %s: %s", path,
               strerror(errno));
    w->in_part = 0;
    w->crc = 0;
    return LOOM_OK;
}

static loom_status writer_put(writer *w, const int32_t *ids, int64_t n) {
    const uint32_t id_bits = w->loss_mask ? ~LOOM_TOKEN_NO_LOSS : ~0u;
    for (int64_t i = 0; i < n; i++)
        LOOM_CHECK((int64_t)((uint32_t)ids[i] & id_bits) < w->vocab, LOOM_ERR_INTERNAL,
                   "the tokenizer produced id %d, outside its vocabulary of %lld", ids[i], (long long)w->vocab);
    while (n > 0) {
        if (!w->f || w->in_part == w->shard_tokens) {
            LOOM_CALL(writer_end_part(w));
            LOOM_CALL(writer_begin_part(w));
        }
        int64_t k = w->shard_tokens - w->in_part < n ? w->shard_tokens - w->in_part : n;
        const size_t block = (size_t)1 << 20;
        for (int64_t i = 0; i < k;) {
            if (w->stage_len + w->width > block) {
                w->crc = loom_crc32c(w->crc, w->stage, w->stage_len);
                size_t wr = fwrite(w->stage, 1, w->stage_len, w->f);
                LOOM_CHECK(wr == w->stage_len, LOOM_ERR_IO, "cannot write a shard in %s: %s", w->dir, strerror(errno));
                w->stage_len = 0;
            }
            LOOM_CALL(grow(&w->stage, &w->stage_cap, block));
            int64_t room = (int64_t)((block - w->stage_len) / w->width), m = k - i < room ? k - i : room;
            if (w->width == 2) {
                uint16_t *s = (uint16_t *)(void *)(w->stage + w->stage_len);
                for (int64_t j = 0; j < m; j++) s[j] = (uint16_t)ids[i + j];
            } else {
                uint32_t *s = (uint32_t *)(void *)(w->stage + w->stage_len);
                for (int64_t j = 0; j < m; j++) s[j] = (uint32_t)ids[i + j];
            }
            w->stage_len += (size_t)m * w->width;
            i += m;
        }
        w->in_part += k;
        w->total += k;
        ids += k;
        n -= k;
    }
    return LOOM_OK;
}

static void writer_free(writer *w) {
    if (w->f) fclose(w->f);
    free(w->part_n);
    free(w->part_crc);
    free(w->stage);
    memset(w, 0, sizeof *w);
}

/* ---- finishing: parts -> train/val shards ---- */

typedef struct {
    char file[64];
    loom_split split;
    int64_t n, first;
    uint32_t crc;
} shard_rec;

static loom_status write_header_at(const char *path, const loom_shard_header *h) {
    unsigned char hb[LOOM_SHARD_HEADER_BYTES];
    loom_shard_header_encode(h, hb);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    LOOM_CHECK(fd >= 0, LOOM_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    int ok = pwrite(fd, hb, sizeof hb, 0) == (ssize_t)sizeof hb && fsync(fd) == 0;
    int e = errno;
    close(fd);
    LOOM_CHECK(ok, LOOM_ERR_IO, "cannot write the header of %s: %s", path, strerror(e));
    return LOOM_OK;
}

/* Copies tokens [from, from+n) of part file `src` into a new shard `dst` with header h (crc computed). */
static loom_status copy_range(const char *src, int64_t from, int64_t n, uint32_t width, const char *dst,
                              loom_shard_header *h) {
    FILE *in = fopen(src, "rb");
    LOOM_CHECK(in != NULL, LOOM_ERR_IO, "cannot open %s: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return ERR(LOOM_ERR_IO, "cannot create %s: %s", dst, strerror(errno));
    }
    loom_status st = LOOM_OK;
    unsigned char hb[LOOM_SHARD_HEADER_BYTES] = {0};
    unsigned char *buf = malloc((size_t)1 << 20);
    if (!buf) st = ERR(LOOM_ERR_NOMEM, "out of memory");
    if (st == LOOM_OK && (fwrite(hb, 1, sizeof hb, out) != sizeof hb ||
                          fseeko(in, (off_t)(LOOM_SHARD_HEADER_BYTES + from * (int64_t)width), SEEK_SET) != 0))
        st = ERR(LOOM_ERR_IO, "cannot copy %s to %s: %s", src, dst, strerror(errno));
    uint32_t crc = 0;
    for (uint64_t left = (uint64_t)n * width; st == LOOM_OK && left > 0;) {
        size_t k = left < ((size_t)1 << 20) ? (size_t)left : ((size_t)1 << 20);
        if (fread(buf, 1, k, in) != k || fwrite(buf, 1, k, out) != k) {
            st = ERR(LOOM_ERR_IO, "cannot copy %s to %s: %s", src, dst, strerror(errno));
            break;
        }
        crc = loom_crc32c(crc, buf, k);
        left -= k;
    }
    free(buf);
    fclose(in);
    if (st == LOOM_OK) {
        h->data_crc32c = crc;
        loom_shard_header_encode(h, hb);
        if (fseeko(out, 0, SEEK_SET) != 0 || fwrite(hb, 1, sizeof hb, out) != sizeof hb)
            st = ERR(LOOM_ERR_IO, "cannot write %s: %s", dst, strerror(errno));
    }
    if (st == LOOM_OK) st = close_file(out, dst);
    else fclose(out);
    return st;
}

static loom_status finish_shards(writer *w, int64_t n_train, shard_rec **recs_out, int *n_recs_out) {
    shard_rec *recs = calloc((size_t)w->n_parts + 1, sizeof *recs);
    LOOM_CHECK(recs != NULL, LOOM_ERR_NOMEM, "out of memory");
    int nr = 0, idx[2] = {0, 0};
    loom_status st = LOOM_OK;
    int64_t pos = 0;
    for (int p = 0; p < w->n_parts && st == LOOM_OK; p++) {
        char part[PATH_MAX + 32], dst[PATH_MAX + 96];
        part_path(w, p, part, sizeof part);
        const int64_t a = pos, b = pos + w->part_n[p];
        pos = b;
        /* pieces of this part: [a, min(b, n_train)) train, [max(a, n_train), b) val */
        int64_t cut = n_train < a ? a : n_train > b ? b : n_train;
        int whole = cut == a || cut == b;
        for (int s = 0; s < 2 && st == LOOM_OK; s++) {
            int64_t lo = s == 0 ? a : cut, hi = s == 0 ? cut : b;
            if (hi <= lo) continue;
            shard_rec *r = &recs[nr++];
            snprintf(r->file, sizeof r->file, "%s_%06d.bin", s == 0 ? "train" : "val", idx[s]);
            r->split = (loom_split)s;
            r->n = hi - lo;
            r->first = lo;
            snprintf(dst, sizeof dst, "%s/%s", w->dir, r->file);
            loom_shard_header h;
            memset(&h, 0, sizeof h);
            h.version = LOOM_SHARD_VERSION;
            h.token_bytes = w->width;
            h.split = (uint32_t)s;
            h.index = (uint32_t)idx[s];
            h.n_tokens = r->n;
            h.vocab_size = w->vocab;
            h.first_token = lo;
            h.flags = w->loss_mask ? LOOM_SHARD_LOSS_MASK : 0;
            if (whole) {
                h.data_crc32c = w->part_crc[p];
                st = write_header_at(part, &h);
                if (st == LOOM_OK && rename(part, dst) != 0)
                    st = ERR(LOOM_ERR_IO, "cannot rename %s to %s: %s", part, dst, strerror(errno));
            } else {
                st = copy_range(part, lo - a, hi - lo, w->width, dst, &h);
            }
            r->crc = h.data_crc32c;
            idx[s]++;
        }
        if (st == LOOM_OK && !whole && unlink(part) != 0)
            st = ERR(LOOM_ERR_IO, "cannot remove %s: %s", part, strerror(errno));
    }
    if (st != LOOM_OK) {
        free(recs);
        return st;
    }
    *recs_out = recs;
    *n_recs_out = nr;
    return LOOM_OK;
}

/* ---- the output directory ---- */

static loom_status mkdir_p(const char *path) {
    char buf[PATH_MAX];
    LOOM_CHECK(strlen(path) < sizeof buf, LOOM_ERR_IO, "path too long: %s", path);
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            LOOM_CHECK(mkdir(buf, 0755) == 0 || errno == EEXIST, LOOM_ERR_IO, "cannot create %s: %s", buf,
                       strerror(errno));
            *p = '/';
        }
    LOOM_CHECK(mkdir(buf, 0755) == 0 || errno == EEXIST, LOOM_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
    struct stat sb;
    LOOM_CHECK(stat(buf, &sb) == 0 && S_ISDIR(sb.st_mode), LOOM_ERR_IO, "output %s is not a directory", buf);
    return LOOM_OK;
}

static int digits6_then(const char *s, const char *suffix) {
    for (int i = 0; i < 6; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return strcmp(s + 6, suffix) == 0;
}

/* Removes what an earlier prepare left in dir: dataset.json first (so no manifest ever points at a
 * half-written dataset), then train_NNNNNN.bin, val_NNNNNN.bin, part_NNNNNN.tmp and tokenizer.* files. */
static loom_status clean_dir(const char *dir) {
    char path[PATH_MAX + 300];
    snprintf(path, sizeof path, "%s/dataset.json", dir);
    LOOM_CHECK(unlink(path) == 0 || errno == ENOENT, LOOM_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    DIR *dp = opendir(dir);
    LOOM_CHECK(dp != NULL, LOOM_ERR_IO, "cannot open %s: %s", dir, strerror(errno));
    struct dirent *de;
    loom_status st = LOOM_OK;
    while ((de = readdir(dp)) != NULL) {
        const char *n = de->d_name;
        int ours = (!strncmp(n, "train_", 6) && digits6_then(n + 6, ".bin")) ||
                   (!strncmp(n, "val_", 4) && digits6_then(n + 4, ".bin")) ||
                   (!strncmp(n, "part_", 5) && digits6_then(n + 5, ".tmp")) || !strncmp(n, "tokenizer.", 10) ||
                   !strncmp(n, "dataset.json.tmp", 16);
        if (!ours) continue;
        snprintf(path, sizeof path, "%s/%s", dir, n);
        if (unlink(path) != 0 && errno != ENOENT) {
            st = ERR(LOOM_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
            break;
        }
    }
    closedir(dp);
    return st;
}

static loom_status copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    LOOM_CHECK(in != NULL, LOOM_ERR_IO, "cannot open %s: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return ERR(LOOM_ERR_IO, "cannot create %s: %s", dst, strerror(errno));
    }
    char buf[65536];
    size_t n;
    int ok = 1;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) ok = 0;
    ok &= !ferror(in);
    fclose(in);
    if (!ok) {
        fclose(out);
        return ERR(LOOM_ERR_IO, "cannot copy %s to %s: %s", src, dst, strerror(errno));
    }
    LOOM_CALL(close_file(out, dst));
    return LOOM_OK;
}

static loom_status write_manifest(const char *dir, const prep_tok *t, const char *tok_file, uint32_t width,
                                  int loss_mask, double val_fraction, const loom_data_prepare_stats *s,
                                  const shard_rec *recs, int nr) {
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_strbuf_printf(&sb, "{\n  \"format\": \"loom.dataset\",\n  \"version\": 1,\n  \"tokenizer\": ");
    loom_json_write_string(&sb, t->name);
    loom_strbuf_printf(&sb, ",\n  \"tokenizer_file\": ");
    loom_json_write_string(&sb, tok_file[0] ? tok_file : NULL);
    loom_strbuf_printf(&sb, ",\n  \"vocab_size\": %lld,\n  \"eot\": %d,\n  \"token_bytes\": %u,\n  \"val_fraction\": ",
                       (long long)t->vocab, t->eot, width);
    loom_json_write_number(&sb, val_fraction);
    if (loss_mask) loom_strbuf_printf(&sb, ",\n  \"loss_mask\": true");
    loom_strbuf_printf(&sb, ",\n  \"documents\": %lld,\n  \"bytes\": %lld,\n  \"tokens\": {\"train\": %lld, \"val\": %lld},"
                       "\n  \"shards\": [",
                       (long long)s->files, (long long)s->bytes, (long long)s->tokens[0], (long long)s->tokens[1]);
    for (int i = 0; i < nr; i++)
        loom_strbuf_printf(&sb, "%s\n    {\"file\": \"%s\", \"split\": \"%s\", \"tokens\": %lld, \"first_token\": %lld, "
                           "\"crc32c\": %u}",
                           i ? "," : "", recs[i].file, recs[i].split == LOOM_SPLIT_TRAIN ? "train" : "val",
                           (long long)recs[i].n, (long long)recs[i].first, recs[i].crc);
    loom_strbuf_printf(&sb, "\n  ]\n}\n");
    if (sb.failed) {
        loom_strbuf_free(&sb);
        return ERR(LOOM_ERR_NOMEM, "out of memory");
    }
    /* check what we wrote with the reader the loader uses */
    loom_dataset_manifest *m = NULL;
    loom_status st = loom_dataset_manifest_parse(sb.buf, sb.len, "dataset.json (as written)", &m);
    loom_dataset_manifest_free(&m);
    char tmp[PATH_MAX + 64], path[PATH_MAX + 64];
    snprintf(tmp, sizeof tmp, "%s/dataset.json.tmp", dir);
    snprintf(path, sizeof path, "%s/dataset.json", dir);
    FILE *f = st == LOOM_OK ? fopen(tmp, "wb") : NULL;
    if (st == LOOM_OK && !f) st = ERR(LOOM_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    if (f) {
        if (fwrite(sb.buf, 1, sb.len, f) != sb.len) {
            fclose(f);
            st = ERR(LOOM_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
        } else {
            st = close_file(f, tmp);
        }
    }
    loom_strbuf_free(&sb);
    LOOM_CALL(st);
    LOOM_CHECK(rename(tmp, path) == 0, LOOM_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd); /* best effort: some file systems refuse fsync on a directory */
        close(dfd);
    }
    return LOOM_OK;
}

/* ---- instruction data: JSONL examples with a loss mask ---- */

typedef struct {
    const prep_tok *tok;
    int32_t *ids;      /* the example's tokens, LOOM_TOKEN_NO_LOSS on those without loss */
    int64_t n, cap;
    int last_loss;     /* the last piece takes the loss */
    loom_status st;
} example;

static int example_piece(void *ctx, const char *text, size_t len, int loss) {
    example *e = ctx;
    int32_t *ids = NULL;
    int64_t n = 0;
    e->st = tok_encode(e->tok, (const unsigned char *)text, len, &ids, &n);
    if (e->st != LOOM_OK) return 1;
    if (e->n + n + 1 > e->cap) { /* + 1: room for the end-of-text token */
        const int64_t cap = (e->n + n + 1) * 2;
        int32_t *g = realloc(e->ids, (size_t)cap * sizeof(int32_t));
        if (!g) {
            free(ids);
            e->st = ERR(LOOM_ERR_NOMEM, "out of memory");
            return 1;
        }
        e->ids = g;
        e->cap = cap;
    }
    for (int64_t i = 0; i < n; i++) e->ids[e->n++] = loss ? ids[i] : (int32_t)((uint32_t)ids[i] | LOOM_TOKEN_NO_LOSS);
    free(ids);
    if (len) e->last_loss = loss;
    return 0;
}

/* One line's example into e: its pieces, then the end-of-text token (with the loss when the example's last
 * piece has it: the model learns where an answer ends). Errors name file:line. */
static loom_status jsonl_example(const char *line, size_t len, const char *where, const char *tmpl, example *e) {
    loom_json *j = NULL;
    const loom_status pst = loom_json_parse(line, len, &j);
    LOOM_CHECK(pst == LOOM_OK, LOOM_ERR_FORMAT, "%s: not JSON (%s)", where, loom_error_message());
    const loom_json *prompt = loom_json_get(j, "prompt"), *completion = loom_json_get(j, "completion"),
                    *messages = loom_json_get(j, "messages");
    const char *err = NULL;
    e->n = 0;
    e->last_loss = 0;
    e->st = LOOM_OK;
    if (j->type != LOOM_JSON_OBJECT) {
        err = "expected an object";
    } else if (messages) {
        int assistant = 0;
        for (const loom_json *m = messages->type == LOOM_JSON_ARRAY ? messages->child : NULL; m; m = m->next) {
            const loom_json *role = loom_json_get(m, "role");
            assistant |= role && role->type == LOOM_JSON_STRING && !strcmp(role->string, "assistant");
        }
        err = loom_chat_pieces(tmpl, messages, example_piece, e);
        if (!err && !assistant) err = "no assistant message: nothing to learn";
    } else if (prompt && completion && prompt->type == LOOM_JSON_STRING && completion->type == LOOM_JSON_STRING) {
        if (example_piece(e, prompt->string, strlen(prompt->string), 0) ||
            example_piece(e, completion->string, strlen(completion->string), 1))
            err = "out of memory";
        else if (!completion->string[0]) err = "an empty completion: nothing to learn";
    } else {
        err = "expected {\"prompt\": string, \"completion\": string} or {\"messages\": [{\"role\", \"content\"}, ...]}";
    }
    loom_json_free(&j);
    LOOM_CALL(e->st);
    LOOM_CHECK(err == NULL, LOOM_ERR_FORMAT, "%s: %s", where, err);
    if (e->tok->eot >= 0)
        e->ids[e->n++] = e->last_loss ? e->tok->eot : (int32_t)((uint32_t)e->tok->eot | LOOM_TOKEN_NO_LOSS);
    return LOOM_OK;
}

/* Every line of every input file, one example each, in order; *n_train: the first example boundary at or
 * after the positional split point, so that each example lies in one split. */
static loom_status prepare_jsonl(const prep_tok *tok, const file_list *files, const loom_data_prepare_config *cfg,
                                 writer *w, loom_data_prepare_stats *stats, int64_t *n_train) {
    example e = {.tok = tok};
    int64_t *ends = NULL, n_ends = 0, cap_ends = 0;
    char *line = NULL;
    size_t line_cap = 0;
    loom_status st = LOOM_OK;
    for (int64_t f = 0; f < files->n && st == LOOM_OK; f++) {
        FILE *in = fopen(files->paths[f], "rb");
        if (!in) {
            st = ERR(LOOM_ERR_IO, "cannot open %s: %s", files->paths[f], strerror(errno));
            break;
        }
        ssize_t len;
        for (int64_t ln = 1; st == LOOM_OK && (len = getline(&line, &line_cap, in)) >= 0; ln++) {
            stats->bytes += len;
            size_t k = (size_t)len;
            while (k && (line[k - 1] == '\n' || line[k - 1] == '\r' || line[k - 1] == ' ' || line[k - 1] == '\t')) k--;
            if (k == 0) continue; /* blank lines separate nothing */
            char where[PATH_MAX + 32];
            snprintf(where, sizeof where, "%s:%lld", files->paths[f], (long long)ln);
            st = jsonl_example(line, k, where, cfg->chat_template, &e);
            if (st == LOOM_OK) st = writer_put(w, e.ids, e.n);
            if (st == LOOM_OK && n_ends == cap_ends) {
                cap_ends = cap_ends ? 2 * cap_ends : 1024;
                int64_t *g = realloc(ends, (size_t)cap_ends * sizeof *g);
                if (!g) st = ERR(LOOM_ERR_NOMEM, "out of memory");
                else ends = g;
            }
            if (st == LOOM_OK) ends[n_ends++] = w->total;
        }
        if (st == LOOM_OK && ferror(in)) st = ERR(LOOM_ERR_IO, "cannot read %s: %s", files->paths[f], strerror(errno));
        fclose(in);
    }
    if (st == LOOM_OK) {
        const int64_t at = loom_data_split_point(w->total, cfg->val_fraction);
        int64_t i = 0;
        while (i < n_ends && ends[i] < at) i++;
        *n_train = i < n_ends ? ends[i] : w->total;
        stats->files = n_ends; /* examples */
    }
    free(line);
    free(ends);
    free(e.ids);
    return st;
}

/* ---- the pipeline ---- */

static int pick_threads(int threads) {
    if (threads > 0) return threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Encodes chunks [0, n) in parallel; the first failure (in chunk order) becomes this thread's error. */
static loom_status encode_batch(const prep_tok *t, const file_list *files, chunk *chunks, int n, int threads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int i = 0; i < n; i++) {
        chunk *c = &chunks[i];
        c->st = tok_encode(t, c->buf, c->len, &c->ids, &c->n_ids);
        if (c->st != LOOM_OK) snprintf(c->err, sizeof c->err, "%s", loom_error_message());
    }
    (void)threads;
    for (int i = 0; i < n; i++)
        if (chunks[i].st != LOOM_OK)
            return ERR(chunks[i].st, "tokenizing %s: %s", files->paths[chunks[i].doc], chunks[i].err);
    return LOOM_OK;
}

static loom_status load_tokenizer(const char *name, const file_list *files, prep_tok *t) {
    memset(t, 0, sizeof *t);
    t->eot = -1;
    if (strcmp(name, "byte") == 0) {
        t->kind = TOK_BYTE;
        t->vocab = 256;
        snprintf(t->name, sizeof t->name, "byte");
        return LOOM_OK;
    }
    if (strcmp(name, "char") == 0) { /* the vocabulary of the inputs: one streaming pass */
        t->kind = TOK_CHAR;
        loom_tokenizer_train_config tc = loom_tokenizer_train_config_default();
        tc.kind = "char";
        LOOM_CHECK(files->n <= INT32_MAX, LOOM_ERR_CONFIG, "%lld input files: too many for the char vocabulary pass",
                   (long long)files->n);
        LOOM_CALL(loom_tokenizer_train(&tc, (const char *const *)files->paths, (int)files->n, &t->lib, NULL));
    } else {
        struct stat sb;
        LOOM_CHECK(strcmp(name, "gpt2") == 0 || stat(name, &sb) == 0, LOOM_ERR_IO,
                   "tokenizer %s: %s (expected gpt2, byte, char or a tokenizer file)", name, strerror(errno));
        LOOM_CALL(loom_tokenizer_load(name, &t->lib));
        t->kind = strcmp(loom_tokenizer_kind(t->lib), "char") == 0 ? TOK_CHAR
                  : strcmp(loom_tokenizer_kind(t->lib), "byte") == 0 ? TOK_BYTE : TOK_BPE;
    }
    t->vocab = loom_tokenizer_vocab_size(t->lib);
    t->eot = loom_tokenizer_eot(t->lib);
    snprintf(t->name, sizeof t->name, "%s", loom_tokenizer_name(t->lib));
    LOOM_CHECK(t->vocab >= 1 && t->vocab <= INT32_MAX, LOOM_ERR_FORMAT, "tokenizer %s: vocabulary size %lld", name,
               (long long)t->vocab);
    LOOM_CHECK(t->eot < t->vocab, LOOM_ERR_FORMAT, "tokenizer %s: end-of-text id %d outside its vocabulary of %lld",
               name, t->eot, (long long)t->vocab);
    return LOOM_OK;
}

static void free_tokenizer(prep_tok *t) {
    if (t->lib) loom_tokenizer_free(&t->lib);
}

/* The tokenizer file stored in the dataset, so that the dataset is self-contained: the char vocabulary
 * (written here), or a copy of a tokenizer file. Sets name to the file name in dir, or "" for a tokenizer
 * known by name (gpt2, byte). */
static loom_status store_tokenizer(const char *dir, const char *spec, const prep_tok *t, char *name, size_t cap) {
    name[0] = '\0';
    char path[PATH_MAX + 300];
    struct stat sb;
    if (strcmp(spec, "char") == 0) {
        snprintf(name, cap, "tokenizer.char");
        snprintf(path, sizeof path, "%s/%s", dir, name);
        LOOM_CALL(loom_tokenizer_save(t->lib, path));
    } else if (t->lib && stat(spec, &sb) == 0 && S_ISREG(sb.st_mode)) {
        const char *base = strrchr(spec, '/');
        base = base ? base + 1 : spec;
        const char *ext = strrchr(base, '.');
        snprintf(name, cap, "tokenizer%s", ext && strlen(ext) < 32 && !strchr(ext, '/') ? ext : ".bin");
        snprintf(path, sizeof path, "%s/%s", dir, name);
        char a[PATH_MAX], b[PATH_MAX];
        if (realpath(spec, a) && realpath(path, b) && strcmp(a, b) == 0) return LOOM_OK; /* already there */
        LOOM_CALL(copy_file(spec, path));
    }
    return LOOM_OK;
}

loom_status loom_data_prepare(const char *const *inputs, int n_inputs, const char *out_dir,
                              const loom_data_prepare_config *cfg_in, loom_data_prepare_stats *stats_out) {
    loom_data_prepare_config cfg = cfg_in ? *cfg_in : loom_data_prepare_config_default();
    if (!cfg.tokenizer || !cfg.tokenizer[0]) cfg.tokenizer = "gpt2";
    LOOM_CHECK(n_inputs >= 1, LOOM_ERR_INVALID_ARG, "no input files or directories given");
    LOOM_CHECK(out_dir && out_dir[0], LOOM_ERR_INVALID_ARG, "no output directory given");
    LOOM_CHECK(cfg.val_fraction >= 0 && cfg.val_fraction < 1, LOOM_ERR_CONFIG,
               "val_fraction must be in [0, 1), got %g", cfg.val_fraction);
    LOOM_CHECK(cfg.shard_tokens >= 1, LOOM_ERR_CONFIG, "shard_tokens must be at least 1, got %lld",
               (long long)cfg.shard_tokens);
    LOOM_CHECK(cfg.chunk_bytes >= 16 && cfg.chunk_bytes <= ((int64_t)1 << 30), LOOM_ERR_CONFIG,
               "chunk_bytes must be in [16, 2^30], got %lld", (long long)cfg.chunk_bytes);
    LOOM_CHECK(cfg.threads >= 0 && cfg.threads <= 4096, LOOM_ERR_CONFIG, "threads must be in [0, 4096], got %d",
               cfg.threads);
    if (!cfg.format) cfg.format = "text";
    if (!cfg.chat_template) cfg.chat_template = "plain";
    const int jsonl = !strcmp(cfg.format, "jsonl");
    LOOM_CHECK(jsonl || !strcmp(cfg.format, "text"), LOOM_ERR_CONFIG, "unknown input format '%s' (text or jsonl)",
               cfg.format);
    LOOM_CHECK(!jsonl || loom_chat_template_known(cfg.chat_template), LOOM_ERR_CONFIG,
               "unknown chat template '%s' (plain, chatml or llama3)", cfg.chat_template);
    LOOM_CHECK(!jsonl || strcmp(cfg.tokenizer, "char"), LOOM_ERR_CONFIG,
               "jsonl data needs a fixed tokenizer (gpt2, byte or a tokenizer file), not char");
    const double t0 = loom_now_s();
    const int threads = pick_threads(cfg.threads);
    loom_data_prepare_stats stats;
    memset(&stats, 0, sizeof stats);
    file_list files;
    memset(&files, 0, sizeof files);
    prep_tok tok;
    memset(&tok, 0, sizeof tok);
    writer w;
    memset(&w, 0, sizeof w);
    reader r;
    memset(&r, 0, sizeof r);
    chunk *chunks = NULL;
    shard_rec *recs = NULL;
    int n_recs = 0;
    const int batch = 2 * threads;
    loom_status st;
    int64_t total_bytes = 0;

    LOOM_CALL_GOTO(st, collect_inputs(inputs, n_inputs, &files, &stats.files_skipped, &total_bytes), done);
    stats.files = files.n;
    LOOM_CALL_GOTO(st, load_tokenizer(cfg.tokenizer, &files, &tok), done);
    LOOM_INFO("prepare: %lld text files (%.1f MB)%s, tokenizer %s (vocabulary %lld%s), %d threads", (long long)files.n,
              (double)total_bytes / 1e6, stats.files_skipped ? ", some binary or empty files skipped" : "", tok.name,
              (long long)tok.vocab, tok.eot >= 0 ? ", documents separated by end-of-text" : "", threads);
    LOOM_CALL_GOTO(st, mkdir_p(out_dir), done);
    LOOM_CALL_GOTO(st, clean_dir(out_dir), done);

    w.dir = out_dir;
    w.loss_mask = jsonl;
    w.width = tok.vocab <= 65536 && !jsonl ? 2 : 4;
    w.vocab = tok.vocab;
    w.shard_tokens = cfg.shard_tokens;
    r.files = &files;
    r.kind = tok.kind;
    r.chunk_bytes = (size_t)cfg.chunk_bytes;
    chunks = calloc((size_t)batch, sizeof *chunks);
    LOOM_CHECK_GOTO(st, chunks != NULL, LOOM_ERR_NOMEM, done, "out of memory");
    double last_report = t0;
    int64_t docs_started = 0, n_train = 0;
    if (jsonl) LOOM_CALL_GOTO(st, prepare_jsonl(&tok, &files, &cfg, &w, &stats, &n_train), done);
    while (!jsonl) {
        int n = 0, got = 1;
        while (n < batch && got) {
            LOOM_CALL_GOTO(st, reader_next(&r, &chunks[n], &got), done);
            n += got;
        }
        if (n == 0) break;
        LOOM_CALL_GOTO(st, encode_batch(&tok, &files, chunks, n, threads), done);
        for (int i = 0; i < n; i++) {
            chunk *c = &chunks[i];
            if (c->first) {
                if (docs_started > 0 && tok.eot >= 0) LOOM_CALL_GOTO(st, writer_put(&w, &tok.eot, 1), done);
                docs_started++;
            }
            st = writer_put(&w, c->ids, c->n_ids);
            free(c->ids);
            c->ids = NULL;
            if (st != LOOM_OK) {
                loom_error_trace(__FILE__, __LINE__, __func__);
                goto done;
            }
        }
        double tn = loom_now_s();
        if (tn - last_report > 10) {
            LOOM_INFO("prepare: %.1f of %.1f MB, %lld tokens, %.1f MB/s", (double)r.bytes / 1e6,
                      (double)total_bytes / 1e6, (long long)w.total, (double)r.bytes / 1e6 / (tn - t0));
            last_report = tn;
        }
    }
    LOOM_CALL_GOTO(st, writer_end_part(&w), done);
    LOOM_CHECK_GOTO(st, w.total > 0, LOOM_ERR_IO, done, jsonl ? "the inputs hold no example" : "the inputs hold no text");
    if (!jsonl) {
        stats.bytes = r.bytes;
        n_train = loom_data_split_point(w.total, cfg.val_fraction);
    }
    stats.tokens[0] = n_train;
    stats.tokens[1] = w.total - n_train;
    stats.vocab_size = tok.vocab;
    stats.eot = tok.eot;
    LOOM_CALL_GOTO(st, finish_shards(&w, n_train, &recs, &n_recs), done);
    for (int i = 0; i < n_recs; i++) stats.n_shards[recs[i].split]++;
    char tok_file[64];
    LOOM_CALL_GOTO(st, store_tokenizer(out_dir, cfg.tokenizer, &tok, tok_file, sizeof tok_file), done);
    LOOM_CALL_GOTO(st, write_manifest(out_dir, &tok, tok_file, w.width, w.loss_mask, cfg.val_fraction, &stats, recs,
                                      n_recs), done);
    stats.seconds = loom_now_s() - t0;
    if (stats_out) *stats_out = stats;
done:
    if (st != LOOM_OK && w.f) { /* a failed run leaves no part files (renamed shards go with the next prepare) */
        fclose(w.f);
        w.f = NULL;
    }
    for (int i = 0; st != LOOM_OK && i < w.n_parts; i++) {
        char part[PATH_MAX + 32];
        part_path(&w, i, part, sizeof part);
        (void)unlink(part);
    }
    if (chunks)
        for (int i = 0; i < batch; i++) {
            free(chunks[i].buf);
            free(chunks[i].ids);
        }
    free(chunks);
    free(recs);
    reader_close(&r);
    writer_free(&w);
    free_tokenizer(&tok);
    file_list_free(&files);
    return st;
}
