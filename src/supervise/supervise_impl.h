/* Private to src/supervise/: the hosts of an elastic job (hosts.c), used by the supervisor. */
#ifndef LOOM_SUPERVISE_IMPL_H
#define LOOM_SUPERVISE_IMPL_H
#include <fcntl.h>
#include <sys/types.h>

#include "loom/supervise.h"

enum { SV_MAX_HOSTS = 256 };

typedef struct {
    char name[128];
    int slots;       /* ranks it takes */
    int listed;      /* in --hosts or the hostfile as last read */
    int excluded;    /* its last probe failed: left out of starts until one succeeds */
} sv_host;

typedef struct {
    sv_host h[SV_MAX_HOSTS];
    int n;
} sv_hosts;

/* This process table's identity: the kernel's boot id and the pid namespace ("?" when unknown). A rank that
 * reports the supervisor's own is one whose pid the supervisor can look up and signal. */
void sv_process_table_id(char *buf, size_t n);
/* (Re-)reads --hosts and the hostfile; a host's exclusion survives; -1 when the hostfile cannot be read. */
int sv_hosts_read(const loom_supervise_config *c, sv_hosts *hs);
/* the slots of the listed hosts not excluded; the listed hosts excluded */
int sv_hosts_slots(const sv_hosts *hs);
int sv_hosts_excluded(const sv_hosts *hs);
/* "a:2,b:1" for mpirun --host: `world` slots from the available hosts, in order */
void sv_hosts_arg(const sv_hosts *hs, int world, char *buf, size_t size);
/* A probe of one host (the launcher running `loom --version` there), in its own process group. */
pid_t sv_probe_start(const loom_supervise_config *c, const char *host);
/* 1 reachable, 0 not (a failure, or no answer within `timeout`: killed), -1 still running */
int sv_probe_poll(pid_t pid, double started, double now, double timeout);
#endif
