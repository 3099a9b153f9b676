// common.cuh: what every saeperf kernel file shares.
//
//   sgemm_body<TA, TB, EPI>   the register-blocked SGEMM (128x128 tile, BK 16, 256 threads, 8x8 per thread) with
//                             an optional per-column subtraction fused into the A load and a fused epilogue
//                             (store / +bias / +bias then ReLU / mask-by-f then +l1 / Gated's two paths). Used by
//                             encode, decode, backward and gated.
//   block_sum<T>              a block-wide sum (warp shuffles, then shared memory); every thread gets the result.
//   block_rank                a predicate's exclusive count over the block's threads, and its total (ballot + popc).
//   compact_nonzero_chunk     the nonzero entries of a 256-wide slice of a row, in index order, into shared memory.
//
// This header is prepended to each .cu file by the Rust side (NVRTC gets one self-contained source per file); the
// line `#include "common.cuh"` in a .cu file is replaced by this text. Nothing here may include a system header:
// NVRTC has no C++ standard library.

#ifndef SAEPERF_COMMON_CUH
#define SAEPERF_COMMON_CUH

#define SAE_THREADS 256
#define GEMM_BM 128
#define GEMM_BN 128
#define GEMM_BK 16
#define GEMM_TM 8
#define GEMM_TN 8
#define GEMM_THREADS 256
#define FULL_MASK 0xffffffffu

enum { EPI_STORE = 0, EPI_BIAS = 1, EPI_BIAS_RELU = 2, EPI_MASK_L1 = 3, EPI_GATED = 4 };

typedef unsigned long long u64;

__device__ __forceinline__ bool aligned16(const void* p) {
    return (((u64)p) & 15ull) == 0ull;
}

// Loads four consecutive elements P[row][col .. col+3] of a row-major matrix with `rows` rows, `cols` columns and
// leading dimension `ld`, zero outside it, minus sub[col + i] when `sub` is given. One float4 load when allowed.
__device__ __forceinline__ void load4(const float* __restrict__ P, int ld, int row, int col, int rows, int cols,
                                      bool vec, const float* __restrict__ sub, float v[4]) {
    if (row < rows && vec && col + 3 < cols) {
        float4 q = *reinterpret_cast<const float4*>(P + (size_t)row * ld + col);
        v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
        if (sub) {
            float4 s = *reinterpret_cast<const float4*>(sub + col);
            v[0] -= s.x; v[1] -= s.y; v[2] -= s.z; v[3] -= s.w;
        }
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int c = col + i;
            float x = 0.0f;
            if (row < rows && c < cols) {
                x = P[(size_t)row * ld + c];
                if (sub) x -= sub[c];
            }
            v[i] = x;
        }
    }
}

// C[M, N] = op(A)[M, K] · op(B)[K, N], then the epilogue.
//   A is stored [M][lda] (TA = false) or [K][lda] (TA = true); sub_a (may be null) is subtracted per STORED column.
//   B is stored [K][ldb] (TB = false) or [N][ldb] (TB = true).
//   EPI_BIAS: C = acc + bias[n]; EPI_BIAS_RELU: max(acc + bias[n], 0); EPI_MASK_L1: mask[m][n] > 0 ? acc + addend : 0.
//   EPI_GATED: C = π_gate = acc + bias[n] and C2[m][n] (leading dimension ldc) = π_gate > 0 ?
//              max(acc·exp(r_mag[n]) + b_mag[n], 0) : 0, the gate and the magnitude path from one accumulator.
// Grid: (ceil(N / 128), ceil(M / 128)); block: 256 threads; any M, N, K (partial tiles are zero-filled).
template <bool TA, bool TB, int EPI>
__device__ __forceinline__ void sgemm_body(int M, int N, int K,
                                           const float* __restrict__ A, int lda, const float* __restrict__ sub_a,
                                           const float* __restrict__ B, int ldb,
                                           float* __restrict__ C, int ldc,
                                           const float* __restrict__ bias,
                                           const float* __restrict__ mask, int ldmask, float addend,
                                           const float* __restrict__ r_mag = nullptr,
                                           const float* __restrict__ b_mag = nullptr,
                                           float* __restrict__ C2 = nullptr) {
    __shared__ __align__(16) float As[GEMM_BK][GEMM_BM];
    __shared__ __align__(16) float Bs[GEMM_BK][GEMM_BN];
    const int t = threadIdx.x;
    const int m0 = blockIdx.y * GEMM_BM;
    const int n0 = blockIdx.x * GEMM_BN;
    const int tr = t / (GEMM_BN / GEMM_TN);
    const int tc = t % (GEMM_BN / GEMM_TN);
    const bool vec_a = (lda & 3) == 0 && aligned16(A) && (sub_a == nullptr || aligned16(sub_a));
    const bool vec_b = (ldb & 3) == 0 && aligned16(B);

    float acc[GEMM_TM][GEMM_TN];
#pragma unroll
    for (int i = 0; i < GEMM_TM; ++i)
#pragma unroll
        for (int j = 0; j < GEMM_TN; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += GEMM_BK) {
#pragma unroll
        for (int l = t; l < GEMM_BM * GEMM_BK / 4; l += GEMM_THREADS) {
            float v[4];
            if (!TA) {
                const int r = l / (GEMM_BK / 4);
                const int c = (l % (GEMM_BK / 4)) * 4;
                load4(A, lda, m0 + r, k0 + c, M, K, vec_a, sub_a, v);
                As[c + 0][r] = v[0];
                As[c + 1][r] = v[1];
                As[c + 2][r] = v[2];
                As[c + 3][r] = v[3];
            } else {
                const int r = l / (GEMM_BM / 4);
                const int c = (l % (GEMM_BM / 4)) * 4;
                load4(A, lda, k0 + r, m0 + c, K, M, vec_a, sub_a, v);
                *reinterpret_cast<float4*>(&As[r][c]) = make_float4(v[0], v[1], v[2], v[3]);
            }
        }
#pragma unroll
        for (int l = t; l < GEMM_BN * GEMM_BK / 4; l += GEMM_THREADS) {
            float v[4];
            if (!TB) {
                const int r = l / (GEMM_BN / 4);
                const int c = (l % (GEMM_BN / 4)) * 4;
                load4(B, ldb, k0 + r, n0 + c, K, N, vec_b, nullptr, v);
                *reinterpret_cast<float4*>(&Bs[r][c]) = make_float4(v[0], v[1], v[2], v[3]);
            } else {
                const int r = l / (GEMM_BK / 4);
                const int c = (l % (GEMM_BK / 4)) * 4;
                load4(B, ldb, n0 + r, k0 + c, N, K, vec_b, nullptr, v);
                Bs[c + 0][r] = v[0];
                Bs[c + 1][r] = v[1];
                Bs[c + 2][r] = v[2];
                Bs[c + 3][r] = v[3];
            }
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; ++kk) {
            float ra[GEMM_TM], rb[GEMM_TN];
            const float4 a0 = *reinterpret_cast<const float4*>(&As[kk][tr * GEMM_TM]);
            const float4 a1 = *reinterpret_cast<const float4*>(&As[kk][tr * GEMM_TM + 4]);
            const float4 b0 = *reinterpret_cast<const float4*>(&Bs[kk][tc * GEMM_TN]);
            const float4 b1 = *reinterpret_cast<const float4*>(&Bs[kk][tc * GEMM_TN + 4]);
            ra[0] = a0.x; ra[1] = a0.y; ra[2] = a0.z; ra[3] = a0.w;
            ra[4] = a1.x; ra[5] = a1.y; ra[6] = a1.z; ra[7] = a1.w;
            rb[0] = b0.x; rb[1] = b0.y; rb[2] = b0.z; rb[3] = b0.w;
            rb[4] = b1.x; rb[5] = b1.y; rb[6] = b1.z; rb[7] = b1.w;
#pragma unroll
            for (int i = 0; i < GEMM_TM; ++i)
#pragma unroll
                for (int j = 0; j < GEMM_TN; ++j) acc[i][j] = fmaf(ra[i], rb[j], acc[i][j]);
        }
        __syncthreads();
    }

    const bool vec_c = (ldc & 3) == 0 && aligned16(C) && (EPI != EPI_GATED || aligned16(C2));
#pragma unroll
    for (int i = 0; i < GEMM_TM; ++i) {
        const int m = m0 + tr * GEMM_TM + i;
        if (m >= M) break;
        const int nb = n0 + tc * GEMM_TN;
        float out[GEMM_TN];
        float out2[GEMM_TN];
#pragma unroll
        for (int j = 0; j < GEMM_TN; ++j) {
            const int n = nb + j;
            float r = acc[i][j];
            out2[j] = 0.0f;
            if (n < N) {
                if (EPI == EPI_BIAS) r += bias[n];
                if (EPI == EPI_BIAS_RELU) { r += bias[n]; r = r > 0.0f ? r : 0.0f; }
                if (EPI == EPI_MASK_L1) r = mask[(size_t)m * ldmask + n] > 0.0f ? r + addend : 0.0f;
                if (EPI == EPI_GATED) {
                    const float mag = r * expf(r_mag[n]) + b_mag[n];
                    r += bias[n];
                    out2[j] = r > 0.0f && mag > 0.0f ? mag : 0.0f;
                }
            }
            out[j] = r;
        }
        float* crow = C + (size_t)m * ldc;
        float* crow2 = EPI == EPI_GATED ? C2 + (size_t)m * ldc : nullptr;
        if (vec_c && nb + GEMM_TN - 1 < N) {
            *reinterpret_cast<float4*>(crow + nb) = make_float4(out[0], out[1], out[2], out[3]);
            *reinterpret_cast<float4*>(crow + nb + 4) = make_float4(out[4], out[5], out[6], out[7]);
            if (EPI == EPI_GATED) {
                *reinterpret_cast<float4*>(crow2 + nb) = make_float4(out2[0], out2[1], out2[2], out2[3]);
                *reinterpret_cast<float4*>(crow2 + nb + 4) = make_float4(out2[4], out2[5], out2[6], out2[7]);
            }
        } else {
#pragma unroll
            for (int j = 0; j < GEMM_TN; ++j)
                if (nb + j < N) {
                    crow[nb + j] = out[j];
                    if (EPI == EPI_GATED) crow2[nb + j] = out2[j];
                }
        }
    }
}

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024). Every thread returns the total.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
    __shared__ T part[32];
    __shared__ T total;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FULL_MASK, v, o);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        T s = lane < nw ? part[lane] : (T)0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(FULL_MASK, s, o);
        if (lane == 0) total = s;
    }
    __syncthreads();
    const T r = total;
    __syncthreads();  // `total` and `part` may be reused by the next call
    return r;
}

// For one predicate per thread of a block of exactly 256 threads: how many threads before this one (in thread order)
// hold it, returned, and how many hold it in all, in *total (the same in every thread). warp_counts is shared memory
// of 8 ints. Starts and ends with every thread at a barrier, so warp_counts can be reused by the next call.
__device__ __forceinline__ unsigned block_rank(bool pred, int* warp_counts, unsigned* total) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const unsigned bal = __ballot_sync(FULL_MASK, pred);
    if (lane == 0) warp_counts[warp] = __popc(bal);
    __syncthreads();
    unsigned off = 0, all = 0;
    for (int w = 0; w < SAE_THREADS / 32; ++w) {
        if (w < warp) off += (unsigned)warp_counts[w];
        all += (unsigned)warp_counts[w];
    }
    *total = all;
    const unsigned r = off + __popc(bal & ((1u << lane) - 1u));
    __syncthreads();
    return r;
}

// The nonzero entries of row[c0 .. c0 + 256) (row has `n` entries), in increasing index order, into idx / val.
// Block of exactly 256 threads; returns the count (same in every thread). Ends with a barrier.
__device__ __forceinline__ int compact_nonzero_chunk(const float* __restrict__ row, int n, int c0,
                                                     int* idx, float* val, int* warp_counts) {
    const int i = c0 + (int)threadIdx.x;
    const float v = i < n ? row[i] : 0.0f;
    unsigned total;
    const unsigned pos = block_rank(v != 0.0f, warp_counts, &total);
    if (v != 0.0f) {
        idx[pos] = i;
        val[pos] = v;
    }
    __syncthreads();
    return (int)total;
}

#endif  // SAEPERF_COMMON_CUH
