/* cpu_ops_avx2: AVX2 + FMA small ops — the attention softmax and weighted sum, SiLU-gating,
 * add and the rmsnorm row (compiled with those flags; entered only after run-time dispatch).
 *
 * Batch invariance as in cpu_ops_avx512.c: tails are masked vector operations (maskload /
 * maskstore), so every element goes through the same sequence wherever it sits.
 *
 * exp: the same reduction and polynomial as the AVX-512 version (cpu_impl.h constants); 2^n is
 * applied as two exact power-of-two factors 2^(n>>1) * 2^(n - (n>>1)), both normal for
 * n in [-151, 128], so the only rounding is in the last product (denormal results, inf). */
#include <immintrin.h>
#include <math.h>

#include "cpu_impl.h"

#define INL static inline __attribute__((always_inline))

INL __m256 exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_set1_ps(KCPU_EXP_HI), x); /* NaN: the second operand */
    x = _mm256_max_ps(_mm256_set1_ps(KCPU_EXP_LO), x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(KCPU_EXP_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(KCPU_EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(KCPU_EXP_LN2_LO), r);
    __m256 q = _mm256_set1_ps(KCPU_EXP_C4);
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(KCPU_EXP_C3));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(KCPU_EXP_C2));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(KCPU_EXP_C1));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(KCPU_EXP_C0));
    __m256 p = _mm256_add_ps(_mm256_fmadd_ps(q, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    __m256i b = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, b), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, b), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

/* lanes [0, k) */
INL __m256i tail_mask(int k)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* the fixed tree: halves, then pairs, then the last pair */
INL float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL float hmax8(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- attention ---- */

/* Scale and max in 8 lanes (exact: max does not round); the exp sum as LANE16 (two 8-lane
 * accumulators over chunks of 16, the last masked) and the R16 tree: bitwise the portable. */
static float a2_softmax(float *s, int n, float scale)
{
    __m256 vs = _mm256_set1_ps(scale), mx = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + i), vs);
        _mm256_storeu_ps(s + i, v);
        mx = _mm256_max_ps(mx, v);
    }
    if (i < n) {
        __m256i m = tail_mask(n - i);
        __m256 v = _mm256_mul_ps(_mm256_maskload_ps(s + i, m), vs);
        _mm256_maskstore_ps(s + i, m, v);
        mx = _mm256_blendv_ps(mx, _mm256_max_ps(mx, v), _mm256_castsi256_ps(m));
    }
    __m256 vm = _mm256_set1_ps(hmax8(mx)), lo = _mm256_setzero_ps(), hi = lo;
    for (i = 0; i + 16 <= n; i += 16) {
        __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
        __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i + 8), vm));
        _mm256_storeu_ps(s + i, e0);
        _mm256_storeu_ps(s + i + 8, e1);
        lo = _mm256_add_ps(lo, e0);
        hi = _mm256_add_ps(hi, e1);
    }
    if (i < n) {
        __m256i m0 = tail_mask(n - i), m1 = tail_mask(n - i - 8);
        __m256 e0 = exp8(_mm256_sub_ps(_mm256_maskload_ps(s + i, m0), vm));
        __m256 e1 = exp8(_mm256_sub_ps(_mm256_maskload_ps(s + i + 8, m1), vm));
        _mm256_maskstore_ps(s + i, m0, e0);
        _mm256_maskstore_ps(s + i + 8, m1, e1);
        lo = _mm256_add_ps(lo, _mm256_and_ps(e0, _mm256_castsi256_ps(m0)));
        hi = _mm256_add_ps(hi, _mm256_and_ps(e1, _mm256_castsi256_ps(m1)));
    }
    return hsum8(_mm256_add_ps(lo, hi));
}

/* 32 columns at a time in four registers (masked past Dh); keys in order, product rounded
 * first, then the sum. */
static void a2_wsum(float *o, const float *p, const float *v, size_t row, int np, const int *anc,
                    int n, int Dh, float inv)
{
    for (int d0 = 0; d0 < Dh; d0 += 32) {
        int w = Dh - d0;
        __m256i m0 = tail_mask(w), m1 = tail_mask(w - 8), m2 = tail_mask(w - 16),
                m3 = tail_mask(w - 24);
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < n; i++) {
            const float *vi = v + (size_t)(i < np ? i : anc[i - np]) * row + d0;
            __m256 vp = _mm256_set1_ps(p[i]);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(vp, _mm256_maskload_ps(vi, m0)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(vp, _mm256_maskload_ps(vi + 8, m1)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(vp, _mm256_maskload_ps(vi + 16, m2)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(vp, _mm256_maskload_ps(vi + 24, m3)));
        }
        __m256 vi = _mm256_set1_ps(inv);
        _mm256_maskstore_ps(o + d0, m0, _mm256_mul_ps(a0, vi));
        _mm256_maskstore_ps(o + d0 + 8, m1, _mm256_mul_ps(a1, vi));
        _mm256_maskstore_ps(o + d0 + 16, m2, _mm256_mul_ps(a2, vi));
        _mm256_maskstore_ps(o + d0 + 24, m3, _mm256_mul_ps(a3, vi));
    }
}

/* ---- elementwise ---- */

INL __m256 silu_mul8(__m256 g, __m256 u)
{
    __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

static void a2_silu_mul(float *g, const float *u, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(g + i, silu_mul8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    if (i < n) {
        __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(g + i, m,
                            silu_mul8(_mm256_maskload_ps(g + i, m), _mm256_maskload_ps(u + i, m)));
    }
}

static void a2_add(float *x, const float *y, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    if (i < n) {
        __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(
            x + i, m, _mm256_add_ps(_mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m)));
    }
}

/* Sum of squares as LANE16 fma (two 8-lane accumulators, zero-padded tail), the R16 tree;
 * then (x*r)*w: bitwise the portable row. */
static void a2_rms_row(float *o, const float *x, const float *w, int D, float eps)
{
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    int i = 0;
    for (; i + 16 <= D; i += 16) {
        __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        lo = _mm256_fmadd_ps(v0, v0, lo);
        hi = _mm256_fmadd_ps(v1, v1, hi);
    }
    if (i < D) {
        __m256 v0 = _mm256_maskload_ps(x + i, tail_mask(D - i));
        __m256 v1 = _mm256_maskload_ps(x + i + 8, tail_mask(D - i - 8));
        lo = _mm256_fmadd_ps(v0, v0, lo);
        hi = _mm256_fmadd_ps(v1, v1, hi);
    }
    float ss = hsum8(_mm256_add_ps(lo, hi));
    __m256 r = _mm256_set1_ps(1.0f / sqrtf(ss / (float)D + eps));
    for (i = 0; i + 8 <= D; i += 8)
        _mm256_storeu_ps(
            o + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), r), _mm256_loadu_ps(w + i)));
    if (i < D) {
        __m256i m = tail_mask(D - i);
        _mm256_maskstore_ps(o + i, m,
                            _mm256_mul_ps(_mm256_mul_ps(_mm256_maskload_ps(x + i, m), r),
                                          _mm256_maskload_ps(w + i, m)));
    }
}

static void a2_exp(float *y, const float *x, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(y + i, m, exp8(_mm256_maskload_ps(x + i, m)));
    }
}

/* As a5_rope (cpu_ops_avx512.c): bitwise the scalar formula. */
static void a2_rope(float *x, const float *cs, const float *sn, int k0, int n, int half, int neox)
{
    int i = 0;
    if (neox) {
        float *xa = x + k0, *xb = x + k0 + half;
        for (; i < n; i += 8) {
            __m256i m = tail_mask(n - i);
            __m256 a = _mm256_maskload_ps(xa + i, m), b = _mm256_maskload_ps(xb + i, m);
            __m256 c = _mm256_maskload_ps(cs + i, m), s = _mm256_maskload_ps(sn + i, m);
            _mm256_maskstore_ps(xa + i, m, _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
            _mm256_maskstore_ps(xb + i, m, _mm256_add_ps(_mm256_mul_ps(a, s), _mm256_mul_ps(b, c)));
        }
        return;
    }
    const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const __m256 neg = _mm256_castsi256_ps(_mm256_setr_epi32(
        (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0));
    float *xp = x + 2 * k0;
    for (; i < n; i += 4) {
        int k = n - i >= 4 ? 4 : n - i;
        __m256i m4 = tail_mask(k), m = tail_mask(2 * k);
        __m256 c = _mm256_permutevar8x32_ps(_mm256_maskload_ps(cs + i, m4), dup);
        __m256 s =
            _mm256_xor_ps(_mm256_permutevar8x32_ps(_mm256_maskload_ps(sn + i, m4), dup), neg);
        __m256 v = _mm256_maskload_ps(xp + 2 * i, m);
        __m256 w = _mm256_permute_ps(v, 0xB1);
        _mm256_maskstore_ps(xp + 2 * i, m, _mm256_add_ps(_mm256_mul_ps(v, c), _mm256_mul_ps(w, s)));
    }
}

void kcpu_ops_avx2(kcpu_attn_ops *a, kcpu_ew_ops *e)
{
    a->softmax = a2_softmax;
    a->wsum = a2_wsum;
    e->silu_mul = a2_silu_mul;
    e->add = a2_add;
    e->rms_row = a2_rms_row;
    e->exp = a2_exp;
    e->rope = a2_rope;
}
