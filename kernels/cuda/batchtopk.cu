// batchtopk.cu: BatchTopK's batch-wide selection (docs/architectures.md, "BatchTopK").
//
// Keep the K = k·B largest positive values of the ReLU'd pre-activations a [B][F] over the whole batch, ties to the
// lower flat index b·F + i, zero the rest; the smallest kept value feeds the inference threshold. A per-row top-k
// (topk_rows) does not do: the K-th largest value of the batch is found by a radix select over the whole matrix,
// spread over many blocks. Positive floats order like their bit patterns, so 4 passes of 8 bits over the keys:
//
//   btk_hist      (each pass) a 256-bin histogram of the bits [shift, shift+8) of the positive keys that match the
//                 prefix chosen so far: per-block shared histograms, added into a global one. Grid-stride.
//   btk_pick      (each pass, one thread) walks the histogram from the top, picks the bin holding the rem-th largest
//                 remaining key, narrows prefix / mask / rem, and clears the histogram for the next pass.
//   btk_row_ties  after the passes: per row, how many keys equal the K-th largest key t (block per row).
//   btk_allow     one thread: how many of each row's ties are kept, in row order (flat order = row-major).
//   btk_apply     block per row: keys above t kept, the first allow[b] keys equal to t kept (ballot ranks, index
//                 order), everything else zeroed.
//
// The state st [4] (prefix, mask, rem, empty) lives on the device: the host writes rem = K before the passes, the
// first btk_pick clamps it to the number of positive values (when every positive value is kept, the select finds
// the smallest one, which is then t), and the host reads t = prefix (or empty) back once at the end: one download.
// Cost: 4 reads of a for the histograms, 2 for ties and apply, 1 write.
// Check:   the CPU emulator (kernels/cuda/emu/check.cpp) and, on a GPU, runner kernels check --backend cuda.
// CPU reference: kernels/src/ops/batchtopk.rs `reference`.

#include "common.cuh"

enum { BTK_PREFIX = 0, BTK_MASK = 1, BTK_REM = 2, BTK_EMPTY = 3 };

// a [n], st [4], hist [256] (zero on entry). Grid: any (grid-stride), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
btk_hist(long long n, int shift, const float* __restrict__ a, const unsigned* __restrict__ st,
         unsigned* __restrict__ hist) {
    __shared__ unsigned h[256];
    const int t = threadIdx.x;
    h[t] = 0u;  // 256 threads, 256 bins
    __syncthreads();
    const unsigned prefix = st[BTK_PREFIX], mask = st[BTK_MASK];
    for (long long p = (long long)blockIdx.x * SAE_THREADS + t; p < n; p += (long long)gridDim.x * SAE_THREADS) {
        const float v = a[p];
        const unsigned key = __float_as_uint(v);
        if (v > 0.0f && (key & mask) == prefix) atomicAdd(&h[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (h[t] != 0u) atomicAdd(&hist[t], h[t]);
}

// st [4], hist [256] (cleared on return). One block of 1 thread. The first pass (shift 24) sees every positive key:
// there rem is clamped to their number (when at most K values are positive, all are kept and the select finds the
// smallest), and with no positive value at all the state is marked empty (st[BTK_EMPTY] = 1, prefix all ones, which
// no positive key equals or exceeds, so btk_apply zeroes everything).
extern "C" __global__ void __launch_bounds__(1)
btk_pick(int shift, unsigned* __restrict__ st, unsigned* __restrict__ hist) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    unsigned rem = st[BTK_REM];
    if (shift == 24) {
        unsigned total = 0;
        for (int q = 0; q < 256; ++q) total += hist[q];
        rem = rem < total ? rem : total;
        if (rem == 0u) {
            st[BTK_EMPTY] = 1u;
            st[BTK_PREFIX] = 0xffffffffu;
            st[BTK_MASK] = 0xffffffffu;
        }
    }
    if (st[BTK_EMPTY] == 0u) {
        unsigned cum = 0, bin = 0, left = rem;
        for (int q = 255; q >= 0; --q) {
            const unsigned c = hist[q];
            if (cum + c >= rem) {
                bin = (unsigned)q;
                left = rem - cum;
                break;
            }
            cum += c;
        }
        st[BTK_PREFIX] |= bin << shift;
        st[BTK_MASK] |= 255u << shift;
        st[BTK_REM] = left;
    } else {
        st[BTK_REM] = 0u;
    }
    for (int q = 0; q < 256; ++q) hist[q] = 0u;
}

// a [B][F], st [4] -> ties [B] (keys equal to t per row). Grid (B), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
btk_row_ties(int B, int F, const float* __restrict__ a, const unsigned* __restrict__ st, unsigned* __restrict__ ties) {
    const int b = blockIdx.x;
    if (b >= B) return;
    const unsigned thr = st[BTK_PREFIX];
    const float* row = a + (size_t)b * F;
    unsigned c = 0;
    for (int i = threadIdx.x; i < F; i += SAE_THREADS) c += row[i] > 0.0f && __float_as_uint(row[i]) == thr ? 1u : 0u;
    c = block_sum<unsigned>(c);
    if (threadIdx.x == 0) ties[b] = c;
}

// st [4], ties [B] -> ties [B] overwritten with the number of each row's ties kept (st[rem] of them in all, the
// first rows first). One block of 1 thread.
extern "C" __global__ void __launch_bounds__(1)
btk_allow(int B, const unsigned* __restrict__ st, unsigned* __restrict__ ties) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    unsigned left = st[BTK_REM];
    for (int b = 0; b < B; ++b) {
        const unsigned take = ties[b] < left ? ties[b] : left;
        ties[b] = take;
        left -= take;
    }
}

// a [B][F], st [4], allow [B] -> f [B][F]. Grid (B), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
btk_apply(int B, int F, const float* __restrict__ a, const unsigned* __restrict__ st,
          const unsigned* __restrict__ allow, float* __restrict__ f) {
    __shared__ int warp_counts[SAE_THREADS / 32];
    const int b = blockIdx.x;
    if (b >= B) return;
    const unsigned thr = st[BTK_PREFIX];
    const unsigned keep_ties = allow[b];
    const float* row = a + (size_t)b * F;
    float* out = f + (size_t)b * F;
    const int t = threadIdx.x;
    unsigned kept = 0;
    for (int c0 = 0; c0 < F; c0 += SAE_THREADS) {
        const int i = c0 + t;
        const float v = i < F ? row[i] : 0.0f;
        const unsigned key = __float_as_uint(v);
        const bool pos = v > 0.0f;
        const bool eq = pos && key == thr;
        unsigned total;
        const unsigned rank = kept + block_rank(eq, warp_counts, &total);
        if (i < F) out[i] = pos && (key > thr || (eq && rank < keep_ties)) ? v : 0.0f;
        kept += total;
    }
}
