/* cpu_impl: internals shared by the CPU backend's files (kernels/cpu): the thread pool, the
 * 8-bit activation layout, and the per-ISA matmul kernel tables.
 *
 * Dimension letters as in kernels.h: T positions, N output rows, K reduction length.
 *
 * Batch invariance: a matmul kernel computes out[t][n] from activation row t and weight row n
 * alone, with one fixed operation order per (ISA level, dtype, activation mode). Tiles over
 * T or N (several tokens sharing a weight block in registers) keep one accumulator per
 * (t, n) and apply exactly the single-token sequence of operations to it, so neither T, the
 * tile shape, the row split between threads nor the thread count changes any bit. */
#ifndef SD_KCPU_IMPL_H
#define SD_KCPU_IMPL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../dtype.h"

/* ---- thread pool ---- */

typedef struct kcpu_pool kcpu_pool;
/* task in [0, n_tasks), tid in [0, kcpu_pool_threads()) (0 is the calling thread). */
typedef void (*kcpu_task_fn)(void *arg, int task, int tid);

/* n_threads >= 1 (the caller counts as one; n_threads - 1 workers are started). */
int kcpu_pool_create(kcpu_pool **out, int n_threads);
void kcpu_pool_free(kcpu_pool *p);
int kcpu_pool_threads(const kcpu_pool *p);
/* Runs fn for every task, spread over the pool; returns when all are done. Tasks are claimed
 * dynamically, so which thread runs which task varies from call to call: task functions must
 * not let the result depend on tid (tid only selects scratch memory). */
void kcpu_pool_run(kcpu_pool *p, kcpu_task_fn fn, void *arg, int n_tasks);

/* ---- canonical numerics (docs/numerics.md) ----
 * The reduction helpers every level reproduces: kcpu_r16 is the R16 tree (the pairings of
 * _mm512_reduce_add_ps), kcpu_exp1 the one EXP polynomial, scalar. Static inline so that the
 * SIMD files, built with -mfma, inline fmaf as one instruction. */
static inline float kcpu_r16(const float *a)
{
    float b[8], c[4];
    for (int i = 0; i < 8; i++)
        b[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; i++)
        c[i] = b[i] + b[i + 4];
    return (c[0] + c[2]) + (c[1] + c[3]);
}

/* The portable level's hot loops call fmaf once per block or element. Built for a baseline CPU,
 * that is a library call (~5 ns); these functions are therefore also compiled for FMA hardware
 * and picked at load time (ifunc). Both clones compute the same correctly rounded fma, so the
 * choice changes speed only, never a bit. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) &&       \
    !defined(__SANITIZE_ADDRESS__)
#define KCPU_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define KCPU_FMA_CLONES
#endif

/* 2^e as a float, exact, for e in [-126, 127] */
static inline float kcpu_pow2i(int e)
{
    uint32_t u = (uint32_t)(e + 127) << 23;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- 8-bit activations (the default "quantized activation" mode) ----
 *
 * Each activation row of K floats is quantized once per matmul call, in blocks of 32:
 *   d = max|x| / 127 (0 for an all-zero block), q = round-to-nearest-even(x * (1/d)) in
 *   [-127, 127]. Per row we keep q[K], d[K/32], ds[K/32] = d * sum(q of the block), si[K/32] =
 *   sum(q of the block) and s16[K/16] = sums of q over 16-element groups (Q6_K needs per-16 sums).
 * Per-32 scales for every weight type (also the K-quants, whose super-blocks are 256 wide) keep
 * the activation error at most d/2 = max|x_block|/254 per element, independent of the weight
 * type. The quantization is the same bitwise on every ISA level (exact max, IEEE division and
 * multiplication, round-to-nearest-even) and so is everything after it (docs/numerics.md). */
typedef struct {
    size_t q, d, ds, s16, ds16, si,
        stride; /* byte offsets in a row record, and its size (64-aligned) */
} kcpu_q8_layout;

/* The record of every level: q[K] in natural order, d[K/32], ds[K/32], s16[K/16] (int16),
 * ds16[K/16] = d * s16 (float), si[K/32] (int32). */
kcpu_q8_layout kcpu_q8_layout_for(int K);
void kcpu_q8_quantize_row(uint8_t *rec, const float *x, int K, const kcpu_q8_layout *L);
size_t kcpu_q8_stride(int K);
void kcpu_q8_prep(uint8_t *rec, const float *x, int K);

/* ---- matmul kernels ----
 * rows(): out[t * ldo + n] for t in [0, T), n in [n0, n1); ldo is N, so weight rows
 * [0, ldo) exist (a kernel may prefetch past n1). act is the prepared activation:
 * T records of act_stride bytes (or, for the f32 path, the raw x rows, act_stride = 4*K).
 * w points at weight row 0, w_stride bytes per row. scratch: at least scratch_bytes(K) bytes
 * private to the calling thread. */
typedef void (*kcpu_rows_fn)(float *out, int ldo, const uint8_t *act, size_t act_stride, int T,
                             const uint8_t *w, size_t w_stride, int n0, int n1, int K,
                             void *scratch);

typedef void (*kcpu_prep_fn)(uint8_t *rec, const float *x, int K);

typedef struct {
    kcpu_rows_fn rows; /* NULL: not provided at this level (fall back to a lower one) */
    int quantized_act; /* act is a record made by prep, not raw floats */
    kcpu_prep_fn prep; /* quantizes one activation row into a record (quantized_act only) */
    size_t (*prep_stride)(int K); /* bytes of one record, a multiple of 64 */
    size_t scratch_per_k;         /* bytes of scratch per element of K */
    int row_tile;                 /* preferred multiple for the rows given to one task */
    /* Optional packed layout (the backend's own copy of the weights, made once at load):
     * pack converts n_rows file rows into packed_bytes(t, n_rows, K) bytes; rows_packed reads
     * them (w = the packed copy, w_stride = the file's row bytes), bitwise equal to rows. */
    void (*pack)(uint8_t *dst, const uint8_t *src, int n_rows, int K);
    kcpu_rows_fn rows_packed;
    size_t (*packed_bytes)(sd_dtype t, int N, int K); /* size of the packed copy */
} kcpu_mm_kernel;

enum { KCPU_LEVEL_PORTABLE = 0, KCPU_LEVEL_AVX2 = 1, KCPU_LEVEL_AVX512 = 2, KCPU_LEVEL_N = 3 };
enum { KCPU_DTYPE_SLOTS = 31 }; /* indexed by sd_dtype value */

/* Fill tab[dtype][qact] (qact 0: f32 activations, 1: 8-bit activations) for one level. A level
 * leaves unsupported entries untouched so that they keep the lower level's kernel. */
void kcpu_mm_portable(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2]);
void kcpu_mm_avx2(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2]);
void kcpu_mm_avx512(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2]);
/* Q4_0 / Q4_1 / Q8_0 with 8-bit activations over 16-row interleaved weights (cpu_r16_avx512.c) */
void kcpu_mm_avx512_r16(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2]);

/* The r16 layout (cpu_r16_pack.c; documented in cpu_r16_avx512.c), read by AVX-512 as 16 lanes
 * and by AVX2 as two 8-lane halves. pack_group packs rows [0, n) (n <= 16) of src as one group
 * (a short group padded with zero rows); pack_* convert n_rows file rows. */
typedef enum { KCPU_R16_Q4_0, KCPU_R16_Q4_1, KCPU_R16_Q8_0 } kcpu_r16_kind;
void kcpu_r16_pack_group(uint8_t *dst, const uint8_t *src, int n, int K, kcpu_r16_kind k);
void kcpu_r16_pack_q4_0(uint8_t *dst, const uint8_t *src, int n_rows, int K);
void kcpu_r16_pack_q4_1(uint8_t *dst, const uint8_t *src, int n_rows, int K);
void kcpu_r16_pack_q8_0(uint8_t *dst, const uint8_t *src, int n_rows, int K);
size_t kcpu_r16_packed_bytes(sd_dtype t, int N, int K);

/* AVX2 pieces the AVX-512 level reuses (cpu_mm_avx2.c): the activation record (bitwise
 * kcpu_q8_prep), and Q4_K / Q6_K rows decoded 16 at a time (layout documented there;
 * kcpu_kq16_bytes: the scratch one group needs). */
void kcpu_q8_prep_avx2(uint8_t *rec, const float *x, int K);
size_t kcpu_kq16_bytes(int K, int q6);
void kcpu_kq16_decode(uint8_t *dst, const uint8_t *w, size_t ws, int nr, int K, int q6);

/* Attention inner loops per level. dot: q.k over n floats with the level's fixed order;
 * dot4: four such dots (k0..k3) at once, each bitwise equal to dot;
 * softmax: s[i] = exp(s[i]*scale - m) for i < n, m the largest s[i]*scale; returns the sum of
 *   the new s[i] (an order fixed by n alone);
 * wsum: o[d] = (sum over keys i in order of p[i] * v_i[d]) * inv for d < Dh, each step
 *   o + p*v with the product rounded first (bitwise the same on every level), where
 *   v_i = v + slot(i) * row and slot(i) = i < np ? i : anc[i - np]. */
typedef struct {
    float (*dot)(const float *q, const float *k, int n);
    void (*dot4)(float *s, const float *q, const float *k0, const float *k1, const float *k2,
                 const float *k3, int n);
    float (*softmax)(float *s, int n, float scale);
    void (*wsum)(float *o, const float *p, const float *v, size_t row, int np, const int *anc,
                 int n, int Dh, float inv);
    /* Optional (NULL: the caller uses dot4 / wsum), each result bitwise what dot / wsum give:
     * dot16: s[u] = dot(q, k[u]) for nk <= 16 keys (one transposed reduction for all);
     * wsum_m: wsum for m <= 4 queries sharing their keys (the query heads of one KV head),
     *   o[j] from p + j * ps and inv[j], each value row read once for all of them. */
    void (*dot16)(float *s, const float *q, const float *const *k, int nk, int n);
    void (*wsum_m)(float *const *o, const float *p, size_t ps, int m, const float *v, size_t row,
                   int np, const int *anc, int n, int Dh, const float *inv);
} kcpu_attn_ops;

/* Elementwise ops per level. Each output element is computed by one fixed formula whatever its
 * index, n, or which thread or vector lane computes it (SIMD tails are masked vector ops).
 * silu_mul: g[i] = g[i] / (1 + exp(-g[i])) * u[i]; add: x[i] += y[i];
 * rms_row: o = x / sqrt(mean(x^2) + eps) * w over one row (the sum order fixed by D alone);
 * exp: y[i] = exp(x[i]) (the level's exp, exposed for tests);
 * rope: rotates pairs k0 .. k0+n-1 of one head x by cs[i], sn[i] (pair k0+i): neox = 0 pairs
 *   (2k, 2k+1), neox = 1 pairs (k, k+half); a' = a*c - b*s, b' = a*s + b*c, each product
 *   rounded (bitwise the same on every level). */
typedef struct {
    void (*silu_mul)(float *g, const float *u, int n);
    void (*add)(float *x, const float *y, int n);
    void (*rms_row)(float *o, const float *x, const float *w, int D, float eps);
    void (*exp)(float *y, const float *x, int n);
    void (*rope)(float *x, const float *cs, const float *sn, int k0, int n, int half, int neox);
} kcpu_ew_ops;

void kcpu_attn_avx2(kcpu_attn_ops *ops);
void kcpu_attn_avx512(kcpu_attn_ops *ops);
/* softmax, wsum and the elementwise ops of the SIMD levels (cpu_ops_*.c) */
void kcpu_ops_avx2(kcpu_attn_ops *a, kcpu_ew_ops *e);
void kcpu_ops_avx512(kcpu_attn_ops *a, kcpu_ew_ops *e);
/* The tables of a level (a lower level's entries where it has none). Returns 0, or -1 when the
 * CPU lacks the level's instructions. */
int kcpu_ops_for_level(int level, kcpu_attn_ops *a, kcpu_ew_ops *e);

/* The SIMD exp (cpu_ops_*.c): x clamped to [LO, HI] (NaN kept), n = round(x * LOG2E),
 * r = x - n*LN2_HI - n*LN2_LO (LN2_HI has 9 significant bits, so n*LN2_HI is exact),
 * exp(r) = 1 + (r + r^2 * (C0 + r*(C1 + r*(C2 + r*(C3 + r*C4))))) (C fitted for relative error
 * on |r| <= ln2/2, 3e-9), times 2^n. */
#define KCPU_EXP_HI 88.8f
#define KCPU_EXP_LO -105.0f
#define KCPU_EXP_LOG2E 1.44269504088896341f
#define KCPU_EXP_LN2_HI 0.693359375f
#define KCPU_EXP_LN2_LO -2.12194440e-4f
#define KCPU_EXP_C0 0.49999994f
#define KCPU_EXP_C1 0.16666521f
#define KCPU_EXP_C2 0.04166839f
#define KCPU_EXP_C3 0.00836871f
#define KCPU_EXP_C4 0.0013814613f

static inline float kcpu_exp1(float x)
{
    x = KCPU_EXP_HI < x ? KCPU_EXP_HI : x; /* NaN: stays x, as min_ps(HI, x) */
    x = KCPU_EXP_LO > x ? KCPU_EXP_LO : x;
    float n = nearbyintf(x * KCPU_EXP_LOG2E);
    float r = fmaf(-n, KCPU_EXP_LN2_HI, x);
    r = fmaf(-n, KCPU_EXP_LN2_LO, r);
    float q = KCPU_EXP_C4;
    q = fmaf(q, r, KCPU_EXP_C3);
    q = fmaf(q, r, KCPU_EXP_C2);
    q = fmaf(q, r, KCPU_EXP_C1);
    q = fmaf(q, r, KCPU_EXP_C0);
    float p = fmaf(q, r * r, r) + 1.0f;
    if (n != n)
        return p;                                             /* NaN in, NaN out */
    int ni = (int)n, n1 = ni >= 0 ? ni / 2 : -((1 - ni) / 2); /* floor(n / 2) = n >> 1 */
    return (p * kcpu_pow2i(n1)) * kcpu_pow2i(ni - n1);
}

/* f16 -> f32 through a table (filled once by kcpu_f16_init; exact). */
extern float kcpu_f16_tab[65536];
void kcpu_f16_init(void);
static inline float kcpu_f16(const uint8_t *p)
{
    return kcpu_f16_tab[(uint16_t)(p[0] | p[1] << 8)];
}

#endif
