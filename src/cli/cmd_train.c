/* loom train: builds a run config from preset, JSON file, --set overrides and flags (in that order of
 * precedence, later wins), then runs the training driver. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "loom/hf.h"
#include "loom/json.h"
#include "loom/log.h"
#include "loom/plan.h"
#include "loom/run.h"
#include "loom/supervise.h"

#define DEFAULT_CORPUS "/usr/share/games/fortunes"

static void train_help(void) {
    printf("usage: loom train [--config FILE.json] [--preset NAME] [--set key=value]... [--steps N] [--batch B]\n"
           "                  [--seq-len T] [--grad-accum N] [--threads N] [--data PATH|synthetic] [--out DIR]\n"
           "                  [--resume|--resume-if-any|--init CKPT_OR_HF_DIR] [--lora SPEC [--lora-base-dtype bf16]] [--seed S] [--metrics FILE.jsonl]\n"
           "                  [--recompute none|attn|full]\n"
           "                  [--optimizer adamw|sgd|lamb|lars] [--lr X] [--eval-interval N] [--ckpt-interval N]\n"
           "                  [--stop-after N] [--sample N] [--profile] [--blas-coretype auto|keep|NAME]\n"
           "                  [--zero 0|1|2|3] [--mesh dp=N]   (under mpirun/srun or `loom launch`)\n"
           "                  [--precision fp32|bf16|fp16] [--mem-budget SIZE] [--mem-trace FILE.jsonl]\n"
           "                  [--peak-gflops X] [--device cpu|cuda] [--auto [--cluster FILE]]\n\n"
           "--auto: the layout `loom plan --auto` ranks first for this many ranks (mesh, ZeRO stage, micro-batches of the\n"
           "global batch --batch x --grad-accum, recompute, precision, threads) from the cluster description (default: the\n"
           "one `loom bench cluster` wrote), printed with its predicted ms/step, and at the end next to the measured one.\n"
           "With no arguments: the demo preset on the default corpus (%s, Debian's fortunes),\n"
           "400 steps, a checkpoint in runs/demo and a 300-token sample at the end. --steps is the run's total:\n--resume continues up to it.\n"
           "MFU is against this machine's measured GEMM peak in the run's precision (`loom bench peak`: bf16's for bf16,\n"
           "fp32's for fp32 and fp16); --peak-gflops X gives one rank's peak in that precision instead. Its FLOPs a token\n"
           "are 6 x the parameters the token is multiplied by (not a table it only looks up) + 12 x layers x width x T.\n"
           "SIGINT/SIGTERM/SIGUSR1 save a checkpoint before exiting. Metrics: one JSON line per step in <out>/metrics.jsonl;\n"
           "incidents (skipped and rolled-back steps, resumes; a supervisor's failures) in <out>/events.jsonl.\n"
           "Exit status: 0 done, 1 error, 2 configuration error, 3 no intact checkpoint to resume, 130 stopped by a signal\n"
           "(checkpointed).\n\n"
           "presets:",
           DEFAULT_CORPUS);
    for (const char *const *p = loom_model_preset_names(); *p; p++) printf(" %s", *p);
    printf("\n\n");
    loom_run_config_print_help(stdout);
}

typedef struct {
    const char *flag;
    const char *key;
    int takes_value;
} flag_alias;

static const flag_alias aliases[] = {
    {"--steps", "train.steps", 1},          {"--batch", "train.batch", 1},
    {"--seq-len", "train.seq_len", 1},      {"--grad-accum", "train.grad_accum", 1},
    {"--threads", "train.threads", 1},      {"--data", "train.data", 1},
    {"--device", "train.device", 1},
    {"--out", "train.out", 1},              {"--seed", "train.seed", 1},
    {"--metrics", "train.metrics", 1},      {"--recompute", "train.recompute", 1},
    {"--optimizer", "optim.kind", 1},       {"--lr", "optim.lr", 1},
    {"--eval-interval", "train.eval_interval", 1}, {"--ckpt-interval", "train.ckpt_interval", 1},
    {"--stop-after", "train.stop_after", 1}, {"--zero", "train.zero", 1}, {"--mesh", "train.mesh", 1}, {"--blas-coretype", "train.blas_coretype", 1},
    {"--sample", "train.sample_tokens", 1},  {"--precision", "train.precision", 1},
    {"--mem-budget", "train.mem_budget", 1}, {"--mem-trace", "train.mem_trace", 1},
    {"--resume", "train.resume", 0},        {"--profile", "train.profile", 0},
    {"--resume-if-any", "train.resume_if_any", 0}, {"--init", "train.init_from", 1}, {"--lora", "train.lora", 1}, {"--lora-base-dtype", "train.lora_base_dtype", 1},
};

/* The run config from argv (preset, JSON, --set, flags). Returns 0 (built), -1 (help printed) or an exit
 * code. */
int loom_cli_run_config(int argc, char **argv, const char *cmd, const char *const *own_flags, loom_run_config *out,
                        double *peak_out) {
    const char *config_path = NULL, *preset = NULL;
    double peak = -1;
    int n_over = 0;
    const char **keys = calloc((size_t)argc, sizeof *keys), **vals = calloc((size_t)argc, sizeof *vals);
    char **owned = calloc((size_t)argc, sizeof *owned);
    int rc = 2;
    if (!keys || !vals || !owned) goto out;
    int explicit_data = 0, explicit_steps = 0, cfg_vocab = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (!strcmp(cmd, "train")) train_help();
            rc = -1;
            goto out;
        }
        int own = 0;
        for (int k = 0; own_flags && own_flags[k]; k += 2)
            if (!strcmp(a, own_flags[k])) {
                own = 1;
                i += own_flags[k + 1][0] == '1'; /* the caller's flag and its value */
            }
        if (own) continue;
        const char *val = NULL;
        int need = !strcmp(a, "--config") || !strcmp(a, "--preset") || !strcmp(a, "--set") || !strcmp(a, "--peak-gflops");
        const flag_alias *al = NULL;
        for (size_t k = 0; k < sizeof aliases / sizeof aliases[0]; k++)
            if (!strcmp(a, aliases[k].flag)) al = &aliases[k];
        if (al && al->takes_value) need = 1;
        if (need) {
            if (i + 1 >= argc) {
                fprintf(stderr, "loom %s: %s needs a value\n", cmd, a);
                goto out;
            }
            val = argv[++i];
        }
        if (!strcmp(a, "--config")) config_path = val;
        else if (!strcmp(a, "--preset")) preset = val;
        else if (!strcmp(a, "--peak-gflops")) peak = atof(val);
        else if (!strcmp(a, "--set")) {
            const char *eq = strchr(val, '=');
            if (!eq || eq == val) {
                fprintf(stderr, "loom %s: --set expects key=value, got '%s'\n", cmd, val);
                goto out;
            }
            owned[n_over] = strndup(val, (size_t)(eq - val));
            keys[n_over] = owned[n_over];
            vals[n_over++] = eq + 1;
            if (!strcmp(keys[n_over - 1], "train.data")) explicit_data = 1;
            if (!strcmp(keys[n_over - 1], "train.steps")) explicit_steps = 1;
        } else if (al) {
            keys[n_over] = al->key;
            vals[n_over++] = al->takes_value ? val : "true";
            if (!strcmp(al->key, "train.data")) explicit_data = 1;
            if (!strcmp(al->key, "train.steps")) explicit_steps = 1;
        } else {
            fprintf(stderr, "loom %s: unknown option '%s' (see loom %s --help)\n", cmd, a, cmd);
            goto out;
        }
    }
    rc = 1;
    loom_json *cfg_json = NULL;
    if (config_path) {
        if (loom_json_parse_file(config_path, &cfg_json) != LOOM_OK) {
            rc = loom_cli_fail(cmd);
            goto out;
        }
        const loom_json *p = loom_json_get(cfg_json, "preset");
        if (p && !preset) {
            if (p->type != LOOM_JSON_STRING) {
                fprintf(stderr, "loom %s: error: %s: \"preset\" must be a string\n", cmd, config_path);
                loom_json_free(&cfg_json);
                goto out;
            }
            preset = p->string;
        }
        if (loom_json_get(cfg_json, "train") && loom_json_get(loom_json_get(cfg_json, "train"), "data")) explicit_data = 1;
        if ((loom_json_get(cfg_json, "model") && loom_json_get(loom_json_get(cfg_json, "model"), "vocab_size")) ||
            loom_json_get(cfg_json, "model.vocab_size"))
            cfg_vocab = 1;
    }
    const char *init_from = NULL; /* --init: without --preset or --config, the model is the checkpoint's */
    for (int k = 0; k < n_over; k++)
        if (!strcmp(keys[k], "train.init_from")) init_from = vals[k];
    loom_run_config run;
    int demo = !preset && !init_from;
    if (loom_run_config_init(&run, preset ? preset : "demo") != LOOM_OK ||
        (cfg_json && loom_run_config_apply_json(&run, cfg_json, config_path) != LOOM_OK)) {
        loom_json_free(&cfg_json);
        rc = loom_cli_fail(cmd);
        goto out;
    }
    loom_json_free(&cfg_json);
    if (init_from && !preset && !config_path) {
        if (loom_hf_model_config_of(init_from, &run.model) != LOOM_OK) {
            rc = loom_cli_fail(cmd);
            goto out;
        }
        run.train.fit_vocab = 0; /* the checkpoint's vocabulary: data that needs more is an error */
    }
    if (demo && !explicit_data) {
        /* the first-run experience: learn real text */
        if (access(DEFAULT_CORPUS, R_OK) == 0) snprintf(run.train.data, sizeof run.train.data, "%s", DEFAULT_CORPUS);
        else LOOM_WARN("default corpus %s not found (apt-get install fortunes); training on synthetic tokens", DEFAULT_CORPUS);
        run.train.seq_len = 128;
        run.train.batch = 16;
        run.optim.lr = 2e-3;
        run.optim.min_lr = 2e-4;
        run.optim.warmup_steps = 20;
        run.train.eval_interval = 100;
        if (!explicit_steps) run.train.steps = 400;
        run.train.sample_tokens = 300;
    }
    /* a vocabulary the user states is kept as stated (an error if the data needs more) */
    if (cfg_vocab) run.train.fit_vocab = 0;
    for (int k = 0; k < n_over; k++) {
        if (!strcmp(keys[k], "model.vocab_size")) run.train.fit_vocab = 0;
        if (loom_run_config_set(&run, keys[k], vals[k]) != LOOM_OK) {
            rc = loom_cli_fail(cmd);
            goto out;
        }
    }
    if (loom_run_config_validate(&run) != LOOM_OK) {
        rc = loom_cli_fail(cmd);
        goto out;
    }
    *out = run;
    *peak_out = peak;
    rc = 0;
out:
    if (owned)
        for (int k = 0; k < argc; k++) free(owned[k]);
    free(owned);
    free(keys);
    free(vals);
    return rc;
}

static int train(int argc, char **argv);

int loom_cmd_train(int argc, char **argv) {
    loom_heartbeat_start(); /* under a supervisor: beating from the start, so a hang at set-up is seen too */
    const int rc = train(argc, argv);
    loom_heartbeat_stop(rc);
    return rc;
}

/* the median ms of a run's steps after the first (its metrics file), or -1 */
static double measured_step_ms(const loom_run_config *run) {
    char path[LOOM_PATH_MAX + 32];
    if (run->train.metrics[0]) snprintf(path, sizeof path, "%s", run->train.metrics);
    else snprintf(path, sizeof path, "%s/metrics.jsonl", run->train.out);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    double ms[4096];
    int n = 0;
    char line[65536];
    while (n < 4096 && fgets(line, sizeof line, f)) {
        loom_json *j = NULL;
        if (loom_json_parse(line, strlen(line), &j) != LOOM_OK) {
            loom_error_clear();
            continue;
        }
        const loom_json *v = loom_json_get(j, "ms");
        if (v && v->type == LOOM_JSON_NUMBER) ms[n++] = v->number;
        loom_json_free(&j);
    }
    fclose(f);
    if (n < 2) return n ? ms[0] : -1;
    for (int a = 1; a < n; a++) /* sort the steps after the first */
        for (int b = a + 1; b < n; b++)
            if (ms[b] < ms[a]) { const double x = ms[a]; ms[a] = ms[b]; ms[b] = x; }
    return ms[1 + (n - 1) / 2];
}

/* --auto: the planner's first layout for `ranks` ranks into *run; *predicted_ms its prediction */
static int auto_layout(loom_run_config *run, int ranks, int root, const char *cluster_path, double *predicted_ms) {
    loom_cluster *c = NULL;
    const int code = loom_cli_cluster_load("train", cluster_path, &c);
    if (code) return code;
    loom_plan_search so;
    memset(&so, 0, sizeof so);
    so.try_offload = 1;
    loom_plan_choice *ch = NULL;
    int n = 0;
    const loom_status st = loom_plan_auto(run, ranks, c, &so, 1, &ch, &n);
    free(c);
    if (st != LOOM_OK) return loom_cli_fail("train");
    if (!n) {
        free(ch);
        fprintf(stderr, "loom train: --auto: no layout of %d ranks fits\n", ranks);
        return 2;
    }
    *run = ch[0].rc;
    *predicted_ms = ch[0].t.step_s * 1e3;
    const loom_train_config *t = &run->train;
    if (root)
        LOOM_INFO("auto: %lld layouts searched; the first: mesh %s, ZeRO-%lld, batch %lld x %lld micro-batches, recompute %s, "
              "%s, %lld threads; predicted %.1f ms/step", (long long)so.evaluated, t->mesh, (long long)t->zero,
              (long long)t->batch, (long long)t->grad_accum,
              t->recompute == LOOM_RECOMPUTE_FULL ? "full" : t->recompute == LOOM_RECOMPUTE_ATTN ? "attn" : "none",
              t->precision == LOOM_PRECISION_BF16 ? "bf16" : "fp32", (long long)t->threads, *predicted_ms);
    free(ch);
    return 0;
}

static int train(int argc, char **argv) {
    loom_run_config run;
    double peak = -1;
    int autop = 0;
    const char *cluster_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--auto")) autop = 1;
        else if (!strcmp(argv[i], "--cluster") && i + 1 < argc) cluster_path = argv[++i];
    }
    static const char *const own[] = {"--auto", "0", "--cluster", "1", NULL};
    int rc = loom_cli_run_config(argc, argv, "train", own, &run, &peak);
    if (rc) return rc < 0 ? 0 : 2; /* the configuration: a restart would fail the same way */
    loom_comm *world = NULL; /* held here, so that MPI outlives the run for an abort */
    double predicted_ms = -1;
    if (autop) { /* the layout for this job's ranks (every rank plans the same) */
        if (loom_comm_init_world(&world) != LOOM_OK) return loom_cli_fail("train");
        if ((rc = auto_layout(&run, loom_comm_size(world), loom_comm_rank(world) == 0, cluster_path, &predicted_ms)) != 0) {
            loom_comm_free(&world);
            return rc;
        }
    }
    int threads = (int)run.train.threads;
    if (threads == 0) threads = loom_cli_cores();
    char kernel[300] = "given by --peak-gflops";
    /* the host's GEMM peak for the CPU devices; a GPU's is measured on it by the trainer (peak stays < 0) */
    if (peak < 0 && !strncmp(run.train.device, "cpu", 3))
        peak = loom_cli_peak_gflops(threads, (loom_precision)run.train.precision, kernel, sizeof kernel);
    loom_train_install_signal_handlers();
    if (!world && loom_comm_init_world(&world) != LOOM_OK) return loom_cli_fail("train");
    loom_status st = loom_train(&run, world, peak, kernel);
    if (st == LOOM_OK && autop && loom_comm_rank(world) == 0) {
        const double ms = measured_step_ms(&run);
        if (ms > 0) printf("auto: predicted %.1f ms/step, measured %.1f ms/step (median after the first step): %+.1f%%\n",
                           predicted_ms, ms, 100 * (predicted_ms - ms) / ms);
    }
    if (st == LOOM_ERR_INTERRUPTED) {
        fprintf(stderr, "loom train: %s\n", loom_error_message());
        rc = 130;
    } else if (st != LOOM_OK) {
        rc = loom_cli_fail("train");
        if (st == LOOM_ERR_CONFIG || st == LOOM_ERR_MISMATCH) rc = 2;
        if (loom_train_resume_failed()) rc = 3;
    } else {
        rc = 0;
    }
    /* an error of this rank alone: the others may wait for it in a collective; end them all now */
    if (st != LOOM_OK && !loom_error_is_collective()) {
        loom_heartbeat_stop(rc); /* the supervisor hears which rank failed before the abort kills the rest */
        loom_comm_abort(world, rc);
    }
    loom_comm_free(&world);
    return rc;
}
