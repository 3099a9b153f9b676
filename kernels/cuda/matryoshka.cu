// matryoshka.cu: the pieces of Matryoshka's nested prefix losses (docs/architectures.md, "Matryoshka").
//
// Kernels:
//   prefix_mask   out = f in the columns < m, 0 elsewhere (the codes of one prefix). Elementwise; bytes 8·B·F.
//   accumulate    acc += g, elementwise (the prefixes' gradients summed into the full one); bytes 12·n.
// A training step decodes and differentiates each prefix with the ordinary decode / backward kernels on the masked
// codes, and sums the prefixes' losses from per_token_sq_err, so every piece of the step stays on the device.
// Check:   the CPU emulator (kernels/cuda/emu/check.cpp) and, on a GPU, runner kernels check --backend cuda.
// CPU reference: kernels/src/ops/matryoshka.rs `prefix_mask_reference`, `accumulate_reference`.

#include "common.cuh"

// f [B][F] -> out [B][F]. Grid ceil(B·F / 256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
prefix_mask(int B, int F, int m, const float* __restrict__ f, float* __restrict__ out) {
    const long long n = (long long)B * F;
    const long long p = (long long)blockIdx.x * SAE_THREADS + threadIdx.x;
    if (p >= n) return;
    out[p] = (int)(p % F) < m ? f[p] : 0.0f;
}

// acc [n] += g [n]. Grid ceil(n / 256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
accumulate(long long n, float* __restrict__ acc, const float* __restrict__ g) {
    const long long p = (long long)blockIdx.x * SAE_THREADS + threadIdx.x;
    if (p < n) acc[p] += g[p];
}
