/* kcuda_ops: the CUDA kernels of the backend table (kcuda.h) — activation quantization, matmul
 * for every weight type in both activation modes, rmsnorm, rope, tree attention, SiLU-gating,
 * add, add-bias, argmax.
 *
 * Dimension letters as in kernels/kernels.h. Every output element follows the canonical
 * numerics of docs/numerics.md (canon1) operation for operation: work is spread over threads
 * only where the pieces are exact (integer block dot products, per-element products, a max) or
 * where a thread replays exactly one LANE16 accumulator; R16 trees are warp butterflies with
 * the canonical pairings (offsets 8, 4, 2, 1); sequential chains (the 8-bit matmul's fma chain
 * over blocks, the attention's weighted sum over keys) run on one lane. Fast paths sit in the
 * small helpers at the top under __CUDA_ARCH__ guards, each with a portable fallback giving the
 * same integers. */
#include "kcuda.h"

#include <math.h>

extern "C" {
#include "../cpu/cpu_impl.h" /* the KCPU_EXP_* constants of the shared exp polynomial */
}

#define KC_FULL 0xffffffffu

/* ---- small device helpers ---- */

/* 4 x int8 dot product plus c: dp4a on the GPU (sm_61+), the same integers otherwise */
static __device__ __forceinline__ int kc_dp4a(int a, int b, int c)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 610 && !defined(KCUDA_FORCE_PORTABLE)
    return __dp4a(a, b, c);
#else
    for (int i = 0; i < 4; i++)
        c += (int)(int8_t)(a >> 8 * i) * (int)(int8_t)(b >> 8 * i);
    return c;
#endif
}

static __device__ __forceinline__ unsigned kc_ld16(const uint8_t *p)
{
    return *reinterpret_cast<const uint16_t *>(p);
}

/* 4 bytes at a 2-aligned address (block fields of 18- and 34-byte blocks are not 4-aligned) */
static __device__ __forceinline__ unsigned kc_ld32(const uint8_t *p)
{
    const uint16_t *h = reinterpret_cast<const uint16_t *>(p);
    return (unsigned)h[0] | (unsigned)h[1] << 16;
}

/* f16 bits -> f32, exact (normal, subnormal, inf, NaN) */
static __device__ __forceinline__ float kc_f16(unsigned h)
{
    unsigned s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f)
        return __uint_as_float(s | 0x7f800000u | m << 13);
    if (e == 0) {
        float f = __fmul_rn((float)m, 5.9604644775390625e-8f); /* m * 2^-24: exact */
        return s ? -f : f;
    }
    return __uint_as_float(s | (e + 112) << 23 | m << 13);
}

static __device__ __forceinline__ float kc_f16p(const uint8_t *p)
{
    return kc_f16(kc_ld16(p));
}

/* EXP of docs/numerics.md, operation for operation. */
static __device__ __forceinline__ float kc_exp(float x)
{
    x = KCPU_EXP_HI < x ? KCPU_EXP_HI : x; /* NaN stays NaN, as with min_ps(HI, x) */
    x = KCPU_EXP_LO > x ? KCPU_EXP_LO : x;
    float n = rintf(__fmul_rn(x, KCPU_EXP_LOG2E));
    float r = __fmaf_rn(-n, KCPU_EXP_LN2_HI, x);
    r = __fmaf_rn(-n, KCPU_EXP_LN2_LO, r);
    float q = KCPU_EXP_C4;
    q = __fmaf_rn(q, r, KCPU_EXP_C3);
    q = __fmaf_rn(q, r, KCPU_EXP_C2);
    q = __fmaf_rn(q, r, KCPU_EXP_C1);
    q = __fmaf_rn(q, r, KCPU_EXP_C0);
    float p = __fadd_rn(__fmaf_rn(q, __fmul_rn(r, r), r), 1.0f);
    int ni = x == x ? (int)n : (int)0x80000000; /* cvtps_epi32 of NaN: the "indefinite" int */
    int n1 = ni >> 1, n2 = ni - n1;
    float s1 = __int_as_float((int)((unsigned)(n1 + 127) << 23));
    float s2 = __int_as_float((int)((unsigned)(n2 + 127) << 23));
    return __fmul_rn(__fmul_rn(p, s1), s2);
}

/* The R16 tree of docs/numerics.md over a[0..15] */
static __device__ __forceinline__ float kc_r16(const float *a)
{
    float b[8], c[4];
    for (int i = 0; i < 8; i++)
        b[i] = __fadd_rn(a[i], a[i + 8]);
    for (int i = 0; i < 4; i++)
        c[i] = __fadd_rn(b[i], b[i + 4]);
    return __fadd_rn(__fadd_rn(c[0], c[2]), __fadd_rn(c[1], c[3]));
}

/* R16(LANE16 over i < n of acc = fma(a_i, b_i, acc)), by one thread (zero padding steps leave
 * an accumulator that starts at +0 unchanged, so they are skipped) */
static __device__ __forceinline__ float kc_dot16(const float *a, const float *b, int n)
{
    float s[16];
    for (int j = 0; j < 16; j++)
        s[j] = 0.0f;
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            s[j] = __fmaf_rn(a[i + j], b[i + j], s[j]);
    for (; i < n; i++)
        s[i & 15] = __fmaf_rn(a[i], b[i], s[i & 15]);
    return kc_r16(s);
}

/* Lanes 16g..16g+15 hold the LANE16 accumulators 0..15 of group g: the R16 tree by butterflies
 * 8, 4, 2, 1 (a + b commutes, so both partners get the same bits); every lane of the group ends
 * with the result. */
static __device__ __forceinline__ float kc_r16_lanes(float a)
{
    a = __fadd_rn(a, __shfl_xor_sync(KC_FULL, a, 8));
    a = __fadd_rn(a, __shfl_xor_sync(KC_FULL, a, 4));
    a = __fadd_rn(a, __shfl_xor_sync(KC_FULL, a, 2));
    a = __fadd_rn(a, __shfl_xor_sync(KC_FULL, a, 1));
    return a;
}

static inline unsigned kc_blocks(long n, int per)
{
    return (unsigned)((n + per - 1) / per);
}

/* ---- activation quantization: one warp per 32-element block ---- */

__global__ void __launch_bounds__(256) k_quant_q8(int8_t *q, float *d, const float *x, long nb)
{
    long b = (long)blockIdx.x * 8 + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (b >= nb) /* whole warps only: no block barrier below */
        return;
    float v = x[b * 32 + lane], a = fabsf(v), m = a;
    for (int o = 16; o > 0; o /= 2) {
        float u = __shfl_xor_sync(KC_FULL, m, o);
        m = u > m ? u : m;
    }
    float db = __fdiv_rn(m, 127.0f);
    float id = db != 0.0f ? __fdiv_rn(1.0f, db) : 0.0f;
    int iv = __float2int_rn(__fmul_rn(v, id));
    iv = iv > 127 ? 127 : iv < -127 ? -127 : iv;
    q[b * 32 + lane] = (int8_t)iv;
    if (lane == 0)
        d[b] = db;
}

cudaError_t kcuda_quant_q8(int8_t *q, float *d, const float *x, int T, int K, cudaStream_t st)
{
    long nb = (long)T * (K / 32);
    if (T <= 0 || K <= 0 || K % 32)
        return cudaErrorInvalidValue;
    KLAUNCH(k_quant_q8, kc_blocks(nb, 8), 256, 0, st, q, d, x, nb);
    return cudaGetLastError();
}

/* ---- matmul, 8-bit activations ----
 *
 * A warp owns one weight row and up to TT tokens. Lane l takes the 32-element units l, l+32, ...
 * of the row; per unit and token it computes the canonical step's operands exactly — (float)S,
 * the rounded DW*dx and, for Q4_1/Q4_K, MN and ds — into shared memory; then lane t runs token
 * t's fma chain over the units in increasing order (docs/numerics.md). */

enum { MM_WARPS = 8, MM_TT_MAX = 8 };

/* Sum of the 32 int8 of a unit (Q4_0's -8 correction, the ds of Q4_1 / Q4_K). */
static __device__ __forceinline__ int kc_sum32(const int *xq)
{
    int s = 0;
    for (int i = 0; i < 8; i++)
        s = kc_dp4a(xq[i], 0x01010101, s);
    return s;
}

/* o[0] = (float)S, o[1] = DW*dx and, where NV == 4, o[2] = MN, o[3] = ds, for unit u of a row
 * against one token's unit (xq: its 8 words, dx its scale) */
template <int WT> struct q8term;

template <> struct q8term<SD_DTYPE_Q8_0> {
    enum { NV = 2 };
    static __device__ __forceinline__ void f(float *o, const uint8_t *row, int u, const int *xq,
                                             float dx)
    {
        const uint8_t *b = row + 34 * (size_t)u;
        int s = 0;
        for (int i = 0; i < 8; i++)
            s = kc_dp4a((int)kc_ld32(b + 2 + 4 * i), xq[i], s);
        o[0] = (float)s;
        o[1] = __fmul_rn(kc_f16p(b), dx);
    }
};

template <> struct q8term<SD_DTYPE_Q4_0> {
    enum { NV = 2 };
    static __device__ __forceinline__ void f(float *o, const uint8_t *row, int u, const int *xq,
                                             float dx)
    {
        const uint8_t *b = row + 18 * (size_t)u;
        int s = 0;
        for (int i = 0; i < 4; i++) {
            unsigned w = kc_ld32(b + 2 + 4 * i);
            s = kc_dp4a((int)(w & 0x0f0f0f0fu), xq[i], s);
            s = kc_dp4a((int)(w >> 4 & 0x0f0f0f0fu), xq[4 + i], s);
        }
        o[0] = (float)(s - 8 * kc_sum32(xq));
        o[1] = __fmul_rn(kc_f16p(b), dx);
    }
};

template <> struct q8term<SD_DTYPE_Q4_1> {
    enum { NV = 4 };
    static __device__ __forceinline__ void f(float *o, const uint8_t *row, int u, const int *xq,
                                             float dx)
    {
        const uint8_t *b = row + 20 * (size_t)u;
        int s = 0;
        for (int i = 0; i < 4; i++) {
            unsigned w = kc_ld32(b + 4 + 4 * i);
            s = kc_dp4a((int)(w & 0x0f0f0f0fu), xq[i], s);
            s = kc_dp4a((int)(w >> 4 & 0x0f0f0f0fu), xq[4 + i], s);
        }
        o[0] = (float)s;
        o[1] = __fmul_rn(kc_f16p(b), dx);
        o[2] = kc_f16p(b + 2);
        o[3] = __fmul_rn(dx, (float)kc_sum32(xq));
    }
};

static __device__ __forceinline__ void kc_q4k_sm(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

template <> struct q8term<SD_DTYPE_Q4_K> {
    enum { NV = 4 };
    static __device__ __forceinline__ void f(float *o, const uint8_t *row, int u, const int *xq,
                                             float dx)
    {
        const uint8_t *b = row + 144 * (size_t)(u / 8);
        int j = u % 8, sc, m;
        kc_q4k_sm(j, b + 4, &sc, &m);
        const uint8_t *ql = b + 16 + 32 * (j / 2);
        int shift = (j & 1) * 4, si = 0;
        for (int i = 0; i < 8; i++)
            si = kc_dp4a((int)(kc_ld32(ql + 4 * i) >> shift & 0x0f0f0f0fu), xq[i], si);
        o[0] = (float)si;
        o[1] = __fmul_rn(__fmul_rn(kc_f16p(b), (float)sc), dx);
        o[2] = -__fmul_rn(kc_f16p(b + 2), (float)m);
        o[3] = __fmul_rn(dx, (float)kc_sum32(xq));
    }
};

template <> struct q8term<SD_DTYPE_Q6_K> {
    enum { NV = 2 };
    static __device__ __forceinline__ void f(float *o, const uint8_t *row, int u, const int *xq,
                                             float dx)
    {
        const uint8_t *b = row + 210 * (size_t)(u / 8);
        int j = u % 8, h = j / 4, g = j % 4;
        const uint8_t *ql = b + 64 * h + (g & 1) * 32, *qh = b + 128 + 32 * h;
        int lsh = (g >> 1) * 4, hsh = 2 * g, s[2] = {0, 0}, sx[2] = {0, 0};
        for (int i = 0; i < 8; i++) {
            unsigned v = (kc_ld32(ql + 4 * i) >> lsh & 0x0f0f0f0fu) |
                         (kc_ld32(qh + 4 * i) >> hsh & 0x03030303u) << 4;
            s[i / 4] = kc_dp4a((int)v, xq[i], s[i / 4]);
            sx[i / 4] = kc_dp4a(xq[i], 0x01010101, sx[i / 4]);
        }
        /* (q6 - 32) * x summed per 16 elements */
        int s0 = s[0] - 32 * sx[0], s1 = s[1] - 32 * sx[1];
        const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192) + 2 * j;
        o[0] = (float)(sc[0] * s0 + sc[1] * s1);
        o[1] = __fmul_rn(kc_f16p(b + 208), dx);
    }
};

template <int WT>
__global__ void __launch_bounds__(256)
    k_mm_q8(float *out, int ldo, const int8_t *q, const float *d, const uint8_t *w, size_t w_stride,
            int T, int N, int K, int tt)
{
    enum { NV = q8term<WT>::NV };
    CUDA_DYN_SMEM(float, terms);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int n = blockIdx.x * MM_WARPS + warp, t0 = blockIdx.y * tt;
    int nu = K / 32, ntok = T - t0 < tt ? T - t0 : tt;
    if (n >= N) /* whole warps: only warp-level synchronisation below */
        return;
    float *tw = terms + (size_t)warp * tt * nu * NV;
    const uint8_t *row = w + (size_t)n * w_stride;
    for (int u = lane; u < nu; u += 32)
        for (int k = 0; k < ntok; k++) {
            size_t t = (size_t)(t0 + k);
            const int *xq = reinterpret_cast<const int *>(q + t * K + 32 * (size_t)u);
            q8term<WT>::f(tw + ((size_t)k * nu + u) * NV, row, u, xq, d[t * nu + u]);
        }
    __syncwarp();
    if (lane < ntok) {
        const float *o = tw + (size_t)lane * nu * NV;
        float acc = 0.0f;
        for (int u = 0; u < nu; u++, o += NV) {
            acc = __fmaf_rn(o[0], o[1], acc);
            if (NV == 4)
                acc = __fmaf_rn(o[2], o[3], acc);
        }
        out[(size_t)(t0 + lane) * ldo + n] = acc;
    }
}

int kcuda_q8_type(sd_dtype wt)
{
    return wt == SD_DTYPE_Q8_0 || wt == SD_DTYPE_Q4_0 || wt == SD_DTYPE_Q4_1 ||
           wt == SD_DTYPE_Q4_K || wt == SD_DTYPE_Q6_K;
}

enum { KC_SMEM_MAX = 48 * 1024 }; /* no opt-in needed at this size */

cudaError_t kcuda_matmul_q8(float *out, int ldo, const int8_t *q, const float *d, const void *w,
                            sd_dtype wt, int T, int N, int K, cudaStream_t st)
{
    size_t be = dtype_block_elems(wt);
    if (T <= 0 || N <= 0 || K <= 0 || K % 32 || !be || K % (int)be || !kcuda_q8_type(wt))
        return cudaErrorInvalidValue;
    int nu = K / 32, nv = wt == SD_DTYPE_Q4_1 || wt == SD_DTYPE_Q4_K ? 4 : 2;
    int tt = (int)(KC_SMEM_MAX / ((size_t)MM_WARPS * nu * nv * sizeof(float)));
    tt = tt > MM_TT_MAX ? MM_TT_MAX : tt;
    if (tt < 1)
        return cudaErrorInvalidValue; /* K > 12288 (Q4_1/Q4_K) or 24576: the operands of one
                                         token do not fit */
    tt = tt > T ? T : tt;
    size_t smem = (size_t)MM_WARPS * tt * nu * nv * sizeof(float);
    size_t rb = dtype_row_bytes(wt, (size_t)K);
    dim3 grid(kc_blocks(N, MM_WARPS), kc_blocks(T, tt));
    const uint8_t *wb = static_cast<const uint8_t *>(w);
    switch (wt) {
    case SD_DTYPE_Q8_0:
        KLAUNCH(k_mm_q8<SD_DTYPE_Q8_0>, grid, 256, smem, st, out, ldo, q, d, wb, rb, T, N, K, tt);
        break;
    case SD_DTYPE_Q4_0:
        KLAUNCH(k_mm_q8<SD_DTYPE_Q4_0>, grid, 256, smem, st, out, ldo, q, d, wb, rb, T, N, K, tt);
        break;
    case SD_DTYPE_Q4_1:
        KLAUNCH(k_mm_q8<SD_DTYPE_Q4_1>, grid, 256, smem, st, out, ldo, q, d, wb, rb, T, N, K, tt);
        break;
    case SD_DTYPE_Q4_K:
        KLAUNCH(k_mm_q8<SD_DTYPE_Q4_K>, grid, 256, smem, st, out, ldo, q, d, wb, rb, T, N, K, tt);
        break;
    default:
        KLAUNCH(k_mm_q8<SD_DTYPE_Q6_K>, grid, 256, smem, st, out, ldo, q, d, wb, rb, T, N, K, tt);
        break;
    }
    return cudaGetLastError();
}

/* ---- matmul, f32 activations ----
 *
 * dtype_dequant_row's value of element e of a row, computed alone. */
template <int WT> static __device__ __forceinline__ float kc_deq(const uint8_t *row, int e)
{
    if (WT == SD_DTYPE_F32)
        return reinterpret_cast<const float *>(row)[e];
    if (WT == SD_DTYPE_F16)
        return kc_f16p(row + 2 * e);
    if (WT == SD_DTYPE_BF16)
        return __uint_as_float(kc_ld16(row + 2 * e) << 16);
    if (WT == SD_DTYPE_Q8_0) {
        const uint8_t *b = row + 34 * (e / 32);
        return __fmul_rn(kc_f16p(b), (float)(int8_t)b[2 + e % 32]);
    }
    if (WT == SD_DTYPE_Q4_0 || WT == SD_DTYPE_Q4_1) {
        int j = e % 32, sz = WT == SD_DTYPE_Q4_0 ? 18 : 20, off = WT == SD_DTYPE_Q4_0 ? 2 : 4;
        const uint8_t *b = row + sz * (e / 32);
        int byte = b[off + (j & 15)], nib = j < 16 ? byte & 15 : byte >> 4;
        if (WT == SD_DTYPE_Q4_0)
            return __fmul_rn(kc_f16p(b), (float)(nib - 8));
        return __fadd_rn(__fmul_rn(kc_f16p(b), (float)nib), kc_f16p(b + 2));
    }
    if (WT == SD_DTYPE_Q4_K) {
        const uint8_t *b = row + 144 * (e / 256);
        int r = e % 256, pair = r / 64, within = r % 64, j = 2 * pair + (within >= 32), sc, m;
        int byte = b[16 + 32 * pair + within % 32], qv = within >= 32 ? byte >> 4 : byte & 15;
        kc_q4k_sm(j, b + 4, &sc, &m);
        float d1 = __fmul_rn(kc_f16p(b), (float)sc), mm = __fmul_rn(kc_f16p(b + 2), (float)m);
        return __fsub_rn(__fmul_rn(d1, (float)qv), mm);
    }
    /* Q6_K */
    const uint8_t *b = row + 210 * (e / 256);
    int r = e % 256, h = r / 128, g = r % 128 / 32, l = r % 32;
    const uint8_t *ql = b + 64 * h + (g & 1) * 32, *qh = b + 128 + 32 * h;
    int qv = ((ql[l] >> (g >> 1) * 4) & 0xF) | ((qh[l] >> 2 * g) & 3) << 4;
    int sc = reinterpret_cast<const int8_t *>(b + 192)[8 * h + l / 16 + 2 * g];
    return __fmul_rn(__fmul_rn(kc_f16p(b + 208), (float)sc), (float)(qv - 32));
}

/* A warp owns one weight row and up to 16 tokens, 2 at a time: lane 16g + j runs LANE16
 * accumulator j for token g (elements j, j+16, ... in increasing order) into shared memory; then
 * lane t runs token t's R16 tree. (One warp synchronisation per 16 tokens rather than four
 * butterflies per 2: the same operations, far fewer exchanges.) */
enum { MMF_TOK = 16 };

template <int WT>
__global__ void __launch_bounds__(256)
    k_mm_f32(float *out, int ldo, const float *x, const uint8_t *w, size_t w_stride, int T, int N,
             int K)
{
    CUDA_DYN_SMEM(float, part); /* [MM_WARPS][MMF_TOK][16] */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, j = lane & 15, g = lane >> 4;
    int n = blockIdx.x * MM_WARPS + warp, tb = blockIdx.y * MMF_TOK;
    int ntok = T - tb < MMF_TOK ? T - tb : MMF_TOK;
    if (n >= N)
        return;
    float *pw = part + (size_t)warp * MMF_TOK * 16;
    const uint8_t *row = w + (size_t)n * w_stride;
    for (int k = g; k < ntok; k += 2) {
        const float *xr = x + (size_t)(tb + k) * K;
        float a = 0.0f;
        for (int i = j; i < K; i += 16)
            a = __fmaf_rn(xr[i], kc_deq<WT>(row, i), a);
        pw[k * 16 + j] = a;
    }
    __syncwarp();
    if (lane < ntok)
        out[(size_t)(tb + lane) * ldo + n] = kc_r16(pw + lane * 16);
}

cudaError_t kcuda_matmul_f32(float *out, int ldo, const float *x, const void *w, sd_dtype wt, int T,
                             int N, int K, cudaStream_t st)
{
    size_t be = dtype_block_elems(wt);
    if (T <= 0 || N <= 0 || K <= 0 || K % 8 || !be || K % (int)be)
        return cudaErrorInvalidValue;
    size_t rb = dtype_row_bytes(wt, (size_t)K);
    dim3 grid(kc_blocks(N, MM_WARPS), kc_blocks(T, MMF_TOK));
    size_t smem = sizeof(float) * MM_WARPS * MMF_TOK * 16;
    const uint8_t *wb = static_cast<const uint8_t *>(w);
    switch (wt) {
#define KC_MMF(t)                                                                                  \
    case t:                                                                                        \
        KLAUNCH(k_mm_f32<t>, grid, 256, smem, st, out, ldo, x, wb, rb, T, N, K);                   \
        break;
        KC_MMF(SD_DTYPE_F32)
        KC_MMF(SD_DTYPE_F16)
        KC_MMF(SD_DTYPE_BF16)
        KC_MMF(SD_DTYPE_Q8_0)
        KC_MMF(SD_DTYPE_Q4_0)
        KC_MMF(SD_DTYPE_Q4_1)
        KC_MMF(SD_DTYPE_Q4_K)
        KC_MMF(SD_DTYPE_Q6_K)
#undef KC_MMF
    default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

/* ---- rmsnorm: a warp per row; lanes 0..15 run the LANE16 accumulators ---- */

__global__ void __launch_bounds__(256)
    k_rmsnorm(float *out, const float *x, const float *w, int T, int D, float eps)
{
    int t = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (t >= T)
        return;
    const float *xr = x + (size_t)t * D;
    float a = 0.0f;
    if (lane < 16)
        for (int i = lane; i < D; i += 16)
            a = __fmaf_rn(xr[i], xr[i], a);
    a = kc_r16_lanes(a); /* lanes 0..15: ss */
    float ss = __shfl_sync(KC_FULL, a, 0);
    float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)D), eps)));
    float *o = out + (size_t)t * D;
    for (int i = lane; i < D; i += 32)
        o[i] = __fmul_rn(__fmul_rn(xr[i], r), w[i]);
}

cudaError_t kcuda_rmsnorm(float *out, const float *x, const float *w, int T, int D, float eps,
                          cudaStream_t st)
{
    if (T <= 0 || D <= 0)
        return cudaErrorInvalidValue;
    KLAUNCH(k_rmsnorm, kc_blocks(T, 8), 256, 0, st, out, x, w, T, D, eps);
    return cudaGetLastError();
}

/* ---- rope: a thread per rotated pair; cos/sin from the host-made table ---- */

__global__ void __launch_bounds__(256)
    k_rope(float *x, const int *pos, const int *step, const float *tab, int T, int H, int Dh,
           int half, int neox)
{
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x, n = (long)T * H * half;
    if (i >= n)
        return;
    int k = (int)(i % half);
    long th = i / half;
    int t = (int)(th / H);
    int p = pos ? pos[t] : *step + t; /* step: a decode graph's position, read at replay */
    const float *row = tab + (size_t)p * 2 * half;
    float c = row[k], s = row[half + k];
    float *xh = x + (size_t)th * Dh;
    int a = neox ? k : 2 * k, b = neox ? k + half : 2 * k + 1;
    float x0 = xh[a], x1 = xh[b];
    xh[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    xh[b] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

cudaError_t kcuda_rope(float *x, const int *pos, const float *tab, int T, int H, int Dh, int n_rot,
                       int neox, cudaStream_t st)
{
    if (n_rot > Dh)
        n_rot = Dh;
    int half = (n_rot & ~1) / 2;
    if (T <= 0 || H <= 0 || half <= 0)
        return T <= 0 || H <= 0 ? cudaErrorInvalidValue : cudaSuccess;
    long n = (long)T * H * half;
    KLAUNCH(k_rope, kc_blocks(n, 256), 256, 0, st, x, pos, (const int *)nullptr, tab, T, H, Dh,
            half, neox);
    return cudaGetLastError();
}

void kcuda_rope_table(float *tab, int p0, int p1, int n_rot, float base)
{
    int half = (n_rot & ~1) / 2;
    for (int p = p0; p < p1; p++) {
        float *row = tab + (size_t)(p - p0) * 2 * half;
        for (int i = 0; i < half; i++) { /* exactly cpu_backend.c rope_angles */
            double theta = (double)p * pow((double)base, -2.0 * i / (double)(half * 2));
            row[i] = (float)cos(theta);
            row[half + i] = (float)sin(theta);
        }
    }
}

/* ---- attention: a block per (query head, node) ----
 *
 * Scores: one thread per key (kc_dot16), scaled; the max (exact in any order); EXP per key;
 * then in parallel: threads d < Dh each run the weighted sum for output element d over the keys
 * in order, and the last warp sums the exps (LANE16 + R16). */

enum { ATT_SMEM_MAX = 200 * 1024 };

__global__ void __launch_bounds__(1024)
    k_attention(float *out, const float *q, const float *kc, const float *vc, size_t ld_slot,
                size_t ld_head, int np, const int *anc, const int *anc_off, const int *step, int H,
                int Hkv, int Dh, float scale)
{
    CUDA_DYN_SMEM(float, s);
    int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x, nt = blockDim.x;
    /* step (a decode graph): one node at slot *step after a prefix of *step slots, read at
     * replay; its keys are slots 0..*step in order, as the ancestor list [*step] gives */
    if (step)
        np = *step;
    int a0 = step ? 0 : anc_off[t], nk = np + (step ? 1 : anc_off[t + 1] - a0);
    const int *an = step ? step : anc + a0;
    int kvh = h / (H / Hkv);
    const float *qh = q + ((size_t)t * H + h) * Dh;
    const float *kb = kc + (size_t)kvh * ld_head, *vb = vc + (size_t)kvh * ld_head;
    float *red = s + nk; /* 32 floats of scratch after the scores */
    float mx = -INFINITY;
    for (int i = tid; i < nk; i += nt) {
        int slot = i < np ? i : an[i - np];
        float v = __fmul_rn(kc_dot16(qh, kb + (size_t)slot * ld_slot, Dh), scale);
        s[i] = v;
        mx = v > mx ? v : mx;
    }
    for (int o = 16; o > 0; o /= 2) {
        float u = __shfl_xor_sync(KC_FULL, mx, o);
        mx = u > mx ? u : mx;
    }
    if (tid % 32 == 0)
        red[tid / 32] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int i = 0; i < nt / 32; i++)
        mx = red[i] > mx ? red[i] : mx;
    for (int i = tid; i < nk; i += nt)
        s[i] = kc_exp(__fsub_rn(s[i], mx));
    __syncthreads();
    float o = 0.0f;
    if (tid < Dh) {
        for (int i = 0; i < nk; i++) {
            int slot = i < np ? i : an[i - np];
            o = __fadd_rn(o, __fmul_rn(s[i], vb[(size_t)slot * ld_slot + tid]));
        }
    } else if (tid >= nt - 32) { /* the last warp: LANE16 over the keys, then R16 */
        int j = tid - (nt - 32);
        float sum = 0.0f;
        if (j < 16)
            for (int i = j; i < nk; i += 16)
                sum = __fadd_rn(sum, s[i]);
        sum = kc_r16_lanes(sum);
        if (j == 0)
            red[0] = nk > 0 ? __fdiv_rn(1.0f, sum) : 0.0f;
    }
    __syncthreads();
    if (tid < Dh)
        out[((size_t)t * H + h) * Dh + tid] = __fmul_rn(o, red[0]);
}

int kcuda_attention_max_keys(void)
{
    return ATT_SMEM_MAX / 4 - 32;
}

cudaError_t kcuda_attention(float *out, const float *q, const float *kc, const float *vc,
                            size_t ld_slot, size_t ld_head, int n_prefix, const int *anc,
                            const int *anc_off, int T, int H, int Hkv, int Dh, float scale,
                            int max_keys, cudaStream_t st)
{
    if (T <= 0 || H <= 0 || Hkv <= 0 || H % Hkv || Dh <= 0 || Dh > 992 || max_keys < 0 ||
        max_keys > kcuda_attention_max_keys())
        return cudaErrorInvalidValue;
    size_t smem = ((size_t)max_keys + 32) * sizeof(float);
    static int opted_in; /* the opt-in is per kernel and process; idempotent */
    if (smem > KC_SMEM_MAX && !opted_in) {
        cudaFuncSetAttribute(k_attention, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             ATT_SMEM_MAX + 128);
        opted_in = 1;
    }
    int nt = (Dh + 31) / 32 * 32 + 32; /* Dh lanes for the weighted sum + one warp for the sum */
    nt = nt < 128 ? 128 : nt;
    KLAUNCH(k_attention, dim3((unsigned)H, (unsigned)T), nt, smem, st, out, q, kc, vc, ld_slot,
            ld_head, n_prefix, anc, anc_off, (const int *)nullptr, H, Hkv, Dh, scale);
    return cudaGetLastError();
}

static cudaError_t attention_launch_step(float *out, const float *q, const float *kc,
                                         const float *vc, size_t ld_slot, size_t ld_head,
                                         const int *step, int H, int Hkv, int Dh, float scale,
                                         int max_keys, cudaStream_t st)
{
    size_t smem = ((size_t)max_keys + 32) * sizeof(float);
    int nt = (Dh + 31) / 32 * 32 + 32;
    nt = nt < 128 ? 128 : nt;
    KLAUNCH(k_attention, dim3((unsigned)H, 1u), nt, smem, st, out, q, kc, vc, ld_slot, ld_head, 0,
            (const int *)nullptr, (const int *)nullptr, step, H, Hkv, Dh, scale);
    return cudaGetLastError();
}

cudaError_t kcuda_attention_step(float *out, const float *q, const float *kc, const float *vc,
                                 size_t ld_slot, size_t ld_head, const int *step, int H, int Hkv,
                                 int Dh, float scale, int max_keys, cudaStream_t st)
{
    if (H <= 0 || Hkv <= 0 || H % Hkv || Dh <= 0 || Dh > 992 || max_keys < 1 ||
        max_keys > kcuda_attention_max_keys())
        return cudaErrorInvalidValue;
    static int opted_in;
    if (((size_t)max_keys + 32) * sizeof(float) > KC_SMEM_MAX && !opted_in) {
        cudaFuncSetAttribute(k_attention, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             ATT_SMEM_MAX + 128);
        opted_in = 1;
    }
    return attention_launch_step(out, q, kc, vc, ld_slot, ld_head, step, H, Hkv, Dh, scale,
                                 max_keys, st);
}

cudaError_t kcuda_rope_step(float *x, const int *step, const float *tab, int H, int Dh, int n_rot,
                            int neox, cudaStream_t st)
{
    if (n_rot > Dh)
        n_rot = Dh;
    int half = (n_rot & ~1) / 2;
    if (H <= 0 || half <= 0)
        return H <= 0 ? cudaErrorInvalidValue : cudaSuccess;
    long n = (long)H * half;
    KLAUNCH(k_rope, kc_blocks(n, 256), 256, 0, st, x, (const int *)nullptr, step, tab, 1, H, Dh,
            half, neox);
    return cudaGetLastError();
}

/* ---- KV rows: k[T][Hkv][Dh] to slots slot0.. (or *step..) of a head-major layer ---- */

__global__ void __launch_bounds__(256)
    k_kv_put(float *kl, float *vl, const float *k, const float *v, int slot0, const int *step,
             int T, int Hkv, int Dh, size_t head_stride)
{
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x, n = (long)T * Hkv * Dh;
    if (i >= n)
        return;
    int d = (int)(i % Dh), h = (int)(i / Dh % Hkv), t = (int)(i / ((long)Dh * Hkv));
    size_t o = (size_t)h * head_stride + (size_t)((step ? *step : slot0) + t) * Dh + d;
    kl[o] = k[i];
    vl[o] = v[i];
}

cudaError_t kcuda_kv_put(float *kl, float *vl, const float *k, const float *v, int slot0,
                         const int *step, int T, int Hkv, int Dh, size_t head_stride,
                         cudaStream_t st)
{
    if (T <= 0 || Hkv <= 0 || Dh <= 0)
        return cudaErrorInvalidValue;
    long n = (long)T * Hkv * Dh;
    KLAUNCH(k_kv_put, kc_blocks(n, 256), 256, 0, st, kl, vl, k, v, slot0, step, T, Hkv, Dh,
            head_stride);
    return cudaGetLastError();
}

/* ---- elementwise ---- */

__global__ void __launch_bounds__(256) k_silu_mul(float *g, const float *u, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = g[i];
        float e = kc_exp(__fsub_rn(0.0f, v));
        g[i] = __fmul_rn(__fdiv_rn(v, __fadd_rn(1.0f, e)), u[i]);
    }
}

__global__ void __launch_bounds__(256) k_add(float *x, const float *y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] = __fadd_rn(x[i], y[i]);
}

__global__ void __launch_bounds__(256) k_add_bias(float *o, const float *b, int T, int N)
{
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long)T * N)
        o[i] = __fadd_rn(o[i], b[i % N]);
}

__global__ void __launch_bounds__(256) k_exp(float *y, const float *x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = kc_exp(x[i]);
}

cudaError_t kcuda_silu_mul(float *gate, const float *up, int n, cudaStream_t st)
{
    if (n <= 0)
        return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    KLAUNCH(k_silu_mul, kc_blocks(n, 256), 256, 0, st, gate, up, n);
    return cudaGetLastError();
}

cudaError_t kcuda_add(float *x, const float *y, int n, cudaStream_t st)
{
    if (n <= 0)
        return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    KLAUNCH(k_add, kc_blocks(n, 256), 256, 0, st, x, y, n);
    return cudaGetLastError();
}

cudaError_t kcuda_add_bias(float *out, const float *bias, int T, int N, cudaStream_t st)
{
    if (T <= 0 || N <= 0)
        return cudaErrorInvalidValue;
    KLAUNCH(k_add_bias, kc_blocks((long)T * N, 256), 256, 0, st, out, bias, T, N);
    return cudaGetLastError();
}

cudaError_t kcuda_exp(float *y, const float *x, int n, cudaStream_t st)
{
    if (n <= 0)
        return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    KLAUNCH(k_exp, kc_blocks(n, 256), 256, 0, st, y, x, n);
    return cudaGetLastError();
}

/* ---- argmax: a block per row; (value, index) pairs combined by sample_argmax's rule ---- */

static __device__ __forceinline__ void kc_best(float *v, int *i, float v2, int i2)
{
    int take;
    if (*v != *v)
        take = v2 == v2 || i2 < *i;
    else if (v2 != v2)
        take = 0;
    else
        take = v2 > *v || (v2 == *v && i2 < *i);
    if (take) {
        *v = v2;
        *i = i2;
    }
}

__global__ void __launch_bounds__(1024) k_argmax(int *idx, const float *logits, int V, size_t ld)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *l = logits + (size_t)blockIdx.x * ld;
    int tid = threadIdx.x;
    float bv = NAN;
    int bi = 0x7fffffff;
    for (int i = tid; i < V; i += blockDim.x)
        kc_best(&bv, &bi, l[i], i);
    for (int o = 16; o > 0; o /= 2) {
        float v2 = __shfl_xor_sync(KC_FULL, bv, o);
        int i2 = __shfl_xor_sync(KC_FULL, bi, o);
        kc_best(&bv, &bi, v2, i2);
    }
    if (tid % 32 == 0) {
        sv[tid / 32] = bv;
        si[tid / 32] = bi;
    }
    __syncthreads();
    if (tid == 0) {
        for (int w = 1; w < (int)blockDim.x / 32; w++)
            kc_best(&bv, &bi, sv[w], si[w]);
        idx[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
    }
}

cudaError_t kcuda_argmax(int *idx, const float *logits, int rows, int V, size_t ld, cudaStream_t st)
{
    if (rows <= 0 || V <= 0)
        return cudaErrorInvalidValue;
    KLAUNCH(k_argmax, rows, 1024, 0, st, idx, logits, V, ld);
    return cudaGetLastError();
}
