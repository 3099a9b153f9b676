// auxk.cu: the AuxK auxiliary loss of TopK-family dictionaries (docs/architectures.md, "AuxK").
//
// Kernels:
//   auxk_mask_dead   out = a where the feature is dead (dead [F] is 1 or 0), 0 elsewhere: the candidates of each
//                    token's auxiliary top k. Elementwise; bytes 4·(2·B·F + F).
// The op (CudaBackend::auxk) is this kernel before ordinary ones: topk_rows keeps each token's k_aux largest dead
// values (ties to the lower index, as ops::auxk's selection); decode_sparse with a zero bias gives ê; bwd_residual
// with inv_b = −1/2 gives the residual e = x − x̂ exactly (2·(x̂ − x)·(−1/2)); per_token_sq_err(e, ê) the loss;
// bwd_residual with inv_b = α·scale/B gives ∂ê; bwd_sparse_pairs (λ = 0), transpose and bwd_bdec (with a zero Σ ∂x̂:
// ê has no b_dec) give the auxiliary gradients, which accumulate adds to the main ones.
// Check:   the CPU emulator (kernels/cuda/emu/check.cpp) and, on a GPU, runner kernels check --backend cuda.
// CPU reference: kernels/src/ops/auxk.rs `reference`.

#include "common.cuh"

// a [B][F], dead [F] -> out [B][F]. Grid ceil(B·F / 256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
auxk_mask_dead(int B, int F, const float* __restrict__ a, const float* __restrict__ dead, float* __restrict__ out) {
    const long long p = (long long)blockIdx.x * SAE_THREADS + threadIdx.x;
    if (p >= (long long)B * F) return;
    out[p] = dead[p % F] != 0.0f ? a[p] : 0.0f;
}
