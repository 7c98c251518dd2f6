/* Out of memory at every allocation: a training run whose N-th accounted allocation fails (loom_mem's
 * failure injection, reached through LOOM_TEST_FAULT=oom@0:N) must end with LOOM_ERR_NOMEM and a message
 * naming the allocation, for N = 1, 2, ... up to the first N at which the run no longer fails (it has fewer
 * allocations). Every buffer, host or backend, goes through loom_mem_account, so every one is a failure
 * point. Run under valgrind (tests/device.cmake), the same loop also shows that no failure leaks memory.
 *   test_oom [device]    (cpu by default; cpu-isolated exercises the backend's own allocator) */
#define _POSIX_C_SOURCE 200809L /* setenv, mkdtemp */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/log.h"
#include "loom/run.h"

static int set(loom_run_config *rc, const char *key, const char *value) {
    if (loom_run_config_set(rc, key, value) == LOOM_OK) return 0;
    fprintf(stderr, "test_oom: %s\n", loom_error_message());
    return 1;
}

/* one configuration: every allocation point in turn; returns the failures */
static int every_point(const char *device, const char *dir, const char *preset, const char *const *sets,
                       const char *what) {
    int fails = 0, points = 0;
    for (int n = 1; n < 1000; n++) {
        char fault[32];
        snprintf(fault, sizeof fault, "oom@0:%d", n);
        setenv("LOOM_TEST_FAULT", fault, 1);
        loom_run_config rc;
        if (loom_run_config_init(&rc, preset) != LOOM_OK) return 1;
        /* a tiny run: model, gradients, optimizer state, activations, evaluation, a checkpoint */
        static const char *const base[] = {"model.n_layer", "1", "model.vocab_size", "64", "model.d_model", "32",
                                           "model.n_head", "2", "model.n_kv_head", "2", "model.d_ff", "48",
                                           "train.steps", "2", "train.batch", "2", "train.seq_len", "8",
                                           "train.threads", "1", "train.eval_interval", "1", "train.progress", "0",
                                           "train.blas_coretype", "keep", NULL};
        for (int i = 0; base[i]; i += 2)
            if (set(&rc, base[i], base[i + 1])) return 1;
        for (int i = 0; sets[i]; i += 2)
            if (set(&rc, sets[i], sets[i + 1])) return 1;
        if (set(&rc, "train.device", device) || set(&rc, "train.out", dir)) return 1;
        const loom_status st = loom_train(&rc, NULL, 1.0, "test");
        if (st == LOOM_OK) break;
        points++;
        const char *msg = loom_error_message();
        if (st != LOOM_ERR_NOMEM || !strstr(msg, "(injected)")) {
            printf("FAIL %s: allocation %d: status %s, message \"%s\"\n", what, n, loom_status_name(st), msg);
            fails++;
            break;
        } else if (n == 1) {
            printf("     %s: allocation 1 fails: %s\n", what, msg);
        }
    }
    printf("%s %s: %d allocation points, each failure a clear error; with none, it trains\n",
           fails || !points ? "FAIL" : "ok  ", what, points);
    return fails + !points;
}

int main(int argc, char **argv) {
    const char *device = argc > 1 ? argv[1] : "cpu";
    char dir[] = "/tmp/loom_oom_XXXXXX";
    if (!mkdtemp(dir)) return 2;
    loom_log_set_level(LOOM_LOG_ERROR);
    static const char *const plain[] = {"train.recompute", "attn", NULL};
    static const char *const bf16[] = {"train.precision", "bf16", NULL};
    static const char *const offload[] = {"model.n_layer", "2", "model.vocab_size", "256", "model.d_model", "64",
                                          "model.d_ff", "128", "train.mem_budget", "1M", "train.mem_chunk", "4K",
                                          "optim.kind", "sgd", NULL}; /* about 1.3 MB in files */
    int fails = every_point(device, dir, "llama-tiny", plain, "llama, recompute attn") +
                every_point(device, dir, "demo", bf16, "gpt2, bf16") +
                every_point(device, dir, "llama-tiny", offload, "llama, memory manager (chunks in files)");
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 2;
    printf("%d failed\n", fails);
    return fails ? 1 : 0;
}
