// gated.cu: the Gated SAE's encode (docs/architectures.md, "Gated").
//
// Kernels:
//   gated_encode_gemm  the encoder SGEMM shared with encode (common.cuh sgemm_body, 128x128x16, b_dec fused into the
//                      A load) with the gated epilogue (EPI_GATED): from one accumulator z = (x − b_dec)·W_enc it
//                      writes π_gate = z + b_gate and f = 1[π_gate > 0]·ReLU(z·exp(r_mag) + b_mag). FLOPs 2·B·d·F,
//                      bytes as encode plus one more B·F output.
// The backward's GEMMs are the ordinary ones (ops::gated::backward_fast); on a device it runs on host copies for now.
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
