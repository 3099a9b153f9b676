// resample.cu: resampling dead features (Towards Monosemanticity, appendix) on the device.
//
// Variants:
//   enc_col_sq_norms   ‖W_enc[:, i]‖² per feature (one thread per column; rows in order), for the 0.2 × mean alive
//                      encoder norm that the host computes in f64 from the downloaded column norms.
//   per_token_sq_err   ‖x_b − x̂_b‖² per token (one block per token, block reduction): the loss resampling draws by.
//   resample_write     for each dead feature i with its unit direction u: W_dec[i] = u, W_enc[:, i] = s·u,
//                      b_enc[i] = 0, and the Adam moments (m and v) of every written element reset to 0.
// The dead counters are the per-feature firing counts of reduce.cu (feature_fire_counts).
// Check:   runner kernels check --backend cuda --op resample   (against ops::resample::reference and
//          ops::reduce::per_token_sq_err)
// CPU reference: kernels/src/ops/resample.rs, kernels/src/ops/reduce.rs.

#include "common.cuh"

// w_enc [d][F] -> out [F]. Grid ceil(F/256), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
enc_col_sq_norms(int d, int F, const float* __restrict__ w_enc, float* __restrict__ out) {
    const int i = blockIdx.x * SAE_THREADS + threadIdx.x;
    if (i >= F) return;
    float s = 0.0f;
    for (int j = 0; j < d; ++j) {
        const float v = w_enc[(size_t)j * F + i];
        s = fmaf(v, v, s);
    }
    out[i] = s;
}

// x, xhat [B][d] -> out [B]. Grid (B), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
per_token_sq_err(int B, int d, const float* __restrict__ x, const float* __restrict__ xhat, float* __restrict__ out) {
    const int b = blockIdx.x;
    if (b >= B) return;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += SAE_THREADS) {
        const float e = x[(size_t)b * d + j] - xhat[(size_t)b * d + j];
        s = fmaf(e, e, s);
    }
    s = block_sum<float>(s);
    if (threadIdx.x == 0) out[b] = s;
}

// dead [n_dead] feature indices (each < F, distinct), dirs [n_dead][d]. Grid (n_dead), 256 threads.
extern "C" __global__ void __launch_bounds__(SAE_THREADS)
resample_write(int n_dead, int d, int F, float enc_scale, const int* __restrict__ dead,
               const float* __restrict__ dirs, float* __restrict__ w_enc, float* __restrict__ b_enc,
               float* __restrict__ w_dec, float* __restrict__ m_w_enc, float* __restrict__ v_w_enc,
               float* __restrict__ m_b_enc, float* __restrict__ v_b_enc, float* __restrict__ m_w_dec,
               float* __restrict__ v_w_dec) {
    const int n = blockIdx.x;
    if (n >= n_dead) return;
    const int i = dead[n];
    const float* u = dirs + (size_t)n * d;
    for (int j = threadIdx.x; j < d; j += SAE_THREADS) {
        const size_t di = (size_t)i * d + j;
        const size_t ei = (size_t)j * F + i;
        w_dec[di] = u[j];
        m_w_dec[di] = 0.0f;
        v_w_dec[di] = 0.0f;
        w_enc[ei] = enc_scale * u[j];
        m_w_enc[ei] = 0.0f;
        v_w_enc[ei] = 0.0f;
    }
    if (threadIdx.x == 0) {
        b_enc[i] = 0.0f;
        m_b_enc[i] = 0.0f;
        v_b_enc[i] = 0.0f;
    }
}
