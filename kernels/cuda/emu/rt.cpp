// rt.cpp: the emulator's runtime (emu.h): launching blocks as threads, barriers, warp exchanges, atomics, and, in the
// counting build (EMU_COUNT), the per-warp memory-traffic and per-thread operation counts of every kernel.
//
// Counting (docs/kernel-metrics.md). The kernel translation unit is compiled with -fsanitize=thread; this file, compiled
// without it, defines the __tsan_* hooks that instrumentation calls on every load and store. A kernel thread records
// (call site, n-th time at that site, address, size); when a block finishes, the records of the 32 lanes of each warp
// that share a call site and an occurrence number form one warp-wide request, as a GPU's SIMT lanes issue it:
//   global memory  one request; sectors = distinct 32-byte segments its lanes touch; bytes = what the lanes asked for
//   shared memory  one request; wavefronts = per phase (32 lanes for <= 4-byte accesses, 16 for 8, 8 for 16), the
//                  largest number of distinct 4-byte words that fall in one of the 32 banks; conflicts = wavefronts
//                  beyond one per phase (lanes reading the same word are a broadcast, not a conflict)
// Addresses are classified by where they live: the executable's static storage (where __shared__ arrays are, as
// function-local statics) is shared memory, the running thread's own stack is local memory (registers on a GPU; not
// counted), anything else a kernel touches is global memory (the harness's buffers).
#include "emu.h"

#include <algorithm>
#include <atomic>
#include <dlfcn.h>
#include <cstdio>
#include <map>
#include <new>
#include <string>
#include <ucontext.h>
#include <unordered_map>
#include <vector>

namespace {

// One CUDA thread of the block being run: a fiber (ucontext) with its own stack. Fibers run one at a time on the
// calling OS thread, switching only where a CUDA thread would wait for others: __syncthreads and the warp exchanges.
enum class Wait { None, Block, Warp, Done };
struct Fiber {
    ucontext_t ctx;
    char *stack = nullptr;
    Wait wait = Wait::None;
    dim3 idx;
};

constexpr size_t FIBER_STACK = 256 * 1024;

struct Sched {
    ucontext_t main;
    std::vector<Fiber> fibers;
    std::vector<uint64_t> slots;  // 32 per warp
    unsigned current = 0;
    const std::function<void()> *body = nullptr;
};
Sched *g_sched = nullptr;

#ifdef EMU_COUNT
enum Kind : uint8_t { GLOBAL_LOAD, GLOBAL_STORE, GLOBAL_ATOMIC, SHARED_LOAD, SHARED_STORE, SHARED_ATOMIC };

struct Rec {
    uintptr_t site;
    uintptr_t addr;
    uint8_t size;
    Kind kind;
};

struct ThreadLog {
    std::vector<Rec> recs;
    unsigned long long barriers = 0, fp_ops = 0, flops = 0;
    uintptr_t stack_lo = 0, stack_hi = 0;
    bool in_kernel = false;
};
thread_local ThreadLog *t_log = nullptr;

extern "C" char __bss_start[], _end[];
extern "C" char __data_start[];

struct Counts {
    unsigned long long launches = 0, blocks = 0, threads = 0;
    unsigned long long gld_requests = 0, gld_sectors = 0, gst_requests = 0, gst_sectors = 0, global_bytes = 0;
    unsigned long long atomics = 0, shared_requests = 0, shared_wavefronts = 0, bank_conflicts = 0;
    unsigned long long barriers = 0, fp_ops = 0, flops = 0;
};
std::map<std::string, Counts> g_counts;
unsigned g_sample = 0;   // 0: every block; else at most this many, evenly spaced, the counts scaled to the grid
std::string g_label;     // prefixed to kernel names ("op|kernel") when set

// The emulator's own thread-local variables (emu.h): the kernels read threadIdx and the counting type bumps its counters,
// and instrumentation sees those reads as memory accesses. They are registers on a GPU.
bool emulator_state(uintptr_t a) {
    const uintptr_t vars[][2] = {{(uintptr_t)&threadIdx, sizeof threadIdx}, {(uintptr_t)&blockIdx, sizeof blockIdx},
                                 {(uintptr_t)&blockDim, sizeof blockDim},   {(uintptr_t)&gridDim, sizeof gridDim},
                                 {(uintptr_t)&emu_fp_ops, sizeof emu_fp_ops}, {(uintptr_t)&emu_flops, sizeof emu_flops}};
    for (auto &v : vars)
        if (a >= v[0] && a < v[0] + v[1]) return true;
    return false;
}

void record(void *p, unsigned size, bool write, void *site) {
    ThreadLog *l = t_log;
    if (!l || !l->in_kernel) return;
    const uintptr_t a = (uintptr_t)p;
    if (a >= l->stack_lo && a < l->stack_hi) return;  // local memory
    if (emulator_state(a)) return;
    const bool shared = a >= (uintptr_t)__data_start && a < (uintptr_t)_end;
    l->recs.push_back(Rec{(uintptr_t)site, a, (uint8_t)size,
                          shared ? (write ? SHARED_STORE : SHARED_LOAD) : (write ? GLOBAL_STORE : GLOBAL_LOAD)});
}

void record_atomic(void *p, unsigned size, void *site) {
    ThreadLog *l = t_log;
    if (!l || !l->in_kernel) return;
    const uintptr_t a = (uintptr_t)p;
    const bool shared = a >= (uintptr_t)__data_start && a < (uintptr_t)_end;
    l->recs.push_back(Rec{(uintptr_t)site, a, (uint8_t)size, shared ? SHARED_ATOMIC : GLOBAL_ATOMIC});
}

// One warp-wide request: the lanes' records of one (site, occurrence).
void account(Counts &c, const std::vector<const Rec *> &lanes, const std::vector<int> &lane_ids) {
    const Kind k = lanes[0]->kind;
    uintptr_t buf[32 * 5];  // a lane's access of at most 16 bytes spans at most 5 words or 2 sectors
    if (k == GLOBAL_LOAD || k == GLOBAL_STORE || k == GLOBAL_ATOMIC) {
        size_t m = 0;
        for (const Rec *r : lanes) {
            c.global_bytes += r->size;
            for (uintptr_t s = r->addr / 32; s <= (r->addr + r->size - 1) / 32 && m < std::size(buf); ++s) buf[m++] = s;
        }
        std::sort(buf, buf + m);
        const unsigned long long n = std::unique(buf, buf + m) - buf;
        if (k == GLOBAL_LOAD) {
            ++c.gld_requests;
            c.gld_sectors += n;
        } else if (k == GLOBAL_STORE) {
            ++c.gst_requests;
            c.gst_sectors += n;
        } else {
            ++c.atomics;
        }
        return;
    }
    ++c.shared_requests;
    unsigned widest = 0;
    for (const Rec *r : lanes) widest = std::max<unsigned>(widest, r->size);
    const int per_phase = widest <= 4 ? 32 : widest <= 8 ? 16 : 8;
    for (int ph = 0; ph < 32 / per_phase; ++ph) {
        size_t m = 0;
        for (size_t i = 0; i < lanes.size(); ++i) {
            if (lane_ids[i] / per_phase != ph) continue;
            for (uintptr_t w = lanes[i]->addr / 4; w <= (lanes[i]->addr + lanes[i]->size - 1) / 4 && m < std::size(buf); ++w)
                buf[m++] = w;
        }
        if (m == 0) continue;
        std::sort(buf, buf + m);
        m = std::unique(buf, buf + m) - buf;
        unsigned per_bank[32] = {};
        unsigned wave = 0;
        for (size_t i = 0; i < m; ++i) wave = std::max(wave, ++per_bank[buf[i] % 32]);
        c.shared_wavefronts += wave;
        c.bank_conflicts += wave - 1;
    }
}

Counts &operator+=(Counts &a, const Counts &b) {
    a.launches += b.launches, a.blocks += b.blocks, a.threads += b.threads;
    a.gld_requests += b.gld_requests, a.gld_sectors += b.gld_sectors, a.gst_requests += b.gst_requests;
    a.gst_sectors += b.gst_sectors, a.global_bytes += b.global_bytes, a.atomics += b.atomics;
    a.shared_requests += b.shared_requests, a.shared_wavefronts += b.shared_wavefronts;
    a.bank_conflicts += b.bank_conflicts, a.barriers += b.barriers, a.fp_ops += b.fp_ops, a.flops += b.flops;
    return a;
}

// b's counts as if every one of `total` blocks had done what the `sampled` ones did.
Counts scaled(const Counts &b, unsigned long long total, unsigned long long sampled) {
    auto f = [&](unsigned long long v) { return (unsigned long long)((long double)v * total / sampled + 0.5L); };
    Counts r;
    r.launches = b.launches, r.blocks = f(b.blocks), r.threads = f(b.threads);
    r.gld_requests = f(b.gld_requests), r.gld_sectors = f(b.gld_sectors), r.gst_requests = f(b.gst_requests);
    r.gst_sectors = f(b.gst_sectors), r.global_bytes = f(b.global_bytes), r.atomics = f(b.atomics);
    r.shared_requests = f(b.shared_requests), r.shared_wavefronts = f(b.shared_wavefronts);
    r.bank_conflicts = f(b.bank_conflicts), r.barriers = f(b.barriers), r.fp_ops = f(b.fp_ops), r.flops = f(b.flops);
    return r;
}

void account_block(Counts &c, std::vector<ThreadLog> &logs) {
    unsigned long long block_barriers = 0;
    for (auto &l : logs) {
        block_barriers = std::max(block_barriers, l.barriers);
        c.fp_ops += l.fp_ops;
        c.flops += l.flops;
    }
    c.barriers += block_barriers;
    std::vector<const Rec *> lanes;
    std::vector<int> ids;
    for (size_t w0 = 0; w0 < logs.size(); w0 += 32) {
        const size_t w1 = std::min(w0 + 32, logs.size());
        // Fast path: every lane made the same accesses in the same order (no divergence): the i-th record of each
        // lane is one request.
        bool same = true;
        for (size_t t = w0 + 1; t < w1 && same; ++t) {
            same = logs[t].recs.size() == logs[w0].recs.size();
            for (size_t i = 0; same && i < logs[t].recs.size(); ++i) same = logs[t].recs[i].site == logs[w0].recs[i].site;
        }
        if (same) {
            for (size_t i = 0; i < logs[w0].recs.size(); ++i) {
                lanes.clear();
                ids.clear();
                for (size_t t = w0; t < w1; ++t) {
                    lanes.push_back(&logs[t].recs[i]);
                    ids.push_back((int)(t - w0));
                }
                account(c, lanes, ids);
            }
            continue;
        }
        struct Key {
            uintptr_t site;
            uint32_t occ;
            bool operator<(const Key &o) const { return site != o.site ? site < o.site : occ < o.occ; }
        };
        // Divergent lanes: the n-th access of a lane at one call site goes with the n-th of every other lane there (the
        // same loop iteration, the same branch taken), as SIMT lanes reconverge.
        std::map<Key, std::pair<std::vector<const Rec *>, std::vector<int>>> reqs;
        for (size_t t = w0; t < w1; ++t) {
            std::unordered_map<uintptr_t, uint32_t> occ;
            for (const Rec &r : logs[t].recs) {
                auto &e = reqs[Key{r.site, occ[r.site]++}];
                e.first.push_back(&r);
                e.second.push_back((int)(t - w0));
            }
        }
        for (auto &[key, e] : reqs) {
            (void)key;
            account(c, e.first, e.second);
        }
    }
}

#endif

}  // namespace

#ifdef EMU_COUNT
void flush_ops();
#endif

// Back to the scheduler until the barrier this fiber waits at is complete.
void emu_wait(Wait w) {
    Sched &s = *g_sched;
    Fiber &f = s.fibers[s.current];
    f.wait = w;
#ifdef EMU_COUNT
    flush_ops();
#endif
    swapcontext(&f.ctx, &s.main);
}

void __syncthreads() {
#ifdef EMU_COUNT
    if (t_log) ++t_log->barriers;
#endif
    emu_wait(Wait::Block);
}

uint64_t emu_exchange_bits(uint64_t bits, int src_lane) {
    const unsigned t = emu_tid();
    const unsigned w = t / 32, lane = t % 32;
    g_sched->slots[w * 32 + lane] = bits;
    emu_wait(Wait::Warp);
    const uint64_t got = g_sched->slots[w * 32 + (src_lane & 31)];
    emu_wait(Wait::Warp);
    return got;
}

unsigned __ballot_sync(unsigned, bool p) {
    const unsigned t = emu_tid();
    const unsigned w = t / 32, lane = t % 32;
    g_sched->slots[w * 32 + lane] = p ? 1 : 0;
    emu_wait(Wait::Warp);
    unsigned r = 0;
    for (int l = 0; l < 32; ++l) r |= (g_sched->slots[w * 32 + l] ? 1u : 0u) << l;
    emu_wait(Wait::Warp);
    return r;
}

#ifdef EMU_COUNT
#define EMU_ATOMIC_SITE(p) record_atomic(p, sizeof(*p), __builtin_return_address(0))
#else
#define EMU_ATOMIC_SITE(p) ((void)0)
#endif
#define EMU_ATOMIC_ADD(T)                              \
    T atomicAdd(T *p, T v) {                           \
        EMU_ATOMIC_SITE(p);                            \
        return std::atomic_ref<T>(*p).fetch_add(v);    \
    }
EMU_ATOMIC_ADD(float)
EMU_ATOMIC_ADD(double)
EMU_ATOMIC_ADD(int)
EMU_ATOMIC_ADD(unsigned)
EMU_ATOMIC_ADD(unsigned long long)

#ifdef EMU_COUNT
// This fiber's fp32 operations since it last ran, into its log (the counters are the OS thread's, shared by fibers).
void flush_ops() {
    if (t_log && t_log->in_kernel) {
        t_log->fp_ops += emu_fp_ops;
        t_log->flops += emu_flops;
    }
    emu_fp_ops = 0;
    emu_flops = 0;
}
#endif

void emu_kernel_enter() {
#ifdef EMU_COUNT
    emu_fp_ops = 0;
    emu_flops = 0;
    if (t_log) t_log->in_kernel = true;
#endif
}

void emu_kernel_leave() {
#ifdef EMU_COUNT
    flush_ops();
    if (t_log) t_log->in_kernel = false;
#endif
}

static void fiber_main() {
    Sched &s = *g_sched;
    (*s.body)();
    s.fibers[s.current].wait = Wait::Done;
#ifdef EMU_COUNT
    flush_ops();
#endif
    swapcontext(&s.fibers[s.current].ctx, &s.main);
}

void emu_run(const void *kernel, dim3 grid, dim3 block, const std::function<void()> &body) {
    (void)kernel;
    const unsigned n = block.x * block.y * block.z;
    const unsigned nw = (n + 31) / 32;
    static Sched sched;
    Sched &s = sched;
    g_sched = &s;
    s.body = &body;
    s.slots.assign(nw * 32, 0);
    while (s.fibers.size() < n) {
        Fiber f;
        f.stack = static_cast<char *>(std::malloc(FIBER_STACK));
        s.fibers.push_back(f);
    }
#ifdef EMU_COUNT
    Dl_info info{};
    const char *sym = dladdr(kernel, &info) && info.dli_sname ? info.dli_sname : "unknown";
    Counts &total = g_counts[g_label.empty() ? std::string(sym) : g_label + "|" + sym];
    Counts c;
    c.launches = 1;
    std::vector<ThreadLog> logs(n);
    const unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    const unsigned long long nsample = g_sample && g_sample < nblocks ? g_sample : nblocks;
    // The blocks to run: all, or `nsample` evenly spaced from the first to the last (edges and interior).
    std::vector<char> run(nblocks, nsample == nblocks);
    for (unsigned long long i = 0; nsample < nblocks && i < nsample; ++i)
        run[nsample == 1 ? 0 : i * (nblocks - 1) / (nsample - 1)] = 1;
    unsigned long long block_no = 0;
    for (unsigned t = 0; t < n; ++t) {
        logs[t].stack_lo = (uintptr_t)s.fibers[t].stack;
        logs[t].stack_hi = (uintptr_t)s.fibers[t].stack + FIBER_STACK;
    }
#endif
    blockDim = block;
    gridDim = grid;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
#ifdef EMU_COUNT
                if (!run[block_no++]) continue;
#endif
                blockIdx = dim3{bx, by, bz};
                for (unsigned t = 0; t < n; ++t) {
                    Fiber &f = s.fibers[t];
                    f.idx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                    f.wait = Wait::None;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack;
                    f.ctx.uc_stack.ss_size = FIBER_STACK;
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, fiber_main, 0);
                }
                // Run every runnable fiber until it waits or ends; then release the barriers every live fiber of
                // their scope (block, or warp) has reached. A fiber that ended drops out of both, as an exited GPU
                // thread does.
                for (;;) {
                    for (unsigned t = 0; t < n; ++t) {
                        Fiber &f = s.fibers[t];
                        if (f.wait != Wait::None) continue;
                        s.current = t;
                        threadIdx = f.idx;
#ifdef EMU_COUNT
                        t_log = &logs[t];
#endif
                        swapcontext(&s.main, &f.ctx);
                    }
#ifdef EMU_COUNT
                    t_log = nullptr;
#endif
                    bool live = false, released = false, all_block = true;
                    for (unsigned t = 0; t < n; ++t) {
                        const Wait w = s.fibers[t].wait;
                        if (w != Wait::Done) live = true;
                        if (w != Wait::Done && w != Wait::Block) all_block = false;
                    }
                    if (!live) break;
                    for (unsigned w = 0; w < nw; ++w) {
                        bool all = true, any = false;
                        for (unsigned t = w * 32; t < std::min(n, w * 32 + 32); ++t) {
                            const Wait q = s.fibers[t].wait;
                            if (q != Wait::Done && q != Wait::Warp) all = false;
                            any |= q == Wait::Warp;
                        }
                        if (all && any) {
                            for (unsigned t = w * 32; t < std::min(n, w * 32 + 32); ++t)
                                if (s.fibers[t].wait == Wait::Warp) s.fibers[t].wait = Wait::None;
                            released = true;
                        }
                    }
                    if (!released && all_block) {
                        for (unsigned t = 0; t < n; ++t)
                            if (s.fibers[t].wait == Wait::Block) s.fibers[t].wait = Wait::None;
                        released = true;
                    }
                    if (!released) {
                        std::fprintf(stderr, "emulator: deadlock in a block (threads wait at different barriers)\n");
                        std::abort();
                    }
                }
#ifdef EMU_COUNT
                ++c.blocks;
                c.threads += n;
                account_block(c, logs);
                for (auto &l : logs) {
                    l.recs.clear();
                    l.barriers = l.fp_ops = l.flops = 0;
                }
#endif
            }
#ifdef EMU_COUNT
    total += nsample == nblocks ? c : scaled(c, nblocks, nsample);
#endif
}

#ifdef EMU_COUNT
// ThreadSanitizer's instrumentation entry points, as GCC and Clang emit them, turned into records.
#define EMU_HOOK(N)                                                                                            \
    extern "C" void __tsan_read##N(void *p) { record(p, N, false, __builtin_return_address(0)); }              \
    extern "C" void __tsan_write##N(void *p) { record(p, N, true, __builtin_return_address(0)); }              \
    extern "C" void __tsan_unaligned_read##N(void *p) { record(p, N, false, __builtin_return_address(0)); }    \
    extern "C" void __tsan_unaligned_write##N(void *p) { record(p, N, true, __builtin_return_address(0)); }
EMU_HOOK(1)
EMU_HOOK(2)
EMU_HOOK(4)
EMU_HOOK(8)
EMU_HOOK(16)
extern "C" void __tsan_read_range(void *p, unsigned long n) { record(p, (unsigned)n, false, __builtin_return_address(0)); }
extern "C" void __tsan_write_range(void *p, unsigned long n) { record(p, (unsigned)n, true, __builtin_return_address(0)); }
extern "C" void __tsan_init() {}
// Guard variables of function-local statics are read atomically; nothing of a kernel's.
extern "C" char __tsan_atomic8_load(const volatile char *a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }

void emu_copy16(void *dst, const void *src) {
    void *site = __builtin_return_address(0);
    record(const_cast<void *>(src), 16, false, site);
    record(dst, 16, true, site);
    std::memcpy(dst, src, 16);
}
extern "C" void __tsan_func_entry(void *) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void **, void *) {}
extern "C" void __tsan_vptr_read(void **) {}
extern "C" void __tsan_volatile_read4(void *p) { record(p, 4, false, __builtin_return_address(0)); }
extern "C" void __tsan_volatile_write4(void *p) { record(p, 4, true, __builtin_return_address(0)); }

void emu_set_sample(unsigned blocks) { g_sample = blocks; }
void emu_set_label(const char *label) { g_label = label; }

// Every heap block starts on 256 bytes, as cudaMalloc's do: the harness's buffers are the kernels' global memory, and
// the sectors a warp touches depend on where a buffer starts.
void *operator new(size_t n) {
    void *p = std::aligned_alloc(256, (n + 255) / 256 * 256);
    if (!p) throw std::bad_alloc();
    return p;
}
void operator delete(void *p) noexcept { std::free(p); }
void operator delete(void *p, size_t) noexcept { std::free(p); }

// Writes every kernel's counts as one JSON object keyed by kernel name.
bool emu_write_counts(const char *path) {
    FILE *f = std::fopen(path, "w");
    if (!f) return false;
    std::fprintf(f, "{\n");
    bool first = true;
    for (auto &[name, c] : g_counts) {
        std::fprintf(f,
                     "%s  \"%s\": {\"launches\": %llu, \"blocks\": %llu, \"threads\": %llu, \"gld_requests\": %llu, "
                     "\"gld_sectors\": %llu, \"gst_requests\": %llu, \"gst_sectors\": %llu, \"global_bytes\": %llu, "
                     "\"atomics\": %llu, \"shared_requests\": %llu, \"shared_wavefronts\": %llu, \"bank_conflicts\": "
                     "%llu, \"barriers\": %llu, \"fp_ops\": %llu, \"flops\": %llu}",
                     first ? "" : ",\n", name.c_str(), c.launches, c.blocks, c.threads, c.gld_requests, c.gld_sectors,
                     c.gst_requests, c.gst_sectors, c.global_bytes, c.atomics, c.shared_requests, c.shared_wavefronts,
                     c.bank_conflicts, c.barriers, c.fp_ops, c.flops);
        first = false;
    }
    std::fprintf(f, "\n}\n");
    return std::fclose(f) == 0;
}
#endif
