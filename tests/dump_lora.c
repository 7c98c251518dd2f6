/* Trains LoRA adapters on a small frozen model for 20 AdamW steps and writes what tests/test_lora.py
 * recomputes independently in PyTorch: the frozen weights, the adapters' initial values, every step's batch
 * (targets -1 where the loss is masked) and loss, and the adapters after the last step.
 * Usage: dump_lora gpt2|llama OUTFILE masked(0|1) [recompute: none|attn|full] [precision: fp32|bf16]
 * Every value crosses between the model and the host by an explicit copy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/backend.h"
#include "loom/model.h"
#include "loom/optim.h"
#include "loom/rng.h"

#include "dump_io.h"

#define STEPS 20


/* the views of a backend buffer of n floats, through a host copy */
static int put_views(FILE *f, loom_backend *be, const char *prefix, const float *buf, int64_t n,
                     const loom_param_info *(*info)(const loom_model *, int), int count, const loom_model *m) {
    float *host = malloc((size_t)n * sizeof(float));
    if (!host || loom_buf_download(be, host, buf, (size_t)n * sizeof(float))) return 1;
    for (int i = 0; i < count; i++) {
        const loom_param_info *p = info(m, i);
        char name[128];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        put(f, name, 0, p->ndim, p->shape, host + p->offset, 4);
    }
    free(host);
    return 0;
}

static int fail(void) {
    fprintf(stderr, "error: %s\n", loom_error_trace_text());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: dump_lora gpt2|llama OUTFILE masked(0|1) [none|attn|full] [fp32|bf16]\n");
        return 2;
    }
    const int llama = strcmp(argv[1], "llama") == 0, masked = atoi(argv[3]);
    loom_recompute rc = LOOM_RECOMPUTE_NONE;
    if (argc > 4) rc = strcmp(argv[4], "full") == 0 ? LOOM_RECOMPUTE_FULL : strcmp(argv[4], "attn") == 0 ? LOOM_RECOMPUTE_ATTN : LOOM_RECOMPUTE_NONE;
    const loom_precision prec = argc > 5 && !strcmp(argv[5], "bf16") ? LOOM_PRECISION_BF16 : LOOM_PRECISION_FP32;
    loom_model_config c;
    if (small_config(llama, &c)) return 1;
    const int64_t B = 2, T = 16, N = B * T;
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = 2;
    bc.quiet = 1;
    loom_backend *be;
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *m;
    loom_model_options mo = {.flags = LOOM_MODEL_GRADS, .precision = prec};
    /* every target, LLaMA's q/k/v and gate/up as separate adapters; scale 16 / 4 = 4 makes them matter */
    if (loom_lora_config_parse("r=4,alpha=16,targets=all", &mo.lora)) return fail();
    if (loom_backend_init(&bc, &be) || loom_model_init(&c, be, &mem, &mo, &m) || loom_model_reserve(m, B, T, rc) ||
        loom_model_init_frozen(m, 1234) || loom_model_init_weights(m, 7))
        return fail();
    /* the frozen norms and biases away from their trivial init */
    loom_rng r;
    loom_rng_seed(&r, 99);
    const int64_t nw = loom_model_weights_size(m);
    float *w = malloc((size_t)nw * sizeof(float));
    if (!w || loom_buf_download(be, w, loom_model_weights(m), (size_t)nw * sizeof(float))) return 1;
    for (int i = 0; i < loom_model_num_weight_infos(m); i++) {
        const loom_param_info *p = loom_model_weight_info(m, i);
        if (p->ndim == 1)
            for (int64_t j = 0; j < p->numel; j++) w[p->offset + j] += (float)(0.1 * loom_rng_normal(&r));
    }
    if (loom_buf_upload(be, loom_model_weights(m), w, (size_t)nw * sizeof(float)) || loom_model_refresh_low_precision(m))
        return fail();
    free(w);
    FILE *f = fopen(argv[2], "wb");
    if (!f) return 1;
    const loom_lora_config *lc = loom_model_lora(m);
    const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    char extra[256];
    snprintf(extra, sizeof extra, ",\"steps\":%d,\"lora_r\":%d,\"lora_alpha\":%.17g,\"masked\":%d,\"precision\":\"%s\"",
             STEPS, lc->r, lc->alpha, masked, prec == LOOM_PRECISION_BF16 ? "bf16" : "fp32");
    put_config(f, &c, B, T, lr, b1, b2, eps, wd, extra);
    int64_t bt[2] = {B, T}, one = 1;
    if (put_views(f, be, "param/", loom_model_weights(m), nw, loom_model_weight_info, loom_model_num_weight_infos(m), m) ||
        put_views(f, be, "lora/", loom_model_params(m), loom_model_buffer_size(m), loom_model_param_info,
                  loom_model_num_param_infos(m), m))
        return 1;
    loom_optim_config oc = loom_optim_config_default();
    oc.kind = LOOM_OPTIM_ADAMW;
    oc.lr = oc.min_lr = lr;
    oc.schedule = LOOM_SCHEDULE_CONSTANT;
    oc.warmup_steps = 0;
    oc.beta1 = b1;
    oc.beta2 = b2;
    oc.eps = eps;
    oc.weight_decay = wd;
    oc.grad_clip = 0;
    loom_optim *o;
    if (loom_optim_init(&oc, be, &mem, m, &o)) return fail();
    for (int s = 0; s < STEPS; s++) {
        int32_t tokens[64], targets[64];
        int64_t valid = 0;
        for (int64_t i = 0; i < N; i++) {
            tokens[i] = (int32_t)loom_rng_below(&r, (uint64_t)c.vocab_size);
            targets[i] = (int32_t)loom_rng_below(&r, (uint64_t)c.vocab_size);
            /* masked: a "prompt" of 3-10 positions at the start of each row takes no loss */
            if (masked && i % T < 3 + (i / T + s) % 8) targets[i] = -1;
            valid += targets[i] >= 0;
        }
        char name[64];
        snprintf(name, sizeof name, "step%d/tokens", s);
        put(f, name, 1, 2, bt, tokens, 4);
        snprintf(name, sizeof name, "step%d/targets", s);
        put(f, name, 1, 2, bt, targets, 4);
        float loss;
        if (loom_model_forward_backward(m, tokens, targets, B, T, 1.0f / (float)valid, 0, &loss) ||
            loom_optim_step(o, m, s, NULL))
            return fail();
        snprintf(name, sizeof name, "step%d/loss", s);
        put(f, name, 0, 1, &one, &loss, 4);
    }
    if (put_views(f, be, "final/", loom_model_params(m), loom_model_buffer_size(m), loom_model_param_info,
                  loom_model_num_param_infos(m), m))
        return 1;
    fclose(f);
    loom_optim_free(&o);
    loom_model_free(&m);
    loom_backend_free(&be);
    printf("wrote %s (%s, masked %d, recompute %d)\n", argv[2], argv[1], masked, (int)rc);
    return 0;
}
