/* test_cuda_kernels: every kernel of kernels/cuda/kcuda_ops.cu against the CPU backend on fresh
 * random shapes and data (seed printed; replay with SD_SEED=...). Runs in the simulator (ctest
 * label cuda-sim, all three fiber orders) and, built by nvcc, on a real GPU (cuda-gpu).
 *
 * Exactness: every op is memcmp-equal to the CPU portable level, the oracle of the canonical
 * numerics (docs/numerics.md, canon1) — matmul (8-bit activations, every quantized type; f32
 * activations, every type), the activation quantization record, rmsnorm (also in place), rope
 * (normal and neox), tree attention (slot- and head-major caches), silu_mul, EXP, add,
 * add_bias, argmax (sample_argmax's rule) — and batch invariant by itself: a matmul row or an
 * attention node alone is bitwise the same row / node inside a batch or a random tree.
 * SD_TEST_LABELS: cuda-sim */
#include "kernels/cuda/kcuda.h"
#include "tests/cuda/cuda_testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "engine/sample.h"
#include "kernels/cpu/cpu_impl.h"
#include "kernels/kernels.h"
#include "testutil.h"
}

tu_rng rng;
static kern_backend *cpu_q8, *cpu_f32; /* portable level, 1 thread */

static int group_setup(void **state)
{
    (void)state;
    cu_test_start();
    unsigned portable = KERN_CPU_LEVEL(KERN_CPU_LEVEL_PORTABLE);
    if (kern_cpu_create(&cpu_q8, 1, portable) != SD_OK ||
        kern_cpu_create(&cpu_f32, 1, portable | KERN_CPU_F32_ACT) != SD_OK)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    kern_free(cpu_q8);
    kern_free(cpu_f32);
    return 0;
}

/* ---- device memory helpers ---- */

static void *dev(size_t n)
{
    void *p = NULL;
    assert_int_equal(cudaMalloc(&p, n ? n : 1), cudaSuccess);
    return p;
}

static void *up(const void *h, size_t n)
{
    void *d = dev(n);
    assert_int_equal(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice), cudaSuccess);
    return d;
}

static void down(void *h, const void *d, size_t n)
{
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost), cudaSuccess);
}

static void ok(cudaError_t e)
{
    if (e != cudaSuccess)
        fprintf(stderr, "cuda error %d: %s\n", (int)e, cudaGetErrorString(e));
    assert_int_equal(e, cudaSuccess);
}

/* ---- matmul ---- */

/* One random shape per (type, mode): the GPU result against the CPU portable level, memcmp;
 * and every row of the batch against the same row computed alone (T = 1). */
static void matmul_case(sd_dtype wt, int q8)
{
    int be = wt == SD_DTYPE_Q4_K || wt == SD_DTYPE_Q6_K ? 256 : 32;
    int K = be * (1 + (int)tu_below(&rng, be == 256 ? 4 : 24));
    int N = 1 + (int)tu_below(&rng, 70), T = 1 + (int)tu_below(&rng, 20);
    size_t rb = dtype_row_bytes(wt, (size_t)K);
    uint8_t *w = (uint8_t *)malloc(rb * N);
    float *x = (float *)malloc(sizeof(float) * T * K),
          *ref = (float *)malloc(sizeof(float) * T * N),
          *got = (float *)malloc(sizeof(float) * T * N), *one = (float *)malloc(sizeof(float) * N);
    rand_weights(w, wt, N, K);
    rand_x(x, (size_t)T * K);
    kern_mat m = {w, wt, NULL};
    kern_backend *cpu = q8 ? cpu_q8 : cpu_f32;
    cpu->matmul(cpu->ctx, ref, x, &m, T, N, K);
    void *dw = up(w, rb * N);
    float *dx = (float *)up(x, sizeof(float) * T * K), *dout = (float *)dev(sizeof(float) * T * N);
    int8_t *dq = (int8_t *)dev((size_t)T * K);
    float *dd = (float *)dev(sizeof(float) * T * K / 32);
    int use_q8 = q8 && kcuda_q8_type(wt);
    if (use_q8) {
        ok(kcuda_quant_q8(dq, dd, dx, T, K, 0));
        ok(kcuda_matmul_q8(dout, N, dq, dd, dw, wt, T, N, K, 0));
    } else {
        ok(kcuda_matmul_f32(dout, N, dx, dw, wt, T, N, K, 0));
    }
    down(got, dout, sizeof(float) * T * N);
    char what[96];
    snprintf(what, sizeof what, "matmul %s %s T=%d N=%d K=%d", dtype_name(wt),
             use_q8 ? "q8-act" : "f32-act", T, N, K);
    assert_same(what, got, ref, (size_t)T * N);
    int t = (int)tu_below(&rng, (unsigned)T); /* batch invariance: row t alone */
    if (use_q8) {
        ok(kcuda_quant_q8(dq, dd, dx + (size_t)t * K, 1, K, 0));
        ok(kcuda_matmul_q8(dout, N, dq, dd, dw, wt, 1, N, K, 0));
    } else {
        ok(kcuda_matmul_f32(dout, N, dx + (size_t)t * K, dw, wt, 1, N, K, 0));
    }
    down(one, dout, sizeof(float) * N);
    assert_same("matmul row alone vs in batch", one, got + (size_t)t * N, (size_t)N);
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dout);
    cudaFree(dq);
    cudaFree(dd);
    free(w);
    free(x);
    free(ref);
    free(got);
    free(one);
}

static void test_matmul_q8(void **state)
{
    (void)state;
    for (int rep = 0; rep < 3; rep++)
        for (size_t i = 0; i < sizeof all_types / sizeof all_types[0]; i++)
            matmul_case(all_types[i], 1);
}

static void test_matmul_f32(void **state)
{
    (void)state;
    for (int rep = 0; rep < 2; rep++)
        for (size_t i = 0; i < sizeof all_types / sizeof all_types[0]; i++)
            matmul_case(all_types[i], 0);
}

/* the record itself: bitwise kcpu_q8_quantize_row's q and d */
static void test_quant_record(void **state)
{
    (void)state;
    int K = 32 * (1 + (int)tu_below(&rng, 40)), T = 1 + (int)tu_below(&rng, 6);
    float *x = (float *)malloc(sizeof(float) * T * K);
    rand_x(x, (size_t)T * K);
    x[0] = 0.0f;
    for (int j = 0; j < 32 && K >= 64; j++)
        x[32 + j] = 0.0f; /* an all-zero block: d = 0, q = 0 */
    float *dx = (float *)up(x, sizeof(float) * T * K),
          *dd = (float *)dev(sizeof(float) * T * K / 32);
    int8_t *dq = (int8_t *)dev((size_t)T * K);
    ok(kcuda_quant_q8(dq, dd, dx, T, K, 0));
    int8_t *q = (int8_t *)malloc((size_t)T * K);
    float *d = (float *)malloc(sizeof(float) * T * K / 32);
    down(q, dq, (size_t)T * K);
    down(d, dd, sizeof(float) * T * K / 32);
    kcpu_q8_layout L = kcpu_q8_layout_for(K);
    uint8_t *rec = (uint8_t *)aligned_alloc(64, L.stride);
    for (int t = 0; t < T; t++) {
        kcpu_q8_quantize_row(rec, x + (size_t)t * K, K, &L);
        assert_memory_equal(q + (size_t)t * K, rec + L.q, (size_t)K);
        assert_memory_equal(d + (size_t)t * K / 32, rec + L.d, sizeof(float) * K / 32);
    }
    free(rec);
    free(q);
    free(d);
    free(x);
    cudaFree(dx);
    cudaFree(dd);
    cudaFree(dq);
}

/* ---- rmsnorm, rope, add, add_bias ---- */

static void test_rmsnorm(void **state)
{
    (void)state;
    for (int rep = 0; rep < 4; rep++) {
        int D = 1 + (int)tu_below(&rng, 900), T = 1 + (int)tu_below(&rng, 20);
        size_t n = (size_t)T * D;
        float *x = (float *)malloc(4 * n), *w = (float *)malloc(4 * D),
              *ref = (float *)malloc(4 * n), *got = (float *)malloc(4 * n);
        rand_x(x, n);
        rand_x(w, (size_t)D);
        float eps = rep & 1 ? 1e-5f : 1e-6f;
        cpu_q8->rmsnorm(cpu_q8->ctx, ref, x, w, T, D, eps);
        float *dx = (float *)up(x, 4 * n), *dw = (float *)up(w, 4 * D), *dout = (float *)dev(4 * n);
        ok(kcuda_rmsnorm(dout, dx, dw, T, D, eps, 0));
        down(got, dout, 4 * n);
        assert_same("rmsnorm", got, ref, n);
        ok(kcuda_rmsnorm(dx, dx, dw, T, D, eps, 0)); /* in place */
        down(got, dx, 4 * n);
        assert_same("rmsnorm in place", got, ref, n);
        cudaFree(dx);
        cudaFree(dw);
        cudaFree(dout);
        free(x);
        free(w);
        free(ref);
        free(got);
    }
}

static void test_rope(void **state)
{
    (void)state;
    for (int rep = 0; rep < 4; rep++) {
        int neox = rep & 1, Dh = 2 * (1 + (int)tu_below(&rng, 64)), H = 1 + (int)tu_below(&rng, 9);
        int T = 1 + (int)tu_below(&rng, 16),
            n_rot = rep < 2 ? Dh : 2 * (1 + (int)tu_below(&rng, (unsigned)Dh / 2));
        float base = rep & 2 ? 10000.0f : 100000.0f;
        size_t n = (size_t)T * H * Dh;
        int *pos = (int *)malloc(sizeof(int) * T), maxp = 0;
        for (int t = 0; t < T; t++) {
            pos[t] = (int)tu_below(&rng, 5000);
            maxp = pos[t] > maxp ? pos[t] : maxp;
        }
        float *x = (float *)malloc(4 * n), *ref = (float *)malloc(4 * n),
              *got = (float *)malloc(4 * n);
        rand_x(x, n);
        memcpy(ref, x, 4 * n);
        cpu_q8->rope(cpu_q8->ctx, ref, pos, T, H, Dh, n_rot, base, neox);
        size_t tab_n = (size_t)(maxp + 1) * 2 * (n_rot / 2);
        float *tab = (float *)malloc(4 * tab_n);
        kcuda_rope_table(tab, 0, maxp + 1, n_rot, base);
        float *dx = (float *)up(x, 4 * n), *dtab = (float *)up(tab, 4 * tab_n);
        int *dpos = (int *)up(pos, sizeof(int) * T);
        ok(kcuda_rope(dx, dpos, dtab, T, H, Dh, n_rot, neox, 0));
        down(got, dx, 4 * n);
        char what[64];
        snprintf(what, sizeof what, "rope neox=%d Dh=%d n_rot=%d", neox, Dh, n_rot);
        assert_same(what, got, ref, n);
        cudaFree(dx);
        cudaFree(dtab);
        cudaFree(dpos);
        free(pos);
        free(x);
        free(ref);
        free(got);
        free(tab);
    }
}

static void test_add_bias_argmax(void **state)
{
    (void)state;
    int T = 1 + (int)tu_below(&rng, 8), N = 1 + (int)tu_below(&rng, 3000);
    size_t n = (size_t)T * N;
    float *a = (float *)malloc(4 * n), *b = (float *)malloc(4 * n), *ref = (float *)malloc(4 * n),
          *got = (float *)malloc(4 * n);
    rand_x(a, n);
    rand_x(b, n);
    memcpy(ref, a, 4 * n);
    cpu_q8->add(cpu_q8->ctx, ref, b, (int)n);
    float *da = (float *)up(a, 4 * n), *db = (float *)up(b, 4 * n);
    ok(kcuda_add(da, db, (int)n, 0));
    down(got, da, 4 * n);
    assert_same("add", got, ref, n);
    cpu_q8->add_bias(cpu_q8->ctx, ref, b, T, N);
    ok(kcuda_add_bias(da, db, T, N, 0));
    down(got, da, 4 * n);
    assert_same("add_bias", got, ref, n);
    /* argmax with planted ties and NaNs; row 0 all NaN */
    for (size_t i = 0; i < n; i++) {
        unsigned k = tu_below(&rng, 20);
        a[i] = k == 0 ? NAN : k < 4 ? 3.0f : (float)(int)tu_below(&rng, 50) * 0.0625f;
    }
    for (int i = 0; i < N; i++)
        a[i] = NAN;
    cudaMemcpy(da, a, 4 * n, cudaMemcpyHostToDevice);
    int *didx = (int *)dev(sizeof(int) * T), *idx = (int *)malloc(sizeof(int) * T);
    ok(kcuda_argmax(didx, da, T, N, (size_t)N, 0));
    down(idx, didx, sizeof(int) * T);
    for (int t = 0; t < T; t++)
        assert_int_equal(idx[t], sample_argmax(a + (size_t)t * N, N));
    cudaFree(da);
    cudaFree(db);
    cudaFree(didx);
    free(idx);
    free(a);
    free(b);
    free(ref);
    free(got);
}

/* ---- exp and silu_mul ---- */

static void test_exp_silu(void **state)
{
    (void)state;
    int n = 1 + (int)tu_below(&rng, 5000);
    float *x = (float *)malloc(4 * n), *u = (float *)malloc(4 * n), *ref = (float *)malloc(4 * n),
          *got = (float *)malloc(4 * n);
    for (int i = 0; i < n; i++)
        x[i] = (tu_uniform(&rng) - 0.5f) * (i % 7 == 0 ? 240.0f : 30.0f);
    x[0] = -INFINITY;
    if (n > 1)
        x[1] = 0.0f;
    rand_x(u, (size_t)n);
    float *dx = (float *)up(x, 4 * n), *du = (float *)up(u, 4 * n), *dy = (float *)dev(4 * n);
    ok(kcuda_exp(dy, dx, n, 0));
    down(got, dy, 4 * n);
    for (int i = 0; i < n; i++)
        ref[i] = kcpu_exp1(x[i]);
    assert_same("EXP", got, ref, (size_t)n);
    for (int i = 0; i < n; i++) { /* and close to libm */
        float e = expf(x[i]);
        assert_true(got[i] == e || fabsf(got[i] - e) <= 4e-7f * e + 1e-38f);
    }
    memcpy(ref, x, 4 * n);
    cpu_q8->silu_mul(cpu_q8->ctx, ref, u, n);
    ok(kcuda_silu_mul(dx, du, n, 0));
    down(got, dx, 4 * n);
    for (int i = 0; i < n; i++) /* -inf gives NaN on both sides */
        if (isnan(ref[i]) && isnan(got[i]))
            got[i] = ref[i];
    assert_same("silu_mul", got, ref, (size_t)n);
    cudaFree(dx);
    cudaFree(du);
    cudaFree(dy);
    free(x);
    free(u);
    free(ref);
    free(got);
}

/* ---- attention ---- */

static void test_attention(void **state)
{
    (void)state;
    for (int rep = 0; rep < 3; rep++) {
        int Hkv = 1 + (int)tu_below(&rng, 3), H = Hkv * (1 + (int)tu_below(&rng, 3));
        int Dh = rep == 0 ? 64 : 4 * (1 + (int)tu_below(&rng, 40));
        int np = (int)tu_below(&rng, 300), T = 1 + (int)tu_below(&rng, 24);
        int S = np + T;
        int head_major = rep & 1;
        size_t ld_slot = head_major ? (size_t)Dh : (size_t)Hkv * Dh;
        size_t ld_head = head_major ? (size_t)S * Dh : (size_t)Dh;
        size_t kvn = (size_t)S * Hkv * Dh, qn = (size_t)T * H * Dh;
        float *kc = (float *)malloc(4 * kvn), *vc = (float *)malloc(4 * kvn),
              *q = (float *)malloc(4 * qn), *ref = (float *)malloc(4 * qn),
              *got = (float *)malloc(4 * qn);
        rand_x(kc, kvn);
        rand_x(vc, kvn);
        rand_x(q, qn);
        tree tr = rand_tree(T, np);
        float scale = 1.0f / sqrtf((float)Dh);
        cpu_q8->attention(cpu_q8->ctx, ref, q, kc, vc, ld_slot, ld_head, np, tr.anc, tr.off, T, H,
                          Hkv, Dh, scale);
        int maxk = 0;
        for (int t = 0; t < T; t++)
            maxk = np + tr.off[t + 1] - tr.off[t] > maxk ? np + tr.off[t + 1] - tr.off[t] : maxk;
        float *dk = (float *)up(kc, 4 * kvn), *dv = (float *)up(vc, 4 * kvn),
              *dq = (float *)up(q, 4 * qn), *dout = (float *)dev(4 * qn);
        int *danc = (int *)up(tr.anc, sizeof(int) * (tr.off[T] ? tr.off[T] : 1)),
            *doff = (int *)up(tr.off, sizeof(int) * (T + 1));
        ok(kcuda_attention(dout, dq, dk, dv, ld_slot, ld_head, np, danc, doff, T, H, Hkv, Dh, scale,
                           maxk, 0));
        down(got, dout, 4 * qn);
        char what[96];
        snprintf(what, sizeof what, "attention T=%d H=%d Hkv=%d Dh=%d prefix=%d %s", T, H, Hkv, Dh,
                 np, head_major ? "head-major" : "slot-major");
        assert_same(what, got, ref, qn);
        /* batch invariance: node t alone (its own ancestor list, T = 1) */
        int t = (int)tu_below(&rng, (unsigned)T);
        int off1[2] = {0, tr.off[t + 1] - tr.off[t]};
        int *danc1 = (int *)up(tr.anc + tr.off[t], sizeof(int) * off1[1]),
            *doff1 = (int *)up(off1, sizeof(off1));
        ok(kcuda_attention(dout, dq + (size_t)t * H * Dh, dk, dv, ld_slot, ld_head, np, danc1,
                           doff1, 1, H, Hkv, Dh, scale, np + off1[1], 0));
        float *one = (float *)malloc(4 * (size_t)H * Dh);
        down(one, dout, 4 * (size_t)H * Dh);
        assert_same("attention node alone vs in tree", one, got + (size_t)t * H * Dh,
                    (size_t)H * Dh);
        free(one);
        cudaFree(danc1);
        cudaFree(doff1);
        cudaFree(dk);
        cudaFree(dv);
        cudaFree(dq);
        cudaFree(dout);
        cudaFree(danc);
        cudaFree(doff);
        free(tr.anc);
        free(tr.off);
        free(kc);
        free(vc);
        free(q);
        free(ref);
        free(got);
    }
}

/* bad arguments are refused before any launch */
static void test_bad_args(void **state)
{
    (void)state;
    float *p = (float *)dev(64);
    assert_int_equal(kcuda_matmul_q8(p, 1, NULL, NULL, p, SD_DTYPE_F16, 1, 1, 32, 0),
                     cudaErrorInvalidValue);
    assert_int_equal(kcuda_matmul_q8(p, 1, NULL, NULL, p, SD_DTYPE_Q4_K, 1, 1, 32, 0),
                     cudaErrorInvalidValue);
    assert_int_equal(kcuda_quant_q8(NULL, NULL, p, 1, 33, 0), cudaErrorInvalidValue);
    assert_int_equal(kcuda_attention(p, p, p, p, 1, 1, 0, NULL, NULL, 1, 3, 2, 8, 1.0f, 1, 0),
                     cudaErrorInvalidValue);
    cudaFree(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quant_record), cmocka_unit_test(test_matmul_q8),
        cmocka_unit_test(test_matmul_f32),   cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),         cmocka_unit_test(test_add_bias_argmax),
        cmocka_unit_test(test_exp_silu),     cmocka_unit_test(test_attention),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
