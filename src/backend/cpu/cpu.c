/* The CPU backend: fills the kernel table, sets the one thread pool (OpenMP, shared with OpenBLAS's
 * OpenMP build), loads the GEMM. */
#include <unistd.h>

#include "cpu_impl.h"

loom_status loom_cpu_blas_load(const loom_backend_config *cfg, loom_backend *be);

loom_status loom_cpu_backend_init(const loom_backend_config *cfg, loom_backend *be) {
    loom_backend_config def = loom_backend_config_default();
    if (!cfg) cfg = &def;
    LOOM_CHECK(cfg->threads >= 0 && cfg->threads <= 4096, LOOM_ERR_INVALID_ARG,
               "threads must be between 0 (all cores) and 4096, got %d", cfg->threads);
    be->name = "cpu";
    int threads = cfg->threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
#ifdef _OPENMP
    omp_set_num_threads(threads);
#else
    threads = 1;
#endif
    be->threads = threads;
    loom_backend_ops *o = &be->ops;
    o->matmul = loom_cpu_matmul;
    o->matmul_pair = loom_cpu_matmul_pair;
    o->layernorm_forward = loom_cpu_layernorm_forward;
    o->layernorm_backward = loom_cpu_layernorm_backward;
    o->rmsnorm_forward = loom_cpu_rmsnorm_forward;
    o->rmsnorm_backward = loom_cpu_rmsnorm_backward;
    o->bias_gelu_forward = loom_cpu_bias_gelu_forward;
    o->gelu_forward = loom_cpu_gelu_forward;
    o->gelu_backward = loom_cpu_gelu_backward;
    o->swiglu_forward = loom_cpu_swiglu_forward;
    o->swiglu_backward = loom_cpu_swiglu_backward;
    o->bias_add = loom_cpu_bias_add;
    o->bias_backward = loom_cpu_bias_backward;
    o->add = loom_cpu_add;
    o->rope = loom_cpu_rope;
    o->attention_forward = loom_cpu_attention_forward;
    o->attention_backward = loom_cpu_attention_backward;
    o->attention_block_forward = loom_cpu_attention_block_forward;
    o->attention_block_backward = loom_cpu_attention_block_backward;
    o->attention_merge = loom_cpu_attention_merge;
    o->embedding_forward = loom_cpu_embedding_forward;
    o->embedding_backward = loom_cpu_embedding_backward;
    o->softmax_cross_entropy = loom_cpu_softmax_cross_entropy;
    o->ce_row_max = loom_cpu_ce_row_max;
    o->matmul_bf16 = loom_cpu_matmul_bf16;
    o->f32_to_bf16 = loom_cpu_f32_to_bf16;
    o->round_fp16 = loom_cpu_round_fp16;
    o->ce_row_sums = loom_cpu_ce_row_sums;
    o->ce_finish = loom_cpu_ce_finish;
    o->sum_squares = loom_cpu_sum_squares;
    o->scale = loom_cpu_scale;
    o->adamw = loom_cpu_adamw;
    o->lamb_moments = loom_cpu_lamb_moments;
    o->lamb_apply = loom_cpu_lamb_apply;
    o->sgd = loom_cpu_sgd;
    o->lars = loom_cpu_lars;
    LOOM_CALL(loom_cpu_blas_load(cfg, be));
    loom_cpu_bf16_load(be); /* optional: oneDNN when installed, else the reference */
    return LOOM_OK;
}
