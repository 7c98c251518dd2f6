/* Writes a small model's weights, logits, loss, gradients and one step of each optimizer to a file that
 * tests/torch_ref.py recomputes independently in PyTorch (float64) and compares.
 * Usage: dump_ref gpt2|llama OUTFILE [recompute: none|attn|full] [device: cpu|cpu-isolated|cuda]
 * Every value crosses between the model and the host by an explicit copy, so any backend can be checked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/backend.h"
#include "loom/model.h"
#include "loom/optim.h"
#include "loom/rng.h"

#include "dump_io.h"


/* every parameter of a flat buffer of the model's backend (parameters or gradients), through a host copy */
static int put_params(FILE *f, loom_model *m, const char *prefix, const float *buf, float *host) {
    if (loom_buf_download(loom_model_backend(m), host, buf, (size_t)loom_model_buffer_size(m) * sizeof(float)))
        return 1;
    for (int i = 0; i < loom_model_num_param_infos(m); i++) {
        const loom_param_info *p = loom_model_param_info(m, i);
        char name[128];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        put(f, name, 0, p->ndim, p->shape, host + p->offset, 4);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: dump_ref gpt2|gpt2-nobias|llama OUTFILE [none|attn|full] [cpu|cpu-isolated|cuda]\n"
                        "  (gpt2-nobias: nanoGPT's model, no biases and the exact erf GELU)\n");
        return 2;
    }
    int llama = strcmp(argv[1], "llama") == 0;
    loom_recompute rc = LOOM_RECOMPUTE_NONE;
    if (argc > 3) rc = strcmp(argv[3], "full") == 0 ? LOOM_RECOMPUTE_FULL : strcmp(argv[3], "attn") == 0 ? LOOM_RECOMPUTE_ATTN : LOOM_RECOMPUTE_NONE;
    loom_model_config c;
    if (small_config(llama, &c)) return 1;
    if (strcmp(argv[1], "gpt2-nobias") == 0) { /* nanoGPT's model: bias=False (no linear or LayerNorm bias), nn.GELU() */
        c.bias = 0;
        c.gelu = LOOM_GELU_ERF;
    }
    const int64_t B = 2, T = 16, N = B * T;
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = 2;
    bc.quiet = 1;
    bc.device = argc > 4 ? argv[4] : "cpu";
    loom_backend *be;
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *m;
    const loom_model_options mo = {.flags = LOOM_MODEL_GRADS};
    if (loom_backend_init(&bc, &be) || loom_model_init(&c, be, &mem, &mo, &m) || loom_model_reserve(m, B, T, rc) ||
        loom_model_init_weights(m, 1234)) {
        fprintf(stderr, "error: %s\n", loom_error_trace_text());
        return 1;
    }
    /* norms and biases away from their trivial init, so their gradients are tested on real values */
    loom_rng r;
    loom_rng_seed(&r, 99);
    const size_t pbytes = (size_t)loom_model_buffer_size(m) * sizeof(float);
    float *params = loom_model_params(m), *host = malloc(pbytes), *saved = malloc(pbytes);
    if (!host || !saved || loom_buf_download(be, host, params, pbytes)) return 1;
    for (int i = 0; i < loom_model_num_param_infos(m); i++) {
        const loom_param_info *p = loom_model_param_info(m, i);
        if (p->ndim == 1)
            for (int64_t j = 0; j < p->numel; j++) host[p->offset + j] += (float)(0.1 * loom_rng_normal(&r));
    }
    memcpy(saved, host, pbytes);
    if (loom_buf_upload(be, params, host, pbytes)) return 1;
    int32_t tokens[64], targets[64];
    for (int64_t i = 0; i < N; i++) {
        tokens[i] = (int32_t)loom_rng_below(&r, (uint64_t)c.vocab_size);
        targets[i] = (int32_t)loom_rng_below(&r, (uint64_t)c.vocab_size);
    }
    FILE *f = fopen(argv[2], "wb");
    if (!f) return 1;
    const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    put_config(f, &c, B, T, lr, b1, b2, eps, wd, ",\"step\":1");
    int64_t bt[2] = {B, T};
    put(f, "tokens", 1, 2, bt, tokens, 4);
    put(f, "targets", 1, 2, bt, targets, 4);
    if (put_params(f, m, "param/", params, host)) return 1;
    float loss = 0;
    float *logits = malloc((size_t)(N * c.vocab_size) * sizeof(float));
    if (!logits || loom_model_forward(m, tokens, targets, B, T, &loss) || loom_model_read_logits(m, logits)) return 1;
    int64_t lshape[3] = {B, T, c.vocab_size}, one = 1;
    put(f, "logits", 0, 3, lshape, logits, 4);
    free(logits);
    put(f, "loss", 0, 1, &one, &loss, 4);
    /* the gradient twice accumulated over two halves equals one full pass: exercise accumulation */
    if (loom_model_forward_backward(m, tokens, targets, B, T, 1.0f / (float)N, 0, &loss)) {
        fprintf(stderr, "error: %s\n", loom_error_trace_text());
        return 1;
    }
    if (put_params(f, m, "grad/", loom_model_grads(m), host)) return 1;
    static const struct { loom_optim_kind kind; const char *prefix; } opts[] = {
        {LOOM_OPTIM_ADAMW, "adamw/"}, {LOOM_OPTIM_LAMB, "lamb/"}, {LOOM_OPTIM_SGD, "sgd/"}, {LOOM_OPTIM_LARS, "lars/"}};
    for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++) {
        loom_optim_config oc = loom_optim_config_default();
        oc.kind = opts[k].kind;
        oc.lr = lr;
        oc.min_lr = lr;
        oc.schedule = LOOM_SCHEDULE_CONSTANT;
        oc.beta1 = b1;
        oc.beta2 = b2;
        oc.eps = eps;
        oc.weight_decay = wd;
        oc.grad_clip = 0;
        oc.momentum = 0.9;
        oc.nesterov = 1;
        loom_optim *o;
        if (loom_optim_init(&oc, be, &mem, m, &o) || loom_optim_step(o, m, 0, NULL)) {
            fprintf(stderr, "error: %s\n", loom_error_trace_text());
            return 1;
        }
        if (put_params(f, m, opts[k].prefix, params, host) || loom_buf_upload(be, params, saved, pbytes)) return 1;
        loom_optim_free(&o);
    }
    fclose(f);
    free(saved);
    free(host);
    loom_model_free(&m);
    loom_backend_free(&be);
    printf("wrote %s (%s, recompute %d, loss %.6f)\n", argv[2], argv[1], (int)rc, loss);
    return 0;
}
