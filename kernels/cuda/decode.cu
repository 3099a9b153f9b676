// decode.cu: x̂ = f · W_dec + b_dec.
//
// Variants:
//   decode_gemm     dense tiled SGEMM (common.cuh sgemm_body, 128x128x16, 8x8 per thread) with the bias fused into
//                   the epilogue. Cost 2·B·F·d whatever the sparsity.
//   decode_sparse   gather: one block per (token, 1024 output columns); the firing features of the token are compacted
//                   256 at a time into shared memory (ballot + popc, index order, so the sum order is fixed) and
//                   their decoder rows are added with coalesced loads. Cost 2·nnz(f)·d plus one read of f.
// Check:   runner kernels check --backend cuda --op decode   (against ops::decode::reference, poisoned outputs)
// CPU reference: kernels/src/ops/decode.rs `reference`.

#include "common.cuh"

#define DECODE_COLS_PER_THREAD 4

// f [B][F], w_dec [F][d], b_dec [d] -> xhat [B][d]. Grid (ceil(d/128), ceil(B/128)), 256 threads.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
decode_gemm(int B, int d, int F, const float* __restrict__ f, const float* __restrict__ w_dec,
            const float* __restrict__ b_dec, float* __restrict__ xhat) {
    sgemm_body<false, false, EPI_BIAS>(B, d, F, f, F, nullptr, w_dec, d, xhat, d, b_dec, nullptr, 0, 0.0f);
}

// Same contract. Grid (B, ceil(d / 1024)), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
decode_sparse(int B, int d, int F, const float* __restrict__ f, const float* __restrict__ w_dec,
              const float* __restrict__ b_dec, float* __restrict__ xhat) {
    __shared__ int idx[SAE_THREADS];
    __shared__ float val[SAE_THREADS];
    __shared__ int warp_counts[SAE_THREADS / 32];
    const int b = blockIdx.x;
    const int t = threadIdx.x;
    const int col0 = blockIdx.y * SAE_THREADS * DECODE_COLS_PER_THREAD;
    const float* frow = f + (size_t)b * F;
    float acc[DECODE_COLS_PER_THREAD];
#pragma unroll
    for (int r = 0; r < DECODE_COLS_PER_THREAD; ++r) {
        const int j = col0 + t + r * SAE_THREADS;
        acc[r] = j < d ? b_dec[j] : 0.0f;
    }
    for (int c0 = 0; c0 < F; c0 += SAE_THREADS) {
        const int n = compact_nonzero_chunk(frow, F, c0, idx, val, warp_counts);
        for (int e = 0; e < n; ++e) {
            const float v = val[e];
            const float* wrow = w_dec + (size_t)idx[e] * d;
#pragma unroll
            for (int r = 0; r < DECODE_COLS_PER_THREAD; ++r) {
                const int j = col0 + t + r * SAE_THREADS;
                if (j < d) acc[r] = fmaf(v, wrow[j], acc[r]);
            }
        }
        __syncthreads();  // idx / val are rewritten by the next chunk
    }
#pragma unroll
    for (int r = 0; r < DECODE_COLS_PER_THREAD; ++r) {
        const int j = col0 + t + r * SAE_THREADS;
        if (j < d) xhat[(size_t)b * d + j] = acc[r];
    }
}
