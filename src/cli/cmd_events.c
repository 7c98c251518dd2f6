/* loom events DIR: a run's incidents (events.jsonl) and their cost, with the ETTR. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "loom/supervise.h"

int loom_cmd_events(int argc, char **argv) {
    int json = 0;
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: loom events DIR [--json]\n"
                   "  the incidents of the run in DIR (events.jsonl: failures, restarts, resumes, skipped and rolled\n"
                   "  back steps) and what they cost: steps trained again, the slowest detection, and the ETTR\n"
                   "  (effective training time ratio: the step times of the steps in the final model, from\n"
                   "  metrics.jsonl, over the wall time from the first start to the end).\n"
                   "  --json  one JSON object instead: attempts, failures, bad_steps, rollbacks, final_step,\n"
                   "          wall_s, productive_s, ettr, steps_lost, detect_max_s, finished\n");
            return 0;
        }
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!dir && argv[i][0] != '-') dir = argv[i];
        else {
            fprintf(stderr, "loom events: unknown argument '%s' (loom events --help)\n", argv[i]);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "loom events: give a run directory (loom events --help)\n");
        return 2;
    }
    loom_events_summary s;
    if (loom_events_summarize(dir, json ? NULL : stdout, &s) != LOOM_OK) return loom_cli_fail("events");
    if (json) {
        printf("{\"attempts\":%d,\"failures\":%d,\"bad_steps\":%d,\"rollbacks\":%d,\"final_step\":%lld,\"wall_s\":%.3f,"
               "\"productive_s\":%.3f,\"ettr\":%.6f,\"steps_lost\":%.0f,\"detect_max_s\":%.3f,\"finished\":%s}\n",
               s.attempts, s.failures, s.bad_steps, s.rollbacks, (long long)s.final_step, s.wall_s, s.productive_s,
               s.ettr, s.steps_lost, s.detect_max_s, s.finished ? "true" : "false");
    } else {
        printf("summary: %d attempt(s), %d failure(s), %d skipped step(s), %d rollback(s); final step %lld%s; %.0f "
               "step(s) trained again; slowest detection %.2f s; ETTR %.1f%% (%.1f s of steps in the final model "
               "over %.1f s)\n",
               s.attempts, s.failures, s.bad_steps, s.rollbacks, (long long)s.final_step,
               s.finished ? " (finished)" : "", s.steps_lost, s.detect_max_s, 100 * s.ettr, s.productive_s, s.wall_s);
    }
    return 0;
}
