/* loom/log.h: leveled logging to stderr.
 *
 *   loom_log_set_level(LOOM_LOG_DEBUG);
 *   LOOM_INFO("kernel: %s", name);
 *
 * The level and a rank prefix are process-wide settings (set once by main); messages go to stderr so
 * that stdout carries only a command's results. */
#ifndef LOOM_LOG_H
#define LOOM_LOG_H
#include "loom/status.h"

typedef enum { LOOM_LOG_ERROR = 0, LOOM_LOG_WARN, LOOM_LOG_INFO, LOOM_LOG_DEBUG } loom_log_level;

/* seconds on the monotonic clock (timing: differences only) */
double loom_now_s(void);
void loom_log_set_level(loom_log_level level);
loom_log_level loom_log_get_level(void);
void loom_log(loom_log_level level, const char *fmt, ...) LOOM_PRINTF(2, 3);

#define LOOM_ERROR(...) loom_log(LOOM_LOG_ERROR, __VA_ARGS__)
#define LOOM_WARN(...) loom_log(LOOM_LOG_WARN, __VA_ARGS__)
#define LOOM_INFO(...) loom_log(LOOM_LOG_INFO, __VA_ARGS__)
#define LOOM_DEBUG(...) loom_log(LOOM_LOG_DEBUG, __VA_ARGS__)
#endif
