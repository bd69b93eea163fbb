/* test_cuda_multi: model_forward_multi (several sequences per forward, engine/model.c) on the
 * CUDA backend against the CPU backend, on tiny random GGUF models (several weight types, both
 * activation modes, a Qwen2 model with biases). Each round puts 2-4 sequences with random
 * committed prefixes (some with nodes already pending) through one forward: chains and trees,
 * random logits rows, a run of t_max 24 so that chunks cut sequences anywhere. The logits and
 * every sequence's KV rows (downloaded from device memory) are memcmp-equal to the CPU backend's;
 * then a path of each tree is committed on both sides and a multi-sequence decode (one token per
 * sequence) and a plain single-sequence decode (graphs on the CUDA side) follow, still equal.
 * test_batch proves the CPU's multi forward == separate forwards, so this carries that over to
 * the device. In the simulator under the three fiber orders (label cuda-sim) and, built by
 * nvcc, on a GPU.
 * SD_TEST_LABELS: cuda-sim */
#include "kernels/cuda/kcuda.h"
#include "tests/cuda/cuda_testutil.h"

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
    {"q4_1-f32act", "llama", SD_DTYPE_Q4_1, SD_DTYPE_Q8_0, 64, 96, 1, KERN_CPU_F32_ACT},
    {"f16", "qwen2", SD_DTYPE_F16, SD_DTYPE_F16, 64, 96, 0, 0},
    {"q4_k", "qwen2", SD_DTYPE_Q4_K, SD_DTYPE_Q8_0, 256, 512, 0, 0},
};

enum { MAXS = 4, CTX = 160, TMAX = 24, MAXT = 40 };

typedef struct {
    model *m;
    model_run *r;
    kern_backend *be;
    kv_cache *kv[MAXS];
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
    assert_int_equal(model_run_init(&s->r, s->m, TMAX), SD_OK);
    for (int i = 0; i < MAXS; i++)
        assert_int_equal(model_kv_init(s->m, &s->kv[i], CTX), SD_OK);
}

static void close_side(side *s)
{
    for (int i = 0; i < MAXS; i++)
        kv_free(s->kv[i]);
    model_run_free(s->r);
    model_free(s->m);
    kern_free(s->be);
}

/* One sequence's inputs, the same for both sides. */
typedef struct {
    int T, n_out;
    int32_t tok[MAXT];
    int par[MAXT], idx[MAXT];
    int tree; /* parents given */
} seq_in;

static void forward(side *s, const seq_in *in, int n, float *const *logits, const char *what)
{
    model_seq q[MAXS];
    for (int i = 0; i < n; i++) {
        q[i].kv = s->kv[i];
        q[i].tokens = in[i].tok;
        q[i].parents = in[i].tree ? in[i].par : NULL;
        q[i].T = in[i].T;
        q[i].out_idx = in[i].n_out > 1 || in[i].tree ? in[i].idx : NULL;
        q[i].n_out = in[i].n_out;
        q[i].logits = logits[i];
    }
    sd_err e = model_forward_multi(s->m, s->r, q, n);
    if (e)
        fprintf(stderr, "%s: model_forward_multi on %s: %s\n", what, s->be->name, sd_errmsg());
    assert_int_equal(e, SD_OK);
}

/* Random inputs for sequence i: a chain or a tree of T nodes, some logits rows. */
static void rand_seq(seq_in *q, int V, int T, int P)
{
    q->T = T;
    q->tree = (int)tu_below(&rng, 2);
    int n = 0;
    for (int t = 0; t < T; t++) {
        q->tok[t] = (int32_t)tu_below(&rng, (unsigned)V);
        /* a parent among the pending nodes before this one, or the prefix */
        q->par[t] = (int)tu_below(&rng, (unsigned)(P + t + 1)) - 1;
        if (!q->tree || tu_below(&rng, 3) == 0 || t == T - 1)
            q->idx[n++] = t;
    }
    if (!q->tree && tu_below(&rng, 2)) { /* a chain with only its last row wanted */
        q->idx[0] = T - 1;
        n = 1;
    }
    q->n_out = n;
}

/* Sequence i's KV rows (every used slot, every layer and head) on both sides are equal. */
static void assert_kv_same(side *cpu, side *gpu, int i, const char *what)
{
    kv_cache *a = cpu->kv[i], *b = gpu->kv[i];
    assert_int_equal(a->n_committed, b->n_committed);
    assert_int_equal(a->n_pending, b->n_pending);
    size_t used = (size_t)(a->n_committed + a->n_pending), dh = (size_t)a->dh;
    size_t n = (size_t)a->n_layer * a->n_head * kv_head_stride(a);
    float *hk = (float *)malloc(sizeof(float) * n), *hv = (float *)malloc(sizeof(float) * n);
    assert_int_equal(gpu->be->download(gpu->be->ctx, hk, b->k, sizeof(float) * n), SD_OK);
    assert_int_equal(gpu->be->download(gpu->be->ctx, hv, b->v, sizeof(float) * n), SD_OK);
    char w[320];
    for (int l = 0; l < a->n_layer; l++)
        for (int h = 0; h < a->n_head; h++) {
            size_t o = (size_t)(kv_k(a, l) - a->k) + (size_t)h * kv_head_stride(a);
            snprintf(w, sizeof w, "%s: seq %d kv layer %d head %d keys", what, i, l, h);
            assert_same(w, hk + o, a->k + o, used * dh);
            snprintf(w, sizeof w, "%s: seq %d kv layer %d head %d values", what, i, l, h);
            assert_same(w, hv + (size_t)(kv_v(a, l) - a->v) + (size_t)h * kv_head_stride(a),
                        a->v + (size_t)(kv_v(a, l) - a->v) + (size_t)h * kv_head_stride(a),
                        used * dh);
        }
    free(hk);
    free(hv);
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
    snprintf(path, sizeof path, "/tmp/specd-cuda-multi-%d-%s.gguf", (int)getpid(), v->name);
    assert_int_equal(tiny_model_write(path, &o), 0);
    side cpu, gpu;
    open_side(&cpu, path, 0, v->flags);
    open_side(&gpu, path, 1, v->flags);
    int V = model_cfg(cpu.m)->n_vocab;
    float *lc[MAXS], *lg[MAXS];
    for (int i = 0; i < MAXS; i++) {
        lc[i] = (float *)malloc(sizeof(float) * MAXT * V);
        lg[i] = (float *)malloc(sizeof(float) * MAXT * V);
    }
    char what[128];
    enum { ROUNDS = 3 };
    for (int round = 0; round < ROUNDS; round++) {
        int n = 2 + (int)tu_below(&rng, MAXS - 1);
        /* 1. random committed prefixes (0..30 tokens), some with a pending chain after them */
        seq_in in[MAXS];
        for (int i = 0; i < n; i++)
            for (side *s : {&cpu, &gpu})
                assert_int_equal(kv_truncate(s->kv[i], 0), SD_OK);
        for (int i = 0; i < n; i++) {
            int np = (int)tu_below(&rng, 31);
            if (!np)
                continue;
            seq_in pre;
            rand_seq(&pre, V, np, 0);
            pre.tree = 0;
            pre.n_out = 1;
            pre.idx[0] = np - 1;
            for (side *s : {&cpu, &gpu}) {
                model_seq q = {s->kv[i], pre.tok, NULL, np, NULL, 1, s == &cpu ? lc[0] : lg[0]};
                assert_int_equal(model_forward_multi(s->m, s->r, &q, 1), SD_OK);
                assert_int_equal(kv_commit_all(s->kv[i]), SD_OK);
            }
            if (tu_below(&rng, 3) == 0) { /* nodes already pending before the multi forward */
                int32_t t2[2] = {(int32_t)tu_below(&rng, (unsigned)V),
                                 (int32_t)tu_below(&rng, (unsigned)V)};
                for (side *s : {&cpu, &gpu}) {
                    model_seq q = {s->kv[i], t2, NULL, 2, NULL, 1, s == &cpu ? lc[0] : lg[0]};
                    assert_int_equal(model_forward_multi(s->m, s->r, &q, 1), SD_OK);
                }
            }
        }
        /* 2. one forward over all n sequences: 1..40 positions each, chunks of TMAX */
        for (int i = 0; i < n; i++)
            rand_seq(&in[i], V, 1 + (int)tu_below(&rng, MAXT), cpu.kv[i]->n_pending);
        snprintf(what, sizeof what, "%s round %d (%d sequences)", v->name, round, n);
        forward(&cpu, in, n, lc, what);
        forward(&gpu, in, n, lg, what);
        for (int i = 0; i < n; i++) {
            char w[320];
            snprintf(w, sizeof w, "%s: seq %d (T %d, %s, %d rows) logits, cuda vs cpu", what, i,
                     in[i].T, in[i].tree ? "tree" : "chain", in[i].n_out);
            assert_same(w, lg[i], lc[i], (size_t)in[i].n_out * V);
            assert_kv_same(&cpu, &gpu, i, what);
        }
        /* 3. commit a root-to-node path of each sequence's new nodes, then decode one token per
         * sequence in one forward: the moved KV rows and the decode agree */
        for (int i = 0; i < n; i++) {
            kv_cache *kv = cpu.kv[i];
            int path[CTX], np = 0,
                           node = kv->n_pending - 1 - (int)tu_below(&rng, (unsigned)in[i].T);
            for (int a = node; a >= 0; a = kv->parent[a])
                np++;
            for (int a = node, k = np - 1; a >= 0; a = kv->parent[a])
                path[k--] = a;
            for (side *s : {&cpu, &gpu})
                assert_int_equal(kv_commit_path(s->kv[i], path, np), SD_OK);
            in[i].T = 1;
            in[i].tree = 0;
            in[i].n_out = 1;
            in[i].tok[0] = (int32_t)tu_below(&rng, (unsigned)V);
        }
        snprintf(what, sizeof what, "%s round %d: decode of %d sequences", v->name, round, n);
        forward(&cpu, in, n, lc, what);
        forward(&gpu, in, n, lg, what);
        for (int i = 0; i < n; i++) {
            char w[320];
            snprintf(w, sizeof w, "%s: seq %d logits, cuda vs cpu", what, i);
            assert_same(w, lg[i], lc[i], (size_t)V);
            assert_kv_same(&cpu, &gpu, i, what);
        }
        /* 4. plain decode steps of sequence 0 alone (a graph capture and replay on CUDA) */
        for (int step = 0; step < 3; step++) {
            for (side *s : {&cpu, &gpu})
                assert_int_equal(kv_commit_all(s->kv[0]), SD_OK);
            in[0].tok[0] = (int32_t)tu_below(&rng, (unsigned)V);
            snprintf(what, sizeof what, "%s round %d: decode step %d of seq 0", v->name, round,
                     step);
            forward(&cpu, in, 1, lc, what);
            forward(&gpu, in, 1, lg, what);
            assert_same(what, lg[0], lc[0], (size_t)V);
        }
    }
    for (int i = 0; i < MAXS; i++) {
        free(lc[i]);
        free(lg[i]);
    }
    close_side(&cpu);
    close_side(&gpu);
    unlink(path);
}

static void test_multi(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
#if defined(CUSIM) && defined(__SANITIZE_ADDRESS__)
        /* under ASan each fiber order takes a share of the variants (all covered once) */
        if ((int)(i % 3) != cusim_get_order())
            continue;
#endif
        run_variant(&variants[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_multi)};
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
