// encode.cu: f = act((x − b_dec) · W_enc + b_enc).
//
// Variants:
//   encode_gemm_relu   tiled SGEMM (common.cuh sgemm_body, 128x128x16, 8x8 per thread, float4 loads where aligned)
//                      with the b_dec subtraction fused into the A-tile load and bias + ReLU fused into the epilogue.
//   topk_rows          TopK selection in place on the ReLU'd rows: radix select of the k-th largest positive value
//                      (4 passes of 8 bits over the float bits), ties broken by the lower index. Launched after
//                      encode_gemm_relu for Activation::TopK; TopK(ReLU(pre)) keeps the same values as selecting on pre.
// Check:   runner kernels check --backend cuda --op encode   (against ops::encode::reference, poisoned outputs)
// Compile: runner kernels check                                (NVRTC sm_80 + sm_90, ptxas registers / spills)
// CPU reference: kernels/src/ops/encode.rs `reference`.

#include "common.cuh"

// x [B][d], w_enc [d][F], b_enc [F], b_dec [d] -> f [B][F]. Grid (ceil(F/128), ceil(B/128)), 256 threads.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
encode_gemm_relu(int B, int d, int F, const float* __restrict__ x, const float* __restrict__ w_enc,
                 const float* __restrict__ b_enc, const float* __restrict__ b_dec, float* __restrict__ f) {
    sgemm_body<false, false, EPI_BIAS_RELU>(B, F, d, x, d, b_dec, w_enc, F, f, F, b_enc, nullptr, 0, 0.0f);
}

// In place on f [B][F] (already ReLU'd, so every value is >= +0): keep the k largest of each row, ties to the lower
// index, zero the rest. Grid (B), 256 threads. Values are non-negative, so their bit patterns order like the values.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
topk_rows(int B, int F, int k, float* __restrict__ f) {
    __shared__ unsigned hist[256];
    __shared__ unsigned sel_bin, sel_rem, sel_ties;
    const int b = blockIdx.x;
    if (b >= B) return;
    float* row = f + (size_t)b * F;
    const int t = threadIdx.x;

    unsigned pos = 0;
    for (int i = t; i < F; i += SAE_THREADS) pos += row[i] > 0.0f ? 1u : 0u;
    pos = block_sum<unsigned>(pos);
    if (pos <= (unsigned)k) return;  // every positive value survives; the zeros stay zero

    unsigned prefix = 0, mask = 0, rem = (unsigned)k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        hist[t] = 0;  // 256 threads, 256 bins
        __syncthreads();
        for (int i = t; i < F; i += SAE_THREADS) {
            const unsigned key = __float_as_uint(row[i]);
            if (key != 0u && (key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (t == 0) {
            unsigned cum = 0;
            for (int bin = 255; bin >= 0; --bin) {
                const unsigned h = hist[bin];
                if (cum + h >= rem) {
                    sel_bin = (unsigned)bin;
                    sel_rem = rem - cum;
                    sel_ties = h;
                    break;
                }
                cum += h;
            }
        }
        __syncthreads();
        prefix |= sel_bin << shift;
        mask |= 255u << shift;
        rem = sel_rem;
        __syncthreads();
    }
    // prefix is the k-th largest key; rem of the values equal to it survive, sel_ties of them exist.
    const unsigned thr = prefix;
    if (sel_ties == rem) {
        for (int i = t; i < F; i += SAE_THREADS) {
            const unsigned key = __float_as_uint(row[i]);
            if (key < thr) row[i] = 0.0f;
        }
        return;
    }
    // Ties: keep the first `rem` equal values by index (rare: exact float ties among positive pre-activations).
    __shared__ int warp_counts[SAE_THREADS / 32];
    unsigned kept = 0;
    for (int c0 = 0; c0 < F; c0 += SAE_THREADS) {
        const int i = c0 + t;
        const unsigned key = i < F ? __float_as_uint(row[i]) : 0u;
        const bool eq = i < F && key == thr;
        unsigned total;
        const unsigned rank = kept + block_rank(eq, warp_counts, &total);
        if (i < F && (key < thr || (eq && rank >= rem))) row[i] = 0.0f;
        kept += total;
    }
}
