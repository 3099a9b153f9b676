// emu.h: a tiny CPU emulation of the CUDA execution model, so the kernels can be run, checked and counted on a
// machine with no GPU (kernels/cuda/emu/check.cpp; the Rust test `cuda::compile::tests::kernels_run_correctly_in_the_emulator`
// and `runner bench`'s emulated-kernel benchmark, kernels/src/cuda/emu.rs).
//
// Each block runs with one std::thread per CUDA thread; blocks run one after another, so a function-local `static`
// stands in for __shared__. __syncthreads is a std::barrier over the block, the warp intrinsics (shuffles, ballot)
// exchange values through a per-warp slot array between two warp barriers. A thread that returns early drops out
// of both barriers, as exited threads do on a GPU. This checks the arithmetic, indexing, bounds and barrier logic of
// the kernels; it says nothing about speed, and nothing about memory-model subtleties beyond barriers and atomics.
//
// The runtime (launch, barriers, shuffles, atomics) lives in rt.cpp, out of line, so that the translation unit holding
// the kernels contains no atomics of its own. With EMU_COUNT defined (the counting build, docs/kernel-metrics.md):
//   - the kernel translation unit is compiled with -fsanitize=thread, and rt.cpp supplies the __tsan_* hooks instead
//     of ThreadSanitizer's runtime: every load and store of a kernel thread reaches rt.cpp with its address, size and
//     call site, and rt.cpp groups them per warp into requests (32-byte sectors of global memory, bank wavefronts of
//     shared memory);
//   - `float` in the kernel sources is the counting type emu_f32 (check.cpp defines `float` around its includes of the
//     .cu files), whose operators count each fp32 operation a thread executes.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
#ifdef EMU_COUNT
// One 16-byte load of src and store to dst (rt.cpp), as a GPU's vector load or store: without it the compiler may
// split a float4 copy into four 4-byte accesses, which would count as four requests.
void emu_copy16(void *dst, const void *src);
struct float4 {
    float x, y, z, w;
    float4() = default;
    float4(float a, float b, float c, float d) : x(a), y(b), z(c), w(d) {}
    float4(const float4 &o) { emu_copy16(this, &o); }
    float4 &operator=(const float4 &o) {
        emu_copy16(this, &o);
        return *this;
    }
};
#else
struct float4 {
    float x, y, z, w;
};
#endif
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// ---- the runtime (rt.cpp) ----
void __syncthreads();
// This thread's 8 bytes, exchanged within its warp: returns the bits lane `src_lane` gave.
uint64_t emu_exchange_bits(uint64_t bits, int src_lane);
unsigned __ballot_sync(unsigned, bool p);
float atomicAdd(float *p, float v);
double atomicAdd(double *p, double v);
int atomicAdd(int *p, int v);
unsigned atomicAdd(unsigned *p, unsigned v);
unsigned long long atomicAdd(unsigned long long *p, unsigned long long v);
// Counting: marks the span of a thread's run that is the kernel itself (argument set-up stays outside).
void emu_kernel_enter();
void emu_kernel_leave();
// Runs body once per thread of every block of the grid, blocks one after another; the counts are the kernel's at
// address `kernel` (named by its symbol: the counting build links with -rdynamic).
void emu_run(const void *kernel, dim3 grid, dim3 block, const std::function<void()> &body);

inline unsigned emu_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

template <typename T>
T emu_exchange(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    const uint64_t got = emu_exchange_bits(bits, src_lane & 31);
    T r;
    std::memcpy(&r, &got, sizeof(T));
    return r;
}

template <typename T>
T __shfl_down_sync(unsigned, T v, int o) {
    const int lane = emu_tid() % 32;
    return emu_exchange(v, lane + o < 32 ? lane + o : lane);
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int o) {
    const int lane = emu_tid() % 32;
    return emu_exchange(v, lane ^ o);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}

#ifdef EMU_COUNT
// fp32 operations executed by this thread: every arithmetic operator, comparison, fmaf and math function on the
// kernels' `float` is one; flops counts fmaf as two and comparisons as none.
inline thread_local unsigned long long emu_fp_ops = 0, emu_flops = 0;

struct emu_f32 {
    float v;
    emu_f32() = default;
    constexpr emu_f32(float x) : v(x) {}
    explicit operator float() const { return v; }
    explicit operator double() const { return v; }

    static emu_f32 op(float r, unsigned flops) {
        ++emu_fp_ops;
        emu_flops += flops;
        return emu_f32(r);
    }
    static bool cmp(bool r) {
        ++emu_fp_ops;
        return r;
    }
    friend emu_f32 operator+(emu_f32 a, emu_f32 b) { return op(a.v + b.v, 1); }
    friend emu_f32 operator-(emu_f32 a, emu_f32 b) { return op(a.v - b.v, 1); }
    friend emu_f32 operator*(emu_f32 a, emu_f32 b) { return op(a.v * b.v, 1); }
    friend emu_f32 operator/(emu_f32 a, emu_f32 b) { return op(a.v / b.v, 1); }
    friend emu_f32 operator-(emu_f32 a) { return op(-a.v, 0); }
    emu_f32 &operator+=(emu_f32 b) { return *this = *this + b; }
    emu_f32 &operator-=(emu_f32 b) { return *this = *this - b; }
    emu_f32 &operator*=(emu_f32 b) { return *this = *this * b; }
    emu_f32 &operator/=(emu_f32 b) { return *this = *this / b; }
    friend bool operator<(emu_f32 a, emu_f32 b) { return cmp(a.v < b.v); }
    friend bool operator>(emu_f32 a, emu_f32 b) { return cmp(a.v > b.v); }
    friend bool operator<=(emu_f32 a, emu_f32 b) { return cmp(a.v <= b.v); }
    friend bool operator>=(emu_f32 a, emu_f32 b) { return cmp(a.v >= b.v); }
    friend bool operator==(emu_f32 a, emu_f32 b) { return cmp(a.v == b.v); }
    friend bool operator!=(emu_f32 a, emu_f32 b) { return cmp(a.v != b.v); }
};
static_assert(sizeof(emu_f32) == 4 && std::is_trivially_copyable_v<emu_f32>, "emu_f32 must be a float's bits");

inline emu_f32 fmaf(emu_f32 a, emu_f32 b, emu_f32 c) { return emu_f32::op(std::fma(a.v, b.v, c.v), 2); }
inline emu_f32 expf(emu_f32 a) { return emu_f32::op(std::exp(a.v), 1); }
inline emu_f32 sqrtf(emu_f32 a) { return emu_f32::op(std::sqrt(a.v), 1); }
inline emu_f32 fabsf(emu_f32 a) { return emu_f32::op(std::fabs(a.v), 0); }
inline emu_f32 fmaxf(emu_f32 a, emu_f32 b) { return emu_f32::op(std::fmax(a.v, b.v), 0); }
inline emu_f32 fminf(emu_f32 a, emu_f32 b) { return emu_f32::op(std::fmin(a.v, b.v), 0); }
inline unsigned __float_as_uint(emu_f32 f) { return __float_as_uint(f.v); }
inline float4 make_float4(emu_f32 a, emu_f32 b, emu_f32 c, emu_f32 d) { return float4{a.v, b.v, c.v, d.v}; }
inline emu_f32 atomicAdd(emu_f32 *p, emu_f32 v) { return emu_f32(atomicAdd(reinterpret_cast<float *>(p), v.v)); }

// A kernel parameter from the harness's value: the harness holds plain floats, the kernel counting ones.
template <typename A, typename B>
A emu_arg(B v) {
    if constexpr (std::is_same_v<A, emu_f32 *>) {
        float *p = v;
        return reinterpret_cast<emu_f32 *>(p);
    } else if constexpr (std::is_same_v<A, const emu_f32 *>) {
        const float *p = v;
        return reinterpret_cast<const emu_f32 *>(p);
    } else {
        return v;
    }
}
#else
template <typename A, typename B>
A emu_arg(B v) {
    return v;
}
#endif

// Runs kernel(args...) on a grid of blocks, one block at a time.
template <typename... A, typename... B>
void emu_launch(dim3 grid, dim3 block, void (*kernel)(A...), B... args) {
    emu_run(reinterpret_cast<const void *>(kernel), grid, block, [&] {
        auto call = [kernel](A... a) {
            emu_kernel_enter();
            kernel(a...);
            emu_kernel_leave();
        };
        call(emu_arg<A>(args)...);
    });
}
