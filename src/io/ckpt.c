/* Checkpoint container: header, section table, section data. Atomic replace on write; every size and
 * checksum verified on read (docs/FORMATS.md). */
#define _GNU_SOURCE /* O_DIRECT */
#include "loom/ckpt.h"

#include "io_impl.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CKPT_MAGIC "LOOMCKPT"
#define CKPT_VERSION 1u
#define CKPT_MAX_SECTIONS 4096

typedef struct {
    char name[LOOM_CKPT_NAME_MAX];
    uint64_t offset, nbytes;
    uint32_t crc, reserved;
} ckpt_entry; /* 72 bytes, little-endian on disk (loom targets little-endian hosts) */

typedef struct {
    char magic[8];
    uint32_t version, n_sections;
    uint32_t table_crc, reserved;
} ckpt_header; /* 24 bytes */

struct loom_ckpt_reader {
    int fd;
    char path[4096];
    uint32_t n;
    ckpt_entry *entries;
};

loom_status loom_io_write_all(int fd, const void *buf, size_t n, const char *path) {
    const char *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0 && errno == EINTR) continue;
        LOOM_CHECK(w > 0, LOOM_ERR_IO, "writing %s: %s", path, w < 0 ? strerror(errno) : "short write");
        p += w;
        n -= (size_t)w;
    }
    return LOOM_OK;
}

void loom_io_tmp_path(char *tmp, size_t n, const char *path) {
    char dir[4096], base[4096];
    snprintf(dir, sizeof dir, "%s", path);
    snprintf(base, sizeof base, "%s", path);
    const char *d = dirname(dir), *b = basename(base);
    const size_t bl = strlen(b);
    DIR *dh = opendir(d);
    struct dirent *e;
    while (dh && (e = readdir(dh)) != NULL) {
        if (strncmp(e->d_name, b, bl) != 0 || strncmp(e->d_name + bl, ".tmp.", 5) != 0) continue;
        char *end = NULL;
        const long pid = strtol(e->d_name + bl + 5, &end, 10);
        if (pid <= 0 || *end || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char stale[8192];
        snprintf(stale, sizeof stale, "%s/%s", d, e->d_name);
        unlink(stale);
    }
    if (dh) closedir(dh);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
}

static loom_status read_all(int fd, void *buf, size_t n, uint64_t off, const char *path) {
    char *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        LOOM_CHECK(r > 0, LOOM_ERR_FORMAT, "%s is truncated (reading %zu bytes at offset %llu: %s)", path, n,
                   (unsigned long long)off, r < 0 ? strerror(errno) : "end of file");
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return LOOM_OK;
}

/* The end of every atomic write: fd holds the complete new contents in tmp (st says whether writing them
 * worked). fsync, close, rename over path, fsync the directory; on any failure tmp is removed and the old
 * file stays as it was. */
static loom_status commit_tmp(int fd, const char *tmp, const char *path, loom_status st) {
    if (st == LOOM_OK && fsync(fd) != 0)
        st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "fsync %s: %s", tmp, strerror(errno));
    if (close(fd) != 0 && st == LOOM_OK)
        st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "close %s: %s", tmp, strerror(errno));
    if (st != LOOM_OK) {
        unlink(tmp);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    if (rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "rename %s -> %s: %s", tmp, path,
                              strerror(err));
    }
    /* make the rename itself durable */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return LOOM_OK;
}

loom_status loom_ckpt_write(const char *path, const loom_ckpt_section *s, int n) {
    return loom_ckpt_write_crcs(path, s, n, NULL);
}

enum { CKPT_PIECE = 256 << 10 }; /* written a piece at a time, a piece fits the L2 cache: each pass reads it hot */

/* a pulled section (fill): written a piece at a time through one buffer, its CRC computed on the way */
static loom_status write_filled(int fd, const loom_ckpt_section *s, const char *tmp, uint32_t *crc) {
    enum { PIECE = CKPT_PIECE };
    char *buf = malloc(PIECE);
    LOOM_CHECK(buf != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_status st = LOOM_OK;
    *crc = 0;
    for (int64_t off = 0; off < s->nbytes && st == LOOM_OK; off += PIECE) {
        const int64_t k = s->nbytes - off < PIECE ? s->nbytes - off : PIECE;
        st = s->fill(s->ctx, off, k, buf);
        if (st == LOOM_OK) {
            *crc = loom_crc32c(*crc, buf, (size_t)k);
            st = loom_io_write_all(fd, buf, (size_t)k, tmp);
        }
    }
    free(buf);
    return st;
}

loom_status loom_ckpt_write_crcs(const char *path, const loom_ckpt_section *s, int n, uint32_t *crcs) {
    return loom_ckpt_write_recycled(path, NULL, s, n, crcs);
}

loom_status loom_ckpt_write_recycled(const char *path, const char *recycle, const loom_ckpt_section *s, int n,
                                     uint32_t *crcs) {
    LOOM_CHECK(n >= 0 && n <= CKPT_MAX_SECTIONS, LOOM_ERR_INVALID_ARG, "bad section count %d", n);
    ckpt_entry *e = calloc((size_t)(n > 0 ? n : 1), sizeof *e);
    LOOM_CHECK(e != NULL, LOOM_ERR_NOMEM, "out of memory");
    uint64_t off = sizeof(ckpt_header) + (uint64_t)n * sizeof(ckpt_entry);
    for (int i = 0; i < n; i++) {
        if (strlen(s[i].name) >= LOOM_CKPT_NAME_MAX || s[i].nbytes < 0 || (!s[i].data && !s[i].fill)) {
            free(e);
            return loom_error_set(LOOM_ERR_INVALID_ARG, __FILE__, __LINE__, __func__, "bad section '%s'", s[i].name);
        }
        snprintf(e[i].name, sizeof e[i].name, "%s", s[i].name);
        off = (off + 63) / 64 * 64;
        e[i].offset = off;
        e[i].nbytes = (uint64_t)s[i].nbytes;
        off += (uint64_t)s[i].nbytes;
    }
    char tmp[4200];
    loom_io_tmp_path(tmp, sizeof tmp, path);
    /* a recycled file is overwritten in place: its pages (shared memory's) are not allocated again */
    const int recycled = recycle && rename(recycle, tmp) == 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | (recycled ? 0 : O_TRUNC), 0644);
    if (fd < 0) {
        free(e);
        return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", tmp, strerror(errno));
    }
    /* the sections first (their checksums computed on the way), then the header and table in front */
    loom_status st = LOOM_OK;
    uint64_t pos = 0;
    static const char zeros[64];
    for (int i = 0; i < n && st == LOOM_OK; i++) {
        const uint64_t start = i == 0 ? 0 : pos;
        if (i == 0 && lseek(fd, (off_t)e[0].offset, SEEK_SET) < 0)
            st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot seek in %s: %s", tmp, strerror(errno));
        else if (i > 0 && e[i].offset > start)
            st = loom_io_write_all(fd, zeros, (size_t)(e[i].offset - start), tmp);
        if (st == LOOM_OK && s[i].data) { /* a piece at a time: the write reads what the CRC just brought to L2 */
            const char *p = s[i].data;
            for (int64_t at = 0; at < s[i].nbytes && st == LOOM_OK; at += CKPT_PIECE) {
                const size_t k = (size_t)(s[i].nbytes - at < CKPT_PIECE ? s[i].nbytes - at : CKPT_PIECE);
                e[i].crc = loom_crc32c(e[i].crc, p + at, k);
                st = loom_io_write_all(fd, p + at, k, tmp);
            }
        } else if (st == LOOM_OK) {
            st = write_filled(fd, &s[i], tmp, &e[i].crc);
        }
        if (crcs) crcs[i] = e[i].crc;
        pos = e[i].offset + e[i].nbytes;
    }
    ckpt_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, CKPT_MAGIC, 8);
    h.version = CKPT_VERSION;
    h.n_sections = (uint32_t)n;
    h.table_crc = loom_crc32c(0, e, (size_t)n * sizeof *e);
    if (st == LOOM_OK && lseek(fd, 0, SEEK_SET) < 0)
        st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot seek in %s: %s", tmp, strerror(errno));
    if (st == LOOM_OK) st = loom_io_write_all(fd, &h, sizeof h, tmp);
    if (st == LOOM_OK) st = loom_io_write_all(fd, e, (size_t)n * sizeof *e, tmp);
    if (st == LOOM_OK && n > 0 && e[0].offset > sizeof h + (uint64_t)n * sizeof *e) /* the gap before section 0 */
        st = loom_io_write_all(fd, zeros, (size_t)(e[0].offset - sizeof h - (uint64_t)n * sizeof *e), tmp);
    const uint64_t size = n > 0 ? e[n - 1].offset + e[n - 1].nbytes : sizeof h;
    if (st == LOOM_OK && recycled && ftruncate(fd, (off_t)size) != 0) /* a recycled file may have been longer */
        st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot truncate %s: %s", tmp, strerror(errno));
    free(e);
    LOOM_CALL(commit_tmp(fd, tmp, path, st));
    return LOOM_OK;
}

loom_status loom_ckpt_open(const char *path, loom_ckpt_reader **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY);
    LOOM_CHECK(fd >= 0, LOOM_ERR_IO, "cannot open checkpoint %s: %s", path, strerror(errno));
    loom_ckpt_reader *r = calloc(1, sizeof *r);
    if (!r) {
        close(fd);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    r->fd = fd;
    snprintf(r->path, sizeof r->path, "%s", path);
    loom_status st;
    struct stat sb;
    LOOM_CHECK_GOTO(st, fstat(fd, &sb) == 0, LOOM_ERR_IO, fail, "stat %s: %s", path, strerror(errno));
    ckpt_header h;
    LOOM_CHECK_GOTO(st, (uint64_t)sb.st_size >= sizeof h, LOOM_ERR_FORMAT, fail,
                    "%s is not a loom checkpoint (only %lld bytes)", path, (long long)sb.st_size);
    LOOM_CALL_GOTO(st, read_all(fd, &h, sizeof h, 0, path), fail);
    LOOM_CHECK_GOTO(st, memcmp(h.magic, CKPT_MAGIC, 8) == 0, LOOM_ERR_FORMAT, fail,
                    "%s is not a loom checkpoint (bad magic)", path);
    LOOM_CHECK_GOTO(st, h.version == CKPT_VERSION, LOOM_ERR_FORMAT, fail,
                    "%s has checkpoint format version %u; this loom reads version %u", path, h.version, CKPT_VERSION);
    LOOM_CHECK_GOTO(st, h.n_sections <= CKPT_MAX_SECTIONS, LOOM_ERR_FORMAT, fail, "%s: bad section count %u", path,
                    h.n_sections);
    uint64_t table_end = sizeof h + (uint64_t)h.n_sections * sizeof(ckpt_entry);
    LOOM_CHECK_GOTO(st, (uint64_t)sb.st_size >= table_end, LOOM_ERR_FORMAT, fail,
                    "%s is truncated (%lld bytes, the section table alone needs %llu)", path, (long long)sb.st_size,
                    (unsigned long long)table_end);
    r->n = h.n_sections;
    r->entries = calloc(h.n_sections ? h.n_sections : 1, sizeof(ckpt_entry));
    LOOM_CHECK_GOTO(st, r->entries != NULL, LOOM_ERR_NOMEM, fail, "out of memory");
    LOOM_CALL_GOTO(st, read_all(fd, r->entries, h.n_sections * sizeof(ckpt_entry), sizeof h, path), fail);
    LOOM_CHECK_GOTO(st, loom_crc32c(0, r->entries, h.n_sections * sizeof(ckpt_entry)) == h.table_crc,
                    LOOM_ERR_CHECKSUM, fail, "%s: the section table's checksum does not match (corrupt file)", path);
    for (uint32_t i = 0; i < r->n; i++) {
        ckpt_entry *e = &r->entries[i];
        e->name[LOOM_CKPT_NAME_MAX - 1] = '\0';
        LOOM_CHECK_GOTO(st, e->offset >= table_end && e->offset + e->nbytes >= e->offset &&
                                e->offset + e->nbytes <= (uint64_t)sb.st_size,
                        LOOM_ERR_FORMAT, fail,
                        "%s is truncated: section '%s' needs bytes up to %llu, the file has %lld", path, e->name,
                        (unsigned long long)(e->offset + e->nbytes), (long long)sb.st_size);
    }
    *out = r;
    return LOOM_OK;
fail:
    loom_ckpt_close(&r);
    return st;
}

void loom_ckpt_close(loom_ckpt_reader **pr) {
    if (!pr || !*pr) return;
    close((*pr)->fd);
    free((*pr)->entries);
    free(*pr);
    *pr = NULL;
}

static const ckpt_entry *find(const loom_ckpt_reader *r, const char *name) {
    for (uint32_t i = 0; i < r->n; i++)
        if (strcmp(r->entries[i].name, name) == 0) return &r->entries[i];
    return NULL;
}

int64_t loom_ckpt_section_size(const loom_ckpt_reader *r, const char *name) {
    const ckpt_entry *e = find(r, name);
    return e ? (int64_t)e->nbytes : -1;
}

loom_status loom_ckpt_read(loom_ckpt_reader *r, const char *name, void *dst, int64_t nbytes) {
    const ckpt_entry *e = find(r, name);
    LOOM_CHECK(e != NULL, LOOM_ERR_FORMAT, "%s has no section '%s'", r->path, name);
    LOOM_CHECK((int64_t)e->nbytes == nbytes, LOOM_ERR_MISMATCH,
               "%s: section '%s' has %llu bytes, this model expects %lld (another model shape?)", r->path, name,
               (unsigned long long)e->nbytes, (long long)nbytes);
    LOOM_CALL(read_all(r->fd, dst, (size_t)nbytes, e->offset, r->path));
    LOOM_CHECK(loom_crc32c(0, dst, (size_t)nbytes) == e->crc, LOOM_ERR_CHECKSUM,
               "%s: section '%s' fails its checksum (corrupt file)", r->path, name);
    return LOOM_OK;
}

loom_status loom_ckpt_verify(loom_ckpt_reader *r, const char *name, uint32_t *crc) {
    const ckpt_entry *e = find(r, name);
    LOOM_CHECK(e != NULL, LOOM_ERR_FORMAT, "%s has no section '%s'", r->path, name);
    char *buf = malloc(CKPT_PIECE);
    LOOM_CHECK(buf != NULL, LOOM_ERR_NOMEM, "out of memory");
    uint32_t sum = 0;
    loom_status st = LOOM_OK;
    for (uint64_t off = 0; off < e->nbytes && st == LOOM_OK; off += CKPT_PIECE) {
        const size_t k = e->nbytes - off < CKPT_PIECE ? (size_t)(e->nbytes - off) : CKPT_PIECE;
        st = read_all(r->fd, buf, k, e->offset + off, r->path);
        if (st == LOOM_OK) sum = loom_crc32c(sum, buf, k);
    }
    free(buf);
    LOOM_CALL(st);
    LOOM_CHECK(sum == e->crc, LOOM_ERR_CHECKSUM, "%s: section '%s' fails its checksum (corrupt file)", r->path, name);
    if (crc) *crc = sum;
    return LOOM_OK;
}

loom_status loom_ckpt_read_part(loom_ckpt_reader *r, const char *name, int64_t offset, void *dst, int64_t nbytes) {
    const ckpt_entry *e = find(r, name);
    LOOM_CHECK(e != NULL, LOOM_ERR_FORMAT, "%s has no section '%s'", r->path, name);
    LOOM_CHECK(offset >= 0 && nbytes >= 0 && (uint64_t)(offset + nbytes) <= e->nbytes, LOOM_ERR_INVALID_ARG,
               "%s: bytes [%lld, %lld) are outside section '%s' (%llu bytes)", r->path, (long long)offset,
               (long long)(offset + nbytes), name, (unsigned long long)e->nbytes);
    return read_all(r->fd, dst, (size_t)nbytes, e->offset + (uint64_t)offset, r->path);
}

loom_status loom_ckpt_read_text(loom_ckpt_reader *r, const char *name, char **out) {
    *out = NULL;
    int64_t n = loom_ckpt_section_size(r, name);
    LOOM_CHECK(n >= 0, LOOM_ERR_FORMAT, "%s has no section '%s'", r->path, name);
    LOOM_CHECK(n < (1 << 26), LOOM_ERR_FORMAT, "%s: section '%s' is too large for text", r->path, name);
    char *s = malloc((size_t)n + 1);
    LOOM_CHECK(s != NULL, LOOM_ERR_NOMEM, "out of memory");
    loom_status st = loom_ckpt_read(r, name, s, n);
    if (st != LOOM_OK) {
        free(s);
        loom_error_trace(__FILE__, __LINE__, __func__);
        return st;
    }
    s[n] = '\0';
    *out = s;
    return LOOM_OK;
}

/* The copy's pieces written with O_DIRECT straight from the source's mapping: no page-cache copy for the
 * kernel to make and write back later, so a background copy takes little CPU from training. 1 when done,
 * 0 when this file system or source cannot (the caller copies through a buffer), -1 on an I/O error. */
static int copy_direct(int in, int fd, const char *tmp, void (*after_piece)(void *), void *ctx,
                       loom_status *st) {
    enum { PIECE = 8 << 20 };
    struct stat sb;
    const long page = sysconf(_SC_PAGESIZE);
    if (fstat(in, &sb) != 0 || sb.st_size < PIECE || page <= 0) return 0;
    const int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_DIRECT) != 0) return 0;
    const size_t size = (size_t)sb.st_size;
    char *m = mmap(NULL, size, PROT_READ, MAP_SHARED, in, 0);
    if (m == MAP_FAILED) {
        (void)fcntl(fd, F_SETFL, flags);
        return 0;
    }
    const size_t aligned = size / (size_t)page * (size_t)page;
    size_t at = 0;
    while (at < aligned) {
        const size_t k = aligned - at < PIECE ? aligned - at : PIECE;
        const ssize_t w = write(fd, m + at, k);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && at == 0 && errno == EINVAL) break; /* O_DIRECT refused: the buffered copy instead */
        if (w <= 0) {
            *st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "writing %s: %s", tmp,
                                 w < 0 ? strerror(errno) : "no progress");
            break;
        }
        at += (size_t)w;
        if (after_piece) after_piece(ctx);
    }
    (void)fcntl(fd, F_SETFL, flags); /* the tail, shorter than a page, through the page cache */
    if (*st == LOOM_OK && at == aligned && at < size) *st = loom_io_write_all(fd, m + at, size - at, tmp);
    munmap(m, size);
    if (*st != LOOM_OK) return -1;
    return at > 0 ? 1 : 0;
}

loom_status loom_file_copy_atomic(const char *src, const char *dst, void (*after_piece)(void *), void *ctx) {
    const int in = open(src, O_RDONLY | O_CLOEXEC);
    LOOM_CHECK(in >= 0, LOOM_ERR_IO, "cannot open %s: %s", src, strerror(errno));
    char tmp[4200];
    loom_io_tmp_path(tmp, sizeof tmp, dst);
    const int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        const int err = errno;
        close(in);
        return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", tmp, strerror(err));
    }
    loom_status st = LOOM_OK;
    if (copy_direct(in, fd, tmp, after_piece, ctx, &st) != 0) {
        close(in);
        LOOM_CALL(commit_tmp(fd, tmp, dst, st));
        return LOOM_OK;
    }
    enum { PIECE = 1 << 20 };
    char *buf = malloc(PIECE);
    if (!buf) st = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    for (;; after_piece ? after_piece(ctx) : (void)0) {
        if (st != LOOM_OK) break;
        const ssize_t r = read(in, buf, PIECE);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "reading %s: %s", src, strerror(errno));
        if (r <= 0) break;
        st = loom_io_write_all(fd, buf, (size_t)r, tmp);
    }
    free(buf);
    close(in);
    LOOM_CALL(commit_tmp(fd, tmp, dst, st));
    return LOOM_OK;
}

loom_status loom_file_mkdir_p(const char *path) {
    size_t n = strlen(path);
    char *buf = malloc(n + 1);
    LOOM_CHECK(buf != NULL, LOOM_ERR_NOMEM, "out of memory");
    memcpy(buf, path, n + 1);
    loom_status st = LOOM_OK;
    for (char *p = buf + 1; *p && st == LOOM_OK; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", buf, strerror(errno));
            *p = '/';
        }
    if (st == LOOM_OK && mkdir(buf, 0755) != 0 && errno != EEXIST)
        st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", buf, strerror(errno));
    struct stat sb;
    if (st == LOOM_OK && (stat(buf, &sb) != 0 || !S_ISDIR(sb.st_mode)))
        st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "%s is not a directory", buf);
    free(buf);
    return st;
}

loom_status loom_file_write_atomic(const char *path, const void *data, size_t n) {
    char tmp[4200];
    loom_io_tmp_path(tmp, sizeof tmp, path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    LOOM_CHECK(fd >= 0, LOOM_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    LOOM_CALL(commit_tmp(fd, tmp, path, loom_io_write_all(fd, data, n, tmp)));
    return LOOM_OK;
}
