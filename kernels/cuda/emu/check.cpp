// check.cpp: runs every kernel of kernels/cuda/*.cu in the CPU emulator (emu.h, rt.cpp) against plain C++ references
// that mirror kernels/src/ops/*.rs `reference`, with NaN-poisoned outputs and shapes that are and are not tile multiples.
// Build and run:  g++ -std=c++20 -O1 -pthread -I kernels/cuda kernels/cuda/emu/check.cpp kernels/cuda/emu/rt.cpp -o /tmp/emu
// (the Rust test cuda::compile::tests::kernels_run_correctly_in_the_emulator does this when g++ is installed).
// `--quick` checks three small shapes (about 10 s on 2 cores). Prints one line per comparison; exits 1 if any relative
// error exceeds 1e-4.
// `--count FILE` (the counting build, -DEMU_COUNT; kernels/src/cuda/emu.rs builds and runs it) runs the same checks at
// the fixed counting shapes and writes every kernel's counted traffic and operations to FILE as JSON.
#include "emu.h"
#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#ifdef EMU_COUNT
bool emu_write_counts(const char *path);
void emu_set_sample(unsigned blocks);
void emu_set_label(const char *label);
// The kernels' `float` is the counting type (emu.h); the harness below keeps plain floats.
#define float emu_f32
#endif
#include "../common.cuh"
#include "../encode.cu"
#include "../decode.cu"
#include "../backward.cu"
#include "../adam.cu"
#include "../resample.cu"
#include "../reduce.cu"
#include "../threshold.cu"
#include "../batchtopk.cu"
#include "../matryoshka.cu"
#include "../gated.cu"
#include "../auxk.cu"
#ifdef EMU_COUNT
#undef float
#endif

using V = std::vector<float>;
static int failures = 0, comparisons = 0;
static std::mt19937 rng(1234);

static V randv(size_t n, float scale) {
    std::uniform_real_distribution<float> u(-scale, scale);
    V v(n);
    for (auto &x : v) {
        x = u(rng);
        if (x == 0.0f) x = scale * 0.5f;
    }
    return v;
}
static V nanv(size_t n) { return V(n, NAN); }

static void cmp(const char *what, int b, int d, int f, const V &got, const V &want) {
    double num = 0, den = 0;
    bool nan = false;
    for (size_t i = 0; i < want.size(); ++i) {
        if (std::isnan(got[i])) nan = true;
        num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        den += (double)want[i] * want[i];
    }
    double e = den == 0 ? std::sqrt(num) : std::sqrt(num / den);
    bool ok = !nan && e <= 1e-4 && got.size() == want.size();
    ++comparisons;
    if (!ok) ++failures;
    std::printf("%s %-44s %4dx%4dx%4d rel %.2e\n", ok ? "ok  " : "FAIL", what, b, d, f, nan ? INFINITY : e);
}

static dim3 g2(unsigned x, unsigned y) { return dim3{x, y, 1}; }
static unsigned up(size_t a, unsigned b) { return (unsigned)((a + b - 1) / b); }
static const dim3 T256{256, 1, 1};

// ---- references (kernels/src/ops/*.rs) ----
static void ref_encode(int B, int d, int F, int k, const V &x, const V &we, const V &be, const V &bd, V &f) {
    for (int b = 0; b < B; ++b) {
        std::vector<std::pair<int, float>> row(F);
        for (int i = 0; i < F; ++i) {
            float acc = be[i];
            for (int j = 0; j < d; ++j) acc += (x[b * d + j] - bd[j]) * we[(size_t)j * F + i];
            row[i] = {i, acc};
        }
        if (k < 0) {
            for (int i = 0; i < F; ++i) f[(size_t)b * F + i] = std::max(row[i].second, 0.0f);
        } else {
            std::sort(row.begin(), row.end(), [](auto a, auto c) { return a.second != c.second ? a.second > c.second : a.first < c.first; });
            for (int i = 0; i < F; ++i) f[(size_t)b * F + i] = 0;
            for (int r = 0; r < k && r < F; ++r) f[(size_t)b * F + row[r].first] = std::max(row[r].second, 0.0f);
        }
    }
}
static void ref_decode(int B, int d, int F, const V &f, const V &wd, const V &bd, V &xh) {
    for (int b = 0; b < B; ++b)
        for (int j = 0; j < d; ++j) {
            float acc = bd[j];
            for (int i = 0; i < F; ++i) acc += f[(size_t)b * F + i] * wd[(size_t)i * d + j];
            xh[(size_t)b * d + j] = acc;
        }
}
static void ref_backward(int B, int d, int F, float l1, const V &x, const V &f, const V &xh, const V &we, const V &wd,
                         const V &bd, V &gwe, V &gbe, V &gwd, V &gbd) {
    float inv_b = 1.0f / B;
    V dxh((size_t)B * d), dpre((size_t)B * F, 0.0f);
    for (size_t p = 0; p < dxh.size(); ++p) dxh[p] = 2.0f * (xh[p] - x[p]) * inv_b;
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < F; ++i)
            if (f[(size_t)b * F + i] > 0) {
                float acc = l1 * inv_b;
                for (int j = 0; j < d; ++j) acc += dxh[(size_t)b * d + j] * wd[(size_t)i * d + j];
                dpre[(size_t)b * F + i] = acc;
            }
    for (int i = 0; i < F; ++i) {
        for (int j = 0; j < d; ++j) {
            float gd = 0, ge = 0;
            for (int b = 0; b < B; ++b) {
                gd += f[(size_t)b * F + i] * dxh[(size_t)b * d + j];
                ge += (x[(size_t)b * d + j] - bd[j]) * dpre[(size_t)b * F + i];
            }
            gwd[(size_t)i * d + j] = gd;
            gwe[(size_t)j * F + i] = ge;
        }
        float s = 0;
        for (int b = 0; b < B; ++b) s += dpre[(size_t)b * F + i];
        gbe[i] = s;
    }
    for (int j = 0; j < d; ++j) {
        float acc = 0;
        for (int b = 0; b < B; ++b) acc += dxh[(size_t)b * d + j];
        for (int i = 0; i < F; ++i) acc -= we[(size_t)j * F + i] * gbe[i];
        gbd[j] = acc;
    }
}
static void ref_adam(float lr, float b1, float b2, float eps, float c1, float c2, V &p, const V &g, V &m, V &v) {
    for (size_t i = 0; i < p.size(); ++i) {
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        p[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
    }
}

// ---- the architectures' ops (kernels/src/ops/{threshold,batchtopk,matryoshka,gated}.rs) ----
static void ref_threshold(int B, int F, const V &a, const V &t, V &f) {
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < F; ++i) {
            float v = a[(size_t)b * F + i];
            f[(size_t)b * F + i] = v > std::exp(t[i]) ? v : 0.0f;
        }
}
static void ref_threshold_grad(int B, int d, int F, float eps, float l0, const V &a, const V &t, const V &x, const V &xh,
                               const V &wd, V &g) {
    float inv_b = 1.0f / std::max(B, 1);
    for (int i = 0; i < F; ++i) {
        float theta = std::exp(t[i]), acc = 0;
        for (int b = 0; b < B; ++b) {
            float v = a[(size_t)b * F + i];
            if (v > 0 && std::fabs((v - theta) / eps) < 0.5f) {
                float df = 0;
                for (int j = 0; j < d; ++j) df += 2.0f * (xh[(size_t)b * d + j] - x[(size_t)b * d + j]) * inv_b * wd[(size_t)i * d + j];
                acc += -(theta * df + l0 * inv_b) / eps;
            }
        }
        g[i] = theta * acc;
    }
}
static float ref_batchtopk(int B, int F, int k, const V &a, V &f) {
    std::vector<std::pair<size_t, float>> all(a.size());
    for (size_t p = 0; p < a.size(); ++p) all[p] = {p, a[p]};
    std::sort(all.begin(), all.end(), [](auto p, auto q) { return p.second != q.second ? p.second > q.second : p.first < q.first; });
    std::fill(f.begin(), f.end(), 0.0f);
    float min_kept = 0;
    for (size_t r = 0; r < (size_t)k * B && r < all.size(); ++r)
        if (all[r].second > 0) { f[all[r].first] = all[r].second; min_kept = all[r].second; }
    (void)F;
    return min_kept;
}
static void ref_gated(int B, int d, int F, const V &x, const V &we, const V &bg, const V &bd, const V &rm, const V &bm, V &pg, V &f) {
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < F; ++i) {
            float z = 0;
            for (int j = 0; j < d; ++j) z += (x[(size_t)b * d + j] - bd[j]) * we[(size_t)j * F + i];
            float gate = z + bg[i], mag = z * std::exp(rm[i]) + bm[i];
            pg[(size_t)b * F + i] = gate;
            f[(size_t)b * F + i] = gate > 0 ? std::max(mag, 0.0f) : 0.0f;
        }
}

// BatchTopK on the device (mirrors CudaBackend::batch_topk): four histogram passes, ties, apply. The backend's
// histogram grid is up to 1024 blocks; the checks use 6 (fewer emulated blocks, the same grid-stride code).
static unsigned btk_hist_blocks = 6;
static float dev_batchtopk(int B, int F, int k, const V &a, V &f) {
    const long long n = (long long)B * F;
    const unsigned long long kk = std::min((unsigned long long)k * B, (unsigned long long)n);
    if (kk == 0) { std::fill(f.begin(), f.end(), 0.0f); return 0.0f; }
    std::vector<unsigned> st{0u, 0u, (unsigned)kk, 0u}, hist(256, 0u), ties(B, 7u);
    for (int shift = 24; shift >= 0; shift -= 8) {
        emu_launch(dim3{std::min(up((size_t)n, 256), btk_hist_blocks), 1, 1}, T256, btk_hist, n, shift, a.data(), (const unsigned *)st.data(), hist.data());
        emu_launch(dim3{1, 1, 1}, dim3{1, 1, 1}, btk_pick, shift, st.data(), hist.data());
    }
    emu_launch(dim3{(unsigned)B, 1, 1}, T256, btk_row_ties, B, F, a.data(), (const unsigned *)st.data(), ties.data());
    emu_launch(dim3{1, 1, 1}, dim3{1, 1, 1}, btk_allow, B, (const unsigned *)st.data(), ties.data());
    emu_launch(dim3{(unsigned)B, 1, 1}, T256, btk_apply, B, F, a.data(), (const unsigned *)st.data(), (const unsigned *)ties.data(), f.data());
    float t;
    std::memcpy(&t, &st[0], 4);
    return st[3] ? 0.0f : t;
}

// Gated's backward (ops::gated::backward_reference): grads [W_enc, b_gate, W_dec, b_dec, r_mag, b_mag], sums.
static void ref_gated_backward(int B, int d, int F, float l1, const V &x, const V &pg, const V &f, const V &xh, const V &we,
                               const V &bg, const V &wd, const V &bd, const V &rm, V (&g)[6], double sums[2]) {
    float inv_b = 1.0f / std::max(B, 1);
    V dxh((size_t)B * d), daux((size_t)B * d), dz((size_t)B * F);
    sums[0] = sums[1] = 0;
    for (float v : pg) sums[1] += std::max(v, 0.0f);
    for (size_t p = 0; p < dxh.size(); ++p) dxh[p] = 2.0f * (xh[p] - x[p]) * inv_b;
    for (int b = 0; b < B; ++b)
        for (int j = 0; j < d; ++j) {
            float xa = bd[j];
            for (int k = 0; k < F; ++k) xa += std::max(pg[(size_t)b * F + k], 0.0f) * wd[(size_t)k * d + j];
            float e = xa - x[(size_t)b * d + j];
            sums[0] += (double)e * e;
            daux[(size_t)b * d + j] = 2.0f * e * inv_b;
        }
    for (auto &v : g) std::fill(v.begin(), v.end(), 0.0f);
    for (int b = 0; b < B; ++b)
        for (int k = 0; k < F; ++k) {
            size_t p = (size_t)b * F + k;
            float dm = 0, dg = 0;
            if (f[p] > 0) for (int j = 0; j < d; ++j) dm += dxh[(size_t)b * d + j] * wd[(size_t)k * d + j];
            if (pg[p] > 0) { for (int j = 0; j < d; ++j) dg += daux[(size_t)b * d + j] * wd[(size_t)k * d + j]; dg += l1 * inv_b; }
            float e = std::exp(rm[k]);
            dz[p] = dg + dm * e;
            g[1][k] += dg;
            g[5][k] += dm;
            g[4][k] += dm * (pg[p] - bg[k]) * e;
        }
    for (int k = 0; k < F; ++k)
        for (int j = 0; j < d; ++j) {
            float gd = 0, ge = 0;
            for (int b = 0; b < B; ++b) {
                gd += f[(size_t)b * F + k] * dxh[(size_t)b * d + j];
                ge += (x[(size_t)b * d + j] - bd[j]) * dz[(size_t)b * F + k];
            }
            g[2][(size_t)k * d + j] = gd;
            g[0][(size_t)j * F + k] = ge;
        }
    for (int j = 0; j < d; ++j) {
        float acc = 0;
        for (int b = 0; b < B; ++b) acc += dxh[(size_t)b * d + j];
        for (int k = 0; k < F; ++k) {
            float s = 0;
            for (int b = 0; b < B; ++b) s += dz[(size_t)b * F + k];
            acc -= we[(size_t)j * F + k] * s;
        }
        g[3][j] = acc;
    }
}

// Gated's backward on the device (mirrors CudaBackend::gated_backward).
static void dev_gated_backward(int B, int d, int F, float l1, const V &x, const V &pg, const V &f, const V &xh, const V &we,
                               const V &bg, const V &wd, const V &bd, const V &rm, V (&g)[6], double sums[2]) {
    const float inv_b = 1.0f / B, l1b = l1 * inv_b;
    const long long nx = (long long)B * d, nf = (long long)B * F;
    V dxh((size_t)nx, NAN), dmag((size_t)nf, NAN), a((size_t)nf, NAN), xaux((size_t)nx, NAN), daux((size_t)nx, NAN),
        dgate((size_t)nf, NAN), dz((size_t)nf, NAN), dzs(F, NAN), dsum(d, NAN);
    std::vector<double> rows((size_t)B * 3, NAN);
    emu_launch(dim3{up((size_t)nx, 256), 1, 1}, T256, bwd_residual, nx, inv_b, x.data(), xh.data(), dxh.data());
    emu_launch(g2(up(d, 128), up(F, 128)), T256, bwd_dwdec_gemm, B, d, F, f.data(), dxh.data(), g[2].data());
    emu_launch(g2(up(F, 128), up(B, 128)), T256, bwd_dpre_gemm, B, d, F, 0.0f, dxh.data(), wd.data(), f.data(), dmag.data());
    emu_launch(dim3{up((size_t)nf, 256), 1, 1}, T256, gated_relu, nf, pg.data(), a.data());
    emu_launch(g2(up(d, 128), up(B, 128)), T256, decode_gemm, B, d, F, (const float *)a.data(), wd.data(), bd.data(), xaux.data());
    emu_launch(dim3{(unsigned)B, 1, 1}, T256, row_stats, B, d, F, x.data(), (const float *)xaux.data(), (const float *)a.data(), rows.data());
    emu_launch(dim3{up((size_t)nx, 256), 1, 1}, T256, bwd_residual, nx, inv_b, x.data(), (const float *)xaux.data(), daux.data());
    emu_launch(g2(up(F, 128), up(B, 128)), T256, bwd_dpre_gemm, B, d, F, l1b, (const float *)daux.data(), wd.data(), (const float *)a.data(), dgate.data());
    emu_launch(dim3{up((size_t)nf, 256), 1, 1}, T256, gated_dz, B, F, (const float *)dgate.data(), (const float *)dmag.data(), rm.data(), dz.data());
    emu_launch(dim3{up(F, 256), 1, 1}, T256, col_sums, B, F, (const float *)dgate.data(), g[1].data());
    emu_launch(dim3{up(F, 256), 1, 1}, T256, col_sums, B, F, (const float *)dmag.data(), g[5].data());
    emu_launch(dim3{up(F, 256), 1, 1}, T256, gated_dr_mag, B, F, (const float *)dmag.data(), pg.data(), bg.data(), rm.data(), g[4].data());
    emu_launch(g2(up(F, 128), up(d, 128)), T256, bwd_dwenc_gemm, B, d, F, x.data(), bd.data(), (const float *)dz.data(), g[0].data());
    emu_launch(dim3{up(F, 256), 1, 1}, T256, col_sums, B, F, (const float *)dz.data(), dzs.data());
    emu_launch(dim3{up(d, 256), 1, 1}, T256, col_sums, B, d, (const float *)dxh.data(), dsum.data());
    emu_launch(dim3{(unsigned)d, 1, 1}, T256, bwd_bdec, d, F, we.data(), (const float *)dzs.data(), (const float *)dsum.data(), g[3].data());
    sums[0] = sums[1] = 0;
    for (int b = 0; b < B; ++b) { sums[0] += rows[(size_t)b * 3]; sums[1] += rows[(size_t)b * 3 + 2]; }
}

// AuxK (ops::auxk::reference): adds its gradients to g [W_enc, b_enc, W_dec, b_dec], returns the loss.
static double ref_auxk(int B, int d, int F, int k_aux, float coeff, const V &a, const std::vector<int> &dead, const V &x,
                       const V &xh, const V &we, const V &wd, const V &bd, V (&g)[4]) {
    if (k_aux == 0 || dead.empty()) return 0.0;
    float sc = std::min((float)dead.size() / k_aux, 1.0f), k = 2.0f * coeff * sc / B;
    double loss = 0;
    for (int b = 0; b < B; ++b) {
        std::vector<std::pair<int, float>> c;
        for (int f : dead) if (a[(size_t)b * F + f] > 0) c.push_back({f, a[(size_t)b * F + f]});
        std::sort(c.begin(), c.end(), [](auto p, auto q) { return p.second != q.second ? p.second > q.second : p.first < q.first; });
        if ((int)c.size() > k_aux) c.resize(k_aux);
        V eh(d, 0.0f), de(d);
        for (auto [f, v] : c) for (int j = 0; j < d; ++j) eh[j] += v * wd[(size_t)f * d + j];
        double l = 0;
        for (int j = 0; j < d; ++j) {
            float r = eh[j] - (x[(size_t)b * d + j] - xh[(size_t)b * d + j]);
            l += (double)r * r;
            de[j] = k * r;
        }
        loss += l * (coeff * sc) / B;
        for (auto [f, v] : c) {
            float dp = 0;
            for (int j = 0; j < d; ++j) dp += de[j] * wd[(size_t)f * d + j];
            for (int j = 0; j < d; ++j) {
                g[2][(size_t)f * d + j] += v * de[j];
                g[0][(size_t)j * F + f] += (x[(size_t)b * d + j] - bd[j]) * dp;
                g[3][j] -= we[(size_t)j * F + f] * dp;
            }
            g[1][f] += dp;
        }
    }
    return loss;
}

// AuxK on the device (mirrors CudaBackend::auxk).
static double dev_auxk(int B, int d, int F, int k_aux, float coeff, const V &a, const std::vector<int> &dead, const V &x,
                       const V &xh, const V &we, const V &wd, const V &bd, V (&g)[4]) {
    if (k_aux == 0 || dead.empty()) return 0.0;
    float sc = std::min((float)dead.size() / k_aux, 1.0f);
    V mask(F, 0.0f), fa((size_t)B * F, NAN), zd(d, 0.0f), eh((size_t)B * d, NAN), e((size_t)B * d, NAN), de((size_t)B * d, NAN), sq(B, NAN);
    for (int f : dead) mask[f] = 1.0f;
    const long long n = (long long)B * d;
    emu_launch(dim3{up((size_t)B * F, 256), 1, 1}, T256, auxk_mask_dead, B, F, a.data(), (const float *)mask.data(), fa.data());
    if (k_aux < F) emu_launch(dim3{(unsigned)B, 1, 1}, T256, topk_rows, B, F, k_aux, fa.data());
    emu_launch(g2(B, up(d, 1024)), T256, decode_sparse, B, d, F, (const float *)fa.data(), wd.data(), (const float *)zd.data(), eh.data());
    emu_launch(dim3{up((size_t)n, 256), 1, 1}, T256, bwd_residual, n, -0.5f, x.data(), xh.data(), e.data());
    emu_launch(dim3{(unsigned)B, 1, 1}, T256, per_token_sq_err, B, d, (const float *)e.data(), (const float *)eh.data(), sq.data());
    double loss = 0;
    for (float v : sq) loss += v;
    loss = loss * (coeff * sc) / B;
    emu_launch(dim3{up((size_t)n, 256), 1, 1}, T256, bwd_residual, n, coeff * sc / B, (const float *)e.data(), (const float *)eh.data(), de.data());
    V gwd((size_t)F * d, 0.0f), gt((size_t)F * d, 0.0f), gbe(F, 0.0f), gwe((size_t)d * F, NAN), gbd(d, NAN);
    emu_launch(dim3{(unsigned)B, 1, 1}, T256, bwd_sparse_pairs, B, d, F, 0.0f, x.data(), bd.data(), (const float *)fa.data(), (const float *)de.data(),
               wd.data(), gwd.data(), gt.data(), gbe.data());
    emu_launch(g2(up(d, 32), up(F, 32)), dim3{32, 8, 1}, transpose, F, d, (const float *)gt.data(), gwe.data());
    emu_launch(dim3{(unsigned)d, 1, 1}, T256, bwd_bdec, d, F, we.data(), (const float *)gbe.data(), (const float *)zd.data(), gbd.data());
    V *add[4] = {&gwe, &gbe, &gwd, &gbd};
    for (int q = 0; q < 4; ++q)
        emu_launch(dim3{up(g[q].size(), 256), 1, 1}, T256, accumulate, (long long)g[q].size(), g[q].data(), (const float *)add[q]->data());
    return loss;
}

static void check_architectures(int B, int d, int F, const V &x, const V &we, const V &be, const V &wd, const V &bd) {
    V a((size_t)B * F);
    ref_encode(B, d, F, -1, x, we, be, bd, a);
    // JumpReLU: each feature's threshold just below one of its positive values, so that some pairs pass, some do
    // not, and some sit inside the band of the pseudo-gradient (counted: the check must not compare zeros).
    const float eps = 0.2f;
    V t(F);
    int band = 0;
    for (int i = 0; i < F; ++i) {
        float th = 0.3f;
        for (int b = 0; b < B; ++b)
            if (a[(size_t)b * F + i] > 0) { th = a[(size_t)b * F + i] - 0.03f * (1 + i % 3); break; }
        t[i] = std::log(std::max(th, 0.01f));
        for (int b = 0; b < B; ++b) band += a[(size_t)b * F + i] > 0 && std::fabs(a[(size_t)b * F + i] - std::exp(t[i])) < eps / 2;
    }
    if (B * F > 1 && band == 0) { std::printf("FAIL threshold_grad: no pair inside the band, the check would be vacuous\n"); ++failures; }
    {
        V want((size_t)B * F), got = nanv((size_t)B * F);
        ref_threshold(B, F, a, t, want);
        emu_launch(dim3{up((size_t)B * F, 256), 1, 1}, T256, threshold_rows, B, F, a.data(), t.data(), got.data());
        cmp("threshold_rows", B, d, F, got, want);
        V xh((size_t)B * d);
        ref_decode(B, d, F, want, wd, bd, xh);
        V gw(F), gg = nanv(F);
        ref_threshold_grad(B, d, F, eps, 0.7f, a, t, x, xh, wd, gw);
        emu_launch(dim3{up(F, 32), 1, 1}, T256, threshold_grad, B, d, F, eps, 0.7f, a.data(), t.data(), x.data(), xh.data(), wd.data(), gg.data());
        cmp("threshold_grad", B, d, F, gg, gw);
    }
    // BatchTopK: the ReLU'd codes, and a copy quantized to 8 levels so that ties at the threshold span rows.
    V aq = a;
    for (auto &v : aq) v = std::floor(v * 8.0f) / 8.0f;
    V az((size_t)B * F, 0.0f);  // nothing positive: nothing kept, no threshold
    for (const V *src : {&a, &aq, &az}) {
        for (int k : {1, std::max(1, F / 7), F}) {
            V want((size_t)B * F), got = nanv((size_t)B * F);
            float tw = ref_batchtopk(B, F, k, *src, want);
            float tg = dev_batchtopk(B, F, k, *src, got);
            std::string lab = std::string("batchtopk ") + (src == &a ? "" : src == &aq ? "ties " : "zeros ") + "k " + std::to_string(k);
            cmp(lab.c_str(), B, d, F, got, want);
            cmp((lab + " min kept").c_str(), B, d, F, V{tg}, V{tw});
        }
    }
    // Matryoshka: a prefix in the middle of a tile, none, all; accumulate.
    for (int m : {0, F / 3, F}) {
        V want((size_t)B * F), got = nanv((size_t)B * F);
        for (int b = 0; b < B; ++b)
            for (int i = 0; i < F; ++i) want[(size_t)b * F + i] = i < m ? a[(size_t)b * F + i] : 0.0f;
        emu_launch(dim3{up((size_t)B * F, 256), 1, 1}, T256, prefix_mask, B, F, m, a.data(), got.data());
        cmp(("prefix_mask m " + std::to_string(m)).c_str(), B, d, F, got, want);
    }
    {
        V acc = randv((size_t)F * d, 1), g = randv(acc.size(), 1), want = acc;
        for (size_t p = 0; p < acc.size(); ++p) want[p] += g[p];
        emu_launch(dim3{up(acc.size(), 256), 1, 1}, T256, accumulate, (long long)acc.size(), acc.data(), (const float *)g.data());
        cmp("accumulate", B, d, F, acc, want);
    }
    // Gated: one GEMM, both paths.
    {
        V rm = randv(F, 0.5), bm = randv(F, 0.2);
        V pw((size_t)B * F), fw((size_t)B * F), pg = nanv((size_t)B * F), fg = nanv((size_t)B * F);
        ref_gated(B, d, F, x, we, be, bd, rm, bm, pw, fw);
        emu_launch(g2(up(F, 128), up(B, 128)), T256, gated_encode_gemm, B, d, F, x.data(), we.data(), be.data(), bd.data(),
                   rm.data(), bm.data(), pg.data(), fg.data());
        cmp("gated_encode_gemm pi_gate", B, d, F, pg, pw);
        cmp("gated_encode_gemm f", B, d, F, fg, fw);
        // The backward on that encoding, against a reconstruction that is not the decode of f (as in training at
        // any step but the optimum, the residuals are nonzero).
        V xh = randv((size_t)B * d, 1);
        V gw[6] = {V((size_t)d * F), V(F), V((size_t)F * d), V(d), V(F), V(F)};
        V gg[6] = {nanv((size_t)d * F), nanv(F), nanv((size_t)F * d), nanv(d), nanv(F), nanv(F)};
        double sw[2], sg[2];
        ref_gated_backward(B, d, F, 0.4f, x, pw, fw, xh, we, be, wd, bd, rm, gw, sw);
        dev_gated_backward(B, d, F, 0.4f, x, pw, fw, xh, we, be, wd, bd, rm, gg, sg);
        const char *gn[6] = {"dW_enc", "db_gate", "dW_dec", "db_dec", "dr_mag", "db_mag"};
        for (int q = 0; q < 6; ++q) cmp((std::string("gated backward ") + gn[q]).c_str(), B, d, F, gg[q], gw[q]);
        cmp("gated backward aux_sse, gate_l1", B, d, F, V{(float)sg[0], (float)sg[1]}, V{(float)sw[0], (float)sw[1]});
    }
    // AuxK: a quarter of the features dead, k_aux 3 (fewer candidates than k_aux in the smallest shapes), on top of
    // random gradients (the op adds to them).
    {
        std::vector<int> dead;
        for (int i = 0; i < F; ++i) if (i % 4 == 1 || F == 1) dead.push_back(i);
        V xh = randv((size_t)B * d, 1);
        V gw[4] = {randv((size_t)d * F, 1), randv(F, 1), randv((size_t)F * d, 1), randv(d, 1)};
        V gg[4] = {gw[0], gw[1], gw[2], gw[3]}, base[4] = {gw[0], gw[1], gw[2], gw[3]};
        double lw = ref_auxk(B, d, F, 3, 0.5f, a, dead, x, xh, we, wd, bd, gw);
        double lg = dev_auxk(B, d, F, 3, 0.5f, a, dead, x, xh, we, wd, bd, gg);
        const char *gn[4] = {"dW_enc", "db_enc", "dW_dec", "db_dec"};
        for (int q = 0; q < 4; ++q) {
            V ig = gg[q], iw = gw[q];  // the increments alone: the check must not hide in the random base
            for (size_t p = 0; p < ig.size(); ++p) { ig[p] -= base[q][p]; iw[p] -= base[q][p]; }
            cmp((std::string("auxk ") + gn[q] + " (added)").c_str(), B, d, F, ig, iw);
        }
        cmp("auxk loss", B, d, F, V{(float)lg}, V{(float)lw});
    }
}

// ---- device sequences (mirror kernels/src/cuda/backend.rs) ----
static void dev_backward(bool sparse, int B, int d, int F, float l1, const V &x, const V &f, const V &xh, const V &we,
                         const V &wd, const V &bd, V &gwe, V &gbe, V &gwd, V &gbd) {
    float inv_b = 1.0f / B, l1b = l1 * inv_b;
    V dxh((size_t)B * d, NAN), dsum(d, NAN);
    emu_launch(dim3{up((size_t)B * d, 256), 1, 1}, T256, bwd_residual, (long long)B * d, inv_b, x.data(), xh.data(), dxh.data());
    if (sparse) {
        std::fill(gwd.begin(), gwd.end(), 0.0f);
        std::fill(gbe.begin(), gbe.end(), 0.0f);
        V gt((size_t)F * d, 0.0f);
        emu_launch(dim3{(unsigned)B, 1, 1}, T256, bwd_sparse_pairs, B, d, F, l1b, x.data(), bd.data(), f.data(), dxh.data(),
                   wd.data(), gwd.data(), gt.data(), gbe.data());
        emu_launch(g2(up(d, 32), up(F, 32)), dim3{32, 8, 1}, transpose, F, d, (const float *)gt.data(), gwe.data());
    } else {
        V dpre((size_t)B * F, NAN);
        emu_launch(g2(up(d, 128), up(F, 128)), T256, bwd_dwdec_gemm, B, d, F, f.data(), dxh.data(), gwd.data());
        emu_launch(g2(up(F, 128), up(B, 128)), T256, bwd_dpre_gemm, B, d, F, l1b, dxh.data(), wd.data(), f.data(), dpre.data());
        emu_launch(g2(up(F, 128), up(d, 128)), T256, bwd_dwenc_gemm, B, d, F, x.data(), bd.data(), (const float *)dpre.data(), gwe.data());
        emu_launch(dim3{up(F, 256), 1, 1}, T256, col_sums, B, F, (const float *)dpre.data(), gbe.data());
    }
    emu_launch(dim3{up(d, 256), 1, 1}, T256, col_sums, B, d, (const float *)dxh.data(), dsum.data());
    emu_launch(dim3{(unsigned)d, 1, 1}, T256, bwd_bdec, d, F, we.data(), (const float *)gbe.data(), (const float *)dsum.data(), gbd.data());
}

#ifdef EMU_COUNT
// --roofline B d F k: the ops' kernel sequences once at one (real) shape, as the CUDA backend launches them, each launch
// emulating 2 blocks (the first and the last: an interior tile and an edge one) and scaling their counts to the grid; no references, nothing
// compared. Counts are keyed "op|kernel", op as "family.variant". JumpReLU's band is SAELens' default bandwidth
// (0.001): threshold_grad's cost grows with the pairs inside it. Dense codes are a ReLU of uniform noise (half fire), sparse ones k per row;
// outputs start as realistic codes, so a kernel that reads what an unemulated block of the one before would have
// written still sees codes of the right density. AuxK is left out: its chain (masked codes → per-row top-k → sparse
// decode) depends on the very values sampling leaves unwritten.
static void roofline(int B, int d, int F, int k) {
    emu_set_sample(2);
    btk_hist_blocks = 1024;
    const size_t bf = (size_t)B * F, bd_ = (size_t)B * d, df = (size_t)d * F;
    V x = randv(bd_, 1), we = randv(df, 0.5), be = randv(F, 0.2), wd = randv(df, 1), bd = randv(d, 0.1);
    V fd = randv(bf, 1), fs(bf, 0.0f), xh = randv(bd_, 1), xo(bd_);
    for (auto &v : fd) v = std::max(v, 0.0f);
    V out = fd;
    for (int b = 0; b < B; ++b)
        for (int j = 0; j < k && j < F; ++j) fs[(size_t)b * F + (size_t)(rng() % F)] = 0.5f;
    auto op = [](const char *label) { emu_set_label(label); };
    op("encode.relu");
    emu_launch(g2(up(F, 128), up(B, 128)), T256, encode_gemm_relu, B, d, F, x.data(), we.data(), be.data(), bd.data(), out.data());
    op("encode.topk");
    emu_launch(g2(up(F, 128), up(B, 128)), T256, encode_gemm_relu, B, d, F, x.data(), we.data(), be.data(), bd.data(), out.data());
    emu_launch(dim3{(unsigned)B, 1, 1}, T256, topk_rows, B, F, k, out.data());
    op("decode.dense");
    emu_launch(g2(up(d, 128), up(B, 128)), T256, decode_gemm, B, d, F, fd.data(), wd.data(), bd.data(), xo.data());
    op("decode.sparse");
    emu_launch(g2(B, up(d, 1024)), T256, decode_sparse, B, d, F, fs.data(), wd.data(), bd.data(), xo.data());
    V gwe(df), gbe(F), gwd(df), gbd(d);
    op("backward.dense");
    dev_backward(false, B, d, F, 0.3f, x, fd, xh, we, wd, bd, gwe, gbe, gwd, gbd);
    op("backward.sparse");
    dev_backward(true, B, d, F, 0.3f, x, fs, xh, we, wd, bd, gwe, gbe, gwd, gbd);
    op("adam.all_params");
    {
        V m = randv(df, 0.1), v = randv(df, 0.1);
        for (auto &q : v) q = std::fabs(q);
        emu_launch(dim3{up(df, 256), 1, 1}, T256, adam_step, (long long)df, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 0.1f, we.data(), gwe.data(), m.data(), v.data());
        emu_launch(dim3{(unsigned)F, 1, 1}, T256, adam_decoder_rows, F, d, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 0.1f, wd.data(), gwd.data(), m.data(), v.data());
    }
    op("reduce.batch_stats");
    {
        std::vector<double> rows((size_t)B * 3);
        std::vector<unsigned> cnt(F, 0);
        unsigned long long nnz = 0;
        emu_launch(dim3{(unsigned)B, 1, 1}, T256, row_stats, B, d, F, x.data(), xh.data(), fd.data(), rows.data());
        emu_launch(dim3{up(F, 256), 1, 1}, T256, feature_fire_counts, B, F, fd.data(), cnt.data());
        emu_launch(dim3{std::min(up(bf, 256), 4096u), 1, 1}, T256, count_nonzero, (long long)bf, fd.data(), &nnz);
    }
    op("threshold.jumprelu");
    {
        V t(F, -1.0f), g(F);
        emu_launch(dim3{up(bf, 256), 1, 1}, T256, threshold_rows, B, F, fd.data(), t.data(), out.data());
        emu_launch(dim3{up(F, 32), 1, 1}, T256, threshold_grad, B, d, F, 0.001f, 0.7f, fd.data(), t.data(), x.data(), xh.data(), wd.data(), g.data());
    }
    op("batchtopk.select");
    dev_batchtopk(B, F, k, fd, out);
    op("gated.encode");
    V rm = randv(F, 0.5), bm = randv(F, 0.2), pg = fd;
    out = fd;
    emu_launch(g2(up(F, 128), up(B, 128)), T256, gated_encode_gemm, B, d, F, x.data(), we.data(), be.data(), bd.data(), rm.data(), bm.data(), pg.data(), out.data());
    op("gated.backward");
    {
        V g6[6] = {V(df), V(F), V(df), V(d), V(F), V(F)};
        double sums[2];
        dev_gated_backward(B, d, F, 0.4f, x, pg, out, xh, we, be, wd, bd, rm, g6, sums);
    }
    op("resample.dead");
    {
        std::vector<int> dead;
        for (int i = 0; i < F; i += 64) dead.push_back(i);
        const int nd = (int)dead.size();
        V dirs = randv((size_t)nd * d, 1), sq(F), m(df), v(df), mb(F), vb(F), md(df), vd(df);
        emu_launch(dim3{up(F, 256), 1, 1}, T256, enc_col_sq_norms, d, F, we.data(), sq.data());
        emu_launch(dim3{(unsigned)nd, 1, 1}, T256, resample_write, nd, d, F, 0.2f, (const int *)dead.data(), (const float *)dirs.data(),
                   we.data(), be.data(), wd.data(), m.data(), v.data(), mb.data(), vb.data(), md.data(), vd.data());
    }
    emu_set_label("");
}
#endif

int main(int argc, char **argv) {
    // --quick (the Rust test): fewer blocks, still partial tiles in every GEMM dimension and > 1 tile in d and F.
    const std::string mode = argc > 1 ? argv[1] : "";
    std::vector<std::array<int, 3>> shapes = {{1, 1, 1}, {7, 13, 29}, {40, 130, 260}, {33, 64, 300}};
    if (mode == "--quick") shapes = {{1, 1, 1}, {7, 13, 29}, {5, 130, 133}};
    // --count: one shape whose d and F are multiples of 128 (the vector loads of the real shapes), one that is not.
    if (mode == "--count") {
#ifndef EMU_COUNT
        std::fprintf(stderr, "--count needs the counting build (-DEMU_COUNT)\n");
        return 2;
#endif
        if (argc < 3) {
            std::fprintf(stderr, "usage: emu --count FILE\n");
            return 2;
        }
        shapes = {{16, 128, 256}, {5, 130, 133}};
    }
#ifdef EMU_COUNT
    if (mode == "--roofline") {
        if (argc < 7) {
            std::fprintf(stderr, "usage: emu --roofline FILE B d F k\n");
            return 2;
        }
        roofline(std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]), std::atoi(argv[6]));
        if (!emu_write_counts(argv[2])) {
            std::fprintf(stderr, "cannot write %s\n", argv[2]);
            return 2;
        }
        return 0;
    }
#endif
    for (auto &sh : shapes) {
        const int B = sh[0], d = sh[1], F = sh[2];
        V x = randv((size_t)B * d, 1), we = randv((size_t)d * F, 0.5), be = randv(F, 0.2), wd = randv((size_t)F * d, 1), bd = randv(d, 0.1);
        for (int i = 0; i < F; ++i) {
            double n = 0;
            for (int j = 0; j < d; ++j) n += wd[(size_t)i * d + j] * wd[(size_t)i * d + j];
            for (int j = 0; j < d; ++j) wd[(size_t)i * d + j] /= (float)std::sqrt(n);
        }
        check_architectures(B, d, F, x, we, be, wd, bd);
        // encode: ReLU and TopK
        for (int k : {-1, std::max(1, F / 8)}) {
            V want((size_t)B * F), got = nanv((size_t)B * F);
            ref_encode(B, d, F, k, x, we, be, bd, want);
            emu_launch(g2(up(F, 128), up(B, 128)), T256, encode_gemm_relu, B, d, F, x.data(), we.data(), be.data(), bd.data(), got.data());
            if (k >= 0 && k < F) emu_launch(dim3{(unsigned)B, 1, 1}, T256, topk_rows, B, F, k, got.data());
            cmp(k < 0 ? "encode relu" : "encode topk", B, d, F, got, want);
        }
        // f: the ReLU encoding (dense) and a 2% random sparse code
        V fd((size_t)B * F);
        ref_encode(B, d, F, -1, x, we, be, bd, fd);
        V fs((size_t)B * F, 0.0f);
        std::uniform_real_distribution<float> u01(0, 1);
        for (auto &v : fs) v = u01(rng) < 0.02f ? 0.1f + u01(rng) : 0.0f;
        for (auto *fp : {&fd, &fs}) {
            const V &f = *fp;
            const char *lab = fp == &fd ? "dense f" : "sparse f";
            V xh((size_t)B * d);
            ref_decode(B, d, F, f, wd, bd, xh);
            V g1 = nanv((size_t)B * d), g2v = nanv((size_t)B * d);
            emu_launch(g2(up(d, 128), up(B, 128)), T256, decode_gemm, B, d, F, f.data(), wd.data(), bd.data(), g1.data());
            emu_launch(g2(B, up(d, 1024)), T256, decode_sparse, B, d, F, f.data(), wd.data(), bd.data(), g2v.data());
            cmp((std::string("decode gemm / ") + lab).c_str(), B, d, F, g1, xh);
            cmp((std::string("decode sparse / ") + lab).c_str(), B, d, F, g2v, xh);
            V rwe((size_t)d * F), rbe(F), rwd((size_t)F * d), rbd(d);
            ref_backward(B, d, F, 0.3f, x, f, xh, we, wd, bd, rwe, rbe, rwd, rbd);
            for (bool sp : {false, true}) {
                V gwe = nanv((size_t)d * F), gbe = nanv(F), gwd = nanv((size_t)F * d), gbd = nanv(d);
                dev_backward(sp, B, d, F, 0.3f, x, f, xh, we, wd, bd, gwe, gbe, gwd, gbd);
                std::string p = std::string("backward ") + (sp ? "sparse" : "dense") + " / " + lab;
                cmp((p + " dW_enc").c_str(), B, d, F, gwe, rwe);
                cmp((p + " db_enc").c_str(), B, d, F, gbe, rbe);
                cmp((p + " dW_dec").c_str(), B, d, F, gwd, rwd);
                cmp((p + " db_dec").c_str(), B, d, F, gbd, rbd);
            }
            // reductions
            V xr = randv((size_t)B * d, 1);
            std::vector<double> rows((size_t)B * 3, NAN);
            emu_launch(dim3{(unsigned)B, 1, 1}, T256, row_stats, B, d, F, x.data(), xr.data(), f.data(), rows.data());
            double s[3] = {0, 0, 0}, w[3] = {0, 0, 0};
            for (int b = 0; b < B; ++b)
                for (int q = 0; q < 3; ++q) s[q] += rows[(size_t)b * 3 + q];
            for (size_t p = 0; p < x.size(); ++p) w[0] += ((double)x[p] - xr[p]) * ((double)x[p] - xr[p]);
            for (float v : f) { w[1] += v > 0; w[2] += v; }
            cmp((std::string("row_stats / ") + lab).c_str(), B, d, F, V{(float)s[0], (float)s[1], (float)s[2]}, V{(float)w[0], (float)w[1], (float)w[2]});
            std::vector<unsigned> cnt(F, 3);
            emu_launch(dim3{up(F, 256), 1, 1}, T256, feature_fire_counts, B, F, f.data(), cnt.data());
            V gc(F), wc(F, 3);
            for (int i = 0; i < F; ++i) { gc[i] = cnt[i]; for (int b = 0; b < B; ++b) wc[i] += f[(size_t)b * F + i] > 0; }
            cmp((std::string("fire counts / ") + lab).c_str(), B, d, F, gc, wc);
            unsigned long long nnz = 0;
            emu_launch(dim3{std::min(up(f.size(), 256), 4096u), 1, 1}, T256, count_nonzero, (long long)f.size(), f.data(), &nnz);
            float wn = 0;
            for (float v : f) wn += v != 0;
            cmp((std::string("count_nonzero / ") + lab).c_str(), B, d, F, V{(float)nnz}, V{wn});
            V pt = nanv(B), wpt(B);
            emu_launch(dim3{(unsigned)B, 1, 1}, T256, per_token_sq_err, B, d, x.data(), xr.data(), pt.data());
            for (int b = 0; b < B; ++b) { float a = 0; for (int j = 0; j < d; ++j) { float e = x[(size_t)b * d + j] - xr[(size_t)b * d + j]; a += e * e; } wpt[b] = a; }
            cmp((std::string("per_token_sq_err / ") + lab).c_str(), B, d, F, pt, wpt);
        }
        // Adam: flat and decoder rows
        {
            const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, c1 = 1 - std::pow(b1, 3.0f), c2 = 1 - std::pow(b2, 3.0f);
            V p = randv((size_t)d * F, 1), g = randv(p.size(), 1), m = randv(p.size(), 0.1), v = randv(p.size(), 0.1);
            for (auto &q : v) q = std::fabs(q);
            V p2 = p, m2 = m, v2 = v;
            ref_adam(lr, b1, b2, eps, c1, c2, p, g, m, v);
            emu_launch(dim3{up(p.size(), 256), 1, 1}, T256, adam_step, (long long)p.size(), lr, b1, b2, eps, c1, c2, p2.data(), g.data(), m2.data(), v2.data());
            cmp("adam_step param", B, d, F, p2, p);
            cmp("adam_step m", B, d, F, m2, m);
            cmp("adam_step v", B, d, F, v2, v);
            V w = wd, gw = randv(w.size(), 1), mw = randv(w.size(), 0.1), vw = randv(w.size(), 0.1);
            for (auto &q : vw) q = std::fabs(q);
            V w2 = w, gw2 = gw, mw2 = mw, vw2 = vw;
            for (int i = 0; i < F; ++i) {  // reference: decoder_row
                float *wr = &w[(size_t)i * d], *gr = &gw[(size_t)i * d];
                float n = 0, dot = 0;
                for (int j = 0; j < d; ++j) n += wr[j] * wr[j];
                n = std::sqrt(n);
                for (int j = 0; j < d; ++j) dot += wr[j] * gr[j];
                dot /= n;
                for (int j = 0; j < d; ++j) gr[j] -= dot * wr[j] / n;
                V pw(wr, wr + d), gg(gr, gr + d), mm(&mw[(size_t)i * d], &mw[(size_t)i * d] + d), vv(&vw[(size_t)i * d], &vw[(size_t)i * d] + d);
                ref_adam(lr, b1, b2, eps, c1, c2, pw, gg, mm, vv);
                float n2 = 0;
                for (float q : pw) n2 += q * q;
                n2 = std::sqrt(n2);
                for (int j = 0; j < d; ++j) { wr[j] = pw[j] / n2; mw[(size_t)i * d + j] = mm[j]; vw[(size_t)i * d + j] = vv[j]; }
            }
            emu_launch(dim3{(unsigned)F, 1, 1}, T256, adam_decoder_rows, F, d, lr, b1, b2, eps, c1, c2, w2.data(), gw2.data(), mw2.data(), vw2.data());
            cmp("adam_decoder_rows param", B, d, F, w2, w);
            cmp("adam_decoder_rows grad (projected)", B, d, F, gw2, gw);
            cmp("adam_decoder_rows m", B, d, F, mw2, mw);
            cmp("adam_decoder_rows v", B, d, F, vw2, vw);
        }
        // resample writes
        {
            std::vector<int> dead;
            for (int i = 1; i < F; i += 3) dead.push_back(i);
            int nd = (int)dead.size();
            V dirs = randv((size_t)nd * d, 1);
            V sq = nanv(F), wsq(F);
            emu_launch(dim3{up(F, 256), 1, 1}, T256, enc_col_sq_norms, d, F, we.data(), sq.data());
            for (int i = 0; i < F; ++i) { float a = 0; for (int j = 0; j < d; ++j) a += we[(size_t)j * F + i] * we[(size_t)j * F + i]; wsq[i] = a; }
            cmp("enc_col_sq_norms", B, d, F, sq, wsq);
            V bufs[9] = {we, be, wd, we, we, be, be, wd, wd};
            V want[9] = {we, be, wd, we, we, be, be, wd, wd};
            for (int n = 0; n < nd; ++n) {
                int i = dead[n];
                for (int j = 0; j < d; ++j) {
                    want[2][(size_t)i * d + j] = dirs[(size_t)n * d + j];
                    want[7][(size_t)i * d + j] = want[8][(size_t)i * d + j] = 0;
                    want[0][(size_t)j * F + i] = 0.25f * dirs[(size_t)n * d + j];
                    want[3][(size_t)j * F + i] = want[4][(size_t)j * F + i] = 0;
                }
                want[1][i] = want[5][i] = want[6][i] = 0;
            }
            if (nd > 0)
                emu_launch(dim3{(unsigned)nd, 1, 1}, T256, resample_write, nd, d, F, 0.25f, (const int *)dead.data(), (const float *)dirs.data(),
                           bufs[0].data(), bufs[1].data(), bufs[2].data(), bufs[3].data(), bufs[4].data(), bufs[5].data(), bufs[6].data(), bufs[7].data(), bufs[8].data());
            const char *names[9] = {"W_enc", "b_enc", "W_dec", "m W_enc", "v W_enc", "m b_enc", "v b_enc", "m W_dec", "v W_dec"};
            for (int q = 0; q < 9; ++q) cmp((std::string("resample_write ") + names[q]).c_str(), B, d, F, bufs[q], want[q]);
        }
    }
    std::printf("%d comparisons, %d failed\n", comparisons, failures);
#ifdef EMU_COUNT
    if (mode == "--count" && !emu_write_counts(argv[2])) {
        std::fprintf(stderr, "cannot write %s\n", argv[2]);
        return 2;
    }
#endif
    return failures ? 1 : 0;
}
