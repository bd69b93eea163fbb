/* test_cuda_sim: the CPU simulator of kernels/cuda/sim itself — barriers (plain, count, and,
 * or), warp shuffles with width semantics, votes, atomics over many blocks, 3-D blocks, NaN
 * poisoning of dynamic shared memory, graph capture and replay, bad launch configurations —
 * and one deliberately broken kernel per hazard, whose check must FAIL: a missing barrier gives
 * wrong results in at least one fiber order, a divergent barrier, a partial-mask shuffle and a
 * warp operation waiting on lanes stuck at __syncthreads are reported as launch failures.
 * Every test runs under the fiber order set by CUSIM_ORDER (ctest runs all three).
 * Simulator only (its hazard checks have no GPU counterpart): CUDA_SIM_ONLY.
 * SD_TEST_LABELS: cuda-sim */
#include "kernels/cuda/kcuda_rt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "testutil.h"
}

static tu_rng rng;

static int group_setup(void **state)
{
    (void)state;
    tu_rng_init(&rng, tu_seed());
    static const char *names[] = {"fwd", "rev", "rand"};
    fprintf(stderr, "[cuda_sim] fiber order %s\n", names[cusim_get_order()]);
    return 0;
}

/* ---- block reduction: correct, and with the barrier left out ---- */

__global__ void k_block_sum(float *out, const float *x, int broken)
{
    CUDA_DYN_SMEM(float, s);
    int t = (int)threadIdx.x, n = (int)blockDim.x;
    s[t] = x[blockIdx.x * n + t];
    if (!broken)
        __syncthreads();
    for (int h = n / 2; h > 0; h /= 2) {
        float v = t < h ? s[t] + s[t + h] : 0.0f;
        __syncthreads();
        if (t < h)
            s[t] = v;
        __syncthreads();
    }
    if (t == 0)
        out[blockIdx.x] = s[0];
}

/* sums of 256 small integers: exact in float whatever the tree */
static int run_block_sum(int broken, int order, int *n_wrong)
{
    enum { NB = 16, NT = 256 };
    static float x[NB * NT], out[NB];
    double ref[NB];
    for (int b = 0; b < NB; b++) {
        ref[b] = 0;
        for (int i = 0; i < NT; i++) {
            x[b * NT + i] = (float)(int)tu_below(&rng, 100);
            ref[b] += x[b * NT + i];
        }
    }
    int old = cusim_set_order(order);
    KLAUNCH(k_block_sum, NB, NT, NT * sizeof(float), (cudaStream_t)0, out, x, broken);
    cusim_set_order(old);
    cudaError_t e = cudaGetLastError();
    *n_wrong = 0;
    for (int b = 0; b < NB; b++)
        *n_wrong += !(out[b] == (float)ref[b]);
    return e;
}

static void test_block_sum(void **state)
{
    (void)state;
    for (int o = 0; o < 3; o++) {
        int wrong = -1;
        assert_int_equal(run_block_sum(0, o, &wrong), cudaSuccess);
        assert_int_equal(wrong, 0);
    }
}

/* The harness must be able to fail: without the first barrier, some fiber order reads slots
 * nobody has written yet (NaN-poisoned) and the sums come out wrong. */
static void test_missing_barrier_fails(void **state)
{
    (void)state;
    int total = 0;
    for (int o = 0; o < 3; o++) {
        int wrong = 0;
        assert_int_equal(run_block_sum(1, o, &wrong), cudaSuccess);
        fprintf(stderr, "[cuda_sim] missing barrier, order %d: %d of 16 sums wrong\n", o, wrong);
        total += wrong;
    }
    assert_true(total > 0);
}

/* ---- divergent barrier: half the threads leave before it ---- */

__global__ void k_divergent(float *out)
{
    if (threadIdx.x >= 64)
        return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

static void test_divergent_barrier_fails(void **state)
{
    (void)state;
    static float out[128];
    KLAUNCH(k_divergent, 2, 128, 0, (cudaStream_t)0, out);
    assert_int_equal(cudaGetLastError(), cudaErrorLaunchFailure);
    assert_non_null(strstr(cusim_last_message(), "divergent __syncthreads"));
    /* the error is consumed: the next good launch succeeds */
    int wrong = 0;
    assert_int_equal(run_block_sum(0, 0, &wrong), cudaSuccess);
    assert_int_equal(wrong, 0);
}

/* a warp whose lanes wait at a shuffle while one lane waits at __syncthreads */
__global__ void k_warp_deadlock(int *out)
{
    int v = (int)threadIdx.x;
    if (threadIdx.x == 5)
        __syncthreads();
    else
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

__global__ void k_partial_mask(int *out)
{
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, (int)threadIdx.x, 0);
}

static void test_warp_hazards_fail(void **state)
{
    (void)state;
    static int out[64];
    KLAUNCH(k_warp_deadlock, 1, 64, 0, (cudaStream_t)0, out);
    assert_int_equal(cudaGetLastError(), cudaErrorLaunchFailure);
    assert_non_null(strstr(cusim_last_message(), "deadlock"));
    KLAUNCH(k_partial_mask, 1, 32, 0, (cudaStream_t)0, out);
    assert_int_equal(cudaGetLastError(), cudaErrorLaunchFailure);
    assert_non_null(strstr(cusim_last_message(), "mask"));
}

/* ---- barriers with predicates ---- */

__global__ void k_bar_pred(int *out, const int *p)
{
    int t = (int)(threadIdx.x + blockDim.x * blockIdx.x);
    int c = __syncthreads_count(p[t]);
    int a = __syncthreads_and(p[t]);
    int o = __syncthreads_or(p[t]);
    out[3 * t] = c;
    out[3 * t + 1] = a;
    out[3 * t + 2] = o;
}

static void test_barrier_predicates(void **state)
{
    (void)state;
    enum { NB = 4, NT = 96 };
    static int p[NB * NT], out[3 * NB * NT];
    for (int b = 0; b < NB; b++)
        for (int i = 0; i < NT; i++) /* block 0 all ones, block 1 all zeros, others random */
            p[b * NT + i] = b == 0 ? 1 : b == 1 ? 0 : (int)tu_below(&rng, 2);
    KLAUNCH(k_bar_pred, NB, NT, 0, (cudaStream_t)0, out, p);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    for (int b = 0; b < NB; b++) {
        int c = 0;
        for (int i = 0; i < NT; i++)
            c += p[b * NT + i];
        for (int i = 0; i < NT; i++) {
            int t = b * NT + i;
            assert_int_equal(out[3 * t], c);
            assert_int_equal(out[3 * t + 1], c == NT);
            assert_int_equal(out[3 * t + 2], c > 0);
        }
    }
}

/* ---- warp operations ---- */

__global__ void k_warp(int *out, const int *v, const int *arg, int width)
{
    int t = (int)(threadIdx.x + blockDim.x * blockIdx.x);
    int x = v[t], a = arg[t / 32];
    int *o = out + 8 * t;
    o[0] = __shfl_sync(0xffffffffu, x, a, width);
    o[1] = __shfl_up_sync(0xffffffffu, x, (unsigned)(a % width), width);
    o[2] = __shfl_down_sync(0xffffffffu, x, (unsigned)(a % width), width);
    o[3] = __shfl_xor_sync(0xffffffffu, x, a % 32, width);
    o[4] = (int)__ballot_sync(0xffffffffu, x & 1);
    o[5] = __any_sync(0xffffffffu, x > 90);
    o[6] = __all_sync(0xffffffffu, x >= 0);
    __syncwarp();
    o[7] = (int)(__shfl_xor_sync(0xffffffffu, (float)x * 0.5f, 1) * 2.0f);
}

static void test_warp_ops(void **state)
{
    (void)state;
    enum { NW = 8, NT = NW * 32 };
    static int v[NT], arg[NW], out[8 * NT];
    const int widths[] = {32, 16, 8, 4, 2, 1};
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        int width = widths[wi];
        for (int i = 0; i < NT; i++)
            v[i] = (int)tu_below(&rng, 100);
        for (int w = 0; w < NW; w++)
            arg[w] = (int)tu_below(&rng, 40);
        KLAUNCH(k_warp, 2, NT / 2, 0, (cudaStream_t)0, out, v, arg, width);
        assert_int_equal(cudaGetLastError(), cudaSuccess);
        for (int t = 0; t < NT; t++) {
            int lane = t % 32, w0 = t - lane, a = arg[t / 32], base = lane & ~(width - 1);
            int *o = out + 8 * t;
            assert_int_equal(o[0], v[w0 + base + (a & (width - 1))]);
            int d = a % width;
            assert_int_equal(o[1], lane - d >= base ? v[t - d] : v[t]);
            assert_int_equal(o[2], lane + d < base + width ? v[t + d] : v[t]);
            int xs = lane ^ (a % 32);
            assert_int_equal(o[3], xs < base + width ? v[w0 + xs] : v[t]);
            unsigned bal = 0;
            int any = 0, all = 1;
            for (int l = 0; l < 32; l++) {
                bal |= (unsigned)(v[w0 + l] & 1) << l;
                any |= v[w0 + l] > 90;
                all &= v[w0 + l] >= 0;
            }
            assert_int_equal((unsigned)o[4], bal);
            assert_int_equal(o[5], any);
            assert_int_equal(o[6], all);
            assert_int_equal(o[7], v[w0 + (lane ^ 1)]);
        }
    }
}

/* ---- atomics, 3-D blocks, poisoned shared memory ---- */

__global__ void k_atomics(int *cnt, float *fsum, unsigned long long *u, int *mx)
{
    int t = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
    int g = t + (int)(blockDim.x * blockDim.y * blockDim.z * blockIdx.x);
    atomicAdd(cnt, 1);
    atomicAdd(fsum, 1.0f);
    atomicAdd(u, (unsigned long long)g);
    atomicMax(mx, g);
}

static void test_atomics_3d(void **state)
{
    (void)state;
    static int cnt, mx;
    static float fsum;
    static unsigned long long u;
    cnt = 0;
    mx = -1;
    fsum = 0;
    u = 0;
    enum { NB = 200 };
    dim3 block(8, 4, 2); /* 64 threads */
    KLAUNCH(k_atomics, NB, block, 0, (cudaStream_t)0, &cnt, &fsum, &u, &mx);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
    long n = NB * 64L;
    assert_int_equal(cnt, n);
    assert_true(fsum == (float)n); /* 12800 ones: exact in float */
    assert_true(u == (unsigned long long)(n * (n - 1) / 2));
    assert_int_equal(mx, n - 1);
}

__global__ void k_read_smem(float *out)
{
    CUDA_DYN_SMEM(float, s);
    if (threadIdx.x == 0)
        s[0] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

static void test_smem_poisoned(void **state)
{
    (void)state;
    static float out[64];
    for (int rep = 0; rep < 2; rep++) { /* poisoned again at every block start */
        KLAUNCH(k_read_smem, 1, 64, 64 * sizeof(float), (cudaStream_t)0, out);
        assert_int_equal(cudaGetLastError(), cudaSuccess);
        assert_true(out[0] == 1.0f);
        for (int i = 1; i < 64; i++)
            assert_true(isnan(out[i]));
    }
}

/* ---- bad launch configurations ---- */

__global__ void k_nop(int *p)
{
    (void)p;
}

static void test_bad_configs(void **state)
{
    (void)state;
    int *p = NULL;
    KLAUNCH(k_nop, 1, 1056, 0, (cudaStream_t)0, p);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    KLAUNCH(k_nop, 1, 0, 0, (cudaStream_t)0, p);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    KLAUNCH(k_nop, 0, 32, 0, (cudaStream_t)0, p);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    KLAUNCH(k_nop, 1, 48, 0, (cudaStream_t)0, p);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    KLAUNCH(k_nop, 1, 32, 300 * 1024, (cudaStream_t)0, p);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    KLAUNCH(k_nop, dim3(1, 70000), 32, 0, (cudaStream_t)0, p);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    KLAUNCH(k_nop, 3, dim3(32, 32), 0, (cudaStream_t)0, p);
    assert_int_equal(cudaGetLastError(), cudaSuccess);
}

/* ---- graphs: captured launches and copies replay with the values of replay time ---- */

__global__ void k_scale(float *y, const float *x, float a, int n)
{
    int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n)
        y[i] = x[i] * a;
}

static void test_graph_replay(void **state)
{
    (void)state;
    enum { N = 100 };
    float *host = NULL, *dx = NULL, *dy = NULL;
    assert_int_equal(cudaMallocHost((void **)&host, N * sizeof(float)), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&dx, N * sizeof(float)), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&dy, N * sizeof(float)), cudaSuccess);
    cudaStream_t s;
    assert_int_equal(cudaStreamCreate(&s), cudaSuccess);
    unsigned long before = cusim_launch_count();
    assert_int_equal(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    cudaMemcpyAsync(dx, host, N * sizeof(float), cudaMemcpyHostToDevice, s);
    KLAUNCH(k_scale, 4, 32, 0, s, dy, dx, 3.0f, (int)N);
    cudaGraph_t g;
    cudaGraphExec_t ge;
    assert_int_equal(cudaStreamEndCapture(s, &g), cudaSuccess);
    assert_int_equal(cudaGraphInstantiate(&ge, g, 0), cudaSuccess);
    assert_int_equal(cusim_launch_count(), before); /* captured, not run */
    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < N; i++)
            host[i] = (float)(i + rep);
        assert_int_equal(cudaGraphLaunch(ge, s), cudaSuccess);
        assert_int_equal(cudaStreamSynchronize(s), cudaSuccess);
        for (int i = 0; i < N; i++)
            assert_true(dy[i] == (float)(i + rep) * 3.0f);
    }
    assert_int_equal(cusim_launch_count(), before + 3);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(s);
    cudaFree(dx);
    cudaFree(dy);
    cudaFreeHost(host);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_sum),
        cmocka_unit_test(test_missing_barrier_fails),
        cmocka_unit_test(test_divergent_barrier_fails),
        cmocka_unit_test(test_warp_hazards_fail),
        cmocka_unit_test(test_barrier_predicates),
        cmocka_unit_test(test_warp_ops),
        cmocka_unit_test(test_atomics_3d),
        cmocka_unit_test(test_smem_poisoned),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_graph_replay),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
