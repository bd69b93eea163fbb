/* cpu_mm_avx512: AVX-512 (F/BW/VL/DQ + VNNI) matmul kernels. Compiled with the AVX-512 flags;
 * only entered after run-time dispatch found those features.
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
 * Weights become unsigned bytes: nibbles as they are (Q4_0/Q4_1/Q4_K), Q8_0 as q+128 (xor
 * 0x80), Q6_K as q6 (0..63). The offsets go into mn:
 *     Q4_0 w = d(n-8):   mn = -8d,  ax = dx*sum(qx)        Q4_1 w = d n + m:  mn = m, ax = ds
 *     Q8_0 w = d(u-128): mn = -128d, ax = ds               Q4_K: mn_j = -dmin*m_j, ax = ds
 *     Q6_K (per 16-element group g, scale sc_g): the integer scales are applied with
 *     maddubs + dpwssd; mn_g = d*(-32 sc_g), ax = dx * sum16(qx).
 * Every (t, n) gets exactly this sequence of operations whatever T, the tile of tokens it is
 * computed in, or the thread; tiles only share the decoded weight group between tokens.
 *
 * Q4_K and Q6_K use these 4-block groups throughout: a weight row is decoded into thread
 * scratch (vectors A, B and the scale pattern per group; mn per block), then swept with up to
 * 8 tokens at a time (one accumulator each). Q4_0, Q4_1 and Q8_0 (the default model) use
 * 16-block groups with one lane per block (see "big groups" below), 16-row blocks with a
 * transposed horizontal reduction, and decode fused into the dot products for small T.
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

typedef enum { W_Q4_0, W_Q4_1, W_Q8_0, W_Q4_K, W_Q6_K } wkind;

INL __m512i load4x16(const uint8_t *p, size_t stride, int nv)
{
    if (nv == 4) {
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + stride)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + 2 * stride)), 2);
        return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + 3 * stride)), 3);
    }
    /* a short group (the row's last): missing blocks read as zeros, nothing read past the row */
    __m128i q[4];
    _Pragma("GCC unroll 16") for (int j = 0; j < 4; j++) q[j] =
        j < nv ? _mm_loadu_si128((const __m128i *)(p + j * stride)) : _mm_setzero_si128();
    __m512i v = _mm512_castsi128_si512(q[0]);
    v = _mm512_inserti32x4(v, q[1], 1);
    v = _mm512_inserti32x4(v, q[2], 2);
    return _mm512_inserti32x4(v, q[3], 3);
}

static const int16_t dm_words[32] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                                     1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
static const int32_t pat4[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};

/* f16 scales of the 32-blocks (Q4_0/Q4_1/Q8_0) for blocks b0.. b0+15: gathers the 32-bit word
 * at the start of each block (d, and m for Q4_1). */
INL __m512i gather_heads(const uint8_t *w, int b0, int nb, int bbytes)
{
    int n = nb - b0 < 16 ? nb - b0 : 16;
    __mmask16 m = (__mmask16)((1u << n) - 1);
    __m512i idx =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32(bbytes));
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, w + (size_t)b0 * bbytes, 1);
}

static void decode_q32(uint8_t *dec, const uint8_t *w, int K, wkind kind)
{
    a5_layout L = a5_layout_for(K);
    int bbytes = kind == W_Q4_0 ? 18 : kind == W_Q4_1 ? 20 : 34;
    float *dsc = (float *)(dec + (size_t)L.G * GS) + L.nbp; /* temp d per block after mn */
    float *mn = (float *)(dec + (size_t)L.G * GS);
    for (int b0 = 0; b0 < L.nbp; b0 += 16) {
        __m512i h = gather_heads(w, b0, L.nb, bbytes);
        __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
        __m512 m;
        if (kind == W_Q4_1)
            m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h, 16)));
        else
            m = _mm512_mul_ps(d, _mm512_set1_ps(kind == W_Q4_0 ? -8.0f : -128.0f));
        _mm512_storeu_ps(dsc + b0, d);
        _mm512_storeu_ps(mn + b0, m);
    }
    const __m512i pat = _mm512_loadu_si512(pat4);
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    for (int g = 0; g < L.G; g++) {
        int nv = L.nb - 4 * g < 4 ? L.nb - 4 * g : 4;
        const uint8_t *wb = w + (size_t)4 * g * bbytes;
        __m512i A, B;
        if (kind == W_Q8_0) {
            const __m512i x80 = _mm512_set1_epi8((char)0x80);
            A = _mm512_xor_si512(load4x16(wb + 2, 34, nv), x80);
            B = _mm512_xor_si512(load4x16(wb + 18, 34, nv), x80);
            if (nv < 4) { /* padding must stay 0, not 0x80 */
                __mmask64 km = (__mmask64)((1ull << (16 * nv)) - 1);
                A = _mm512_maskz_mov_epi8(km, A);
                B = _mm512_maskz_mov_epi8(km, B);
            }
        } else {
            __m512i v = load4x16(wb + (kind == W_Q4_0 ? 2 : 4), (size_t)bbytes, nv);
            A = _mm512_and_si512(v, lo4);
            B = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
        }
        __m512 sp = _mm512_permutexvar_ps(pat, _mm512_castps128_ps512(_mm_loadu_ps(dsc + 4 * g)));
        uint8_t *o = dec + (size_t)g * GS;
        _mm512_storeu_si512(o, A);
        _mm512_storeu_si512(o + 64, B);
        _mm512_storeu_ps((float *)(o + 128), sp);
    }
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
        else if (kind == W_Q6_K)
            decode_q6k(dec, wr, K);
        else
            decode_q32(dec, wr, K, kind);
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

/* ---- Q4_0 / Q4_1 / Q8_0: big groups of 16 blocks ----
 *
 * For the 32-block types most of K is cut into "big groups" of 16 blocks held as 8 vectors:
 * vector j has, in int32 lane b, bytes 4j..4j+3 of block b (weights after the decode above;
 * activations in the same order). Eight dpbusd into one accumulator leave lane b with block
 * b's whole integer dot product, so the float work is one cvt, one mul (weight scale x
 * activation scale, both per-lane = per-block) and one fma per 16 blocks:
 *     acc = fma(cvt(s), d_w[b..b+15] * d_x[b..b+15], acc)
 * The blocks left over (K/32 mod 16) use the 4-block groups above; then the constant terms
 *     acc = fma(mn[i..i+15], ds[i..i+15], acc)   over all blocks, 16 at a time
 * and out = the sum of acc's 16 lanes by a fixed transposed tree (reduce16) that sums 16
 * outputs at once: rows are processed in blocks of 16, missing rows padded with zero vectors
 * (lanes of different outputs never mix, so padding does not change any result).
 * The integer sums are exact, so tiles may split them differently (the 4-row decode tile
 * uses two chains): only the float operations, the same for every tile, fix the bits. */

typedef struct {
    int nb, nbig, nsmall, nbp, pair;
    size_t q, sq, sdxp, d, ds, stride;      /* activation record */
    size_t dbig, dsmall, dsc, dmn, dstride; /* decoded weight row */
} b5_layout;

static b5_layout b5_layout_for(int K)
{
    b5_layout L;
    L.nb = K / 32;
    L.nbig = L.nb / 16;
    L.nsmall = (L.nb - 16 * L.nbig + 3) / 4;
    L.pair = L.nsmall > 0 && L.nb - 16 * L.nbig - 4 * (L.nsmall - 1) <= 2;
    L.nbp = (L.nb + 15) & ~15;
    L.q = 0;
    L.sq = (size_t)L.nbig * 512;
    L.sdxp = L.sq + (size_t)L.nsmall * 128;
    L.d = L.sdxp + (size_t)L.nsmall * 64;
    L.ds = L.d + (size_t)L.nbp * 4;
    L.stride = L.ds + (size_t)L.nbp * 4;
    L.dbig = 0;
    L.dsmall = (size_t)L.nbig * 512;
    L.dsc = L.dsmall + (size_t)L.nsmall * GS;
    L.dmn = L.dsc + (size_t)L.nbig * 64;
    L.dstride = L.dmn + (size_t)L.nbp * 4;
    return L;
}

static size_t b5_stride(int K)
{
    return b5_layout_for(K).stride;
}

/* A last small group of at most two blocks (K = 576: 16 + 2 blocks) is a "pair": its A and B
 * halves share one vector (A's blocks in bytes 0..31, B's in 32..63; the activation record
 * holds it the same way), so it costs one dpbusd instead of two. Its lanes 8..15 take the
 * scales of lanes 0..7. Every kernel of this level treats it so: the per-(t, n) order stays
 * one. */
INL int b5_pair(const b5_layout *L, int sg)
{
    return L->pair && sg == L->nsmall - 1;
}

INL __m512i small_dot(__m512i A, __m512i B, const uint8_t *xq, int pair)
{
    if (pair)
        return _mm512_dpbusd_epi32(_mm512_setzero_si512(),
                                   _mm512_inserti64x4(A, _mm512_castsi512_si256(B), 1),
                                   _mm512_loadu_si512(xq));
    __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), A, _mm512_loadu_si512(xq));
    return _mm512_dpbusd_epi32(s, B, _mm512_loadu_si512(xq + 64));
}

INL __m512 small_scale(__m512 ws, int pair)
{
    return pair ? _mm512_shuffle_f32x4(ws, ws, _MM_SHUFFLE(1, 0, 1, 0)) : ws;
}

static void b5_prep(uint8_t *rec, const float *x, int K)
{
    b5_layout L = b5_layout_for(K);
    memset(rec, 0, L.stride);
    float *d = (float *)(rec + L.d), *ds = (float *)(rec + L.ds);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
    uint8_t qb[32];
    for (int b = 0; b < L.nb; b++) {
        __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
        __m512 am = _mm512_max_ps(_mm512_and_ps(x0, absmask), _mm512_and_ps(x1, absmask));
        float amax = _mm512_reduce_max_ps(am);
        float db = amax / 127.0f;
        float id = db != 0.0f ? 1.0f / db : 0.0f;
        __m512 vid = _mm512_set1_ps(id);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, vid));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, vid));
        q0 = _mm512_max_epi32(_mm512_min_epi32(q0, lim), nlim);
        q1 = _mm512_max_epi32(_mm512_min_epi32(q1, lim), nlim);
        int s = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        _mm_storeu_si128((__m128i *)qb, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(qb + 16), _mm512_cvtepi32_epi8(q1));
        if (b < 16 * L.nbig) {
            uint8_t *g = rec + L.q + (size_t)(b / 16) * 512 + (size_t)(b % 16) * 4;
            for (int j = 0; j < 8; j++)
                memcpy(g + 64 * j, qb + 4 * j, 4);
        } else {
            int bs = b - 16 * L.nbig;
            uint8_t *g = rec + L.sq + (size_t)(bs / 4) * 128 + (size_t)(bs % 4) * 16;
            float *xs = (float *)(rec + L.sdxp) + 4 * bs;
            int pair = L.pair && bs / 4 == L.nsmall - 1;
            memcpy(g, qb, 16);
            memcpy(g + (pair ? 32 : 64), qb + 16, 16);
            _mm_storeu_ps(xs, _mm_set1_ps(db));
            if (pair)
                _mm_storeu_ps(xs + 8, _mm_set1_ps(db));
        }
        d[b] = db;
        ds[b] = db * (float)s;
    }
}

INL void dec_big_q4r(__m512i *Wo, const uint8_t *p, int bb)
{
    __m512i W[4];
    _Pragma("GCC unroll 16") for (int i = 0; i < 4; i++)
    {
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p + i * bb)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + (i + 4) * bb)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + (i + 8) * bb)), 2);
        W[i] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + (i + 12) * bb)), 3);
    }
    __m512i t0 = _mm512_unpacklo_epi32(W[0], W[1]), t1 = _mm512_unpackhi_epi32(W[0], W[1]);
    __m512i t2 = _mm512_unpacklo_epi32(W[2], W[3]), t3 = _mm512_unpackhi_epi32(W[2], W[3]);
    __m512i V[4] = {_mm512_unpacklo_epi64(t0, t2), _mm512_unpackhi_epi64(t0, t2),
                    _mm512_unpacklo_epi64(t1, t3), _mm512_unpackhi_epi64(t1, t3)};
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    _Pragma("GCC unroll 16") for (int j = 0; j < 4; j++)
    {
        Wo[j] = _mm512_and_si512(V[j], lo4);
        Wo[4 + j] = _mm512_and_si512(_mm512_srli_epi16(V[j], 4), lo4);
    }
}

INL void dec_big_q4(uint8_t *o, const uint8_t *p, int bb)
{
    __m512i W[8];
    dec_big_q4r(W, p, bb);
    _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) _mm512_storeu_si512(o + 64 * j, W[j]);
}

INL void dec_big_q8r(__m512i *Wo, const uint8_t *p)
{
    __m512i Z[8], a[4], b[4];
    _Pragma("GCC unroll 16") for (int i = 0; i < 8; i++) Z[i] = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + 34 * i))),
        _mm256_loadu_si256((const __m256i *)(p + 34 * (i + 8))), 1);
    _Pragma("GCC unroll 16") for (int k = 0; k < 4; k++)
    {
        a[k] = _mm512_unpacklo_epi32(Z[2 * k], Z[2 * k + 1]);
        b[k] = _mm512_unpackhi_epi32(Z[2 * k], Z[2 * k + 1]);
    }
    const __m512i ilo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i ihi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    __m512i E[4][2];
    _Pragma("GCC unroll 16") for (int h = 0; h < 2; h++)
    {
        E[0][h] = _mm512_unpacklo_epi64(a[2 * h], a[2 * h + 1]);
        E[1][h] = _mm512_unpackhi_epi64(a[2 * h], a[2 * h + 1]);
        E[2][h] = _mm512_unpacklo_epi64(b[2 * h], b[2 * h + 1]);
        E[3][h] = _mm512_unpackhi_epi64(b[2 * h], b[2 * h + 1]);
    }
    _Pragma("GCC unroll 16") for (int j = 0; j < 4; j++)
    {
        Wo[j] = _mm512_xor_si512(_mm512_permutex2var_epi64(E[j][0], ilo, E[j][1]), x80);
        Wo[4 + j] = _mm512_xor_si512(_mm512_permutex2var_epi64(E[j][0], ihi, E[j][1]), x80);
    }
}

INL void dec_big_q8(uint8_t *o, const uint8_t *p)
{
    __m512i W[8];
    dec_big_q8r(W, p);
    _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) _mm512_storeu_si512(o + 64 * j, W[j]);
}

static void b5_decode(uint8_t *dec, const uint8_t *w, const b5_layout *L, wkind kind)
{
    int bb = kind == W_Q4_0 ? 18 : kind == W_Q4_1 ? 20 : 34;
    float *dsc = (float *)(dec + L->dsc), *mn = (float *)(dec + L->dmn);
    float dtail[16];
    int b1 = 16 * L->nbig;
    for (int b0 = 0; b0 < L->nbp; b0 += 16) {
        __m512i h = gather_heads(w, b0, L->nb, bb);
        __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
        __m512 m;
        if (kind == W_Q4_1)
            m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h, 16)));
        else
            m = _mm512_mul_ps(d, _mm512_set1_ps(kind == W_Q4_0 ? -8.0f : -128.0f));
        _mm512_storeu_ps(b0 < b1 ? dsc + b0 : dtail, d);
        _mm512_storeu_ps(mn + b0, m);
    }
    for (int g = 0; g < L->nbig; g++) {
        const uint8_t *p = w + (size_t)16 * g * bb;
        if (kind == W_Q8_0)
            dec_big_q8(dec + (size_t)g * 512, p + 2);
        else
            dec_big_q4(dec + (size_t)g * 512, p + (kind == W_Q4_1 ? 4 : 2), bb);
    }
    const __m512i pat = _mm512_loadu_si512(pat4);
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    for (int sg = 0; sg < L->nsmall; sg++) {
        int nv = L->nb - b1 - 4 * sg < 4 ? L->nb - b1 - 4 * sg : 4;
        const uint8_t *wb = w + (size_t)(b1 + 4 * sg) * bb;
        __m512i A, B;
        if (kind == W_Q8_0) {
            const __m512i x80 = _mm512_set1_epi8((char)0x80);
            __mmask64 km = nv == 4 ? ~(__mmask64)0 : (__mmask64)((1ull << (16 * nv)) - 1);
            A = _mm512_maskz_mov_epi8(km, _mm512_xor_si512(load4x16(wb + 2, 34, nv), x80));
            B = _mm512_maskz_mov_epi8(km, _mm512_xor_si512(load4x16(wb + 18, 34, nv), x80));
        } else {
            __m512i v = load4x16(wb + (kind == W_Q4_0 ? 2 : 4), (size_t)bb, nv);
            A = _mm512_and_si512(v, lo4);
            B = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
        }
        uint8_t *o = dec + L->dsmall + (size_t)sg * GS;
        _mm512_storeu_si512(o, A);
        _mm512_storeu_si512(o + 64, B);
        _mm512_storeu_ps(
            (float *)(o + 128),
            _mm512_permutexvar_ps(pat, _mm512_castps128_ps512(_mm_loadu_ps(dtail + 4 * sg))));
    }
}

/* Q4_1 rows (the default model's layers) decode from contiguous loads: a 20-byte block is 5
 * dwords (d|m, then 4 dwords of nibbles), so one dword permute per 128-byte window picks the
 * same dword of every block in it. 16 blocks (320 bytes) are 3 windows: blocks 0-5 from bytes
 * 0-127, 6-11 from 120-247, 12-15 from 240-319. No gather, no byte past the row is read. */
static const int32_t q41_idx[5][16] = {{0, 5, 10, 15, 20, 25, 0, 5, 10, 15, 20, 25, 0, 5, 10, 15},
                                       {1, 6, 11, 16, 21, 26, 1, 6, 11, 16, 21, 26, 1, 6, 11, 16},
                                       {2, 7, 12, 17, 22, 27, 2, 7, 12, 17, 22, 27, 2, 7, 12, 17},
                                       {3, 8, 13, 18, 23, 28, 3, 8, 13, 18, 23, 28, 3, 8, 13, 18},
                                       {4, 9, 14, 19, 24, 29, 4, 9, 14, 19, 24, 29, 4, 9, 14, 19}};
static const __mmask16 q41_win[3] = {0x003f, 0x0fc0, 0xf000};

INL __m512i q41_pick(int c, __m512i r0, __m512i r1, __m512i r2, __m512i r3, __m512i r4, __m512i r5)
{
    __m512i idx = _mm512_loadu_si512(q41_idx[c]);
    return _mm512_or_si512(
        _mm512_or_si512(_mm512_maskz_permutex2var_epi32(q41_win[0], r0, idx, r1),
                        _mm512_maskz_permutex2var_epi32(q41_win[1], r2, idx, r3)),
        _mm512_maskz_permutex2var_epi32(q41_win[2], r4, idx, r5));
}

/* T = 1 on Q4_1 (every decode step of the default model): decode and dot product fused, the
 * weights never leave registers. The float operations are exactly those of bcore (big groups,
 * then small groups, then the constant terms), so the result is bitwise the one a batch gets. */
static void row1_q41(__m512 *res, const uint8_t *w, const uint8_t *ap, const b5_layout *L,
                     float *mn)
{
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    const __m512i dm = _mm512_loadu_si512(dm_words);
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < L->nbig; g++) {
        const uint8_t *p = w + (size_t)320 * g, *xq = ap + L->q + (size_t)g * 512;
        __m512i r0 = _mm512_loadu_si512(p), r1 = _mm512_loadu_si512(p + 64);
        __m512i r2 = _mm512_loadu_si512(p + 120), r3 = _mm512_loadu_si512(p + 184);
        __m512i r4 = _mm512_loadu_si512(p + 240), r5 = _mm512_maskz_loadu_epi32(0x000f, p + 304);
        __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
        _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++)
        {
            __m512i v = q41_pick(1 + j, r0, r1, r2, r3, r4, r5);
            s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(v, lo4), _mm512_loadu_si512(xq + 64 * j));
            s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4),
                                     _mm512_loadu_si512(xq + 64 * (4 + j)));
        }
        __m512i h = _mm512_permutexvar_epi16(dm, q41_pick(0, r0, r1, r2, r3, r4, r5));
        __m512 d = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
        _mm512_storeu_ps(mn + 16 * g, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)));
        __m512 xs = _mm512_loadu_ps((const float *)(ap + L->d) + 16 * g);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), _mm512_mul_ps(d, xs),
                              acc);
    }
    const __m512i is = _mm512_setr_epi32(1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19);
    const __m512i id = _mm512_setr_epi32(0, 0, 0, 0, 5, 5, 5, 5, 10, 10, 10, 10, 15, 15, 15, 15);
    int b1 = 16 * L->nbig;
    for (int sg = 0; sg < L->nsmall; sg++) {
        int nv = L->nb - b1 - 4 * sg < 4 ? L->nb - b1 - 4 * sg : 4;
        const uint8_t *p = w + (size_t)(b1 + 4 * sg) * 20, *xq = ap + L->sq + (size_t)sg * 128;
        int nd = 5 * nv;
        __m512i r0 = _mm512_maskz_loadu_epi32((__mmask16)(nd >= 16 ? 0xffff : (1u << nd) - 1), p);
        __m512i r1 =
            _mm512_maskz_loadu_epi32((__mmask16)(nd > 16 ? (1u << (nd - 16)) - 1 : 0), p + 64);
        __mmask16 kv = (__mmask16)((1u << (4 * nv)) - 1);
        __m512i v = _mm512_maskz_permutex2var_epi32(kv, r0, is, r1);
        __m512i h = _mm512_maskz_permutex2var_epi32(kv, r0, id, r1);
        int pair = b5_pair(L, sg);
        __m512i s = small_dot(_mm512_and_si512(v, lo4),
                              _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4), xq, pair);
        __m512 ws = small_scale(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)), pair);
        __m512 xs = _mm512_loadu_ps((const float *)(ap + L->sdxp) + 16 * sg);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(ws, xs), acc);
        __m512 mp = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h, 16)));
        _mm_storeu_ps(mn + b1 + 4 * sg,
                      _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, mp)));
    }
    for (int b = L->nb; b < L->nbp; b++)
        mn[b] = 0.0f;
    for (int i = 0; i < L->nbp; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(mn + i),
                              _mm512_loadu_ps((const float *)(ap + L->ds) + i), acc);
    *res = acc;
}

/* Q4_1 with 2 <= T <= 8 (small trees, short prefills): decode and dot
 * products fused, the weights never leave registers and serve all TT tokens. The float
 * operations per (t, n) are exactly those of bcore (big groups, then small groups, then the
 * constant terms), so results are bitwise the ones any other tile produces. */
#define ROWF(TT)                                                                                   \
    static void rowf_q41_##TT(__m512 *res, const uint8_t *w, const uint8_t *const *ap,             \
                              const b5_layout *L, float *mn)                                       \
    {                                                                                              \
        const __m512i lo4 = _mm512_set1_epi8(0x0f);                                                \
        const __m512i dm = _mm512_loadu_si512(dm_words);                                           \
        __m512 acc[TT];                                                                            \
        _Pragma("GCC unroll 8") for (int t = 0; t < TT; t++) acc[t] = _mm512_setzero_ps();         \
        for (int g = 0; g < L->nbig; g++) {                                                        \
            const uint8_t *p = w + (size_t)320 * g;                                                \
            __m512i r0 = _mm512_loadu_si512(p), r1 = _mm512_loadu_si512(p + 64);                   \
            __m512i r2 = _mm512_loadu_si512(p + 120), r3 = _mm512_loadu_si512(p + 184);            \
            __m512i r4 = _mm512_loadu_si512(p + 240),                                              \
                    r5 = _mm512_maskz_loadu_epi32(0x000f, p + 304);                                \
            __m512i W[8];                                                                          \
            _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++)                                    \
            {                                                                                      \
                __m512i v = q41_pick(1 + j, r0, r1, r2, r3, r4, r5);                               \
                W[j] = _mm512_and_si512(v, lo4);                                                   \
                W[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);                         \
            }                                                                                      \
            __m512i h = _mm512_permutexvar_epi16(dm, q41_pick(0, r0, r1, r2, r3, r4, r5));         \
            __m512 d = _mm512_cvtph_ps(_mm512_castsi512_si256(h));                                 \
            _mm512_storeu_ps(mn + 16 * g, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)));       \
            _Pragma("GCC unroll 8") for (int t = 0; t < TT; t++)                                   \
            {                                                                                      \
                const uint8_t *xq = ap[t] + L->q + (size_t)g * 512;                                \
                __m512i s0 =                                                                       \
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0], _mm512_loadu_si512(xq));     \
                __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[4],                     \
                                                 _mm512_loadu_si512(xq + 256));                    \
                _Pragma("GCC unroll 4") for (int j = 1; j < 4; j++)                                \
                {                                                                                  \
                    s0 = _mm512_dpbusd_epi32(s0, W[j], _mm512_loadu_si512(xq + 64 * j));           \
                    s1 = _mm512_dpbusd_epi32(s1, W[4 + j], _mm512_loadu_si512(xq + 256 + 64 * j)); \
                }                                                                                  \
                __m512 xs = _mm512_loadu_ps((const float *)(ap[t] + L->d) + 16 * g);               \
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)),             \
                                         _mm512_mul_ps(d, xs), acc[t]);                            \
            }                                                                                      \
        }                                                                                          \
        const __m512i is =                                                                         \
            _mm512_setr_epi32(1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19);             \
        const __m512i id =                                                                         \
            _mm512_setr_epi32(0, 0, 0, 0, 5, 5, 5, 5, 10, 10, 10, 10, 15, 15, 15, 15);             \
        int b1 = 16 * L->nbig;                                                                     \
        for (int sg = 0; sg < L->nsmall; sg++) {                                                   \
            int nv = L->nb - b1 - 4 * sg < 4 ? L->nb - b1 - 4 * sg : 4;                            \
            const uint8_t *p = w + (size_t)(b1 + 4 * sg) * 20;                                     \
            int nd = 5 * nv;                                                                       \
            __m512i r0 =                                                                           \
                _mm512_maskz_loadu_epi32((__mmask16)(nd >= 16 ? 0xffff : (1u << nd) - 1), p);      \
            __m512i r1 = _mm512_maskz_loadu_epi32(                                                 \
                (__mmask16)(nd > 16 ? (1u << (nd - 16)) - 1 : 0), p + 64);                         \
            __mmask16 kv = (__mmask16)((1u << (4 * nv)) - 1);                                      \
            __m512i v = _mm512_maskz_permutex2var_epi32(kv, r0, is, r1);                           \
            __m512i h = _mm512_maskz_permutex2var_epi32(kv, r0, id, r1);                           \
            __m512i wa = _mm512_and_si512(v, lo4);                                                 \
            __m512i wb = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);                           \
            int pair = b5_pair(L, sg);                                                             \
            __m512 ws = small_scale(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)), pair);              \
            _Pragma("GCC unroll 8") for (int t = 0; t < TT; t++)                                   \
            {                                                                                      \
                const uint8_t *xq = ap[t] + L->sq + (size_t)sg * 128;                              \
                __m512i sv = small_dot(wa, wb, xq, pair);                                          \
                __m512 xs = _mm512_loadu_ps((const float *)(ap[t] + L->sdxp) + 16 * sg);           \
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sv), _mm512_mul_ps(ws, xs), acc[t]);   \
            }                                                                                      \
            __m512 mp = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h, 16)));          \
            _mm_storeu_ps(mn + b1 + 4 * sg,                                                        \
                          _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, mp)));           \
        }                                                                                          \
        for (int b = L->nb; b < L->nbp; b++)                                                       \
            mn[b] = 0.0f;                                                                          \
        for (int i = 0; i < L->nbp; i += 16) {                                                     \
            __m512 m = _mm512_loadu_ps(mn + i);                                                    \
            _Pragma("GCC unroll 8") for (int t = 0; t < TT; t++) acc[t] =                          \
                _mm512_fmadd_ps(m, _mm512_loadu_ps((const float *)(ap[t] + L->ds) + i), acc[t]);   \
        }                                                                                          \
        _Pragma("GCC unroll 8") for (int t = 0; t < TT; t++) res[t] = acc[t];                      \
    }
ROWF(1)
ROWF(2)
ROWF(3)
ROWF(4)
ROWF(5)
ROWF(6)
ROWF(7)
ROWF(8)
typedef void (*rowf_fn)(__m512 *, const uint8_t *, const uint8_t *const *, const b5_layout *,
                        float *);
static const rowf_fn rowf_q41[9] = {NULL,       rowf_q41_1, rowf_q41_2, rowf_q41_3, rowf_q41_4,
                                    rowf_q41_5, rowf_q41_6, rowf_q41_7, rowf_q41_8};

/* Q8_0 / Q4_0 fused (the output head at every T): as rowf_q41, weights decoded into
 * registers once per tile of up to 8 tokens; the same float operations as bcore. */
#define ROWG(TT, KIND, NAME)                                                                       \
    static void NAME##_##TT(__m512 *res, const uint8_t *w, const uint8_t *const *ap,               \
                            const b5_layout *L, float *mn)                                         \
    {                                                                                              \
        const int bb = KIND == W_Q8_0 ? 34 : 18;                                                   \
        float *dl = mn + L->nbp;                                                                   \
        for (int b0 = 0; b0 < L->nbp; b0 += 16) {                                                  \
            __m512i h = gather_heads(w, b0, L->nb, bb);                                            \
            __m512 d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));                                  \
            _mm512_storeu_ps(dl + b0, d);                                                          \
            _mm512_storeu_ps(mn + b0,                                                              \
                             _mm512_mul_ps(d, _mm512_set1_ps(KIND == W_Q4_0 ? -8.0f : -128.0f)));  \
        }                                                                                          \
        __m512 acc[TT];                                                                            \
        _Pragma("GCC unroll 8") for (int t = 0; t < TT; t++) acc[t] = _mm512_setzero_ps();         \
        for (int g = 0; g < L->nbig; g++) {                                                        \
            const uint8_t *p = w + (size_t)16 * g * bb;                                            \
            __m512i W[8];                                                                          \
            if (KIND == W_Q8_0)                                                                    \
                dec_big_q8r(W, p + 2);                                                             \
            else                                                                                   \
                dec_big_q4r(W, p + 2, bb);                                                         \
            __m512 d = _mm512_loadu_ps(dl + 16 * g);                                               \
            _Pragma("GCC unroll 8") for (int t = 0; t < TT; t++)                                   \
            {                                                                                      \
                const uint8_t *xq = ap[t] + L->q + (size_t)g * 512;                                \
                __m512i s0 =                                                                       \
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0], _mm512_loadu_si512(xq));     \
                __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[4],                     \
                                                 _mm512_loadu_si512(xq + 256));                    \
                _Pragma("GCC unroll 4") for (int j = 1; j < 4; j++)                                \
                {                                                                                  \
                    s0 = _mm512_dpbusd_epi32(s0, W[j], _mm512_loadu_si512(xq + 64 * j));           \
                    s1 = _mm512_dpbusd_epi32(s1, W[4 + j], _mm512_loadu_si512(xq + 256 + 64 * j)); \
                }                                                                                  \
                __m512 xs = _mm512_loadu_ps((const float *)(ap[t] + L->d) + 16 * g);               \
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)),             \
                                         _mm512_mul_ps(d, xs), acc[t]);                            \
            }                                                                                      \
        }                                                                                          \
        const __m512i pat = _mm512_loadu_si512(pat4);                                              \
        const __m512i lo4 = _mm512_set1_epi8(0x0f);                                                \
        int b1 = 16 * L->nbig;                                                                     \
        for (int sg = 0; sg < L->nsmall; sg++) {                                                   \
            int nv = L->nb - b1 - 4 * sg < 4 ? L->nb - b1 - 4 * sg : 4;                            \
            const uint8_t *wb = w + (size_t)(b1 + 4 * sg) * bb;                                    \
            __m512i A, B;                                                                          \
            if (KIND == W_Q8_0) {                                                                  \
                const __m512i x80 = _mm512_set1_epi8((char)0x80);                                  \
                __mmask64 km = nv == 4 ? ~(__mmask64)0 : (__mmask64)((1ull << (16 * nv)) - 1);     \
                A = _mm512_maskz_mov_epi8(km, _mm512_xor_si512(load4x16(wb + 2, 34, nv), x80));    \
                B = _mm512_maskz_mov_epi8(km, _mm512_xor_si512(load4x16(wb + 18, 34, nv), x80));   \
            } else {                                                                               \
                __m512i v = load4x16(wb + 2, (size_t)bb, nv);                                      \
                A = _mm512_and_si512(v, lo4);                                                      \
                B = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);                                \
            }                                                                                      \
            int pair = b5_pair(L, sg);                                                             \
            __m512 wsp =                                                                           \
                small_scale(_mm512_permutexvar_ps(                                                 \
                                pat, _mm512_castps128_ps512(_mm_loadu_ps(dl + b1 + 4 * sg))),      \
                            pair);                                                                 \
            _Pragma("GCC unroll 8") for (int t = 0; t < TT; t++)                                   \
            {                                                                                      \
                const uint8_t *xq = ap[t] + L->sq + (size_t)sg * 128;                              \
                __m512i sv = small_dot(A, B, xq, pair);                                            \
                __m512 xs = _mm512_loadu_ps((const float *)(ap[t] + L->sdxp) + 16 * sg);           \
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sv), _mm512_mul_ps(wsp, xs), acc[t]);  \
            }                                                                                      \
        }                                                                                          \
        for (int i = 0; i < L->nbp; i += 16) {                                                     \
            __m512 m = _mm512_loadu_ps(mn + i);                                                    \
            _Pragma("GCC unroll 8") for (int t = 0; t < TT; t++) acc[t] =                          \
                _mm512_fmadd_ps(m, _mm512_loadu_ps((const float *)(ap[t] + L->ds) + i), acc[t]);   \
        }                                                                                          \
        _Pragma("GCC unroll 8") for (int t = 0; t < TT; t++) res[t] = acc[t];                      \
    }
ROWG(1, W_Q8_0, rowf_q80)
ROWG(2, W_Q8_0, rowf_q80)
ROWG(3, W_Q8_0, rowf_q80)
ROWG(4, W_Q8_0, rowf_q80)
ROWG(5, W_Q8_0, rowf_q80)
ROWG(6, W_Q8_0, rowf_q80)
ROWG(7, W_Q8_0, rowf_q80)
ROWG(8, W_Q8_0, rowf_q80)
static const rowf_fn rowf_q80[9] = {NULL,       rowf_q80_1, rowf_q80_2, rowf_q80_3, rowf_q80_4,
                                    rowf_q80_5, rowf_q80_6, rowf_q80_7, rowf_q80_8};
ROWG(1, W_Q4_0, rowf_q40)
ROWG(2, W_Q4_0, rowf_q40)
ROWG(3, W_Q4_0, rowf_q40)
ROWG(4, W_Q4_0, rowf_q40)
ROWG(5, W_Q4_0, rowf_q40)
ROWG(6, W_Q4_0, rowf_q40)
ROWG(7, W_Q4_0, rowf_q40)
ROWG(8, W_Q4_0, rowf_q40)
static const rowf_fn rowf_q40[9] = {NULL,       rowf_q40_1, rowf_q40_2, rowf_q40_3, rowf_q40_4,
                                    rowf_q40_5, rowf_q40_6, rowf_q40_7, rowf_q40_8};

/* acc[r][t] for RR decoded rows (dec, dec + dst, ...) x TT activation records ap[t]. */
#define BCORE(RR, TT)                                                                              \
    static void bcore_##RR##_##TT(__m512 *res, const uint8_t *const *ap, const uint8_t *dec,       \
                                  size_t dst, const b5_layout *L)                                  \
    {                                                                                              \
        __m512 acc[RR][TT];                                                                        \
        _Pragma("GCC unroll 16") for (int r = 0; r < RR; r++)                                      \
        {                                                                                          \
            _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) acc[r][t] = _mm512_setzero_ps(); \
        }                                                                                          \
        for (int g = 0; g < L->nbig; g++) {                                                        \
            _Pragma("GCC unroll 16") for (int r = 0; r < RR; r++)                                  \
            {                                                                                      \
                const uint8_t *o = dec + (size_t)r * dst + (size_t)g * 512;                        \
                __m512i W[8];                                                                      \
                _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) W[j] =                         \
                    _mm512_loadu_si512(o + 64 * j);                                                \
                __m512 wsc =                                                                       \
                    _mm512_loadu_ps((const float *)(dec + (size_t)r * dst + L->dsc) + 16 * g);     \
                _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++)                              \
                {                                                                                  \
                    const uint8_t *xq = ap[t] + L->q + (size_t)g * 512;                            \
                    __m512i s;                                                                     \
                    if (TT == 1) {                                                                 \
                        __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0],             \
                                                         _mm512_loadu_si512(xq));                  \
                        __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[1],             \
                                                         _mm512_loadu_si512(xq + 64));             \
                        _Pragma("GCC unroll 8") for (int j = 2; j < 8; j += 2)                     \
                        {                                                                          \
                            s0 = _mm512_dpbusd_epi32(s0, W[j], _mm512_loadu_si512(xq + 64 * j));   \
                            s1 = _mm512_dpbusd_epi32(s1, W[j + 1],                                 \
                                                     _mm512_loadu_si512(xq + 64 * j + 64));        \
                        }                                                                          \
                        s = _mm512_add_epi32(s0, s1);                                              \
                    } else {                                                                       \
                        s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0],                      \
                                                _mm512_loadu_si512(xq));                           \
                        _Pragma("GCC unroll 8") for (int j = 1; j < 8; j++) s =                    \
                            _mm512_dpbusd_epi32(s, W[j], _mm512_loadu_si512(xq + 64 * j));         \
                    }                                                                              \
                    __m512 xs = _mm512_loadu_ps((const float *)(ap[t] + L->d) + 16 * g);           \
                    acc[r][t] =                                                                    \
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(wsc, xs), acc[r][t]); \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (int g = 0; g < L->nsmall; g++) {                                                      \
            _Pragma("GCC unroll 16") for (int r = 0; r < RR; r++)                                  \
            {                                                                                      \
                const uint8_t *o = dec + (size_t)r * dst + L->dsmall + (size_t)g * GS;             \
                __m512i wa = _mm512_loadu_si512(o), wb = _mm512_loadu_si512(o + 64);               \
                int pair = b5_pair(L, g);                                                          \
                __m512 ws = small_scale(_mm512_loadu_ps((const float *)(o + 128)), pair);          \
                _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++)                              \
                {                                                                                  \
                    const uint8_t *xq = ap[t] + L->sq + (size_t)g * 128;                           \
                    __m512i s = small_dot(wa, wb, xq, pair);                                       \
                    __m512 xs = _mm512_loadu_ps((const float *)(ap[t] + L->sdxp) + 16 * g);        \
                    acc[r][t] =                                                                    \
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(ws, xs), acc[r][t]);  \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (int i = 0; i < L->nbp; i += 16) {                                                     \
            _Pragma("GCC unroll 16") for (int r = 0; r < RR; r++)                                  \
            {                                                                                      \
                __m512 m = _mm512_loadu_ps((const float *)(dec + (size_t)r * dst + L->dmn) + i);   \
                _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) acc[r][t] = _mm512_fmadd_ps( \
                    m, _mm512_loadu_ps((const float *)(ap[t] + L->ds) + i), acc[r][t]);            \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 16") for (int r = 0; r < RR; r++)                                      \
        {                                                                                          \
            _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) res[r * TT + t] = acc[r][t];     \
        }                                                                                          \
    }

BCORE(4, 1)
BCORE(1, 1)
BCORE(1, 2)
BCORE(1, 3)
BCORE(1, 4)
BCORE(1, 5)
BCORE(1, 6)
BCORE(1, 7)
BCORE(1, 8)

typedef void (*bcore_fn)(__m512 *, const uint8_t *const *, const uint8_t *, size_t,
                         const b5_layout *);
static const bcore_fn bcores[9] = {NULL,      bcore_1_1, bcore_1_2, bcore_1_3, bcore_1_4,
                                   bcore_1_5, bcore_1_6, bcore_1_7, bcore_1_8};

/* Lane n of the result = the sum of the 16 lanes of v[n], by a fixed tree: halves, quarters,
 * pairs, then the last pair, each step a lane-wise add of two shuffles. */
INL __m512 reduce16(const __m512 *v)
{
    __m512 u[8], w[4];
    _Pragma("GCC unroll 16") for (int i = 0; i < 8; i++)
    {
        __m512 a = v[2 * i], b = v[2 * i + 1];
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    _Pragma("GCC unroll 16") for (int i = 0; i < 4; i++)
    {
        __m512 a = u[2 * i], b = u[2 * i + 1];
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    __m512 s0 = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 s1 = _mm512_add_ps(_mm512_shuffle_ps(w[2], w[3], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_ps(w[2], w[3], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 r = _mm512_add_ps(_mm512_shuffle_ps(s0, s1, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(s0, s1, _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(idx, r);
}

static void rows_b(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                   size_t ws, int n0, int n1, int K, void *scratch, wkind kind)
{
    b5_layout L = b5_layout_for(K);
    uint8_t *dec = scratch;
    __m512 *accb = (__m512 *)(dec + 16 * L.dstride); /* [8 tokens][16 rows] */
    for (int nb0 = n0; nb0 < n1; nb0 += 16) {
        int R = n1 - nb0 < 16 ? n1 - nb0 : 16;
        if (T == 1 && kind == W_Q4_1) {
            for (int r = 0; r < R; r++) {
                if (nb0 + 16 + r < ldo) {
                    const char *pf = (const char *)(w + (size_t)(nb0 + 16 + r) * ws);
                    for (size_t off = 0; off < ws; off += 64)
                        _mm_prefetch(pf + off, _MM_HINT_T0);
                }
                row1_q41(&accb[r], w + (size_t)(nb0 + r) * ws, act, &L, (float *)dec);
            }
            for (int r = R; r < 16; r++)
                accb[r] = _mm512_setzero_ps();
            _mm512_mask_storeu_ps(out + nb0, (__mmask16)((1u << R) - 1), reduce16(accb));
            continue;
        }
        if (kind == W_Q4_1 || T <= 8) {
            /* fused: tiles of up to 8 tokens, the 16 rows stay in L1 between tiles (Q8_0 and
             * Q4_0 decode dearer, so for them more tokens go through the decoded-row path) */
            const rowf_fn *rf = kind == W_Q4_1 ? rowf_q41 : kind == W_Q8_0 ? rowf_q80 : rowf_q40;
            for (int t0 = 0; t0 < T; t0 += 8) {
                int TT = T - t0 < 8 ? T - t0 : 8;
                const uint8_t *ap[8];
                for (int t = 0; t < TT; t++)
                    ap[t] = act + (size_t)(t0 + t) * as;
                for (int r = 0; r < R; r++) {
                    if (t0 == 0 && nb0 + 16 + r < ldo) {
                        const char *pf = (const char *)(w + (size_t)(nb0 + 16 + r) * ws);
                        for (size_t off = 0; off < ws; off += 64)
                            _mm_prefetch(pf + off, _MM_HINT_T0);
                    }
                    __m512 res[8];
                    rf[TT](res, w + (size_t)(nb0 + r) * ws, ap, &L, (float *)dec);
                    for (int t = 0; t < TT; t++)
                        accb[t * 16 + r] = res[t];
                }
                __mmask16 km = (__mmask16)((1u << R) - 1);
                for (int t = 0; t < TT; t++) {
                    for (int r = R; r < 16; r++)
                        accb[t * 16 + r] = _mm512_setzero_ps();
                    _mm512_mask_storeu_ps(out + (size_t)(t0 + t) * ldo + nb0, km,
                                          reduce16(accb + t * 16));
                }
            }
            continue;
        }
        for (int r = 0; r < R; r++) {
            if (nb0 + 16 + r < ldo) { /* ldo == N: rows past the task's own exist too */
                const char *pf = (const char *)(w + (size_t)(nb0 + 16 + r) * ws);
                for (size_t off = 0; off < ws; off += 64)
                    _mm_prefetch(pf + off, _MM_HINT_T0);
            }
            b5_decode(dec + (size_t)r * L.dstride, w + (size_t)(nb0 + r) * ws, &L, kind);
        }
        for (int t = 0; t < 8; t++) /* rows missing from a short block sum to 0 */
            for (int r = R; r < 16; r++)
                accb[t * 16 + r] = _mm512_setzero_ps();
        for (int t0 = 0; t0 < T; t0 += 8) {
            int TT = T - t0 < 8 ? T - t0 : 8;
            const uint8_t *ap[8];
            for (int t = 0; t < TT; t++)
                ap[t] = act + (size_t)(t0 + t) * as;
            __m512 res[8];
            if (TT == 1) {
                int r = 0;
                for (; r + 4 <= R; r += 4) {
                    bcore_4_1(res, ap, dec + (size_t)r * L.dstride, L.dstride, &L);
                    for (int i = 0; i < 4; i++)
                        accb[r + i] = res[i];
                }
                for (; r < R; r++)
                    bcore_1_1(&accb[r], ap, dec + (size_t)r * L.dstride, L.dstride, &L);
            } else {
                for (int r = 0; r < R; r++) {
                    bcores[TT](res, ap, dec + (size_t)r * L.dstride, L.dstride, &L);
                    for (int t = 0; t < TT; t++)
                        accb[t * 16 + r] = res[t];
                }
            }
            __mmask16 km = (__mmask16)((1u << R) - 1);
            for (int t = 0; t < TT; t++)
                _mm512_mask_storeu_ps(out + (size_t)(t0 + t) * ldo + nb0, km,
                                      reduce16(accb + t * 16));
        }
    }
}

#define ROWS_B(name, kind)                                                                         \
    static void name(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,  \
                     size_t ws, int n0, int n1, int K, void *scratch)                              \
    {                                                                                              \
        rows_b(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, kind);                             \
    }
ROWS_B(rows_b_q4_0, W_Q4_0)
ROWS_B(rows_b_q4_1, W_Q4_1)
ROWS_B(rows_b_q8_0, W_Q8_0)

/* ---- packed rows (Q4_1, Q8_0): the backend's own copy of a weight matrix ----
 *
 * At model load the CPU backend repacks Q4_1 and Q8_0 matrices (kern_backend.pack) into the
 * order the kernels above consume, so a kernel reads each weight once with plain loads and no
 * byte shuffling. A packed row has the file row's size (20 or 34 bytes per block):
 *   big group g (16 blocks) at 320g (Q4_1) / 544g (Q8_0):
 *     Q4_1: V0..V3 (64 B each; int32 lane b of Vj = nibble bytes 4j..4j+3 of block b: low
 *           nibbles are elements 4j..4j+3, high nibbles 16+4j..), then d[16], m[16] (f16)
 *     Q8_0: W0..W7 (64 B each; lane b of Wj = bytes 4j..4j+3 of block b, xor 0x80), d[16]
 *   then the tail groups of nv <= 4 blocks, one after the other:
 *     Q4_1: the nv blocks' 16 nibble bytes back to back, d[nv], m[nv]       (20 nv bytes)
 *     Q8_0: elements 0..15 of each block (xor 0x80), elements 16..31, d[nv] (34 nv bytes)
 * The kernels apply exactly the float operations of rowf_q41 / rowf_q80 (big groups, tail
 * groups, constant terms; one accumulator per (t, n)), so packed and file-layout weights give
 * bitwise the same results (tests/test_kernels.c compares them with memcmp). */

static void pack_rows_q41(uint8_t *dst, const uint8_t *src, int n_rows, int K)
{
    int nb = K / 32, nbig = nb / 16;
    size_t rb = (size_t)nb * 20;
    for (int n = 0; n < n_rows; n++) {
        const uint8_t *s = src + (size_t)n * rb;
        uint8_t *o = dst + (size_t)n * rb;
        for (int g = 0; g < nbig; g++, o += 320) {
            const uint8_t *blk = s + (size_t)g * 320;
            for (int b = 0; b < 16; b++) {
                for (int j = 0; j < 4; j++)
                    memcpy(o + 64 * j + 4 * b, blk + 20 * b + 4 + 4 * j, 4);
                memcpy(o + 256 + 2 * b, blk + 20 * b, 2);
                memcpy(o + 288 + 2 * b, blk + 20 * b + 2, 2);
            }
        }
        for (int b0 = 16 * nbig; b0 < nb; b0 += 4) {
            int nv = nb - b0 < 4 ? nb - b0 : 4;
            for (int b = 0; b < nv; b++) {
                const uint8_t *blk = s + (size_t)(b0 + b) * 20;
                memcpy(o + 16 * b, blk + 4, 16);
                memcpy(o + 16 * nv + 2 * b, blk, 2);
                memcpy(o + 18 * nv + 2 * b, blk + 2, 2);
            }
            o += 20 * nv;
        }
    }
}

static void pack_rows_q80(uint8_t *dst, const uint8_t *src, int n_rows, int K)
{
    int nb = K / 32, nbig = nb / 16;
    size_t rb = (size_t)nb * 34;
    for (int n = 0; n < n_rows; n++) {
        const uint8_t *s = src + (size_t)n * rb;
        uint8_t *o = dst + (size_t)n * rb;
        for (int g = 0; g < nbig; g++, o += 544) {
            const uint8_t *blk = s + (size_t)g * 544;
            for (int b = 0; b < 16; b++) {
                for (int j = 0; j < 8; j++)
                    for (int i = 0; i < 4; i++)
                        o[64 * j + 4 * b + i] = blk[34 * b + 2 + 4 * j + i] ^ 0x80;
                memcpy(o + 512 + 2 * b, blk + 34 * b, 2);
            }
        }
        for (int b0 = 16 * nbig; b0 < nb; b0 += 4) {
            int nv = nb - b0 < 4 ? nb - b0 : 4;
            for (int b = 0; b < nv; b++) {
                const uint8_t *blk = s + (size_t)(b0 + b) * 34;
                for (int i = 0; i < 16; i++) {
                    o[16 * b + i] = blk[2 + i] ^ 0x80;
                    o[16 * nv + 16 * b + i] = blk[18 + i] ^ 0x80;
                }
                memcpy(o + 32 * nv + 2 * b, blk, 2);
            }
            o += 34 * nv;
        }
    }
}

/* The per-token work of one big group (16 blocks, 8 vectors W) and of one tail group: the
 * float operations of rowf_q41 / rowf_q80. */
#define P_BIG_TOKENS(TT)                                                                           \
    _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++)                                          \
    {                                                                                              \
        const uint8_t *xq = ap[t] + L->q + (size_t)g * 512;                                        \
        __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0], _mm512_loadu_si512(xq));    \
        __m512i s1 =                                                                               \
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[4], _mm512_loadu_si512(xq + 256));       \
        _Pragma("GCC unroll 4") for (int j = 1; j < 4; j++)                                        \
        {                                                                                          \
            s0 = _mm512_dpbusd_epi32(s0, W[j], _mm512_loadu_si512(xq + 64 * j));                   \
            s1 = _mm512_dpbusd_epi32(s1, W[4 + j], _mm512_loadu_si512(xq + 256 + 64 * j));         \
        }                                                                                          \
        __m512 xs = _mm512_loadu_ps((const float *)(ap[t] + L->d) + 16 * g);                       \
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)),                     \
                                 _mm512_mul_ps(d, xs), acc[t]);                                    \
    }

#define P_TAIL_TOKENS(TT)                                                                          \
    _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++)                                          \
    {                                                                                              \
        const uint8_t *xq = ap[t] + L->sq + (size_t)sg * 128;                                      \
        __m512i sv = small_dot(wa, wb, xq, pair);                                                  \
        __m512 xs = _mm512_loadu_ps((const float *)(ap[t] + L->sdxp) + 16 * sg);                   \
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sv), _mm512_mul_ps(ws, xs), acc[t]);           \
    }

#define P_CONST_TOKENS(TT)                                                                         \
    for (int i = 0; i < L->nbp; i += 16) {                                                         \
        __m512 m = _mm512_loadu_ps(mn + i);                                                        \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) acc[t] =                             \
            _mm512_fmadd_ps(m, _mm512_loadu_ps((const float *)(ap[t] + L->ds) + i), acc[t]);       \
    }                                                                                              \
    _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) res[(size_t)t * rs] = acc[t];

INL __mmask64 bytes_mask(int n)
{
    return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
}

#define PROW_Q41(TT)                                                                               \
    static void prow_q41_##TT(__m512 *res, int rs, const uint8_t *w, const uint8_t *const *ap,     \
                              const b5_layout *L, float *mn)                                       \
    {                                                                                              \
        const __m512i lo4 = _mm512_set1_epi8(0x0f);                                                \
        __m512 acc[TT];                                                                            \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) acc[t] = _mm512_setzero_ps();        \
        for (int g = 0; g < L->nbig; g++) {                                                        \
            const uint8_t *p = w + (size_t)320 * g;                                                \
            __m512i W[8];                                                                          \
            _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++)                                    \
            {                                                                                      \
                __m512i v = _mm512_loadu_si512(p + 64 * j);                                        \
                W[j] = _mm512_and_si512(v, lo4);                                                   \
                W[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);                         \
            }                                                                                      \
            __m512i h = _mm512_loadu_si512(p + 256);                                               \
            __m512 d = _mm512_cvtph_ps(_mm512_castsi512_si256(h));                                 \
            _mm512_storeu_ps(mn + 16 * g, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)));       \
            P_BIG_TOKENS(TT)                                                                       \
        }                                                                                          \
        const __m512i pat = _mm512_loadu_si512(pat4);                                              \
        const uint8_t *p = w + (size_t)320 * L->nbig;                                              \
        int b1 = 16 * L->nbig;                                                                     \
        __m512 mt = _mm512_setzero_ps();                                                           \
        for (int sg = 0; sg < L->nsmall; sg++) {                                                   \
            int nv = L->nb - b1 - 4 * sg < 4 ? L->nb - b1 - 4 * sg : 4;                            \
            __m512i v = _mm512_maskz_loadu_epi8(bytes_mask(16 * nv), p);                           \
            __m128i hd = _mm_maskz_loadu_epi16((__mmask8)((1u << nv) - 1), p + 16 * nv);           \
            __m128i hm = _mm_maskz_loadu_epi16((__mmask8)((1u << nv) - 1), p + 18 * nv);           \
            p += 20 * nv;                                                                          \
            __m512i wa = _mm512_and_si512(v, lo4);                                                 \
            __m512i wb = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);                           \
            int pair = b5_pair(L, sg);                                                             \
            __m512 ws = small_scale(                                                               \
                _mm512_permutexvar_ps(pat, _mm512_castps128_ps512(_mm_cvtph_ps(hd))), pair);       \
            P_TAIL_TOKENS(TT)                                                                      \
            mt = _mm512_mask_broadcast_f32x4(mt, (__mmask16)(0xf << (4 * sg)), _mm_cvtph_ps(hm)); \
        }                                                                                          \
        if (b1 < L->nbp) /* one whole-vector store: the loads below forward from it */             \
            _mm512_storeu_ps(mn + b1, mt);                                                         \
        P_CONST_TOKENS(TT)                                                                         \
    }

#define PROW_Q80(TT)                                                                               \
    static void prow_q80_##TT(__m512 *res, int rs, const uint8_t *w, const uint8_t *const *ap,     \
                              const b5_layout *L, float *mn)                                       \
    {                                                                                              \
        const __m512 m128 = _mm512_set1_ps(-128.0f);                                               \
        __m512 acc[TT];                                                                            \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) acc[t] = _mm512_setzero_ps();        \
        for (int g = 0; g < L->nbig; g++) {                                                        \
            const uint8_t *p = w + (size_t)544 * g;                                                \
            __m512i W[8];                                                                          \
            _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) W[j] =                             \
                _mm512_loadu_si512(p + 64 * j);                                                    \
            __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 512)));            \
            _mm512_storeu_ps(mn + 16 * g, _mm512_mul_ps(d, m128));                                 \
            P_BIG_TOKENS(TT)                                                                       \
        }                                                                                          \
        const __m512i pat = _mm512_loadu_si512(pat4);                                              \
        const uint8_t *p = w + (size_t)544 * L->nbig;                                              \
        int b1 = 16 * L->nbig;                                                                     \
        __m512 mt = _mm512_set1_ps(0.0f * -128.0f);                                                \
        for (int sg = 0; sg < L->nsmall; sg++) {                                                   \
            int nv = L->nb - b1 - 4 * sg < 4 ? L->nb - b1 - 4 * sg : 4;                            \
            __m512i wa = _mm512_maskz_loadu_epi8(bytes_mask(16 * nv), p);                          \
            __m512i wb = _mm512_maskz_loadu_epi8(bytes_mask(16 * nv), p + 16 * nv);                \
            __m128 d4 = _mm_cvtph_ps(                                                              \
                _mm_maskz_loadu_epi16((__mmask8)((1u << nv) - 1), p + 32 * nv));                   \
            p += 34 * nv;                                                                          \
            int pair = b5_pair(L, sg);                                                             \
            __m512 ws =                                                                            \
                small_scale(_mm512_permutexvar_ps(pat, _mm512_castps128_ps512(d4)), pair);         \
            P_TAIL_TOKENS(TT)                                                                      \
            mt = _mm512_mask_broadcast_f32x4(mt, (__mmask16)(0xf << (4 * sg)),                    \
                                             _mm_mul_ps(d4, _mm512_castps512_ps128(m128)));       \
        }                                                                                          \
        if (b1 < L->nbp)                                                                           \
            _mm512_storeu_ps(mn + b1, mt);                                                         \
        P_CONST_TOKENS(TT)                                                                         \
    }

PROW_Q41(1)
PROW_Q41(2)
PROW_Q41(3)
PROW_Q41(4)
PROW_Q41(5)
PROW_Q41(6)
PROW_Q41(7)
PROW_Q41(8)
PROW_Q80(1)
PROW_Q80(2)
PROW_Q80(3)
PROW_Q80(4)
PROW_Q80(5)
PROW_Q80(6)
PROW_Q80(7)
PROW_Q80(8)
/* res[t * rs] = the accumulator of token t (reduced over 16 rows later) */
typedef void (*prow_fn)(__m512 *res, int rs, const uint8_t *w, const uint8_t *const *ap,
                        const b5_layout *L, float *mn);
static const prow_fn prow_q41[9] = {NULL,       prow_q41_1, prow_q41_2, prow_q41_3, prow_q41_4,
                                    prow_q41_5, prow_q41_6, prow_q41_7, prow_q41_8};
static const prow_fn prow_q80[9] = {NULL,       prow_q80_1, prow_q80_2, prow_q80_3, prow_q80_4,
                                    prow_q80_5, prow_q80_6, prow_q80_7, prow_q80_8};

/* Rows in blocks of 16 (one reduce16 per token and block); tokens in spans of up to 16, each
 * row of a block doing the whole span (up to two kernel calls of 8 tokens) while its weights
 * are in L1. The next block's rows are prefetched one per row, so on the first span the
 * weight stream overlaps all of the span's compute. */
static void rows_p(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                   size_t ws, int n0, int n1, int K, void *scratch, const prow_fn *rf)
{
    b5_layout L = b5_layout_for(K);
    float *mn = scratch;
    __m512 *accb = (__m512 *)((uint8_t *)scratch + 64 * (size_t)(L.nbp / 16 + 1)); /* [16][16] */
    for (int nb0 = n0; nb0 < n1; nb0 += 16) {
        int R = n1 - nb0 < 16 ? n1 - nb0 : 16;
        __mmask16 km = (__mmask16)((1u << R) - 1);
        for (int t0 = 0; t0 < T; t0 += 16) {
            int TS = T - t0 < 16 ? T - t0 : 16;
            const uint8_t *ap[16];
            for (int t = 0; t < TS; t++)
                ap[t] = act + (size_t)(t0 + t) * as;
            for (int r = 0; r < R; r++) {
                if (t0 == 0 && nb0 + 16 + r < ldo) {
                    const char *pf = (const char *)(w + (size_t)(nb0 + 16 + r) * ws);
                    for (size_t off = 0; off < ws; off += 64)
                        _mm_prefetch(pf + off, _MM_HINT_T0);
                }
                const uint8_t *wr = w + (size_t)(nb0 + r) * ws;
                for (int t1 = 0; t1 < TS; t1 += 8) {
                    int TT = TS - t1 < 8 ? TS - t1 : 8;
                    rf[TT](accb + (size_t)t1 * 16 + r, 16, wr, ap + t1, &L, mn);
                }
            }
            for (int t = 0; t < TS; t++) {
                for (int r = R; r < 16; r++)
                    accb[t * 16 + r] = _mm512_setzero_ps();
                _mm512_mask_storeu_ps(out + (size_t)(t0 + t) * ldo + nb0, km,
                                      reduce16(accb + t * 16));
            }
        }
    }
}

static void rows_p_q4_1(float *out, int ldo, const uint8_t *act, size_t as, int T,
                        const uint8_t *w, size_t ws, int n0, int n1, int K, void *scratch)
{
    rows_p(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, prow_q41);
}

static void rows_p_q8_0(float *out, int ldo, const uint8_t *act, size_t as, int T,
                        const uint8_t *w, size_t ws, int n0, int n1, int K, void *scratch)
{
    rows_p(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, prow_q80);
}

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
    static const struct {
        sd_dtype t;
        kcpu_rows_fn f32, q8;
        void (*pack)(uint8_t *, const uint8_t *, int, int);
        kcpu_rows_fn packed;
    } k[] = {
        {SD_DTYPE_F32, rows_f_f32, NULL, NULL, NULL},
        {SD_DTYPE_F16, rows_f_f16, NULL, NULL, NULL},
        {SD_DTYPE_BF16, rows_f_bf16, NULL, NULL, NULL},
        {SD_DTYPE_Q8_0, rows_f_q8_0, rows_b_q8_0, pack_rows_q80, rows_p_q8_0},
        {SD_DTYPE_Q4_0, rows_f_q4_0, rows_b_q4_0, NULL, NULL},
        {SD_DTYPE_Q4_1, rows_f_q4_1, rows_b_q4_1, pack_rows_q41, rows_p_q4_1},
        {SD_DTYPE_Q4_K, rows_f_q4_k, rows_q_q4_k, NULL, NULL},
        {SD_DTYPE_Q6_K, rows_f_q6_k, rows_q_q6_k, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        kcpu_mm_kernel f = {k[i].f32, 0, NULL, NULL, 4, 4, NULL, NULL};
        tab[k[i].t][0] = f;
        int big = k[i].t == SD_DTYPE_Q8_0 || k[i].t == SD_DTYPE_Q4_0 || k[i].t == SD_DTYPE_Q4_1;
        if (!k[i].q8) /* scratch (big): 16 decoded rows (~1.2 bytes per weight) + accumulators */
            tab[k[i].t][1] = f;
        else if (big)
            tab[k[i].t][1] = (kcpu_mm_kernel){k[i].q8,   1,  b5_prep,      b5_stride,
                                              24,        16, k[i].pack,    k[i].packed};
        else
            tab[k[i].t][1] = (kcpu_mm_kernel){k[i].q8, 1, a5_prep, a5_stride, 4, 4, NULL, NULL};
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

void kcpu_attn_avx512(kcpu_attn_ops *ops)
{
    ops->dot = a5_dot;
    ops->dot4 = a5_dot4;
}
