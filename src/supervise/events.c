/* A run's incidents (<out>/events.jsonl) and what they cost: `loom events DIR`.
 *
 * ETTR, the effective training time ratio: the wall time spent on the steps that survive into the final
 * model, over the whole wall time. A step's time is its "ms" in metrics.jsonl; a step trained again after a
 * restart or a rollback has several lines, and the last one is the one whose result survives. The wall time
 * runs from the supervisor's first start to its end (without a supervisor: from the first step's start to
 * the last step's end). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "loom/json.h"
#include "loom/supervise.h"

static double unix_now(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
}

loom_status loom_event_append(const char *out_dir, const char *event, const char *fields_json) {
    char path[4200];
    snprintf(path, sizeof path, "%s/events.jsonl", out_dir);
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_strbuf_printf(&sb, "{\"event\":");
    loom_json_write_string(&sb, event);
    loom_strbuf_printf(&sb, ",\"time\":%.3f%s%s}\n", unix_now(), fields_json && fields_json[0] ? "," : "",
                       fields_json ? fields_json : "");
    if (sb.failed) {
        loom_strbuf_free(&sb);
        return loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    /* one write() of the whole line on an O_APPEND descriptor: lines of several writers never interleave */
    const int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    const ssize_t w = fd >= 0 ? write(fd, sb.buf, sb.len) : -1;
    const int err = errno;
    if (fd >= 0) close(fd);
    const size_t len = sb.len;
    loom_strbuf_free(&sb);
    LOOM_CHECK(w == (ssize_t)len, LOOM_ERR_IO, "cannot append to %s: %s", path, strerror(err));
    return LOOM_OK;
}

/* each line of a JSON-lines file, parsed; a line that does not parse (a torn last line) is skipped */
typedef loom_status (*line_fn)(void *ctx, const loom_json *obj);
static loom_status each_line(const char *path, line_fn fn, void *ctx, int *found) {
    FILE *f = fopen(path, "r");
    *found = f != NULL;
    if (!f) return errno == ENOENT ? LOOM_OK : loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__,
                                                              "cannot read %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    loom_status st = LOOM_OK;
    while (st == LOOM_OK && (n = getline(&line, &cap, f)) > 0) {
        loom_json *j = NULL;
        if (loom_json_parse(line, (size_t)n, &j) == LOOM_OK && j->type == LOOM_JSON_OBJECT) st = fn(ctx, j);
        loom_json_free(&j);
    }
    free(line);
    fclose(f);
    loom_error_clear();
    return st;
}

static double num(const loom_json *o, const char *key, double dflt) {
    const loom_json *v = loom_json_get(o, key);
    return v && v->type == LOOM_JSON_NUMBER ? v->number : dflt;
}
static const char *str(const loom_json *o, const char *key, const char *dflt) {
    const loom_json *v = loom_json_get(o, key);
    return v && v->type == LOOM_JSON_STRING ? v->string : dflt;
}

typedef struct {
    double *ms, *end;      /* by step: the last line's step time (ms) and its end (Unix seconds) */
    int64_t cap, final_step, lines;
    double first_start, last_end;
} step_times;

static loom_status on_metrics(void *ctx, const loom_json *o) {
    step_times *t = ctx;
    const double step = num(o, "step", -1), ms = num(o, "ms", -1);
    if (step < 1 || ms < 0 || !loom_json_get(o, "loss")) return LOOM_OK; /* validation lines have no "ms" */
    const int64_t s = (int64_t)step;
    if (s >= t->cap) {
        const int64_t cap = s * 2 + 64;
        double *ms2 = realloc(t->ms, (size_t)cap * sizeof(double)), *end2 = ms2 ? realloc(t->end, (size_t)cap * sizeof(double)) : NULL;
        if (ms2) t->ms = ms2;
        LOOM_CHECK(ms2 && end2, LOOM_ERR_NOMEM, "out of memory");
        t->end = end2;
        for (int64_t i = t->cap; i < cap; i++) t->ms[i] = t->end[i] = -1;
        t->cap = cap;
    }
    const double end = num(o, "time", NAN);
    t->ms[s] = ms;
    t->end[s] = end;
    t->final_step = s; /* the newest line: a restart's steps continue from its resumed step */
    t->lines++;
    if (isfinite(end)) {
        if (!(t->first_start > 0)) t->first_start = end - ms / 1e3;
        t->last_end = end;
    }
    return LOOM_OK;
}

typedef struct {
    FILE *f;
    loom_events_summary *s;
    double first_time, last_time;
    int have_end;
} event_pass;

static loom_status on_event(void *ctx, const loom_json *o) {
    event_pass *p = ctx;
    loom_events_summary *s = p->s;
    const char *ev = str(o, "event", "?");
    const double t = num(o, "time", NAN);
    if (isfinite(t)) {
        if (!(p->first_time > 0) && !strcmp(ev, "start")) p->first_time = t;
        if (!p->have_end) p->last_time = t;
    }
    FILE *f = p->f;
    if (!strcmp(ev, "start")) {
        s->attempts++;
        if (f) fprintf(f, "attempt %d: %d ranks%s\n", (int)num(o, "attempt", 0), (int)num(o, "world", 0),
                       num(o, "attempt", 0) > 0 ? ", from the newest intact checkpoint" : "");
    } else if (!strcmp(ev, "failure")) {
        s->failures++;
        const double det = num(o, "detect_s", NAN);
        if (isfinite(det) && det > s->detect_max_s) s->detect_max_s = det;
        if (f) {
            fprintf(f, "  failure: rank %d (host %s, pid %d) %s", (int)num(o, "rank", -1), str(o, "host", "?"),
                    (int)num(o, "pid", 0), str(o, "kind", "?"));
            if (loom_json_get(o, "signal")) fprintf(f, " by signal %d", (int)num(o, "signal", 0));
            if (loom_json_get(o, "exit_code")) fprintf(f, " with exit code %d", (int)num(o, "exit_code", 0));
            fprintf(f, " after step %d; detected in %.2f s; job stopped in %.2f s, %d process(es) left\n",
                    (int)num(o, "last_step", 0), det, num(o, "stop_s", NAN), (int)num(o, "left", 0));
        }
    } else if (!strcmp(ev, "resumed")) {
        if (f) fprintf(f, "  resumed at step %d from %s (%s)\n", (int)num(o, "step", 0), str(o, "source", "?"),
                       str(o, "path", ""));
    } else if (!strcmp(ev, "bad_step")) {
        s->bad_steps++;
        if (f) fprintf(f, "  step %d: non-finite gradient norm, update skipped\n", (int)num(o, "step", 0));
    } else if (!strcmp(ev, "spike")) {
        s->rollbacks++;
        if (f) fprintf(f, "  step %d: loss %.4f (z-score %.1f over the last %d steps): rolled back to step %d, "
                          "the data of steps %d-%d skipped\n", (int)num(o, "step", 0), num(o, "loss", NAN),
                       num(o, "zscore", NAN), (int)num(o, "window", 0), (int)num(o, "rolled_back_to", 0),
                       (int)num(o, "rolled_back_to", 0) + 1, (int)num(o, "step", 0));
    } else if (!strcmp(ev, "done")) {
        s->finished = 1;
        p->have_end = 1;
        if (f) fprintf(f, "done after %d attempt(s)\n", s->attempts);
    } else if (!strcmp(ev, "gave_up")) {
        p->have_end = 1;
        if (f) fprintf(f, "gave up: %s\n", str(o, "cause", "?"));
    }
    return LOOM_OK;
}

loom_status loom_events_summarize(const char *out_dir, FILE *f, loom_events_summary *s) {
    memset(s, 0, sizeof *s);
    char path[4200];
    step_times t = {0};
    int have_metrics = 0, have_events = 0;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out_dir);
    loom_status st = each_line(path, on_metrics, &t, &have_metrics);
    event_pass p = {f, s, 0, 0, 0};
    snprintf(path, sizeof path, "%s/events.jsonl", out_dir);
    if (st == LOOM_OK) st = each_line(path, on_event, &p, &have_events);
    if (st == LOOM_OK && !have_metrics && !have_events)
        st = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__,
                            "%s holds neither events.jsonl nor metrics.jsonl: not a run directory", out_dir);
    if (st == LOOM_OK) {
        for (int64_t i = 1; i <= t.final_step; i++)
            if (t.ms[i] > 0) s->productive_s += t.ms[i] / 1e3;
        s->final_step = t.final_step;
        s->steps_lost = (double)(t.lines - t.final_step);
        const double start = p.first_time > 0 ? p.first_time : t.first_start;
        const double end = p.have_end || p.last_time > t.last_end ? p.last_time : t.last_end;
        s->wall_s = end > start ? end - start : 0;
        s->ettr = s->wall_s > 0 ? s->productive_s / s->wall_s : 0;
    }
    free(t.ms);
    free(t.end);
    return st;
}
