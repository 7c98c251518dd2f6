/* Leveled logging. The level is a process-wide setting made once by main (documented in DESIGN.md). */
#include "loom/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

static loom_log_level log_level = LOOM_LOG_INFO;

void loom_log_set_level(loom_log_level level) { log_level = level; }
loom_log_level loom_log_get_level(void) { return log_level; }

void loom_log(loom_log_level level, const char *fmt, ...) {
    if (level > log_level) return;
    static const char *const tags[] = {"error", "warn", "info", "debug"};
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[loom %s] %s\n", tags[level], line);
}

double loom_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
