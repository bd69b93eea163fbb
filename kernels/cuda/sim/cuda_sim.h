/* cuda_sim: run CUDA kernel source on the CPU (docs/cuda.md, shared CUDA-TESTING note).
 *
 * A .cu file is compiled twice: by nvcc for the GPU, and by g++ as host C++ with this header
 * force-included (`g++ -x c++ -include kernels/cuda/sim/cuda_sim.h -DCUSIM=1`). Here:
 *   - every CUDA thread of a block is a fiber (its own small stack with a guard page); a block
 *     runs on one OS thread, blocks are spread over a few OS threads (CUSIM_THREADS, default 2),
 *     so atomics are real atomics;
 *   - __syncthreads() (and _count/_and/_or) is a counting barrier: an arriving thread yields to
 *     the next runnable fiber; a barrier some thread can never reach (it exited, or waits at a
 *     warp operation) is reported as a divergent barrier / deadlock;
 *   - warp operations (__shfl*_sync, __ballot/__any/__all_sync, __syncwarp) go through a per-warp
 *     exchange buffer: every lane deposits, the last one computes all results; only full masks;
 *   - dynamic shared memory (CUDA_DYN_SMEM) is filled with NaN bytes (0xff) at every block start,
 *     so reads of shared memory nobody wrote show up;
 *   - the order in which runnable fibers run is picked by CUSIM_ORDER=fwd|rev|rand (CUSIM_SEED
 *     seeds rand), so a missing barrier gives wrong results in some order;
 *   - a launch with a bad configuration fails with cudaErrorInvalidConfiguration, a hazard with
 *     cudaErrorLaunchFailure; cusim_last_message() says what happened (and it is printed).
 * The CUDA runtime calls the kernels' host code uses (memory, streams, graphs) are host-memory
 * versions, so a whole backend runs here end to end. Launches are synchronous.
 *
 * Not covered: timing, occupancy, memory-model races that give right answers sequentially,
 * fast-math rounding, cooperative grid sync, partial warp masks. */
#ifndef CUSIM_CUDA_SIM_H
#define CUSIM_CUDA_SIM_H

#if defined(__CUDACC__)
#error "cuda_sim.h is for the host (simulator) build only"
#endif

#ifndef CUSIM
#define CUSIM 1
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
#include <tuple>
#include <type_traits>
#include <utility>

/* ---- qualifiers ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __constant__ static
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))
#ifndef __restrict__
#define __restrict__ __restrict
#endif

/* ---- thread geometry ---- */
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

enum { CUSIM_WARP = 32 };

/* One CUDA thread. */
struct cusim_fiber {
    void *sp;    /* saved stack pointer while switched out */
    void *ucx;   /* ucontext (non-x86-64 fallback) */
    char *stack; /* lowest usable address */
    size_t stack_size;
    uint3 tidx;
    int lin, warp, lane;
    int state;        /* cusim_state */
    int pred;         /* barrier / vote predicate deposited */
    uint64_t val;     /* shuffle value deposited */
    int src;          /* shuffle: the lane this one reads */
    uint64_t res;     /* warp op result for this lane */
    void *fake_stack; /* ASan fake-stack save */
};

struct cusim_block_ctx {
    uint3 bidx;
    dim3 bdim, gdim;
    unsigned char *smem;
    size_t smem_bytes;
    int bar_result;
};

extern __thread cusim_fiber *cusim_cur;
extern __thread cusim_block_ctx *cusim_blk;

#define threadIdx (cusim_cur->tidx)
#define blockIdx (cusim_blk->bidx)
#define blockDim (cusim_blk->bdim)
#define gridDim (cusim_blk->gdim)
#define warpSize 32

/* dynamic shared memory (both builds spell it CUDA_DYN_SMEM(T, name)) */
#define CUDA_DYN_SMEM(T, name) T *name = reinterpret_cast<T *>(cusim_blk->smem)

/* ---- barriers and warp operations (cuda_sim.cc) ---- */
int cusim_barrier(int pred, int kind); /* kind: 0 plain, 1 count, 2 and, 3 or */
enum {
    CUSIM_OP_SHFL = 1,
    CUSIM_OP_UP,
    CUSIM_OP_DOWN,
    CUSIM_OP_XOR,
    CUSIM_OP_BALLOT,
    CUSIM_OP_ANY,
    CUSIM_OP_ALL,
    CUSIM_OP_SYNCWARP
};
uint64_t cusim_warp_op(int op, unsigned mask, uint64_t val, int arg, int width, int pred);

static inline void __syncthreads(void)
{
    cusim_barrier(1, 0);
}
static inline int __syncthreads_count(int p)
{
    return cusim_barrier(p != 0, 1);
}
static inline int __syncthreads_and(int p)
{
    return cusim_barrier(p != 0, 2);
}
static inline int __syncthreads_or(int p)
{
    return cusim_barrier(p != 0, 3);
}
static inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    cusim_warp_op(CUSIM_OP_SYNCWARP, mask, 0, 0, 32, 0);
}
static inline unsigned __ballot_sync(unsigned mask, int p)
{
    return (unsigned)cusim_warp_op(CUSIM_OP_BALLOT, mask, 0, 0, 32, p != 0);
}
static inline int __any_sync(unsigned mask, int p)
{
    return (int)cusim_warp_op(CUSIM_OP_ANY, mask, 0, 0, 32, p != 0);
}
static inline int __all_sync(unsigned mask, int p)
{
    return (int)cusim_warp_op(CUSIM_OP_ALL, mask, 0, 0, 32, p != 0);
}
static inline unsigned __activemask(void)
{
    return 0xffffffffu;
}

template <class T> static inline T cusim_shfl(int op, unsigned mask, T v, int arg, int width)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "shuffles move values of up to 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    u = cusim_warp_op(op, mask, u, arg, width, 0);
    T r;
    memcpy(&r, &u, sizeof(T));
    return r;
}
template <class T> static inline T __shfl_sync(unsigned m, T v, int src, int width = 32)
{
    return cusim_shfl(CUSIM_OP_SHFL, m, v, src, width);
}
template <class T> static inline T __shfl_up_sync(unsigned m, T v, unsigned d, int width = 32)
{
    return cusim_shfl(CUSIM_OP_UP, m, v, (int)d, width);
}
template <class T> static inline T __shfl_down_sync(unsigned m, T v, unsigned d, int width = 32)
{
    return cusim_shfl(CUSIM_OP_DOWN, m, v, (int)d, width);
}
template <class T> static inline T __shfl_xor_sync(unsigned m, T v, int lm, int width = 32)
{
    return cusim_shfl(CUSIM_OP_XOR, m, v, lm, width);
}

/* ---- atomics (real ones: blocks run on several OS threads) ---- */
template <class T> static inline T atomicAdd(T *p, T v)
{
    if constexpr (std::is_floating_point<T>::value) {
        T old, nv;
        __atomic_load(p, &old, __ATOMIC_RELAXED);
        do {
            nv = old + v;
        } while (
            !__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
        return old;
    } else {
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    }
}
template <class T> static inline T atomicSub(T *p, T v)
{
    return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST);
}
template <class T> static inline T atomicExch(T *p, T v)
{
    T old;
    __atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST);
    return old;
}
template <class T> static inline T atomicCAS(T *p, T cmp, T v)
{
    __atomic_compare_exchange(p, &cmp, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return cmp;
}
template <class T> static inline T atomicMax(T *p, T v)
{
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v &&
           !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        ;
    return old;
}
template <class T> static inline T atomicMin(T *p, T v)
{
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old > v &&
           !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        ;
    return old;
}
static inline void __threadfence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
static inline void __threadfence_block(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* ---- intrinsics: host versions with the device semantics (IEEE, round to nearest) ---- */
static inline float __fmaf_rn(float a, float b, float c)
{
    return fmaf(a, b, c);
}
static inline float __fadd_rn(float a, float b)
{
    return a + b;
}
static inline float __fsub_rn(float a, float b)
{
    return a - b;
}
static inline float __fmul_rn(float a, float b)
{
    return a * b;
}
static inline float __fdiv_rn(float a, float b)
{
    return a / b;
}
static inline float __frcp_rn(float a)
{
    return 1.0f / a;
}
static inline float __fsqrt_rn(float a)
{
    return sqrtf(a);
}
static inline int __float2int_rn(float a)
{
    return (int)nearbyintf(a);
}
static inline int __float_as_int(float f)
{
    int i;
    memcpy(&i, &f, 4);
    return i;
}
static inline unsigned __float_as_uint(float f)
{
    unsigned i;
    memcpy(&i, &f, 4);
    return i;
}
static inline float __int_as_float(int i)
{
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline float __uint_as_float(unsigned i)
{
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline int __dp4a(int a, int b, int c)
{
    for (int i = 0; i < 4; i++)
        c += (int)(int8_t)(a >> 8 * i) * (int)(int8_t)(b >> 8 * i);
    return c;
}
static inline int __popc(unsigned x)
{
    return __builtin_popcount(x);
}
static inline int __ffs(int x)
{
    return __builtin_ffs(x);
}
static inline int __clz(int x)
{
    return x ? __builtin_clz((unsigned)x) : 32;
}
template <class T> static inline T __ldg(const T *p)
{
    return *p;
}

/* ---- runtime API (host-memory versions) ---- */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorLaunchFailure = 719,
} cudaError_t;

typedef struct cusim_stream *cudaStream_t;
typedef struct cusim_graph *cudaGraph_t;
typedef struct cusim_graph *cudaGraphExec_t;
typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;
typedef enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
} cudaStreamCaptureMode;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
#define cudaStreamNonBlocking 0x01
#define cudaHostAllocDefault 0
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor, multiProcessorCount;
    size_t sharedMemPerBlock, sharedMemPerBlockOptin;
    int memoryBusWidth;
};

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *v, int attr, int d);
cudaError_t cudaMalloc(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t n);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k,
                            cudaStream_t st = 0);
cudaError_t cudaMemcpy2DAsync(void *d, size_t dp, const void *s, size_t sp, size_t w, size_t h,
                              cudaMemcpyKind k, cudaStream_t st = 0);
cudaError_t cudaMemset(void *d, int v, size_t n);
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st = 0);
cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode m);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
template <class F> static inline cudaError_t cudaFuncSetAttribute(F *, cudaFuncAttribute, int)
{
    return cudaSuccess; /* the simulator allows the opt-in maximum (227 KiB) to every kernel */
}

/* ---- simulator control ---- */
/* What the last failed launch reported ("" when none). */
const char *cusim_last_message(void);
/* Thread orders: 0 fwd, 1 rev, 2 rand (initially from CUSIM_ORDER); returns the old one. */
int cusim_set_order(int order);
int cusim_get_order(void);
/* Launches so far (tests check that an operation really launched kernels). */
unsigned long cusim_launch_count(void);
/* cudaGraphLaunch calls so far. */
unsigned long cusim_graph_launch_count(void);

typedef void (*cusim_thunk)(const void *args);
/* Runs grid x block threads of thunk(args); args live until it returns. The stream only orders
 * (or, while capturing, records) the launch. */
cudaError_t cusim_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t st, cusim_thunk fn,
                         const void *args, void (*copy)(void **dst, const void *src),
                         void (*destroy)(void *p));

template <class K, class Tup, size_t... I>
static inline void cusim_apply(K k, const Tup &t, std::index_sequence<I...>)
{
    k(std::get<I>(t)...);
}

template <class... P, class... A>
static inline void cusim_launch_kernel(dim3 g, dim3 b, size_t smem, cudaStream_t st,
                                       void (*k)(P...), A &&...a)
{
    typedef std::tuple<typename std::decay<P>::type...> Tup;
    struct call {
        void (*k)(P...);
        Tup args;
    };
    call c{k, Tup(std::forward<A>(a)...)};
    cusim_launch(
        g, b, smem, st,
        [](const void *p) {
            const call *c = static_cast<const call *>(p);
            /* each thread gets its own copy of the arguments, as on the GPU */
            cusim_apply(c->k, c->args, std::index_sequence_for<P...>{});
        },
        &c, [](void **dst, const void *src) { *dst = new call(*static_cast<const call *>(src)); },
        [](void *p) { delete static_cast<call *>(p); });
}

static inline dim3 cusim_dim(dim3 d)
{
    return d;
}
static inline dim3 cusim_dim(unsigned x)
{
    return dim3(x);
}
static inline dim3 cusim_dim(int x)
{
    return dim3((unsigned)(x < 0 ? 0 : x));
}

#define KLAUNCH(kernel, grid, block, smem, stream, ...)                                            \
    cusim_launch_kernel(cusim_dim(grid), cusim_dim(block), (size_t)(smem), (stream), kernel,       \
                        __VA_ARGS__)

#endif /* __cplusplus */
#endif
