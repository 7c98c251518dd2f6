/* Loads a loom checkpoint (as `loom import` writes it) and writes the logits of one batch, for
 * tests/test_hf.py to compare with its PyTorch reference. Independent of the CLI: the model comes from
 * loom_checkpoint_load_model (the loader generation uses) and runs through loom_model_forward.
 *
 * Usage: test_hf_logits CKPT_DIR|FILE OUT.f32 B T tok_0 ... tok_{B*T-1}
 * OUT.f32: B*T*V little-endian float32 logits, row-major (B, T, V). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/backend.h"
#include "loom/comm.h"
#include "loom/json.h"
#include "loom/model.h"
#include "loom/run.h"

static int fail(const char *what) {
    fprintf(stderr, "test_hf_logits: %s: %s\n", what, loom_error_message());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: test_hf_logits CKPT_DIR|FILE OUT.f32 B T tokens...\n");
        return 2;
    }
    const char *path = argv[1]; /* a run directory or a checkpoint file: the loader takes both */
    long long B = atoll(argv[3]), T = atoll(argv[4]);
    if (B < 1 || T < 1 || argc != 5 + B * T) {
        fprintf(stderr, "test_hf_logits: need B*T = %lld tokens, got %d\n", B * T, argc - 5);
        return 2;
    }
    int32_t *tokens = malloc((size_t)(B * T) * sizeof *tokens);
    if (!tokens) return 1;
    for (long long i = 0; i < B * T; i++) tokens[i] = (int32_t)atoi(argv[5 + i]);

    loom_backend_config bc = loom_backend_config_default();
    bc.threads = 2;
    bc.quiet = 1;
    loom_backend *be = NULL;
    loom_comm *comm = NULL;
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *m = NULL;
    loom_json *j = NULL;
    if (loom_backend_init(&bc, &be) || loom_comm_init_self(&comm) ||
        loom_checkpoint_load_model(path, LOOM_PRECISION_FP32, be, comm, &mem, &m, &j))
        return fail("reading the checkpoint");
    const loom_model_config cfg = *loom_model_get_config(m);
    /* forward checks every token against the vocabulary */
    if (loom_model_reserve(m, B, T, LOOM_RECOMPUTE_NONE) || loom_model_forward(m, tokens, NULL, B, T, NULL))
        return fail("forward");
    size_t n = (size_t)(B * T * cfg.vocab_size);
    float *logits = malloc(n * sizeof(float));
    if (!logits || loom_model_read_logits(m, logits)) return fail("reading the logits");
    FILE *f = fopen(argv[2], "wb");
    if (!f || fwrite(logits, sizeof(float), n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "test_hf_logits: cannot write %s\n", argv[2]);
        return 1;
    }
    printf("test_hf_logits: %s: %s L%lld C%lld V%lld, wrote %zu logits\n", path, loom_family_name(cfg.family),
           (long long)cfg.n_layer, (long long)cfg.d_model, (long long)cfg.vocab_size, n);
    loom_model_free(&m);
    loom_comm_free(&comm);
    loom_backend_free(&be);
    loom_json_free(&j);
    free(tokens);
    free(logits);
    return 0;
}
