/* Attention on the GPU, in fp32, flash style: no T x T matrix is ever stored. bf16_products is passed
 * through and not used: the products stay fp32 here (the contract allows it).
 *
 * Forward (one block per 64 queries of one (batch, head)): the query tile stays in shared memory while tiles
 * of 64 keys and values stream through it; each tile's scores S = Q K^T are a 64 x 64 product (each of 256
 * threads owns 4 x 4 scores), folded into a running row maximum and sum (the online softmax) and into the
 * output accumulator O = O * alpha + P V. At the end O / sum is the output and scale*max + log(sum) the row's
 * log-sum-exp, as the CPU defines it. Causal blocks skip the key tiles wholly above the diagonal.
 *
 * Backward recomputes P from the saved log-sum-exp. Two kernels, so that every gradient element has one
 * writer (deterministic, no atomics): one block per 64 keys of (batch, kv head) accumulates dK and dV over
 * every query tile of every query head of its group; one block per 64 queries of (batch, head) accumulates
 * dQ over every key tile. That recomputes S and dP once more than a single pass with atomics would (7 tile
 * products instead of 5), the price of same-bits runs. D = rowsum(dO * O) is computed first.
 *
 * Thread layout: 256 threads = 16 x 16 (tx, ty); a thread owns rows ty + 16r and columns tx + 16c, so the 16
 * threads of a row are one half-warp (row reductions are 4 shuffles) and shared-memory tiles padded to an odd
 * row length are read without bank conflicts. Head sizes up to 128 (GPT-2 64, LLaMA 64-128); larger ones are
 * refused with a message. Shared memory: ~66-166 KB a block, opted in per kernel.
 *
 * Ring attention's pieces (block_forward/backward with row strides and the causal flag, merge) are these
 * kernels with other strides; attention_forward/backward are the causal case over the fused qkv rows. decode
 * is one query against a cache: one block per head. UNVERIFIED on a GPU (see cuda_impl.h). */
#include "cuda_kernels.cuh"

enum { BQ = 64, BK = 64, ATT_THREADS = 256 };

/* the tile of `rows` rows from row r0 (of `nrows`) of a strided matrix, hd columns, into shared memory with
 * row length ld; rows past the end read as zero */
__device__ __forceinline__ void load_tile(float *dst, int ld, const float *src, int64_t stride, int64_t r0,
                                          int64_t nrows, int hd) {
    for (int e = threadIdx.x; e < BQ * hd; e += ATT_THREADS) {
        const int r = e / hd, d = e - r * hd;
        dst[r * ld + d] = r0 + r < nrows ? src[(r0 + r) * stride + d] : 0.0f;
    }
}

/* sums and maxima over the 16 threads (tx) of a row: one half-warp */
__device__ __forceinline__ float row_sum16(float v) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float row_max16(float v) {
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* s[r][c] = sum_d A[(ty + 16r)][d] * B[(tx + 16c)][d] over two tiles in shared memory */
__device__ __forceinline__ void tile_dot(float s[4][4], const float *A, const float *Bt, int ld, int hd, int tx, int ty) {
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) s[r][c] = 0.0f;
    for (int d = 0; d < hd; d++) {
        float a[4], b[4];
#pragma unroll
        for (int r = 0; r < 4; r++) a[r] = A[(ty + 16 * r) * ld + d];
#pragma unroll
        for (int c = 0; c < 4; c++) b[c] = Bt[(tx + 16 * c) * ld + d];
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) s[r][c] += a[r] * b[c];
    }
}

/* acc[r][k] += sum_j P[ty + 16r][j] * M[j][tx + 16k], P (64 x 64, row length pld) and M (64 x hd) in shared */
template <int HD>
__device__ __forceinline__ void tile_accumulate(float acc[4][HD / 16], const float *P, int pld, const float *M, int ld,
                                                int tx, int ty) {
    for (int j = 0; j < 64; j++) {
        float p[4];
#pragma unroll
        for (int r = 0; r < 4; r++) p[r] = P[(ty + 16 * r) * pld + j];
#pragma unroll
        for (int k = 0; k < HD / 16; k++) {
            const float m = M[j * ld + tx + 16 * k];
#pragma unroll
            for (int r = 0; r < 4; r++) acc[r][k] += p[r] * m;
        }
    }
}

struct att_dims {
    int64_t Tq, Tk, qs, kvs;
    int H, KV, hd, causal;
    float scale;
};

/* ---- forward ---- */

template <int HD>
__global__ void __launch_bounds__(ATT_THREADS) flash_forward(float *out, float *lse, const float *q, const float *kv,
                                                             att_dims dm) {
    constexpr int LD = HD + 1, PLD = BK + 1;
    extern __shared__ float sm[];
    float *Qs = sm, *Ks = Qs + BQ * LD, *Vs = Ks + BK * LD, *Ps = Vs + BK * LD;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int64_t i0 = (int64_t)blockIdx.x * BQ, b = blockIdx.z;
    const int h = blockIdx.y, g = h / (dm.H / dm.KV), hd = dm.hd;
    const float *Qg = q + b * dm.Tq * dm.qs + h * hd;
    const float *Kg = kv + b * dm.Tk * dm.kvs + g * hd, *Vg = kv + b * dm.Tk * dm.kvs + (dm.KV + g) * hd;
    load_tile(Qs, LD, Qg, dm.qs, i0, dm.Tq, hd);
    float m[4], l[4], o[4][HD / 16];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int k = 0; k < HD / 16; k++) o[r][k] = 0.0f;
    }
    const int64_t kend = dm.causal ? (i0 + BQ < dm.Tk ? i0 + BQ : dm.Tk) : dm.Tk;
    for (int64_t j0 = 0; j0 < kend; j0 += BK) {
        __syncthreads(); /* the previous tile's readers are done */
        load_tile(Ks, LD, Kg, dm.kvs, j0, dm.Tk, hd);
        load_tile(Vs, LD, Vg, dm.kvs, j0, dm.Tk, hd);
        __syncthreads();
        float s[4][4];
        tile_dot(s, Qs, Ks, LD, hd, tx, ty);
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int64_t i = i0 + ty + 16 * r;
            float mx = -INFINITY;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int64_t j = j0 + tx + 16 * c;
                if (i >= dm.Tq || j >= dm.Tk || (dm.causal && j > i)) s[r][c] = -INFINITY;
                mx = fmaxf(mx, s[r][c]);
            }
            const float mnew = fmaxf(m[r], row_max16(mx));
            /* a row that has seen nothing yet (or never will: padding) has m = -inf: no NaN from -inf - -inf */
            const float alpha = m[r] == -INFINITY ? 0.0f : expf((m[r] - mnew) * dm.scale);
            float ps = 0.0f;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const float p = s[r][c] == -INFINITY ? 0.0f : expf((s[r][c] - mnew) * dm.scale);
                Ps[(ty + 16 * r) * PLD + tx + 16 * c] = p;
                ps += p;
            }
            l[r] = l[r] * alpha + row_sum16(ps);
            m[r] = mnew;
#pragma unroll
            for (int k = 0; k < HD / 16; k++) o[r][k] *= alpha;
        }
        __syncthreads();
        tile_accumulate<HD>(o, Ps, PLD, Vs, LD, tx, ty);
    }
    const int64_t C = (int64_t)dm.H * hd;
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int64_t i = i0 + ty + 16 * r;
        if (i >= dm.Tq) continue;
        const float inv = 1.0f / l[r];
#pragma unroll
        for (int k = 0; k < HD / 16; k++) {
            const int d = tx + 16 * k;
            if (d < hd) out[(b * dm.Tq + i) * C + h * hd + d] = o[r][k] * inv;
        }
        if (tx == 0) lse[(b * dm.H + h) * dm.Tq + i] = m[r] * dm.scale + logf(l[r]);
    }
}

/* ---- backward ---- */

/* D[(b*H + h)*Tq + i] = sum_d dout * out over the row's head: one warp per (b, i, h) */
__global__ void attention_rowdot(float *D, const float *dout, const float *out, int64_t B, int64_t Tq, int H, int hd) {
    const int lane = threadIdx.x & 31;
    const int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; w < B * Tq * H; w += nw) {
        const int64_t h = w % H, bi = w / H, b = bi / Tq, i = bi - b * Tq;
        const float *x = dout + bi * H * hd + h * hd, *y = out + bi * H * hd + h * hd;
        float s = 0.0f;
        for (int d = lane; d < hd; d += 32) s += x[d] * y[d];
        s = warp_sum(s);
        if (lane == 0) D[(b * H + h) * Tq + i] = s;
    }
}

/* one block per 64 keys of (b, kv head g): dK, dV += over every query of every head in g's group */
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS) flash_backward_dkv(float *dkv, const float *dout, const float *q,
                                                                  const float *kv, const float *lse, const float *D,
                                                                  att_dims dm) {
    constexpr int LD = HD + 1, PLD = BQ + 1;
    extern __shared__ float sm[];
    float *Ks = sm, *Vs = Ks + BK * LD, *Qs = Vs + BK * LD, *dOs = Qs + BQ * LD, *Ps = dOs + BQ * LD, *dSs = Ps + BK * PLD;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int64_t j0 = (int64_t)blockIdx.x * BK, b = blockIdx.z;
    const int g = blockIdx.y, group = dm.H / dm.KV, hd = dm.hd;
    const int64_t C = (int64_t)dm.H * hd;
    load_tile(Ks, LD, kv + b * dm.Tk * dm.kvs + g * hd, dm.kvs, j0, dm.Tk, hd);
    load_tile(Vs, LD, kv + b * dm.Tk * dm.kvs + (dm.KV + g) * hd, dm.kvs, j0, dm.Tk, hd);
    float dk[4][HD / 16], dv[4][HD / 16];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int k = 0; k < HD / 16; k++) dk[r][k] = dv[r][k] = 0.0f;
    /* causal: queries before this key tile see none of its keys */
    const int64_t first = dm.causal ? j0 / BQ * BQ : 0;
    for (int h = g * group; h < (g + 1) * group; h++)
        for (int64_t i0 = first; i0 < dm.Tq; i0 += BQ) {
            __syncthreads();
            load_tile(Qs, LD, q + b * dm.Tq * dm.qs + h * hd, dm.qs, i0, dm.Tq, hd);
            load_tile(dOs, LD, dout + b * dm.Tq * C + h * hd, C, i0, dm.Tq, hd);
            __syncthreads();
            float s[4][4], dp[4][4];
            tile_dot(s, Ks, Qs, LD, hd, tx, ty);  /* s[r][c] = K_j . Q_i, keys ty + 16r, queries tx + 16c */
            tile_dot(dp, Vs, dOs, LD, hd, tx, ty); /* dp = V_j . dO_i */
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int64_t i = i0 + tx + 16 * c;
                const float L = i < dm.Tq ? lse[(b * dm.H + h) * dm.Tq + i] : 0.0f;
                const float Di = i < dm.Tq ? D[(b * dm.H + h) * dm.Tq + i] : 0.0f;
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    const int64_t j = j0 + ty + 16 * r;
                    const int ok = i < dm.Tq && j < dm.Tk && !(dm.causal && j > i);
                    const float p = ok ? expf(s[r][c] * dm.scale - L) : 0.0f;
                    Ps[(ty + 16 * r) * PLD + tx + 16 * c] = p;
                    dSs[(ty + 16 * r) * PLD + tx + 16 * c] = p * (dp[r][c] - Di) * dm.scale;
                }
            }
            __syncthreads();
            tile_accumulate<HD>(dv, Ps, PLD, dOs, LD, tx, ty); /* dV_j += sum_i P_ji dO_i */
            tile_accumulate<HD>(dk, dSs, PLD, Qs, LD, tx, ty); /* dK_j += sum_i dS_ji Q_i */
        }
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int64_t j = j0 + ty + 16 * r;
        if (j >= dm.Tk) continue;
        float *dK = dkv + (b * dm.Tk + j) * dm.kvs + g * hd, *dV = dkv + (b * dm.Tk + j) * dm.kvs + (dm.KV + g) * hd;
#pragma unroll
        for (int k = 0; k < HD / 16; k++) {
            const int d = tx + 16 * k;
            if (d < hd) {
                dK[d] += dk[r][k];
                dV[d] += dv[r][k];
            }
        }
    }
}

/* one block per 64 queries of (b, h): dQ += over every key tile */
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS) flash_backward_dq(float *dq, const float *dout, const float *q,
                                                                 const float *kv, const float *lse, const float *D,
                                                                 att_dims dm) {
    constexpr int LD = HD + 1, PLD = BK + 1;
    extern __shared__ float sm[];
    float *Qs = sm, *dOs = Qs + BQ * LD, *Ks = dOs + BQ * LD, *Vs = Ks + BK * LD, *dSs = Vs + BK * LD;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int64_t i0 = (int64_t)blockIdx.x * BQ, b = blockIdx.z;
    const int h = blockIdx.y, g = h / (dm.H / dm.KV), hd = dm.hd;
    const int64_t C = (int64_t)dm.H * hd;
    load_tile(Qs, LD, q + b * dm.Tq * dm.qs + h * hd, dm.qs, i0, dm.Tq, hd);
    load_tile(dOs, LD, dout + b * dm.Tq * C + h * hd, C, i0, dm.Tq, hd);
    float L[4], Di[4], acc[4][HD / 16];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int64_t i = i0 + ty + 16 * r;
        L[r] = i < dm.Tq ? lse[(b * dm.H + h) * dm.Tq + i] : 0.0f;
        Di[r] = i < dm.Tq ? D[(b * dm.H + h) * dm.Tq + i] : 0.0f;
#pragma unroll
        for (int k = 0; k < HD / 16; k++) acc[r][k] = 0.0f;
    }
    const float *Kg = kv + b * dm.Tk * dm.kvs + g * hd, *Vg = kv + b * dm.Tk * dm.kvs + (dm.KV + g) * hd;
    const int64_t kend = dm.causal ? (i0 + BQ < dm.Tk ? i0 + BQ : dm.Tk) : dm.Tk;
    for (int64_t j0 = 0; j0 < kend; j0 += BK) {
        __syncthreads();
        load_tile(Ks, LD, Kg, dm.kvs, j0, dm.Tk, hd);
        load_tile(Vs, LD, Vg, dm.kvs, j0, dm.Tk, hd);
        __syncthreads();
        float s[4][4], dp[4][4];
        tile_dot(s, Qs, Ks, LD, hd, tx, ty);   /* queries ty + 16r, keys tx + 16c */
        tile_dot(dp, dOs, Vs, LD, hd, tx, ty);
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int64_t i = i0 + ty + 16 * r;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int64_t j = j0 + tx + 16 * c;
                const int ok = i < dm.Tq && j < dm.Tk && !(dm.causal && j > i);
                const float p = ok ? expf(s[r][c] * dm.scale - L[r]) : 0.0f;
                dSs[(ty + 16 * r) * PLD + tx + 16 * c] = p * (dp[r][c] - Di[r]) * dm.scale;
            }
        }
        __syncthreads();
        tile_accumulate<HD>(acc, dSs, PLD, Ks, LD, tx, ty); /* dQ_i += sum_j dS_ij K_j */
    }
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int64_t i = i0 + ty + 16 * r;
        if (i >= dm.Tq) continue;
        float *dQ = dq + (b * dm.Tq + i) * dm.qs + h * hd;
#pragma unroll
        for (int k = 0; k < HD / 16; k++) {
            const int d = tx + 16 * k;
            if (d < hd) dQ[d] += acc[r][k];
        }
    }
}

/* ---- launches ---- */

static size_t fwd_smem(int HD) { return (size_t)((BQ + 2 * BK) * (HD + 1) + BQ * (BK + 1)) * sizeof(float); }
static size_t dkv_smem(int HD) { return (size_t)((2 * BK + 2 * BQ) * (HD + 1) + 2 * BK * (BQ + 1)) * sizeof(float); }
static size_t dq_smem(int HD) { return (size_t)((2 * BQ + 2 * BK) * (HD + 1) + BQ * (BK + 1)) * sizeof(float); }

static loom_status check_dims(loom_backend *be, int64_t B, int64_t H, int64_t KV, int64_t hd, size_t smem) {
    LOOM_CHECK(hd >= 1 && hd <= 128, LOOM_ERR_UNSUPPORTED,
               "cuda attention: head size %lld is not supported (1..128)", (long long)hd);
    LOOM_CHECK(KV >= 1 && H % KV == 0, LOOM_ERR_INVALID_ARG, "attention: %lld query heads over %lld kv heads",
               (long long)H, (long long)KV);
    LOOM_CHECK(B <= 65535 && H <= 65535, LOOM_ERR_UNSUPPORTED, "cuda attention: batch %lld or %lld heads exceed the grid",
               (long long)B, (long long)H);
    LOOM_CHECK(smem <= loom_cuda_of(be)->smem_optin, LOOM_ERR_UNSUPPORTED,
               "cuda attention: head size %lld needs %zu bytes of shared memory a block; this GPU allows %zu",
               (long long)hd, smem, loom_cuda_of(be)->smem_optin);
    return LOOM_OK;
}

template <int HD>
static loom_status block_forward(loom_backend *be, const loom_attention_block_forward_args *a, att_dims dm) {
    const size_t smem = fwd_smem(HD);
    LOOM_CALL(check_dims(be, a->B, a->H, a->KV, a->hd, smem));
    LOOM_CALL_CUDA(cudaFuncSetAttribute(flash_forward<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)((a->Tq + BQ - 1) / BQ), (unsigned)a->H, (unsigned)a->B);
    flash_forward<HD><<<grid, ATT_THREADS, smem, loom_cuda_of(be)->stream>>>(a->out, a->lse, a->q, a->kv, dm);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

static att_dims dims_of(int64_t Tq, int64_t Tk, int64_t qs, int64_t kvs, int64_t H, int64_t KV, int64_t hd, int causal) {
    att_dims dm;
    dm.Tq = Tq;
    dm.Tk = Tk;
    dm.qs = qs;
    dm.kvs = kvs;
    dm.H = (int)H;
    dm.KV = (int)KV;
    dm.hd = (int)hd;
    dm.causal = causal;
    dm.scale = 1.0f / sqrtf((float)hd);
    return dm;
}

extern "C" loom_status loom_cuda_attention_block_forward(loom_backend *be, const loom_attention_block_forward_args *a) {
    if (a->B <= 0 || a->Tq <= 0 || a->H <= 0) return LOOM_OK;
    const att_dims dm = dims_of(a->Tq, a->Tk, a->qs, a->kvs, a->H, a->KV, a->hd, a->causal);
    return a->hd <= 64 ? block_forward<64>(be, a, dm) : block_forward<128>(be, a, dm);
}

template <int HD>
static loom_status block_backward(loom_backend *be, const loom_attention_block_backward_args *a, att_dims dm) {
    const size_t s1 = dkv_smem(HD), s2 = dq_smem(HD);
    LOOM_CALL(check_dims(be, a->B, a->H, a->KV, a->hd, s1 > s2 ? s1 : s2));
    cudaStream_t st = loom_cuda_of(be)->stream;
    float *D;
    LOOM_CALL(loom_cuda_workspace(be, (size_t)(a->B * a->H * a->Tq) * sizeof(float), (void **)&D));
    const int64_t warps = a->B * a->Tq * a->H;
    attention_rowdot<<<loom_cuda_blocks(warps * 32, ATT_THREADS), ATT_THREADS, 0, st>>>(D, a->dout, a->out, a->B, a->Tq,
                                                                                        (int)a->H, (int)a->hd);
    LOOM_CUDA_LAUNCHED();
    if (a->Tk > 0) {
        LOOM_CALL_CUDA(cudaFuncSetAttribute(flash_backward_dkv<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s1));
        const dim3 g1((unsigned)((a->Tk + BK - 1) / BK), (unsigned)a->KV, (unsigned)a->B);
        flash_backward_dkv<HD><<<g1, ATT_THREADS, s1, st>>>(a->dkv, a->dout, a->q, a->kv, a->lse, D, dm);
        LOOM_CUDA_LAUNCHED();
    }
    LOOM_CALL_CUDA(cudaFuncSetAttribute(flash_backward_dq<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s2));
    const dim3 g2((unsigned)((a->Tq + BQ - 1) / BQ), (unsigned)a->H, (unsigned)a->B);
    flash_backward_dq<HD><<<g2, ATT_THREADS, s2, st>>>(a->dq, a->dout, a->q, a->kv, a->lse, D, dm);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

extern "C" loom_status loom_cuda_attention_block_backward(loom_backend *be, const loom_attention_block_backward_args *a) {
    if (a->B <= 0 || a->Tq <= 0 || a->H <= 0) return LOOM_OK;
    const att_dims dm = dims_of(a->Tq, a->Tk, a->qs, a->kvs, a->H, a->KV, a->hd, a->causal);
    return a->hd <= 64 ? block_backward<64>(be, a, dm) : block_backward<128>(be, a, dm);
}

extern "C" loom_status loom_cuda_attention_forward(loom_backend *be, const loom_attention_forward_args *a) {
    const int64_t row = (a->H + 2 * a->KV) * a->hd; /* q, k and v of a position side by side */
    const loom_attention_block_forward_args f = {a->out, a->lse, a->qkv, row, a->qkv + a->H * a->hd, row,
                                                 a->B,   a->T,   a->T,   a->H, a->KV, a->hd, 1, a->bf16_products};
    return loom_cuda_attention_block_forward(be, &f);
}

extern "C" loom_status loom_cuda_attention_backward(loom_backend *be, const loom_attention_backward_args *a) {
    const int64_t row = (a->H + 2 * a->KV) * a->hd;
    if (a->B * a->T * row <= 0) return LOOM_OK;
    LOOM_CALL_CUDA(cudaMemsetAsync(a->dqkv, 0, (size_t)(a->B * a->T * row) * sizeof(float), loom_cuda_of(be)->stream));
    const loom_attention_block_backward_args g = {a->dqkv, a->dqkv + a->H * a->hd, a->dout, a->qkv, row,
                                                  a->qkv + a->H * a->hd, row, a->out, a->lse, a->B, a->T, a->T,
                                                  a->H, a->KV, a->hd, 1, a->bf16_products};
    return loom_cuda_attention_block_backward(be, &g);
}

/* ---- merge: fold (out_b, lse_b) into (out, lse); one warp per (b, t, h) ---- */

__global__ void attention_merge_kernel(float *out, float *lse, const float *out_b, const float *lse_b, int64_t B,
                                       int64_t T, int64_t H, int64_t hd) {
    const int lane = threadIdx.x & 31;
    const int64_t nw = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; w < B * T * H; w += nw) {
        const int64_t h = w % H, bt = w / H, b = bt / T, t = bt - b * T;
        float *la = lse + (b * H + h) * T + t;
        const float a0 = *la, lb = lse_b[(b * H + h) * T + t];
        const float m = a0 > lb ? a0 : lb, wa = expf(a0 - m), wb = expf(lb - m), inv = 1.0f / (wa + wb);
        float *o = out + bt * H * hd + h * hd;
        const float *ob = out_b + bt * H * hd + h * hd;
        for (int64_t d = lane; d < hd; d += 32) o[d] = (o[d] * wa + ob[d] * wb) * inv;
        __syncwarp(); /* every lane has read *la before lane 0 replaces it */
        if (lane == 0) *la = m + logf(wa + wb);
    }
}

extern "C" loom_status loom_cuda_attention_merge(loom_backend *be, const loom_attention_merge_args *a) {
    const int64_t warps = a->B * a->T * a->H;
    if (warps <= 0) return LOOM_OK;
    attention_merge_kernel<<<loom_cuda_blocks(warps * 32, LOOM_CUDA_THREADS), LOOM_CUDA_THREADS, 0,
                             loom_cuda_of(be)->stream>>>(a->out, a->lse, a->out_b, a->lse_b, a->B, a->T, a->H, a->hd);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

/* ---- decode: query rows against n cached positions (paged or not); one block per (row, head) ---- */

__device__ float bf16_value(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

__device__ int64_t decode_row_offset(const int32_t *blocks, int64_t block_len, int64_t block_stride, int64_t ld,
                                     int64_t j) {
    if (!blocks) return j * ld;
    return (int64_t)blocks[j / block_len] * block_stride + (j % block_len) * ld;
}

__global__ void attention_decode_kernel(loom_attention_decode_args a, int64_t rows, int64_t qs, int64_t os,
                                        int64_t group, float scale, float *scores) {
    __shared__ float sh[32];
    const int64_t r = blockIdx.x / a.H, h = blockIdx.x % a.H, hd = a.hd, off = (h / group) * hd;
    const int64_t seen = a.n - rows + r + 1;
    const float *qh = a.q + r * qs + h * hd;
    float *s = scores + (r * a.H + h) * a.n;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < seen; j += blockDim.x) {
        const int64_t kj = decode_row_offset(a.blocks, a.block_len, a.block_stride, a.ld, j) + off;
        float d = 0.0f;
        for (int64_t i = 0; i < hd; i++) d += qh[i] * (a.k16 ? bf16_value(a.k16[kj + i]) : a.k[kj + i]);
        s[j] = d * scale;
        mx = fmaxf(mx, s[j]);
    }
    mx = block_max(mx, sh);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < seen; j += blockDim.x) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    sum = block_sum(sum, sh); /* also orders every thread's s[] writes before the reads below */
    for (int64_t i = threadIdx.x; i < hd; i += blockDim.x) {
        float o = 0.0f;
        for (int64_t j = 0; j < seen; j++) {
            const int64_t vj = decode_row_offset(a.blocks, a.block_len, a.block_stride, a.ld, j) + off + i;
            o += (s[j] / sum) * (a.v16 ? bf16_value(a.v16[vj]) : a.v[vj]);
        }
        a.out[r * os + h * hd + i] = o;
    }
}

extern "C" loom_status loom_cuda_attention_decode(loom_backend *be, const loom_attention_decode_args *a) {
    const int64_t rows = a->rows > 1 ? a->rows : 1, qs = a->qs ? a->qs : a->H * a->hd, os = a->os ? a->os : a->H * a->hd;
    if (a->H <= 0 || a->hd <= 0) return LOOM_OK;
    LOOM_CHECK(a->n >= rows, LOOM_ERR_INVALID_ARG, "attention: %lld query rows over %lld positions", (long long)rows,
               (long long)a->n);
    LOOM_CHECK(a->KV >= 1 && a->H % a->KV == 0, LOOM_ERR_INVALID_ARG, "attention: %lld query heads over %lld kv heads",
               (long long)a->H, (long long)a->KV);
    float *scores;
    LOOM_CALL(loom_cuda_workspace(be, (size_t)(rows * a->H * a->n) * sizeof(float), (void **)&scores));
    attention_decode_kernel<<<(unsigned)(rows * a->H), LOOM_CUDA_THREADS, 0, loom_cuda_of(be)->stream>>>(
        *a, rows, qs, os, a->H / a->KV, 1.0f / sqrtf((float)a->hd), scores);
    LOOM_CUDA_LAUNCHED();
    return LOOM_OK;
}

/* one launch per call, in order on the stream (unverified on a device: none was lent) */
extern "C" loom_status loom_cuda_attention_decode_batch(loom_backend *be, const loom_attention_decode_batch_args *a) {
    for (int64_t i = 0; i < a->n; i++) LOOM_CALL(loom_cuda_attention_decode(be, &a->calls[i]));
    return LOOM_OK;
}
