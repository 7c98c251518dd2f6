/* A rank's heartbeat to its supervisor (include/loom/supervise.h): one UDP datagram per period from a
 * thread of its own, so a rank busy in a long kernel still beats, and a rank that is stopped or whose
 * machine is gone falls silent. What it says is loom/progress.h's state, which the trainer and the
 * communicator set. UDP, not TCP: a supervisor that restarts, or a datagram lost, costs nothing; the
 * timeout spans many periods. */
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loom/progress.h"
#include "supervise_impl.h"

static struct {
    int started;
    int fd;
    struct sockaddr_storage to;
    socklen_t to_len;
    pthread_t thread;
    pthread_mutex_t lock; /* with `wake`: the thread's sleep, cut short by stop */
    pthread_cond_t wake;
    int stopping;
    long period_ms;
    char ident[256];              /* "attempt=A rank=R pid=P host=H" */
} hb = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .fd = -1};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void send_beat(const char *phase, int code) {
    char msg[512];
    const loom_progress_state p = loom_progress_get();
    const int64_t age_ms = (now_ns() - p.at_ns) / 1000000;
    int n = snprintf(msg, sizeof msg, "loom-hb 1 %s step=%lld age_ms=%lld phase=%s wait=%d", hb.ident,
                     (long long)p.step, (long long)age_ms, phase ? phase : p.phase, p.waiting);
    if (code >= 0 && n > 0 && n < (int)sizeof msg) n += snprintf(msg + n, sizeof msg - (size_t)n, " code=%d", code);
    if (n > 0) (void)sendto(hb.fd, msg, strlen(msg), MSG_DONTWAIT, (struct sockaddr *)&hb.to, hb.to_len);
}

void sv_process_table_id(char *buf, size_t n) {
    char boot[40] = "", ns[64] = "";
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        if (!fgets(boot, sizeof boot, f)) boot[0] = '\0';
        boot[strcspn(boot, "\n")] = '\0';
        fclose(f);
    }
    const ssize_t k = readlink("/proc/self/ns/pid", ns, sizeof ns - 1); /* "pid:[4026531836]" */
    ns[k > 0 ? k : 0] = '\0';
    const char *inode = strchr(ns, '[');
    if (!boot[0] || !inode) snprintf(buf, n, "?");
    else snprintf(buf, n, "%.36s/%.*s", boot, (int)strcspn(inode + 1, "]"), inode + 1);
}

static void *beat_loop(void *arg) {
    (void)arg;
    pthread_mutex_lock(&hb.lock);
    while (!hb.stopping) {
        send_beat(NULL, -1);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (hb.period_ms % 1000) * 1000000;
        until.tv_sec += hb.period_ms / 1000 + until.tv_nsec / 1000000000;
        until.tv_nsec %= 1000000000;
        while (!hb.stopping && pthread_cond_timedwait(&hb.wake, &hb.lock, &until) == 0) {
        }
    }
    pthread_mutex_unlock(&hb.lock);
    return NULL;
}

/* the rank as the MPI launcher (or Slurm) numbers it, before MPI is initialised */
static const char *launcher_rank(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID", NULL};
    for (int i = 0; vars[i]; i++)
        if (getenv(vars[i])) return getenv(vars[i]);
    return "0";
}

void loom_heartbeat_start(void) {
    const char *sup = getenv("LOOM_SUPERVISOR");
    if (hb.started || !sup || !sup[0]) return;
    char host[256];
    snprintf(host, sizeof host, "%s", sup);
    char *colon = strrchr(host, ':');
    if (!colon) return;
    *colon = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM}, *ai = NULL;
    const int gai = getaddrinfo(host, colon + 1, &hints, &ai);
    if (gai != 0 || !ai) { /* the supervisor would find this rank silent: say why */
        fprintf(stderr, "loom: cannot resolve the supervisor's address %s (%s): this rank sends no heartbeats "
                        "(LOOM_SUPERVISOR_HOST on the supervisor's side sets the address)\n", sup, gai_strerror(gai));
        return;
    }
    hb.fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (hb.fd >= 0) {
        memcpy(&hb.to, ai->ai_addr, ai->ai_addrlen);
        hb.to_len = ai->ai_addrlen;
    }
    freeaddrinfo(ai);
    if (hb.fd < 0) return;
    const char *period = getenv("LOOM_HEARTBEAT_MS");
    hb.period_ms = period ? atol(period) : 1000;
    if (hb.period_ms < 20) hb.period_ms = 20;
    char me[128] = "?";
    gethostname(me, sizeof me - 1);
    const char *attempt = getenv("LOOM_SUPERVISOR_ATTEMPT");
    char boot[80];
    sv_process_table_id(boot, sizeof boot);
    snprintf(hb.ident, sizeof hb.ident, "attempt=%s rank=%s pid=%ld host=%s boot=%s", attempt ? attempt : "0",
             launcher_rank(), (long)getpid(), me, boot);
    (void)loom_progress_get(); /* the clock of progress starts now at the latest */
    if (pthread_create(&hb.thread, NULL, beat_loop, NULL) != 0) {
        close(hb.fd);
        hb.fd = -1;
        return;
    }
    hb.started = 1;
}

void loom_heartbeat_stop(int exit_code) {
    if (!hb.started) return;
    pthread_mutex_lock(&hb.lock);
    hb.stopping = 1;
    pthread_cond_signal(&hb.wake);
    pthread_mutex_unlock(&hb.lock);
    pthread_join(hb.thread, NULL);
    send_beat("exit", exit_code);
    close(hb.fd);
    hb.fd = -1;
    hb.started = 0;
}
