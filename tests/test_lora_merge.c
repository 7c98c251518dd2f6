/* A LoRA run's checkpoint (adapters beside the frozen base) and its merge (`loom merge`: the adapters folded
 * into the weights) give the same logits, fp32: |d| <= 1e-5 * (1 + |ref|) elementwise (the merge rounds each
 * weight once; the unmerged model adds two fp32 products: differences of a few float32 ulps of the logits).
 * Usage: test_lora_merge LORA_CKPT MERGED_CKPT */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "loom/backend.h"
#include "loom/model.h"
#include "loom/run.h"

static int logits_of(const char *ckpt, const int32_t *tokens, int64_t B, int64_t T, float **out, int64_t *V, int lora) {
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = 2;
    bc.quiet = 1;
    loom_backend *be;
    loom_comm *comm;
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *m = NULL;
    loom_json *meta = NULL;
    if (loom_backend_init(&bc, &be) || loom_comm_init_self(&comm) ||
        loom_checkpoint_load_model(ckpt, LOOM_PRECISION_FP32, be, comm, &mem, &m, &meta)) {
        fprintf(stderr, "error: %s\n", loom_error_trace_text());
        return 1;
    }
    if (!loom_model_lora(m) != !lora) {
        fprintf(stderr, "error: %s %s LoRA adapters\n", ckpt, lora ? "holds no" : "still holds");
        return 1;
    }
    *V = loom_model_get_config(m)->vocab_size;
    *out = malloc((size_t)(B * T * *V) * sizeof(float));
    if (!*out || loom_model_reserve(m, B, T, LOOM_RECOMPUTE_NONE) || loom_model_forward(m, tokens, NULL, B, T, NULL) ||
        loom_model_read_logits(m, *out)) {
        fprintf(stderr, "error: %s\n", loom_error_trace_text());
        return 1;
    }
    loom_json_free(&meta);
    loom_model_free(&m);
    loom_comm_free(&comm);
    loom_backend_free(&be);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_lora_merge LORA_CKPT MERGED_CKPT\n");
        return 2;
    }
    const int64_t B = 2, T = 24, N = B * T;
    int32_t tokens[48];
    for (int64_t i = 0; i < N; i++) tokens[i] = (int32_t)(32 + (i * 37) % 90); /* printable bytes: in any vocabulary */
    float *a = NULL, *b = NULL;
    int64_t V = 0, V2 = 0;
    if (logits_of(argv[1], tokens, B, T, &a, &V, 1) || logits_of(argv[2], tokens, B, T, &b, &V2, 0) || V != V2) return 1;
    double worst = 0, dmax = 0;
    for (int64_t i = 0; i < N * V; i++) {
        const double d = fabs((double)a[i] - (double)b[i]), r = d / (1e-5 * (1.0 + fabs((double)a[i])));
        worst = r > worst ? r : worst;
        dmax = d > dmax ? d : dmax;
    }
    printf("LoRA model against its merge: %lld logits, max |d| %.3g, worst err/tol %.3f: %s\n", (long long)(N * V), dmax,
           worst, worst <= 1 ? "PASS" : "FAIL");
    free(a);
    free(b);
    return worst <= 1 ? 0 : 1;
}
