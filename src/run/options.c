/* The typed option table behind `loom train`: every key, its type, default and help. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "loom/run.h"

typedef enum { OPT_INT, OPT_FLOAT, OPT_BOOL, OPT_STRING, OPT_ENUM, OPT_BYTES } opt_type;

typedef struct {
    const char *key;
    opt_type type;
    size_t offset;
    size_t size; /* strings: buffer size */
    const char *const *choices;
    const char *help;
} option;

static const char *const family_choices[] = {"gpt2", "llama", NULL};
static const char *const optim_choices[] = {"adamw", "sgd", "lamb", "lars", NULL};
static const char *const sched_choices[] = {"cosine", "linear", "constant", NULL};
static const char *const rc_choices[] = {"none", "attn", "full", NULL};
static const char *const gelu_choices[] = {"tanh", "erf", NULL}; /* loom_gelu's order */
static const char *const precision_choices[] = {"fp32", "bf16", "fp16", NULL}; /* loom_precision's order */
static const char *const pp_choices[] = {"1f1b", "interleaved", NULL}; /* loom_pp_schedule's order */
static const char *const base_dtype_choices[] = {"fp32", "bf16", NULL};
static const char *const transport_choices[] = {"auto", "mpi", "shm", NULL}; /* loom_dp_transport's order */

#define M(f) offsetof(loom_run_config, model.f)
#define O(f) offsetof(loom_run_config, optim.f)
#define T(f) offsetof(loom_run_config, train.f)
#define S(f) sizeof(((loom_run_config *)0)->train.f)

static const option options[] = {
    {"model.family", OPT_ENUM, M(family), 0, family_choices, "gpt2 (LayerNorm, GELU, learned positions, tied head) or llama (RMSNorm, RoPE, SwiGLU, GQA)"},
    {"model.n_layer", OPT_INT, M(n_layer), 0, NULL, "transformer blocks"},
    {"model.n_head", OPT_INT, M(n_head), 0, NULL, "attention (query) heads"},
    {"model.n_kv_head", OPT_INT, M(n_kv_head), 0, NULL, "key/value heads (grouped-query attention; = n_head for gpt2)"},
    {"model.d_model", OPT_INT, M(d_model), 0, NULL, "width"},
    {"model.d_ff", OPT_INT, M(d_ff), 0, NULL, "MLP hidden size"},
    {"model.vocab_size", OPT_INT, M(vocab_size), 0, NULL, "vocabulary size"},
    {"model.max_seq_len", OPT_INT, M(max_seq_len), 0, NULL, "longest sequence (gpt2: rows of the position table)"},
    {"model.norm_eps", OPT_FLOAT, M(norm_eps), 0, NULL, "LayerNorm/RMSNorm epsilon"},
    {"model.rope_theta", OPT_FLOAT, M(rope_theta), 0, NULL, "RoPE base (llama)"},
    {"model.tie_embeddings", OPT_BOOL, M(tie_embeddings), 0, NULL, "head shares the token embedding"},
    {"model.bias", OPT_BOOL, M(bias), 0, NULL, "linear layers (and GPT-2's LayerNorms) have biases"},
    {"model.gelu", OPT_ENUM, M(gelu), 0, gelu_choices, "gpt2 MLP activation: tanh (GPT-2's approximation) or erf (exact, PyTorch nn.GELU)"},
    {"model.init_std", OPT_FLOAT, M(init_std), 0, NULL, "init standard deviation (residual projections / sqrt(2L))"},
    {"optim.kind", OPT_ENUM, O(kind), 0, optim_choices, "optimizer"},
    {"optim.lr", OPT_FLOAT, O(lr), 0, NULL, "peak learning rate"},
    {"optim.min_lr", OPT_FLOAT, O(min_lr), 0, NULL, "learning rate at the end of the decay"},
    {"optim.warmup_steps", OPT_INT, O(warmup_steps), 0, NULL, "linear warm-up steps"},
    {"optim.decay_steps", OPT_INT, O(decay_steps), 0, NULL, "step where the decay reaches min_lr (0 = train.steps)"},
    {"optim.schedule", OPT_ENUM, O(schedule), 0, sched_choices, "decay after warm-up"},
    {"optim.beta1", OPT_FLOAT, O(beta1), 0, NULL, "AdamW/LAMB first-moment decay"},
    {"optim.beta2", OPT_FLOAT, O(beta2), 0, NULL, "AdamW/LAMB second-moment decay"},
    {"optim.eps", OPT_FLOAT, O(eps), 0, NULL, "AdamW/LAMB epsilon"},
    {"optim.weight_decay", OPT_FLOAT, O(weight_decay), 0, NULL, "decoupled weight decay (matrices and embeddings)"},
    {"optim.decay_all", OPT_BOOL, O(decay_all), 0, NULL, "also decay norms and biases"},
    {"optim.momentum", OPT_FLOAT, O(momentum), 0, NULL, "SGD/LARS momentum"},
    {"optim.nesterov", OPT_BOOL, O(nesterov), 0, NULL, "SGD Nesterov momentum"},
    {"optim.trust_coef", OPT_FLOAT, O(trust_coef), 0, NULL, "LARS trust coefficient"},
    {"optim.grad_clip", OPT_FLOAT, O(grad_clip), 0, NULL, "global gradient-norm clip (0 = off)"},
    {"train.steps", OPT_INT, T(steps), 0, NULL, "optimizer steps of the whole run (--steps)"},
    {"train.stop_after", OPT_INT, T(stop_after), 0, NULL, "checkpoint and stop after this step, as if interrupted (0 = never)"},
    {"train.batch", OPT_INT, T(batch), 0, NULL, "micro-batch size B over all dp ranks, each gets B/dp (--batch)"},
    {"train.seq_len", OPT_INT, T(seq_len), 0, NULL, "sequence length T (--seq-len)"},
    {"train.grad_accum", OPT_INT, T(grad_accum), 0, NULL, "micro-batches per optimizer step (--grad-accum)"},
    {"train.threads", OPT_INT, T(threads), 0, NULL, "threads, 0 = all cores (--threads)"},
    {"train.device", OPT_STRING, T(device), S(device), NULL, "backend: cpu, cuda (when built with the CUDA toolkit), or cpu-isolated (tests: the CPU kernels over memory the host code cannot touch) (--device)"},
    {"train.data", OPT_STRING, T(data), S(data), NULL, "synthetic | text file | directory of text files | .bin uint16 tokens (--data)"},
    {"train.val_fraction", OPT_FLOAT, T(val_fraction), 0, NULL, "tail of the data held out for validation"},
    {"train.eval_interval", OPT_INT, T(eval_interval), 0, NULL, "steps between validations (0 = at the end only)"},
    {"train.eval_batches", OPT_INT, T(eval_batches), 0, NULL, "micro-batches per validation"},
    {"train.ckpt_interval", OPT_INT, T(ckpt_interval), 0, NULL, "steps between checkpoints (0 = at the end and on a signal)"},
    {"train.save_checkpoints", OPT_BOOL, T(save_checkpoints), 0, NULL, "write checkpoints (false: benchmarks that must not spend disk or time on them)"},
    {"train.log_interval", OPT_INT, T(log_interval), 0, NULL, "steps between plain log lines"},
    {"train.seed", OPT_INT, T(seed), 0, NULL, "seed for weights and data order (--seed)"},
    {"train.out", OPT_STRING, T(out), S(out), NULL, "run directory for checkpoint.bin and metrics.jsonl (--out)"},
    {"train.metrics", OPT_STRING, T(metrics), S(metrics), NULL, "metrics JSONL file (--metrics; default <out>/metrics.jsonl)"},
    {"train.resume", OPT_BOOL, T(resume), 0, NULL, "continue from <out>/checkpoint.bin (--resume)"},
    {"train.resume_from", OPT_STRING, T(resume_from), S(resume_from), NULL, "continue from this checkpoint instead of <out>'s newest: a run directory, a kept step's shard directory (<out>/shards/step-N) or a checkpoint file; implies --resume"},
    {"train.keep_checkpoints", OPT_INT, T(keep_checkpoints), 0, NULL, "sharded checkpoints: the newest N steps' shards stay on disk, each with its own manifest (older ones are removed)"},
    {"train.init_from", OPT_STRING, T(init_from), S(init_from), NULL, "start a new run from this checkpoint's weights, with a fresh optimizer, step 0 and the data from its start (fine-tuning; --init): a run directory, a kept step's shard directory, a checkpoint file, or a Hugging Face directory (config.json + safetensors; imported first into <out>/init-hf); the model must be the checkpoint's"},
    {"train.resume_if_any", OPT_BOOL, T(resume_if_any), 0, NULL, "resume from the newest intact checkpoint (in-memory snapshot, then disk, newest first), or start afresh when there is none (--resume-if-any; what the supervisor's restarts use)"},
    {"train.lora", OPT_STRING, T(lora), S(lora), NULL, "LoRA fine-tuning (--lora): 'r=16,alpha=32,dropout=0.05,targets=attn,mlp[,rslora=1]' trains low-rank adapters beside the frozen weights of --init (targets: qkv, proj, fc|gate_up, down, attn, mlp, all); with --resume, --init names the same base again"},
    {"train.lora_base_dtype", OPT_ENUM, T(lora_base_dtype), 0, base_dtype_choices, "LoRA: hold the frozen base in bf16 only, half its memory (--lora-base-dtype; needs --precision bf16)"},
    {"train.snapshot_interval", OPT_INT, T(snapshot_interval), 0, NULL, "steps between in-memory snapshots of the training state (shared memory: they outlive a crashed process; 0 = none)"},
    {"train.snapshot_dir", OPT_STRING, T(snapshot_dir), S(snapshot_dir), NULL, "where snapshots go (default /dev/shm/loom-<uid>-<hash of the run directory>)"},
    {"train.ckpt_async", OPT_BOOL, T(ckpt_async), 0, NULL, "disk checkpoints: the step pays for a snapshot in memory, a background thread writes the files"},
    {"train.spike_zscore", OPT_FLOAT, T(spike_zscore), 0, NULL, "a loss this many standard deviations above the last spike_window steps' mean rolls back to the last snapshot and skips the data since (0 = off)"},
    {"train.spike_window", OPT_INT, T(spike_window), 0, NULL, "steps in the loss spike window (8-64)"},
    {"train.max_bad_steps", OPT_INT, T(max_bad_steps), 0, NULL, "steps with a non-finite gradient norm skipped in a row before the run fails"},
    {"train.skip_steps", OPT_STRING, T(skip_steps), S(skip_steps), NULL, "steps that consume their data and count but do not train, e.g. \"100-120,250\" (as Megatron's --skip-train-iteration-range)"},
    {"train.recompute", OPT_ENUM, T(recompute), 0, rc_choices, "activation recompute (--recompute)"},
    {"train.profile", OPT_BOOL, T(profile), 0, NULL, "print where the time went, per kernel category (--profile)"},
    {"train.blas_coretype", OPT_STRING, T(blas_coretype), S(blas_coretype), NULL, "OpenBLAS kernel: auto | keep | a core name (--blas-coretype)"},
    {"train.progress", OPT_INT, T(progress), 0, NULL, "1 progress line, 0 plain lines, -1 auto (terminal)"},
    {"train.fit_vocab", OPT_BOOL, T(fit_vocab), 0, NULL, "grow model.vocab_size to fit the data's tokenizer (off when model.vocab_size is set)"},
    {"train.sample_tokens", OPT_INT, T(sample_tokens), 0, NULL, "print a generated sample of this many tokens at the end (--sample)"},
    {"train.mesh", OPT_STRING, T(mesh), S(mesh), NULL, "process mesh, e.g. dp=4 (--mesh; default: dp = every MPI rank)"},
    {"train.zero", OPT_INT, T(zero), 0, NULL, "ZeRO stage over dp: 0 replicate, 1 shard optimizer state, 2 + gradients, 3 + parameters (--zero)"},
    {"train.dp_overlap", OPT_BOOL, T(dp_overlap), 0, NULL, "reduce gradients during the backward pass (0: after it)"},
    {"train.dp_transport", OPT_ENUM, T(dp_transport), 0, transport_choices, "gradient reductions: auto (node-shared memory when every dp rank is on one node, stages 0-1), mpi, shm"},
    {"train.tp_seq_parallel", OPT_BOOL, T(tp_seq_parallel), 0, NULL, "tp > 1: norms and residuals on B*T/tp rows per rank, all-gather + reduce-scatter instead of all-reduce"},
    {"train.precision", OPT_ENUM, T(precision), 0, precision_choices, "fp32, bf16 (weight products in bf16, fp32 accumulation and master state) or fp16 (likewise, with dynamic loss scaling) (--precision)"},
    {"train.loss_scale", OPT_FLOAT, T(loss_scale), 0, NULL, "fp16: the initial loss scale (a power of two); halved on overflow (the step skipped)"},
    {"train.loss_scale_window", OPT_INT, T(loss_scale_window), 0, NULL, "fp16: good steps in a row after which the loss scale doubles"},
    {"train.pp_schedule", OPT_ENUM, T(pp_schedule), 0, pp_choices, "pipeline schedule (mesh pp > 1): 1f1b or interleaved (virtual stages)"},
    {"train.pp_virtual", OPT_INT, T(pp_virtual), 0, NULL, "interleaved schedule: chunks per pipeline rank"},
    {"train.mem_budget", OPT_BYTES, T(mem_budget), 0, NULL, "RAM for this rank's parameters, gradients, optimizer state and their workspace (all but activations), e.g. 2G (0 = no budget) (--mem-budget)"},
    {"train.offload", OPT_BOOL, T(offload), 0, NULL, "let the memory manager keep what the budget cannot hold in files (0: over budget is an error)"},
    {"train.mem_chunk", OPT_BYTES, T(mem_chunk), 0, NULL, "memory manager chunk, the unit of placement and transfer"},
    {"train.offload_dir", OPT_STRING, T(offload_dir), S(offload_dir), NULL, "directory of the memory manager's scratch files (default: --out)"},
    {"train.mem_trace", OPT_STRING, T(mem_trace), S(mem_trace), NULL, "JSON lines: what lived where and the bytes moved each step (--mem-trace)"},
    {"train.comm_timeout", OPT_FLOAT, T(comm_timeout), 0, NULL, "seconds a collective may wait before the run fails (0 = forever)"},
};
#define N_OPTIONS (sizeof options / sizeof options[0])

loom_status loom_run_config_init(loom_run_config *c, const char *preset) {
    memset(c, 0, sizeof *c);
    snprintf(c->preset, sizeof c->preset, "%s", preset ? preset : "demo");
    LOOM_CALL(loom_model_config_preset(c->preset, &c->model));
    c->optim = loom_optim_config_default();
    loom_train_config *t = &c->train;
    t->steps = 200;
    t->batch = 8;
    t->seq_len = c->model.max_seq_len < 64 ? c->model.max_seq_len : 64;
    t->grad_accum = 1;
    t->threads = 0;
    snprintf(t->device, sizeof t->device, "cpu");
    snprintf(t->data, sizeof t->data, "synthetic");
    t->val_fraction = 0.1;
    t->eval_interval = 0;
    t->eval_batches = 8;
    t->ckpt_interval = 0;
    t->log_interval = 10;
    t->seed = 1337;
    snprintf(t->out, sizeof t->out, "runs/%s", c->preset);
    t->recompute = LOOM_RECOMPUTE_NONE;
    snprintf(t->blas_coretype, sizeof t->blas_coretype, "auto");
    t->progress = -1;
    t->fit_vocab = 1;
    t->dp_overlap = 1;
    t->pp_virtual = 2;
    t->comm_timeout = 300;
    t->keep_checkpoints = 1;
    t->spike_window = 32;
    t->max_bad_steps = 8;
    t->offload = 1;
    t->save_checkpoints = 1;
    t->loss_scale = 65536.0;
    t->loss_scale_window = 2000;
    t->mem_chunk = (int64_t)16 << 20;
    return LOOM_OK;
}

/* Walks "a-b,c": calls back with each range; 0 when malformed. */
static int skip_ranges(const char *spec, int64_t step, int *hit) {
    const char *p = spec;
    *hit = 0;
    while (*p) {
        char *end;
        const long long a = strtoll(p, &end, 10);
        long long b = a;
        if (end == p || a < 1) return 0;
        p = end;
        if (*p == '-') {
            b = strtoll(p + 1, &end, 10);
            if (end == p + 1 || b < a) return 0;
            p = end;
        }
        if (step >= a && step <= b) *hit = 1;
        if (*p == ',') p++;
        else if (*p) return 0;
    }
    return 1;
}

loom_status loom_run_skip_steps_check(const char *spec) {
    int hit;
    LOOM_CHECK(skip_ranges(spec, 0, &hit), LOOM_ERR_CONFIG,
               "train.skip_steps '%s': expected steps and ranges such as \"100-120,250\" (steps >= 1, a <= b)", spec);
    return LOOM_OK;
}

int loom_run_skip_steps_has(const char *spec, int64_t step) {
    int hit = 0;
    return spec[0] && skip_ranges(spec, step, &hit) && hit;
}

static const option *find_option(const char *key) {
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strcmp(options[i].key, key) == 0) return &options[i];
    return NULL;
}

static loom_status unknown_key(const char *key) {
    /* name the closest section's keys to help the user */
    char known[2048] = "";
    const char *dot = strchr(key, '.');
    size_t sec = dot ? (size_t)(dot - key) : 0;
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (sec && strncmp(options[i].key, key, sec + 1) == 0 && strlen(known) + strlen(options[i].key) + 3 < sizeof known) {
            strcat(known, known[0] ? ", " : "");
            strcat(known, options[i].key);
        }
    return loom_error_set(LOOM_ERR_CONFIG, __FILE__, __LINE__, __func__, "unknown config key '%s'%s%s%s", key,
                          known[0] ? " (known: " : " (see loom train --help)", known, known[0] ? ")" : "");
}

static loom_status set_value(loom_run_config *c, const option *o, const char *value) {
    char *base = (char *)c + o->offset;
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case OPT_BYTES: { /* an integer with an optional K, M, G or T (powers of 1024) */
        double d = strtod(value, &end);
        double mult = 1;
        if (end != value && *end && !end[1]) {
            const char *units = "KMGT", *u = strchr(units, end[0] & ~0x20);
            if (u && *u) {
                mult = pow(1024.0, (double)(u - units + 1));
                end++;
            }
        }
        LOOM_CHECK(end != value && *end == '\0' && isfinite(d) && d >= 0 && d * mult < 9e18, LOOM_ERR_CONFIG,
                   "%s expects a size in bytes such as 512M or 2G, got '%s'", o->key, value);
        *(int64_t *)base = (int64_t)(d * mult);
        return LOOM_OK;
    }
    case OPT_INT: {
        long long v = strtoll(value, &end, 10);
        if (end && *end == '\0' && end != value && errno == 0) {
            *(int64_t *)base = v;
            return LOOM_OK;
        }
        /* accept integral floats such as 1e4 */
        double d = strtod(value, &end);
        LOOM_CHECK(end != value && *end == '\0' && isfinite(d) && d == floor(d) && fabs(d) < 9e18, LOOM_ERR_CONFIG,
                   "%s expects an integer, got '%s'", o->key, value);
        *(int64_t *)base = (int64_t)d;
        return LOOM_OK;
    }
    case OPT_FLOAT: {
        double d = strtod(value, &end);
        LOOM_CHECK(end != value && *end == '\0' && isfinite(d), LOOM_ERR_CONFIG, "%s expects a number, got '%s'",
                   o->key, value);
        *(double *)base = d;
        return LOOM_OK;
    }
    case OPT_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes")) *(int *)base = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no")) *(int *)base = 0;
        else return loom_error_set(LOOM_ERR_CONFIG, __FILE__, __LINE__, __func__, "%s expects true or false, got '%s'", o->key, value);
        return LOOM_OK;
    case OPT_STRING:
        LOOM_CHECK(strlen(value) < o->size, LOOM_ERR_CONFIG, "%s is too long (%zu characters, at most %zu)", o->key,
                   strlen(value), o->size - 1);
        snprintf(base, o->size, "%s", value);
        return LOOM_OK;
    case OPT_ENUM:
        for (int i = 0; o->choices[i]; i++)
            if (strcmp(o->choices[i], value) == 0) {
                *(int *)base = i;
                return LOOM_OK;
            }
        {
            char list[256] = "";
            for (int i = 0; o->choices[i]; i++) {
                strcat(list, i ? "|" : "");
                strcat(list, o->choices[i]);
            }
            return loom_error_set(LOOM_ERR_CONFIG, __FILE__, __LINE__, __func__, "%s expects one of %s, got '%s'",
                                  o->key, list, value);
        }
    }
    return LOOM_ERR_INTERNAL;
}

loom_status loom_run_config_set(loom_run_config *c, const char *key, const char *value) {
    const option *o = find_option(key);
    if (!o) return unknown_key(key);
    LOOM_CALL(set_value(c, o, value));
    return LOOM_OK;
}

static loom_status apply_json_value(loom_run_config *c, const char *key, const loom_json *v, const char *origin) {
    const option *o = find_option(key);
    if (!o) {
        loom_status st = unknown_key(key);
        loom_error_trace(__FILE__, __LINE__, origin);
        return st;
    }
    char buf[LOOM_PATH_MAX];
    switch (v->type) {
    case LOOM_JSON_NUMBER: snprintf(buf, sizeof buf, "%.17g", v->number); break;
    case LOOM_JSON_BOOL: snprintf(buf, sizeof buf, "%s", v->boolean ? "true" : "false"); break;
    case LOOM_JSON_STRING:
        LOOM_CHECK(o->type == OPT_STRING || o->type == OPT_ENUM || o->type == OPT_BYTES, LOOM_ERR_CONFIG,
                   "%s: %s expects a %s, got a string",
                   origin, key, o->type == OPT_BOOL ? "boolean" : "number");
        snprintf(buf, sizeof buf, "%s", v->string);
        break;
    default:
        return loom_error_set(LOOM_ERR_CONFIG, __FILE__, __LINE__, __func__, "%s: %s must be a number, string or boolean",
                              origin, key);
    }
    LOOM_CHECK(v->type != LOOM_JSON_NUMBER || o->type == OPT_INT || o->type == OPT_FLOAT || o->type == OPT_BYTES, LOOM_ERR_CONFIG,
               "%s: %s expects a %s, got a number", origin, key, o->type == OPT_BOOL ? "boolean" : "string");
    LOOM_CHECK(v->type != LOOM_JSON_BOOL || o->type == OPT_BOOL, LOOM_ERR_CONFIG, "%s: %s expects a %s, got a boolean",
               origin, key, o->type == OPT_STRING || o->type == OPT_ENUM ? "string" : "number");
    loom_status st = set_value(c, o, buf);
    if (st != LOOM_OK) loom_error_trace(__FILE__, __LINE__, origin);
    return st;
}

loom_status loom_run_config_apply_json(loom_run_config *c, const loom_json *obj, const char *origin) {
    LOOM_CHECK(obj && obj->type == LOOM_JSON_OBJECT, LOOM_ERR_CONFIG, "%s: a config must be a JSON object", origin);
    for (const loom_json *e = obj->child; e; e = e->next) {
        if (strcmp(e->key, "preset") == 0) continue; /* applied by the caller first */
        if (e->type == LOOM_JSON_OBJECT) {
            LOOM_CHECK(!strcmp(e->key, "model") || !strcmp(e->key, "optim") || !strcmp(e->key, "train"), LOOM_ERR_CONFIG,
                       "%s: unknown config section '%s' (known: model, optim, train)", origin, e->key);
            for (const loom_json *f = e->child; f; f = f->next) {
                char key[256];
                snprintf(key, sizeof key, "%s.%s", e->key, f->key);
                LOOM_CALL(apply_json_value(c, key, f, origin));
            }
        } else {
            LOOM_CALL(apply_json_value(c, e->key, e, origin));
        }
    }
    return LOOM_OK;
}

loom_status loom_run_config_validate(const loom_run_config *c) {
    LOOM_CALL(loom_model_config_validate(&c->model));
    LOOM_CALL(loom_optim_config_validate(&c->optim));
    const loom_train_config *t = &c->train;
    LOOM_CHECK(t->steps >= 1, LOOM_ERR_CONFIG, "train.steps must be >= 1, got %lld", (long long)t->steps);
    LOOM_CHECK(t->stop_after >= 0, LOOM_ERR_CONFIG, "train.stop_after must be >= 0");
    LOOM_CHECK(t->snapshot_interval >= 0, LOOM_ERR_CONFIG, "train.snapshot_interval must be >= 0");
    LOOM_CHECK(!t->init_from[0] || t->lora[0] || (!t->resume && !t->resume_from[0]), LOOM_ERR_CONFIG,
               "train.init_from (--init) starts a new run from a checkpoint's weights and train.resume continues one: "
               "give one of them (with --lora, --init names the frozen base, on resume too)");
    if (t->lora[0]) {
        loom_lora_config lc;
        LOOM_CALL(loom_lora_config_parse(t->lora, &lc));
        LOOM_CHECK(t->precision != LOOM_PRECISION_FP16, LOOM_ERR_UNSUPPORTED, "LoRA runs in fp32 or bf16 (not fp16 yet)");
        LOOM_CHECK(t->mem_budget == 0, LOOM_ERR_UNSUPPORTED, "LoRA does not compose with train.mem_budget (offload) yet");
    }
    LOOM_CHECK(!t->lora_base_dtype || (t->lora[0] && t->precision == LOOM_PRECISION_BF16), LOOM_ERR_CONFIG,
               "train.lora_base_dtype bf16 (--lora-base-dtype) holds a LoRA run's frozen base in bf16: it needs --lora "
               "and --precision bf16");
    LOOM_CHECK(t->spike_zscore >= 0 && isfinite(t->spike_zscore), LOOM_ERR_CONFIG, "train.spike_zscore must be >= 0");
    LOOM_CHECK(t->spike_window >= 8 && t->spike_window <= LOOM_SPIKE_WINDOW_MAX, LOOM_ERR_CONFIG,
               "train.spike_window must be 8-%d, got %lld", LOOM_SPIKE_WINDOW_MAX, (long long)t->spike_window);
    LOOM_CHECK(t->max_bad_steps >= 1, LOOM_ERR_CONFIG, "train.max_bad_steps must be >= 1");
    LOOM_CHECK(!t->ckpt_async || t->save_checkpoints, LOOM_ERR_CONFIG,
               "train.ckpt_async writes checkpoints: it needs train.save_checkpoints");
    LOOM_CALL(loom_run_skip_steps_check(t->skip_steps));
    LOOM_CHECK(t->keep_checkpoints >= 1 && t->keep_checkpoints <= 1000000, LOOM_ERR_CONFIG,
               "train.keep_checkpoints must be >= 1, got %lld", (long long)t->keep_checkpoints);
    LOOM_CHECK(t->zero >= 0 && t->zero <= 3, LOOM_ERR_CONFIG, "train.zero must be 0, 1, 2 or 3, got %lld", (long long)t->zero);
    LOOM_CHECK(t->loss_scale >= 1 && t->loss_scale <= 1e30 && frexp(t->loss_scale, &(int){0}) == 0.5 &&
                   t->loss_scale_window >= 1, LOOM_ERR_CONFIG,
               "train.loss_scale must be a power of two >= 1 (got %g) and train.loss_scale_window >= 1 (got %lld)",
               t->loss_scale, (long long)t->loss_scale_window);
    LOOM_CHECK(t->mem_chunk >= 4096 && t->mem_chunk % 4096 == 0, LOOM_ERR_CONFIG,
               "train.mem_chunk must be a positive multiple of 4096 bytes, got %lld", (long long)t->mem_chunk);
    loom_mesh_shape ms;
    LOOM_CALL(loom_mesh_shape_parse(t->mesh, &ms));
    LOOM_CHECK(t->batch >= 1 && t->batch <= 65536, LOOM_ERR_CONFIG, "train.batch must be in [1, 65536], got %lld",
               (long long)t->batch);
    LOOM_CHECK(t->seq_len >= 1 && t->seq_len <= c->model.max_seq_len, LOOM_ERR_CONFIG,
               "train.seq_len must be in [1, model.max_seq_len=%lld], got %lld", (long long)c->model.max_seq_len,
               (long long)t->seq_len);
    LOOM_CHECK(t->grad_accum >= 1, LOOM_ERR_CONFIG, "train.grad_accum must be >= 1, got %lld", (long long)t->grad_accum);
    LOOM_CHECK(t->threads >= 0 && t->threads <= 4096, LOOM_ERR_CONFIG, "train.threads must be in [0, 4096]");
    LOOM_CHECK(t->eval_interval >= 0 && t->eval_batches >= 1 && t->ckpt_interval >= 0 && t->log_interval >= 1,
               LOOM_ERR_CONFIG, "train.eval_interval, ckpt_interval >= 0 and eval_batches, log_interval >= 1");
    LOOM_CHECK(t->val_fraction >= 0 && t->val_fraction < 1, LOOM_ERR_CONFIG, "train.val_fraction must be in [0, 1)");
    LOOM_CHECK(t->out[0] != '\0', LOOM_ERR_CONFIG, "train.out must name a directory");
    LOOM_CHECK(t->sample_tokens >= 0, LOOM_ERR_CONFIG, "train.sample_tokens must be >= 0");
    return LOOM_OK;
}

void loom_run_config_print_help(FILE *f) {
    loom_run_config d;
    if (loom_run_config_init(&d, "demo") != LOOM_OK) return;
    fprintf(f, "Config keys (JSON file sections or --set key=value; defaults shown for --preset demo):\n");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const option *o = &options[i];
        const char *base = (const char *)&d + o->offset;
        char def[128];
        switch (o->type) {
        case OPT_INT:
        case OPT_BYTES: snprintf(def, sizeof def, "%lld", (long long)*(const int64_t *)base); break;
        case OPT_FLOAT: snprintf(def, sizeof def, "%g", *(const double *)base); break;
        case OPT_BOOL: snprintf(def, sizeof def, "%s", *(const int *)base ? "true" : "false"); break;
        case OPT_STRING: snprintf(def, sizeof def, "\"%s\"", base); break;
        case OPT_ENUM: snprintf(def, sizeof def, "%s", o->choices[*(const int *)base]); break;
        }
        fprintf(f, "  %-22s %-12s %s\n", o->key, def, o->help);
    }
}

void loom_model_config_to_json(const loom_model_config *m, loom_strbuf *sb) {
    loom_strbuf_printf(sb,
                       "{\"family\":\"%s\",\"n_layer\":%lld,\"n_head\":%lld,\"n_kv_head\":%lld,\"d_model\":%lld,"
                       "\"d_ff\":%lld,\"vocab_size\":%lld,\"max_seq_len\":%lld,\"norm_eps\":%.17g,\"rope_theta\":%.17g,"
                       "\"tie_embeddings\":%s,\"bias\":%s,\"gelu\":\"%s\",\"init_std\":%.17g}",
                       loom_family_name(m->family), (long long)m->n_layer, (long long)m->n_head,
                       (long long)m->n_kv_head, (long long)m->d_model, (long long)m->d_ff, (long long)m->vocab_size,
                       (long long)m->max_seq_len, m->norm_eps, m->rope_theta, m->tie_embeddings ? "true" : "false",
                       m->bias ? "true" : "false", m->gelu == LOOM_GELU_ERF ? "erf" : "tanh", m->init_std);
}

loom_status loom_model_config_from_json(const loom_json *obj, loom_model_config *m) {
    loom_run_config tmp;
    memset(&tmp, 0, sizeof tmp);
    LOOM_CHECK(obj && obj->type == LOOM_JSON_OBJECT, LOOM_ERR_FORMAT, "model config must be a JSON object");
    for (const loom_json *e = obj->child; e; e = e->next) {
        char key[256];
        snprintf(key, sizeof key, "model.%s", e->key);
        LOOM_CALL(apply_json_value(&tmp, key, e, "checkpoint"));
    }
    *m = tmp.model;
    return LOOM_OK;
}
