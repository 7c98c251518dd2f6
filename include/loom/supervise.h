/* loom/supervise.h: keeping a training job alive. A supervising launcher (`loom launch --max-restarts R`)
 * runs the job under mpirun, hears every rank's heartbeat, stops the whole job when a rank dies, hangs or
 * fails, and restarts it from the newest intact checkpoint; every incident goes to <out>/events.jsonl, which
 * `loom events <out>` summarises with the effective training time ratio (ETTR).
 *
 * Rank side (the trainer): when the supervisor set LOOM_SUPERVISOR=host:port in the environment, a thread
 * sends this rank's progress as one UDP datagram per LOOM_HEARTBEAT_MS (default 1000):
 *   loom-hb 1 attempt=A rank=R pid=P host=H boot=ID step=S age_ms=M phase=NAME wait=0|1
 * from loom/progress.h: age_ms is the time since the rank last made progress (a step, a phase of set-up, a
 * checkpoint), wait=1 while it is blocked in a collective. A rank that stops beating (SIGSTOP, a dead
 * machine) or beats without progress (a deadlock, a collective that never completes) is hung. Without
 * LOOM_SUPERVISOR nothing is started. */
#ifndef LOOM_SUPERVISE_H
#define LOOM_SUPERVISE_H
#include <stdint.h>
#include <stdio.h>

#include "loom/status.h"

/* Starts the heartbeat thread when LOOM_SUPERVISOR is set (once; later calls do nothing). */
void loom_heartbeat_start(void);
/* The last datagram ("phase=exit code=N") and the thread's end. */
void loom_heartbeat_stop(int exit_code);

/* ---- events: <out>/events.jsonl, one JSON object per line, appended (O_APPEND, one write per line) by the
 * supervisor and by the trainer's rank 0. Every line has "event" and "time" (Unix seconds). */
/* Appends one event: `fields_json` is the object's other members, without braces (e.g. "\"rank\":2"). */
LOOM_NODISCARD loom_status loom_event_append(const char *out_dir, const char *event, const char *fields_json);

typedef struct {
    int attempts;            /* job starts (1 + restarts) */
    int failures;            /* incidents that stopped the job */
    int bad_steps;           /* non-finite steps skipped */
    int rollbacks;           /* loss spikes rolled back */
    int64_t final_step;      /* the last step of the final model */
    double wall_s;           /* first start to the end (or the last event) */
    double productive_s;     /* the step times of the steps that survive into the final model */
    double ettr;             /* productive_s / wall_s */
    double steps_lost;       /* steps trained again after restarts and rollbacks */
    double detect_max_s;     /* the slowest detection of a dead or hung rank */
    int finished;            /* the job reached its last step */
} loom_events_summary;
/* Reads <out>/events.jsonl and <out>/metrics.jsonl: prints every incident to `f` (NULL: nothing) and fills
 * the summary. */
LOOM_NODISCARD loom_status loom_events_summarize(const char *out_dir, FILE *f, loom_events_summary *s);

/* ---- the supervisor ---- */
typedef struct {
    int n;                    /* ranks */
    const char *hosts;        /* "h1,h2" (mpirun --host), or NULL */
    const char *hostfile;     /* mpirun --hostfile, re-read at every start; or NULL */
    const char *mpirun;       /* the launcher ("mpirun") */
    int max_restarts;         /* restarts after failures before giving up */
    int min_ranks;            /* elastic: the fewest ranks a restart may run on (0: n, not elastic) */
    double heartbeat_timeout; /* seconds without a beat, or without progress, before a rank counts as hung */
    double backoff;           /* seconds before the first restart; doubled after each failure without progress */
    double probe_interval;    /* elastic, running short of ranks: seconds between probes of a lost host */
    const char *out;          /* the run directory (the command's --out): events.jsonl, checkpoints */
    char **cmd;               /* the loom command and its arguments (e.g. "train" ...), NULL-terminated */
    const char *self;         /* this loom executable */
} loom_supervise_config;
/* Runs the job until it finishes (0), or until a failure it cannot recover from: the maximum of restarts,
 * too few ranks, no intact checkpoint, a configuration error (non-zero, after one clear message). */
int loom_supervise(const loom_supervise_config *cfg);
#endif
