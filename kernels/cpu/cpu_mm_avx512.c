/* cpu_mm_avx512: AVX-512 (F/BW/VL/DQ + VNNI) matmul kernels for every type with f32
 * activations, for Q4_K / Q6_K with 8-bit activations, and the attention dot products. (Q4_0,
 * Q4_1 and Q8_0 with 8-bit activations, the default model's types, are in cpu_r16_avx512.c.)
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

/* Few tokens: 4 rows at a time, so that 4 (or 8) independent FMA chains hide the latency of
 * each lane's chain (the order per output element is unchanged). */
#define FCORE4R(TT)                                                                                \
    static void fcore4r_##TT(float *out, int ldo, const float *x, size_t xs,                       \
                             const float *const *wr, int n, int nr, int K)                         \
    {                                                                                              \
        __m512 a[TT][4];                                                                           \
        _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++)                                       \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) a[t][r] = _mm512_setzero_ps();     \
        for (int i = 0; i < K; i += 16) {                                                          \
            __m512 xv[TT];                                                                         \
            _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++) xv[t] =                           \
                _mm512_loadu_ps(x + t * xs + i);                                                   \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)                                    \
            {                                                                                      \
                __m512 wv = _mm512_loadu_ps(wr[r] + i);                                            \
                _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++) a[t][r] =                     \
                    _mm512_fmadd_ps(xv[t], wv, a[t][r]);                                           \
            }                                                                                      \
        }                                                                                          \
        for (int t = 0; t < TT; t++)                                                               \
            for (int r = 0; r < nr; r++)                                                           \
                out[(size_t)t * ldo + n + r] = _mm512_reduce_add_ps(a[t][r]);                      \
    }
FCORE4R(1)
FCORE4R(2)

static void rows_f(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                   size_t ws, int n0, int n1, int K, void *scratch, sd_dtype t)
{
    const float *x = (const float *)act;
    size_t xs = as / 4;
    if (T <= 2) {
        for (int n = n0; n < n1; n += 4) {
            int nr = n1 - n < 4 ? n1 - n : 4;
            const float *wr[4];
            for (int r = 0; r < 4; r++) {
                int row = n + (r < nr ? r : nr - 1);
                if (t == SD_DTYPE_F32) {
                    wr[r] = (const float *)(w + (size_t)row * ws);
                } else {
                    float *d = (float *)scratch + (size_t)r * K;
                    dequant_row(d, w + (size_t)row * ws, t, K);
                    wr[r] = d;
                }
            }
            (T == 1 ? fcore4r_1 : fcore4r_2)(out, ldo, x, xs, wr, n, nr, K);
        }
        return;
    }
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

/* ---- Q4_K / Q6_K, 8-bit activations: 16 rows per vector ----
 * 16 rows decoded into scratch (kcpu_kq16_decode: for each block, 16 rows x 32 unsigned bytes,
 * so vector k holds rows 2k and 2k+1). Per block and token, VNNI gives each row's integer sum
 * in 8 lanes (Q4_K: dpbusd; Q6_K: maddubs, then dpwssd with the int16 scale words), a
 * transposing pairwise sum leaves row r in lane r (exact integers), and the lanes run the
 * canonical chain acc = fma(S, dw * dx, acc) (+ fma(mn, ds, acc) for Q4_K); Q6_K corrects
 * S -= 32 * (sc0 * s16_0 + sc1 * s16_1) in integers (q6 stored unsigned). Bitwise the portable
 * level (docs/numerics.md). */

/* lanes: [a0+a1, a2+a3, ..., a14+a15, b0+b1, ..., b14+b15] */
INL __m512i pairsum(__m512i a, __m512i b)
{
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    return _mm512_add_epi32(_mm512_permutex2var_epi32(a, ie, b),
                            _mm512_permutex2var_epi32(a, io, b));
}

typedef struct {
    const int8_t *q[4];
    const float *d[4], *ds[4];
    const int16_t *s16[4];
} k16_tok;

#define K16CORE(TT, Q6)                                                                            \
    static void k16core_##Q6##_##TT(float *out, size_t ldo, __mmask16 sm, const k16_tok *tk,       \
                                    const uint8_t *dec, int nb)                                    \
    {                                                                                              \
        const uint8_t *W = dec, *A = W + (size_t)nb * 512;                                         \
        const float *dwT = (const float *)(A + (Q6 ? (size_t)nb * 512 : 0));                       \
        const float *mnT = dwT + 16 * (size_t)nb;                                                  \
        const int32_t *scT = (const int32_t *)(mnT + 16 * (size_t)nb);                             \
        __m512 acc[TT];                                                                            \
        _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++) acc[t] = _mm512_setzero_ps();         \
        for (int b = 0; b < nb; b++) {                                                             \
            const uint8_t *wb = W + (size_t)b * 512, *ab = A + (size_t)b * 512;                    \
            __m512 dwv = _mm512_loadu_ps(dwT + 16 * b);                                            \
            _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++)                                   \
            {                                                                                      \
                __m512i x = _mm512_broadcast_i64x4(                                                \
                    _mm256_loadu_si256((const __m256i *)(tk->q[t] + 32 * b)));                     \
                __m512i v[8];                                                                      \
                _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)                                \
                {                                                                                  \
                    __m512i w = _mm512_loadu_si512(wb + 64 * k);                                   \
                    if (Q6)                                                                        \
                        v[k] = _mm512_dpwssd_epi32(_mm512_setzero_si512(),                         \
                                                   _mm512_maddubs_epi16(w, x),                     \
                                                   _mm512_loadu_si512(ab + 64 * k));               \
                    else                                                                           \
                        v[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);                  \
                }                                                                                  \
                __m512i S = pairsum(pairsum(pairsum(v[0], v[1]), pairsum(v[2], v[3])),             \
                                    pairsum(pairsum(v[4], v[5]), pairsum(v[6], v[7])));            \
                if (Q6) {                                                                          \
                    int32_t sp;                                                                    \
                    memcpy(&sp, tk->s16[t] + 2 * b, 4);                                            \
                    __m512i c = _mm512_madd_epi16(_mm512_loadu_si512(scT + 16 * b),                \
                                                  _mm512_set1_epi32(sp));                          \
                    S = _mm512_sub_epi32(S, _mm512_slli_epi32(c, 5));                              \
                }                                                                                  \
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S),                                    \
                                         _mm512_mul_ps(dwv, _mm512_set1_ps(tk->d[t][b])), acc[t]); \
                if (!Q6)                                                                           \
                    acc[t] = _mm512_fmadd_ps(_mm512_loadu_ps(mnT + 16 * b),                        \
                                             _mm512_set1_ps(tk->ds[t][b]), acc[t]);                \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++)                                       \
            _mm512_mask_storeu_ps(out + t * ldo, sm, acc[t]);                                      \
    }
K16CORE(1, 0)
K16CORE(2, 0)
K16CORE(3, 0)
K16CORE(4, 0)
K16CORE(1, 1)
K16CORE(2, 1)
K16CORE(3, 1)
K16CORE(4, 1)

typedef void (*k16core_fn)(float *, size_t, __mmask16, const k16_tok *, const uint8_t *, int);
static const k16core_fn k16cores[2][5] = {
    {NULL, k16core_0_1, k16core_0_2, k16core_0_3, k16core_0_4},
    {NULL, k16core_1_1, k16core_1_2, k16core_1_3, k16core_1_4},
};

static void rows_k16(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                     size_t ws, int n0, int n1, int K, void *scratch, int q6)
{
    kcpu_q8_layout L = kcpu_q8_layout_for(K);
    for (int n = n0; n < n1; n += 16) {
        int nr = n1 - n < 16 ? n1 - n : 16;
        kcpu_kq16_decode(scratch, w + (size_t)n * ws, ws, nr, K, q6);
        __mmask16 sm = (__mmask16)((1u << nr) - 1);
        for (int t0 = 0; t0 < T; t0 += 4) {
            int tt = T - t0 < 4 ? T - t0 : 4;
            k16_tok tk;
            for (int t = 0; t < tt; t++) {
                const uint8_t *r = act + (size_t)(t0 + t) * as;
                tk.q[t] = (const int8_t *)(r + L.q);
                tk.d[t] = (const float *)(r + L.d);
                tk.ds[t] = (const float *)(r + L.ds);
                tk.s16[t] = (const int16_t *)(r + L.s16);
            }
            k16cores[q6][tt](out + (size_t)t0 * ldo + n, (size_t)ldo, sm, &tk, scratch, K / 32);
        }
    }
}

static void rows_k16_q4_k(float *out, int ldo, const uint8_t *act, size_t as, int T,
                          const uint8_t *w, size_t ws, int n0, int n1, int K, void *scratch)
{
    rows_k16(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, 0);
}

static void rows_k16_q6_k(float *out, int ldo, const uint8_t *act, size_t as, int T,
                          const uint8_t *w, size_t ws, int n0, int n1, int K, void *scratch)
{
    rows_k16(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, 1);
}

void kcpu_mm_avx512(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2])
{
    /* 8-bit activations: Q4_0, Q4_1 and Q8_0 in cpu_r16_avx512.c; the K-quants below */
    static const struct {
        sd_dtype t;
        kcpu_rows_fn f32;
    } k[] = {
        {SD_DTYPE_F32, rows_f_f32},   {SD_DTYPE_F16, rows_f_f16},   {SD_DTYPE_BF16, rows_f_bf16},
        {SD_DTYPE_Q8_0, rows_f_q8_0}, {SD_DTYPE_Q4_0, rows_f_q4_0}, {SD_DTYPE_Q4_1, rows_f_q4_1},
        {SD_DTYPE_Q4_K, rows_f_q4_k}, {SD_DTYPE_Q6_K, rows_f_q6_k},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        kcpu_mm_kernel f = {.rows = k[i].f32, .scratch_per_k = 16, .row_tile = 4};
        tab[k[i].t][0] = f;
        if (k[i].t == SD_DTYPE_F32 || k[i].t == SD_DTYPE_F16 || k[i].t == SD_DTYPE_BF16)
            tab[k[i].t][1] = f; /* float weights: f32 activations in both modes */
    }
    /* scratch: one decoded group of 16 rows (kcpu_kq16_bytes: <= 41 bytes per element of K) */
    tab[SD_DTYPE_Q4_K][1] = (kcpu_mm_kernel){.rows = rows_k16_q4_k,
                                             .quantized_act = 1,
                                             .prep = kcpu_q8_prep_avx2,
                                             .prep_stride = kcpu_q8_stride,
                                             .scratch_per_k = 42,
                                             .row_tile = 16};
    tab[SD_DTYPE_Q6_K][1] = (kcpu_mm_kernel){.rows = rows_k16_q6_k,
                                             .quantized_act = 1,
                                             .prep = kcpu_q8_prep_avx2,
                                             .prep_stride = kcpu_q8_stride,
                                             .scratch_per_k = 42,
                                             .row_tile = 16};
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
