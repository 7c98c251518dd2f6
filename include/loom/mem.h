/* loom/mem.h: allocation with peak-memory accounting by category.
 *
 *   loom_mem mem; loom_mem_init(&mem);
 *   float *w; LOOM_CALL(loom_mem_alloc(&mem, LOOM_MEM_PARAMS, n * sizeof(float), (void **)&w));
 *   ...; loom_mem_free(&mem, LOOM_MEM_PARAMS, w, n * sizeof(float));
 *   printf("%lld\n", (long long)mem.peak[LOOM_MEM_PARAMS]);
 *
 * Large buffers are 2 MiB aligned and advised for transparent huge pages: first touch of a 4 KiB page
 * is very expensive on the target machines, so everything is allocated once and reused. */
#ifndef LOOM_MEM_H
#define LOOM_MEM_H
#include <stddef.h>
#include <stdint.h>

#include "loom/status.h"

typedef enum {
    LOOM_MEM_PARAMS = 0,
    LOOM_MEM_GRADS,
    LOOM_MEM_OPTIM,
    LOOM_MEM_ACTS,
    LOOM_MEM_WORKSPACE,
    LOOM_MEM_N_CATEGORIES
} loom_mem_category;

typedef struct {
    int64_t current[LOOM_MEM_N_CATEGORIES];
    int64_t peak[LOOM_MEM_N_CATEGORIES];
    int64_t current_total, peak_total;
    int64_t fail_after;  /* tests: fail the N-th allocation from now (0 = never) */
} loom_mem;

void loom_mem_init(loom_mem *mem);
const char *loom_mem_category_name(loom_mem_category c);
/* Host memory: zero-filled, 64-byte (or for >= 4 MiB, 2 MiB) aligned. */
LOOM_NODISCARD loom_status loom_mem_alloc(loom_mem *mem, loom_mem_category cat, size_t bytes, void **out);
void loom_mem_free(loom_mem *mem, loom_mem_category cat, void *p, size_t bytes);
/* The one place every allocation (host, or a backend's buffer: loom_buf_alloc) is counted and may be made to
 * fail (fail_after): counts `bytes` in `cat`, or fails with LOOM_ERR_NOMEM. unaccount reverses it. */
LOOM_NODISCARD loom_status loom_mem_account(loom_mem *mem, loom_mem_category cat, size_t bytes);
void loom_mem_unaccount(loom_mem *mem, loom_mem_category cat, size_t bytes);
/* The host allocation behind loom_mem_alloc, unaccounted (a backend's own pages): NULL when out of memory. */
void *loom_mem_host_alloc(size_t bytes);
/* Accounts bytes that live outside loom_mem_alloc (mapped by a caller, e.g. ZeRO's gathered units):
 * delta > 0 when they become resident, < 0 when released. */
void loom_mem_track(loom_mem *mem, loom_mem_category cat, int64_t delta);
/* Peak resident set of the process, from the OS (bytes). */
int64_t loom_mem_process_peak_rss(void);
#endif
