/* cpu_mm_avx512: AVX-512 (F/BW/VL/DQ) matmul kernels for every type with f32 activations, and
 * the attention dot products. (Q4_0, Q4_1 and Q8_0 with 8-bit activations, the default model's
 * types, are in cpu_r16_avx512.c; the K-quants with 8-bit activations use the AVX2 kernels.)
 * Compiled with the AVX-512 flags; only entered after run-time dispatch found those features.
 *
 * f32 activation path: the row is dequantized into scratch (the same floats as
 * dtype_dequant_row) and dotted with one 16-lane FMA accumulator per token (lane i % 16), then
 * the R16 tree (_mm512_reduce_add_ps): the canonical sequence of docs/numerics.md. */
#include <immintrin.h>
#include <string.h>

#include "cpu_impl.h"

#define INL static inline __attribute__((always_inline))

/* ---- f32 activations ---- */

static void dequant_row(float *y, const uint8_t *w, sd_dtype t, int K)
{
    switch (t) {
    case SD_DTYPE_F16:
        for (int i = 0; i < K; i += 16)
            _mm512_storeu_ps(y + i,
                             _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i))));
        break;
    case SD_DTYPE_BF16:
        for (int i = 0; i < K; i += 16)
            _mm512_storeu_ps(
                y + i,
                _mm512_castsi512_ps(_mm512_slli_epi32(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + 2 * i))), 16)));
        break;
    case SD_DTYPE_Q8_0:
        for (int b = 0; b < K / 32; b++, w += 34, y += 32) {
            __m512 d = _mm512_set1_ps(kcpu_f16(w));
            __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + 2)));
            __m512i q2 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + 18)));
            _mm512_storeu_ps(y, _mm512_mul_ps(d, _mm512_cvtepi32_ps(q)));
            _mm512_storeu_ps(y + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(q2)));
        }
        break;
    case SD_DTYPE_Q4_0:
    case SD_DTYPE_Q4_1: {
        int q41 = t == SD_DTYPE_Q4_1, bb = q41 ? 20 : 18;
        for (int b = 0; b < K / 32; b++, w += bb, y += 32) {
            __m512 d = _mm512_set1_ps(kcpu_f16(w));
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + 2 + 2 * q41)));
            __m512i lo = _mm512_and_si512(v, _mm512_set1_epi32(15));
            __m512i hi = _mm512_srli_epi32(v, 4);
            if (q41) {
                __m512 m = _mm512_set1_ps(kcpu_f16(w + 2));
                _mm512_storeu_ps(y, _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(lo)), m));
                _mm512_storeu_ps(y + 16,
                                 _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(hi)), m));
            } else {
                __m512i e8 = _mm512_set1_epi32(8);
                _mm512_storeu_ps(y, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, e8))));
                _mm512_storeu_ps(y + 16,
                                 _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, e8))));
            }
        }
        break;
    }
    default:
        dtype_dequant_row(y, w, t, (size_t)K);
    }
}

#define FCORE(TT)                                                                                  \
    static void fcore_##TT(float *out, int ldo, const float *x, size_t xs, const float *wr, int n, \
                           int K)                                                                  \
    {                                                                                              \
        __m512 a0[TT];                                                                             \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) a0[t] = _mm512_setzero_ps();         \
        for (int i = 0; i < K; i += 16) {                                                          \
            __m512 w0 = _mm512_loadu_ps(wr + i);                                                   \
            _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) a0[t] =                          \
                _mm512_fmadd_ps(_mm512_loadu_ps(x + t * xs + i), w0, a0[t]);                       \
        }                                                                                          \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) out[(size_t)t * ldo + n] =           \
            _mm512_reduce_add_ps(a0[t]);                                                           \
    }
FCORE(1)
FCORE(2)
FCORE(3)
FCORE(4)
FCORE(5)
FCORE(6)
FCORE(7)
FCORE(8)
typedef void (*fcore_fn)(float *, int, const float *, size_t, const float *, int, int);
static const fcore_fn fcores[9] = {NULL,    fcore_1, fcore_2, fcore_3, fcore_4,
                                   fcore_5, fcore_6, fcore_7, fcore_8};

static void rows_f(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                   size_t ws, int n0, int n1, int K, void *scratch, sd_dtype t)
{
    const float *x = (const float *)act;
    size_t xs = as / 4;
    for (int n = n0; n < n1; n++) {
        const float *wr;
        if (t == SD_DTYPE_F32) {
            wr = (const float *)(w + (size_t)n * ws);
        } else {
            dequant_row(scratch, w + (size_t)n * ws, t, K);
            wr = scratch;
        }
        for (int t0 = 0; t0 < T; t0 += 8) {
            int tt = T - t0 < 8 ? T - t0 : 8;
            fcores[tt](out + (size_t)t0 * ldo, ldo, x + (size_t)t0 * xs, xs, wr, n, K);
        }
    }
}

#define ROWS_F(name, t)                                                                            \
    static void name(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,  \
                     size_t ws, int n0, int n1, int K, void *scratch)                              \
    {                                                                                              \
        rows_f(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, t);                                \
    }
ROWS_F(rows_f_f32, SD_DTYPE_F32)
ROWS_F(rows_f_f16, SD_DTYPE_F16)
ROWS_F(rows_f_bf16, SD_DTYPE_BF16)
ROWS_F(rows_f_q8_0, SD_DTYPE_Q8_0)
ROWS_F(rows_f_q4_0, SD_DTYPE_Q4_0)
ROWS_F(rows_f_q4_1, SD_DTYPE_Q4_1)
ROWS_F(rows_f_q4_k, SD_DTYPE_Q4_K)
ROWS_F(rows_f_q6_k, SD_DTYPE_Q6_K)

void kcpu_mm_avx512(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2])
{
    /* 8-bit activations: Q4_0, Q4_1 and Q8_0 in cpu_r16_avx512.c, the K-quants keep AVX2's */
    static const struct {
        sd_dtype t;
        kcpu_rows_fn f32;
    } k[] = {
        {SD_DTYPE_F32, rows_f_f32},   {SD_DTYPE_F16, rows_f_f16},   {SD_DTYPE_BF16, rows_f_bf16},
        {SD_DTYPE_Q8_0, rows_f_q8_0}, {SD_DTYPE_Q4_0, rows_f_q4_0}, {SD_DTYPE_Q4_1, rows_f_q4_1},
        {SD_DTYPE_Q4_K, rows_f_q4_k}, {SD_DTYPE_Q6_K, rows_f_q6_k},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        kcpu_mm_kernel f = {.rows = k[i].f32, .scratch_per_k = 4, .row_tile = 4};
        tab[k[i].t][0] = f;
        if (k[i].t == SD_DTYPE_F32 || k[i].t == SD_DTYPE_F16 || k[i].t == SD_DTYPE_BF16)
            tab[k[i].t][1] = f; /* float weights: f32 activations in both modes */
    }
}

/* ---- attention inner loops ---- */

/* 16-lane FMA accumulator over i (masked tail), then the fixed reduce_add tree. */
static float a5_dot(const float *q, const float *k, int n)
{
    __m512 a = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16)
        a = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k + i), a);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), _mm512_maskz_loadu_ps(m, k + i), a);
    }
    return _mm512_reduce_add_ps(a);
}

static void a5_dot4(float *s, const float *q, const float *k0, const float *k1, const float *k2,
                    const float *k3, int n)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(q + i);
        a0 = _mm512_fmadd_ps(x, _mm512_loadu_ps(k0 + i), a0);
        a1 = _mm512_fmadd_ps(x, _mm512_loadu_ps(k1 + i), a1);
        a2 = _mm512_fmadd_ps(x, _mm512_loadu_ps(k2 + i), a2);
        a3 = _mm512_fmadd_ps(x, _mm512_loadu_ps(k3 + i), a3);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(m, q + i);
        a0 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, k0 + i), a0);
        a1 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, k1 + i), a1);
        a2 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, k2 + i), a2);
        a3 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, k3 + i), a3);
    }
    s[0] = _mm512_reduce_add_ps(a0);
    s[1] = _mm512_reduce_add_ps(a1);
    s[2] = _mm512_reduce_add_ps(a2);
    s[3] = _mm512_reduce_add_ps(a3);
}

/* Lane n of the result = _mm512_reduce_add_ps(v[n]), bitwise: the same pairings (lane i with
 * i+8, then i+4, then i+2, then i+1; float addition is commutative), done for 16 vectors at
 * once by a transposition (45 shuffles and adds instead of 16 x 7). */
INL __m512 reduce16(const __m512 *v)
{
    __m512 x[8], y[4], z[2];
    _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)
    {
        __m512 a = v[2 * k], b = v[2 * k + 1];
        x[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)));
    }
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)
    {
        __m512 a = x[2 * k], b = x[2 * k + 1];
        y[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
    }
    _Pragma("GCC unroll 2") for (int k = 0; k < 2; k++)
    {
        __m512 a = y[2 * k], b = y[2 * k + 1];
        z[k] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)),
                             _mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)));
    }
    __m512 r = _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)),
                             _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(idx, r);
}

/* s[u] = q . k[u] for u < nk <= 16, each bitwise a5_dot(q, k[u], n): the same accumulator and
 * FMAs per key, the same reduction tree (reduce16). A short group computes its first key in the
 * missing lanes and does not store them. */
static void a5_dot16(float *s, const float *q, const float *const *k, int nk, int n)
{
    const float *kk[16];
    for (int u = 0; u < 16; u++)
        kk[u] = k[u < nk ? u : 0];
    __m512 a[16];
    _Pragma("GCC unroll 16") for (int u = 0; u < 16; u++) a[u] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(q + i);
        _Pragma("GCC unroll 16") for (int u = 0; u < 16; u++) a[u] =
            _mm512_fmadd_ps(x, _mm512_loadu_ps(kk[u] + i), a[u]);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(m, q + i);
        _Pragma("GCC unroll 16") for (int u = 0; u < 16; u++) a[u] =
            _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, kk[u] + i), a[u]);
    }
    _mm512_mask_storeu_ps(s, (__mmask16)((1u << nk) - 1), reduce16(a));
}

void kcpu_attn_avx512(kcpu_attn_ops *ops)
{
    ops->dot = a5_dot;
    ops->dot4 = a5_dot4;
    ops->dot16 = a5_dot16;
}
