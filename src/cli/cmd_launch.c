/* loom launch: runs a loom command on N MPI ranks through mpirun, with the flags this machine needs
 * (as root --allow-run-as-root; more ranks than cores --oversubscribe). With --max-restarts it supervises
 * the job instead (src/supervise/supervisor.c): heartbeats, a clean stop of the whole job on a failure, and
 * restarts from the newest intact checkpoint. Under Slurm, `srun loom train` needs no wrapper: MPI finds
 * its ranks itself; `loom launch --mpirun srun --max-restarts R` supervises inside an allocation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "loom/supervise.h"

static int usage(FILE *f, int rc) {
    fprintf(f, "usage: loom launch -n N [--hosts H1,H2,...|--hostfile F] [--mpirun PATH] [--dry-run]\n"
               "                   [--max-restarts R [--heartbeat-timeout 30s] [--restart-backoff 1s]\n"
               "                    [--min-ranks M] [--probe-interval 10s]]\n"
               "                   -- COMMAND [ARGS...]\n"
               "  runs `loom COMMAND ARGS` on N ranks with mpirun, e.g.\n"
               "    loom launch -n 4 -- train --preset gpt2-l6 --zero 2 --threads 1\n"
               "  --hosts       comma-separated hosts (mpirun --host; ranks fill them in order)\n"
               "  --hostfile    an Open MPI hostfile (mpirun --hostfile)\n"
               "  --mpirun      the launcher (default: mpirun on PATH)\n"
               "  --dry-run     print the mpirun command instead of running it\n"
               "supervised (--max-restarts R): every rank beats to this process; a rank that exits with an error,\n"
               "  dies, stops beating or makes no progress for the heartbeat timeout stops the whole job (no\n"
               "  process left), which restarts from the newest intact checkpoint (in-memory snapshot or disk), up\n"
               "  to R times, waiting the backoff (doubled after an attempt without progress, at most 60 s).\n"
               "  Incidents go to <out>/events.jsonl (the command's --out, required); `loom events <out>` sums\n"
               "  them up with the ETTR. Not restarted: exit code 2 (a configuration error), 3 (no intact\n"
               "  checkpoint). LOOM_SUPERVISOR_HOST: the address other hosts reach this one by.\n"
               "elastic (--hosts/--hostfile with --min-ranks M < N): every host is probed through the launcher\n"
               "  before a restart; unreachable ones are left out and the job runs on the ranks that remain (down\n"
               "  to M; the global batch is kept: choose one that divides over every world size). A left-out host\n"
               "  is probed every --probe-interval; when it answers (or the hostfile, re-read, offers more slots)\n"
               "  the job checkpoints, stops and restarts on more ranks.\n"
               "  Adds --allow-run-as-root when run as root, --oversubscribe when N exceeds this host's cores,\n"
               "  and --bind-to none (loom's OpenMP threads place themselves). Rank 0 prints progress and writes\n"
               "  the metrics; every rank's errors reach stderr, prefixed with its rank.\n");
    return rc;
}

/* "30", "30s", "500ms", "2m" in seconds; < 0 when malformed */
static double parse_duration(const char *s) {
    char *end;
    const double v = strtod(s, &end);
    if (end == s || !isfinite(v) || v < 0) return -1;
    if (!strcmp(end, "") || !strcmp(end, "s")) return v;
    if (!strcmp(end, "ms")) return v / 1e3;
    if (!strcmp(end, "m")) return v * 60;
    return -1;
}

/* the run directory the command names: --out DIR or --set train.out=DIR (NULL: none) */
static const char *command_out(char **cmd) {
    const char *out = NULL;
    for (int i = 0; cmd[i]; i++) {
        if (!strcmp(cmd[i], "--out") && cmd[i + 1]) out = cmd[i + 1];
        else if (!strncmp(cmd[i], "--out=", 6)) out = cmd[i] + 6;
        else if (!strcmp(cmd[i], "--set") && cmd[i + 1] && !strncmp(cmd[i + 1], "train.out=", 10)) out = cmd[i + 1] + 10;
    }
    return out;
}

int loom_cmd_launch(int argc, char **argv) {
    int n = 0, dry = 0, i = 1, max_restarts = -1, min_ranks = 0;
    double timeout = 30, backoff = 1, probe = 10;
    const char *hosts = NULL, *hostfile = NULL, *mpirun = "mpirun";
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            i++;
            break;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            return usage(stdout, 0);
        } else if ((!strcmp(argv[i], "-n") || !strcmp(argv[i], "-np")) && i + 1 < argc) {
            n = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--hosts") && i + 1 < argc) {
            hosts = argv[++i];
        } else if (!strcmp(argv[i], "--hostfile") && i + 1 < argc) {
            hostfile = argv[++i];
        } else if (!strcmp(argv[i], "--max-restarts") && i + 1 < argc) {
            max_restarts = atoi(argv[++i]);
            if (max_restarts < 0) max_restarts = 0;
        } else if (!strcmp(argv[i], "--min-ranks") && i + 1 < argc) {
            min_ranks = atoi(argv[++i]);
        } else if ((!strcmp(argv[i], "--heartbeat-timeout") || !strcmp(argv[i], "--restart-backoff") ||
                    !strcmp(argv[i], "--probe-interval")) && i + 1 < argc) {
            const double d = parse_duration(argv[i + 1]);
            if (d < 0 || (d <= 0 && argv[i][2] != 'r')) {
                fprintf(stderr, "loom launch: %s wants a duration (30s, 500ms, 2m), got '%s'\n", argv[i], argv[i + 1]);
                return 2;
            }
            *(argv[i][2] == 'h' ? &timeout : argv[i][2] == 'r' ? &backoff : &probe) = d;
            i++;
        } else if (!strcmp(argv[i], "--mpirun") && i + 1 < argc) {
            mpirun = argv[++i];
        } else if (!strcmp(argv[i], "--dry-run")) {
            dry = 1;
        } else {
            fprintf(stderr, "loom launch: unknown argument '%s'\n", argv[i]);
            return usage(stderr, 2);
        }
    }
    if (n < 1 || i >= argc) {
        fprintf(stderr, "loom launch: give -n N (>= 1) and a command after --\n");
        return usage(stderr, 2);
    }
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        fprintf(stderr, "loom launch: cannot find this program's path (/proc/self/exe)\n");
        return 1;
    }
    self[len] = '\0';
    if (max_restarts >= 0 && !dry) {
        const char *out = command_out(argv + i);
        if (!out) {
            fprintf(stderr, "loom launch: a supervised run needs the command's run directory: add --out DIR\n");
            return 2;
        }
        if (min_ranks > n) {
            fprintf(stderr, "loom launch: --min-ranks %d exceeds -n %d\n", min_ranks, n);
            return 2;
        }
        const loom_supervise_config sc = {.n = n, .hosts = hosts, .hostfile = hostfile, .mpirun = mpirun,
                                          .max_restarts = max_restarts, .min_ranks = min_ranks,
                                          .heartbeat_timeout = timeout, .backoff = backoff,
                                          .probe_interval = probe, .out = out,
                                          .cmd = argv + i, .self = self};
        return loom_supervise(&sc);
    }
    char np[16];
    snprintf(np, sizeof np, "%d", n);
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    char **av = calloc((size_t)(argc + 16), sizeof *av);
    if (!av) return 1;
    int k = 0;
    av[k++] = (char *)mpirun;
    if (geteuid() == 0) av[k++] = "--allow-run-as-root";
    if (!hosts && !hostfile && cores > 0 && n > cores) av[k++] = "--oversubscribe";
    av[k++] = "--bind-to";
    av[k++] = "none";
    av[k++] = "-np";
    av[k++] = np;
    if (hosts) {
        av[k++] = "--host";
        av[k++] = (char *)hosts;
    }
    if (hostfile) {
        av[k++] = "--hostfile";
        av[k++] = (char *)hostfile;
    }
    av[k++] = self;
    for (; i < argc; i++) av[k++] = argv[i];
    av[k] = NULL;
    if (dry) {
        for (int j = 0; j < k; j++) printf("%s%s", j ? " " : "", av[j]);
        printf("\n");
        free(av);
        return 0;
    }
    fflush(stdout);
    execvp(mpirun, av);
    fprintf(stderr, "loom launch: cannot run %s (apt-get install openmpi-bin): ", mpirun);
    perror(NULL);
    free(av);
    return 127;
}
