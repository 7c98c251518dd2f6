/* The CPU backend: fills the kernel table, sets the one thread pool (OpenMP, shared with OpenBLAS's
 * OpenMP build), loads the GEMM; its buffers are host memory. */
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cpu_impl.h"

loom_status loom_cpu_setup(const loom_backend_config *cfg, loom_backend *be) {
    LOOM_CHECK(cfg->threads >= 0 && cfg->threads <= 4096, LOOM_ERR_INVALID_ARG,
               "threads must be between 0 (all cores) and 4096, got %d", cfg->threads);
    LOOM_CHECK(!cfg->batch_invariant || loom_cpu_fewrows_supported(0), LOOM_ERR_UNSUPPORTED,
               "batch-invariant products need AVX2 or AVX-512 (fewrows.c's kernel, which runs them, uses them)");
    be->batch_invariant = cfg->batch_invariant != 0;
    int threads = cfg->threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
#ifdef _OPENMP
    omp_set_num_threads(threads);
#else
    threads = 1;
#endif
    be->threads = threads;
#define LOOM_CPU_KERNEL_FILL(name, category, flops) be->k.name = loom_cpu_##name;
    LOOM_KERNELS(LOOM_CPU_KERNEL_FILL)
#undef LOOM_CPU_KERNEL_FILL
    LOOM_CALL(loom_cpu_blas_load(cfg, be));
    loom_cpu_bf16_load(be); /* optional: oneDNN when installed, else the reference */
    return LOOM_OK;
}

/* ---- buffers: host memory (2 MiB aligned and huge-page advised when large: first touch is expensive) ---- */

static loom_status cpu_alloc(loom_backend *be, size_t bytes, void **out) {
    (void)be;
    *out = loom_mem_host_alloc(bytes);
    LOOM_CHECK(*out != NULL, LOOM_ERR_NOMEM, "out of memory allocating %zu bytes", bytes);
    return LOOM_OK;
}

static void cpu_free(loom_backend *be, void *p, size_t bytes) {
    (void)be;
    (void)bytes;
    free(p);
}

/* reserved address space: MAP_NORESERVE, pages resident once written */
static loom_status cpu_reserve(loom_backend *be, size_t bytes, void **out) {
    (void)be;
    void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    LOOM_CHECK(p != MAP_FAILED, LOOM_ERR_NOMEM, "cannot reserve %zu bytes of address space", bytes);
#ifdef MADV_HUGEPAGE
    /* ZeRO-2/3 drop a unit's pages after each use and write them again at the next: with 4 KiB pages every
     * refill takes a fault per page (measured here: ~2.2 ns per float refilled, against ~0.3 with 2 MiB
     * pages; a dp=2 ZeRO-3 step of gpt2-l6 faulted 3.3M times in 4 steps, 0.74M with them) */
    (void)madvise(p, bytes ? bytes : 1, MADV_HUGEPAGE);
#endif
    *out = p;
    return LOOM_OK;
}

static void cpu_unreserve(loom_backend *be, void *p, size_t bytes) {
    (void)be;
    munmap(p, bytes ? bytes : 1);
}

/* the pages wholly inside the range go back (boundary pages, shared with neighbours, stay) */
static void cpu_discard(loom_backend *be, void *p, size_t bytes) {
    (void)be;
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + pg - 1) / pg * pg, hi = ((uintptr_t)p + bytes) / pg * pg;
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* Linux 5.14's MADV_POPULATE_WRITE: one call faults the range in (huge pages where the range has them); an
 * older kernel refuses it and the pages come as they are written */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
static void cpu_populate(loom_backend *be, void *p, size_t bytes) {
    (void)be;
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = (uintptr_t)p / pg * pg, hi = ((uintptr_t)p + bytes + pg - 1) / pg * pg;
    (void)madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
}

void loom_cpu_buffer_ops(loom_backend *be) {
    be->buf = (loom_buffer_ops){cpu_alloc, cpu_free, cpu_reserve, cpu_unreserve, cpu_discard, NULL, NULL, cpu_populate};
}

loom_status loom_cpu_backend_init(const loom_backend_config *cfg, loom_backend *be) {
    be->name = "cpu";
    be->host_accessible = 1;
    loom_cpu_buffer_ops(be);
    return loom_cpu_setup(cfg, be);
}
