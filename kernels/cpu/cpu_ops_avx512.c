/* cpu_ops_avx512: AVX-512 small ops — the attention softmax and weighted sum, SiLU-gating,
 * add and the rmsnorm row (compiled with AVX-512 flags; entered only after run-time dispatch).
 *
 * Batch invariance: every element goes through the same vector sequence wherever it sits —
 * tails are masked vector operations, never a scalar loop with a different formula — so a
 * result depends on the element (and, for the reductions, on the row length) alone.
 *
 * exp: x is clamped to [-105, 88.8] (NaN passes through: the clamps keep their second operand
 * when one is NaN), n = round(x * log2(e)), r = x - n*ln2 in two exact-ish Cody-Waite steps
 * (|r| <= ln2/2), exp(r) = 1 + (r + r^2 * q(r)) with q a degree-4 polynomial fitted for
 * relative error (3e-9 on the interval), and 2^n applied by scalef, which rounds denormal
 * results once and gives inf above ln(FLT_MAX) and 0 below -103.97. Within 2 ulp of exp. */
#include <immintrin.h>
#include <math.h>

#include "cpu_impl.h"

#define INL static inline __attribute__((always_inline))

INL __m512 exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_set1_ps(KCPU_EXP_HI), x);
    x = _mm512_max_ps(_mm512_set1_ps(KCPU_EXP_LO), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(KCPU_EXP_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(KCPU_EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(KCPU_EXP_LN2_LO), r);
    __m512 q = _mm512_set1_ps(KCPU_EXP_C4);
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(KCPU_EXP_C3));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(KCPU_EXP_C2));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(KCPU_EXP_C1));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(KCPU_EXP_C0));
    __m512 p = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

INL __mmask16 tail_mask(int k)
{
    return (__mmask16)((1u << k) - 1);
}

/* ---- attention ---- */

/* Scale, max, exp, and the sum in 16 lanes (lane i % 16) reduced by the fixed reduce_add tree:
 * the order depends on n alone. */
static float a5_softmax(float *s, int n, float scale)
{
    __m512 vs = _mm512_set1_ps(scale), mx = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(s + i), vs);
        _mm512_storeu_ps(s + i, v);
        mx = _mm512_max_ps(mx, v);
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + i), vs);
        _mm512_mask_storeu_ps(s + i, m, v);
        mx = _mm512_mask_max_ps(mx, m, mx, v);
    }
    __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), acc = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + i), vm));
        _mm512_storeu_ps(s + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + i), vm));
        _mm512_mask_storeu_ps(s + i, m, e);
        acc = _mm512_mask_add_ps(acc, m, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

/* ---- elementwise ---- */

INL __m512 silu_mul16(__m512 g, __m512 u)
{
    __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

static void a5_silu_mul(float *g, const float *u, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(g + i, silu_mul16(_mm512_loadu_ps(g + i), _mm512_loadu_ps(u + i)));
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(
            g + i, m, silu_mul16(_mm512_maskz_loadu_ps(m, g + i), _mm512_maskz_loadu_ps(m, u + i)));
    }
}

static void a5_add(float *x, const float *y, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(
            x + i, m,
            _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* Sum of squares by FMA in 16 lanes (lane i % 16), fixed reduce_add tree; then (x*r)*w. */
static void a5_rms_row(float *o, const float *x, const float *w, int D, float eps)
{
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= D; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    if (i < D) {
        __m512 v = _mm512_maskz_loadu_ps(tail_mask(D - i), x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    float ss = _mm512_reduce_add_ps(acc);
    __m512 r = _mm512_set1_ps(1.0f / sqrtf(ss / (float)D + eps));
    for (i = 0; i + 16 <= D; i += 16)
        _mm512_storeu_ps(
            o + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), _mm512_loadu_ps(w + i)));
    if (i < D) {
        __mmask16 m = tail_mask(D - i);
        _mm512_mask_storeu_ps(o + i, m,
                              _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), r),
                                            _mm512_maskz_loadu_ps(m, w + i)));
    }
}

static void a5_exp(float *y, const float *x, int n)
{
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, exp16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, exp16(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* neox: two contiguous halves, a plain vector rotation. Interleaved: 8 pairs per vector,
 * cos/sin duplicated per pair, sin negated on the even lanes, the pair swapped:
 * even x0*c + x1*(-s) = x0*c - x1*s, odd x1*c + x0*s = x0*s + x1*c, bitwise as the scalar
 * formula (negation is exact, the sum commutes). */
static void a5_rope(float *x, const float *cs, const float *sn, int k0, int n, int half, int neox)
{
    int i = 0;
    if (neox) {
        float *xa = x + k0, *xb = x + k0 + half;
        for (; i < n; i += 16) {
            __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail_mask(n - i);
            __m512 a = _mm512_maskz_loadu_ps(m, xa + i), b = _mm512_maskz_loadu_ps(m, xb + i);
            __m512 c = _mm512_maskz_loadu_ps(m, cs + i), s = _mm512_maskz_loadu_ps(m, sn + i);
            _mm512_mask_storeu_ps(xa + i, m,
                                  _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s)));
            _mm512_mask_storeu_ps(xb + i, m,
                                  _mm512_add_ps(_mm512_mul_ps(a, s), _mm512_mul_ps(b, c)));
        }
        return;
    }
    const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512 neg = _mm512_castsi512_ps(_mm512_setr_epi32(
        (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0,
        (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0));
    float *xp = x + 2 * k0;
    for (; i < n; i += 8) {
        int k = n - i >= 8 ? 8 : n - i;
        __mmask16 m8 = tail_mask(k), m = (__mmask16)((1u << (2 * k)) - 1);
        __m512 c = _mm512_permutexvar_ps(dup, _mm512_maskz_loadu_ps(m8, cs + i));
        __m512 s = _mm512_permutexvar_ps(dup, _mm512_maskz_loadu_ps(m8, sn + i));
        s = _mm512_xor_ps(s, neg);
        __m512 v = _mm512_maskz_loadu_ps(m, xp + 2 * i);
        __m512 w = _mm512_permute_ps(v, 0xB1); /* swap within pairs */
        _mm512_mask_storeu_ps(xp + 2 * i, m,
                              _mm512_add_ps(_mm512_mul_ps(v, c), _mm512_mul_ps(w, s)));
    }
}

/* wsum for M queries over the same keys: 64 columns at a time in four registers per query
 * (masked past Dh), each value row loaded once for all of them; per (query, column) keys in
 * order, o = o + p*v with the product rounded first, exactly like the portable loop. */
#define WSUM_M(M)                                                                                  \
    static void a5_wsum_##M(float *const *o, const float *p, size_t ps, const float *v,            \
                            size_t row, int np, const int *anc, int n, int Dh, const float *inv)   \
    {                                                                                              \
        for (int d0 = 0; d0 < Dh; d0 += 64) {                                                      \
            int w = Dh - d0 < 64 ? Dh - d0 : 64;                                                   \
            __mmask16 mk[4];                                                                       \
            for (int u = 0; u < 4; u++) {                                                          \
                int k = w - 16 * u;                                                                \
                mk[u] = k >= 16 ? (__mmask16)0xffff : k > 0 ? tail_mask(k) : 0;                    \
            }                                                                                      \
            __m512 a[M][4];                                                                        \
            _Pragma("GCC unroll 4") for (int j = 0; j < M; j++)                                    \
                _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) a[j][u] = _mm512_setzero_ps(); \
            for (int i = 0; i < n; i++) {                                                          \
                const float *vi = v + (size_t)(i < np ? i : anc[i - np]) * row + d0;               \
                __m512 vv[4];                                                                      \
                _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) vv[u] =                        \
                    _mm512_maskz_loadu_ps(mk[u], vi + 16 * u);                                     \
                _Pragma("GCC unroll 4") for (int j = 0; j < M; j++)                                \
                {                                                                                  \
                    __m512 vp = _mm512_set1_ps(p[(size_t)j * ps + i]);                             \
                    _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) a[j][u] =                  \
                        _mm512_add_ps(a[j][u], _mm512_mul_ps(vp, vv[u]));                          \
                }                                                                                  \
            }                                                                                      \
            _Pragma("GCC unroll 4") for (int j = 0; j < M; j++)                                    \
            {                                                                                      \
                __m512 vi = _mm512_set1_ps(inv[j]);                                                \
                _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++)                                \
                    _mm512_mask_storeu_ps(o[j] + d0 + 16 * u, mk[u], _mm512_mul_ps(a[j][u], vi));  \
            }                                                                                      \
        }                                                                                          \
    }
WSUM_M(1)
WSUM_M(2)
WSUM_M(3)
WSUM_M(4)

static void a5_wsum_m(float *const *o, const float *p, size_t ps, int m, const float *v, size_t row,
                      int np, const int *anc, int n, int Dh, const float *inv)
{
    static void (*const f[5])(float *const *, const float *, size_t, const float *, size_t, int,
                              const int *, int, int,
                              const float *) = {NULL, a5_wsum_1, a5_wsum_2, a5_wsum_3, a5_wsum_4};
    f[m](o, p, ps, v, row, np, anc, n, Dh, inv);
}

static void a5_wsum(float *o, const float *p, const float *v, size_t row, int np, const int *anc,
                    int n, int Dh, float inv)
{
    a5_wsum_1(&o, p, 0, v, row, np, anc, n, Dh, &inv);
}

void kcpu_ops_avx512(kcpu_attn_ops *a, kcpu_ew_ops *e)
{
    a->softmax = a5_softmax;
    a->wsum = a5_wsum;
    a->wsum_m = a5_wsum_m;
    e->silu_mul = a5_silu_mul;
    e->add = a5_add;
    e->rms_row = a5_rms_row;
    e->exp = a5_exp;
    e->rope = a5_rope;
}
