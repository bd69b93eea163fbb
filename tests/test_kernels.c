/* test_kernels: the CPU backend against double-precision references built on
 * dtype_dequant_row, on fresh random inputs (seed printed; replay with SD_SEED=...), for every
 * weight type x ISA level (portable, AVX2, AVX-512 where the CPU has them) x activation mode;
 * every op of every level memcmp-equal to the portable level (the canonical numerics of
 * docs/numerics.md; a level the CPU lacks is skipped with the reason printed);
 * plus bitwise batch invariance (a row alone vs the same row inside batches of other random
 * rows, thread counts 1/2/3) for matmul, attention, rope and rmsnorm, and per element (any
 * offset and length) for exp and silu_mul.
 *
 * Tolerances:
 *   f32 activations: |out - ref| <= 1e-5 * sum|x||w| (float accumulation error; the weights are
 *     dequantized to the same floats as the reference).
 *   8-bit activations: each activation block is rounded to d*q with d = max|x_block|/127, an
 *     error of at most d/2 per element, so |out - ref| <= sum_i |w_i| * d_block(i)/2 (+ the f32
 *     term above for the float accumulation). That bound is computed per output from the
 *     actual inputs and is exact, not statistical. Observed errors are printed (typically
 *     ~1e-3 of sum|x||w| for Gaussian rows, since the rounding errors have random signs). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/cpu_impl.h"
#include "kernels/kernels.h"
#include "testutil.h"

static const sd_dtype all_types[] = {SD_DTYPE_F32,  SD_DTYPE_F16,  SD_DTYPE_BF16, SD_DTYPE_Q8_0,
                                     SD_DTYPE_Q4_0, SD_DTYPE_Q4_1, SD_DTYPE_Q4_K, SD_DTYPE_Q6_K};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

/* ISA levels to test: flags and the backend name they must produce. */
typedef struct {
    unsigned flags;
    const char *name;
} level;
static level levels[3];
static int n_levels;

static int group_setup(void **state)
{
    (void)state;
    tu_seed();
    fprintf(stderr, "[kernels] cpu features: %s\n", kern_cpu_features());
    n_levels = 0;
    levels[n_levels++] = (level){KERN_CPU_LEVEL(KERN_CPU_LEVEL_PORTABLE), "cpu-portable"};
    if (kern_cpu_level_available(KERN_CPU_LEVEL_AVX2))
        levels[n_levels++] = (level){KERN_CPU_LEVEL(KERN_CPU_LEVEL_AVX2), "cpu-avx2"};
    else
        fprintf(stderr, "[kernels] skipping level avx2: this CPU lacks AVX2/FMA/F16C (%s)\n",
                kern_cpu_features());
    if (kern_cpu_level_available(KERN_CPU_LEVEL_AVX512))
        levels[n_levels++] = (level){KERN_CPU_LEVEL(KERN_CPU_LEVEL_AVX512), "cpu-avx512vnni"};
    else
        fprintf(stderr,
                "[kernels] skipping level avx512: this CPU lacks AVX-512 F/BW/VL/DQ/VNNI (%s)\n",
                kern_cpu_features());
    for (int i = 0; i < n_levels; i++)
        fprintf(stderr, "[kernels] testing level %s\n", levels[i].name);
    return 0;
}

static kern_backend *mk(int nt, unsigned flags)
{
    kern_backend *b = NULL;
    assert_int_equal(kern_cpu_create(&b, nt, flags), SD_OK);
    assert_non_null(b);
    return b;
}

/* ---- random weights ---- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Random bytes for the quants, sane f16 scales. */
static void rand_weights(tu_rng *r, uint8_t *w, sd_dtype t, int N, int K)
{
    size_t rb = dtype_row_bytes(t, (size_t)K);
    for (size_t i = 0; i < rb * (size_t)N; i++)
        w[i] = (uint8_t)tu_next(r);
    for (int n = 0; n < N; n++) {
        uint8_t *row = w + rb * (size_t)n;
        switch (t) {
        case SD_DTYPE_F32:
            for (int k = 0; k < K; k++) {
                float f = tu_normal(r);
                memcpy(row + 4 * k, &f, 4);
            }
            break;
        case SD_DTYPE_F16:
            for (int k = 0; k < K; k++)
                put16(row + 2 * k, dtype_f32_to_f16(tu_normal(r)));
            break;
        case SD_DTYPE_BF16:
            for (int k = 0; k < K; k++)
                put16(row + 2 * k, dtype_f32_to_bf16(tu_normal(r)));
            break;
        case SD_DTYPE_Q8_0:
            for (int b = 0; b < K / 32; b++)
                put16(row + 34 * b, dtype_f32_to_f16(0.002f + 0.02f * tu_uniform(r)));
            break;
        case SD_DTYPE_Q4_0:
            for (int b = 0; b < K / 32; b++)
                put16(row + 18 * b, dtype_f32_to_f16((tu_uniform(r) - 0.3f) * 0.3f));
            break;
        case SD_DTYPE_Q4_1:
            for (int b = 0; b < K / 32; b++) {
                put16(row + 20 * b, dtype_f32_to_f16(0.01f + 0.2f * tu_uniform(r)));
                put16(row + 20 * b + 2, dtype_f32_to_f16(-1.5f + 1.0f * tu_uniform(r)));
            }
            break;
        case SD_DTYPE_Q4_K:
            for (int b = 0; b < K / 256; b++) {
                put16(row + 144 * b, dtype_f32_to_f16(0.001f + 0.01f * tu_uniform(r)));
                put16(row + 144 * b + 2, dtype_f32_to_f16(0.001f + 0.01f * tu_uniform(r)));
            }
            break;
        case SD_DTYPE_Q6_K:
            for (int b = 0; b < K / 256; b++)
                put16(row + 210 * b + 208, dtype_f32_to_f16((tu_uniform(r) - 0.2f) * 0.005f));
            break;
        }
    }
}

static void rand_x(tu_rng *r, float *x, size_t n)
{
    int kind = (int)tu_below(r, 3);
    for (size_t i = 0; i < n; i++) {
        float v = tu_normal(r);
        if (kind == 1 && tu_below(r, 50) == 0)
            v *= 30.0f; /* outliers, as real activations have */
        if (kind == 2 && tu_below(r, 8) == 0)
            v = 0.0f;
        x[i] = v;
    }
}

static int block_of(sd_dtype t)
{
    return t == SD_DTYPE_Q4_K || t == SD_DTYPE_Q6_K ? 256 : 32;
}

/* matmul on weights in the file layout (no packed copy) */
static void mm(kern_backend *b, float *out, const float *x, const void *w, sd_dtype t, int T, int N,
               int K)
{
    kern_mat m = {w, t, NULL};
    b->matmul(b->ctx, out, x, &m, T, N, K);
}

/* The backend's packed copy of w (NULL when it keeps this type as stored). */
static void *pack_copy(kern_backend *b, const void *w, sd_dtype t, int N, int K)
{
    size_t n = b->pack_bytes ? b->pack_bytes(b->ctx, t, N, K) : 0;
    if (!n)
        return NULL;
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    assert_non_null(p);
    b->pack(b->ctx, p, w, t, N, K);
    return p;
}

/* ---- matmul vs double reference ---- */

typedef struct {
    double worst_f32, worst_q8_ratio, mean_q8_rel;
    long n_q8;
} err_stats;

static void check_matmul_case(tu_rng *r, kern_backend *b, int qact, sd_dtype t, int T, int N, int K,
                              err_stats *st)
{
    size_t rb = dtype_row_bytes(t, (size_t)K);
    uint8_t *w = malloc(rb * (size_t)N);
    float *x = malloc(sizeof(float) * (size_t)T * K);
    float *out = malloc(sizeof(float) * (size_t)T * N);
    float *wd = malloc(sizeof(float) * (size_t)N * K);
    assert_true(w && x && out && wd);
    rand_weights(r, w, t, N, K);
    rand_x(r, x, (size_t)T * K);
    for (int n = 0; n < N; n++)
        dtype_dequant_row(wd + (size_t)n * K, w + rb * n, t, (size_t)K);
    mm(b, out, x, w, t, T, N, K);
    int float_w = t == SD_DTYPE_F32 || t == SD_DTYPE_F16 || t == SD_DTYPE_BF16;
    for (int ti = 0; ti < T; ti++) {
        const float *xr = x + (size_t)ti * K;
        double dq[4096 / 32];
        for (int bb = 0; bb < K / 32; bb++) {
            float amax = 0;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(xr[32 * bb + j]));
            dq[bb] = amax / 127.0;
        }
        for (int n = 0; n < N; n++) {
            const float *wr = wd + (size_t)n * K;
            double ref = 0, mag = 0, qb = 0;
            for (int k = 0; k < K; k++) {
                ref += (double)xr[k] * wr[k];
                mag += fabs((double)xr[k] * wr[k]);
                qb += fabs((double)wr[k]) * dq[k / 32] * 0.5;
            }
            double got = out[(size_t)ti * N + n];
            double err = fabs(got - ref);
            double tol = 1e-5 * mag + 1e-30;
            if (qact && !float_w)
                tol += qb * 1.001;
            if (!(err <= tol)) {
                fprintf(stderr,
                        "matmul %s %s qact=%d T=%d N=%d K=%d t=%d n=%d: got %.9g ref %.9g "
                        "err %.3g tol %.3g\n",
                        b->name, dtype_name(t), qact, T, N, K, ti, n, got, ref, err, tol);
                fail();
            }
            if (qact && !float_w) {
                if (qb > 0 && err / qb > st->worst_q8_ratio)
                    st->worst_q8_ratio = err / qb;
                if (mag > 0) {
                    st->mean_q8_rel += err / mag;
                    st->n_q8++;
                }
            } else if (mag > 0 && err / mag > st->worst_f32) {
                st->worst_f32 = err / mag;
            }
        }
    }
    free(w);
    free(x);
    free(out);
    free(wd);
}

static void test_matmul_reference(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x11);
    time_t t0 = time(NULL);
    for (int li = 0; li < n_levels; li++)
        for (int qact = 0; qact < 2; qact++) {
            kern_backend *b =
                mk(1 + (int)tu_below(&r, 3), levels[li].flags | (qact ? 0 : KERN_CPU_F32_ACT));
            assert_string_equal(b->name, levels[li].name);
            err_stats st = {0, 0, 0, 0};
            for (size_t ti = 0; ti < N_TYPES; ti++) {
                sd_dtype t = all_types[ti];
                int bs = block_of(t);
                for (int c = 0; c < 6 && time(NULL) - t0 < 60; c++) {
                    int K = bs * (1 + (int)tu_below(&r, bs == 256 ? 6 : 40));
                    int N = 1 + (int)tu_below(&r, 70);
                    int T = 1 + (int)tu_below(&r, 70);
                    check_matmul_case(&r, b, qact, t, T, N, K, &st);
                }
            }
            fprintf(stderr,
                    "[kernels] %s qact=%d: worst f32 rel err %.3g; q8: worst err/bound %.3f, "
                    "mean err/sum|xw| %.3g\n",
                    b->name, qact, st.worst_f32, st.worst_q8_ratio,
                    st.n_q8 ? st.mean_q8_rel / st.n_q8 : 0.0);
            kern_free(b);
        }
}

/* ---- matmul batch invariance ---- */

static void test_matmul_batch_invariance(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x22);
    static const int Ts[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 32, 33, 48, 63, 64};
    for (int li = 0; li < n_levels; li++)
        for (int qact = 0; qact < 2; qact++) {
            unsigned fl = levels[li].flags | (qact ? 0 : KERN_CPU_F32_ACT);
            kern_backend *bs[3] = {mk(1, fl), mk(2, fl), mk(3, fl)};
            for (size_t ti = 0; ti < N_TYPES; ti++) {
                sd_dtype t = all_types[ti];
                int K = block_of(t) == 256 ? 512 : 576;
                int N = 37 + (int)tu_below(&r, 60);
                size_t rb = dtype_row_bytes(t, (size_t)K);
                uint8_t *w = malloc(rb * N);
                float *x = malloc(sizeof(float) * 64 * K);
                float *out = malloc(sizeof(float) * 64 * N);
                float *alone = malloc(sizeof(float) * N);
                float *probe = malloc(sizeof(float) * K);
                assert_true(w && x && out && alone && probe);
                rand_weights(&r, w, t, N, K);
                rand_x(&r, probe, (size_t)K);
                mm(bs[0], alone, probe, w, t, 1, N, K);
                for (size_t k = 0; k < sizeof Ts / sizeof Ts[0]; k++) {
                    int T = Ts[k];
                    int p = (int)tu_below(&r, (uint32_t)T);
                    rand_x(&r, x, (size_t)T * K);
                    memcpy(x + (size_t)p * K, probe, sizeof(float) * K);
                    kern_backend *b = bs[tu_below(&r, 3)];
                    mm(b, out, x, w, t, T, N, K);
                    if (memcmp(out + (size_t)p * N, alone, sizeof(float) * N) != 0) {
                        fprintf(stderr, "batch invariance broken: %s %s qact=%d T=%d p=%d\n",
                                b->name, dtype_name(t), qact, T, p);
                        fail();
                    }
                }
                free(w);
                free(x);
                free(out);
                free(alone);
                free(probe);
            }
            for (int i = 0; i < 3; i++)
                kern_free(bs[i]);
        }
}

/* ---- matmul_multi vs separate matmuls (bitwise) ---- */

static void test_matmul_multi(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x2b);
    enum { MAXN = 8 };
    for (int li = 0; li < n_levels; li++)
        for (int qact = 0; qact < 2; qact++) {
            unsigned fl = levels[li].flags | (qact ? 0 : KERN_CPU_F32_ACT);
            kern_backend *bs[3] = {mk(1, fl), mk(2, fl), mk(3, fl)};
            for (int cs = 0; cs < 24; cs++) {
                kern_backend *b = bs[tu_below(&r, 3)];
                int n = 1 + (int)tu_below(&r, MAXN);
                sd_dtype wts[MAXN];
                int Ns[MAXN], big = 0;
                int same = tu_below(&r, 2); /* one dtype for all (the model's case) or mixed */
                for (int i = 0; i < n; i++) {
                    wts[i] = same && i ? wts[0] : all_types[tu_below(&r, (uint32_t)N_TYPES)];
                    big |= block_of(wts[i]) == 256;
                    Ns[i] = 1 + (int)tu_below(&r, tu_below(&r, 2) ? 20 : 200);
                }
                int K = big ? 256 * (1 + (int)tu_below(&r, 3)) : 32 * (1 + (int)tu_below(&r, 40));
                int T = tu_below(&r, 2) ? 1 : 1 + (int)tu_below(&r, 40);
                float *x = malloc(sizeof(float) * T * K);
                uint8_t *w[MAXN];
                float *o1[MAXN], *o2[MAXN];
                assert_non_null(x);
                rand_x(&r, x, (size_t)T * K);
                for (int i = 0; i < n; i++) {
                    w[i] = malloc(dtype_row_bytes(wts[i], (size_t)K) * Ns[i]);
                    o1[i] = malloc(sizeof(float) * T * Ns[i]);
                    o2[i] = malloc(sizeof(float) * T * Ns[i]);
                    assert_true(w[i] && o1[i] && o2[i]);
                    rand_weights(&r, w[i], wts[i], Ns[i], K);
                    mm(b, o1[i], x, w[i], wts[i], T, Ns[i], K);
                }
                /* half the matrices through their packed copy (bitwise the same) */
                kern_mat mats[MAXN];
                const kern_mat *mc[MAXN];
                for (int i = 0; i < n; i++) {
                    mats[i] = (kern_mat){w[i], wts[i], NULL};
                    if (tu_below(&r, 2))
                        mats[i].packed = pack_copy(b, w[i], wts[i], Ns[i], K);
                    mc[i] = &mats[i];
                }
                b->matmul_multi(b->ctx, n, o2, x, mc, Ns, T, K);
                for (int i = 0; i < n; i++) {
                    if (memcmp(o1[i], o2[i], sizeof(float) * T * Ns[i]) != 0) {
                        fprintf(stderr,
                                "matmul_multi differs: %s qact=%d n=%d i=%d %s T=%d N=%d K=%d\n",
                                b->name, qact, n, i, dtype_name(wts[i]), T, Ns[i], K);
                        fail();
                    }
                    free(w[i]);
                    free((void *)mats[i].packed);
                    free(o1[i]);
                    free(o2[i]);
                }
                free(x);
            }
            for (int i = 0; i < 3; i++)
                kern_free(bs[i]);
        }
}

/* ---- packed weights: bitwise the file layout's results ---- */

static void test_matmul_packed(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x2c);
    static const int Ts[] = {1, 2, 3, 5, 8, 9, 15, 16, 17, 24, 33, 64};
    for (int li = 0; li < n_levels; li++)
        for (int qact = 0; qact < 2; qact++) {
            unsigned fl = levels[li].flags | (qact ? 0 : KERN_CPU_F32_ACT);
            kern_backend *bs[3] = {mk(1, fl), mk(2, fl), mk(3, fl)};
            int n_packed = 0;
            for (size_t ti = 0; ti < N_TYPES; ti++) {
                sd_dtype t = all_types[ti];
                if (!bs[0]->pack_bytes(bs[0]->ctx, t, 16, 576))
                    continue; /* this level reads the type as stored */
                for (int cs = 0; cs < 30; cs++) {
                    kern_backend *b = bs[tu_below(&r, 3)];
                    int bs_ = block_of(t);
                    /* K: 16-block groups, tails of 1..15 blocks and the model's 576 and 1536 */
                    int K = cs == 0   ? 576
                            : cs == 1 ? 1536
                                      : bs_ * (1 + (int)tu_below(&r, bs_ == 256 ? 6 : 60));
                    int N = 1 + (int)tu_below(&r, 90);
                    int T = cs < 2 ? Ts[tu_below(&r, sizeof Ts / sizeof Ts[0])]
                                   : 1 + (int)tu_below(&r, 70);
                    size_t rb = dtype_row_bytes(t, (size_t)K);
                    uint8_t *w = malloc(rb * N);
                    float *x = malloc(sizeof(float) * T * K);
                    float *o1 = malloc(sizeof(float) * T * N), *o2 = malloc(sizeof(float) * T * N);
                    assert_true(w && x && o1 && o2);
                    rand_weights(&r, w, t, N, K);
                    rand_x(&r, x, (size_t)T * K);
                    void *pk = pack_copy(b, w, t, N, K);
                    if (pk) {
                        n_packed++;
                        mm(b, o1, x, w, t, T, N, K);
                        kern_mat m = {w, t, pk};
                        b->matmul(b->ctx, o2, x, &m, T, N, K);
                        if (memcmp(o1, o2, sizeof(float) * T * N) != 0) {
                            fprintf(stderr, "packed differs: %s %s qact=%d T=%d N=%d K=%d\n",
                                    b->name, dtype_name(t), qact, T, N, K);
                            fail();
                        }
                    }
                    free(pk);
                    free(w);
                    free(x);
                    free(o1);
                    free(o2);
                }
            }
            /* the AVX-512 level packs the 32-element block types for 8-bit activations */
            if (li == n_levels - 1 && !strcmp(levels[li].name, "cpu-avx512vnni") && qact)
                assert_int_equal(n_packed, 90); /* Q4_0, Q4_1, Q8_0 */
            fprintf(stderr, "[kernels] %s qact=%d: %d packed cases bitwise equal\n",
                    levels[li].name, qact, n_packed);
            for (int i = 0; i < 3; i++)
                kern_free(bs[i]);
        }
}

/* ---- the attention ops that share work (dot16, wsum_m): bitwise the plain ones ---- */

static void test_attention_multi_query(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x45);
    static const int dhs[] = {12, 16, 40, 64, 65, 128};
    int n_multi = 0;
    for (int li = 0; li < n_levels; li++) {
        int lv = strcmp(levels[li].name, "cpu-portable") == 0 ? KCPU_LEVEL_PORTABLE
                 : strcmp(levels[li].name, "cpu-avx2") == 0   ? KCPU_LEVEL_AVX2
                                                              : KCPU_LEVEL_AVX512;
        kcpu_attn_ops ao;
        kcpu_ew_ops eo;
        assert_int_equal(kcpu_ops_for_level(lv, &ao, &eo), 0);
        assert_true(!ao.dot16 == !ao.wsum_m);
        if (!ao.dot16)
            continue;
        n_multi++;
        for (int c = 0; c < 60; c++) {
            int Dh = dhs[tu_below(&r, 6)], m = 1 + (int)tu_below(&r, 4);
            int np = (int)tu_below(&r, 40), na = (int)tu_below(&r, 6), n = np + na;
            int S = np + 8, Hkv = 1 + (int)tu_below(&r, 3);
            size_t row = (size_t)Hkv * Dh;
            float *q = malloc(sizeof(float) * 4 * Dh), *k = malloc(sizeof(float) * 16 * Dh);
            float *v = malloc(sizeof(float) * S * row), *p = malloc(sizeof(float) * 4 * (n + 1));
            float *o1 = malloc(sizeof(float) * 4 * Dh), *o2 = malloc(sizeof(float) * 4 * Dh);
            int anc[6];
            assert_true(q && k && v && p && o1 && o2);
            rand_x(&r, q, 4 * (size_t)Dh);
            rand_x(&r, k, 16 * (size_t)Dh);
            rand_x(&r, v, (size_t)S * row);
            rand_x(&r, p, 4 * (size_t)(n + 1));
            for (int i = 0; i < na; i++)
                anc[i] = np + (int)tu_below(&r, 8);
            const float *qs[4] = {q, q + Dh, q + 2 * Dh, q + 3 * Dh};
            float s1[16], s2[16], inv[4];
            const float *ks[16];
            int nk = 1 + (int)tu_below(&r, 16); /* 16 keys, or a short group */
            for (int u = 0; u < 16; u++)
                ks[u] = k + (size_t)((u * 7) % 16) * Dh;
            ao.dot16(s2, qs[0], ks, nk, Dh);
            for (int u = 0; u < nk; u++)
                s1[u] = ao.dot(qs[0], ks[u], Dh);
            if (memcmp(s1, s2, sizeof(float) * nk) != 0) {
                fprintf(stderr, "dot16 differs: %s Dh=%d nk=%d\n", levels[li].name, Dh, nk);
                fail();
            }
            float *os1[4], *os2[4];
            for (int j = 0; j < 4; j++) {
                os1[j] = o1 + (size_t)j * Dh;
                os2[j] = o2 + (size_t)j * Dh;
                inv[j] = 0.5f + tu_uniform(&r);
            }
            const float *vb = v + (size_t)tu_below(&r, (uint32_t)Hkv) * Dh;
            ao.wsum_m(os2, p, (size_t)(n + 1), m, vb, row, np, anc, n, Dh, inv);
            for (int j = 0; j < m; j++)
                ao.wsum(os1[j], p + (size_t)j * (n + 1), vb, row, np, anc, n, Dh, inv[j]);
            if (memcmp(o1, o2, sizeof(float) * (size_t)m * Dh) != 0) {
                fprintf(stderr, "wsum_m differs: %s Dh=%d m=%d n=%d\n", levels[li].name, Dh, m, n);
                fail();
            }
            free(q);
            free(k);
            free(v);
            free(p);
            free(o1);
            free(o2);
        }
    }
    fprintf(stderr, "[kernels] dot16 / wsum_m on %d level(s): bitwise equal to dot / wsum\n",
            n_multi);
}

/* ---- every level bitwise the portable oracle (docs/numerics.md) ---- */

/* Every weight type x activation mode: the SIMD levels' matmul, at 1-3 threads, on the stored
 * rows and on their own packed copy, memcmp-equal to the portable level at one thread. */
static void test_matmul_levels_bitwise(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x33);
    long n_cmp = 0;
    for (int qact = 0; qact < 2; qact++) {
        unsigned am = qact ? 0 : KERN_CPU_F32_ACT;
        kern_backend *p = mk(1, KERN_CPU_LEVEL(KERN_CPU_LEVEL_PORTABLE) | am);
        kern_backend *s[3][3];
        for (int li = 0; li < n_levels; li++)
            for (int th = 0; th < 3; th++)
                s[li][th] = mk(th + 1, levels[li].flags | am);
        for (int c = 0; c < 3; c++)
            for (size_t ti = 0; ti < N_TYPES; ti++) {
                sd_dtype t = all_types[ti];
                int bs = block_of(t);
                int K = bs * (1 + (int)tu_below(&r, bs == 256 ? 6 : 40));
                int N = 1 + (int)tu_below(&r, 90), T = 1 + (int)tu_below(&r, 40);
                if (c == 0) { /* the default model's shapes and a 64-node tree */
                    K = bs == 256 ? 768 : 576;
                    N = 1536;
                    T = (int)ti % 2 ? 64 : 1;
                }
                if (c == 1) /* the few-token paths (rows blocked instead of tokens) */
                    T = 2;
                size_t rb = dtype_row_bytes(t, (size_t)K);
                uint8_t *w = malloc(rb * N);
                float *x = malloc(sizeof(float) * T * K);
                float *o1 = malloc(sizeof(float) * T * N), *o2 = malloc(sizeof(float) * T * N);
                assert_true(w && x && o1 && o2);
                rand_weights(&r, w, t, N, K);
                rand_x(&r, x, (size_t)T * K);
                mm(p, o1, x, w, t, T, N, K);
                for (int li = 1; li < n_levels; li++)
                    for (int th = 0; th < 3; th++) {
                        kern_backend *b = s[li][th];
                        void *pk = pack_copy(b, w, t, N, K);
                        for (int packed = 0; packed < 1 + (pk != NULL); packed++) {
                            kern_mat m = {w, t, packed ? pk : NULL};
                            b->matmul(b->ctx, o2, x, &m, T, N, K);
                            if (memcmp(o1, o2, sizeof(float) * T * N) != 0) {
                                size_t i = 0;
                                while (memcmp(&o1[i], &o2[i], sizeof(float)) == 0)
                                    i++;
                                fprintf(stderr,
                                        "%s (%d threads, %s) vs portable, %s qact=%d T=%d N=%d "
                                        "K=%d: out[%zu] %.9g vs %.9g\n",
                                        b->name, th + 1, packed ? "packed" : "stored",
                                        dtype_name(t), qact, T, N, K, i, o2[i], o1[i]);
                                fail();
                            }
                            n_cmp++;
                        }
                        free(pk);
                    }
                free(w);
                free(x);
                free(o1);
                free(o2);
            }
        kern_free(p);
        for (int li = 0; li < n_levels; li++)
            for (int th = 0; th < 3; th++)
                kern_free(s[li][th]);
    }
    fprintf(stderr, "[kernels] matmul: %ld level/thread/layout cases memcmp-equal to portable\n",
            n_cmp);
}

/* ---- attention ---- */

typedef struct {
    int T, n_prefix, S;
    int *parent, *anc, *anc_off;
} tree;

/* Random tree of T nodes after n_prefix cached slots; node i lives at slot n_prefix + i. */
static void rand_tree(tu_rng *r, tree *tr, int T, int n_prefix)
{
    tr->T = T;
    tr->n_prefix = n_prefix;
    tr->S = n_prefix + T;
    tr->parent = malloc(sizeof(int) * T);
    tr->anc_off = malloc(sizeof(int) * (T + 1));
    tr->anc = malloc(sizeof(int) * T * (T + 1) / 2 + 1);
    int chain = tu_below(r, 3) == 0;
    int n = 0;
    for (int i = 0; i < T; i++) {
        tr->parent[i] = i == 0 ? -1 : chain ? i - 1 : (int)tu_below(r, (uint32_t)i + 1) - 1;
        int path[256], len = 0;
        for (int a = i; a >= 0; a = tr->parent[a])
            path[len++] = a;
        tr->anc_off[i] = n;
        for (int k = len - 1; k >= 0; k--)
            tr->anc[n++] = n_prefix + path[k];
    }
    tr->anc_off[T] = n;
}

static void tree_free(tree *tr)
{
    free(tr->parent);
    free(tr->anc);
    free(tr->anc_off);
}

/* attention (random trees, both cache layouts' strides), rmsnorm, rope, silu_mul, add and exp:
 * every level at 1 and 3 threads memcmp-equal to the portable level. */
static void test_ops_levels_bitwise(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x99);
    kern_backend *bs[3][2];
    for (int li = 0; li < n_levels; li++) {
        bs[li][0] = mk(1, levels[li].flags);
        bs[li][1] = mk(3, levels[li].flags);
    }
    static const struct {
        int H, Hkv, Dh;
    } shapes[] = {{9, 3, 64}, {4, 4, 32}, {8, 1, 16}, {6, 2, 128}, {2, 1, 40}, {3, 3, 12}};
    for (int c = 0; c < 24; c++) {
        int H = shapes[c % 6].H, Hkv = shapes[c % 6].Hkv, Dh = shapes[c % 6].Dh;
        int T = 1 + (int)tu_below(&r, 64), np = (int)tu_below(&r, 300);
        tree tr;
        rand_tree(&r, &tr, T, np);
        size_t row = (size_t)Hkv * Dh;
        float *kc = malloc(sizeof(float) * tr.S * row), *vc = malloc(sizeof(float) * tr.S * row);
        float *q = malloc(sizeof(float) * T * H * Dh), *o0 = malloc(sizeof(float) * T * H * Dh),
              *o1 = malloc(sizeof(float) * T * H * Dh);
        assert_true(kc && vc && q && o0 && o1);
        rand_x(&r, kc, tr.S * row);
        rand_x(&r, vc, tr.S * row);
        rand_x(&r, q, (size_t)T * H * Dh);
        float scale = (0.5f + 2.0f * tu_uniform(&r)) / sqrtf((float)Dh);
        for (int li = 0; li < n_levels; li++)
            for (int th = 0; th < 2; th++) {
                kern_backend *b = bs[li][th];
                b->attention(b->ctx, li + th ? o1 : o0, q, kc, vc, row, (size_t)Dh, np, tr.anc,
                             tr.anc_off, T, H, Hkv, Dh, scale);
                if (li + th && memcmp(o0, o1, sizeof(float) * T * H * Dh) != 0) {
                    fprintf(stderr,
                            "attention %s (%d threads) H=%d Hkv=%d Dh=%d T=%d np=%d differs\n",
                            b->name, th ? 3 : 1, H, Hkv, Dh, T, np);
                    fail();
                }
            }
        tree_free(&tr);
        free(kc);
        free(vc);
        free(q);
        free(o0);
        free(o1);
    }
    for (int c = 0; c < 16; c++) {
        int T = 1 + (int)tu_below(&r, 40), D = c < 2 ? 576 : 1 + (int)tu_below(&r, 1200);
        int n = T * D;
        float *x = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * D),
              *u = malloc(sizeof(float) * n);
        float *y0 = malloc(sizeof(float) * n), *y1 = malloc(sizeof(float) * n);
        int *pos = malloc(sizeof(int) * T);
        assert_true(x && w && u && y0 && y1 && pos);
        rand_x(&r, x, (size_t)n);
        rand_x(&r, w, (size_t)D);
        rand_x(&r, u, (size_t)n);
        if (c % 3 == 0)
            for (int i = 0; i < n; i++)
                x[i] *= 20.0f; /* into the tails of the sigmoid and exp */
        for (int t = 0; t < T; t++)
            pos[t] = (int)tu_below(&r, 40000);
        int Dh = 16 * (1 + c % 8), H = D / Dh > 0 ? D / Dh : 1, neox = c & 1;
        for (int op = 0; op < 5; op++)
            for (int li = 0; li < n_levels; li++)
                for (int th = 0; th < 2; th++) {
                    kern_backend *b = bs[li][th];
                    float *y = li + th ? y1 : y0;
                    size_t len = (size_t)n;
                    memcpy(y, x, sizeof(float) * n);
                    if (op == 0) {
                        b->rmsnorm(b->ctx, y, x, w, T, D, 1e-5f);
                    } else if (op == 1) {
                        b->silu_mul(b->ctx, y, u, n);
                    } else if (op == 2) {
                        b->add(b->ctx, y, u, n);
                    } else if (op == 3) {
                        if (H * Dh > D)
                            continue;
                        b->rope(b->ctx, y, pos, T, H, Dh, Dh, 10000.0f, neox);
                        len = (size_t)T * H * Dh;
                    } else {
                        kcpu_attn_ops ao;
                        kcpu_ew_ops eo;
                        int lvl = strcmp(levels[li].name, "cpu-portable") == 0 ? KCPU_LEVEL_PORTABLE
                                  : strcmp(levels[li].name, "cpu-avx2") == 0   ? KCPU_LEVEL_AVX2
                                                                               : KCPU_LEVEL_AVX512;
                        assert_int_equal(kcpu_ops_for_level(lvl, &ao, &eo), 0);
                        eo.exp(y, x, n);
                    }
                    if (li + th && memcmp(y0, y1, sizeof(float) * len) != 0) {
                        size_t i = 0;
                        while (memcmp(&y0[i], &y1[i], sizeof(float)) == 0)
                            i++;
                        static const char *ops[] = {"rmsnorm", "silu_mul", "add", "rope", "exp"};
                        fprintf(stderr,
                                "%s %s (%d threads) D=%d T=%d: [%zu] %.9g vs %.9g (x %.9g)\n",
                                ops[op], b->name, th ? 3 : 1, D, T, i, y1[i], y0[i], x[i]);
                        fail();
                    }
                }
        free(x);
        free(w);
        free(u);
        free(y0);
        free(y1);
        free(pos);
    }
    for (int li = 0; li < n_levels; li++) {
        kern_free(bs[li][0]);
        kern_free(bs[li][1]);
    }
    fprintf(stderr,
            "[kernels] attention, rmsnorm, silu_mul, add, rope, exp: %d level(s) x 1/3 "
            "threads memcmp-equal to portable\n",
            n_levels);
}

static void test_attention(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x44);
    static const struct {
        int H, Hkv, Dh;
    } shapes[] = {{9, 3, 64}, {4, 4, 32}, {8, 1, 16}, {6, 2, 128}, {2, 1, 40}, {3, 3, 12}};
    /* per ISA level: one thread and three threads */
    kern_backend *bs[3][2];
    for (int li = 0; li < n_levels; li++) {
        bs[li][0] = mk(1, levels[li].flags);
        bs[li][1] = mk(3, levels[li].flags);
    }
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int c = 0; c < 8; c++) {
            int H = shapes[si].H, Hkv = shapes[si].Hkv, Dh = shapes[si].Dh;
            int T = 1 + (int)tu_below(&r, 40), np = (int)tu_below(&r, 300);
            if (c == 0)
                np = 0;
            tree tr;
            rand_tree(&r, &tr, T, np);
            size_t row = (size_t)Hkv * Dh;
            float *kc = malloc(sizeof(float) * tr.S * row),
                  *vc = malloc(sizeof(float) * tr.S * row);
            float *q = malloc(sizeof(float) * T * H * Dh),
                  *out = malloc(sizeof(float) * T * H * Dh);
            float *o1 = malloc(sizeof(float) * H * Dh);
            double *sc = malloc(sizeof(double) * tr.S);
            assert_true(kc && vc && q && out && o1 && sc);
            float qs = 0.5f + 3.0f * tu_uniform(&r);
            rand_x(&r, kc, tr.S * row);
            rand_x(&r, vc, tr.S * row);
            rand_x(&r, q, (size_t)T * H * Dh);
            for (size_t i = 0; i < (size_t)T * H * Dh; i++)
                q[i] *= qs;
            float scale = 1.0f / sqrtf((float)Dh);
            int lv = (int)tu_below(&r, (uint32_t)n_levels);
            kern_backend *b = bs[lv][tu_below(&r, 2)];
            b->attention(b->ctx, out, q, kc, vc, row, (size_t)Dh, np, tr.anc, tr.anc_off, T, H, Hkv,
                         Dh, scale);
            for (int t = 0; t < T; t++)
                for (int h = 0; h < H; h++) {
                    int kvh = h / (H / Hkv);
                    const float *qv = q + ((size_t)t * H + h) * Dh;
                    int nk = np + tr.anc_off[t + 1] - tr.anc_off[t];
                    double mx = -1e300;
                    for (int i = 0; i < nk; i++) {
                        int slot = i < np ? i : tr.anc[tr.anc_off[t] + i - np];
                        double s = 0;
                        for (int d = 0; d < Dh; d++)
                            s += (double)qv[d] * kc[slot * row + kvh * Dh + d];
                        sc[i] = s * scale;
                        mx = fmax(mx, sc[i]);
                    }
                    double sum = 0;
                    for (int i = 0; i < nk; i++)
                        sum += (sc[i] = exp(sc[i] - mx));
                    for (int d = 0; d < Dh; d++) {
                        double o = 0, mag = 0;
                        for (int i = 0; i < nk; i++) {
                            int slot = i < np ? i : tr.anc[tr.anc_off[t] + i - np];
                            o += sc[i] * vc[slot * row + kvh * Dh + d];
                            mag += sc[i] * fabs(vc[slot * row + kvh * Dh + d]);
                        }
                        double got = out[((size_t)t * H + h) * Dh + d];
                        /* scores carry ~|q||k| * 2^-24 error, exp amplifies it by the score */
                        if (!(fabs(got - o / sum) <= 2e-5 * mag / sum * (1 + fabs(mx)) + 1e-6)) {
                            fprintf(stderr,
                                    "attention %s H=%d Hkv=%d Dh=%d T=%d np=%d t=%d h=%d "
                                    "d=%d: got %.9g ref %.9g\n",
                                    b->name, H, Hkv, Dh, T, np, t, h, d, got, o / sum);
                            fail();
                        }
                    }
                }
            /* batch invariance: each node alone (T=1, its own ancestor list), reading the
             * cache in the head-major layout (the engine's): bitwise the same */
            float *kh = malloc(sizeof(float) * tr.S * row),
                  *vh = malloc(sizeof(float) * tr.S * row);
            assert_true(kh && vh);
            for (size_t sl = 0; sl < (size_t)tr.S; sl++)
                for (int g = 0; g < Hkv; g++) {
                    memcpy(kh + ((size_t)g * tr.S + sl) * Dh, kc + sl * row + (size_t)g * Dh,
                           sizeof(float) * Dh);
                    memcpy(vh + ((size_t)g * tr.S + sl) * Dh, vc + sl * row + (size_t)g * Dh,
                           sizeof(float) * Dh);
                }
            for (int t = 0; t < T; t++) {
                int off[2] = {0, tr.anc_off[t + 1] - tr.anc_off[t]};
                kern_backend *b1 = bs[lv][tu_below(&r, 2)];
                b1->attention(b1->ctx, o1, q + (size_t)t * H * Dh, kh, vh, (size_t)Dh,
                              (size_t)tr.S * Dh, np, tr.anc + tr.anc_off[t], off, 1, H, Hkv, Dh,
                              scale);
                assert_memory_equal(o1, out + (size_t)t * H * Dh, sizeof(float) * H * Dh);
            }
            free(kh);
            free(vh);
            tree_free(&tr);
            free(kc);
            free(vc);
            free(q);
            free(out);
            free(o1);
            free(sc);
        }
    for (int li = 0; li < n_levels; li++) {
        kern_free(bs[li][0]);
        kern_free(bs[li][1]);
    }
}

/* ---- rope, rmsnorm, elementwise ---- */

static void test_rope(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x55);
    kern_backend *bs[2] = {mk(1, 0), mk(3, 0)}, *bl[3];
    for (int li = 0; li < n_levels; li++)
        bl[li] = mk(2, levels[li].flags);
    for (int c = 0; c < 24; c++) {
        int neox = c & 1;
        int H = 1 + (int)tu_below(&r, 9), Dh = 16 * (1 + (int)tu_below(&r, 8));
        int n_rot = c % 3 == 0 ? Dh / 2 : c % 5 == 0 ? Dh - 2 * (int)tu_below(&r, 8) : Dh;
        int T = 1 + (int)tu_below(&r, 33);
        float base = c % 4 == 0 ? 1000000.0f : 10000.0f;
        float *x = malloc(sizeof(float) * T * H * Dh), *y = malloc(sizeof(float) * T * H * Dh);
        int *pos = malloc(sizeof(int) * T);
        assert_true(x && y && pos);
        rand_x(&r, x, (size_t)T * H * Dh);
        for (int t = 0; t < T; t++)
            pos[t] = (int)tu_below(&r, 40000);
        memcpy(y, x, sizeof(float) * T * H * Dh);
        kern_backend *b = bs[tu_below(&r, 2)];
        b->rope(b->ctx, y, pos, T, H, Dh, n_rot, base, neox);
        /* every level rotates bitwise alike (rounded products, no FMA) */
        for (int li = 0; li < n_levels; li++) {
            float *yl = malloc(sizeof(float) * T * H * Dh);
            assert_non_null(yl);
            memcpy(yl, x, sizeof(float) * T * H * Dh);
            bl[li]->rope(bl[li]->ctx, yl, pos, T, H, Dh, n_rot, base, neox);
            assert_memory_equal(yl, y, sizeof(float) * T * H * Dh);
            free(yl);
        }
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                const float *xi = x + ((size_t)t * H + h) * Dh;
                const float *yo = y + ((size_t)t * H + h) * Dh;
                for (int i = 0; i < n_rot / 2; i++) {
                    double th = pos[t] * pow(base, -2.0 * i / n_rot);
                    int i0 = neox ? i : 2 * i, i1 = neox ? i + n_rot / 2 : 2 * i + 1;
                    double r0 = xi[i0] * cos(th) - xi[i1] * sin(th);
                    double r1 = xi[i0] * sin(th) + xi[i1] * cos(th);
                    double tol = 1e-6 * (fabs(xi[i0]) + fabs(xi[i1])) + 1e-30;
                    if (!(fabs(yo[i0] - r0) <= tol && fabs(yo[i1] - r1) <= tol)) {
                        fprintf(stderr, "rope neox=%d pos=%d i=%d: %g %g vs %g %g\n", neox, pos[t],
                                i, yo[i0], yo[i1], r0, r1);
                        fail();
                    }
                }
                for (int i = n_rot; i < Dh; i++)
                    assert_true(yo[i] == xi[i]);
            }
        /* per-position invariance */
        int t = (int)tu_below(&r, (uint32_t)T);
        float *z = malloc(sizeof(float) * H * Dh);
        assert_non_null(z);
        memcpy(z, x + (size_t)t * H * Dh, sizeof(float) * H * Dh);
        bs[0]->rope(bs[0]->ctx, z, pos + t, 1, H, Dh, n_rot, base, neox);
        assert_memory_equal(z, y + (size_t)t * H * Dh, sizeof(float) * H * Dh);
        /* the backend keeps the last positions' cos/sin: the same positions again (a hit),
         * then one position changed in place (a miss), each against a position alone */
        float *y2 = malloc(sizeof(float) * T * H * Dh);
        assert_non_null(y2);
        memcpy(y2, x, sizeof(float) * T * H * Dh);
        b->rope(b->ctx, y2, pos, T, H, Dh, n_rot, base, neox);
        assert_memory_equal(y2, y, sizeof(float) * T * H * Dh);
        pos[t] += 1 + (int)tu_below(&r, 100);
        memcpy(y2, x, sizeof(float) * T * H * Dh);
        b->rope(b->ctx, y2, pos, T, H, Dh, n_rot, base, neox);
        memcpy(z, x + (size_t)t * H * Dh, sizeof(float) * H * Dh);
        bs[0]->rope(bs[0]->ctx, z, pos + t, 1, H, Dh, n_rot, base, neox);
        assert_memory_equal(z, y2 + (size_t)t * H * Dh, sizeof(float) * H * Dh);
        free(y2);
        free(z);
        free(x);
        free(y);
        free(pos);
    }
    for (int li = 0; li < n_levels; li++)
        kern_free(bl[li]);
    kern_free(bs[0]);
    kern_free(bs[1]);
}

static void test_rmsnorm(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x66);
    for (int li = 0; li < n_levels; li++) {
        kern_backend *bs[2] = {mk(1, levels[li].flags), mk(3, levels[li].flags)};
        for (int c = 0; c < 20; c++) {
            int T = 1 + (int)tu_below(&r, 70), D = 1 + (int)tu_below(&r, 1200);
            if (c < 3)
                D = 576;
            float eps = c & 1 ? 1e-5f : 1e-6f;
            float *x = malloc(sizeof(float) * T * D), *y = malloc(sizeof(float) * T * D);
            float *w = malloc(sizeof(float) * D), *z = malloc(sizeof(float) * D);
            assert_true(x && y && w && z);
            rand_x(&r, x, (size_t)T * D);
            rand_x(&r, w, (size_t)D);
            kern_backend *b = bs[tu_below(&r, 2)];
            b->rmsnorm(b->ctx, y, x, w, T, D, eps);
            for (int t = 0; t < T; t++) {
                const float *xr = x + (size_t)t * D;
                double ss = 0;
                for (int i = 0; i < D; i++)
                    ss += (double)xr[i] * xr[i];
                double rs = 1.0 / sqrt(ss / D + eps);
                for (int i = 0; i < D; i++) {
                    double ref = xr[i] * rs * w[i];
                    if (!(fabs(y[(size_t)t * D + i] - ref) <= 1e-5 * fabs(ref) + 1e-30)) {
                        fprintf(stderr, "rmsnorm %s D=%d t=%d i=%d: %.9g vs %.9g\n",
                                levels[li].name, D, t, i, y[(size_t)t * D + i], ref);
                        fail();
                    }
                }
            }
            /* batch invariance: one row alone, in place */
            int t = (int)tu_below(&r, (uint32_t)T);
            memcpy(z, x + (size_t)t * D, sizeof(float) * D);
            bs[0]->rmsnorm(bs[0]->ctx, z, z, w, 1, D, eps);
            assert_memory_equal(z, y + (size_t)t * D, sizeof(float) * D);
            free(x);
            free(y);
            free(w);
            free(z);
        }
        kern_free(bs[0]);
        kern_free(bs[1]);
    }
}

/* Units in the last place of the float nearest r (denormal spacing below FLT_MIN). */
static double ulp_f32(double r)
{
    r = fabs(r);
    if (r < 0x1p-126)
        return 0x1p-149;
    int e;
    frexp(r, &e);
    return ldexp(1.0, e - 24);
}

/* The level's exp (one polynomial on every level, docs/numerics.md) against exp in double: within 2 ulp on
 * random and swept inputs over the whole float range, inf/0/NaN where expf gives them, and
 * each element bitwise the same at any offset and length (vector lane or masked tail). */
static void test_exp(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x88);
    enum { N = 20000 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N),
          *z = malloc(sizeof(float) * N);
    assert_true(x && y && z);
    static const float special[] = {0.0f,    -0.0f,   1.0f,     -1.0f,     88.72f,  88.7228f,
                                    88.73f,  89.0f,   100.0f,   1e30f,     -87.3f,  -87.4f,
                                    -100.0f, -103.9f, -104.0f,  -105.0f,   -120.0f, -1e30f,
                                    1e-30f,  -1e-30f, 0.34657f, -0.34657f, 0.5f,    -0.5f};
    int ns = (int)(sizeof special / sizeof special[0]);
    for (int li = 0; li < n_levels; li++) {
        int lv = strcmp(levels[li].name, "cpu-portable") == 0 ? KCPU_LEVEL_PORTABLE
                 : strcmp(levels[li].name, "cpu-avx2") == 0   ? KCPU_LEVEL_AVX2
                                                              : KCPU_LEVEL_AVX512;
        kcpu_attn_ops ao;
        kcpu_ew_ops eo;
        assert_int_equal(kcpu_ops_for_level(lv, &ao, &eo), 0);
        for (int c = 0; c < 4; c++) {
            for (int i = 0; i < N; i++) {
                if (i < ns)
                    x[i] = special[i];
                else if (c == 0) /* a dense sweep around 0 */
                    x[i] = (float)(i - N / 2) * 1e-3f;
                else if (c == 1) /* the denormal / overflow edges */
                    x[i] = i % 2 ? 88.0f + tu_uniform(&r) : -110.0f + 25.0f * tu_uniform(&r);
                else
                    x[i] = -110.0f + 200.0f * tu_uniform(&r);
            }
            eo.exp(y, x, N);
            double worst = 0;
            for (int i = 0; i < N; i++) {
                double ref = exp((double)x[i]);
                if (ref > 3.4028234663852886e38) {
                    if (!isinf(y[i]) || y[i] < 0) {
                        fprintf(stderr, "exp %s x=%.9g: %.9g, want inf\n", levels[li].name, x[i],
                                y[i]);
                        fail();
                    }
                    continue;
                }
                double e = fabs(y[i] - ref) / ulp_f32(ref);
                worst = e > worst ? e : worst;
                if (!(e <= 2.0)) {
                    fprintf(stderr, "exp %s x=%.9g: %.9g vs %.9g (%.2f ulp)\n", levels[li].name,
                            x[i], y[i], ref, e);
                    fail();
                }
            }
            if (c == 3)
                fprintf(stderr, "[kernels] exp %s: worst %.3f ulp\n", levels[li].name, worst);
            /* a window at a random offset and length: the same bits */
            for (int k = 0; k < 20; k++) {
                int a = (int)tu_below(&r, N), n = 1 + (int)tu_below(&r, 40);
                if (a + n > N)
                    n = N - a;
                eo.exp(z, x + a, n);
                assert_memory_equal(z, y + a, sizeof(float) * n);
            }
        }
        static const float nonfinite[] = {INFINITY, -INFINITY, NAN};
        float o[3];
        eo.exp(o, nonfinite, 3);
        assert_true(isinf(o[0]) && o[0] > 0);
        assert_true(o[1] == 0.0f);
        assert_true(isnan(o[2]));
    }
    free(x);
    free(y);
    free(z);
}

static void test_elementwise(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0x77);
    for (int li = 0; li < n_levels; li++) {
        kern_backend *b = mk(2, levels[li].flags), *b1 = mk(1, levels[li].flags);
        for (int c = 0; c < 8; c++) {
            int n = 1 + (int)tu_below(&r, 100000);
            if (c == 0)
                n = 16 * 1536; /* T*F of the default model at T = 16 */
            float *g = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n);
            float *g0 = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * 64);
            assert_true(g && u && g0 && z);
            rand_x(&r, g, (size_t)n);
            rand_x(&r, u, (size_t)n);
            if (c == 1) /* far into both tails of the sigmoid */
                for (int i = 0; i < n; i++)
                    g[i] *= 40.0f;
            if (c == 2)
                for (int i = 0; i < n && i < 8; i++)
                    g[i] = i & 1 ? 1e30f : -1e30f;
            memcpy(g0, g, sizeof(float) * n);
            b->silu_mul(b->ctx, g, u, n);
            for (int i = 0; i < n; i++) {
                double ref = g0[i] / (1.0 + exp(-(double)g0[i])) * u[i];
                if (!(fabs(g[i] - ref) <=
                      1e-6 * fabs(ref) + 1e-30)) { /* exp(-g) overflows below -88.7 */
                    fprintf(stderr, "silu_mul %s i=%d x=%g: %.9g vs %.9g\n", levels[li].name, i,
                            g0[i], g[i], ref);
                    fail();
                }
            }
            /* batch invariance: a window at a random offset and length, one thread */
            for (int k = 0; k < 20; k++) {
                int a = (int)tu_below(&r, (uint32_t)n), m = 1 + (int)tu_below(&r, 64);
                if (a + m > n)
                    m = n - a;
                memcpy(z, g0 + a, sizeof(float) * m);
                b1->silu_mul(b1->ctx, z, u + a, m);
                assert_memory_equal(z, g + a, sizeof(float) * m);
            }
            memcpy(g, g0, sizeof(float) * n);
            b->add(b->ctx, g, u, n);
            for (int i = 0; i < n; i++)
                assert_true(g[i] == g0[i] + u[i]);
            int T = 1 + n % 7, N = n / T;
            memcpy(g, g0, sizeof(float) * n);
            b->add_bias(b->ctx, g, u, T, N);
            for (int t = 0; t < T; t++)
                for (int i = 0; i < N; i++)
                    assert_true(g[t * N + i] == g0[t * N + i] + u[i]);
            free(g);
            free(u);
            free(g0);
            free(z);
        }
        kern_free(b);
        kern_free(b1);
    }
}

static void test_create_and_features(void **state)
{
    (void)state;
    kern_backend *b = NULL;
    assert_int_equal(kern_cpu_create(&b, 0, 0), SD_OK);
    assert_non_null(b->name);
    assert_true(strncmp(b->name, "cpu-", 4) == 0);
    kern_free(b);
    kern_free(NULL);
    assert_non_null(kern_cpu_features());
    /* a pool survives many tiny dispatches (the decode pattern) */
    b = mk(3, 0);
    float x[64], w[64 * 8], o[8];
    for (int i = 0; i < 64; i++)
        x[i] = (float)i;
    for (int i = 0; i < 64 * 8; i++)
        w[i] = 1.0f;
    for (int it = 0; it < 20000; it++) {
        mm(b, o, x, w, SD_DTYPE_F32, 1, 8, 64);
        assert_true(o[7] == 2016.0f);
    }
    kern_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_and_features),
        cmocka_unit_test(test_matmul_reference),
        cmocka_unit_test(test_matmul_batch_invariance),
        cmocka_unit_test(test_matmul_multi),
        cmocka_unit_test(test_matmul_packed),
        cmocka_unit_test(test_matmul_levels_bitwise),
        cmocka_unit_test(test_ops_levels_bitwise),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_multi_query),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_elementwise),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
