/* Model forward on tiny synthetic GGUF models (every weight type, llama and qwen2, tied and
 * untied): batch invariance (a position's logits are bitwise the same alone, in a prefill, or as a
 * node of a 64-node tree), KV commit/truncate exactness, thread-count invariance, and clear errors
 * for bad input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/model.h"
#include "testutil.h"
#include "tiny_model.h"

typedef struct {
    model *m;
    model_run *r;
    int V;
    char path[256];
} fixture;

static void open_variant_opts(fixture *f, const tiny_variant *v, unsigned flags, int threads,
                              int t_max, int no_pack)
{
    tiny_model_opts o = tiny_variant_opts(v);
    o.seed = tu_seed() + (uint64_t)v->wtype;
    snprintf(f->path, sizeof f->path, "/tmp/specd-tiny-%d-%s.gguf", (int)getpid(), v->name);
    assert_int_equal(tiny_model_write(f->path, &o), 0);
    model_opts mo = {.n_threads = threads, .kern_flags = flags, .no_pack = no_pack};
    sd_err e = model_open(&f->m, f->path, &mo);
    if (e)
        fprintf(stderr, "model_open: %s\n", sd_errmsg());
    assert_int_equal(e, SD_OK);
    assert_int_equal(model_run_init(&f->r, f->m, t_max), SD_OK);
    f->V = model_cfg(f->m)->n_vocab;
}

static void open_variant(fixture *f, const tiny_variant *v, unsigned flags, int threads, int t_max)
{
    open_variant_opts(f, v, flags, threads, t_max, 0);
}

static void close_fixture(fixture *f)
{
    model_run_free(f->r);
    model_free(f->m);
    unlink(f->path);
}

/* Decode tokens one at a time from an empty cache; logits[i] after token i. */
static void decode_each(fixture *f, const int32_t *toks, int n, float *logits)
{
    kv_cache *kv;
    assert_int_equal(model_kv_init(f->m, &kv, 256), SD_OK);
    for (int i = 0; i < n; i++) {
        assert_int_equal(
            model_forward(f->m, f->r, kv, &toks[i], NULL, 1, NULL, 1, logits + (size_t)i * f->V),
            SD_OK);
        assert_int_equal(kv_commit_all(kv), SD_OK);
    }
    kv_free(kv);
}

static void check_batch_invariance(const tiny_variant *v, unsigned flags)
{
    tu_rng rng;
    tu_rng_init(&rng, tu_seed() ^ (uint64_t)v->wtype);
    fixture f;
    open_variant(&f, v, flags, 2, 40); /* t_max 40 < 100: the prefill also runs in chunks */
    const int N = 100;
    int32_t toks[100];
    for (int i = 0; i < N; i++)
        toks[i] = (int32_t)tu_below(&rng, (uint32_t)f.V);
    float *alone = malloc(sizeof(float) * (size_t)N * f.V);
    float *batch = malloc(sizeof(float) * (size_t)N * f.V);
    decode_each(&f, toks, N, alone);

    /* prefill of all N with every row's logits */
    kv_cache *kv;
    assert_int_equal(model_kv_init(f.m, &kv, 256), SD_OK);
    int out[100];
    for (int i = 0; i < N; i++)
        out[i] = i;
    assert_int_equal(model_forward(f.m, f.r, kv, toks, NULL, N, out, N, batch), SD_OK);
    assert_memory_equal(alone, batch, sizeof(float) * (size_t)N * f.V);

    /* a 64-node random tree over a 30-token prefix that contains the path toks[30..] */
    assert_int_equal(kv_truncate(kv, 0), SD_OK);
    assert_int_equal(model_forward(f.m, f.r, kv, toks, NULL, 30, NULL, 0, NULL), SD_OK);
    assert_int_equal(kv_commit_all(kv), SD_OK);
    int32_t tt[64];
    int par[64], tout[64], on_path[64], depth[64], npath = 0;
    for (int i = 0; i < 64; i++) {
        tout[i] = i;
        if (i % 3 == 0 && 30 + npath < N) { /* the true path, every third node */
            par[i] = npath == 0 ? -1 : on_path[npath - 1];
            tt[i] = toks[30 + npath];
            depth[i] = npath;
            on_path[npath++] = i;
        } else { /* distractors hanging anywhere */
            par[i] = (int)tu_below(&rng, (uint32_t)i + 1) - 1;
            tt[i] = (int32_t)tu_below(&rng, (uint32_t)f.V);
            depth[i] = par[i] < 0 ? 0 : depth[par[i]] + 1;
        }
    }
    (void)depth;
    float *tl = malloc(sizeof(float) * 64 * (size_t)f.V);
    assert_int_equal(model_forward(f.m, f.r, kv, tt, par, 64, tout, 64, tl), SD_OK);
    for (int j = 0; j < npath; j++)
        assert_memory_equal(tl + (size_t)on_path[j] * f.V, alone + (size_t)(30 + j) * f.V,
                            sizeof(float) * (size_t)f.V);

    /* commit the path, continue decoding: bitwise the token-by-token logits */
    assert_int_equal(kv_commit_path(kv, on_path, npath), SD_OK);
    assert_int_equal(kv->n_committed, 30 + npath);
    for (int i = 30 + npath; i < N; i++) {
        float *lg = tl;
        assert_int_equal(model_forward(f.m, f.r, kv, &toks[i], NULL, 1, NULL, 1, lg), SD_OK);
        assert_int_equal(kv_commit_all(kv), SD_OK);
        assert_memory_equal(lg, alone + (size_t)i * f.V, sizeof(float) * (size_t)f.V);
    }

    /* truncate back and decode again */
    assert_int_equal(kv_truncate(kv, 50), SD_OK);
    for (int i = 50; i < 60; i++) {
        assert_int_equal(model_forward(f.m, f.r, kv, &toks[i], NULL, 1, NULL, 1, tl), SD_OK);
        assert_int_equal(kv_commit_all(kv), SD_OK);
        assert_memory_equal(tl, alone + (size_t)i * f.V, sizeof(float) * (size_t)f.V);
    }
    kv_free(kv);
    free(tl);
    free(alone);
    free(batch);
    close_fixture(&f);
}

static void test_batch_invariance(void **state)
{
    for (size_t i = 0; i < (size_t)tiny_n_variants; i++) {
        fprintf(stderr, "  variant %s (quantized activations)\n", tiny_variants[i].name);
        check_batch_invariance(&tiny_variants[i], 0);
        fprintf(stderr, "  variant %s (f32 activations)\n", tiny_variants[i].name);
        check_batch_invariance(&tiny_variants[i], KERN_CPU_F32_ACT);
        fprintf(stderr, "  variant %s (portable)\n", tiny_variants[i].name);
        check_batch_invariance(&tiny_variants[i], KERN_CPU_LEVEL(KERN_CPU_LEVEL_PORTABLE));
    }
}

/* The thread count changes nothing. */
static void test_thread_invariance(void **state)
{
    const tiny_variant *v = &tiny_variants[2];
    int32_t toks[20];
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    float *ref = NULL;
    for (int th = 1; th <= 3; th++) {
        fixture f;
        open_variant(&f, v, 0, th, 64);
        if (!ref) {
            for (int i = 0; i < 20; i++)
                toks[i] = (int32_t)tu_below(&rng, (uint32_t)f.V);
            ref = malloc(sizeof(float) * 20 * (size_t)f.V);
            decode_each(&f, toks, 20, ref);
        } else {
            float *l = malloc(sizeof(float) * 20 * (size_t)f.V);
            decode_each(&f, toks, 20, l);
            assert_memory_equal(l, ref, sizeof(float) * 20 * (size_t)f.V);
            free(l);
        }
        close_fixture(&f);
    }
    free(ref);
}

/* The backend's packed weights give bitwise the logits of the weights as stored: tail-only
 * rows (D = 64) and the default model's widths (D = 576: one 16-block group and a 2-block
 * tail; F = 1536: three groups). Where the backend packs nothing the two are the same run. */
static void test_packed_weights(void **state)
{
    (void)state;
    static const tiny_variant wide[] = {
        {"q8_0", "llama", SD_DTYPE_Q8_0, SD_DTYPE_Q8_0, 64, 96, 0},
        {"q4_1", "llama", SD_DTYPE_Q4_1, SD_DTYPE_Q8_0, 64, 96, 1},
        {"q4_1-wide", "llama", SD_DTYPE_Q4_1, SD_DTYPE_Q8_0, 576, 1536, 0},
        {"q8_0-wide", "llama", SD_DTYPE_Q8_0, SD_DTYPE_Q8_0, 576, 1536, 1},
    };
    for (size_t i = 0; i < sizeof wide / sizeof wide[0]; i++) {
        fixture a, b;
        open_variant_opts(&a, &wide[i], 0, 2, 16, 0);
        open_variant_opts(&b, &wide[i], 0, 2, 16, 1);
        assert_int_equal(model_packed_bytes(b.m), 0);
        fprintf(stderr, "  %s: %llu bytes packed (%s)\n", wide[i].name,
                (unsigned long long)model_packed_bytes(a.m), model_backend(a.m)->name);
        if (!strcmp(model_backend(a.m)->name, "cpu-avx512vnni"))
            assert_true(model_packed_bytes(a.m) > 0);
        tu_rng rng;
        tu_rng_init(&rng, tu_seed() ^ i);
        int32_t toks[24];
        for (int k = 0; k < 24; k++)
            toks[k] = (int32_t)tu_below(&rng, (uint32_t)a.V);
        float *la = malloc(sizeof(float) * 24 * (size_t)a.V);
        float *lb = malloc(sizeof(float) * 24 * (size_t)a.V);
        assert_true(la && lb);
        decode_each(&a, toks, 24, la);
        decode_each(&b, toks, 24, lb);
        assert_memory_equal(la, lb, sizeof(float) * 24 * (size_t)a.V);
        /* a 16-node batch (the wide kernels' path) against the one-at-a-time logits */
        kv_cache *kv;
        assert_int_equal(model_kv_init(a.m, &kv, 64), SD_OK);
        int out[16];
        for (int k = 0; k < 16; k++)
            out[k] = k;
        assert_int_equal(model_forward(a.m, a.r, kv, toks, NULL, 16, out, 16, la), SD_OK);
        assert_memory_equal(la, lb, sizeof(float) * 16 * (size_t)a.V);
        kv_free(kv);

        /* a layer-subset model on the same file (self-drafting) reads a's packed copies: it
         * packs nothing itself, every matrix is packed, and its logits are bitwise those of the
         * same subset reading the stored rows */
        const int layers[1] = {1};
        model *sa, *sb;
        model_opts so = {
            .backend = model_backend(a.m), .layers = layers, .n_layers = 1, .share_packed = a.m};
        assert_int_equal(model_init(&sa, model_gguf(a.m), &so), SD_OK);
        so.share_packed = NULL;
        so.no_pack = 1;
        assert_int_equal(model_init(&sb, model_gguf(a.m), &so), SD_OK);
        assert_int_equal(model_packed_bytes(sa), 0);
        assert_int_equal(model_packed_mats(sb), 0);
        if (model_packed_bytes(a.m))
            assert_int_equal(model_packed_mats(sa), 1 + 7);
        model_run *ra, *rb;
        assert_int_equal(model_run_init(&ra, sa, 16), SD_OK);
        assert_int_equal(model_run_init(&rb, sb, 16), SD_OK);
        kv_cache *ka, *kb;
        assert_int_equal(model_kv_init(sa, &ka, 64), SD_OK);
        assert_int_equal(model_kv_init(sb, &kb, 64), SD_OK);
        assert_int_equal(model_forward(sa, ra, ka, toks, NULL, 16, out, 16, la), SD_OK);
        assert_int_equal(model_forward(sb, rb, kb, toks, NULL, 16, out, 16, lb), SD_OK);
        assert_memory_equal(la, lb, sizeof(float) * 16 * (size_t)a.V);
        kv_free(ka);
        kv_free(kb);
        model_run_free(ra);
        model_run_free(rb);
        model_free(sa);
        model_free(sb);
        free(la);
        free(lb);
        close_fixture(&a);
        close_fixture(&b);
    }
}

/* Bad input: clear errors, nothing changes. */
static void test_bad_input(void **state)
{
    fixture f;
    open_variant(&f, &tiny_variants[0], 0, 2, 16);
    kv_cache *kv;
    assert_int_equal(model_kv_init(f.m, &kv, 32), SD_OK);
    float *lg = malloc(sizeof(float) * 64 * (size_t)f.V);
    int32_t ok[4] = {1, 2, 3, 4};
    int32_t bad[2] = {5, f.V};
    assert_int_equal(model_forward(f.m, f.r, kv, bad, NULL, 2, NULL, 1, lg), SD_ERANGE);
    assert_non_null(strstr(sd_errmsg(), "vocabulary"));
    int32_t neg = -1;
    assert_int_equal(model_forward(f.m, f.r, kv, &neg, NULL, 1, NULL, 1, lg), SD_ERANGE);
    assert_int_equal(kv->n_pending, 0);
    int badpar[2] = {-1, 1}; /* a node cannot be its own parent */
    assert_int_equal(model_forward(f.m, f.r, kv, ok, badpar, 2, NULL, 1, lg), SD_EINVAL);
    int badpar2[2] = {-2, 0};
    assert_int_equal(model_forward(f.m, f.r, kv, ok, badpar2, 2, NULL, 1, lg), SD_EINVAL);
    int out_bad[2] = {1, 0}; /* not increasing */
    assert_int_equal(model_forward(f.m, f.r, kv, ok, NULL, 2, out_bad, 2, lg), SD_EINVAL);
    assert_int_equal(kv->n_pending, 0);
    /* context overflow */
    int32_t many[40] = {0};
    assert_int_equal(model_forward(f.m, f.r, kv, many, NULL, 33, NULL, 1, lg), SD_ERANGE);
    assert_int_equal(model_forward(f.m, f.r, kv, many, NULL, 32, NULL, 1, lg), SD_OK);
    assert_int_equal(kv_commit_all(kv), SD_OK);
    assert_int_equal(model_forward(f.m, f.r, kv, ok, NULL, 1, NULL, 1, lg), SD_ERANGE);
    /* commit errors leave the cache as it was */
    assert_int_equal(kv_truncate(kv, 10), SD_OK);
    int tp[3] = {-1, 0, 0};
    assert_int_equal(model_forward(f.m, f.r, kv, ok, tp, 3, NULL, 0, NULL), SD_OK);
    int path_bad[2] = {0, 0};
    assert_int_equal(kv_commit_path(kv, path_bad, 2), SD_EINVAL);
    int path_bad2[1] = {1}; /* not a root */
    assert_int_equal(kv_commit_path(kv, path_bad2, 1), SD_EINVAL);
    assert_int_equal(kv_commit_all(kv), SD_EINVAL); /* a tree, not a chain */
    assert_int_equal(kv->n_pending, 3);
    assert_int_equal(kv->n_committed, 10);
    int path_ok[2] = {0, 2};
    assert_int_equal(kv_commit_path(kv, path_ok, 2), SD_OK);
    assert_int_equal(kv->n_committed, 12);
    assert_int_equal(kv_truncate(kv, 13), SD_ERANGE);
    /* a cache shaped for another model */
    kv_cache *other;
    assert_int_equal(kv_init(&other, 3, 2, 16, 16), SD_OK);
    assert_int_equal(model_forward(f.m, f.r, other, ok, NULL, 1, NULL, 1, lg), SD_EINVAL);
    kv_free(other);
    kv_free(kv);
    free(lg);
    close_fixture(&f);
}

/* Model files that parse as GGUF but are not a usable model. */
static void test_bad_models(void **state)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/specd-tiny-bad-%d.gguf", (int)getpid());
    tiny_model_opts o = tiny_model_defaults();
    o.arch = "gptneox";
    assert_int_equal(tiny_model_write(path, &o), 0);
    model *m;
    assert_int_equal(model_open(&m, path, NULL), SD_EUNSUPPORTED);
    assert_null(m);
    assert_non_null(strstr(sd_errmsg(), "gptneox"));
    assert_non_null(strstr(sd_errmsg(), "llama"));
    o = tiny_model_defaults();
    o.n_head = 5; /* 64 does not divide into 5 heads */
    assert_int_equal(tiny_model_write(path, &o), 0);
    assert_int_equal(model_open(&m, path, NULL), SD_EPROTO);
    assert_int_equal(model_open(&m, "/nonexistent/model.gguf", NULL) != SD_OK, 1);
    assert_non_null(strstr(sd_errmsg(), "/nonexistent/model.gguf"));
    /* layer subsets */
    o = tiny_model_defaults();
    o.n_layer = 4;
    assert_int_equal(tiny_model_write(path, &o), 0);
    int bad_layers[2] = {2, 1};
    model_opts mo = {.layers = bad_layers, .n_layers = 2};
    assert_int_equal(model_open(&m, path, &mo), SD_EINVAL);
    int good_layers[2] = {0, 3};
    mo.layers = good_layers;
    assert_int_equal(model_open(&m, path, &mo), SD_OK);
    assert_int_equal(model_cfg(m)->n_layer, 2);
    model_free(m);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_invariance), cmocka_unit_test(test_thread_invariance),
        cmocka_unit_test(test_packed_weights),   cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_bad_models),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
