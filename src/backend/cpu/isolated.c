/* The isolating backend ("cpu-isolated", for tests): the CPU kernels over buffers that the host code above
 * the backend cannot touch. Every buffer lies in one arena of address space kept PROT_NONE, made readable
 * and writable only while one of this backend's own operations runs (mprotect around each kernel and copy),
 * so a direct read or write of a buffer from anywhere else is a segmentation fault at once. A run that
 * passes on it has nothing to fix above the seam for a device whose memory the host cannot address.
 *
 * The arena is one MAP_NORESERVE mapping; allocations are page-aligned ranges of it (first fit, freed
 * ranges coalesced and their pages returned, so a new allocation reads as zeros). Reserved ranges (ZeRO-3's
 * whole-size mappings) are allocations whose pages become resident when written. An operation opens only the
 * allocations its arguments point into: every pointer-sized word of its argument struct that lies in the
 * arena names one (an integer that happened to look like such an address would only open one more). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cpu_impl.h"

#define ARENA_BYTES ((size_t)1 << 40) /* address space only: pages are resident when written */

typedef struct {
    size_t lo, hi; /* offsets into the arena */
} range;

enum { MAX_OPEN = 32 };

typedef struct {
    char *base;
    size_t high;   /* end of the highest allocation */
    range *free_r; /* free ranges below `high`, sorted */
    int n_free, cap_free;
    range *live;   /* allocations, sorted */
    int n_live, cap_live;
    range open[MAX_OPEN]; /* what the running operation opened */
    int n_open;
} arena;

#define HUGE_BYTES ((size_t)2 << 20)

/* large allocations are whole huge pages: opening one then changes a few page-directory entries instead of
 * thousands of page-table entries (mprotect's cost, paid twice per operation) */
static size_t page_up(size_t n) {
    const size_t pg = n >= 2 * HUGE_BYTES ? HUGE_BYTES : (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

/* the live allocation holding arena offset off, or -1 */
static int live_at(const arena *ar, size_t off) {
    int lo = 0, hi = ar->n_live - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (off < ar->live[mid].lo) hi = mid - 1;
        else if (off >= ar->live[mid].hi) lo = mid + 1;
        else return mid;
    }
    return -1;
}

/* the opened allocations' protection, adjacent ones in one call */
static loom_status arena_protect(arena *ar, int prot) {
    for (int k = 0; k < ar->n_open;) {
        int e = k + 1;
        while (e < ar->n_open && ar->open[e].lo == ar->open[e - 1].hi) e++;
        if (mprotect(ar->base + ar->open[k].lo, ar->open[e - 1].hi - ar->open[k].lo, prot) != 0)
            return loom_error_set(LOOM_ERR_INTERNAL, __FILE__, __LINE__, __func__, "mprotect: %s", strerror(errno));
        k = e;
    }
    return LOOM_OK;
}

/* adds to the open set every allocation the argument struct `args` (bytes long) points into */
static loom_status arena_add(arena *ar, const void *args, size_t bytes) {
    for (size_t o = 0; o + sizeof(uintptr_t) <= bytes; o += sizeof(uintptr_t)) {
        uintptr_t v;
        memcpy(&v, (const char *)args + o, sizeof v);
        if (v < (uintptr_t)ar->base || v >= (uintptr_t)ar->base + ARENA_BYTES) continue;
        const int i = live_at(ar, (size_t)(v - (uintptr_t)ar->base));
        int seen = i < 0;
        for (int k = 0; k < ar->n_open && !seen; k++) seen = ar->open[k].lo == ar->live[i].lo;
        if (seen) continue;
        LOOM_CHECK(ar->n_open < MAX_OPEN, LOOM_ERR_INTERNAL, "cpu-isolated: an operation on over %d buffers", MAX_OPEN);
        int at = ar->n_open++; /* kept sorted, so neighbours open in one call */
        while (at > 0 && ar->open[at - 1].lo > ar->live[i].lo) {
            ar->open[at] = ar->open[at - 1];
            at--;
        }
        ar->open[at] = ar->live[i];
    }
    return LOOM_OK;
}

/* opens what an operation's arguments point into: its struct's words and, for a batch of decode calls (an array in
 * host memory), every call's */
static loom_status arena_open(arena *ar, loom_kernel k, const void *args, size_t bytes) {
    ar->n_open = 0;
    LOOM_CALL(arena_add(ar, args, bytes));
    if (k == LOOM_KERNEL_attention_decode_batch) {
        const loom_attention_decode_batch_args *b = args;
        for (int64_t i = 0; i < b->n; i++) LOOM_CALL(arena_add(ar, &b->calls[i], sizeof b->calls[i]));
    }
    return arena_protect(ar, PROT_READ | PROT_WRITE);
}

static void arena_close(arena *ar) {
    (void)arena_protect(ar, PROT_NONE);
    ar->n_open = 0;
}

static loom_status live_add(arena *ar, size_t lo, size_t hi) {
    if (ar->n_live == ar->cap_live) {
        const int cap = ar->cap_live ? 2 * ar->cap_live : 64;
        range *g = realloc(ar->live, (size_t)cap * sizeof *g);
        LOOM_CHECK(g != NULL, LOOM_ERR_NOMEM, "out of memory");
        ar->live = g;
        ar->cap_live = cap;
    }
    int i = ar->n_live;
    while (i > 0 && ar->live[i - 1].lo > lo) i--;
    memmove(&ar->live[i + 1], &ar->live[i], (size_t)(ar->n_live - i) * sizeof *ar->live);
    ar->live[i] = (range){lo, hi};
    ar->n_live++;
    return LOOM_OK;
}

static void live_remove(arena *ar, size_t lo) {
    const int i = live_at(ar, lo);
    if (i < 0) return;
    memmove(&ar->live[i], &ar->live[i + 1], (size_t)(ar->n_live - i - 1) * sizeof *ar->live);
    ar->n_live--;
}

static void iso_free(loom_backend *be, void *p, size_t bytes);

static loom_status iso_alloc(loom_backend *be, size_t bytes, void **out) {
    arena *ar = be->impl;
    const size_t n = page_up(bytes);
    const size_t align = n >= 2 * HUGE_BYTES ? HUGE_BYTES : 1;
    for (int i = 0; i < ar->n_free; i++) { /* first fit among freed ranges */
        range *r = &ar->free_r[i];
        if (r->hi - r->lo < n || r->lo % align) continue;
        LOOM_CALL(live_add(ar, r->lo, r->lo + n));
        *out = ar->base + r->lo;
        r->lo += n;
        if (r->lo == r->hi) {
            memmove(r, r + 1, (size_t)(ar->n_free - i - 1) * sizeof *r);
            ar->n_free--;
        }
        return LOOM_OK;
    }
    if (ar->high % align) { /* the gap below an aligned allocation stays free */
        const size_t up = (ar->high + align - 1) / align * align;
        LOOM_CHECK(up - ar->high <= ARENA_BYTES - ar->high, LOOM_ERR_NOMEM, "cpu-isolated: the arena is full");
        LOOM_CALL(live_add(ar, ar->high, up));
        iso_free(be, ar->base + ar->high, up - ar->high);
        ar->high = up;
    }
    LOOM_CHECK(n <= ARENA_BYTES - ar->high, LOOM_ERR_NOMEM, "cpu-isolated: the %zu-byte arena is full", ARENA_BYTES);
    LOOM_CALL(live_add(ar, ar->high, ar->high + n));
    *out = ar->base + ar->high;
    ar->high += n;
    return LOOM_OK;
}

/* the range's pages go back (reading as zeros when allocated again) and it joins the free list */
static void iso_free(loom_backend *be, void *p, size_t bytes) {
    arena *ar = be->impl;
    const size_t lo = (size_t)((char *)p - ar->base), hi = lo + page_up(bytes);
    live_remove(ar, lo);
    (void)madvise(p, hi - lo, MADV_DONTNEED);
    if (ar->n_free == ar->cap_free) {
        const int cap = ar->cap_free ? 2 * ar->cap_free : 64;
        range *g = realloc(ar->free_r, (size_t)cap * sizeof *g);
        if (!g) return; /* the range is lost to reuse, nothing else */
        ar->free_r = g;
        ar->cap_free = cap;
    }
    int i = 0;
    while (i < ar->n_free && ar->free_r[i].lo < lo) i++;
    memmove(&ar->free_r[i + 1], &ar->free_r[i], (size_t)(ar->n_free - i) * sizeof *ar->free_r);
    ar->free_r[i] = (range){lo, hi};
    ar->n_free++;
    if (i + 1 < ar->n_free && ar->free_r[i].hi == ar->free_r[i + 1].lo) { /* coalesce with the next */
        ar->free_r[i].hi = ar->free_r[i + 1].hi;
        memmove(&ar->free_r[i + 1], &ar->free_r[i + 2], (size_t)(ar->n_free - i - 2) * sizeof *ar->free_r);
        ar->n_free--;
    }
    if (i > 0 && ar->free_r[i - 1].hi == ar->free_r[i].lo) { /* and with the previous */
        ar->free_r[i - 1].hi = ar->free_r[i].hi;
        memmove(&ar->free_r[i], &ar->free_r[i + 1], (size_t)(ar->n_free - i - 1) * sizeof *ar->free_r);
        ar->n_free--;
    }
}

static void iso_discard(loom_backend *be, void *p, size_t bytes) {
    (void)be;
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + pg - 1) / pg * pg, hi = ((uintptr_t)p + bytes) / pg * pg;
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

static int iso_device_only(const loom_backend *be, const void *p) {
    const arena *ar = be->impl;
    return (const char *)p >= ar->base && (const char *)p < ar->base + ARENA_BYTES;
}

static void iso_impl_free(loom_backend *be) {
    arena *ar = be->impl;
    if (!ar) return;
    if (ar->base) munmap(ar->base, ARENA_BYTES);
    free(ar->free_r);
    free(ar->live);
    free(ar);
    be->impl = NULL;
}

/* every kernel: the CPU's, with the buffers it is given open only while it runs */
#define ISO_KERNEL(name, category, flops)                                          \
    static loom_status iso_##name(loom_backend *be, const loom_##name##_args *a) { \
        loom_status st = arena_open(be->impl, LOOM_KERNEL_##name, a, sizeof *a);   \
        if (st == LOOM_OK) st = loom_cpu_##name(be, a);                            \
        arena_close(be->impl);                                                     \
        return st;                                                                 \
    }
LOOM_KERNELS(ISO_KERNEL)
#undef ISO_KERNEL

loom_status loom_isolated_backend_init(const loom_backend_config *cfg, loom_backend *be) {
    be->name = "cpu-isolated";
    be->host_accessible = 0;
    arena *ar = calloc(1, sizeof *ar);
    LOOM_CHECK(ar != NULL, LOOM_ERR_NOMEM, "out of memory");
    be->impl = ar;
    be->impl_free = iso_impl_free;
    ar->base = mmap(NULL, ARENA_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ar->base == MAP_FAILED) {
        ar->base = NULL;
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__,
                              "cpu-isolated: cannot reserve its %zu-byte arena: %s", ARENA_BYTES, strerror(errno));
    }
    if ((uintptr_t)ar->base % HUGE_BYTES) { /* offsets aligned to 2 MiB are then addresses aligned to it */
        munmap(ar->base, ARENA_BYTES);
        ar->base = mmap(NULL, ARENA_BYTES + HUGE_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        LOOM_CHECK(ar->base != MAP_FAILED, LOOM_ERR_NOMEM, "cpu-isolated: cannot reserve its arena: %s", strerror(errno));
        char *aligned = (char *)(((uintptr_t)ar->base + HUGE_BYTES - 1) / HUGE_BYTES * HUGE_BYTES);
        if (aligned > ar->base) munmap(ar->base, (size_t)(aligned - ar->base));
        munmap(aligned + ARENA_BYTES, (size_t)(ar->base + HUGE_BYTES - aligned));
        ar->base = aligned;
    }
#ifdef MADV_HUGEPAGE
    (void)madvise(ar->base, ARENA_BYTES, MADV_HUGEPAGE);
#endif
    LOOM_CALL(loom_cpu_setup(cfg, be));
#define ISO_FILL(name, category, flops) be->k.name = iso_##name;
    LOOM_KERNELS(ISO_FILL)
#undef ISO_FILL
    /* reserved ranges are arena allocations: its pages are resident only once written */
    be->buf = (loom_buffer_ops){iso_alloc, iso_free, iso_alloc, iso_free, iso_discard, iso_device_only, NULL, NULL};
    return LOOM_OK;
}
