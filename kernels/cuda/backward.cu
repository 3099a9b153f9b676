// backward.cu: gradients of (1/B)·Σ_b ‖x̂_b − x_b‖² + λ·(1/B)·Σ_b Σ_i f_bi for every parameter.
//
// Variants (launched in this order by the CUDA backend):
//   bwd_residual        dxh = 2·(x̂ − x)/B, [B][d].
//   dense path (three GEMMs, common.cuh sgemm_body):
//     bwd_dwdec_gemm    ∂W_dec = fᵀ · dxh                      (A transposed).
//     bwd_dpre_gemm     ∂pre = mask(f > 0) · (dxh · W_decᵀ + λ/B)  (B transposed; mask and L1 term in the epilogue).
//     bwd_dwenc_gemm    ∂W_enc = (x − b_dec)ᵀ · ∂pre           (A transposed; b_dec subtraction fused into the load).
//     col_sums          ∂b_enc = Σ_b ∂pre[b] (one thread per column, rows in order: deterministic).
//   sparse path (when few features fire; touches only firing (token, feature) pairs):
//     bwd_sparse_pairs  per token: compact its firing features, one warp per pair computes ∂pre (a dot of length d),
//                       then atomically adds f·dxh into ∂W_dec[i] and ∂pre·(x − b_dec) into ∂W_encᵀ[i] (coalesced
//                       rows) and ∂pre into ∂b_enc[i]. Float atomics: not bitwise reproducible, within 1e-6 rel.
//     transpose         ∂W_encᵀ [F][d] -> ∂W_enc [d][F] (32x32 shared tiles).
//   both paths:
//     col_sums          Σ_b dxh[b].
//     bwd_bdec          ∂b_dec[j] = Σ_b dxh[b][j] − Σ_i W_enc[j][i]·∂b_enc[i] (one block per j).
// Check:   runner kernels check --backend cuda --op backward   (against ops::backward::reference, poisoned outputs)
// CPU reference: kernels/src/ops/backward.rs `reference`.

#include "common.cuh"

// x, xhat [n] -> dxh = 2·(xhat − x)·inv_b. Grid ceil(n/256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
bwd_residual(long long n, float inv_b, const float* __restrict__ x, const float* __restrict__ xhat,
             float* __restrict__ dxh) {
    const long long i = (long long)blockIdx.x * SAE_THREADS + threadIdx.x;
    if (i < n) dxh[i] = 2.0f * (xhat[i] - x[i]) * inv_b;
}

// f [B][F], dxh [B][d] -> g_wdec [F][d]. Grid (ceil(d/128), ceil(F/128)), 256 threads.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
bwd_dwdec_gemm(int B, int d, int F, const float* __restrict__ f, const float* __restrict__ dxh,
               float* __restrict__ g_wdec) {
    sgemm_body<true, false, EPI_STORE>(F, d, B, f, F, nullptr, dxh, d, g_wdec, d, nullptr, nullptr, 0, 0.0f);
}

// dxh [B][d], w_dec [F][d], f [B][F] -> dpre [B][F]. Grid (ceil(F/128), ceil(B/128)), 256 threads.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
bwd_dpre_gemm(int B, int d, int F, float l1b, const float* __restrict__ dxh, const float* __restrict__ w_dec,
              const float* __restrict__ f, float* __restrict__ dpre) {
    sgemm_body<false, true, EPI_MASK_L1>(B, F, d, dxh, d, nullptr, w_dec, d, dpre, F, nullptr, f, F, l1b);
}

// x [B][d], b_dec [d], dpre [B][F] -> g_wenc [d][F]. Grid (ceil(F/128), ceil(d/128)), 256 threads.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
bwd_dwenc_gemm(int B, int d, int F, const float* __restrict__ x, const float* __restrict__ b_dec,
               const float* __restrict__ dpre, float* __restrict__ g_wenc) {
    sgemm_body<true, false, EPI_STORE>(d, F, B, x, d, b_dec, dpre, F, g_wenc, F, nullptr, nullptr, 0, 0.0f);
}

// m [rows][cols] -> out[c] = Σ_r m[r][c], rows in order. Grid ceil(cols/256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
col_sums(int rows, int cols, const float* __restrict__ m, float* __restrict__ out) {
    const int c = blockIdx.x * SAE_THREADS + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (int r = 0; r < rows; ++r) s += m[(size_t)r * cols + c];
    out[c] = s;
}

// g_bdec[j] = dxh_sum[j] − Σ_i w_enc[j][i]·g_benc[i]. Grid (d), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
bwd_bdec(int d, int F, const float* __restrict__ w_enc, const float* __restrict__ g_benc,
         const float* __restrict__ dxh_sum, float* __restrict__ g_bdec) {
    const int j = blockIdx.x;
    if (j >= d) return;
    const float* row = w_enc + (size_t)j * F;
    float s = 0.0f;
    for (int i = threadIdx.x; i < F; i += SAE_THREADS) s = fmaf(row[i], g_benc[i], s);
    s = block_sum<float>(s);
    if (threadIdx.x == 0) g_bdec[j] = dxh_sum[j] - s;
}

// Sparse path. x [B][d], b_dec [d], f [B][F], dxh [B][d], w_dec [F][d]; outputs zeroed beforehand:
// g_wdec [F][d], g_wenc_t [F][d] (the transpose of ∂W_enc), g_benc [F]. Grid (B), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
bwd_sparse_pairs(int B, int d, int F, float l1b, const float* __restrict__ x, const float* __restrict__ b_dec,
                 const float* __restrict__ f, const float* __restrict__ dxh, const float* __restrict__ w_dec,
                 float* __restrict__ g_wdec, float* __restrict__ g_wenc_t, float* __restrict__ g_benc) {
    __shared__ int idx[SAE_THREADS];
    __shared__ float val[SAE_THREADS];
    __shared__ int warp_counts[SAE_THREADS / 32];
    const int b = blockIdx.x;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const float* frow = f + (size_t)b * F;
    const float* drow = dxh + (size_t)b * d;
    const float* xrow = x + (size_t)b * d;
    for (int c0 = 0; c0 < F; c0 += SAE_THREADS) {
        const int n = compact_nonzero_chunk(frow, F, c0, idx, val, warp_counts);
        for (int e = warp; e < n; e += SAE_THREADS / 32) {
            const int i = idx[e];
            const float fv = val[e];
            const float* wrow = w_dec + (size_t)i * d;
            float s = 0.0f;
            for (int j = lane; j < d; j += 32) s = fmaf(drow[j], wrow[j], s);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
            const float dp = s + l1b;
            float* gd = g_wdec + (size_t)i * d;
            float* ge = g_wenc_t + (size_t)i * d;
            for (int j = lane; j < d; j += 32) {
                atomicAdd(gd + j, fv * drow[j]);
                atomicAdd(ge + j, dp * (xrow[j] - b_dec[j]));
            }
            if (lane == 0) atomicAdd(g_benc + i, dp);
        }
        __syncthreads();
    }
}

// in [rows][cols] -> out [cols][rows]. Grid (ceil(cols/32), ceil(rows/32)), block (32, 8).
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
transpose(int rows, int cols, const float* __restrict__ in, float* __restrict__ out) {
    __shared__ float tile[32][33];
    const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    for (int k = threadIdx.y; k < 32; k += 8) {
        const int r = r0 + k, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[k][threadIdx.x] = in[(size_t)r * cols + c];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < 32; k += 8) {
        const int c = c0 + k, r = r0 + threadIdx.x;
        if (r < rows && c < cols) out[(size_t)c * rows + r] = tile[threadIdx.x][k];
    }
}
