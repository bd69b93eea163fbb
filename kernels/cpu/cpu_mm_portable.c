/* cpu_mm_portable: plain-C matmul kernels for every weight type, in both activation modes.
 * The tested fallback (KERN_CPU_PORTABLE) and the reference the SIMD levels are compared with.
 *
 * This file is the oracle of the canonical numerics (docs/numerics.md): the SIMD levels must
 * give bitwise its results, and it is written as literally as that file.
 *
 * f32 activations: a weight row is dequantized into thread scratch with dtype_dequant_row (the
 * very reference values) and dotted with each x row: acc[i % 16] = fma(x[i], w[i], acc[i % 16])
 * in increasing i, then the R16 tree. Error vs exact: about K/16 * 2^-24 relative to
 * sum|x||w| at worst, far below 1e-5 for the K of real models.
 *
 * 8-bit activations: integer dot products per 32-element block (exact), then one float
 * accumulator over the blocks in increasing order, acc = fma(S, dw*dx, acc) (and
 * acc = fma(mn, ds, acc) for Q4_1 / Q4_K). F32/F16/BF16 weights always use the f32 path (there
 * is nothing to gain from quantizing activations against float weights). */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "cpu_impl.h"

float kcpu_f16_tab[65536];

static void f16_fill(void)
{
    for (uint32_t i = 0; i < 65536; i++)
        kcpu_f16_tab[i] = dtype_f16_to_f32((uint16_t)i);
}

void kcpu_f16_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, f16_fill);
}

/* ---- activation quantization ---- */

kcpu_q8_layout kcpu_q8_layout_for(int K)
{
    kcpu_q8_layout L;
    size_t k = (size_t)K;
    L.q = 0;
    L.d = (k + 63) & ~(size_t)63;
    L.ds = L.d + ((k / 32 * 4 + 63) & ~(size_t)63);
    L.s16 = L.ds + ((k / 32 * 4 + 63) & ~(size_t)63);
    L.ds16 = L.s16 + ((k / 16 * 2 + 63) & ~(size_t)63);
    L.si = L.ds16 + ((k / 16 * 4 + 63) & ~(size_t)63);
    L.stride = L.si + ((k / 32 * 4 + 63) & ~(size_t)63);
    return L;
}

size_t kcpu_q8_stride(int K)
{
    return kcpu_q8_layout_for(K).stride;
}

void kcpu_q8_prep(uint8_t *rec, const float *x, int K)
{
    kcpu_q8_layout L = kcpu_q8_layout_for(K);
    kcpu_q8_quantize_row(rec, x, K, &L);
}

void kcpu_q8_quantize_row(uint8_t *rec, const float *x, int K, const kcpu_q8_layout *L)
{
    int8_t *q = (int8_t *)(rec + L->q);
    float *d = (float *)(rec + L->d), *ds = (float *)(rec + L->ds);
    int16_t *s16 = (int16_t *)(rec + L->s16);
    float *ds16 = (float *)(rec + L->ds16);
    int32_t *si = (int32_t *)(rec + L->si);
    for (int b = 0; b < K / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        float db = amax / 127.0f;
        float id = db != 0.0f ? 1.0f / db : 0.0f;
        int s[2] = {0, 0};
        for (int j = 0; j < 32; j++) {
            int v = (int)nearbyintf(xb[j] * id);
            v = v > 127 ? 127 : v < -127 ? -127 : v;
            q[32 * b + j] = (int8_t)v;
            s[j >> 4] += v;
        }
        d[b] = db;
        ds[b] = db * (float)(s[0] + s[1]);
        si[b] = s[0] + s[1];
        s16[2 * b] = (int16_t)s[0];
        s16[2 * b + 1] = (int16_t)s[1];
        ds16[2 * b] = db * (float)s[0];
        ds16[2 * b + 1] = db * (float)s[1];
    }
}

/* ---- f32 activations ---- */

/* LANE16 + R16 (docs/numerics.md); K % 16 == 0 */
static inline __attribute__((always_inline)) float dot_f32(const float *x, const float *w, int K)
{
    float a[16] = {0};
    for (int i = 0; i < K; i += 16)
        for (int j = 0; j < 16; j++)
            a[j] = fmaf(x[i + j], w[i + j], a[j]);
    return kcpu_r16(a);
}

KCPU_FMA_CLONES static void rows_f32act(float *out, int ldo, const uint8_t *act, size_t act_stride,
                                        int T, const uint8_t *w, size_t w_stride, int n0, int n1,
                                        int K, void *scratch, sd_dtype wt)
{
    float *wrow = scratch;
    for (int n = n0; n < n1; n++) {
        const float *wr;
        if (wt == SD_DTYPE_F32) {
            wr = (const float *)(w + (size_t)n * w_stride);
        } else {
            dtype_dequant_row(wrow, w + (size_t)n * w_stride, wt, (size_t)K);
            wr = wrow;
        }
        for (int t = 0; t < T; t++)
            out[(size_t)t * ldo + n] =
                dot_f32((const float *)(act + (size_t)t * act_stride), wr, K);
    }
}

/* K % 8 == 0 for every type (block sizes are 1, 32 or 256, and the f32/f16 paths need K % 8:
 * checked by the caller). */
#define F32ACT_ROWS(name, wt)                                                                      \
    static void name(float *out, int ldo, const uint8_t *act, size_t act_stride, int T,            \
                     const uint8_t *w, size_t w_stride, int n0, int n1, int K, void *scratch)      \
    {                                                                                              \
        rows_f32act(out, ldo, act, act_stride, T, w, w_stride, n0, n1, K, scratch, wt);            \
    }
F32ACT_ROWS(rows_f32_f32, SD_DTYPE_F32)
F32ACT_ROWS(rows_f32_f16, SD_DTYPE_F16)
F32ACT_ROWS(rows_f32_bf16, SD_DTYPE_BF16)
F32ACT_ROWS(rows_f32_q8_0, SD_DTYPE_Q8_0)
F32ACT_ROWS(rows_f32_q4_0, SD_DTYPE_Q4_0)
F32ACT_ROWS(rows_f32_q4_1, SD_DTYPE_Q4_1)
F32ACT_ROWS(rows_f32_q4_k, SD_DTYPE_Q4_K)
F32ACT_ROWS(rows_f32_q6_k, SD_DTYPE_Q6_K)

/* ---- 8-bit activations ---- */

typedef struct {
    const int8_t *q;
    const float *d, *ds;
    const int16_t *s16;
    const int32_t *si;
} q8act;

static q8act q8act_at(const uint8_t *rec, const kcpu_q8_layout *L)
{
    q8act a = {(const int8_t *)(rec + L->q), (const float *)(rec + L->d),
               (const float *)(rec + L->ds), (const int16_t *)(rec + L->s16),
               (const int32_t *)(rec + L->si)};
    return a;
}

/* S = sum w*q; acc = fma(S, d*dx, acc) */
static inline __attribute__((always_inline)) float dotq_q8_0(const uint8_t *w, const q8act *a,
                                                             int K)
{
    float acc = 0.0f;
    for (int b = 0; b < K / 32; b++, w += 34) {
        const int8_t *qw = (const int8_t *)(w + 2), *qx = a->q + 32 * b;
        int s = 0;
        for (int j = 0; j < 32; j++)
            s += qw[j] * qx[j];
        acc = fmaf((float)s, kcpu_f16(w) * a->d[b], acc);
    }
    return acc;
}

/* S = sum (nib-8)*q = sum nib*q - 8*sum q; acc = fma(S, d*dx, acc) */
static inline __attribute__((always_inline)) float dotq_q4_0(const uint8_t *w, const q8act *a,
                                                             int K)
{
    float acc = 0.0f;
    for (int b = 0; b < K / 32; b++, w += 18) {
        const uint8_t *qs = w + 2;
        const int8_t *qx = a->q + 32 * b;
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += (qs[j] & 15) * qx[j] + (qs[j] >> 4) * qx[j + 16];
        s -= 8 * a->si[b];
        acc = fmaf((float)s, kcpu_f16(w) * a->d[b], acc);
    }
    return acc;
}

/* S = sum nib*q; acc = fma(S, d*dx, acc); acc = fma(m, ds, acc) */
static inline __attribute__((always_inline)) float dotq_q4_1(const uint8_t *w, const q8act *a,
                                                             int K)
{
    float acc = 0.0f;
    for (int b = 0; b < K / 32; b++, w += 20) {
        const uint8_t *qs = w + 4;
        const int8_t *qx = a->q + 32 * b;
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += (qs[j] & 15) * qx[j] + (qs[j] >> 4) * qx[j + 16];
        acc = fmaf((float)s, kcpu_f16(w) * a->d[b], acc);
        acc = fmaf(kcpu_f16(w + 2), a->ds[b], acc);
    }
    return acc;
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

/* Per 32-element sub-block j (scale sc, min m; both exact small integers): S = sum nib*q,
 * acc = fma(S, (d*sc)*dx, acc); acc = fma(-(dmin*m), ds, acc) */
static inline __attribute__((always_inline)) float dotq_q4_k(const uint8_t *w, const q8act *a,
                                                             int K)
{
    float acc = 0.0f;
    for (int b = 0; b < K / 256; b++, w += 144) {
        float d = kcpu_f16(w), dmin = kcpu_f16(w + 2);
        const uint8_t *sc = w + 4, *qs = w + 16;
        for (int j = 0; j < 8; j++) {
            int s, m;
            q4k_sm(j, sc, &s, &m);
            const uint8_t *ql = qs + 32 * (j / 2);
            int shift = (j & 1) * 4, blk = 8 * b + j;
            const int8_t *qx = a->q + 32 * blk;
            int si = 0;
            for (int l = 0; l < 32; l++)
                si += ((ql[l] >> shift) & 15) * qx[l];
            acc = fmaf((float)si, (d * (float)s) * a->d[blk], acc);
            acc = fmaf(-(dmin * (float)m), a->ds[blk], acc);
        }
    }
    return acc;
}

/* Q6_K element e of a super-block has scale sc[e/16]. Per 32-element act block j:
 * S = sc[2j]*sumi(2j) + sc[2j+1]*sumi(2j+1), sumi over (q6-32)*q_x; acc = fma(S, d*dx, acc). */
static void q6k_unpack(int8_t *v, const uint8_t *p)
{
    const uint8_t *ql = p, *qh = p + 128;
    for (int h = 0; h < 2; h++, v += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            v[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            v[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            v[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            v[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
}

static inline __attribute__((always_inline)) float dotq_q6_k(const uint8_t *w, const q8act *a,
                                                             int K)
{
    float acc = 0.0f;
    int8_t v[256];
    for (int b = 0; b < K / 256; b++, w += 210) {
        q6k_unpack(v, w);
        const int8_t *sc = (const int8_t *)(w + 192);
        float d = kcpu_f16(w + 208);
        for (int j = 0; j < 8; j++) {
            int blk = 8 * b + j, s0 = 0, s1 = 0;
            const int8_t *qx = a->q + 32 * blk, *vj = v + 32 * j;
            for (int l = 0; l < 16; l++) {
                s0 += vj[l] * qx[l];
                s1 += vj[l + 16] * qx[l + 16];
            }
            acc = fmaf((float)(sc[2 * j] * s0 + sc[2 * j + 1] * s1), d * a->d[blk], acc);
        }
    }
    return acc;
}

#define Q8ACT_ROWS(name, fn)                                                                       \
    KCPU_FMA_CLONES static void name(float *out, int ldo, const uint8_t *act, size_t act_stride,   \
                                     int T, const uint8_t *w, size_t w_stride, int n0, int n1,     \
                                     int K, void *scratch)                                         \
    {                                                                                              \
        kcpu_q8_layout L = kcpu_q8_layout_for(K);                                                  \
        for (int n = n0; n < n1; n++)                                                              \
            for (int t = 0; t < T; t++) {                                                          \
                q8act a = q8act_at(act + (size_t)t * act_stride, &L);                              \
                out[(size_t)t * ldo + n] = fn(w + (size_t)n * w_stride, &a, K);                    \
            }                                                                                      \
    }
Q8ACT_ROWS(rows_q8_q8_0, dotq_q8_0)
Q8ACT_ROWS(rows_q8_q4_0, dotq_q4_0)
Q8ACT_ROWS(rows_q8_q4_1, dotq_q4_1)
Q8ACT_ROWS(rows_q8_q4_k, dotq_q4_k)
Q8ACT_ROWS(rows_q8_q6_k, dotq_q6_k)

void kcpu_mm_portable(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2])
{
    static const struct {
        sd_dtype t;
        kcpu_rows_fn f32, q8;
    } k[] = {
        {SD_DTYPE_F32, rows_f32_f32, NULL},           {SD_DTYPE_F16, rows_f32_f16, NULL},
        {SD_DTYPE_BF16, rows_f32_bf16, NULL},         {SD_DTYPE_Q8_0, rows_f32_q8_0, rows_q8_q8_0},
        {SD_DTYPE_Q4_0, rows_f32_q4_0, rows_q8_q4_0}, {SD_DTYPE_Q4_1, rows_f32_q4_1, rows_q8_q4_1},
        {SD_DTYPE_Q4_K, rows_f32_q4_k, rows_q8_q4_k}, {SD_DTYPE_Q6_K, rows_f32_q6_k, rows_q8_q6_k},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        kcpu_mm_kernel f = {.rows = k[i].f32, .scratch_per_k = 4, .row_tile = 1};
        tab[k[i].t][0] = f;
        /* float weights: the "quantized activation" mode uses the f32 path too */
        kcpu_mm_kernel q = k[i].q8 ? (kcpu_mm_kernel){.rows = k[i].q8,
                                                      .quantized_act = 1,
                                                      .prep = kcpu_q8_prep,
                                                      .prep_stride = kcpu_q8_stride,
                                                      .row_tile = 1}
                                   : f;
        tab[k[i].t][1] = q;
    }
}
