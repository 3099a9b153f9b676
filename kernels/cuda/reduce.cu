// reduce.cu: the loss and metric reductions of a batch.
//
// Variants:
//   row_stats            per token, in double: Σ_j (x − x̂)², #{i : f_i > 0}, Σ_i f_i (one block per token); the host
//                        adds the rows in token order, as the CPU op does, so the sums are deterministic.
//   feature_fire_counts  counts[i] += #{b : f[b][i] > 0} (one thread per feature, rows in order): density counts and
//                        the dead-feature counters of resampling.
//   count_nonzero        nnz(f) (block sums, one 64-bit atomic per block): decides the sparse or dense path.
// Check:   runner kernels check --backend cuda --op reduce   (against ops::reduce::reference)
// CPU reference: kernels/src/ops/reduce.rs.

#include "common.cuh"

// x, xhat [B][d], f [B][F] -> out [B][3] (sse, l0, l1). Grid (B), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
row_stats(int B, int d, int F, const float* __restrict__ x, const float* __restrict__ xhat,
          const float* __restrict__ f, double* __restrict__ out) {
    const int b = blockIdx.x;
    if (b >= B) return;
    double sse = 0.0, l0 = 0.0, l1 = 0.0;
    for (int j = threadIdx.x; j < d; j += SAE_THREADS) {
        const double e = (double)(x[(size_t)b * d + j] - xhat[(size_t)b * d + j]);
        sse += e * e;
    }
    for (int i = threadIdx.x; i < F; i += SAE_THREADS) {
        const float v = f[(size_t)b * F + i];
        l0 += v > 0.0f ? 1.0 : 0.0;
        l1 += (double)v;
    }
    sse = block_sum<double>(sse);
    l0 = block_sum<double>(l0);
    l1 = block_sum<double>(l1);
    if (threadIdx.x == 0) {
        out[(size_t)b * 3 + 0] = sse;
        out[(size_t)b * 3 + 1] = l0;
        out[(size_t)b * 3 + 2] = l1;
    }
}

// f [B][F] -> counts [F] += firing tokens. Grid ceil(F/256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
feature_fire_counts(int B, int F, const float* __restrict__ f, unsigned* __restrict__ counts) {
    const int i = blockIdx.x * SAE_THREADS + threadIdx.x;
    if (i >= F) return;
    unsigned c = 0;
    for (int b = 0; b < B; ++b) c += f[(size_t)b * F + i] > 0.0f ? 1u : 0u;
    counts[i] += c;
}

// f [n] -> *out += nnz (out zeroed beforehand). Grid min(ceil(n/256), 4096), 256 threads, grid-stride loop.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
count_nonzero(long long n, const float* __restrict__ f, u64* __restrict__ out) {
    u64 c = 0;
    for (long long i = (long long)blockIdx.x * SAE_THREADS + threadIdx.x; i < n;
         i += (long long)gridDim.x * SAE_THREADS)
        c += f[i] != 0.0f ? 1ull : 0ull;
    c = block_sum<u64>(c);
    if (threadIdx.x == 0 && c) atomicAdd(out, c);
}
