// adam.cu: the fused Adam step, and the decoder variant that keeps decoder rows at unit norm.
//
// Variants:
//   adam_step          elementwise Adam (m, v, bias correction, update) on any buffer; one thread per element.
//   adam_decoder_rows  one block per decoder row of W_dec [F][d]: remove from the gradient its component along the row
//                      (g ← g − ⟨g, w⟩/‖w‖ · w/‖w‖, written back like the CPU op), the Adam step, then renormalise the
//                      row. Norms and dots are block reductions (warp shuffles + shared memory).
// Check:   runner kernels check --backend cuda --op adam   (against ops::adam::{reference, decoder_reference})
// CPU reference: kernels/src/ops/adam.rs.

#include "common.cuh"

__device__ __forceinline__ void adam_update(float* p, float g, float* m, float* v, float lr, float b1, float b2,
                                            float eps, float c1, float c2) {
    const float mn = b1 * *m + (1.0f - b1) * g;
    const float vn = b2 * *v + (1.0f - b2) * g * g;
    *m = mn;
    *v = vn;
    const float mh = mn / c1;
    const float vh = vn / c2;
    *p -= lr * mh / (sqrtf(vh) + eps);
}

// p, g, m, v [n]. c1 = 1 − β1^t, c2 = 1 − β2^t. Grid ceil(n/256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
adam_step(long long n, float lr, float b1, float b2, float eps, float c1, float c2, float* __restrict__ p,
          const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v) {
    const long long i = (long long)blockIdx.x * SAE_THREADS + threadIdx.x;
    if (i < n) adam_update(p + i, g[i], m + i, v + i, lr, b1, b2, eps, c1, c2);
}

// w, g, m, v [rows][d]. Grid (rows), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
adam_decoder_rows(int rows, int d, float lr, float b1, float b2, float eps, float c1, float c2,
                  float* __restrict__ w, float* __restrict__ g, float* __restrict__ m, float* __restrict__ v) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    float* wr = w + (size_t)r * d;
    float* gr = g + (size_t)r * d;
    float* mr = m + (size_t)r * d;
    float* vr = v + (size_t)r * d;
    float sq = 0.0f, dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += SAE_THREADS) {
        sq = fmaf(wr[j], wr[j], sq);
        dot = fmaf(wr[j], gr[j], dot);
    }
    const float norm = sqrtf(block_sum<float>(sq));
    dot = block_sum<float>(dot);
    if (norm > 0.0f) {
        const float proj = dot / norm;
        for (int j = threadIdx.x; j < d; j += SAE_THREADS) gr[j] -= proj * wr[j] / norm;
    }
    float sq2 = 0.0f;
    for (int j = threadIdx.x; j < d; j += SAE_THREADS) {
        adam_update(wr + j, gr[j], mr + j, vr + j, lr, b1, b2, eps, c1, c2);
        sq2 = fmaf(wr[j], wr[j], sq2);
    }
    const float norm2 = sqrtf(block_sum<float>(sq2));
    if (norm2 > 0.0f)
        for (int j = threadIdx.x; j < d; j += SAE_THREADS) wr[j] /= norm2;
}
