/* loom launch: runs a loom command on N MPI ranks through mpirun, with the flags this machine needs
 * (as root --allow-run-as-root; more ranks than cores --oversubscribe). Under Slurm, `srun loom train`
 * needs no wrapper: MPI finds its ranks itself. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static int usage(FILE *f, int rc) {
    fprintf(f, "usage: loom launch -n N [--hosts H1,H2,...] [--mpirun PATH] [--dry-run] -- COMMAND [ARGS...]\n"
               "  runs `loom COMMAND ARGS` on N ranks with mpirun, e.g.\n"
               "    loom launch -n 4 -- train --preset gpt2-l6 --zero 2 --threads 1\n"
               "  --hosts       comma-separated hosts (mpirun --host; ranks fill them in order)\n"
               "  --mpirun      the launcher (default: mpirun on PATH)\n"
               "  --dry-run     print the mpirun command instead of running it\n"
               "  Adds --allow-run-as-root when run as root, --oversubscribe when N exceeds this host's cores,\n"
               "  and --bind-to none (loom's OpenMP threads place themselves). Rank 0 prints progress and writes\n"
               "  the metrics; every rank's errors reach stderr, prefixed with its rank.\n");
    return rc;
}

int loom_cmd_launch(int argc, char **argv) {
    int n = 0, dry = 0, i = 1;
    const char *hosts = NULL, *mpirun = "mpirun";
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
    char np[16];
    snprintf(np, sizeof np, "%d", n);
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    char **av = calloc((size_t)(argc + 16), sizeof *av);
    if (!av) return 1;
    int k = 0;
    av[k++] = (char *)mpirun;
    if (geteuid() == 0) av[k++] = "--allow-run-as-root";
    if (!hosts && cores > 0 && n > cores) av[k++] = "--oversubscribe";
    av[k++] = "--bind-to";
    av[k++] = "none";
    av[k++] = "-np";
    av[k++] = np;
    if (hosts) {
        av[k++] = "--host";
        av[k++] = (char *)hosts;
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
