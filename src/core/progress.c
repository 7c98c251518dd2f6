/* What this process is doing (include/loom/progress.h): atomics, so a heartbeat thread reads them while
 * the training thread and the communicator write them. */
#include <stdatomic.h>
#include <time.h>

#include "loom/progress.h"

static _Atomic int64_t step_done;
static _Atomic int64_t mark_ns;
static _Atomic(const char *) phase_now = "start";
static atomic_int waiting_depth;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void loom_progress_mark(int64_t step, const char *phase) {
    atomic_store(&step_done, step);
    atomic_store(&phase_now, phase);
    atomic_store(&mark_ns, now_ns());
}

void loom_progress_waiting(int on) { atomic_fetch_add(&waiting_depth, on ? 1 : -1); }

loom_progress_state loom_progress_get(void) {
    int64_t at = atomic_load(&mark_ns);
    if (at == 0) { /* nothing marked yet: the process start counts */
        int64_t expected = 0;
        atomic_compare_exchange_strong(&mark_ns, &expected, now_ns());
        at = atomic_load(&mark_ns);
    }
    return (loom_progress_state){atomic_load(&step_done), at, atomic_load(&phase_now), atomic_load(&waiting_depth) > 0};
}
