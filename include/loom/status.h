/* loom/status.h: errors are values.
 *
 *   loom_status s = loom_thing_init(cfg, &thing);
 *   if (s != LOOM_OK) fprintf(stderr, "error: %s\n", loom_error_message());
 *
 * Library functions return loom_status; the message of the most recent error on the calling thread
 * (with the file:line:function trace that LOOM_CALL records on the way up) is kept in a thread-local
 * buffer, the one piece of state outside a caller-held context (like errno). The library never exits. */
#ifndef LOOM_STATUS_H
#define LOOM_STATUS_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LOOM_OK = 0,
    LOOM_ERR_INVALID_ARG,  /* a caller passed a bad value */
    LOOM_ERR_CONFIG,       /* a malformed or inconsistent configuration */
    LOOM_ERR_IO,           /* the file system said no */
    LOOM_ERR_FORMAT,       /* a file is not what it claims to be (magic, version, truncation) */
    LOOM_ERR_CHECKSUM,     /* a file's contents do not match its checksum */
    LOOM_ERR_MISMATCH,     /* a file belongs to another model shape or layout */
    LOOM_ERR_NOMEM,        /* an allocation failed */
    LOOM_ERR_UNSUPPORTED,  /* a feature not built or not available on this machine */
    LOOM_ERR_INTERRUPTED,  /* stopped by a signal; state was saved */
    LOOM_ERR_INTERNAL      /* a bug in loom */
} loom_status;

#if defined(__GNUC__)
#define LOOM_NODISCARD __attribute__((warn_unused_result))
#define LOOM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LOOM_NODISCARD
#define LOOM_PRINTF(a, b)
#endif

/* Records an error (replacing the previous message) and returns `code`. */
loom_status loom_error_set(loom_status code, const char *file, int line, const char *func,
                           const char *fmt, ...) LOOM_PRINTF(5, 6);
/* Appends one "  at file:line func" frame to the current error's trace. */
void loom_error_trace(const char *file, int line, const char *func);
/* The last error's one-line message (no trace), or "" after success. */
const char *loom_error_message(void);
/* The last error's message followed by its trace, one frame a line. */
const char *loom_error_trace_text(void);
void loom_error_clear(void);
/* Many processes: marks the current error as reached by every rank of the job together (an agreement,
 * loom_comm_agree), so each can end normally. An error not so marked struck this rank alone: its peers may
 * be waiting for it in a collective, and the job must be aborted (loom_comm_abort) once the message is out.
 * loom_error_set clears the mark. */
void loom_error_mark_collective(void);
int loom_error_is_collective(void);
const char *loom_status_name(loom_status s);

/* Propagate an error up the stack, recording where it passed. */
#define LOOM_CALL(expr)                                                  \
    do {                                                                 \
        loom_status loom_call_s_ = (expr);                               \
        if (loom_call_s_ != LOOM_OK) {                                   \
            loom_error_trace(__FILE__, __LINE__, __func__);              \
            return loom_call_s_;                                         \
        }                                                                \
    } while (0)

/* Check a condition a user can violate; the message names the bad value and what was expected. */
#define LOOM_CHECK(cond, code, ...)                                              \
    do {                                                                         \
        if (!(cond)) return loom_error_set((code), __FILE__, __LINE__, __func__, \
                                           __VA_ARGS__);                         \
    } while (0)

/* Same, for use in functions that must clean up: sets `st` and jumps to `label`. */
#define LOOM_CALL_GOTO(st, expr, label)                                  \
    do {                                                                 \
        (st) = (expr);                                                   \
        if ((st) != LOOM_OK) {                                           \
            loom_error_trace(__FILE__, __LINE__, __func__);              \
            goto label;                                                  \
        }                                                                \
    } while (0)
#define LOOM_CHECK_GOTO(st, cond, code, label, ...)                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            (st) = loom_error_set((code), __FILE__, __LINE__, __func__, __VA_ARGS__); \
            goto label;                                                               \
        }                                                                             \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
