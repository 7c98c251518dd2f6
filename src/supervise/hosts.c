/* The hosts a supervised job runs on (elastic restarts): from --hosts ("a,b" or "a:2,b:2", Open MPI's
 * syntax: a name per slot, or name:slots) or a hostfile ("name slots=N" lines, re-read at every start, so
 * an operator can add or remove hosts). A host whose probe fails is left out of the next start; an excluded
 * one is probed again while the job runs, and its return grows the job back. A probe is the launcher
 * itself starting `loom --version` on that host alone: it crosses the same path (rsh agent, daemon, its
 * connection back) that the job's ranks need. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "supervise_impl.h"

static void add_host(sv_hosts *hs, const char *name, size_t len, int slots) {
    if (len == 0 || len >= sizeof hs->h[0].name || slots < 1) return;
    for (int i = 0; i < hs->n; i++)
        if (strlen(hs->h[i].name) == len && !strncmp(hs->h[i].name, name, len)) {
            hs->h[i].slots += slots;
            hs->h[i].listed = 1;
            return;
        }
    if (hs->n >= SV_MAX_HOSTS) return;
    sv_host *h = &hs->h[hs->n++];
    memset(h, 0, sizeof *h);
    memcpy(h->name, name, len);
    h->slots = slots;
    h->listed = 1;
}

int sv_hosts_read(const loom_supervise_config *c, sv_hosts *hs) {
    for (int i = 0; i < hs->n; i++) { /* names and exclusions stay; slots are read afresh */
        hs->h[i].slots = 0;
        hs->h[i].listed = 0;
    }
    if (c->hosts) {
        for (const char *p = c->hosts; *p;) {
            const size_t len = strcspn(p, ",");
            const char *colon = memchr(p, ':', len);
            add_host(hs, p, colon ? (size_t)(colon - p) : len, colon ? atoi(colon + 1) : 1);
            p += len + (p[len] == ',');
        }
    }
    if (c->hostfile) {
        FILE *f = fopen(c->hostfile, "r");
        if (!f) return -1;
        char line[512];
        while (fgets(line, sizeof line, f)) {
            char *s = line + strspn(line, " \t");
            if (*s == '#' || *s == '\n' || !*s) continue;
            const size_t len = strcspn(s, " \t\n#");
            const char *sl = strstr(s + len, "slots=");
            add_host(hs, s, len, sl ? atoi(sl + 6) : 1);
        }
        fclose(f);
    }
    return 0;
}

int sv_hosts_slots(const sv_hosts *hs) {
    int n = 0;
    for (int i = 0; i < hs->n; i++)
        if (hs->h[i].listed && !hs->h[i].excluded) n += hs->h[i].slots;
    return n;
}

int sv_hosts_excluded(const sv_hosts *hs) {
    int n = 0;
    for (int i = 0; i < hs->n; i++) n += hs->h[i].listed && hs->h[i].excluded;
    return n;
}

void sv_hosts_arg(const sv_hosts *hs, int world, char *buf, size_t size) {
    size_t k = 0;
    buf[0] = '\0';
    for (int i = 0; i < hs->n && world > 0; i++) {
        const sv_host *h = &hs->h[i];
        if (!h->listed || h->excluded) continue;
        const int take = h->slots < world ? h->slots : world;
        const int w = snprintf(buf + k, size - k, "%s%s:%d", k ? "," : "", h->name, take);
        if (w < 0 || (size_t)w >= size - k) break;
        k += (size_t)w;
        world -= take;
    }
}

pid_t sv_probe_start(const loom_supervise_config *c, const char *host) {
    char where[160];
    snprintf(where, sizeof where, "%s:1", host);
    const pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        const int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, STDOUT_FILENO);
            dup2(null, STDERR_FILENO);
        }
        char *av[12];
        int k = 0;
        av[k++] = (char *)c->mpirun;
        if (geteuid() == 0) av[k++] = "--allow-run-as-root";
        av[k++] = "-np";
        av[k++] = "1";
        av[k++] = "--host";
        av[k++] = where;
        av[k++] = (char *)c->self;
        av[k++] = "--version";
        av[k] = NULL;
        execvp(c->mpirun, av);
        _exit(127);
    }
    if (pid > 0) setpgid(pid, pid);
    return pid;
}

int sv_probe_poll(pid_t pid, double started, double now, double timeout) {
    int status;
    const pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 1 : 0;
    if (w < 0) return 0;
    if (now - started < timeout) return -1;
    kill(-pid, SIGKILL); /* unreachable: the launcher waits for a daemon that never calls back */
    waitpid(pid, &status, 0);
    return 0;
}
