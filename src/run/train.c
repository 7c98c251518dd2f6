/* The training driver behind `loom train`: the loop over the trainer's steps (trainer.c), with validation,
 * checkpoints, progress and a stop on SIGINT/SIGTERM that every rank agrees on. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loom/backend.h"
#include "loom/generate.h"
#include "loom/log.h"

#include "run_impl.h"

/* The one process-wide flag: a signal handler can only reach a global. */
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

void loom_train_install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

volatile sig_atomic_t *loom_run_stop_flag(void) { return &stop_signal; }

double loom_run_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

loom_status loom_run_mkdir_p(const char *path) {
    char buf[LOOM_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return loom_error_set(LOOM_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", buf, strerror(errno));
            *p = '/';
        }
    LOOM_CHECK(mkdir(buf, 0755) == 0 || errno == EEXIST, LOOM_ERR_IO, "cannot create %s: %s", buf, strerror(errno));
    return LOOM_OK;
}

static void fmt_duration(char *buf, size_t n, double s) {
    if (s < 0 || !isfinite(s)) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)(s / 3600), ((int)s % 3600) / 60);
}

/* the profile per step by category, for `loom plan --time --explain DIR` (docs/FORMATS.md, profile.json) */
static void write_profile(const loom_trainer *tr, const loom_profile *p, double total_s, double ksum, int64_t steps) {
    char path[LOOM_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/profile.json", tr->rc->train.out);
    FILE *f = steps > 0 ? fopen(path, "w") : NULL;
    if (!f) {
        if (steps > 0) LOOM_WARN("could not write %s", path);
        return;
    }
    fprintf(f, "{\"steps\":%lld,\"step_ms\":%.4f,\"ms_per_step\":{", (long long)steps, 1e3 * total_s / steps);
    for (int i = 0; i < LOOM_OP_COUNT; i++)
        fprintf(f, "\"%s\":%.4f,", loom_op_name((loom_op)i), 1e3 * p->seconds[i] / steps);
    fprintf(f, "\"other\":%.4f},\"kernel_ms_per_step\":{", 1e3 * (total_s - ksum) / steps);
    const char *sep = "";
    for (int k = 0; k < LOOM_KERNEL_COUNT; k++) {
        if (!p->kernel_calls[k]) continue;
        fprintf(f, "%s\"%s\":%.4f", sep, loom_kernel_name((loom_kernel)k), 1e3 * p->kernel_seconds[k] / steps);
        sep = ",";
    }
    fprintf(f, "}}\n");
    if (fclose(f) != 0) LOOM_WARN("could not write %s", path);
}

/* the kernels that took the most time, largest first, down to 0.5% of the run: where a category's time went */
static void print_top_kernels(const loom_profile *p, double total_s) {
    int done[LOOM_KERNEL_COUNT] = {0};
    printf("  %-24s %10s %10s %7s\n", "kernel", "calls", "seconds", "share");
    for (;;) {
        int best = -1;
        for (int k = 0; k < LOOM_KERNEL_COUNT; k++)
            if (!done[k] && p->kernel_calls[k] && (best < 0 || p->kernel_seconds[k] > p->kernel_seconds[best])) best = k;
        if (best < 0 || p->kernel_seconds[best] < 0.005 * total_s) break;
        done[best] = 1;
        printf("  %-24s %10lld %10.3f %6.1f%%\n", loom_kernel_name((loom_kernel)best), (long long)p->kernel_calls[best],
               p->kernel_seconds[best], 100.0 * p->kernel_seconds[best] / total_s);
    }
}

static void print_profile(const loom_trainer *tr, double total_s, int64_t steps) {
    loom_profile *p = loom_backend_profile(tr->be);
    double ksum = 0;
    for (int i = 0; i < LOOM_OP_COUNT; i++) ksum += p->seconds[i];
    write_profile(tr, p, total_s, ksum, steps);
    printf("profile (kernel time by category; %.2f s in kernels of %.2f s total):\n", ksum, total_s);
    printf("  %-12s %10s %10s %7s %10s\n", "category", "calls", "seconds", "share", "GFLOP/s");
    for (int i = 0; i < LOOM_OP_COUNT; i++) {
        if (!p->calls[i]) continue;
        printf("  %-12s %10lld %10.3f %6.1f%% %10.1f\n", loom_op_name((loom_op)i), (long long)p->calls[i],
               p->seconds[i], 100.0 * p->seconds[i] / total_s, p->seconds[i] > 0 ? p->flops[i] / p->seconds[i] / 1e9 : 0.0);
    }
    printf("  %-12s %10s %10.3f %6.1f%%\n", "other", "", total_s - ksum, 100.0 * (total_s - ksum) / total_s);
    print_top_kernels(p, total_s);
}

/* A short text from the trained model, so a first run ends with something to read. */
static loom_status print_sample(loom_trainer *tr) {
    loom_tokenizer *tok = NULL;
    LOOM_CALL(loom_tokenizer_load(tr->tokenizer, &tok));
    int32_t start = loom_tokenizer_eot(tok);
    if (start < 0) {
        int32_t *nl = NULL;
        int64_t n = 0;
        loom_status st = loom_tokenizer_encode(tok, "\n", 1, &nl, &n);
        start = (st == LOOM_OK && n > 0) ? nl[0] : 0;
        free(nl);
    }
    loom_sample_config sc = loom_sample_config_default();
    sc.max_tokens = tr->rc->train.sample_tokens;
    sc.seed = (uint64_t)tr->rc->train.seed;
    printf("--- sample (%lld tokens, temperature %.1f) ---\n", (long long)sc.max_tokens, sc.temperature);
    loom_generate_stats gs;
    loom_status st = loom_generate(tr->model, tok, &start, 1, &sc, stdout, &gs, NULL, NULL);
    printf("\n--- %.0f tokens/s ---\n", gs.decode_seconds > 0 ? (double)gs.generated_tokens / gs.decode_seconds : 0.0);
    loom_tokenizer_free(&tok);
    LOOM_CALL(st);
    return LOOM_OK;
}

/* the summary line of a finished run (rank 0) */
static void print_summary(const loom_trainer *tr, int64_t steps, float loss, float val_loss, double total, double t_train) {
    const loom_train_config *t = &tr->rc->train;
    printf("done: %lld steps, final loss %.6f, val_loss %.6f, %.1f s, %.0f tokens/s, peak memory %.1f MiB "
           "(params %.1f, grads %.1f, optim %.1f, acts %.1f, workspace %.1f MiB), checkpoint %s\n",
           (long long)steps, loss, val_loss, total, t_train > 0 ? (double)(tr->tokens_per_step * steps) / t_train : 0.0,
           (double)tr->mem.peak_total / 1048576.0, (double)tr->mem.peak[LOOM_MEM_PARAMS] / 1048576.0,
           (double)tr->mem.peak[LOOM_MEM_GRADS] / 1048576.0, (double)tr->mem.peak[LOOM_MEM_OPTIM] / 1048576.0,
           (double)tr->mem.peak[LOOM_MEM_ACTS] / 1048576.0, (double)tr->mem.peak[LOOM_MEM_WORKSPACE] / 1048576.0,
           !t->save_checkpoints ? "none (train.save_checkpoints=false)" : tr->dp > 1 ? t->out : tr->ckpt_path);
    const size_t own = loom_backend_own_bytes(tr->be);
    if (own) printf("  besides these, the backend's own buffers: %.1f MiB (the bf16 GEMM's operands in its own layout)\n",
                    (double)own / 1048576.0);
    for (int r = 0; tr->pp > 1 && r < tr->pp; r++) {
        const double idle = tr->pp_stats[2 * r], busy = tr->pp_stats[2 * r + 1];
        printf("  pipeline stage %d idle %.1f%% of the last step (theory (p-1)/(v m+p-1) = %.1f%%)\n", r,
               idle + busy > 0 ? 100 * idle / (idle + busy) : 0.0, 100 * loom_pipeline_bubble_theory(tr->pipe));
    }
    for (int r = 0; tr->world_size > 1 && r < tr->world_size; r++) {
        const int64_t *pk = tr->rank_mem + r * RANK_ROW + LOOM_MEM_N_CATEGORIES;
        printf("  rank %d peak MiB: params %.1f, grads %.1f, optim %.1f, acts %.1f, workspace %.1f\n", r,
               pk[0] / 1048576.0, pk[1] / 1048576.0, pk[2] / 1048576.0, pk[3] / 1048576.0, pk[4] / 1048576.0);
    }
}

/* the sample a first run ends with, where one rank holds the whole model */
static loom_status sample(loom_trainer *tr) {
    const loom_train_config *t = &tr->rc->train;
    if (t->sample_tokens <= 0 || !tr->tokenizer[0]) return LOOM_OK;
    if (tr->tp > 1 || tr->sp > 1 || tr->pp > 1) {
        if (tr->root) LOOM_INFO("no sample: generation runs on one rank per sequence and layer (loom generate %s)", t->out);
        return LOOM_OK;
    }
    if (loom_zero_offload(tr->zero) && loom_zero_stage(tr->zero) >= 3) {
        if (tr->root) LOOM_INFO("no sample: the parameters are offloaded (loom generate %s)", t->out);
        return LOOM_OK;
    }
    LOOM_CALL(loom_zero_gather_all(tr->zero)); /* ZeRO-3: every rank lends its slice */
    if (tr->root) LOOM_CALL(print_sample(tr));
    loom_zero_release_all(tr->zero);
    return LOOM_OK;
}

/* The loop: steps to train.steps, validation every eval_interval, checkpoints every ckpt_interval and at the
 * end; a signal on any rank stops every rank after the same step, checkpointed. */
static loom_status run_loop(loom_trainer *tr) {
    const loom_train_config *t = &tr->rc->train;
    const int tty = tr->root && (t->progress == 1 || (t->progress < 0 && isatty(STDOUT_FILENO)));
    const double t_start = loom_run_now();
    double t_train = 0;
    const int64_t first_step = loom_trainer_steps_done(tr);
    float loss = NAN, val_loss = NAN;
    while (loom_trainer_steps_done(tr) < t->steps) {
        loom_step_result r;
        LOOM_CALL(loom_trainer_step(tr, &r));
        if (r.rolled_back) continue; /* back at an earlier step: its steps come again (untrained up to the spike) */
        const int64_t step = r.step;
        loss = r.loss;
        t_train += r.seconds;
        char eta[32];
        fmt_duration(eta, sizeof eta, t_train / (double)(step - first_step) * (double)(t->steps - step));
        if (tty) {
            printf("\rstep %lld/%lld | loss %.4f | %.0f tok/s | MFU %.1f%% | %.0f ms/step | ETA %s   ", (long long)step,
                   (long long)t->steps, loss, r.tokens_per_sec, 100 * r.mfu, r.seconds * 1e3, eta);
            fflush(stdout);
        } else if (tr->root && (step % t->log_interval == 0 || step == t->steps || step == first_step + 1)) {
            printf("step %lld/%lld loss %.6f lr %.3e grad_norm %.4f tok/s %.0f mfu %.1f%% ms %.0f eta %s\n",
                   (long long)step, (long long)t->steps, loss, r.optim.lr, r.optim.grad_norm, r.tokens_per_sec,
                   100 * r.mfu, r.seconds * 1e3, eta);
            fflush(stdout);
        }
        const int last = step == t->steps;
        if ((t->eval_interval > 0 && step % t->eval_interval == 0) || last) {
            LOOM_CALL(loom_trainer_eval(tr, &val_loss));
            if (tr->root) printf("%sstep %lld val_loss %.6f\n", tty ? "\n" : "", (long long)step, val_loss);
        }
        int64_t stop_vote = stop_signal != 0;
        if (tr->world_size > 1) /* a signal stops every rank at the same step, so the checkpoint is whole */
            LOOM_CALL(loom_comm_allreduce_max_i64(tr->world, &stop_vote, 1));
        const int stop_now = stop_vote != 0 || (t->stop_after > 0 && step == t->stop_after);
        const int disk = t->save_checkpoints && ((t->ckpt_interval > 0 && step % t->ckpt_interval == 0) || last || stop_now);
        const int snap = t->snapshot_interval > 0 && step % t->snapshot_interval == 0;
        if (disk && t->ckpt_async && !last && !stop_now) LOOM_CALL(loom_trainer_snapshot(tr, 1)); /* disk: later */
        else if (disk) LOOM_CALL(loom_trainer_save(tr));
        else if (snap) LOOM_CALL(loom_trainer_snapshot(tr, 0));
        else LOOM_CALL(loom_trainer_ckpt_poll(tr, 0)); /* a background checkpoint: committed once all are done */
        if (stop_vote) {
            if (tty) printf("\n");
            loom_status st = loom_error_set(LOOM_ERR_INTERRUPTED, __FILE__, __LINE__, __func__,
                                            "interrupted by signal %d at step %lld; %s%s", (int)stop_signal,
                                            (long long)step,
                                            t->save_checkpoints ? "continue with --resume from the checkpoint in "
                                                                : "no checkpoint (train.save_checkpoints=false)",
                                            t->save_checkpoints ? (tr->dp > 1 ? t->out : tr->ckpt_path) : "");
            loom_error_mark_collective(); /* the stop was voted: every rank stops here */
            return st;
        }
        if (stop_now) {
            if (tty) printf("\n");
            LOOM_INFO("stopped after step %lld as asked; checkpoint in %s", (long long)step, t->out);
            break;
        }
    }
    if (tty) printf("\n");
    LOOM_CALL(loom_trainer_ckpt_poll(tr, 1));
    loom_trainer_snapshot_clear(tr); /* the run is complete: its checkpoint is on disk */
    if (tr->root)
        print_summary(tr, loom_trainer_steps_done(tr) - first_step, loss, val_loss, loom_run_now() - t_start, t_train);
    if (t->profile && tr->root) print_profile(tr, t_train, loom_trainer_steps_done(tr) - first_step);
    return sample(tr);
}

loom_status loom_train(const loom_run_config *rc, loom_comm *world, double peak_gflops, const char *peak_kernel) {
    loom_trainer *tr;
    LOOM_CALL(loom_trainer_init(rc, world, peak_gflops, peak_kernel, &tr));
    const loom_status st = run_loop(tr);
    /* an error of this rank alone leaves everything collective alone: the caller aborts the job */
    loom_trainer_free(&tr, st == LOOM_OK || loom_comm_size(loom_trainer_world(tr)) <= 1 || loom_error_is_collective());
    return st;
}
