/* The chunk store of the heterogeneous memory manager (include/loom/offload.h).
 *
 * One file per offloaded stream, chunk c at byte offset c * chunk_bytes (pinned chunks leave a hole in the
 * sparse file). One I/O thread serves a FIFO of requests; tickets complete in order, so waiting for a ticket
 * is waiting for a counter. A request is split at chunk boundaries: pinned parts are memcpy'd, file parts
 * go through pread/pwrite, then (writes) are written back and every transferred range is dropped from the
 * page cache, so neither RAM use nor the measured rates are flattered by cached file pages. */
#define _GNU_SOURCE
#include "loom/offload.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "loom/log.h"

typedef struct {
    int write;
    int stream;
    int64_t lo, hi;
    float *buf;
} io_req;

/* a request's host copy of a backend buffer the host cannot address (see loom_offload_options.be) */
typedef struct {
    int64_t ticket;
    float *host;
    float *dst; /* reads: the buffer it is uploaded to once done; writes: NULL */
    int64_t bytes;
} staged;

struct loom_offload {
    loom_offload_options opt;
    loom_mem *mem;
    int64_t n, chunk, n_chunks; /* floats per stream, floats per chunk, chunks per stream */
    int mask;
    int fd[LOOM_OFF_N_STREAMS];
    float **pin[LOOM_OFF_N_STREAMS]; /* [n_chunks]: the RAM copy, or NULL when the chunk lives in the file */
    int64_t pinned_bytes, file_bytes;
    /* the queue (ring of cap requests) and its thread */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    io_req *ring;
    int64_t cap, queued, done; /* tickets: request k is the k-th queued (1-based); done = the last finished */
    int stop;
    loom_status err;
    char err_msg[512];
    loom_offload_stats stats, step_stats;
    staged *stg;                /* in ticket order */
    int64_t n_stg, cap_stg;
};

const double loom_offload_default_cost[LOOM_OFF_N_STREAMS] = {3, 2, 2, 2};

static const char *const stream_names[LOOM_OFF_N_STREAMS] = {"params", "grads", "optim.m", "optim.v"};
const char *loom_offload_stream_name(loom_offload_stream s) {
    return s >= 0 && s < LOOM_OFF_N_STREAMS ? stream_names[s] : "?";
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int file_io(int fd, int write, char *buf, size_t n, off_t off) {
    const off_t off0 = off;
    const size_t n0 = n;
    while (n > 0) {
        ssize_t k = write ? pwrite(fd, buf, n, off) : pread(fd, buf, n, off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return k == 0 ? EIO : errno;
        buf += k;
        n -= (size_t)k;
        off += k;
    }
    if (write && sync_file_range(fd, off0, (off_t)n0,
                                 SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0)
        return errno;
    (void)posix_fadvise(fd, off0, (off_t)n0, POSIX_FADV_DONTNEED);
    return 0;
}

/* runs one request on the I/O thread; returns errno (0: done) */
static int serve(loom_offload *st, const io_req *r, loom_offload_stats *acc, int *failed_chunk) {
    const int64_t C = st->chunk;
    for (int64_t a = r->lo; a < r->hi;) {
        const int64_t c = a / C, b = (c + 1) * C < r->hi ? (c + 1) * C : r->hi;
        float *ram = st->pin[r->stream][c], *buf = r->buf + (a - r->lo);
        const size_t bytes = (size_t)(b - a) * sizeof(float);
        if (ram) {
            if (r->write) memcpy(ram + (a - c * C), buf, bytes);
            else memcpy(buf, ram + (a - c * C), bytes);
            acc->copy_bytes += (int64_t)bytes;
        } else {
            const double t0 = now_s();
            int e = file_io(st->fd[r->stream], r->write, (char *)buf, bytes, (off_t)a * (off_t)sizeof(float));
            if (e) {
                *failed_chunk = (int)c;
                return e;
            }
            (r->write ? acc->write_bytes : acc->read_bytes)[r->stream] += (int64_t)bytes;
            acc->io_seconds += now_s() - t0;
        }
        a = b;
    }
    return 0;
}

static void add_stats(loom_offload_stats *to, const loom_offload_stats *a) {
    for (int i = 0; i < LOOM_OFF_N_STREAMS; i++) {
        to->read_bytes[i] += a->read_bytes[i];
        to->write_bytes[i] += a->write_bytes[i];
    }
    to->copy_bytes += a->copy_bytes;
    to->io_seconds += a->io_seconds;
    to->wait_seconds += a->wait_seconds;
}

static void *io_thread(void *arg) {
    loom_offload *st = arg;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        while (!st->stop && st->done == st->queued) pthread_cond_wait(&st->cv_work, &st->mu);
        if (st->done == st->queued && st->stop) break;
        io_req r = st->ring[st->done % st->cap];
        const int healthy = st->err == LOOM_OK;
        pthread_mutex_unlock(&st->mu);
        loom_offload_stats acc;
        memset(&acc, 0, sizeof acc);
        int chunk = -1, e = healthy ? serve(st, &r, &acc, &chunk) : 0; /* after an error, requests only drain */
        pthread_mutex_lock(&st->mu);
        add_stats(&st->stats, &acc);
        add_stats(&st->step_stats, &acc);
        if (e && st->err == LOOM_OK) {
            st->err = LOOM_ERR_IO;
            snprintf(st->err_msg, sizeof st->err_msg, "offload %s of %s chunk %d in %s: %s%s",
                     r.write ? "write" : "read", stream_names[r.stream], chunk, st->opt.dir, strerror(e),
                     e == ENOSPC ? " (the offload directory's disk is full: free space or choose train.offload_dir)" : "");
        }
        st->done++;
        pthread_cond_broadcast(&st->cv_done);
    }
    pthread_mutex_unlock(&st->mu);
    return NULL;
}

static int64_t enqueue(loom_offload *st, int write, loom_offload_stream s, int64_t lo, int64_t hi, float *buf) {
    pthread_mutex_lock(&st->mu);
    while (st->queued - st->done >= st->cap) pthread_cond_wait(&st->cv_done, &st->mu);
    st->ring[st->queued % st->cap] = (io_req){write, (int)s, lo, hi, buf};
    const int64_t ticket = ++st->queued;
    pthread_cond_signal(&st->cv_work);
    pthread_mutex_unlock(&st->mu);
    return ticket;
}

/* a host copy of buf for a request (written from buf first for a write), or NULL after recording an error */
static float *stage_host(loom_offload *st, int write, float *buf, int64_t lo, int64_t hi) {
    const int64_t bytes = (hi - lo) * (int64_t)sizeof(float);
    float *host = NULL;
    staged *grown = st->n_stg < st->cap_stg ? st->stg : realloc(st->stg, (size_t)(2 * st->cap_stg + 8) * sizeof *st->stg);
    if (grown) {
        st->stg = grown;
        if (st->n_stg >= st->cap_stg) st->cap_stg = 2 * st->cap_stg + 8;
        host = malloc((size_t)(bytes > 0 ? bytes : 1));
    }
    loom_status e = host ? LOOM_OK : loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    if (e == LOOM_OK && write) e = loom_buf_download(st->opt.be, host, buf, (size_t)bytes);
    if (e != LOOM_OK) {
        pthread_mutex_lock(&st->mu);
        if (st->err == LOOM_OK) {
            st->err = e;
            snprintf(st->err_msg, sizeof st->err_msg, "offload staging: %s", loom_error_message());
        }
        pthread_mutex_unlock(&st->mu);
        free(host);
        return NULL;
    }
    st->stg[st->n_stg++] = (staged){0, host, write ? NULL : buf, bytes};
    return host;
}

static int64_t request(loom_offload *st, int write, loom_offload_stream s, int64_t lo, int64_t hi, float *buf) {
    if (!loom_buf_device_only(st->opt.be, buf)) return enqueue(st, write, s, lo, hi, buf);
    float *host = stage_host(st, write, buf, lo, hi);
    if (!host) return 0;
    return st->stg[st->n_stg - 1].ticket = enqueue(st, write, s, lo, hi, host);
}

int64_t loom_offload_read(loom_offload *st, loom_offload_stream s, int64_t lo, int64_t hi, float *dst) {
    return request(st, 0, s, lo, hi, dst);
}
int64_t loom_offload_write(loom_offload *st, loom_offload_stream s, int64_t lo, int64_t hi, const float *src) {
    return request(st, 1, s, lo, hi, (float *)src);
}

/* the staged requests up to ticket are done: reads go to their buffers, host copies are freed */
static loom_status unstage(loom_offload *st, int64_t ticket) {
    loom_status e = LOOM_OK;
    int64_t k = 0;
    for (; k < st->n_stg && st->stg[k].ticket <= ticket; k++) {
        const staged *g = &st->stg[k];
        if (g->dst && e == LOOM_OK) e = loom_buf_upload(st->opt.be, g->dst, g->host, (size_t)g->bytes);
        free(g->host);
    }
    memmove(st->stg, st->stg + k, (size_t)(st->n_stg - k) * sizeof *st->stg);
    st->n_stg -= k;
    return e;
}

loom_status loom_offload_wait(loom_offload *st, int64_t ticket) {
    const double t0 = now_s();
    pthread_mutex_lock(&st->mu);
    while (st->done < ticket) pthread_cond_wait(&st->cv_done, &st->mu);
    const loom_status e = st->err;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", st->err_msg);
    st->stats.wait_seconds += now_s() - t0;
    st->step_stats.wait_seconds += now_s() - t0;
    pthread_mutex_unlock(&st->mu);
    LOOM_CHECK(e == LOOM_OK, e, "%s", msg);
    return unstage(st, ticket);
}

int loom_offload_done(loom_offload *st, int64_t ticket) {
    pthread_mutex_lock(&st->mu);
    const int done = st->done >= ticket;
    pthread_mutex_unlock(&st->mu);
    return done;
}

loom_status loom_offload_wait_all(loom_offload *st) {
    pthread_mutex_lock(&st->mu);
    const int64_t t = st->queued;
    pthread_mutex_unlock(&st->mu);
    return loom_offload_wait(st, t);
}

static void write_placement(loom_offload *st) {
    FILE *f = st->opt.trace;
    fprintf(f, "{\"event\":\"placement\",\"budget_bytes\":%lld,\"chunk_bytes\":%lld,\"chunks_per_stream\":%lld,"
               "\"pinned_bytes\":%lld,\"file_bytes\":%lld,\"chunks\":{",
            (long long)st->opt.budget_bytes, (long long)(st->chunk * 4), (long long)st->n_chunks,
            (long long)st->pinned_bytes, (long long)st->file_bytes);
    int first = 1;
    for (int s = 0; s < LOOM_OFF_N_STREAMS; s++) {
        if (!(st->mask & (1 << s))) continue;
        fprintf(f, "%s\"%s\":\"", first ? "" : ",", stream_names[s]);
        for (int64_t c = 0; c < st->n_chunks; c++) fputc(st->pin[s][c] ? 'R' : 'F', f); /* RAM or file */
        fputc('"', f);
        first = 0;
    }
    fprintf(f, "}}\n");
    fflush(f);
}

/* floats of chunk c of a stream of n floats cut in chunks of `chunk` (the last may be shorter) */
static int64_t chunk_len(int64_t chunk, int64_t n, int64_t c) { return (c + 1) * chunk < n ? chunk : n - c * chunk; }

static loom_mem_category stream_category(int s) {
    return s == LOOM_OFF_PARAMS ? LOOM_MEM_PARAMS : s == LOOM_OFF_GRADS ? LOOM_MEM_GRADS : LOOM_MEM_OPTIM;
}

/* The placement rule, pure (the planner predicts with it): streams by cost, most costly first, each
 * stream's chunks in order; a chunk is pinned when it fits in what the budget has left. Bytes pinned per
 * stream go to pinned[]; marks[s][c] (when given) is set for each pinned chunk. */
static void place(const loom_offload_options *o, int64_t n, int mask, const double cost[LOOM_OFF_N_STREAMS],
                  int64_t working_set, int64_t pinned[LOOM_OFF_N_STREAMS], char *marks[LOOM_OFF_N_STREAMS]) {
    const int64_t chunk = o->chunk_bytes / 4, n_chunks = (n + chunk - 1) / chunk;
    int order[LOOM_OFF_N_STREAMS], n_order = 0;
    for (int s = 0; s < LOOM_OFF_N_STREAMS; s++) {
        pinned[s] = 0;
        if (mask & (1 << s)) order[n_order++] = s;
    }
    for (int i = 1; i < n_order; i++) /* stable: equal costs keep stream order */
        for (int j = i; j > 0 && cost[order[j]] > cost[order[j - 1]]; j--) {
            const int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    int64_t left = o->budget_bytes - working_set;
    for (int i = 0; i < n_order; i++)
        for (int64_t c = 0; c < n_chunks; c++) {
            const int64_t bytes = 4 * chunk_len(chunk, n, c);
            if (bytes > left) continue;
            left -= bytes;
            pinned[order[i]] += bytes;
            if (marks) marks[order[i]][c] = 1;
        }
}

void loom_offload_plan_pins(const loom_offload_options *o, int64_t n, int mask, const double cost[LOOM_OFF_N_STREAMS],
                            int64_t working_set_bytes, int64_t pinned[LOOM_OFF_N_STREAMS],
                            char *marks[LOOM_OFF_N_STREAMS]) {
    place(o, n, mask, cost, working_set_bytes, pinned, marks);
}

loom_status loom_offload_init(const loom_offload_options *o, int64_t n, int mask, const double cost[LOOM_OFF_N_STREAMS],
                              int64_t working_set_bytes, loom_mem *mem, loom_offload **out) {
    *out = NULL;
    LOOM_CHECK(o->chunk_bytes >= 4096 && o->chunk_bytes % 4096 == 0, LOOM_ERR_CONFIG,
               "train.mem_chunk must be a positive multiple of 4096 bytes, got %lld", (long long)o->chunk_bytes);
    LOOM_CHECK(n >= 0 && mask > 0 && mask <= LOOM_OFF_ALL, LOOM_ERR_INVALID_ARG, "bad offload range or streams");
    LOOM_CHECK(o->budget_bytes >= working_set_bytes, LOOM_ERR_CONFIG,
               "memory budget %.1f MiB is below the working set of %.1f MiB that training needs resident at once "
               "(units being computed and prefetched, update staging): raise --mem-budget or lower train.mem_chunk",
               o->budget_bytes / 1048576.0, working_set_bytes / 1048576.0);
    loom_offload *st = calloc(1, sizeof *st);
    LOOM_CHECK(st != NULL, LOOM_ERR_NOMEM, "out of memory");
    st->opt = *o;
    st->mem = mem;
    st->n = n;
    st->mask = mask;
    st->chunk = o->chunk_bytes / 4;
    st->n_chunks = (n + st->chunk - 1) / st->chunk;
    st->cap = 256;
    for (int s = 0; s < LOOM_OFF_N_STREAMS; s++) st->fd[s] = -1;
    loom_status err = LOOM_OK;
    st->ring = calloc((size_t)st->cap, sizeof *st->ring);
    if (!st->ring) err = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    for (int s = 0; s < LOOM_OFF_N_STREAMS && err == LOOM_OK; s++) {
        if (!(mask & (1 << s))) continue;
        st->pin[s] = calloc((size_t)(st->n_chunks ? st->n_chunks : 1), sizeof(float *));
        if (!st->pin[s]) err = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    int64_t pinned[LOOM_OFF_N_STREAMS];
    char *marks[LOOM_OFF_N_STREAMS] = {NULL};
    for (int s = 0; s < LOOM_OFF_N_STREAMS && err == LOOM_OK; s++) {
        marks[s] = calloc((size_t)st->n_chunks + 1, 1);
        if (!marks[s]) err = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "out of memory");
    }
    if (err == LOOM_OK) place(o, n, mask, cost, working_set_bytes, pinned, marks);
    for (int s = 0; s < LOOM_OFF_N_STREAMS && err == LOOM_OK; s++)
        for (int64_t c = 0; c < st->n_chunks && err == LOOM_OK; c++)
            if (marks[s][c])
                err = loom_mem_alloc(mem, stream_category(s), (size_t)(4 * chunk_len(st->chunk, n, c)),
                                     (void **)&st->pin[s][c]);
    for (int s = 0; s < LOOM_OFF_N_STREAMS; s++) free(marks[s]);
    int64_t in_file[LOOM_OFF_N_STREAMS] = {0}; /* what each stream keeps in its file */
    for (int s = 0; s < LOOM_OFF_N_STREAMS && err == LOOM_OK; s++) {
        if (!(mask & (1 << s))) continue;
        in_file[s] = 4 * n - pinned[s];
        st->pinned_bytes += pinned[s];
        st->file_bytes += in_file[s];
    }
    struct statvfs fs; /* sparse files: a full disk would otherwise surface mid-step */
    if (err == LOOM_OK && st->file_bytes > 0 && statvfs(o->dir, &fs) == 0 &&
        (int64_t)fs.f_bavail * (int64_t)fs.f_frsize < st->file_bytes)
        err = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__,
                             "the memory manager needs %.1f GiB of files in %s, which has %.1f GiB free (raise "
                             "--mem-budget or choose train.offload_dir)", st->file_bytes / 1073741824.0, o->dir,
                             (double)fs.f_bavail * (double)fs.f_frsize / 1073741824.0);
    for (int s = 0; s < LOOM_OFF_N_STREAMS && err == LOOM_OK; s++) {
        if (in_file[s] == 0) continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/.loom-offload-%ld-%s-%p", o->dir, (long)getpid(), stream_names[s], (void *)st);
        st->fd[s] = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (st->fd[s] < 0) {
            err = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot create offload file %s: %s", path,
                                 strerror(errno));
            break;
        }
        (void)unlink(path); /* scratch: gone when the process is, however it ends */
        /* a sparse file of zeros: gradients and moments start at zero without writing a byte */
        if (ftruncate(st->fd[s], (off_t)n * (off_t)sizeof(float)) != 0)
            err = loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot size offload file in %s: %s",
                                 o->dir, strerror(errno));
    }
    if (err == LOOM_OK) {
        pthread_mutex_init(&st->mu, NULL);
        pthread_cond_init(&st->cv_work, NULL);
        pthread_cond_init(&st->cv_done, NULL);
        if (pthread_create(&st->thread, NULL, io_thread, st) != 0)
            err = loom_error_set(LOOM_ERR_NOMEM, __FILE__, __LINE__, __func__, "cannot start the offload I/O thread");
        else st->thread_started = 1;
    }
    if (err != LOOM_OK) {
        loom_offload_free(&st);
        return err;
    }
    LOOM_INFO("memory manager: budget %.1f MiB, working set %.1f MiB, %.1f MiB pinned in RAM, %.1f MiB in files "
              "under %s (chunks of %.1f MiB)", o->budget_bytes / 1048576.0, working_set_bytes / 1048576.0,
              st->pinned_bytes / 1048576.0, st->file_bytes / 1048576.0, o->dir, o->chunk_bytes / 1048576.0);
    if (o->trace) write_placement(st);
    *out = st;
    return LOOM_OK;
}

void loom_offload_free(loom_offload **pst) {
    if (!pst || !*pst) return;
    loom_offload *st = *pst;
    if (st->thread_started) {
        pthread_mutex_lock(&st->mu);
        st->stop = 1;
        pthread_cond_signal(&st->cv_work);
        pthread_mutex_unlock(&st->mu);
        pthread_join(st->thread, NULL);
        pthread_mutex_destroy(&st->mu);
        pthread_cond_destroy(&st->cv_work);
        pthread_cond_destroy(&st->cv_done);
    }
    for (int64_t k = 0; k < st->n_stg; k++) free(st->stg[k].host);
    free(st->stg);
    for (int s = 0; s < LOOM_OFF_N_STREAMS; s++) {
        if (st->fd[s] >= 0) close(st->fd[s]);
        for (int64_t c = 0; st->pin[s] && c < st->n_chunks; c++) /* loom_mem_free skips NULL */
            loom_mem_free(st->mem, stream_category(s), st->pin[s][c], (size_t)(4 * chunk_len(st->chunk, st->n, c)));
        free(st->pin[s]);
    }
    free(st->ring);
    free(st);
    *pst = NULL;
}

int loom_offload_holds(const loom_offload *st, loom_offload_stream s) { return (st->mask >> s) & 1; }
int64_t loom_offload_chunk_floats(const loom_offload *st) { return st->chunk; }
int64_t loom_offload_num_chunks(const loom_offload *st) { return st->n_chunks; }
float *loom_offload_pinned(loom_offload *st, loom_offload_stream s, int64_t c) {
    if (st->opt.be && !loom_backend_host_accessible(st->opt.be)) return NULL; /* kernels cannot use host RAM */
    return st->pin[s] && c >= 0 && c < st->n_chunks ? st->pin[s][c] : NULL;
}
int64_t loom_offload_pinned_bytes(const loom_offload *st) { return st->pinned_bytes; }
int64_t loom_offload_file_bytes(const loom_offload *st) { return st->file_bytes; }

loom_offload_stats loom_offload_get_stats(const loom_offload *st) {
    pthread_mutex_t *mu = (pthread_mutex_t *)&st->mu;
    pthread_mutex_lock(mu);
    loom_offload_stats s = st->stats;
    pthread_mutex_unlock(mu);
    return s;
}

void loom_offload_trace_step(loom_offload *st, int64_t step, const loom_mem *mem) {
    pthread_mutex_lock(&st->mu);
    loom_offload_stats s = st->step_stats;
    memset(&st->step_stats, 0, sizeof st->step_stats);
    pthread_mutex_unlock(&st->mu);
    FILE *f = st->opt.trace;
    if (!f) return;
    fprintf(f, "{\"event\":\"step\",\"step\":%lld", (long long)step);
    for (int k = 0; k < 2; k++) {
        fprintf(f, ",\"%s\":{", k ? "write_bytes" : "read_bytes");
        for (int i = 0; i < LOOM_OFF_N_STREAMS; i++)
            fprintf(f, "%s\"%s\":%lld", i ? "," : "", stream_names[i], (long long)(k ? s.write_bytes[i] : s.read_bytes[i]));
        fputc('}', f);
    }
    fprintf(f, ",\"pinned_copy_bytes\":%lld,\"io_s\":%.4f,\"wait_s\":%.4f", (long long)s.copy_bytes, s.io_seconds,
            s.wait_seconds);
    if (mem) {
        fprintf(f, ",\"resident_peak\":{");
        for (int c = 0; c < LOOM_MEM_N_CATEGORIES; c++)
            fprintf(f, "%s\"%s\":%lld", c ? "," : "", loom_mem_category_name((loom_mem_category)c), (long long)mem->peak[c]);
        fputc('}', f);
    }
    fprintf(f, "}\n");
    fflush(f);
}
