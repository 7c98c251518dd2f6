/* The supervising launcher behind `loom launch --max-restarts R` (include/loom/supervise.h).
 *
 * One attempt: mpirun in a process group of its own, its stderr read here (and passed on) for Open MPI's
 * "exited on signal N" line, every rank's heartbeat read from a UDP socket. Every 50 ms the monitor looks
 * for a failure, first found wins:
 *   exited  - a rank said goodbye with a non-zero code (its last heartbeat), or mpirun ended non-zero;
 *   killed  - a rank's process on this host is gone (or a zombie) without a goodbye;
 *   silent  - no heartbeat from a rank for the timeout (stopped, its machine gone), or none at all within
 *             the timeout + 10 s of the start;
 *   stuck   - heartbeats, but no progress for the timeout (a deadlock, a collective that never returns).
 * Then the whole job is stopped: this host's ranks SIGKILLed at once (a stopped one too), mpirun's group
 * SIGTERMed (Open MPI tears down the other hosts' ranks) and SIGKILLed after 3 s; the stop counts the
 * processes left. The next attempt adds --resume-if-any: the trainer resumes from the newest intact
 * checkpoint (in-memory snapshot or disk), or starts afresh when there is none.
 *
 * Not restarted: a configuration error (exit code 2: every attempt would fail the same way), no intact
 * checkpoint left (exit code 3), the maximum of restarts. Each ends with one message naming the cause. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <math.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "loom/json.h"
#include "loom/log.h"
#include "supervise_impl.h"

enum { EXIT_CONFIG = 2, EXIT_NO_CHECKPOINT = 3 };

typedef struct {
    int seen;
    long pid;
    char host[128];
    char boot[80];        /* its process table (boot id / pid namespace): the supervisor's own means its pid is ours */
    int64_t step;
    double last_beat;     /* monotonic seconds of the last datagram */
    double progress_at;   /* monotonic seconds of its last progress (last_beat - age) */
    char phase[32];
    int waiting;          /* blocked in a collective at its last beat */
    int said_exit, exit_code;
} rank_view;

typedef struct {
    char kind[16];        /* exited, killed, silent, stuck, mpirun */
    int rank;
    int exit_code, signal;
    double detected;      /* monotonic */
    double since;         /* monotonic: the last moment the rank was known well (alive, or progressing) */
} failure;

static void sleep_s(double s) {
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* one heartbeat datagram into the table; datagrams of another attempt (a late one) are ignored */
static void on_beat(rank_view *ranks, int n, int attempt, const char *msg, double now) {
    int a = -1, r = -1, code = -1, waiting = 0;
    long pid = 0;
    long long step = 0, age = 0;
    char host[128] = "?", boot[80] = "?", phase[32] = "?";
    if (sscanf(msg, "loom-hb 1 attempt=%d rank=%d pid=%ld host=%127s boot=%79s step=%lld age_ms=%lld phase=%31s wait=%d "
               "code=%d", &a, &r, &pid, host, boot, &step, &age, phase, &waiting, &code) < 9)
        return;
    if (a != attempt || r < 0 || r >= n) return;
    rank_view *v = &ranks[r];
    v->seen = 1;
    v->pid = pid;
    snprintf(v->host, sizeof v->host, "%s", host);
    snprintf(v->boot, sizeof v->boot, "%s", boot);
    v->step = step;
    v->last_beat = now;
    v->progress_at = now - (double)age / 1e3;
    snprintf(v->phase, sizeof v->phase, "%s", phase);
    v->waiting = waiting;
    if (!strcmp(phase, "exit")) {
        v->said_exit = 1;
        v->exit_code = code;
    }
}

/* 1 when pid names a live, non-zombie process of this host */
static int pid_alive(long pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    const size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *close_paren = strrchr(buf, ')'); /* the command name may hold spaces */
    return !(close_paren && close_paren[1] == ' ' && (close_paren[2] == 'Z' || close_paren[2] == 'X'));
}

/* in this process table (one kernel, one pid namespace; network namespaces do not matter): its pid is ours */
static int is_local(const rank_view *v, const char *boot) { return strcmp(v->boot, "?") && !strcmp(v->boot, boot); }

/* Open MPI's report of a rank that died of a signal: "... process rank 2 with PID 123 on node h exited on
 * signal 9 (Killed)." */
static void scan_stderr_line(const char *line, failure *hint) {
    const char *p = strstr(line, "process rank ");
    const char *q = strstr(line, "exited on signal ");
    if (p && q && hint->signal == 0) {
        hint->rank = atoi(p + 13);
        hint->signal = atoi(q + 17);
    }
}

typedef struct {
    const loom_supervise_config *cfg;
    int attempt, world;
    pid_t child;
    int sock, err_fd;
    char errbuf[8192];
    size_t errlen;
    rank_view *ranks;
    char me[128];
    char boot[80];        /* this process table's id */
    failure hint;         /* from mpirun's stderr */
    double period_s;      /* the ranks' heartbeat period */
    int elastic;          /* hosts given: probed at restarts, the world fitted to the reachable ones */
    sv_hosts hosts;
    char host_arg[4096];  /* mpirun --host for this attempt */
    int resizing;         /* the job was asked to checkpoint and stop, to grow back */
} job;

static void drain_stderr(job *j) {
    if (j->err_fd < 0) return;
    for (;;) {
        const ssize_t n = read(j->err_fd, j->errbuf + j->errlen, sizeof j->errbuf - 1 - j->errlen);
        if (n <= 0) {
            if (n == 0) {
                close(j->err_fd);
                j->err_fd = -1;
            }
            break;
        }
        (void)!write(STDERR_FILENO, j->errbuf + j->errlen, (size_t)n);
        j->errlen += (size_t)n;
        j->errbuf[j->errlen] = '\0';
        char *nl;
        while ((nl = strchr(j->errbuf, '\n')) != NULL) { /* whole lines scanned, the rest kept */
            *nl = '\0';
            scan_stderr_line(j->errbuf, &j->hint);
            const size_t used = (size_t)(nl - j->errbuf) + 1;
            memmove(j->errbuf, nl + 1, j->errlen - used + 1);
            j->errlen -= used;
        }
        if (j->errlen >= sizeof j->errbuf - 1) j->errlen = 0; /* a line longer than the buffer: dropped */
    }
}

static void drain_beats(job *j) {
    char msg[600];
    ssize_t n;
    while ((n = recv(j->sock, msg, sizeof msg - 1, MSG_DONTWAIT)) > 0) {
        msg[n] = '\0';
        on_beat(j->ranks, j->world, j->attempt, msg, loom_now_s());
    }
}

static pid_t start_job(job *j, int resume) {
    const loom_supervise_config *c = j->cfg;
    int errp[2];
    if (pipe(errp) != 0) return -1;
    char np[16];
    snprintf(np, sizeof np, "%d", j->world);
    const char *base = strrchr(c->mpirun, '/') ? strrchr(c->mpirun, '/') + 1 : c->mpirun;
    const int ompi = !strcmp(base, "mpirun") || !strcmp(base, "mpiexec") || !strcmp(base, "orterun");
    size_t ncmd = 0;
    while (c->cmd[ncmd]) ncmd++;
    char **av = calloc(ncmd + 32, sizeof *av);
    if (!av) return -1;
    int k = 0;
    av[k++] = (char *)c->mpirun;
    if (ompi) {
        if (geteuid() == 0) av[k++] = "--allow-run-as-root";
        const long cores = sysconf(_SC_NPROCESSORS_ONLN);
        if (!c->hosts && !c->hostfile && cores > 0 && j->world > cores) av[k++] = "--oversubscribe";
        av[k++] = "--bind-to";
        av[k++] = "none";
        /* the supervisor's address and the attempt reach every host's ranks */
        av[k++] = "-x";
        av[k++] = "LOOM_SUPERVISOR";
        av[k++] = "-x";
        av[k++] = "LOOM_SUPERVISOR_ATTEMPT";
        av[k++] = "-x";
        av[k++] = "LOOM_HEARTBEAT_MS";
    }
    if (!strcmp(base, "srun")) { /* Slurm: the allocation's nodes; the environment travels by default */
        av[k++] = "-n";
        av[k++] = np;
        av[k++] = "--kill-on-bad-exit=1";
    } else {
        av[k++] = "-np";
        av[k++] = np;
    }
    if (j->elastic && j->host_arg[0] && strcmp(base, "srun")) { /* under Slurm the allocation names the nodes */
        av[k++] = "--host";
        av[k++] = j->host_arg;
    }
    av[k++] = (char *)c->self;
    for (size_t i = 0; i < ncmd; i++) av[k++] = c->cmd[i];
    if (resume) av[k++] = "--resume-if-any";
    av[k] = NULL;
    char attempt[16];
    snprintf(attempt, sizeof attempt, "%d", j->attempt);
    setenv("LOOM_SUPERVISOR_ATTEMPT", attempt, 1);
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0); /* mpirun and what it starts here: one group to stop */
        dup2(errp[1], STDERR_FILENO);
        close(errp[0]);
        close(errp[1]);
        execvp(c->mpirun, av);
        fprintf(stderr, "loom launch: cannot run %s: %s\n", c->mpirun, strerror(errno));
        _exit(127);
    }
    free(av);
    close(errp[1]);
    if (pid < 0) {
        close(errp[0]);
        return -1;
    }
    setpgid(pid, pid); /* also here: no race with the child's own call */
    fcntl(errp[0], F_SETFL, O_NONBLOCK);
    j->err_fd = errp[0];
    j->errlen = 0;
    return pid;
}

/* Looks for a failure; 1 when one is found (or the job ended: *ended, *status). */
static int check(job *j, double started, int *ended, int *status, failure *f) {
    const loom_supervise_config *c = j->cfg;
    const double now = loom_now_s();
    if (!*ended) {
        int s;
        if (waitpid(j->child, &s, WNOHANG) == j->child) {
            *ended = 1;
            *status = s;
        }
    }
    memset(f, 0, sizeof *f);
    f->rank = -1;
    f->detected = now;
    for (int r = 0; r < j->world; r++) { /* a goodbye with an error */
        const rank_view *v = &j->ranks[r];
        if (v->said_exit && v->exit_code != 0) {
            snprintf(f->kind, sizeof f->kind, "exited");
            f->rank = r;
            f->exit_code = v->exit_code;
            f->since = v->last_beat;
            return 1;
        }
    }
    for (int r = 0; r < j->world; r++) { /* gone from this host without a goodbye */
        const rank_view *v = &j->ranks[r];
        if (v->seen && !v->said_exit && is_local(v, j->boot) && !pid_alive(v->pid)) {
            snprintf(f->kind, sizeof f->kind, "killed");
            f->rank = r;
            f->since = now - 0.05; /* alive at the previous look */
            return 1;
        }
    }
    if (*ended) {
        const int ok = WIFEXITED(*status) && WEXITSTATUS(*status) == 0;
        if (ok) return 1;
        snprintf(f->kind, sizeof f->kind, j->hint.signal ? "killed" : "exited");
        f->rank = j->hint.signal ? j->hint.rank : -1;
        f->signal = j->hint.signal;
        f->exit_code = WIFEXITED(*status) ? WEXITSTATUS(*status) : 128 + WTERMSIG(*status);
        f->since = now;
        for (int r = 0; r < j->world && f->rank < 0; r++) /* a rank that never said goodbye */
            if (j->ranks[r].seen && !j->ranks[r].said_exit) f->rank = r;
        return 1;
    }
    /* a hang: the rank to blame is one that stopped beating (the oldest beat), else the one whose progress is
     * oldest (in a deadlock the others wait for it in a collective, beating, their progress as old or newer) */
    int hung = 0, culprit = -1;
    for (int r = 0; r < j->world; r++) {
        const rank_view *v = &j->ranks[r];
        if (v->said_exit) continue;
        if (!v->seen) {
            if (now - started > c->heartbeat_timeout + 10) hung = 1, culprit = culprit < 0 ? r : culprit;
            continue;
        }
        if (now - v->last_beat > c->heartbeat_timeout || now - v->progress_at > c->heartbeat_timeout) hung = 1;
    }
    if (!hung) return 0;
    for (int r = 0; r < j->world && culprit < 0; r++) { /* the silent one with the oldest beat */
        const rank_view *v = &j->ranks[r];
        if (!v->seen || v->said_exit || now - v->last_beat <= 3 * j->period_s) continue;
        for (int q = 0; q < j->world; q++)
            if (j->ranks[q].seen && !j->ranks[q].said_exit && now - j->ranks[q].last_beat > 3 * j->period_s &&
                j->ranks[q].last_beat < v->last_beat)
                goto next;
        culprit = r;
    next:;
    }
    if (culprit >= 0 && j->ranks[culprit].seen) {
        snprintf(f->kind, sizeof f->kind, "silent");
        f->rank = culprit;
        f->since = j->ranks[culprit].last_beat;
        return 1;
    }
    if (culprit >= 0) { /* never beat */
        snprintf(f->kind, sizeof f->kind, "silent");
        f->rank = culprit;
        f->since = started;
        return 1;
    }
    /* beating, not progressing: the oldest progress among those not waiting in a collective (the one the
     * others wait for), else among all */
    for (int pass = 0; pass < 2 && culprit < 0; pass++)
        for (int r = 0; r < j->world; r++)
            if (j->ranks[r].seen && !j->ranks[r].said_exit && (pass || !j->ranks[r].waiting) &&
                (culprit < 0 || j->ranks[r].progress_at < j->ranks[culprit].progress_at))
                culprit = r;
    snprintf(f->kind, sizeof f->kind, "stuck");
    f->rank = culprit;
    f->since = culprit >= 0 ? j->ranks[culprit].progress_at : started;
    return 1;
}

/* Stops every process of the job; returns how many of this host's ranks are still there after 5 s. */
static int stop_job(job *j, int ended) {
    for (int r = 0; r < j->world; r++)
        if (j->ranks[r].seen && is_local(&j->ranks[r], j->boot) && j->ranks[r].pid > 0) kill((pid_t)j->ranks[r].pid, SIGKILL);
    int status;
    if (!ended) {
        kill(-j->child, SIGTERM);
        const double t0 = loom_now_s();
        while (waitpid(j->child, &status, WNOHANG) == 0 && loom_now_s() - t0 < 3.0) {
            drain_stderr(j);
            sleep_s(0.02);
        }
        kill(-j->child, SIGKILL);
        waitpid(j->child, &status, 0);
    } else {
        kill(-j->child, SIGKILL); /* anything mpirun left in its group */
    }
    drain_stderr(j);
    int left = 0;
    const double t0 = loom_now_s();
    do {
        left = 0;
        for (int r = 0; r < j->world; r++)
            if (j->ranks[r].seen && is_local(&j->ranks[r], j->boot) && pid_alive(j->ranks[r].pid)) left++;
        if (left) sleep_s(0.05);
    } while (left && loom_now_s() - t0 < 5.0);
    return left;
}

static void event(const loom_supervise_config *c, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void event(const loom_supervise_config *c, const char *name, const char *fmt, ...) {
    char fields[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fields, sizeof fields, fmt, ap);
    va_end(ap);
    if (loom_event_append(c->out, name, fields) != LOOM_OK) LOOM_WARN("%s", loom_error_message());
}

static int give_up(const loom_supervise_config *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int give_up(const loom_supervise_config *c, int code, const char *fmt, ...) {
    char cause[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cause, sizeof cause, fmt, ap);
    va_end(ap);
    loom_strbuf sb;
    loom_strbuf_init(&sb);
    loom_strbuf_printf(&sb, "\"cause\":");
    loom_json_write_string(&sb, cause);
    event(c, "gave_up", "%s", sb.failed ? "" : sb.buf);
    loom_strbuf_free(&sb);
    fprintf(stderr, "loom launch: giving up: %s\n", cause);
    return code ? code : 1;
}

/* How other hosts reach this one: its name where the name resolves (a cluster's names do), else the address
 * of its first interface up other than loopback (a machine whose name is in no /etc/hosts), else loopback. */
static void this_host_address(char *me, size_t n) {
    char name[256] = "";
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM}, *ai = NULL;
    if (gethostname(name, sizeof name - 1) == 0 && name[0] && getaddrinfo(name, NULL, &hints, &ai) == 0) {
        freeaddrinfo(ai);
        snprintf(me, n, "%s", name);
        return;
    }
    snprintf(me, n, "127.0.0.1");
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0) return;
    for (struct ifaddrs *i = ifs; i; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && (i->ifa_flags & IFF_UP) &&
            !(i->ifa_flags & IFF_LOOPBACK)) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, me, (socklen_t)n);
            break;
        }
    freeifaddrs(ifs);
    LOOM_WARN("this host's name '%s' does not resolve: the ranks send heartbeats to %s (LOOM_SUPERVISOR_HOST "
              "sets the address)", name, me);
}

static int open_socket(char *addr, size_t addr_size, int remote) {
    const int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    socklen_t len = sizeof a;
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(s, (struct sockaddr *)&a, &len) != 0) {
        close(s);
        return -1;
    }
    /* the address the ranks reach this host by: loopback when they all run here, else this host's name */
    const char *host = getenv("LOOM_SUPERVISOR_HOST");
    char me[256] = "127.0.0.1";
    if (!(host && host[0]) && remote) this_host_address(me, sizeof me);
    snprintf(addr, addr_size, "%s:%d", host && host[0] ? host : me, ntohs(a.sin_port));
    return s;
}

/* the highest step any rank reported */
static int64_t last_step(const job *j) {
    int64_t s = 0;
    for (int r = 0; r < j->world; r++)
        if (j->ranks[r].step > s) s = j->ranks[r].step;
    return s;
}

/* Elastic: every listed host probed at once (a restart); unreachable ones are excluded, returned ones not. */
static void probe_all(job *j) {
    const loom_supervise_config *c = j->cfg;
    pid_t pids[SV_MAX_HOSTS];
    int state[SV_MAX_HOSTS];
    const double t0 = loom_now_s(), limit = c->heartbeat_timeout > 10 ? c->heartbeat_timeout : 10;
    for (int i = 0; i < j->hosts.n; i++) {
        state[i] = j->hosts.h[i].listed ? -1 : 2;
        pids[i] = state[i] < 0 ? sv_probe_start(c, j->hosts.h[i].name) : -1;
        if (state[i] < 0 && pids[i] < 0) state[i] = 0;
    }
    for (int pending = 1; pending;) {
        pending = 0;
        for (int i = 0; i < j->hosts.n; i++)
            if (state[i] < 0 && (state[i] = sv_probe_poll(pids[i], t0, loom_now_s(), limit)) < 0) pending = 1;
        if (pending) sleep_s(0.05);
    }
    for (int i = 0; i < j->hosts.n; i++) {
        sv_host *h = &j->hosts.h[i];
        if (state[i] == 2) continue;
        if (state[i] == 0 && !h->excluded) {
            LOOM_WARN("host %s does not answer: the job restarts without it", h->name);
            event(c, "host_lost", "\"host\":\"%s\"", h->name);
        } else if (state[i] == 1 && h->excluded) {
            LOOM_INFO("host %s answers again", h->name);
            event(c, "host_back", "\"host\":\"%s\"", h->name);
        }
        h->excluded = state[i] == 0;
    }
}

/* Elastic, while the job runs on fewer ranks than asked: one excluded host probed at a time (every
 * --probe-interval);
 * when it answers (or the hostfile offers more slots), the job is asked to checkpoint and stop (SIGUSR1,
 * which mpirun passes to every rank) and restarts on more ranks. */
typedef struct {
    pid_t pid;
    int host;
    double started, next;
} grow_probe;

static void try_grow(job *j, grow_probe *g) {
    const loom_supervise_config *c = j->cfg;
    if (!j->elastic || j->resizing || j->world >= c->n) return;
    const double now = loom_now_s();
    if (g->pid > 0) {
        const int r = sv_probe_poll(g->pid, g->started, now, 10);
        if (r < 0) return;
        g->pid = -1;
        if (r == 1) {
            j->hosts.h[g->host].excluded = 0;
            event(c, "host_back", "\"host\":\"%s\"", j->hosts.h[g->host].name);
        }
    }
    if (now < g->next) return;
    g->next = now + c->probe_interval;
    if (sv_hosts_read(c, &j->hosts) == 0 && sv_hosts_slots(&j->hosts) > j->world) {
        LOOM_INFO("more ranks available (%d): the job checkpoints and restarts on them", sv_hosts_slots(&j->hosts));
        event(c, "grow", "\"world\":%d,\"available\":%d", j->world, sv_hosts_slots(&j->hosts));
        j->resizing = 1;
        kill(j->child, SIGUSR1);
        return;
    }
    for (int k = 1; k <= j->hosts.n; k++) { /* the next excluded host after the last one probed */
        const int i = (g->host + k) % j->hosts.n;
        if (j->hosts.h[i].listed && j->hosts.h[i].excluded) {
            g->host = i;
            g->started = now;
            g->pid = sv_probe_start(c, j->hosts.h[i].name);
            break;
        }
    }
}

int loom_supervise(const loom_supervise_config *c) {
    if (!c->out || !c->out[0] || (mkdir(c->out, 0755) != 0 && errno != EEXIST)) {
        fprintf(stderr, "loom launch: cannot use the run directory '%s': %s\n", c->out ? c->out : "",
                strerror(errno));
        return 2;
    }
    char addr[300];
    job j;
    memset(&j, 0, sizeof j);
    j.cfg = c;
    j.err_fd = -1;
    j.world = c->n;
    gethostname(j.me, sizeof j.me - 1);
    sv_process_table_id(j.boot, sizeof j.boot);
    j.elastic = c->hosts || c->hostfile;
    const char *base = strrchr(c->mpirun, '/') ? strrchr(c->mpirun, '/') + 1 : c->mpirun;
    j.sock = open_socket(addr, sizeof addr, j.elastic || !strcmp(base, "srun"));
    if (j.sock < 0) {
        fprintf(stderr, "loom launch: cannot open the heartbeat socket: %s\n", strerror(errno));
        return 1;
    }
    setenv("LOOM_SUPERVISOR", addr, 1);
    char period[32]; /* several beats per timeout: one lost datagram is no failure */
    double p = c->heartbeat_timeout / 6.0;
    if (p > 1.0) p = 1.0;
    snprintf(period, sizeof period, "%d", (int)(p * 1000));
    setenv("LOOM_HEARTBEAT_MS", period, 0);
    j.period_s = atof(getenv("LOOM_HEARTBEAT_MS")) / 1e3;
    j.ranks = calloc((size_t)c->n, sizeof *j.ranks);
    if (!j.ranks) return 1;
    signal(SIGPIPE, SIG_IGN);
    double backoff = c->backoff;
    int rc = 0;
    int restarts = 0; /* after failures (a planned resize is not one) */
    const int min_ranks = c->min_ranks > 0 ? c->min_ranks : c->n;
    for (j.attempt = 0;; j.attempt++) {
        if (j.elastic) { /* the hosts as listed now, the unreachable ones left out */
            if (sv_hosts_read(c, &j.hosts) != 0) {
                rc = give_up(c, 1, "cannot read the hostfile %s: %s", c->hostfile, strerror(errno));
                break;
            }
            if (j.attempt > 0) probe_all(&j);
            const int avail = sv_hosts_slots(&j.hosts);
            j.world = avail < c->n ? avail : c->n;
            if (j.world < min_ranks) {
                rc = give_up(c, 1, "only %d rank(s) on the reachable hosts, fewer than --min-ranks %d", j.world, min_ranks);
                break;
            }
            sv_hosts_arg(&j.hosts, j.world, j.host_arg, sizeof j.host_arg);
            if (j.world < c->n)
                LOOM_WARN("running on %d of %d ranks (%s): the global batch is kept", j.world, c->n, j.host_arg);
        }
        j.resizing = 0;
        grow_probe grow = {-1, 0, 0, loom_now_s() + c->probe_interval};
        memset(j.ranks, 0, (size_t)c->n * sizeof *j.ranks);
        memset(&j.hint, 0, sizeof j.hint);
        j.hint.rank = -1;
        drain_beats(&j); /* stale ones */
        event(c, "start", "\"attempt\":%d,\"world\":%d,\"resume\":%s", j.attempt, j.world, j.attempt ? "true" : "false");
        const double started = loom_now_s();
        j.child = start_job(&j, j.attempt > 0);
        if (j.child < 0) {
            rc = give_up(c, 1, "cannot start %s: %s", c->mpirun, strerror(errno));
            break;
        }
        int ended = 0, status = 0;
        failure f;
        int64_t first_step = -1;
        for (;;) {
            struct pollfd pf[2] = {{j.sock, POLLIN, 0}, {j.err_fd, POLLIN, 0}};
            (void)poll(pf, j.err_fd >= 0 ? 2 : 1, 50);
            drain_beats(&j);
            drain_stderr(&j);
            if (first_step < 0 && j.ranks[0].seen && strcmp(j.ranks[0].phase, "start") && strcmp(j.ranks[0].phase, "init"))
                first_step = j.ranks[0].step; /* where this attempt began (its resumed step) */
            if (check(&j, started, &ended, &status, &f)) break;
            try_grow(&j, &grow);
        }
        if (grow.pid > 0) (void)sv_probe_poll(grow.pid, 0, 1e18, 0); /* a probe in flight: ended */
        if (ended && WIFEXITED(status) && WEXITSTATUS(status) == 0 && !f.kind[0]) {
            stop_job(&j, 1);
            event(c, "done", "\"attempts\":%d,\"step\":%lld", j.attempt + 1, (long long)last_step(&j));
            break;
        }
        const double t_stop = loom_now_s();
        if (j.resizing && (!strcmp(f.kind, "exited") || ended)) { /* the stop asked for: every rank checkpointed */
            if (!ended) waitpid(j.child, &status, 0);
            stop_job(&j, 1);
            event(c, "resized", "\"attempt\":%d,\"step\":%lld", j.attempt, (long long)last_step(&j));
            continue;
        }
        const int left = stop_job(&j, ended);
        const rank_view *v = f.rank >= 0 ? &j.ranks[f.rank] : NULL;
        char extra[64] = "";
        if (f.signal) snprintf(extra, sizeof extra, ",\"signal\":%d", f.signal);
        else if (!strcmp(f.kind, "exited")) snprintf(extra, sizeof extra, ",\"exit_code\":%d", f.exit_code);
        event(c, "failure", "\"attempt\":%d,\"kind\":\"%s\",\"rank\":%d,\"host\":\"%s\",\"pid\":%ld%s,\"last_step\":%lld,"
                            "\"detect_s\":%.3f,\"stop_s\":%.3f,\"left\":%d",
              j.attempt, f.kind, f.rank, v && v->seen ? v->host : "?", v ? v->pid : 0L, extra,
              (long long)last_step(&j), f.detected - f.since, loom_now_s() - t_stop, left);
        LOOM_WARN("attempt %d failed: rank %d %s%s%s after step %lld (detected in %.1f s); job stopped", j.attempt,
                  f.rank, f.kind, extra[0] ? " " : "", extra[0] ? extra + 1 : "", (long long)last_step(&j),
                  f.detected - f.since);
        if (left) {
            rc = give_up(c, 1, "%d process(es) of the job would not stop", left);
            break;
        }
        if (!strcmp(f.kind, "exited") && f.exit_code == EXIT_CONFIG) {
            rc = give_up(c, EXIT_CONFIG, "the command failed with a configuration error (exit code 2): a restart "
                                         "would fail the same way; its message is above");
            break;
        }
        if (!strcmp(f.kind, "exited") && f.exit_code == EXIT_NO_CHECKPOINT) {
            rc = give_up(c, EXIT_NO_CHECKPOINT, "no intact checkpoint to resume from in %s (its message is above); "
                                                "the damaged files were left as they are", c->out);
            break;
        }
        if (restarts >= c->max_restarts) {
            rc = give_up(c, 1, "the job failed %d time(s); --max-restarts %d reached (the last failure: rank %d %s)",
                         restarts + 1, c->max_restarts, f.rank, f.kind);
            break;
        }
        restarts++;
        const int progressed = first_step >= 0 && last_step(&j) > first_step;
        if (progressed) backoff = c->backoff;
        LOOM_INFO("restarting in %.1f s (restart %d of at most %d)", backoff, restarts, c->max_restarts);
        sleep_s(backoff);
        if (!progressed) backoff = backoff * 2 > 60 ? 60 : backoff * 2;
    }
    close(j.sock);
    free(j.ranks);
    return rc;
}
