/* cpu_r16_avx512: AVX-512 VNNI matmul for the 32-element block types Q4_0, Q4_1 and Q8_0 with
 * 8-bit activations, over weights interleaved 16 rows at a time ("r16"). Compiled with the
 * AVX-512 flags; only entered after run-time dispatch found them.
 *
 * Layout. Rows are taken in groups of 16 (a short last group is padded with zero rows). A group
 * holds, for each block b of the row in turn, the block of all 16 rows:
 *   Q4_0 / Q4_1: V0..V3 (64 B each; int32 lane r of Vj = nibble bytes 4j..4j+3 of row r: low
 *                nibbles are elements 4j..4j+3, high nibbles 16+4j..16+4j+3), d[16] (f16), and
 *                for Q4_1 m[16] (f16)                                   288 / 320 B per block
 *   Q8_0:        W0..W7 (64 B each; lane r of Wj = bytes 4j..4j+3 of row r, xor 0x80 so they
 *                read as unsigned), d[16] (f16)                                  544 B per block
 * so a group is exactly 16 file rows long. The model packs its matrices once at load
 * (kern_backend.pack); weights as stored are packed 16 rows at a time into scratch by the same
 * code, so both give bitwise the same results.
 *
 * Arithmetic: the canonical sequence (docs/numerics.md). Lane r of a vector is row r, so the 16
 * rows of a group are computed side by side and no horizontal sum is ever needed. For token t
 * and block b, with the token's int8 block q (the portable record: q = rne(x / dx),
 * dx = max|x| / 127, isum = sum(q), ds = dx * isum):
 *     s   = sum_j dpbusd(W_j, broadcast(q[4j..4j+3]))          exact integer dot product
 *     s  -= off * isum               Q4_0 off = 8, Q8_0 off = 128 (undoing the unsigned storage)
 *     acc = fma(cvt(s), d * dx, acc)
 *     acc = fma(m, ds, acc)          Q4_1 only
 * over b = 0, 1, ... in order. Every (t, n) gets exactly this sequence whatever T, the tile of
 * tokens, the rows around it or the thread: batch-invariant, and bitwise the portable level. */
#include <immintrin.h>
#include <string.h>

#include "cpu_impl.h"

#define INL static inline __attribute__((always_inline))

typedef kcpu_r16_kind rkind;

static inline int blk_bytes(rkind k)
{
    return k == KCPU_R16_Q4_0 ? 18 : k == KCPU_R16_Q4_1 ? 20 : 34;
}

/* The activation record: the portable layout (kcpu_q8_layout) without the 16-element sums,
 * bitwise the portable quantization (exact max, IEEE division, round to nearest even). */
static void r16_prep(uint8_t *rec, const float *x, int K)
{
    kcpu_q8_layout L = kcpu_q8_layout_for(K);
    int8_t *q = (int8_t *)(rec + L.q);
    float *d = (float *)(rec + L.d), *ds = (float *)(rec + L.ds);
    int32_t *si = (int32_t *)(rec + L.si);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
    for (int b = 0; b < K / 32; b++) {
        __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
        float amax = _mm512_reduce_max_ps(
            _mm512_max_ps(_mm512_and_ps(x0, absmask), _mm512_and_ps(x1, absmask)));
        float db = amax / 127.0f;
        __m512 id = _mm512_set1_ps(db != 0.0f ? 1.0f / db : 0.0f);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, id));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, id));
        q0 = _mm512_max_epi32(_mm512_min_epi32(q0, lim), nlim);
        q1 = _mm512_max_epi32(_mm512_min_epi32(q1, lim), nlim);
        _mm_storeu_si128((__m128i *)(q + 32 * b), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(q + 32 * b + 16), _mm512_cvtepi32_epi8(q1));
        int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        d[b] = db;
        ds[b] = db * (float)sum;
        si[b] = sum;
    }
}

INL __m512i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* acc[t] over all blocks of one group for TT tokens; lane r = row r of the group. When pf is
 * set, the same bytes of the next group are prefetched block by block (the weight stream). */
#define R16_GROUP(TT, KIND)                                                                        \
    static void r16_##KIND##_##TT(__m512 *res, const uint8_t *g, int nb, const uint8_t *const *ap, \
                                  const kcpu_q8_layout *L, size_t pf)                              \
    {                                                                                              \
        const rkind k = KIND;                                                                      \
        const int off =                                                                            \
            k == KCPU_R16_Q8_0 ? 128 : 8; /* the unsigned offset of the stored values */           \
        const size_t gb = 16 * (size_t)blk_bytes(k);                                               \
        const __m512i lo4 = _mm512_set1_epi8(0x0f);                                                \
        __m512 acc[TT];                                                                            \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) acc[t] = _mm512_setzero_ps();        \
        for (int b = 0; b < nb; b++) {                                                             \
            const uint8_t *p = g + (size_t)b * gb;                                                 \
            if (pf)                                                                                \
                for (size_t o = 0; o < gb; o += 64)                                                \
                    _mm_prefetch((const char *)p + pf + o, _MM_HINT_T0);                           \
            __m512i W[8];                                                                          \
            __m512 d, mn = _mm512_setzero_ps();                                                    \
            if (k == KCPU_R16_Q8_0) {                                                              \
                _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) W[j] =                         \
                    _mm512_loadu_si512(p + 64 * j);                                                \
                d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 512)));               \
            } else {                                                                               \
                _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++)                                \
                {                                                                                  \
                    __m512i v = _mm512_loadu_si512(p + 64 * j);                                    \
                    W[j] = _mm512_and_si512(v, lo4);                                               \
                    W[4 + j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);                     \
                }                                                                                  \
                d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 256)));               \
                if (k == KCPU_R16_Q4_1)                                                            \
                    mn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 288)));          \
            }                                                                                      \
            _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++)                                  \
            {                                                                                      \
                const int8_t *q = (const int8_t *)(ap[t] + L->q) + 32 * b;                         \
                __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[0], bcast4(q));         \
                __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), W[4], bcast4(q + 16));    \
                _Pragma("GCC unroll 4") for (int j = 1; j < 4; j++)                                \
                {                                                                                  \
                    s0 = _mm512_dpbusd_epi32(s0, W[j], bcast4(q + 4 * j));                         \
                    s1 = _mm512_dpbusd_epi32(s1, W[4 + j], bcast4(q + 16 + 4 * j));                \
                }                                                                                  \
                __m512i s = _mm512_add_epi32(s0, s1);                                              \
                __m512 dx = _mm512_set1_ps(((const float *)(ap[t] + L->d))[b]);                    \
                if (k != KCPU_R16_Q4_1) /* S = sum (u - off) q = sum u q - off * sum q, exact */   \
                    s = _mm512_sub_epi32(                                                          \
                        s, _mm512_set1_epi32(((const int32_t *)(ap[t] + L->si))[b] * off));        \
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, dx), acc[t]);     \
                if (k == KCPU_R16_Q4_1)                                                            \
                    acc[t] = _mm512_fmadd_ps(                                                      \
                        mn, _mm512_set1_ps(((const float *)(ap[t] + L->ds))[b]), acc[t]);          \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 16") for (int t = 0; t < TT; t++) res[t] = acc[t];                     \
    }

typedef void (*r16_fn)(__m512 *, const uint8_t *, int, const uint8_t *const *,
                       const kcpu_q8_layout *, size_t);

#define R16_KIND(KIND)                                                                             \
    R16_GROUP(1, KIND)                                                                             \
    R16_GROUP(2, KIND)                                                                             \
    R16_GROUP(3, KIND)                                                                             \
    R16_GROUP(4, KIND)                                                                             \
    R16_GROUP(5, KIND)                                                                             \
    R16_GROUP(6, KIND)                                                                             \
    R16_GROUP(7, KIND)                                                                             \
    R16_GROUP(8, KIND)                                                                             \
    R16_GROUP(16, KIND)                                                                            \
    static const r16_fn r16_tab_##KIND[17] = {                                                     \
        NULL,           r16_##KIND##_1, r16_##KIND##_2, r16_##KIND##_3, r16_##KIND##_4,            \
        r16_##KIND##_5, r16_##KIND##_6, r16_##KIND##_7, r16_##KIND##_8, [16] = r16_##KIND##_16};
R16_KIND(KCPU_R16_Q4_0)
R16_KIND(KCPU_R16_Q4_1)
R16_KIND(KCPU_R16_Q8_0)

/* Rows [n0, n1): from packed groups at w (group g at w + 16 g ws), or, when not packed, from
 * the file rows at w (ws bytes each) packed one group at a time into scratch. */
static void r16_rows(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,
                     size_t ws, int n0, int n1, int K, void *scratch, rkind k, int packed)
{
    kcpu_q8_layout L = kcpu_q8_layout_for(K);
    const r16_fn *tab = k == KCPU_R16_Q4_0   ? r16_tab_KCPU_R16_Q4_0
                        : k == KCPU_R16_Q4_1 ? r16_tab_KCPU_R16_Q4_1
                                             : r16_tab_KCPU_R16_Q8_0;
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
        /* lanes of this task: rows [lo, hi) of the group */
        int lo = n0 > 16 * g ? n0 - 16 * g : 0, hi = n1 < 16 * g + 16 ? n1 - 16 * g : 16;
        __mmask16 km = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
        /* token tiles of 16 while that many are left, then of up to 8 */
        for (int t0 = 0, TT; t0 < T; t0 += TT) {
            TT = T - t0 >= 16 ? 16 : T - t0 < 8 ? T - t0 : 8;
            const uint8_t *ap[16];
            for (int t = 0; t < TT; t++)
                ap[t] = act + (size_t)(t0 + t) * as;
            __m512 res[16];
            size_t pf = packed && t0 == 0 && g < g_last ? gbytes : 0;
            tab[TT](res, grp, nb, ap, &L, pf);
            for (int t = 0; t < TT; t++)
                _mm512_mask_storeu_ps(out + (size_t)(t0 + t) * ldo + 16 * g, km, res[t]);
        }
    }
}

#define R16_ENTRY(name, KIND, PACKED)                                                              \
    static void name(float *out, int ldo, const uint8_t *act, size_t as, int T, const uint8_t *w,  \
                     size_t ws, int n0, int n1, int K, void *scratch)                              \
    {                                                                                              \
        r16_rows(out, ldo, act, as, T, w, ws, n0, n1, K, scratch, KIND, PACKED);                   \
    }
R16_ENTRY(rows_q4_0, KCPU_R16_Q4_0, 0)
R16_ENTRY(rows_q4_1, KCPU_R16_Q4_1, 0)
R16_ENTRY(rows_q8_0, KCPU_R16_Q8_0, 0)
R16_ENTRY(rows_p_q4_0, KCPU_R16_Q4_0, 1)
R16_ENTRY(rows_p_q4_1, KCPU_R16_Q4_1, 1)
R16_ENTRY(rows_p_q8_0, KCPU_R16_Q8_0, 1)

void kcpu_mm_avx512_r16(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2])
{
    static const struct {
        sd_dtype t;
        kcpu_rows_fn rows, packed;
        void (*pack)(uint8_t *, const uint8_t *, int, int);
    } k[] = {
        {SD_DTYPE_Q4_0, rows_q4_0, rows_p_q4_0, kcpu_r16_pack_q4_0},
        {SD_DTYPE_Q4_1, rows_q4_1, rows_p_q4_1, kcpu_r16_pack_q4_1},
        {SD_DTYPE_Q8_0, rows_q8_0, rows_p_q8_0, kcpu_r16_pack_q8_0},
    };
    /* scratch: one packed group (16 rows, <= 17 bytes per element of K) */
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        tab[k[i].t][1] = (kcpu_mm_kernel){.rows = k[i].rows,
                                          .quantized_act = 1,
                                          .prep = r16_prep,
                                          .prep_stride = kcpu_q8_stride,
                                          .scratch_per_k = 18,
                                          .row_tile = 16,
                                          .pack = k[i].pack,
                                          .rows_packed = k[i].packed,
                                          .packed_bytes = kcpu_r16_packed_bytes};
}
