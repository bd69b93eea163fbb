/* test_cuda_backend: the CUDA kern_backend (kernels/cuda/cuda_backend.cu) through the table of
 * kernels/kernels.h, with its buffers in backend memory (buf_alloc / upload / download), against
 * the CPU backend (portable level, host memory) on fresh random shapes and data: every op
 * memcmp-equal, in both activation modes; the memory calls (overlapping copies, sync, argmax);
 * and the fallback when the machine has no GPU (CUSIM_DEVICES=0 in the simulator).
 * SD_TEST_LABELS: cuda-sim */
#include "kernels/cuda/kcuda.h"
#include "tests/cuda/cuda_testutil.h"

#include <math.h>

extern "C" {
#include "engine/sample.h"
#include "kernels/kernels.h"
}

tu_rng rng;
static kern_backend *gpu[2], *cpu[2]; /* [0]: 8-bit activations, [1]: f32 activations */

static int group_setup(void **state)
{
    (void)state;
    cu_test_start();
    unsigned portable = KERN_CPU_LEVEL(KERN_CPU_LEVEL_PORTABLE);
    for (int m = 0; m < 2; m++) {
        unsigned f = m ? KERN_CPU_F32_ACT : 0;
        if (kern_cuda_create(&gpu[m], 0, f) != SD_OK || kern_cpu_create(&cpu[m], 1, portable | f))
            return -1;
    }
    fprintf(stderr, "[cuda_backend] %s, numerics %s / %s\n", gpu[0]->name, gpu[0]->numerics,
            gpu[1]->numerics);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int m = 0; m < 2; m++) {
        kern_free(gpu[m]);
        kern_free(cpu[m]);
    }
    return 0;
}

static void *bup(kern_backend *b, const void *h, size_t n)
{
    void *d = b->buf_alloc(b->ctx, n);
    assert_non_null(d);
    b->upload(b->ctx, d, h, n);
    return d;
}

static void bdown(kern_backend *b, void *h, const void *d, size_t n)
{
    assert_int_equal(b->download(b->ctx, h, d, n), SD_OK);
}

static void test_matmul_modes(void **state)
{
    (void)state;
    for (int m = 0; m < 2; m++)
        for (size_t ti = 0; ti < sizeof all_types / sizeof all_types[0]; ti++) {
            kern_backend *g = gpu[m], *c = cpu[m];
            sd_dtype wt = all_types[ti];
            int be = wt == SD_DTYPE_Q4_K || wt == SD_DTYPE_Q6_K ? 256 : 32;
            int K = be * (1 + (int)tu_below(&rng, be == 256 ? 3 : 12)),
                T = 1 + (int)tu_below(&rng, 9);
            int n = 1 + (int)tu_below(&rng, 3), Ns[3];
            uint8_t *w[3];
            kern_mat hm[3], dm[3];
            float *ref[3], *got[3], *dout[3];
            float *x = (float *)malloc(4 * (size_t)T * K);
            rand_x(x, (size_t)T * K);
            for (int i = 0; i < n; i++) {
                Ns[i] = 1 + (int)tu_below(&rng, 40);
                size_t rb = dtype_row_bytes(wt, (size_t)K) * Ns[i];
                w[i] = (uint8_t *)malloc(rb);
                rand_weights(w[i], wt, Ns[i], K);
                hm[i] = (kern_mat){w[i], wt, NULL};
                size_t pb = g->pack_bytes(g->ctx, wt, Ns[i], K);
                assert_int_equal(pb, rb);
                void *pk = g->buf_alloc(g->ctx, pb);
                g->pack(g->ctx, pk, w[i], wt, Ns[i], K);
                dm[i] = (kern_mat){w[i], wt, pk};
                ref[i] = (float *)malloc(4 * (size_t)T * Ns[i]);
                got[i] = (float *)malloc(4 * (size_t)T * Ns[i]);
                dout[i] = (float *)g->buf_alloc(g->ctx, 4 * (size_t)T * Ns[i]);
            }
            const kern_mat *hws[3] = {&hm[0], &hm[1], &hm[2]}, *dws[3] = {&dm[0], &dm[1], &dm[2]};
            c->matmul_multi(c->ctx, n, ref, x, hws, Ns, T, K);
            float *dx = (float *)bup(g, x, 4 * (size_t)T * K);
            g->matmul_multi(g->ctx, n, dout, dx, dws, Ns, T, K);
            for (int i = 0; i < n; i++) {
                bdown(g, got[i], dout[i], 4 * (size_t)T * Ns[i]);
                char what[80];
                snprintf(what, sizeof what, "backend matmul_multi %s mode %d", dtype_name(wt), m);
                assert_same(what, got[i], ref[i], (size_t)T * Ns[i]);
            }
            g->matmul(g->ctx, dout[0], dx, dws[0], T, Ns[0], K); /* lone == multi */
            bdown(g, got[0], dout[0], 4 * (size_t)T * Ns[0]);
            assert_same("backend matmul", got[0], ref[0], (size_t)T * Ns[0]);
            for (int i = 0; i < n; i++) {
                g->buf_free(g->ctx, (void *)dm[i].packed);
                g->buf_free(g->ctx, dout[i]);
                free(w[i]);
                free(ref[i]);
                free(got[i]);
            }
            g->buf_free(g->ctx, dx);
            free(x);
        }
}

static void test_small_ops(void **state)
{
    (void)state;
    kern_backend *g = gpu[0], *c = cpu[0];
    int T = 1 + (int)tu_below(&rng, 12), H = 3 * (1 + (int)tu_below(&rng, 3)), Hkv = 3, Dh = 64;
    int D = 64 * (1 + (int)tu_below(&rng, 9)), np = (int)tu_below(&rng, 200), S = np + T;
    size_t xd = (size_t)T * D, qn = (size_t)T * H * Dh, kvn = (size_t)S * Hkv * Dh;
    float *x = (float *)malloc(4 * xd), *w = (float *)malloc(4 * D), *r1 = (float *)malloc(4 * xd),
          *g1 = (float *)malloc(4 * xd);
    rand_x(x, xd);
    rand_x(w, (size_t)D);
    float *dx = (float *)bup(g, x, 4 * xd), *dw = (float *)bup(g, w, 4 * D);
    /* rmsnorm in place, add, add_bias, silu_mul */
    memcpy(r1, x, 4 * xd);
    c->rmsnorm(c->ctx, r1, r1, w, T, D, 1e-5f);
    g->rmsnorm(g->ctx, dx, dx, dw, T, D, 1e-5f);
    bdown(g, g1, dx, 4 * xd);
    assert_same("backend rmsnorm", g1, r1, xd);
    float *dy = (float *)bup(g, x, 4 * xd);
    c->add(c->ctx, r1, x, (int)xd);
    g->add(g->ctx, dx, dy, (int)xd);
    c->add_bias(c->ctx, r1, w, T, D);
    g->add_bias(g->ctx, dx, dw, T, D);
    c->silu_mul(c->ctx, r1, x, (int)xd);
    g->silu_mul(g->ctx, dx, dy, (int)xd);
    bdown(g, g1, dx, 4 * xd);
    assert_same("backend add / add_bias / silu_mul", g1, r1, xd);
    /* rope (positions are host arrays on every backend), then attention over a random tree */
    float *q = (float *)malloc(4 * qn), *qr = (float *)malloc(4 * qn),
          *qg = (float *)malloc(4 * qn);
    float *kc = (float *)malloc(4 * kvn), *vc = (float *)malloc(4 * kvn);
    rand_x(q, qn);
    rand_x(kc, kvn);
    rand_x(vc, kvn);
    int *pos = (int *)malloc(sizeof(int) * T);
    for (int t = 0; t < T; t++)
        pos[t] = np + (int)tu_below(&rng, 9000);
    memcpy(qr, q, 4 * qn);
    float *dq = (float *)bup(g, q, 4 * qn);
    for (int neox = 0; neox < 2; neox++) {
        c->rope(c->ctx, qr, pos, T, H, Dh, Dh, 100000.0f, neox);
        g->rope(g->ctx, dq, pos, T, H, Dh, Dh, 100000.0f, neox);
    }
    bdown(g, qg, dq, 4 * qn);
    assert_same("backend rope", qg, qr, qn);
    tree tr = rand_tree(T, np);
    float *dk = (float *)bup(g, kc, 4 * kvn), *dv = (float *)bup(g, vc, 4 * kvn);
    float *dout = (float *)g->buf_alloc(g->ctx, 4 * qn);
    float sc = 0.125f;
    c->attention(c->ctx, q, qr, kc, vc, Dh, (size_t)S * Dh, np, tr.anc, tr.off, T, H, Hkv, Dh, sc);
    g->attention(g->ctx, dout, dq, dk, dv, Dh, (size_t)S * Dh, np, tr.anc, tr.off, T, H, Hkv, Dh,
                 sc);
    bdown(g, qg, dout, 4 * qn);
    assert_same("backend attention", qg, q, qn);
    /* argmax where the logits are */
    int *ig = (int *)malloc(sizeof(int) * T);
    assert_int_equal(g->argmax(g->ctx, ig, dout, T, H * Dh, (size_t)H * Dh), SD_OK);
    for (int t = 0; t < T; t++)
        assert_int_equal(ig[t], sample_argmax(q + (size_t)t * H * Dh, H * Dh));
    assert_int_equal(g->sync(g->ctx), SD_OK);
    void *bufs[] = {dx, dw, dy, dq, dk, dv, dout};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        g->buf_free(g->ctx, bufs[i]);
    free(tr.anc);
    free(tr.off);
    free(ig);
    free(pos);
    free(q);
    free(qr);
    free(qg);
    free(kc);
    free(vc);
    free(x);
    free(w);
    free(r1);
    free(g1);
}

/* A random tree of T nodes over np prefix slots, mostly chains (deep: long ancestor lists). */
static tree deep_tree(int T, int np)
{
    tree r;
    r.T = T;
    r.np = np;
    r.off = (int *)malloc(sizeof(int) * (T + 1));
    int *par = (int *)malloc(sizeof(int) * T), *depth = (int *)malloc(sizeof(int) * T), total = 0;
    for (int t = 0; t < T; t++) {
        par[t] = t == 0 ? -1 : tu_below(&rng, 8) ? t - 1 : (int)tu_below(&rng, (unsigned)t) - 1;
        depth[t] = par[t] < 0 ? 1 : depth[par[t]] + 1;
        total += depth[t];
    }
    r.anc = (int *)malloc(sizeof(int) * total);
    for (int t = 0, k = 0; t < T; t++) {
        r.off[t] = k;
        k += depth[t];
        int j = k - 1;
        for (int a = t; a >= 0; a = par[a])
            r.anc[j--] = np + a;
        r.off[t + 1] = k;
    }
    free(par);
    free(depth);
    return r;
}

/* Attention calls whose ancestor lists alternate (a multi-sequence forward's per-sequence calls)
 * queued without a wait in between, enough of them to wrap the staging ring (twice at these sizes):
 * each output == the CPU's for its tree (an overwritten staged list would give another tree's). */
static void test_staging_ring(void **state)
{
    (void)state;
    kern_backend *g = gpu[0], *c = cpu[0];
    /* deep trees of 48 nodes stage several hundred ints a call: the ring (4 x the first call +
     * 64 Ki ints) wraps about every 100 calls */
    enum { NT = 3, CALLS = 240, T = 48, H = 1, Hkv = 1, Dh = 32, NP = 8 };
    const int S = NP + T;
    size_t qn = (size_t)T * H * Dh, kvn = (size_t)S * Hkv * Dh;
    float *q = (float *)malloc(4 * qn), *kc = (float *)malloc(4 * kvn),
          *vc = (float *)malloc(4 * kvn), *got = (float *)malloc(4 * qn);
    rand_x(q, qn);
    rand_x(kc, kvn);
    rand_x(vc, kvn);
    float *dq = (float *)bup(g, q, 4 * qn), *dk = (float *)bup(g, kc, 4 * kvn),
          *dv = (float *)bup(g, vc, 4 * kvn);
    tree tr[NT];
    float *ref[NT];
    for (int i = 0; i < NT; i++) {
        tr[i] = deep_tree(T, NP);
        ref[i] = (float *)malloc(4 * qn);
        c->attention(c->ctx, ref[i], q, kc, vc, Dh, (size_t)S * Dh, NP, tr[i].anc, tr[i].off, T, H,
                     Hkv, Dh, 0.125f);
    }
    float *dout = (float *)g->buf_alloc(g->ctx, 4 * qn * CALLS);
    assert_non_null(dout);
    for (int k = 0; k < CALLS; k++) {
        const tree &t = tr[k % NT];
        g->attention(g->ctx, dout + (size_t)k * qn, dq, dk, dv, Dh, (size_t)S * Dh, NP, t.anc,
                     t.off, T, H, Hkv, Dh, 0.125f);
    }
    for (int k = 0; k < CALLS; k++) {
        bdown(g, got, dout + (size_t)k * qn, 4 * qn);
        char what[64];
        snprintf(what, sizeof what, "staged attention call %d (tree %d)", k, k % NT);
        assert_same(what, got, ref[k % NT], qn);
    }
    assert_int_equal(g->sync(g->ctx), SD_OK);
    void *bufs[] = {dq, dk, dv, dout};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        g->buf_free(g->ctx, bufs[i]);
    for (int i = 0; i < NT; i++) {
        free(tr[i].anc);
        free(tr[i].off);
        free(ref[i]);
    }
    free(q);
    free(kc);
    free(vc);
    free(got);
}

/* copy within backend memory may overlap, like memmove */
static void test_copy_overlap(void **state)
{
    (void)state;
    kern_backend *g = gpu[0];
    enum { N = 5000 };
    int *h = (int *)malloc(sizeof(int) * N), *ref = (int *)malloc(sizeof(int) * N),
        *got = (int *)malloc(sizeof(int) * N);
    for (int rep = 0; rep < 6; rep++) {
        for (int i = 0; i < N; i++)
            h[i] = (int)tu_next(&rng);
        int *d = (int *)bup(g, h, sizeof(int) * N);
        int n = 1 + (int)tu_below(&rng, N / 2), a = (int)tu_below(&rng, N - n),
            b = (int)tu_below(&rng, N - n);
        memcpy(ref, h, sizeof(int) * N);
        memmove(ref + b, ref + a, sizeof(int) * n);
        g->copy(g->ctx, d + b, d + a, sizeof(int) * n);
        bdown(g, got, d, sizeof(int) * N);
        assert_memory_equal(got, ref, sizeof(int) * N);
        g->buf_free(g->ctx, d);
    }
    free(h);
    free(ref);
    free(got);
}

static void test_no_gpu(void **state)
{
    (void)state;
#if defined(CUSIM)
    setenv("CUSIM_DEVICES", "0", 1);
    kern_backend *b = NULL;
    assert_int_equal(kern_cuda_create(&b, 0, 0), SD_EUNSUPPORTED);
    assert_null(b);
    assert_non_null(strstr(sd_errmsg(), "no CUDA GPU"));
    unsetenv("CUSIM_DEVICES");
    assert_int_equal(kern_cuda_create(&b, 7, 0), SD_EINVAL); /* no such device */
    assert_null(b);
#else
    skip(); /* a GPU build cannot hide its devices: the no-GPU case is staged in the simulator */
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_modes), cmocka_unit_test(test_small_ops),
        cmocka_unit_test(test_staging_ring), cmocka_unit_test(test_copy_overlap),
        cmocka_unit_test(test_no_gpu),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
