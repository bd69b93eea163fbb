/* cpu_mm_avx2: AVX2 + FMA + F16C matmul kernels (compiled with those flags; entered only after
 * run-time dispatch found them).
 *
 * 8-bit activations, the portable activation record (kcpu_q8_layout: q in natural order,
 * per-32 scales d, ds = d*sum(q), ds16 = d*sum16(q)). Weights are decoded one row at a time
 * into thread scratch as 32 unsigned bytes per 32-element block in natural element order
 * (plus the signed bytes for Q8_0, or the int16 scale words for Q6_K), a float scale per
 * block and the constant-term coefficients mn. Then, per (t, n):
 *     for each block b:  s = madd(maddubs(w_b, x_b), k_b)        8 int32 lanes, exact
 *                        acc = fma(cvt(s), set1(dw_b * dx_b), acc)
 *     for each 8 blocks: acc = fma(mn[b..b+7], ax[b..b+7], acc)
 *     out = hsum8(acc)   (fixed tree: halves, then pairs, then the last pair)
 * with k_b = 1 (word ones) except Q6_K, whose int16 scale words apply the per-16 scales in
 * the integer domain. Unsigned x signed bytes: nibbles as they are; Q6_K q6 (0..63); Q8_0 uses
 * |w| x sign(x, w) so that maddubs cannot saturate (2 * 128 * 127 < 32768). Constant terms:
 *     Q4_0 mn = -8d (ax = ds), Q4_1 mn = m (ds), Q4_K mn_j = -dmin*m_j (ds),
 *     Q6_K mn_g = d*(-32 sc_g) (ax = ds16), Q8_0 none.
 * Tokens are processed 4 at a time against the decoded row; every (t, n) sees the same
 * sequence of float operations whatever T, tile or thread (batch invariance). */
#include <immintrin.h>
#include <string.h>

#include "cpu_impl.h"

#define INL static inline __attribute__((always_inline))

typedef enum { V_Q4_0, V_Q4_1, V_Q8_0, V_Q4_K, V_Q6_K } vkind;

typedef struct {
    int nb, nmn;            /* blocks; constant-term entries (padded to 8) */
    size_t wq, aux, dw, mn; /* decoded row offsets */
    size_t size;
} v2_dec;

static v2_dec v2_dec_for(int K, vkind k)
{
    v2_dec D;
    D.nb = K / 32;
    int n = k == V_Q6_K ? 2 * D.nb : D.nb;
    D.nmn = (n + 7) & ~7;
    D.wq = 0;
    D.aux = (size_t)D.nb * 32;
    D.dw = D.aux + (k == V_Q8_0 || k == V_Q6_K ? (size_t)D.nb * 32 : 0);
    D.mn = D.dw + (size_t)D.nb * 4;
    D.size = D.mn + (size_t)D.nmn * 4;
    return D;
}

static float f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static void q4k_sm(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

INL __m256i nibbles(__m128i v)
{
    const __m128i lo4 = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), lo4), _mm_and_si128(v, lo4));
}

static void v2_decode(uint8_t *dec, const uint8_t *w, int K, vkind kind, const v2_dec *D)
{
    uint8_t *wq = dec + D->wq, *aux = dec + D->aux;
    float *dw = (float *)(dec + D->dw), *mn = (float *)(dec + D->mn);
    switch (kind) {
    case V_Q4_0:
    case V_Q4_1: {
        int bb = kind == V_Q4_0 ? 18 : 20, qo = kind == V_Q4_0 ? 2 : 4;
        for (int b = 0; b < D->nb; b++) {
            const uint8_t *p = w + (size_t)b * bb;
            _mm256_storeu_si256((__m256i *)(wq + 32 * b),
                                nibbles(_mm_loadu_si128((const __m128i *)(p + qo))));
            float d = f16(p);
            dw[b] = d;
            mn[b] = kind == V_Q4_0 ? d * -8.0f : f16(p + 2);
        }
        break;
    }
    case V_Q8_0:
        for (int b = 0; b < D->nb; b++) {
            const uint8_t *p = w + (size_t)b * 34;
            __m256i q = _mm256_loadu_si256((const __m256i *)(p + 2));
            _mm256_storeu_si256((__m256i *)(wq + 32 * b), _mm256_abs_epi8(q));
            _mm256_storeu_si256((__m256i *)(aux + 32 * b), q);
            dw[b] = f16(p);
        }
        break;
    case V_Q4_K:
        for (int sb = 0; sb < K / 256; sb++) {
            const uint8_t *p = w + (size_t)sb * 144;
            float d = f16(p), dmin = f16(p + 2);
            const __m256i lo4 = _mm256_set1_epi8(0x0f);
            for (int i = 0; i < 4; i++) {
                __m256i z = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * i));
                _mm256_storeu_si256((__m256i *)(wq + 32 * (8 * sb + 2 * i)),
                                    _mm256_and_si256(z, lo4));
                _mm256_storeu_si256((__m256i *)(wq + 32 * (8 * sb + 2 * i + 1)),
                                    _mm256_and_si256(_mm256_srli_epi16(z, 4), lo4));
            }
            for (int j = 0; j < 8; j++) {
                int s, m;
                q4k_sm(j, p + 4, &s, &m);
                dw[8 * sb + j] = d * (float)s;
                mn[8 * sb + j] = -(dmin * (float)m);
            }
        }
        break;
    case V_Q6_K:
        for (int sb = 0; sb < K / 256; sb++) {
            const uint8_t *p = w + (size_t)sb * 210;
            const int8_t *sc = (const int8_t *)(p + 192);
            float d = f16(p + 208);
            const __m256i lo4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = p + 64 * h, *qh = p + 128 + 32 * h;
                __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
                __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
                __m256i hb = _mm256_loadu_si256((const __m256i *)qh);
                __m256i v[4] = {
                    _mm256_or_si256(_mm256_and_si256(l0, lo4),
                                    _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4)),
                    _mm256_or_si256(
                        _mm256_and_si256(l1, lo4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4)),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(l0, 4), lo4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4)),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(l1, 4), lo4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4))};
                for (int j = 0; j < 4; j++) {
                    int b = 8 * sb + 4 * h + j, g = 2 * (4 * h + j);
                    _mm256_storeu_si256((__m256i *)(wq + 32 * b), v[j]);
                    _mm256_storeu_si256(
                        (__m256i *)(aux + 32 * b),
                        _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g])));
                }
            }
            for (int b = 8 * sb; b < 8 * sb + 8; b++)
                dw[b] = d;
            for (int g = 0; g < 16; g++)
                mn[16 * sb + g] = d * (float)(-32 * sc[g]);
        }
        break;
    }
    int n = kind == V_Q6_K ? 2 * D->nb : D->nb;
    for (int i = n; i < D->nmn; i++)
        mn[i] = 0.0f;
}

INL float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

typedef struct {
    const int8_t *q[4];
    const float *d[4], *ax[4];
} v2_tok;

#define V2CORE(TT)                                                                                 \
    static void v2core_##TT(float *out, size_t ldo, const v2_tok *tk, const uint8_t *dec,          \
                            const v2_dec *D, vkind kind)                                           \
    {                                                                                              \
        __m256 acc[TT];                                                                            \
        const __m256i ones = _mm256_set1_epi16(1);                                                 \
        const float *dw = (const float *)(dec + D->dw), *mn = (const float *)(dec + D->mn);        \
        _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++) acc[t] = _mm256_setzero_ps();         \
        for (int b = 0; b < D->nb; b++) {                                                          \
            __m256i w = _mm256_loadu_si256((const __m256i *)(dec + D->wq + 32 * b));               \
            __m256i a = _mm256_loadu_si256((const __m256i *)(dec + D->aux + 32 * b));              \
            _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++)                                   \
            {                                                                                      \
                __m256i x = _mm256_loadu_si256((const __m256i *)(tk->q[t] + 32 * b));              \
                __m256i s;                                                                         \
                if (kind == V_Q8_0)                                                                \
                    s = _mm256_madd_epi16(_mm256_maddubs_epi16(w, _mm256_sign_epi8(x, a)), ones);  \
                else if (kind == V_Q6_K)                                                           \
                    s = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), a);                          \
                else                                                                               \
                    s = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);                       \
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s),                                    \
                                         _mm256_set1_ps(dw[b] * tk->d[t][b]), acc[t]);             \
            }                                                                                      \
        }                                                                                          \
        if (kind != V_Q8_0)                                                                        \
            for (int i = 0; i < D->nmn; i += 8) {                                                  \
                __m256 m = _mm256_loadu_ps(mn + i);                                                \
                _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++) acc[t] =                      \
                    _mm256_fmadd_ps(m, _mm256_loadu_ps(tk->ax[t] + i), acc[t]);                    \
            }                                                                                      \
        _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++) out[t * ldo] = hsum8(acc[t]);         \
    }
V2CORE(1)
V2CORE(2)
V2CORE(3)
V2CORE(4)

typedef void (*v2core_fn)(float *, size_t, const v2_tok *, const uint8_t *, const v2_dec *, vkind);
static const v2core_fn v2cores[5] = {NULL, v2core_1, v2core_2, v2core_3, v2core_4};

static void rows_v2(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                    size_t ws, int n0, int n1, int K, void *scratch, vkind kind)
{
    v2_dec D = v2_dec_for(K, kind);
    kcpu_q8_layout L = kcpu_q8_layout_for(K);
    size_t ax_off = kind == V_Q6_K ? L.ds16 : L.ds;
    uint8_t *dec = scratch;
    for (int n = n0; n < n1; n++) {
        v2_decode(dec, w + (size_t)n * ws, K, kind, &D);
        for (int t0 = 0; t0 < T; t0 += 4) {
            int tt = T - t0 < 4 ? T - t0 : 4;
            v2_tok tk;
            for (int t = 0; t < tt; t++) {
                const uint8_t *r = act + (size_t)(t0 + t) * as;
                tk.q[t] = (const int8_t *)(r + L.q);
                tk.d[t] = (const float *)(r + L.d);
                tk.ax[t] = (const float *)(r + ax_off);
            }
            v2cores[tt](out + (size_t)t0 * ldo + n, (size_t)ldo, &tk, dec, &D, kind);
        }
    }
}

#define ROWS_V2(name, kind)                                                                        \
    static void name(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,  \
                     size_t ws, int n0, int n1, int K, void *scratch)                              \
    {                                                                                              \
        rows_v2(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, kind);                            \
    }
ROWS_V2(rows_v2_q4_0, V_Q4_0)
ROWS_V2(rows_v2_q4_1, V_Q4_1)
ROWS_V2(rows_v2_q8_0, V_Q8_0)
ROWS_V2(rows_v2_q4_k, V_Q4_K)
ROWS_V2(rows_v2_q6_k, V_Q6_K)

/* AVX2 activation prep: bitwise the portable kcpu_q8_quantize_row (same max, division,
 * multiplication and round-to-nearest-even), eight lanes at a time. */
static void v2_prep(uint8_t *rec, const float *x, int K)
{
    kcpu_q8_layout L = kcpu_q8_layout_for(K);
    int8_t *q = (int8_t *)(rec + L.q);
    float *d = (float *)(rec + L.d), *ds = (float *)(rec + L.ds), *ds16 = (float *)(rec + L.ds16);
    int16_t *s16 = (int16_t *)(rec + L.s16);
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int b = 0; b < K / 32; b++) {
        __m256 v[4];
        __m256 am = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(x + 32 * b + 8 * i);
            am = _mm256_max_ps(am, _mm256_and_ps(v[i], absm));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float db = amax / 127.0f;
        float id = db != 0.0f ? 1.0f / db : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i qi[4];
        const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
        for (int i = 0; i < 4; i++) {
            qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vid));
            qi[i] = _mm256_max_epi32(_mm256_min_epi32(qi[i], lim), nlim);
        }
        /* pack 32 int32 to int8 in order: packs work per 128-bit lane, then fix the order */
        __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]), p23 = _mm256_packs_epi32(qi[2], qi[3]);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + 32 * b), p);
        __m256i s01 = _mm256_add_epi32(qi[0], qi[1]), s23 = _mm256_add_epi32(qi[2], qi[3]);
        int sa = 0, sb = 0;
        int32_t t[8];
        _mm256_storeu_si256((__m256i *)t, s01);
        for (int i = 0; i < 8; i++)
            sa += t[i];
        _mm256_storeu_si256((__m256i *)t, s23);
        for (int i = 0; i < 8; i++)
            sb += t[i];
        d[b] = db;
        ds[b] = db * (float)(sa + sb);
        s16[2 * b] = (int16_t)sa;
        s16[2 * b + 1] = (int16_t)sb;
        ds16[2 * b] = db * (float)sa;
        ds16[2 * b + 1] = db * (float)sb;
    }
    /* the constant-term loops read ds / ds16 in whole vectors of 8: zero the padding */
    for (int i = K / 32; i < ((K / 32 + 7) & ~7); i++)
        ds[i] = 0.0f;
    for (int i = K / 16; i < ((K / 16 + 7) & ~7); i++)
        ds16[i] = 0.0f;
}

void kcpu_mm_avx2(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2])
{
    static const struct {
        sd_dtype t;
        kcpu_rows_fn f;
    } k[] = {{SD_DTYPE_Q4_0, rows_v2_q4_0},
             {SD_DTYPE_Q4_1, rows_v2_q4_1},
             {SD_DTYPE_Q8_0, rows_v2_q8_0},
             {SD_DTYPE_Q4_K, rows_v2_q4_k},
             {SD_DTYPE_Q6_K, rows_v2_q6_k}};
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        /* scratch: one decoded row, ~2 bytes per weight + scales */
        tab[k[i].t][1] = (kcpu_mm_kernel){.rows = k[i].f,
                                          .quantized_act = 1,
                                          .prep = v2_prep,
                                          .prep_stride = kcpu_q8_stride,
                                          .scratch_per_k = 3,
                                          .row_tile = 4};
}

/* ---- attention inner loops ---- */

/* 8-lane FMA accumulator over i (scalar-FMA-free tail folded in lane order), then hsum8. */
static float a2_dot(const float *q, const float *k, int n)
{
    __m256 a = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a);
    if (i < n) {
        __m256i m =
            _mm256_cmpgt_epi32(_mm256_set1_epi32(n - i), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        a = _mm256_fmadd_ps(_mm256_maskload_ps(q + i, m), _mm256_maskload_ps(k + i, m), a);
    }
    return hsum8(a);
}

static void a2_dot4(float *s, const float *q, const float *k0, const float *k1, const float *k2,
                    const float *k3, int n)
{
    s[0] = a2_dot(q, k0, n);
    s[1] = a2_dot(q, k1, n);
    s[2] = a2_dot(q, k2, n);
    s[3] = a2_dot(q, k3, n);
}

void kcpu_attn_avx2(kcpu_attn_ops *ops)
{
    ops->dot = a2_dot;
    ops->dot4 = a2_dot4;
}
