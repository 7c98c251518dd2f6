/* loom/offload.h: the heterogeneous memory manager's chunk store. Parameters, gradients and optimizer
 * moments of one rank's range are held in fixed-size chunks, each either pinned in RAM or kept in a scratch
 * file (NVMe); one I/O thread moves bytes between files and the caller's buffers while compute goes on.
 *
 *   loom_offload_options oo = {.budget_bytes = 1 << 30, .chunk_bytes = 16 << 20, .dir = "out"};
 *   const double cost[LOOM_OFF_N_STREAMS] = {3, 2, 2, 2};   // bytes moved per byte per step, from access order
 *   loom_offload *st;
 *   LOOM_CALL(loom_offload_init(&oo, n, LOOM_OFF_ALL, cost, working_set, &mem, &st));
 *   int64_t t = loom_offload_read(st, LOOM_OFF_PARAMS, lo, hi, dst);   // queued; dst valid after the wait
 *   ...compute...
 *   LOOM_CALL(loom_offload_wait(st, t));
 *
 * Placement: the budget less the caller's working set pins chunks in RAM, most costly first (cost: the
 * bytes each byte of a stream would move per step if it lived in a file, which the step's access order
 * fixes: a parameter is read by the forward and the backward and written by the update, a gradient written
 * by the backward and read by the update, a moment read and written by the update); the rest live in files.
 * Requests run in the order queued (a read after a write of the same range sees the write). Files are
 * created and unlinked at once: they are scratch that vanishes with the process, never a checkpoint. Their
 * pages are written back and dropped from the page cache after every transfer, so the RAM a run uses is
 * what loom_mem accounts, and the transfer rates are the disk's. */
#ifndef LOOM_OFFLOAD_H
#define LOOM_OFFLOAD_H
#include <stdint.h>
#include <stdio.h>

#include "loom/backend.h"
#include "loom/mem.h"
#include "loom/status.h"

typedef enum { LOOM_OFF_PARAMS = 0, LOOM_OFF_GRADS, LOOM_OFF_M, LOOM_OFF_V, LOOM_OFF_N_STREAMS } loom_offload_stream;
enum { LOOM_OFF_ALL = 15, LOOM_OFF_MOMENTS = 12 }; /* stream masks: 1 << stream */

typedef struct {
    int64_t budget_bytes; /* RAM for this range's parameters, gradients and moments, pinned and working */
    int64_t chunk_bytes;  /* placement unit (a multiple of 4096) */
    const char *dir;      /* where the scratch files go */
    FILE *trace;          /* JSON lines: the placement, then one record per step (NULL: none) */
    loom_backend *be;     /* whose buffers reads and writes may be given (NULL: host memory only). A buffer the
                             host cannot address is staged: a read lands in host memory and is uploaded when
                             waited for; a write is downloaded when queued. Pinned chunks are then not lent out
                             (loom_offload_pinned is NULL): the update works on its staging buffers. */
} loom_offload_options;

typedef struct {
    int64_t read_bytes[LOOM_OFF_N_STREAMS], write_bytes[LOOM_OFF_N_STREAMS]; /* file traffic */
    int64_t copy_bytes;  /* to or from pinned chunks */
    double io_seconds;   /* the I/O thread busy with files */
    double wait_seconds; /* callers blocked waiting for it */
} loom_offload_stats;

typedef struct loom_offload loom_offload;

const char *loom_offload_stream_name(loom_offload_stream s);
/* ZeRO's per-step file bytes per byte of each stream: parameters 3 (forward and backward reads, the update's
 * write), gradients 2, moments 2 */
extern const double loom_offload_default_cost[LOOM_OFF_N_STREAMS];
/* n floats per stream; streams outside `mask` are not held here (the caller keeps them in RAM). Fails with a
 * message naming the shortfall when the budget cannot hold the working set. Not collective. */
LOOM_NODISCARD loom_status loom_offload_init(const loom_offload_options *o, int64_t n, int mask,
                                             const double cost[LOOM_OFF_N_STREAMS], int64_t working_set_bytes,
                                             loom_mem *mem, loom_offload **out);
/* The placement loom_offload_init would make, without making it: bytes pinned per stream (planning);
 * marks (NULL, or per stream an array of one char per chunk) set to 1 for each pinned chunk. */
void loom_offload_plan_pins(const loom_offload_options *o, int64_t n, int mask, const double cost[LOOM_OFF_N_STREAMS],
                            int64_t working_set_bytes, int64_t pinned[LOOM_OFF_N_STREAMS],
                            char *marks[LOOM_OFF_N_STREAMS]);
/* Waits for every queued request, then frees the files and chunks. */
void loom_offload_free(loom_offload **st);
int loom_offload_holds(const loom_offload *st, loom_offload_stream s);
int64_t loom_offload_chunk_floats(const loom_offload *st);
int64_t loom_offload_num_chunks(const loom_offload *st);
/* The RAM copy of chunk c of stream s when it is pinned, else NULL (the update works on it in place). */
float *loom_offload_pinned(loom_offload *st, loom_offload_stream s, int64_t c);
/* Bytes pinned in RAM and held in files, over all streams. */
int64_t loom_offload_pinned_bytes(const loom_offload *st);
int64_t loom_offload_file_bytes(const loom_offload *st);
/* Queue a copy of floats [lo, hi) of stream s into dst / from src; returns a ticket for loom_offload_wait.
 * The buffer must stay valid (and src unchanged) until that wait returns. */
int64_t loom_offload_read(loom_offload *st, loom_offload_stream s, int64_t lo, int64_t hi, float *dst);
int64_t loom_offload_write(loom_offload *st, loom_offload_stream s, int64_t lo, int64_t hi, const float *src);
/* Blocks until request `ticket` (and every earlier one) is done; the first I/O error, with its cause. */
LOOM_NODISCARD loom_status loom_offload_wait(loom_offload *st, int64_t ticket);
/* Whether request `ticket` is done (never blocks; errors surface in the next wait). */
int loom_offload_done(loom_offload *st, int64_t ticket);
LOOM_NODISCARD loom_status loom_offload_wait_all(loom_offload *st);
loom_offload_stats loom_offload_get_stats(const loom_offload *st);
/* Writes the step's record to the trace (and resets the per-step counters). */
void loom_offload_trace_step(loom_offload *st, int64_t step, const loom_mem *mem);
#endif
