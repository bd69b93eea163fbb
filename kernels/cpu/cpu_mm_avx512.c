/* cpu_mm_avx512: AVX-512 (F/BW/VL/DQ + VNNI) matmul kernels for the K-quants (Q4_K, Q6_K) with
 * 8-bit activations and for every type with f32 activations. (Q4_0, Q4_1 and Q8_0 with 8-bit
 * activations, the default model's types, are in cpu_r16_avx512.c.) Compiled with the AVX-512
 * flags; only entered after run-time dispatch found those features.
 *
 * 8-bit activation path ("groups of four blocks")
 * ------------------------------------------------
 * Weights and activations are cut into 32-element blocks (the sub-blocks of the K-quants), and
 * blocks into groups of four. A group is held as two 64-byte vectors A and B: A holds elements
 * 0..15 of each of the 4 blocks (16 bytes per 128-bit lane), B elements 16..31. Two VNNI
 * dot products into one accumulator leave every int32 lane with a sum over 8 products of one
 * block, 4 lanes per block:
 *     s = dpbusd(dpbusd(0, wA, xA), wB, xB)          (u8 weights x s8 activations, exact)
 *     acc = fma(cvt(s), wscale * xscale, acc)         (per-lane scales of the lane's block)
 * and the blocks' constant terms go through a second, per-block float dot product
 *     macc = fma(mn[b..b+15], ax[b..b+15], macc)
 * out = reduce_add(acc + macc), reduce_add a fixed shuffle tree.
 * Weights become unsigned bytes: Q4_K nibbles as they are, Q6_K as q6 (0..63):
 *     Q4_K: mn_j = -dmin*m_j, ax = ds
 *     Q6_K (per 16-element group g, scale sc_g): the integer scales are applied with
 *     maddubs + dpwssd; mn_g = d*(-32 sc_g), ax = dx * sum16(qx).
 * Every (t, n) gets exactly this sequence of operations whatever T, the tile of tokens it is
 * computed in, or the thread; tiles only share the decoded weight group between tokens.
 * A weight row is decoded into thread scratch (vectors A, B and the scale pattern per group;
 * mn per block), then swept with up to 8 tokens at a time (one accumulator each).
 *
 * The activation record (this level's own layout, made by a5_prep):
 *   q    G x 128 bytes  int8 activations in the group layout (zero padding)
 *   dxp  G x 16 floats  the block scale dx repeated over each block's 4 lanes
 *   d, ds               per block: dx, dx*sum(q)        (nbp = blocks rounded up to 16)
 *   ds16                per 16-element group: dx*sum16(q)
 * The quantization itself (max, dx = max/127, q = rne(x * (1/dx))) is bitwise the portable one.
 *
 * f32 activation path: the row is dequantized into scratch (the same floats as
 * dtype_dequant_row) and dotted with two 16-lane FMA accumulators (elements i%32 < 16 and
 * >= 16), out = reduce_add(acc0 + acc1). */
#include <immintrin.h>
#include <string.h>

#include "cpu_impl.h"

#define INL static inline __attribute__((always_inline))

/* ---- activation record ---- */

typedef struct {
    int nb, G, nbp;
    size_t q, dxp, d, ds, ds16, stride;
} a5_layout;

static a5_layout a5_layout_for(int K)
{
    a5_layout L;
    L.nb = K / 32;
    L.G = (L.nb + 3) / 4;
    L.nbp = (L.nb + 15) & ~15;
    L.q = 0;
    L.dxp = (size_t)L.G * 128;
    L.d = L.dxp + (size_t)L.G * 64;
    L.ds = L.d + (size_t)L.nbp * 4;
    L.ds16 = L.ds + (size_t)L.nbp * 4;
    L.stride = L.ds16 + (size_t)L.nbp * 8;
    return L;
}

static size_t a5_stride(int K)
{
    return a5_layout_for(K).stride;
}

static void a5_prep(uint8_t *rec, const float *x, int K)
{
    a5_layout L = a5_layout_for(K);
    memset(rec, 0, L.stride);
    float *dxp = (float *)(rec + L.dxp), *d = (float *)(rec + L.d), *ds = (float *)(rec + L.ds);
    float *ds16 = (float *)(rec + L.ds16);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int b = 0; b < L.nb; b++) {
        __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
        __m512 am = _mm512_max_ps(_mm512_and_ps(x0, absmask), _mm512_and_ps(x1, absmask));
        float amax = _mm512_reduce_max_ps(am);
        float db = amax / 127.0f;
        float id = db != 0.0f ? 1.0f / db : 0.0f;
        __m512 vid = _mm512_set1_ps(id);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vid));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vid));
        const __m512i lim = _mm512_set1_epi32(127);
        q0 = _mm512_max_epi32(_mm512_min_epi32(q0, lim),
                              _mm512_sub_epi32(_mm512_setzero_si512(), lim));
        q1 = _mm512_max_epi32(_mm512_min_epi32(q1, lim),
                              _mm512_sub_epi32(_mm512_setzero_si512(), lim));
        int s0 = _mm512_reduce_add_epi32(q0), s1 = _mm512_reduce_add_epi32(q1);
        uint8_t *g = rec + L.q + (size_t)(b / 4) * 128 + (size_t)(b % 4) * 16;
        _mm_storeu_si128((__m128i *)g, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(g + 64), _mm512_cvtepi32_epi8(q1));
        _mm_storeu_ps(dxp + 4 * b, _mm_set1_ps(db));
        d[b] = db;
        ds[b] = db * (float)(s0 + s1);
        ds16[2 * b] = db * (float)s0;
        ds16[2 * b + 1] = db * (float)s1;
    }
}

/* ---- decoded weight row (thread scratch) ----
 * per group: A (64 B), B (64 B), scale pattern (16 floats), and for Q6_K the int16 scale
 * words for A and B (64 B each); then mn: nbp floats (2*nbp for Q6_K). */
enum { GS = 192, GS6 = 320 };

typedef enum { W_Q4_K, W_Q6_K } wkind;

static const int32_t pat4[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};

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

static void decode_q4k(uint8_t *dec, const uint8_t *w, int K)
{
    a5_layout L = a5_layout_for(K);
    float *mn = (float *)(dec + (size_t)L.G * GS);
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    const __m512i ia = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i ib = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    const __m512i pat = _mm512_loadu_si512(pat4);
    for (int sb = 0; sb < K / 256; sb++) {
        const uint8_t *p = w + (size_t)sb * 144;
        float d = kcpu_f16(p), dmin = kcpu_f16(p + 2);
        float sc[8];
        for (int j = 0; j < 8; j++) {
            int s, m;
            q4k_sm(j, p + 4, &s, &m);
            sc[j] = d * (float)s;
            mn[8 * sb + j] = -(dmin * (float)m);
        }
        for (int h = 0; h < 2; h++) {
            __m512i z = _mm512_loadu_si512(p + 16 + 64 * h);
            __m512i lo = _mm512_and_si512(z, lo4);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(z, 4), lo4);
            uint8_t *o = dec + (size_t)(2 * sb + h) * GS;
            _mm512_storeu_si512(o, _mm512_permutex2var_epi64(lo, ia, hi));
            _mm512_storeu_si512(o + 64, _mm512_permutex2var_epi64(lo, ib, hi));
            _mm512_storeu_ps(
                (float *)(o + 128),
                _mm512_permutexvar_ps(pat, _mm512_castps128_ps512(_mm_loadu_ps(sc + 4 * h))));
        }
    }
    for (int b = L.nb; b < L.nbp; b++)
        mn[b] = 0.0f;
}

static void decode_q6k(uint8_t *dec, const uint8_t *w, int K)
{
    a5_layout L = a5_layout_for(K);
    float *mn = (float *)(dec + (size_t)L.G * GS6);
    const __m512i lo4 = _mm512_set1_epi8(0x0f), m3 = _mm512_set1_epi8(3);
    const __m512i shl = _mm512_setr_epi64(0, 0, 0, 0, 0x0002000200020002ll, 0x0002000200020002ll,
                                          0x0002000200020002ll, 0x0002000200020002ll);
    const __m512i shh = _mm512_setr_epi64(
        0x0004000400040004ll, 0x0004000400040004ll, 0x0004000400040004ll, 0x0004000400040004ll,
        0x0006000600060006ll, 0x0006000600060006ll, 0x0006000600060006ll, 0x0006000600060006ll);
    const __m512i ia = _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13);
    const __m512i ib = _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15);
    /* word i of A's scales: sub-block i/8, first 16-group (2*(i/8)); B: second (2*(i/8)+1) */
    int16_t swa[32], swb[32];
    for (int i = 0; i < 32; i++) {
        swa[i] = (int16_t)(2 * (i / 8));
        swb[i] = (int16_t)(2 * (i / 8) + 1);
    }
    const __m512i pa = _mm512_loadu_si512(swa), pb = _mm512_loadu_si512(swb);
    for (int sb = 0; sb < K / 256; sb++) {
        const uint8_t *p = w + (size_t)sb * 210;
        const int8_t *sc = (const int8_t *)(p + 192);
        float d = kcpu_f16(p + 208);
        for (int i = 0; i < 16; i++)
            mn[16 * sb + i] = d * (float)(-32 * sc[i]);
        for (int h = 0; h < 2; h++) {
            __m512i zl = _mm512_loadu_si512(p + 64 * h);
            __m512i zh =
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h)));
            __m512i lo = _mm512_and_si512(zl, lo4);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(zl, 4), lo4);
            __m512i hbl = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(zh, shl), m3), 4);
            __m512i hbh = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(zh, shh), m3), 4);
            __m512i ql = _mm512_or_si512(lo, hbl), qhv = _mm512_or_si512(hi, hbh);
            uint8_t *o = dec + (size_t)(2 * sb + h) * GS6;
            _mm512_storeu_si512(o, _mm512_permutex2var_epi64(ql, ia, qhv));
            _mm512_storeu_si512(o + 64, _mm512_permutex2var_epi64(ql, ib, qhv));
            _mm512_storeu_ps((float *)(o + 128), _mm512_set1_ps(d));
            __m512i s16 = _mm512_cvtepi8_epi16(
                _mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)(sc + 8 * h))));
            _mm512_storeu_si512(o + 192, _mm512_permutexvar_epi16(pa, s16));
            _mm512_storeu_si512(o + 256, _mm512_permutexvar_epi16(pb, s16));
        }
    }
    for (int g = L.nb * 2; g < L.nbp * 2; g++)
        mn[g] = 0.0f;
}

/* ---- the token sweep over one decoded row ---- */

#define CORE(TT, Q6)                                                                               \
    static void core_##Q6##_##TT(float *out, int ldo, const uint8_t *act, size_t as,               \
                                 const a5_layout *L, const uint8_t *dec, int n, size_t ax_off,     \
                                 int n_mn)                                                         \
    {                                                                                              \
        const size_t gs = Q6 ? GS6 : GS;                                                           \
        __m512 acc[TT];                                                                            \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) acc[t] = _mm512_setzero_ps();        \
        for (int g = 0; g < L->G; g++) {                                                           \
            const uint8_t *o = dec + (size_t)g * gs;                                               \
            __m512i wa = _mm512_loadu_si512(o), wb = _mm512_loadu_si512(o + 64);                   \
            __m512 ws = _mm512_loadu_ps((const float *)(o + 128));                                 \
            __m512i sa = _mm512_setzero_si512(), sbv = sa;                                         \
            if (Q6) {                                                                              \
                sa = _mm512_loadu_si512(o + 192);                                                  \
                sbv = _mm512_loadu_si512(o + 256);                                                 \
            }                                                                                      \
            _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++)                                  \
            {                                                                                      \
                const uint8_t *r = act + (size_t)t * as;                                           \
                __m512i xa = _mm512_loadu_si512(r + (size_t)g * 128);                              \
                __m512i xb = _mm512_loadu_si512(r + (size_t)g * 128 + 64);                         \
                __m512i s;                                                                         \
                if (Q6) {                                                                          \
                    s = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_maddubs_epi16(wa, xa),  \
                                            sa);                                                   \
                    s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(wb, xb), sbv);                 \
                } else {                                                                           \
                    s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wa, xa);                       \
                    s = _mm512_dpbusd_epi32(s, wb, xb);                                            \
                }                                                                                  \
                __m512 xs = _mm512_loadu_ps((const float *)(r + L->dxp) + 16 * g);                 \
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(ws, xs), acc[t]);    \
            }                                                                                      \
        }                                                                                          \
        const float *mn = (const float *)(dec + (size_t)L->G * gs);                                \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++)                                      \
        {                                                                                          \
            const float *ax = (const float *)(act + (size_t)t * as + ax_off);                      \
            __m512 m = _mm512_setzero_ps();                                                        \
            for (int i = 0; i < n_mn; i += 16)                                                     \
                m = _mm512_fmadd_ps(_mm512_loadu_ps(mn + i), _mm512_loadu_ps(ax + i), m);          \
            out[(size_t)t * ldo + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t], m));             \
        }                                                                                          \
    }

CORE(1, 0)
CORE(2, 0)
CORE(3, 0)
CORE(4, 0)
CORE(5, 0)
CORE(6, 0)
CORE(7, 0)
CORE(8, 0)
CORE(1, 1)
CORE(2, 1)
CORE(3, 1)
CORE(4, 1)
CORE(5, 1)
CORE(6, 1)
CORE(7, 1)
CORE(8, 1)

typedef void (*core_fn)(float *, int, const uint8_t *, size_t, const a5_layout *, const uint8_t *,
                        int, size_t, int);
static const core_fn cores[2][9] = {
    {NULL, core_0_1, core_0_2, core_0_3, core_0_4, core_0_5, core_0_6, core_0_7, core_0_8},
    {NULL, core_1_1, core_1_2, core_1_3, core_1_4, core_1_5, core_1_6, core_1_7, core_1_8},
};

static void rows_q(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                   size_t ws, int n0, int n1, int K, void *scratch, wkind kind)
{
    a5_layout L = a5_layout_for(K);
    int q6 = kind == W_Q6_K;
    size_t ax_off = q6 ? L.ds16 : L.ds;
    int n_mn = q6 ? 2 * L.nbp : L.nbp;
    uint8_t *dec = scratch;
    for (int n = n0; n < n1; n++) {
        const uint8_t *wr = w + (size_t)n * ws;
        if (kind == W_Q4_K)
            decode_q4k(dec, wr, K);
        else
            decode_q6k(dec, wr, K);
        for (int t0 = 0; t0 < T; t0 += 8) {
            int tt = T - t0 < 8 ? T - t0 : 8;
            cores[q6][tt](out + (size_t)t0 * ldo, ldo, act + (size_t)t0 * as, as, &L, dec, n,
                          ax_off, n_mn);
        }
    }
}

#define ROWS_Q(name, kind)                                                                         \
    static void name(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,  \
                     size_t ws, int n0, int n1, int K, void *scratch)                              \
    {                                                                                              \
        rows_q(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, kind);                             \
    }
ROWS_Q(rows_q_q4_k, W_Q4_K)
ROWS_Q(rows_q_q6_k, W_Q6_K)

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
        __m512 a0[TT], a1[TT];                                                                     \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) a0[t] = a1[t] = _mm512_setzero_ps(); \
        for (int i = 0; i < K; i += 32) {                                                          \
            __m512 w0 = _mm512_loadu_ps(wr + i), w1 = _mm512_loadu_ps(wr + i + 16);                \
            _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++)                                  \
            {                                                                                      \
                a0[t] = _mm512_fmadd_ps(_mm512_loadu_ps(x + t * xs + i), w0, a0[t]);               \
                a1[t] = _mm512_fmadd_ps(_mm512_loadu_ps(x + t * xs + i + 16), w1, a1[t]);          \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) out[(size_t)t * ldo + n] =           \
            _mm512_reduce_add_ps(_mm512_add_ps(a0[t], a1[t]));                                     \
    }
FCORE(1)
FCORE(2)
FCORE(3)
FCORE(4)
typedef void (*fcore_fn)(float *, int, const float *, size_t, const float *, int, int);
static const fcore_fn fcores[5] = {NULL, fcore_1, fcore_2, fcore_3, fcore_4};

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
        for (int t0 = 0; t0 < T; t0 += 4) {
            int tt = T - t0 < 4 ? T - t0 : 4;
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
    /* 8-bit activations: Q4_K and Q6_K here; Q4_0, Q4_1 and Q8_0 in cpu_r16_avx512.c */
    static const struct {
        sd_dtype t;
        kcpu_rows_fn f32, q8;
    } k[] = {
        {SD_DTYPE_F32, rows_f_f32, NULL},          {SD_DTYPE_F16, rows_f_f16, NULL},
        {SD_DTYPE_BF16, rows_f_bf16, NULL},        {SD_DTYPE_Q8_0, rows_f_q8_0, NULL},
        {SD_DTYPE_Q4_0, rows_f_q4_0, NULL},        {SD_DTYPE_Q4_1, rows_f_q4_1, NULL},
        {SD_DTYPE_Q4_K, rows_f_q4_k, rows_q_q4_k}, {SD_DTYPE_Q6_K, rows_f_q6_k, rows_q_q6_k},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        kcpu_mm_kernel f = {.rows = k[i].f32, .scratch_per_k = 4, .row_tile = 4};
        tab[k[i].t][0] = f;
        tab[k[i].t][1] = f;
        if (k[i].q8) /* scratch: one decoded row, ~1.2 bytes per weight + scales */
            tab[k[i].t][1] = (kcpu_mm_kernel){.rows = k[i].q8,
                                              .quantized_act = 1,
                                              .prep = a5_prep,
                                              .prep_stride = a5_stride,
                                              .scratch_per_k = 4,
                                              .row_tile = 4};
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
