/* Matrix products on the GPU through cuBLAS. loom's GEMMs are row-major; cuBLAS is column-major, and a
 * row-major matrix is its own transpose read column-major, so C = op(A) op(B) is computed as
 * C^T = op(B)^T op(A)^T: the operands swap places, each keeps its transpose flag and leading dimension.
 * fp32 by default (CUBLAS_DEFAULT_MATH: no TF32, the CPU's numerics to summation order), TF32 tensor cores
 * with LOOM_CUDA_TF32=1; bf16 x bf16 -> fp32 with fp32 accumulation through cublasGemmEx. matmul_pair runs its
 * two independent products on two streams (each with its own cuBLAS handle and workspace, which keeps both
 * deterministic), joined back before anything queued after it. cuBLAS takes int sizes: M (rows of C) is
 * split where it would not fit; the other sizes must fit (the model refuses larger ones).
 * UNVERIFIED on a GPU (see cuda_impl.h). */
#include <limits.h>

#include "cuda_impl.h"

typedef struct {
    int ta, tb;
    int64_t M, N, K;
    float alpha, beta;
    const void *A, *B;
    int64_t lda, ldb, ldc;
    float *C;
} gemm_shape;

static loom_status check_int(const gemm_shape *g) {
    LOOM_CHECK(g->N <= INT_MAX && g->K <= INT_MAX && g->lda <= INT_MAX && g->ldb <= INT_MAX && g->ldc <= INT_MAX,
               LOOM_ERR_UNSUPPORTED,
               "cuda GEMM %lld x %lld x %lld (lda %lld, ldb %lld, ldc %lld): a size other than M exceeds cuBLAS's int",
               (long long)g->M, (long long)g->N, (long long)g->K, (long long)g->lda, (long long)g->ldb,
               (long long)g->ldc);
    return LOOM_OK;
}

/* bf16: element size 2 (the A/B pointers step by elements of their type) */
static loom_status gemm(cublasHandle_t h, const gemm_shape *g, int bf16) {
    if (g->M <= 0 || g->N <= 0) return LOOM_OK;
    LOOM_CALL(check_int(g));
    const size_t es = bf16 ? 2 : 4;
    const cublasOperation_t opa = g->ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = g->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    for (int64_t m0 = 0; m0 < g->M; m0 += INT_MAX) {
        const int64_t mb = g->M - m0 < INT_MAX ? g->M - m0 : INT_MAX;
        /* rows m0.. of op(A): row m0 of A, or column m0 of the stored A^T */
        const char *Am = (const char *)g->A + (size_t)(g->ta ? m0 : m0 * g->lda) * es;
        float *Cm = g->C + m0 * g->ldc;
        if (bf16)
            LOOM_CALL_CUBLAS(cublasGemmEx(h, opb, opa, (int)g->N, (int)mb, (int)g->K, &g->alpha, g->B, CUDA_R_16BF,
                                          (int)g->ldb, Am, CUDA_R_16BF, (int)g->lda, &g->beta, Cm, CUDA_R_32F,
                                          (int)g->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        else
            LOOM_CALL_CUBLAS(cublasSgemm(h, opb, opa, (int)g->N, (int)mb, (int)g->K, &g->alpha, (const float *)g->B,
                                         (int)g->ldb, (const float *)(const void *)Am, (int)g->lda, &g->beta, Cm,
                                         (int)g->ldc));
    }
    return LOOM_OK;
}

static gemm_shape shape_of(const loom_gemm *g) {
    return (gemm_shape){g->trans_a, g->trans_b, g->M, g->N, g->K, g->alpha, g->beta, g->A, g->B,
                        g->lda,     g->ldb,     g->ldc, g->C};
}

loom_status loom_cuda_matmul(loom_backend *be, const loom_gemm *g) {
    const gemm_shape s = shape_of(g);
    return gemm(loom_cuda_of(be)->blas, &s, 0);
}

loom_status loom_cuda_matmul_pair(loom_backend *be, const loom_matmul_pair_args *p) {
    loom_cuda *cu = loom_cuda_of(be);
    const gemm_shape a = shape_of(&p->a), b = shape_of(&p->b);
    /* the second stream starts after everything queued so far (the products' inputs) ... */
    LOOM_CALL_CUDA(cudaEventRecord(cu->ev_fork, cu->stream));
    LOOM_CALL_CUDA(cudaStreamWaitEvent(cu->stream2, cu->ev_fork, 0));
    const loom_status st_a = gemm(cu->blas, &a, 0);
    const loom_status st_b = st_a == LOOM_OK ? gemm(cu->blas2, &b, 0) : LOOM_OK;
    /* ... and whatever is queued next waits for it, even after an error (the stream stays ordered) */
    LOOM_CALL_CUDA(cudaEventRecord(cu->ev_join, cu->stream2));
    LOOM_CALL_CUDA(cudaStreamWaitEvent(cu->stream, cu->ev_join, 0));
    return st_a != LOOM_OK ? st_a : st_b;
}

loom_status loom_cuda_matmul_bf16(loom_backend *be, const loom_matmul_bf16_args *a) {
    const gemm_shape s = {a->trans_a, a->trans_b, a->M, a->N, a->K, a->alpha, a->beta, a->A, a->B,
                          a->lda,     a->ldb,     a->ldc, a->C};
    return gemm(loom_cuda_of(be)->blas, &s, 1);
}
