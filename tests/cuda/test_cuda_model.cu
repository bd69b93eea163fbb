/* test_cuda_model: the engine's one forward path (engine/model.c) on the CUDA backend, end to
 * end, against the CPU backend, on tiny random GGUF models of every weight type (both
 * activation modes): logits memcmp-equal for a 100-token prefill, for a 64-node tree over a
 * committed prefix and for a decode step after committing one of the tree's paths (the KV cache
 * lives in backend memory, so this covers kv_put and kv_commit_path's device copies); and batch
 * invariance on the CUDA backend alone — a position decoded alone == the same position inside
 * the prefill == the same position as a node of the tree, bitwise. In the simulator under the
 * three fiber orders (ctest label cuda-sim; under ASan each order runs a third of the variants)
 * and, built by nvcc, on a GPU.
 * SD_TEST_LABELS: cuda-sim */
#include "kernels/cuda/kcuda.h"
#include "tests/cuda/cuda_testutil.h"

#include <initializer_list>
#include <unistd.h>

extern "C" {
#include "engine/kv.h"
#include "engine/model.h"
#include "tiny_model.h"
}

tu_rng rng;

static int group_setup(void **state)
{
    (void)state;
    cu_test_start();
    return 0;
}

typedef struct {
    const char *name, *arch;
    sd_dtype wtype, etype;
    int D, F, untied;
    unsigned flags;
} variant;

static const variant variants[] = {
    {"q8_0", "llama", SD_DTYPE_Q8_0, SD_DTYPE_Q8_0, 64, 96, 0, 0},
    {"q4_0", "llama", SD_DTYPE_Q4_0, SD_DTYPE_Q8_0, 64, 96, 0, 0},
    {"q4_1", "llama", SD_DTYPE_Q4_1, SD_DTYPE_Q8_0, 64, 96, 1, 0},
    {"q4_1-f32act", "llama", SD_DTYPE_Q4_1, SD_DTYPE_Q8_0, 64, 96, 0, KERN_CPU_F32_ACT},
    {"f32", "llama", SD_DTYPE_F32, SD_DTYPE_F32, 64, 96, 0, 0},
    {"f16", "qwen2", SD_DTYPE_F16, SD_DTYPE_F16, 64, 96, 0, 0},
    {"bf16", "llama", SD_DTYPE_BF16, SD_DTYPE_BF16, 64, 96, 1, 0},
    {"q4_k", "qwen2", SD_DTYPE_Q4_K, SD_DTYPE_Q8_0, 256, 512, 0, 0},
    {"q6_k", "llama", SD_DTYPE_Q6_K, SD_DTYPE_Q6_K, 256, 512, 0, KERN_CPU_F32_ACT},
};

typedef struct {
    model *m;
    model_run *r;
    kv_cache *kv;
    kern_backend *be;
} side;

static void open_side(side *s, const char *path, int cuda, unsigned flags)
{
    memset(s, 0, sizeof *s);
    if (cuda)
        assert_int_equal(kern_cuda_create(&s->be, 0, flags), SD_OK);
    else
        assert_int_equal(kern_cpu_create(&s->be, 1, flags), SD_OK);
    model_opts mo;
    memset(&mo, 0, sizeof mo);
    mo.backend = s->be;
    sd_err e = model_open(&s->m, path, &mo);
    if (e)
        fprintf(stderr, "model_open: %s\n", sd_errmsg());
    assert_int_equal(e, SD_OK);
    assert_int_equal(model_run_init(&s->r, s->m, 64), SD_OK); /* 100 tokens: two chunks */
    assert_int_equal(model_kv_init(s->m, &s->kv, 256), SD_OK);
}

static void close_side(side *s)
{
    kv_free(s->kv);
    model_run_free(s->r);
    model_free(s->m);
    kern_free(s->be);
}

static void fwd(side *s, const int32_t *tok, const int *par, int T, const int *idx, int n_out,
                float *logits)
{
    sd_err e = model_forward(s->m, s->r, s->kv, tok, par, T, idx, n_out, logits);
    if (e)
        fprintf(stderr, "model_forward: %s\n", sd_errmsg());
    assert_int_equal(e, SD_OK);
}

static void run_variant(const variant *v)
{
    tiny_model_opts o = tiny_model_defaults();
    o.arch = v->arch;
    o.wtype = v->wtype;
    o.etype = v->etype;
    o.n_embd = v->D;
    o.n_ff = v->F;
    o.untied = v->untied;
    o.n_layer = 2;
    o.seed = tu_next(&rng);
    char path[256];
    snprintf(path, sizeof path, "/tmp/specd-cuda-tiny-%d-%s.gguf", (int)getpid(), v->name);
    assert_int_equal(tiny_model_write(path, &o), 0);
    side cpu, gpu;
    open_side(&cpu, path, 0, v->flags);
    open_side(&gpu, path, 1, v->flags);
    int V = model_cfg(cpu.m)->n_vocab;
    enum { P = 100, PRE = 30, TREE = 64 };
    int32_t tok[P];
    int idx[P];
    for (int i = 0; i < P; i++) {
        tok[i] = (int32_t)tu_below(&rng, (unsigned)V);
        idx[i] = i;
    }
    float *lc = (float *)malloc(sizeof(float) * P * V),
          *lg = (float *)malloc(sizeof(float) * P * V);
    /* 1. a 100-token prefill: every position's logits */
    fwd(&cpu, tok, NULL, P, idx, P, lc);
    fwd(&gpu, tok, NULL, P, idx, P, lg);
    char what[96];
    snprintf(what, sizeof what, "%s: 100-token prefill, cuda vs cpu", v->name);
    assert_same(what, lg, lc, (size_t)P * V);
    float *prefill = lg;
    lg = (float *)malloc(sizeof(float) * P * V);
    /* 2. position PRE decoded alone after a committed prefix of PRE tokens */
    for (side *s : {&cpu, &gpu}) {
        assert_int_equal(kv_truncate(s->kv, 0), SD_OK);
        fwd(s, tok, NULL, PRE, NULL, 1, lc);
        assert_int_equal(kv_commit_all(s->kv), SD_OK);
    }
    float *alone = (float *)malloc(sizeof(float) * V);
    fwd(&gpu, tok + PRE, NULL, 1, NULL, 1, alone);
    snprintf(what, sizeof what, "%s: position %d alone vs in the prefill", v->name, PRE);
    assert_same(what, alone, prefill + (size_t)PRE * V, (size_t)V);
    kv_clear_pending(gpu.kv);
    /* 3. a 64-node tree over the prefix; one of its root-to-leaf chains is tok[PRE..] */
    int32_t ttok[TREE];
    int par[TREE], tidx[TREE], chain[TREE], nchain = 0;
    for (int i = 0; i < TREE; i++) {
        tidx[i] = i;
        if (i == 0 || (tu_below(&rng, 3) == 0 && nchain < 20)) {
            par[i] = nchain ? chain[nchain - 1] : -1;
            ttok[i] = tok[PRE + nchain];
            chain[nchain++] = i;
        } else {
            par[i] = (int)tu_below(&rng, (unsigned)i + 1) - 1;
            ttok[i] = (int32_t)tu_below(&rng, (unsigned)V);
        }
    }
    fwd(&cpu, ttok, par, TREE, tidx, TREE, lc);
    fwd(&gpu, ttok, par, TREE, tidx, TREE, lg);
    snprintf(what, sizeof what, "%s: 64-node tree, cuda vs cpu", v->name);
    assert_same(what, lg, lc, (size_t)TREE * V);
    for (int j = 0; j < nchain; j++) {
        snprintf(what, sizeof what, "%s: tree node %d (depth %d) vs the prefill", v->name, chain[j],
                 j);
        assert_same(what, lg + (size_t)chain[j] * V, prefill + (size_t)(PRE + j) * V, (size_t)V);
    }
    /* 4. commit the chain, decode the next token: the moved KV rows are right */
    for (side *s : {&cpu, &gpu})
        assert_int_equal(kv_commit_path(s->kv, chain, nchain), SD_OK);
    int32_t next = tok[PRE + nchain];
    fwd(&cpu, &next, NULL, 1, NULL, 1, lc);
    fwd(&gpu, &next, NULL, 1, NULL, 1, lg);
    snprintf(what, sizeof what, "%s: decode after kv_commit_path", v->name);
    assert_same(what, lg, lc, (size_t)V);
    assert_same(what, lg, prefill + (size_t)(PRE + nchain) * V, (size_t)V);
    /* 5. greedy decode steps: on the GPU side the first one sizes things, the second is
     * captured as a graph, the rest replay it (the step read from device memory) */
    for (side *s : {&cpu, &gpu})
        assert_int_equal(kv_commit_all(s->kv), SD_OK);
#if defined(CUSIM)
    unsigned long g0 = cusim_graph_launch_count();
#endif
    enum { STEPS = 6 };
    for (int i = 0; i < STEPS; i++) {
        int32_t t = (int32_t)tu_below(&rng, (unsigned)V);
        fwd(&cpu, &t, NULL, 1, NULL, 1, lc);
        fwd(&gpu, &t, NULL, 1, NULL, 1, lg);
        snprintf(what, sizeof what, "%s: decode step %d (graphs), cuda vs cpu", v->name, i);
        assert_same(what, lg, lc, (size_t)V);
        for (side *s : {&cpu, &gpu})
            assert_int_equal(kv_commit_all(s->kv), SD_OK);
    }
#if defined(CUSIM)
    if (!getenv("SPECD_CUDA_NO_GRAPHS"))
        assert_true(cusim_graph_launch_count() - g0 >= STEPS - 2);
#endif
    free(lc);
    free(lg);
    free(prefill);
    free(alone);
    close_side(&cpu);
    close_side(&gpu);
    unlink(path);
}

static void test_models(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
#if defined(CUSIM) && defined(__SANITIZE_ADDRESS__)
        /* under ASan (10x slower) each fiber order takes a third of the variants: the three
         * ctest runs still cover every variant once, in a bounded time */
        if ((int)(i % 3) != cusim_get_order())
            continue;
#endif
#if defined(CUSIM)
        unsigned long l0 = cusim_launch_count();
#endif
        run_variant(&variants[i]);
#if defined(CUSIM)
        fprintf(stderr, "[cuda_model] %s: %lu kernel launches\n", variants[i].name,
                cusim_launch_count() - l0);
#endif
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_models)};
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
