// gated.cu: the Gated SAE's encode (docs/architectures.md, "Gated").
//
// Kernels:
//   gated_encode_gemm  the encoder SGEMM shared with encode (common.cuh sgemm_body, 128x128x16, b_dec fused into the
//                      A load) with the gated epilogue (EPI_GATED): from one accumulator z = (x − b_dec)·W_enc it
//                      writes π_gate = z + b_gate and f = 1[π_gate > 0]·ReLU(z·exp(r_mag) + b_mag). FLOPs 2·B·d·F,
//                      bytes as encode plus one more B·F output.
//   gated_relu         a = ReLU(π_gate), the gate's codes: they drive the auxiliary reconstruction and mask its gradient.
//   gated_dz           ∂z = ∂π_gate + ∂π_mag·exp(r_mag), elementwise.
//   gated_dr_mag       ∂r_mag_i = Σ_b ∂π_mag_bi·(π_gate_bi − b_gate_i)·exp(r_mag_i), one thread per feature, rows in
//                      order (deterministic, as col_sums).
// The backward (CudaBackend::gated_backward) is these three between the ordinary kernels: bwd_residual, bwd_dwdec_gemm
// and bwd_dpre_gemm (∂π_mag: ∂x̂·W_decᵀ masked by f > 0), decode_gemm and row_stats on a (x̂aux, its squared error and
// the gate's L1), bwd_residual and bwd_dpre_gemm again (∂π_gate: masked by a > 0, plus λ/B), col_sums (∂b_gate,
// ∂b_mag, Σ ∂z, Σ ∂x̂), bwd_dwenc_gemm and bwd_bdec. Five GEMMs, as ops::gated::backward_fast.
// Check:   the CPU emulator (kernels/cuda/emu/check.cpp) and, on a GPU, runner kernels check --backend cuda.
// CPU reference: kernels/src/ops/gated.rs `encode_reference`.

#include "common.cuh"

// x [B][d], w_enc [d][F], b_gate [F], b_dec [d], r_mag [F], b_mag [F] -> pi_gate [B][F], f [B][F].
// Grid (ceil(F/128), ceil(B/128)), 256 threads.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 2)
gated_encode_gemm(int B, int d, int F, const float* __restrict__ x, const float* __restrict__ w_enc,
                  const float* __restrict__ b_gate, const float* __restrict__ b_dec, const float* __restrict__ r_mag,
                  const float* __restrict__ b_mag, float* __restrict__ pi_gate, float* __restrict__ f) {
    sgemm_body<false, false, EPI_GATED>(B, F, d, x, d, b_dec, w_enc, F, pi_gate, F, b_gate, nullptr, 0, 0.0f, r_mag,
                                        b_mag, f);
}

// pi_gate [n] -> a [n]. Grid ceil(n / 256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
gated_relu(long long n, const float* __restrict__ pi_gate, float* __restrict__ a) {
    const long long p = (long long)blockIdx.x * SAE_THREADS + threadIdx.x;
    if (p < n) a[p] = pi_gate[p] > 0.0f ? pi_gate[p] : 0.0f;
}

// dgate [B][F], dmag [B][F], r_mag [F] -> dz [B][F]. Grid ceil(B·F / 256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
gated_dz(int B, int F, const float* __restrict__ dgate, const float* __restrict__ dmag,
         const float* __restrict__ r_mag, float* __restrict__ dz) {
    const long long p = (long long)blockIdx.x * SAE_THREADS + threadIdx.x;
    if (p >= (long long)B * F) return;
    dz[p] = dgate[p] + dmag[p] * expf(r_mag[p % F]);
}

// dmag [B][F], pi_gate [B][F], b_gate [F], r_mag [F] -> g_rmag [F]. Grid ceil(F / 256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
gated_dr_mag(int B, int F, const float* __restrict__ dmag, const float* __restrict__ pi_gate,
             const float* __restrict__ b_gate, const float* __restrict__ r_mag, float* __restrict__ g_rmag) {
    const int i = blockIdx.x * SAE_THREADS + threadIdx.x;
    if (i >= F) return;
    const float e = expf(r_mag[i]), bg = b_gate[i];
    float acc = 0.0f;
    for (int b = 0; b < B; ++b) {
        const size_t p = (size_t)b * F + i;
        acc += dmag[p] * (pi_gate[p] - bg) * e;
    }
    g_rmag[i] = acc;
}
