/* loom/progress.h: what this process is doing, for its heartbeat (loom/supervise.h). Process-wide atomics
 * that any layer may set cheaply: the trainer marks progress (a step done, a phase of set-up, a checkpoint),
 * the communicator marks the time it spends blocked in a collective. A supervisor tells a deadlocked rank
 * from the ranks waiting for it by this: the one not waiting in a collective, progress oldest. */
#ifndef LOOM_PROGRESS_H
#define LOOM_PROGRESS_H
#include <stdint.h>

/* Progress at `step` (optimizer steps done) in `phase` (a static string: "init", "step", "checkpoint"). */
void loom_progress_mark(int64_t step, const char *phase);
/* Entering (1) or leaving (0) a blocking wait in a collective; nests. */
void loom_progress_waiting(int on);

typedef struct {
    int64_t step;
    int64_t at_ns;      /* CLOCK_MONOTONIC of the last mark */
    const char *phase;
    int waiting;        /* inside a collective's wait now */
} loom_progress_state;
loom_progress_state loom_progress_get(void);
#endif
