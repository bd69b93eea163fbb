/* cuda_testutil: random inputs and comparisons shared by the tests in tests/cuda (header-only:
 * each test is one translation unit). The generator is the test's `rng`. */
#ifndef SD_CUDA_TESTUTIL_H
#define SD_CUDA_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "kernels/dtype.h"
#include "testutil.h"
}

extern tu_rng rng;

/* Every test's group set-up starts here: on a machine without a CUDA device (a GPU build run
 * where there is none) exit 77, ctest's skip code — the simulator always has its device — then
 * seed `rng` (the seed is printed). */
static inline void cu_test_start(void)
{
#if !defined(CUSIM)
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        fprintf(stderr, "no CUDA device: skipping\n");
        exit(77);
    }
#endif
    tu_rng_init(&rng, tu_seed());
}

/* ---- random inputs (as tests/test_kernels.c) ---- */

static inline void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void rand_weights(uint8_t *w, sd_dtype t, int N, int K)
{
    size_t rb = dtype_row_bytes(t, (size_t)K);
    for (size_t i = 0; i < rb * (size_t)N; i++)
        w[i] = (uint8_t)tu_next(&rng);
    for (int n = 0; n < N; n++) {
        uint8_t *row = w + rb * (size_t)n;
        switch (t) {
        case SD_DTYPE_F32:
            for (int k = 0; k < K; k++) {
                float f = tu_normal(&rng);
                memcpy(row + 4 * k, &f, 4);
            }
            break;
        case SD_DTYPE_F16:
            for (int k = 0; k < K; k++)
                put16(row + 2 * k, dtype_f32_to_f16(tu_normal(&rng)));
            break;
        case SD_DTYPE_BF16:
            for (int k = 0; k < K; k++)
                put16(row + 2 * k, dtype_f32_to_bf16(tu_normal(&rng)));
            break;
        case SD_DTYPE_Q8_0:
            for (int b = 0; b < K / 32; b++)
                put16(row + 34 * b, dtype_f32_to_f16(0.002f + 0.02f * tu_uniform(&rng)));
            break;
        case SD_DTYPE_Q4_0:
            for (int b = 0; b < K / 32; b++)
                put16(row + 18 * b, dtype_f32_to_f16((tu_uniform(&rng) - 0.3f) * 0.3f));
            break;
        case SD_DTYPE_Q4_1:
            for (int b = 0; b < K / 32; b++) {
                put16(row + 20 * b, dtype_f32_to_f16(0.01f + 0.2f * tu_uniform(&rng)));
                put16(row + 20 * b + 2, dtype_f32_to_f16(-1.5f + 1.0f * tu_uniform(&rng)));
            }
            break;
        case SD_DTYPE_Q4_K:
            for (int b = 0; b < K / 256; b++) {
                put16(row + 144 * b, dtype_f32_to_f16(0.001f + 0.01f * tu_uniform(&rng)));
                put16(row + 144 * b + 2, dtype_f32_to_f16(0.001f + 0.01f * tu_uniform(&rng)));
            }
            break;
        case SD_DTYPE_Q6_K:
            for (int b = 0; b < K / 256; b++)
                put16(row + 210 * b + 208, dtype_f32_to_f16((tu_uniform(&rng) - 0.2f) * 0.005f));
            break;
        }
    }
}

static inline void rand_x(float *x, size_t n)
{
    int kind = (int)tu_below(&rng, 3);
    for (size_t i = 0; i < n; i++) {
        float v = tu_normal(&rng);
        if (kind == 1 && tu_below(&rng, 50) == 0)
            v *= 30.0f; /* outliers, as real activations have */
        if (kind == 2 && tu_below(&rng, 8) == 0)
            v = 0.0f;
        x[i] = v;
    }
}

static const sd_dtype all_types[] = {SD_DTYPE_F32,  SD_DTYPE_F16,  SD_DTYPE_BF16, SD_DTYPE_Q8_0,
                                     SD_DTYPE_Q4_0, SD_DTYPE_Q4_1, SD_DTYPE_Q4_K, SD_DTYPE_Q6_K};

static inline int first_diff(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, 4) != 0)
            return (int)i;
    return -1;
}

static inline void assert_same(const char *what, const float *got, const float *want, size_t n)
{
    int i = first_diff(got, want, n);
    if (i >= 0)
        fprintf(stderr, "%s: element %d of %zu differs: %.9g vs CPU %.9g\n", what, i, n, got[i],
                want[i]);
    assert_int_equal(i, -1);
}

/* A random tree of T nodes over a prefix of np slots: node t's parent is an earlier node or the
 * prefix (-1); its keys are the prefix then its ancestors root-to-node, then itself; node t's
 * own slot is np + t. */
typedef struct {
    int T, np, *anc, *off;
} tree;

static inline tree rand_tree(int T, int np)
{
    tree r;
    r.T = T;
    r.np = np;
    r.off = (int *)malloc(sizeof(int) * (T + 1));
    int *par = (int *)malloc(sizeof(int) * T), *depth = (int *)malloc(sizeof(int) * T);
    int total = 0;
    for (int t = 0; t < T; t++) {
        par[t] = t == 0 || tu_below(&rng, 4) == 0 ? -1 : (int)tu_below(&rng, (unsigned)t);
        depth[t] = par[t] < 0 ? 1 : depth[par[t]] + 1;
        total += depth[t];
    }
    r.anc = (int *)malloc(sizeof(int) * (total ? total : 1));
    int k = 0;
    for (int t = 0; t < T; t++) {
        r.off[t] = k;
        k += depth[t];
        int j = k - 1;
        for (int a = t; a >= 0; a = par[a])
            r.anc[j--] = np + a;
    }
    r.off[T] = k;
    free(par);
    free(depth);
    return r;
}

#endif
