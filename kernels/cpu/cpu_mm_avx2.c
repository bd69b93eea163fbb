/* cpu_mm_avx2: AVX2 + FMA + F16C matmul kernels (compiled with those flags; entered only after
 * run-time dispatch found them). Every kernel computes the canonical sequence of
 * docs/numerics.md, bitwise the portable level's.
 *
 * Q4_0 / Q4_1 / Q8_0, 8-bit activations: weights in the r16 layout (rows interleaved 16 at a
 * time, packed once at load by cpu_r16_pack.c, or one group at a time into scratch when the
 * matrix was not packed), read as two 8-row halves: int32 lane r of a vector is row r of the
 * half, so each lane's accumulator runs the canonical per-block loop with no horizontal sum:
 *     Q4_x: S = madd(sum_j maddubs(nib_j, bcast(q[4j..4j+3])), 1)   (int16 partial sums stay
 *           below 8 * 2 * 15 * 127 = 30480: no saturation), Q4_0: S -= 8 * isum
 *     Q8_0: S = sum_j madd(maddubs(|w_j|, sign(bcast(q), w_j)), 1)  (|pair| <= 2*128*127)
 *     acc = fma(cvt(S), d * dx, acc); Q4_1: acc = fma(m, ds, acc)
 * Tiles of up to 2 tokens share each group's weights (loaded once per tile, both halves).
 *
 * Q4_K / Q6_K, 8-bit activations: 8 weight rows are decoded into thread scratch (32 unsigned
 * bytes per block in element order; Q6_K also the int16 scale words), S per block and row by
 * maddubs/madd and one transposing horizontal integer sum for the 8 rows (exact), so that lane
 * r holds row r and the canonical chain acc = fma(S, dw * dx, acc) (+ fma(mn, ds, acc) for
 * Q4_K) runs in the lanes; Q6_K stores q6 unsigned and corrects
 * S -= 32 * (sc0 * s16_0 + sc1 * s16_1) in integers.
 *
 * f32 activations: the row dequantized into scratch (bitwise dtype_dequant_row's floats), LANE16
 * FMAs as two 8-lane accumulators (lanes i % 16 < 8 and >= 8), the R16 tree (lo + hi, then hsum8).
 */
#include <immintrin.h>
#include <string.h>

#include "cpu_impl.h"

#define INL static inline __attribute__((always_inline))

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

/* the fixed tree: halves, then pairs, then the last pair (the tail of R16) */
INL float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL int hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* lanes [0, k) (k may be <= 0 or >= 8) */
INL __m256i lanes_below(int k)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* ---- K-quants: decoded row + canonical scalar chain ---- */

typedef enum { V_Q4_K, V_Q6_K } vkind;

typedef struct {
    int nb;
    size_t wq, aux, dw, mn, sc; /* decoded row offsets */
    size_t size;
} v2_dec;

static v2_dec v2_dec_for(int K, vkind k)
{
    v2_dec D;
    D.nb = K / 32;
    D.wq = 0;
    D.aux = (size_t)D.nb * 32;
    D.dw = D.aux + (k == V_Q6_K ? (size_t)D.nb * 32 : 0);
    D.mn = D.dw + (size_t)D.nb * 4;
    D.sc = D.mn + (size_t)D.nb * 4;
    D.size = D.sc + (size_t)D.nb * 8;
    return D;
}

/* Block b's 32 weight bytes (and Q6_K scale words) go to wq / aux + b * bs: bs = 32 for a row
 * of its own, 512 for the 16-row layout. */
static void v2_decode_to(uint8_t *wq, uint8_t *aux, size_t bs, uint8_t *dec, const uint8_t *w,
                         int K, vkind kind, const v2_dec *D)
{
    float *dw = (float *)(dec + D->dw), *mn = (float *)(dec + D->mn);
    int32_t *isc = (int32_t *)(dec + D->sc);
    if (kind == V_Q4_K) {
        for (int sb = 0; sb < K / 256; sb++) {
            const uint8_t *p = w + (size_t)sb * 144;
            float d = f16(p), dmin = f16(p + 2);
            const __m256i lo4 = _mm256_set1_epi8(0x0f);
            for (int i = 0; i < 4; i++) {
                __m256i z = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * i));
                _mm256_storeu_si256((__m256i *)(wq + bs * (8 * sb + 2 * i)),
                                    _mm256_and_si256(z, lo4));
                _mm256_storeu_si256((__m256i *)(wq + bs * (8 * sb + 2 * i + 1)),
                                    _mm256_and_si256(_mm256_srli_epi16(z, 4), lo4));
            }
            for (int j = 0; j < 8; j++) {
                int s, m;
                q4k_sm(j, p + 4, &s, &m);
                dw[8 * sb + j] = d * (float)s;
                mn[8 * sb + j] = -(dmin * (float)m);
            }
        }
        return;
    }
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
                _mm256_storeu_si256((__m256i *)(wq + bs * b), v[j]);
                _mm256_storeu_si256(
                    (__m256i *)(aux + bs * b),
                    _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g])));
                isc[2 * b] = sc[g];
                isc[2 * b + 1] = sc[g + 1];
            }
        }
        for (int b = 8 * sb; b < 8 * sb + 8; b++) {
            dw[b] = d;
            mn[b] = 0.0f;
        }
    }
}

static void v2_decode(uint8_t *dec, const uint8_t *w, int K, vkind kind, const v2_dec *D)
{
    v2_decode_to(dec + D->wq, dec + D->aux, 32, dec, w, K, kind, D);
}

typedef struct {
    const int8_t *q[4];
    const float *d[4], *ds[4];
    const int16_t *s16[4];
} v2_tok;

/* lane r of the result = the sum of the 8 int32 lanes of v[r] (exact integers: any order) */
INL __m256i hsum8x8(__m256i v0, __m256i v1, __m256i v2, __m256i v3, __m256i v4, __m256i v5,
                    __m256i v6, __m256i v7)
{
    __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v4, v5), _mm256_hadd_epi32(v6, v7));
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20),
                            _mm256_permute2x128_si256(h0, h1, 0x31));
}

/* 8 decoded rows (lane r = row r) x TT tokens: per block the 8 rows' integer sums S (one
 * transposing horizontal sum), then the canonical chain in the lanes,
 * acc = fma(S, dw * dx, acc) (+ fma(mn, ds, acc) for Q4_K). dwT / mnT / scT: per block the 8
 * rows' dw, mn and Q6_K scale pair (sc0 | sc1 << 16). */
#define V8CORE(TT)                                                                                 \
    static void v8core_##TT(float *out, size_t ldo, __m256i smask, const v2_tok *tk,               \
                            const uint8_t *dec, size_t rs, const v2_dec *D, const float *dwT,      \
                            const float *mnT, const int32_t *scT, vkind kind)                      \
    {                                                                                              \
        __m256 acc[TT];                                                                            \
        const __m256i ones = _mm256_set1_epi16(1);                                                 \
        _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++) acc[t] = _mm256_setzero_ps();         \
        for (int b = 0; b < D->nb; b++) {                                                          \
            const uint8_t *wb = dec + D->wq + 32 * (size_t)b, *ab = dec + D->aux + 32 * (size_t)b; \
            __m256 dwv = _mm256_loadu_ps(dwT + 8 * b);                                             \
            _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++)                                   \
            {                                                                                      \
                __m256i x = _mm256_loadu_si256((const __m256i *)(tk->q[t] + 32 * b));              \
                __m256i v[8];                                                                      \
                _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++)                                \
                {                                                                                  \
                    __m256i w = _mm256_loadu_si256((const __m256i *)(wb + r * rs));                \
                    __m256i a = kind == V_Q6_K                                                     \
                                    ? _mm256_loadu_si256((const __m256i *)(ab + r * rs))           \
                                    : ones;                                                        \
                    v[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), a);                       \
                }                                                                                  \
                __m256i S = hsum8x8(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);               \
                if (kind == V_Q6_K) { /* q6 stored unsigned: S -= 32 * sum_g sc_g * sum16_g(q) */  \
                    int32_t sp;                                                                    \
                    memcpy(&sp, tk->s16[t] + 2 * b, 4);                                            \
                    __m256i c =                                                                    \
                        _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(scT + 8 * b)),      \
                                          _mm256_set1_epi32(sp));                                  \
                    S = _mm256_sub_epi32(S, _mm256_slli_epi32(c, 5));                              \
                }                                                                                  \
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(S),                                    \
                                         _mm256_mul_ps(dwv, _mm256_set1_ps(tk->d[t][b])), acc[t]); \
                if (kind == V_Q4_K)                                                                \
                    acc[t] = _mm256_fmadd_ps(_mm256_loadu_ps(mnT + 8 * b),                         \
                                             _mm256_set1_ps(tk->ds[t][b]), acc[t]);                \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++)                                       \
            _mm256_maskstore_ps(out + t * ldo, smask, acc[t]);                                     \
    }
V8CORE(1)
V8CORE(2)
V8CORE(3)
V8CORE(4)

typedef void (*v8core_fn)(float *, size_t, __m256i, const v2_tok *, const uint8_t *, size_t,
                          const v2_dec *, const float *, const float *, const int32_t *, vkind);
static const v8core_fn v8cores[5] = {NULL, v8core_1, v8core_2, v8core_3, v8core_4};

/* scratch: 8 decoded rows, then the transposed per-block arrays */
static size_t v8_scratch_per_k(void)
{
    return 8 * 3 + 12; /* rows: <= 2.5 bytes per element each (+ alignment); dwT, mnT, scT */
}

static void rows_v2(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                    size_t ws, int n0, int n1, int K, void *scratch, vkind kind)
{
    v2_dec D = v2_dec_for(K, kind);
    kcpu_q8_layout L = kcpu_q8_layout_for(K);
    size_t rs = (D.size + 63) & ~(size_t)63;
    uint8_t *dec = scratch;
    float *dwT = (float *)(dec + 8 * rs), *mnT = dwT + 8 * (size_t)D.nb;
    int32_t *scT = (int32_t *)(mnT + 8 * (size_t)D.nb);
    for (int n = n0; n < n1; n += 8) {
        int nr = n1 - n < 8 ? n1 - n : 8;
        for (int r = 0; r < 8; r++) { /* a short group repeats its last row in the spare lanes */
            uint8_t *dr = dec + (size_t)r * rs;
            v2_decode(dr, w + (size_t)(n + (r < nr ? r : nr - 1)) * ws, K, kind, &D);
            const float *dw = (const float *)(dr + D.dw), *mn = (const float *)(dr + D.mn);
            const int32_t *isc = (const int32_t *)(dr + D.sc);
            for (int b = 0; b < D.nb; b++) {
                dwT[8 * b + r] = dw[b];
                mnT[8 * b + r] = mn[b];
                scT[8 * b + r] =
                    (int32_t)((uint32_t)(uint16_t)isc[2 * b] | (uint32_t)isc[2 * b + 1] << 16);
            }
        }
        __m256i smask = lanes_below(nr);
        for (int t0 = 0; t0 < T; t0 += 4) {
            int tt = T - t0 < 4 ? T - t0 : 4;
            v2_tok tk;
            for (int t = 0; t < tt; t++) {
                const uint8_t *r = act + (size_t)(t0 + t) * as;
                tk.q[t] = (const int8_t *)(r + L.q);
                tk.d[t] = (const float *)(r + L.d);
                tk.ds[t] = (const float *)(r + L.ds);
                tk.s16[t] = (const int16_t *)(r + L.s16);
            }
            v8cores[tt](out + (size_t)t0 * ldo + n, (size_t)ldo, smask, &tk, dec, rs, &D, dwT, mnT,
                        scT, kind);
        }
    }
}

/* The 16-row layout the AVX-512 K-quant kernel reads (cpu_mm_avx512.c): rows [0, nr) of w
 * (ws bytes apart; nr <= 16, a short group repeats its last row) decoded as
 *   W[nb][16][32]  unsigned weight bytes of block b, row r      (Q6_K: q6, 0..63)
 *   A[nb][16][32]  Q6_K only: the int16 scale words of block b, row r
 *   dwT[nb][16], mnT[nb][16] (floats), scT[nb][16] (Q6_K scale pair sc0 | sc1 << 16)
 * so that one 64-byte load holds rows 2k and 2k+1 of a block. */
size_t kcpu_kq16_bytes(int K, int q6)
{
    size_t nb = (size_t)(K / 32);
    return nb * (512 + (q6 ? 512 : 0) + 3 * 64) +
           ((v2_dec_for(K, q6 ? V_Q6_K : V_Q4_K).size + 63) & ~(size_t)63);
}

void kcpu_kq16_decode(uint8_t *dst, const uint8_t *w, size_t ws, int nr, int K, int q6)
{
    vkind kind = q6 ? V_Q6_K : V_Q4_K;
    v2_dec D = v2_dec_for(K, kind);
    size_t nb = (size_t)D.nb;
    uint8_t *W = dst, *A = W + nb * 512;
    float *dwT = (float *)(A + (q6 ? nb * 512 : 0)), *mnT = dwT + 16 * nb;
    int32_t *scT = (int32_t *)(mnT + 16 * nb);
    uint8_t *tmp = (uint8_t *)(scT + 16 * nb);
    for (int r = 0; r < 16; r++) {
        v2_decode_to(W + 32 * (size_t)r, A + 32 * (size_t)r, 512, tmp,
                     w + (size_t)(r < nr ? r : nr - 1) * ws, K, kind, &D);
        const float *dw = (const float *)(tmp + D.dw), *mn = (const float *)(tmp + D.mn);
        const int32_t *isc = (const int32_t *)(tmp + D.sc);
        for (size_t b = 0; b < nb; b++) {
            dwT[16 * b + (size_t)r] = dw[b];
            mnT[16 * b + (size_t)r] = mn[b];
            scT[16 * b + (size_t)r] =
                (int32_t)((uint32_t)(uint16_t)isc[2 * b] | (uint32_t)isc[2 * b + 1] << 16);
        }
    }
}

#define ROWS_V2(name, kind)                                                                        \
    static void name(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,  \
                     size_t ws, int n0, int n1, int K, void *scratch)                              \
    {                                                                                              \
        rows_v2(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, kind);                            \
    }
ROWS_V2(rows_v2_q4_k, V_Q4_K)
ROWS_V2(rows_v2_q6_k, V_Q6_K)

/* ---- Q4_0 / Q4_1 / Q8_0 over r16 groups, two 8-row halves ---- */

INL int r16_blk_bytes(kcpu_r16_kind k)
{
    return k == KCPU_R16_Q4_0 ? 18 : k == KCPU_R16_Q4_1 ? 20 : 34;
}

INL __m256i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* res[2 * t + h]: lanes = rows 8h .. 8h+7 of the group, token t of the tile */
#define A2R16(TT, KIND)                                                                            \
    static void a2r16_##KIND##_##TT(__m256 *res, const uint8_t *g, int nb,                         \
                                    const uint8_t *const *ap, const kcpu_q8_layout *L, size_t pf)  \
    {                                                                                              \
        const kcpu_r16_kind k = KIND;                                                              \
        const size_t gb = 16 * (size_t)r16_blk_bytes(k);                                           \
        const __m256i lo4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);                   \
        const __m256i x80 = _mm256_set1_epi8((char)0x80);                                          \
        __m256 acc[TT][2];                                                                         \
        _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++) acc[t][0] = acc[t][1] =               \
            _mm256_setzero_ps();                                                                   \
        for (int b = 0; b < nb; b++) {                                                             \
            const uint8_t *p = g + (size_t)b * gb;                                                 \
            if (pf) /* the weight stream: the same block of the next group */                      \
                for (size_t o = 0; o < gb; o += 64)                                                \
                    _mm_prefetch((const char *)p + pf + o, _MM_HINT_T0);                           \
            __m256i s[TT][2];                                                                      \
            __m256 d[2], mn[2];                                                                    \
            if (k == KCPU_R16_Q8_0) {                                                              \
                _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++) s[t][0] = s[t][1] =           \
                    _mm256_setzero_si256();                                                        \
                _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++)                                \
                {                                                                                  \
                    __m256i w0 =                                                                   \
                        _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 64 * j)), x80);  \
                    __m256i w1 = _mm256_xor_si256(                                                 \
                        _mm256_loadu_si256((const __m256i *)(p + 64 * j + 32)), x80);              \
                    __m256i a0 = _mm256_abs_epi8(w0), a1 = _mm256_abs_epi8(w1);                    \
                    _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++)                           \
                    {                                                                              \
                        __m256i x = bcast4((const int8_t *)(ap[t] + L->q) + 32 * b + 4 * j);       \
                        s[t][0] = _mm256_add_epi32(                                                \
                            s[t][0],                                                               \
                            _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(x, w0)),   \
                                              ones));                                              \
                        s[t][1] = _mm256_add_epi32(                                                \
                            s[t][1],                                                               \
                            _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(x, w1)),   \
                                              ones));                                              \
                    }                                                                              \
                }                                                                                  \
                d[0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 512)));               \
                d[1] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 528)));               \
                mn[0] = mn[1] = d[0];                                                              \
            } else {                                                                               \
                __m256i p16[TT][2];                                                                \
                _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++) p16[t][0] = p16[t][1] =       \
                    _mm256_setzero_si256();                                                        \
                _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++)                                \
                {                                                                                  \
                    __m256i v0 = _mm256_loadu_si256((const __m256i *)(p + 64 * j));                \
                    __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + 64 * j + 32));           \
                    __m256i l0 = _mm256_and_si256(v0, lo4);                                        \
                    __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), lo4);                  \
                    __m256i l1 = _mm256_and_si256(v1, lo4);                                        \
                    __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), lo4);                  \
                    _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++)                           \
                    {                                                                              \
                        const int8_t *q = (const int8_t *)(ap[t] + L->q) + 32 * b + 4 * j;         \
                        __m256i xl = bcast4(q), xh = bcast4(q + 16);                               \
                        p16[t][0] = _mm256_add_epi16(                                              \
                            p16[t][0], _mm256_add_epi16(_mm256_maddubs_epi16(l0, xl),              \
                                                        _mm256_maddubs_epi16(h0, xh)));            \
                        p16[t][1] = _mm256_add_epi16(                                              \
                            p16[t][1], _mm256_add_epi16(_mm256_maddubs_epi16(l1, xl),              \
                                                        _mm256_maddubs_epi16(h1, xh)));            \
                    }                                                                              \
                }                                                                                  \
                _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++)                               \
                {                                                                                  \
                    s[t][0] = _mm256_madd_epi16(p16[t][0], ones);                                  \
                    s[t][1] = _mm256_madd_epi16(p16[t][1], ones);                                  \
                }                                                                                  \
                d[0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 256)));               \
                d[1] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 272)));               \
                if (k == KCPU_R16_Q4_1) {                                                          \
                    mn[0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 288)));          \
                    mn[1] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 304)));          \
                } else {                                                                           \
                    mn[0] = mn[1] = d[0];                                                          \
                }                                                                                  \
            }                                                                                      \
            _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++)                                   \
            {                                                                                      \
                __m256 dx = _mm256_set1_ps(((const float *)(ap[t] + L->d))[b]);                    \
                __m256i corr = _mm256_set1_epi32(8 * ((const int32_t *)(ap[t] + L->si))[b]);       \
                __m256 dsx = _mm256_set1_ps(((const float *)(ap[t] + L->ds))[b]);                  \
                _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++)                                \
                {                                                                                  \
                    __m256i S = s[t][h];                                                           \
                    if (k == KCPU_R16_Q4_0)                                                        \
                        S = _mm256_sub_epi32(S, corr);                                             \
                    acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(S), _mm256_mul_ps(d[h], dx),    \
                                                acc[t][h]);                                        \
                    if (k == KCPU_R16_Q4_1)                                                        \
                        acc[t][h] = _mm256_fmadd_ps(mn[h], dsx, acc[t][h]);                        \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 2") for (int t = 0; t < TT; t++)                                       \
        {                                                                                          \
            res[2 * t] = acc[t][0];                                                                \
            res[2 * t + 1] = acc[t][1];                                                            \
        }                                                                                          \
    }

typedef void (*a2r16_fn)(__m256 *, const uint8_t *, int, const uint8_t *const *,
                         const kcpu_q8_layout *, size_t);
#define A2R16_KIND(KIND)                                                                           \
    A2R16(1, KIND)                                                                                 \
    A2R16(2, KIND)                                                                                 \
    static const a2r16_fn a2r16_tab_##KIND[3] = {NULL, a2r16_##KIND##_1, a2r16_##KIND##_2};
A2R16_KIND(KCPU_R16_Q4_0)
A2R16_KIND(KCPU_R16_Q4_1)
A2R16_KIND(KCPU_R16_Q8_0)

/* Rows [n0, n1): from packed groups at w (group g at w + 16 g ws), or, when not packed, from
 * the file rows at w (ws bytes each) packed one group at a time into scratch. */
static void a2r16_rows(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                       size_t ws, int n0, int n1, int K, void *scratch, kcpu_r16_kind k, int packed)
{
    kcpu_q8_layout L = kcpu_q8_layout_for(K);
    const a2r16_fn *tab = k == KCPU_R16_Q4_0   ? a2r16_tab_KCPU_R16_Q4_0
                          : k == KCPU_R16_Q4_1 ? a2r16_tab_KCPU_R16_Q4_1
                                               : a2r16_tab_KCPU_R16_Q8_0;
    int nb = K / 32;
    size_t gbytes = 16 * ws;
    int g_last = (ldo - 1) / 16;
    for (int g = n0 / 16; 16 * g < n1; g++) {
        const uint8_t *grp = w + (size_t)g * gbytes;
        if (!packed) {
            int nr = ldo - 16 * g < 16 ? ldo - 16 * g : 16;
            kcpu_r16_pack_group(scratch, w + (size_t)16 * g * ws, nr, K, k);
            grp = scratch;
        }
        /* lanes of this task: rows [lo, hi) of the group, per half */
        int lo = n0 > 16 * g ? n0 - 16 * g : 0, hi = n1 < 16 * g + 16 ? n1 - 16 * g : 16;
        __m256i km[2];
        for (int h = 0; h < 2; h++)
            km[h] = _mm256_andnot_si256(lanes_below(lo - 8 * h), lanes_below(hi - 8 * h));
        for (int t0 = 0, TT; t0 < T; t0 += TT) {
            TT = T - t0 >= 2 ? 2 : 1;
            const uint8_t *ap[2];
            for (int t = 0; t < TT; t++)
                ap[t] = act + (size_t)(t0 + t) * as;
            __m256 res[4];
            tab[TT](res, grp, nb, ap, &L, packed && t0 == 0 && g < g_last ? gbytes : 0);
            for (int t = 0; t < TT; t++)
                for (int h = 0; h < 2; h++)
                    _mm256_maskstore_ps(out + (size_t)(t0 + t) * ldo + 16 * g + 8 * h, km[h],
                                        res[2 * t + h]);
        }
    }
}

#define A2R16_ENTRY(name, KIND, PACKED)                                                            \
    static void name(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,  \
                     size_t ws, int n0, int n1, int K, void *scratch)                              \
    {                                                                                              \
        a2r16_rows(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, KIND, PACKED);                 \
    }
A2R16_ENTRY(rows_r_q4_0, KCPU_R16_Q4_0, 0)
A2R16_ENTRY(rows_r_q4_1, KCPU_R16_Q4_1, 0)
A2R16_ENTRY(rows_r_q8_0, KCPU_R16_Q8_0, 0)
A2R16_ENTRY(rows_rp_q4_0, KCPU_R16_Q4_0, 1)
A2R16_ENTRY(rows_rp_q4_1, KCPU_R16_Q4_1, 1)
A2R16_ENTRY(rows_rp_q8_0, KCPU_R16_Q8_0, 1)

/* ---- f32 activations ---- */

/* The floats dtype_dequant_row gives (the same products and sums, eight lanes at a time; the
 * K-quants through dtype_dequant_row itself). */
static void dequant_row(float *y, const uint8_t *w, sd_dtype t, int K)
{
    switch (t) {
    case SD_DTYPE_F16:
        for (int i = 0; i < K; i += 8)
            _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * i))));
        break;
    case SD_DTYPE_BF16:
        for (int i = 0; i < K; i += 8)
            _mm256_storeu_ps(
                y + i,
                _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + 2 * i))), 16)));
        break;
    case SD_DTYPE_Q8_0:
        for (int b = 0; b < K / 32; b++, w += 34, y += 32) {
            __m256 d = _mm256_set1_ps(f16(w));
            for (int j = 0; j < 4; j++)
                _mm256_storeu_ps(
                    y + 8 * j,
                    _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                         _mm_loadl_epi64((const __m128i *)(w + 2 + 8 * j))))));
        }
        break;
    case SD_DTYPE_Q4_0:
    case SD_DTYPE_Q4_1: {
        int q41 = t == SD_DTYPE_Q4_1, bb = q41 ? 20 : 18;
        for (int b = 0; b < K / 32; b++, w += bb, y += 32) {
            __m256 d = _mm256_set1_ps(f16(w)), m = _mm256_set1_ps(q41 ? f16(w + 2) : 0.0f);
            const uint8_t *qs = w + 2 + 2 * q41;
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * h)));
                __m256i lo = _mm256_and_si256(v, _mm256_set1_epi32(15)),
                        hi = _mm256_srli_epi32(v, 4);
                if (q41) {
                    _mm256_storeu_ps(y + 8 * h,
                                     _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(lo)), m));
                    _mm256_storeu_ps(y + 16 + 8 * h,
                                     _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(hi)), m));
                } else {
                    __m256i e8 = _mm256_set1_epi32(8);
                    _mm256_storeu_ps(
                        y + 8 * h, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(lo, e8))));
                    _mm256_storeu_ps(
                        y + 16 + 8 * h,
                        _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(hi, e8))));
                }
            }
        }
        break;
    }
    default:
        dtype_dequant_row(y, w, t, (size_t)K);
    }
}

#define FCORE2(TT)                                                                                 \
    static void fcore2_##TT(float *out, int ldo, const float *x, size_t xs, const float *wr,       \
                            int n, int K)                                                          \
    {                                                                                              \
        __m256 lo[TT], hi[TT];                                                                     \
        _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++) lo[t] = hi[t] = _mm256_setzero_ps();  \
        for (int i = 0; i < K; i += 16) {                                                          \
            __m256 w0 = _mm256_loadu_ps(wr + i), w1 = _mm256_loadu_ps(wr + i + 8);                 \
            _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++)                                   \
            {                                                                                      \
                lo[t] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * xs + i), w0, lo[t]);               \
                hi[t] = _mm256_fmadd_ps(_mm256_loadu_ps(x + t * xs + i + 8), w1, hi[t]);           \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int t = 0; t < TT; t++) out[(size_t)t * ldo + n] =            \
            hsum8(_mm256_add_ps(lo[t], hi[t]));                                                    \
    }
FCORE2(1)
FCORE2(2)
FCORE2(3)
FCORE2(4)
typedef void (*fcore2_fn)(float *, int, const float *, size_t, const float *, int, int);
static const fcore2_fn fcores2[5] = {NULL, fcore2_1, fcore2_2, fcore2_3, fcore2_4};

/* One token: 4 rows at a time (8 independent FMA chains; the order per element unchanged). */
static void fcore2_4r(float *out, const float *x, const float *const *wr, int n, int nr, int K)
{
    __m256 lo[4], hi[4];
    for (int r = 0; r < 4; r++)
        lo[r] = hi[r] = _mm256_setzero_ps();
    for (int i = 0; i < K; i += 16) {
        __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)
        {
            lo[r] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(wr[r] + i), lo[r]);
            hi[r] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(wr[r] + i + 8), hi[r]);
        }
    }
    for (int r = 0; r < nr; r++)
        out[n + r] = hsum8(_mm256_add_ps(lo[r], hi[r]));
}

static void rows_f(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                   size_t ws, int n0, int n1, int K, void *scratch, sd_dtype t)
{
    const float *x = (const float *)act;
    size_t xs = as / 4;
    if (T == 1) {
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
            fcore2_4r(out, x, wr, n, nr, K);
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
        for (int t0 = 0; t0 < T; t0 += 4) {
            int tt = T - t0 < 4 ? T - t0 : 4;
            fcores2[tt](out + (size_t)t0 * ldo, ldo, x + (size_t)t0 * xs, xs, wr, n, K);
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

/* AVX2 activation prep: bitwise the portable kcpu_q8_quantize_row (same max, division,
 * multiplication and round-to-nearest-even), eight lanes at a time. */
void kcpu_q8_prep_avx2(uint8_t *rec, const float *x, int K)
{
    kcpu_q8_layout L = kcpu_q8_layout_for(K);
    int8_t *q = (int8_t *)(rec + L.q);
    float *d = (float *)(rec + L.d), *ds = (float *)(rec + L.ds), *ds16 = (float *)(rec + L.ds16);
    int16_t *s16 = (int16_t *)(rec + L.s16);
    int32_t *si = (int32_t *)(rec + L.si);
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
        si[b] = sa + sb;
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
        kcpu_rows_fn f32;
    } f[] = {
        {SD_DTYPE_F32, rows_f_f32},   {SD_DTYPE_F16, rows_f_f16},   {SD_DTYPE_BF16, rows_f_bf16},
        {SD_DTYPE_Q8_0, rows_f_q8_0}, {SD_DTYPE_Q4_0, rows_f_q4_0}, {SD_DTYPE_Q4_1, rows_f_q4_1},
        {SD_DTYPE_Q4_K, rows_f_q4_k}, {SD_DTYPE_Q6_K, rows_f_q6_k},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        kcpu_mm_kernel k = {.rows = f[i].f32, .scratch_per_k = 16, .row_tile = 4};
        tab[f[i].t][0] = k;
        if (f[i].t == SD_DTYPE_F32 || f[i].t == SD_DTYPE_F16 || f[i].t == SD_DTYPE_BF16)
            tab[f[i].t][1] = k; /* float weights: f32 activations in both modes */
    }
    static const struct {
        sd_dtype t;
        kcpu_rows_fn f;
    } kq[] = {{SD_DTYPE_Q4_K, rows_v2_q4_k}, {SD_DTYPE_Q6_K, rows_v2_q6_k}};
    for (size_t i = 0; i < sizeof kq / sizeof kq[0]; i++)
        tab[kq[i].t][1] = (kcpu_mm_kernel){.rows = kq[i].f,
                                           .quantized_act = 1,
                                           .prep = kcpu_q8_prep_avx2,
                                           .prep_stride = kcpu_q8_stride,
                                           .scratch_per_k = v8_scratch_per_k(),
                                           .row_tile = 8};
    static const struct {
        sd_dtype t;
        kcpu_rows_fn rows, packed;
        void (*pack)(uint8_t *, const uint8_t *, int, int);
    } r[] = {
        {SD_DTYPE_Q4_0, rows_r_q4_0, rows_rp_q4_0, kcpu_r16_pack_q4_0},
        {SD_DTYPE_Q4_1, rows_r_q4_1, rows_rp_q4_1, kcpu_r16_pack_q4_1},
        {SD_DTYPE_Q8_0, rows_r_q8_0, rows_rp_q8_0, kcpu_r16_pack_q8_0},
    };
    /* scratch: one packed group (16 rows, <= 17 bytes per element of K) */
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
        tab[r[i].t][1] = (kcpu_mm_kernel){.rows = r[i].rows,
                                          .quantized_act = 1,
                                          .prep = kcpu_q8_prep_avx2,
                                          .prep_stride = kcpu_q8_stride,
                                          .scratch_per_k = 18,
                                          .row_tile = 16,
                                          .pack = r[i].pack,
                                          .rows_packed = r[i].packed,
                                          .packed_bytes = kcpu_r16_packed_bytes};
}

/* ---- attention inner loops ---- */

/* LANE16 fma as two 8-lane accumulators over chunks of 16 (the last one masked, zeros past n),
 * then the R16 tree: bitwise the portable dot. */
static float a2_dot(const float *q, const float *k, int n)
{
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(k + i + 8), hi);
    }
    if (i < n) {
        __m256i m0 = lanes_below(n - i), m1 = lanes_below(n - i - 8);
        lo = _mm256_fmadd_ps(_mm256_maskload_ps(q + i, m0), _mm256_maskload_ps(k + i, m0), lo);
        hi = _mm256_fmadd_ps(_mm256_maskload_ps(q + i + 8, m1), _mm256_maskload_ps(k + i + 8, m1),
                             hi);
    }
    return hsum8(_mm256_add_ps(lo, hi));
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
