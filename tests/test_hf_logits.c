/* Loads a loom checkpoint (as `loom import` writes it) and writes the logits of one batch, for
 * tests/test_hf.py to compare with its PyTorch reference. Independent of the CLI: the checkpoint is read
 * with loom_ckpt_*, the model built from meta.model and run with loom_model_forward.
 *
 * Usage: test_hf_logits CKPT_DIR|FILE OUT.f32 B T tok_0 ... tok_{B*T-1}
 * OUT.f32: B*T*V little-endian float32 logits, row-major (B, T, V). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/backend.h"
#include "loom/ckpt.h"
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
    char path[4096];
    struct stat sb;
    if (stat(argv[1], &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(path, sizeof path, "%s/checkpoint.bin", argv[1]);
    else snprintf(path, sizeof path, "%s", argv[1]);
    long long B = atoll(argv[3]), T = atoll(argv[4]);
    if (B < 1 || T < 1 || argc != 5 + B * T) {
        fprintf(stderr, "test_hf_logits: need B*T = %lld tokens, got %d\n", B * T, argc - 5);
        return 2;
    }
    int32_t *tokens = malloc((size_t)(B * T) * sizeof *tokens);
    if (!tokens) return 1;
    for (long long i = 0; i < B * T; i++) tokens[i] = (int32_t)atoi(argv[5 + i]);

    loom_ckpt_reader *r = NULL;
    char *meta = NULL;
    loom_json *j = NULL;
    if (loom_ckpt_open(path, &r) || loom_ckpt_read_text(r, "meta", &meta) || loom_json_parse(meta, strlen(meta), &j))
        return fail("reading the checkpoint");
    loom_model_config cfg;
    if (loom_model_config_from_json(loom_json_get(j, "model"), &cfg)) return fail("meta.model");
    for (long long i = 0; i < B * T; i++)
        if (tokens[i] < 0 || tokens[i] >= cfg.vocab_size) {
            fprintf(stderr, "test_hf_logits: token %d outside the vocabulary\n", tokens[i]);
            return 2;
        }
    loom_backend_config bc = loom_backend_config_default();
    bc.threads = 2;
    bc.quiet = 1;
    loom_backend *be = NULL;
    loom_comm *comm = NULL;
    loom_mem mem;
    loom_mem_init(&mem);
    loom_model *m = NULL;
    if (loom_backend_init(&bc, &be) || loom_comm_init_self(&comm) || loom_model_init(&cfg, be, comm, &mem, 0, &m))
        return fail("model");
    if (loom_ckpt_read(r, "params", loom_model_params(m), loom_model_buffer_size(m) * (int64_t)sizeof(float)))
        return fail("params");
    if (loom_model_reserve(m, B, T, LOOM_RECOMPUTE_NONE) || loom_model_forward(m, tokens, NULL, B, T, NULL))
        return fail("forward");
    FILE *f = fopen(argv[2], "wb");
    size_t n = (size_t)(B * T * cfg.vocab_size);
    if (!f || fwrite(loom_model_logits(m), sizeof(float), n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "test_hf_logits: cannot write %s\n", argv[2]);
        return 1;
    }
    printf("test_hf_logits: %s: %s L%lld C%lld V%lld, wrote %zu logits\n", path, loom_family_name(cfg.family),
           (long long)cfg.n_layer, (long long)cfg.d_model, (long long)cfg.vocab_size, n);
    loom_model_free(&m);
    loom_comm_free(&comm);
    loom_backend_free(&be);
    loom_json_free(&j);
    free(meta);
    loom_ckpt_close(&r);
    free(tokens);
    return 0;
}
