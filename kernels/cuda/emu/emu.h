// emu.h: a tiny CPU emulation of the CUDA execution model, so the kernels can be run and checked on a machine with
// no GPU (kernels/cuda/emu/check.cpp; the Rust test `cuda::compile::tests::kernels_run_correctly_in_the_emulator`).
//
// Each block runs with one std::thread per CUDA thread; blocks run one after another, so a function-local `static`
// stands in for __shared__. __syncthreads is a std::barrier over the block, the warp intrinsics (shuffles, ballot)
// exchange values through a per-warp slot array between two warp barriers. A thread that returns early drops out
// of both barriers, as exited threads do on a GPU. This checks the arithmetic, indexing, bounds and barrier logic of
// the kernels; it says nothing about speed, and nothing about memory-model subtleties beyond barriers and atomics.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct float4 {
    float x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct EmuBlock {
    std::barrier<> *block;
    std::vector<std::unique_ptr<std::barrier<>>> *warps;
    std::vector<uint64_t> *slots;  // 32 per warp
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline thread_local EmuBlock emu_ctx;

inline void __syncthreads() { emu_ctx.block->arrive_and_wait(); }

inline unsigned emu_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

template <typename T>
T emu_exchange(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    const unsigned t = emu_tid();
    const unsigned w = t / 32, lane = t % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    (*emu_ctx.slots)[w * 32 + lane] = bits;
    (*emu_ctx.warps)[w]->arrive_and_wait();
    uint64_t got = (*emu_ctx.slots)[w * 32 + (src_lane & 31)];
    (*emu_ctx.warps)[w]->arrive_and_wait();
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
inline unsigned __ballot_sync(unsigned, bool p) {
    const unsigned t = emu_tid();
    const unsigned w = t / 32, lane = t % 32;
    (*emu_ctx.slots)[w * 32 + lane] = p ? 1 : 0;
    (*emu_ctx.warps)[w]->arrive_and_wait();
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= ((*emu_ctx.slots)[w * 32 + l] ? 1u : 0u) << l;
    (*emu_ctx.warps)[w]->arrive_and_wait();
    return r;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
template <typename T>
T atomicAdd(T *p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v);
}

// Runs kernel(args...) on a grid of blocks, one block at a time.
template <typename... A, typename... B>
void emu_launch(dim3 grid, dim3 block, void (*kernel)(A...), B... args) {
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> bar(n);
                std::vector<std::unique_ptr<std::barrier<>>> warps;
                for (unsigned w = 0; w < (n + 31) / 32; ++w) warps.emplace_back(new std::barrier<>(32));
                std::vector<uint64_t> slots(((n + 31) / 32) * 32);
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < n; ++t)
                    ts.emplace_back([&, t] {
                        threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = dim3{bx, by, bz};
                        blockDim = block;
                        gridDim = grid;
                        emu_ctx = EmuBlock{&bar, &warps, &slots};
                        kernel(args...);
                        bar.arrive_and_drop();
                        warps[t / 32]->arrive_and_drop();
                    });
                for (auto &th : ts) th.join();
            }
}
