/* Private: the backend's function table. A backend (src/backend/cpu/, later src/backend/cuda/) fills one
 * loom_backend_ops; include/loom/backend.h's wrappers dispatch through it and profile. */
#ifndef LOOM_BACKEND_IMPL_H
#define LOOM_BACKEND_IMPL_H
#include "loom/backend.h"

typedef struct {
    void (*matmul)(loom_backend *, int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
                   const float *, int64_t, float, float *, int64_t);
    void (*matmul_pair)(loom_backend *, const loom_gemm *, const loom_gemm *);
    void (*layernorm_forward)(loom_backend *, float *, float *, float *, const float *, const float *,
                              const float *, int64_t, int64_t, float);
    void (*layernorm_backward)(loom_backend *, float *, float *, float *, const float *, const float *,
                               const float *, const float *, const float *, int64_t, int64_t, int);
    void (*rmsnorm_forward)(loom_backend *, float *, float *, const float *, const float *, int64_t, int64_t,
                            float);
    void (*rmsnorm_backward)(loom_backend *, float *, float *, const float *, const float *, const float *,
                             const float *, int64_t, int64_t, int);
    void (*bias_gelu_forward)(loom_backend *, float *, float *, const float *, int64_t, int64_t, int);
    void (*gelu_forward)(loom_backend *, float *, const float *, int64_t, int);
    void (*gelu_backward)(loom_backend *, float *, const float *, const float *, int64_t, int);
    void (*swiglu_forward)(loom_backend *, float *, const float *, int64_t, int64_t);
    void (*swiglu_backward)(loom_backend *, float *, const float *, const float *, int64_t, int64_t);
    void (*bias_add)(loom_backend *, float *, const float *, int64_t, int64_t);
    void (*bias_backward)(loom_backend *, float *, const float *, int64_t, int64_t, int);
    void (*add)(loom_backend *, float *, const float *, const float *, int64_t);
    void (*rope)(loom_backend *, float *, const float *, const float *, int64_t, int64_t, int64_t, int64_t,
                 int64_t, int);
    void (*attention_forward)(loom_backend *, float *, float *, const float *, int64_t, int64_t, int64_t,
                              int64_t, int64_t);
    void (*attention_backward)(loom_backend *, float *, const float *, const float *, const float *,
                               const float *, int64_t, int64_t, int64_t, int64_t, int64_t);
    void (*attention_block_forward)(loom_backend *, float *, float *, const float *, int64_t, const float *, int64_t,
                                    int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int);
    void (*attention_block_backward)(loom_backend *, float *, float *, const float *, const float *, int64_t,
                                     const float *, int64_t, const float *, const float *, int64_t, int64_t, int64_t,
                                     int64_t, int64_t, int64_t, int);
    void (*attention_merge)(loom_backend *, float *, float *, const float *, const float *, int64_t, int64_t, int64_t,
                            int64_t);
    void (*embedding_forward)(loom_backend *, float *, const int32_t *, const float *, const float *, int64_t,
                              int64_t, int64_t);
    void (*embedding_backward)(loom_backend *, float *, float *, const float *, const int32_t *, int64_t,
                               int64_t, int64_t, int64_t, int, int);
    void (*softmax_cross_entropy)(loom_backend *, float *, float *, const int32_t *, int64_t, int64_t, float);
    void (*ce_row_max)(loom_backend *, const float *, int64_t, int64_t, float *);
    loom_status (*matmul_bf16)(loom_backend *, int, int, int64_t, int64_t, int64_t, float, const uint16_t *, int64_t,
                               const uint16_t *, int64_t, float, float *, int64_t);
    void (*f32_to_bf16)(loom_backend *, uint16_t *, const float *, int64_t);
    void (*round_fp16)(loom_backend *, float *, int64_t, const float *, int64_t, int64_t, int64_t);
    void (*ce_row_sums)(loom_backend *, const float *, const int32_t *, int64_t, int64_t, int64_t, const float *,
                        float *);
    void (*ce_finish)(loom_backend *, float *, float *, const int32_t *, int64_t, int64_t, int64_t, const float *,
                      const float *, float);
    double (*sum_squares)(loom_backend *, const float *, int64_t);
    void (*scale)(loom_backend *, float *, float, int64_t);
    void (*adamw)(loom_backend *, float *, const float *, float *, float *, int64_t, float, float, float, float,
                  float, float, float, float);
    double (*lamb_moments)(loom_backend *, const float *, const float *, float *, float *, int64_t, float,
                           float, float, float, float, float, float);
    void (*lamb_apply)(loom_backend *, float *, const float *, const float *, int64_t, float, float, float,
                       float, float);
    void (*sgd)(loom_backend *, float *, const float *, float *, int64_t, float, float, int, float, float, int);
    void (*lars)(loom_backend *, float *, const float *, float *, int64_t, float, float, float, float);
} loom_backend_ops;

struct loom_backend {
    const char *name;
    loom_backend_ops ops;
    int threads;
    char gemm_kernel[128];
    char bf16_kernel[160];        /* which bf16 GEMM runs (src/backend/cpu/dnnl.c) */
    void *bf16;                   /* its state (oneDNN), NULL when the reference runs */
    void (*bf16_free)(void *);
    int profiling;
    loom_profile profile;
    void *impl; /* backend-private state (the CPU backend's BLAS handle) */
    void (*impl_free)(void *);
};

/* The CPU backend fills `be`. */
LOOM_NODISCARD loom_status loom_cpu_backend_init(const loom_backend_config *cfg, loom_backend *be);
#endif
