// threshold.cu: JumpReLU's activation and its threshold's pseudo-gradient (docs/architectures.md, "JumpReLU").
//
// Kernels:
//   threshold_rows   f = a · 1[a > exp(t)] on the ReLU'd pre-activations a [B][F] that encode_gemm_relu writes, with
//                    t = log θ [F]. Elementwise, one thread per entry: bytes 4·(2·B·F + F).
//   threshold_grad   ∂t_i = θ_i · Σ_b 1[a_bi > 0 and |a_bi − θ_i| < ε/2] · (−1/ε) · (θ_i·⟨2(x̂_b − x_b)/B, W_dec[i]⟩ + λ/B),
//                    the rectangle-kernel pseudo-gradient. One warp lane per feature (32 features per block, coalesced
//                    reads of a), the 8 warps split the batch; a lane whose pair is in the band does the d-long dot
//                    product itself (band pairs are few: the band is ε wide). Partial sums meet in shared memory in
//                    a fixed order, so the result does not depend on scheduling.
// Check:   the CPU emulator (kernels/cuda/emu/check.cpp) and, on a GPU, runner kernels check --backend cuda.
// CPU reference: kernels/src/ops/threshold.rs `reference` and `grad_reference`.

#include "common.cuh"

// a [B][F], log_theta [F] -> f [B][F]. Grid ceil(B·F / 256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
threshold_rows(int B, int F, const float* __restrict__ a, const float* __restrict__ log_theta,
               float* __restrict__ f) {
    const long long n = (long long)B * F;
    const long long p = (long long)blockIdx.x * SAE_THREADS + threadIdx.x;
    if (p >= n) return;
    const float v = a[p];
    f[p] = v > expf(log_theta[p % F]) ? v : 0.0f;
}

// a [B][F], log_theta [F], x [B][d], xhat [B][d], w_dec [F][d] -> g [F] (overwritten).
// Grid ceil(F / 32), 256 threads (8 warps × 32 features).
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
threshold_grad(int B, int d, int F, float eps, float l0, const float* __restrict__ a,
               const float* __restrict__ log_theta, const float* __restrict__ x, const float* __restrict__ xhat,
               const float* __restrict__ w_dec, float* __restrict__ g) {
    __shared__ float part[SAE_THREADS / 32][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int i = blockIdx.x * 32 + lane;
    const float inv_b = 1.0f / (float)(B > 0 ? B : 1);
    float acc = 0.0f;
    if (i < F) {
        const float theta = expf(log_theta[i]);
        const float* wr = w_dec + (size_t)i * d;
        for (int b = warp; b < B; b += SAE_THREADS / 32) {
            const float v = a[(size_t)b * F + i];
            if (v > 0.0f && fabsf((v - theta) / eps) < 0.5f) {
                const float* xb = x + (size_t)b * d;
                const float* hb = xhat + (size_t)b * d;
                float df = 0.0f;
                for (int j = 0; j < d; ++j) df += 2.0f * (hb[j] - xb[j]) * inv_b * wr[j];
                acc += -(theta * df + l0 * inv_b) / eps;
            }
        }
    }
    part[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && i < F) {
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < SAE_THREADS / 32; ++w) s += part[w][lane];
        g[i] = expf(log_theta[i]) * s;
    }
}
