/* Thread-local error message and trace (see include/loom/status.h). */
#include "loom/status.h"

#include <stdio.h>
#include <string.h>

#define LOOM_ERR_MSG_MAX 1024
#define LOOM_ERR_TRACE_MAX 4096

static _Thread_local char err_msg[LOOM_ERR_MSG_MAX];
static _Thread_local char err_trace[LOOM_ERR_TRACE_MAX];
static _Thread_local size_t err_trace_len;
static _Thread_local int err_collective;

loom_status loom_error_set(loom_status code, const char *file, int line, const char *func,
                           const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    err_trace_len = 0;
    err_trace[0] = '\0';
    err_collective = 0;
    loom_error_trace(file, line, func);
    return code;
}

void loom_error_mark_collective(void) { err_collective = 1; }
int loom_error_is_collective(void) { return err_collective; }

void loom_error_trace(const char *file, int line, const char *func) {
    if (err_trace_len >= sizeof err_trace - 1) return;
    int n = snprintf(err_trace + err_trace_len, sizeof err_trace - err_trace_len, "  at %s:%d %s\n",
                     file, line, func);
    if (n > 0) {
        err_trace_len += (size_t)n;
        if (err_trace_len > sizeof err_trace - 1) err_trace_len = sizeof err_trace - 1;
    }
}

const char *loom_error_message(void) { return err_msg; }

const char *loom_error_trace_text(void) {
    static _Thread_local char full[LOOM_ERR_MSG_MAX + LOOM_ERR_TRACE_MAX + 2];
    snprintf(full, sizeof full, "%s\n%s", err_msg, err_trace);
    return full;
}

void loom_error_clear(void) {
    err_collective = 0;
    err_msg[0] = '\0';
    err_trace[0] = '\0';
    err_trace_len = 0;
}

const char *loom_status_name(loom_status s) {
    switch (s) {
    case LOOM_OK: return "ok";
    case LOOM_ERR_INVALID_ARG: return "invalid argument";
    case LOOM_ERR_CONFIG: return "config error";
    case LOOM_ERR_IO: return "I/O error";
    case LOOM_ERR_FORMAT: return "format error";
    case LOOM_ERR_CHECKSUM: return "checksum mismatch";
    case LOOM_ERR_MISMATCH: return "mismatch";
    case LOOM_ERR_NOMEM: return "out of memory";
    case LOOM_ERR_UNSUPPORTED: return "unsupported";
    case LOOM_ERR_INTERRUPTED: return "interrupted";
    case LOOM_ERR_INTERNAL: return "internal error";
    }
    return "unknown error";
}
