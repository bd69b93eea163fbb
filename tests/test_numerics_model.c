/* test_numerics_model: the canonical numerics on the default model (SmolLM2-135M, Q4_1 layers and
 * a Q8_0 head). Its first layers (a layer subset, packed and stored weights) in both activation
 * modes at 1-3 threads: the logits of a decode, a prefill and a 64-node tree memcmp-equal across
 * portable, AVX2 and AVX-512; and the full model's greedy continuations of 64 tokens on five
 * prompts identical across the levels, with every step's logits bitwise equal (8-bit
 * activations, the chaotic mode in which a one-ulp difference would have shown as diverging
 * text). Levels the CPU lacks are skipped with the reason printed.
 * SD_TEST_LABELS: model */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/model.h"
#include "../engine/sample.h"
#include "../engine/tok.h"
#include "numerics_util.h"
#include "testutil.h"

static void test_first_layers(void **state)
{
    (void)state;
    nu_levels lv;
    nu_levels_init(&lv, "numerics-model");
    static const int layers[] = {0, 1, 2};
    uint64_t seed = tu_seed();
    long n_cmp = 0;
    for (int mode = 0; mode < 2; mode++) {
        unsigned am = mode ? KERN_CPU_F32_ACT : 0u;
        /* the 49152-row head dominates: logits of a few rows only */
        nu_work wk = {.n_decode = 4,
                      .n_prefill = 40,
                      .prefill_every = 13,
                      .tree_prefix = 20,
                      .tree_T = 64,
                      .tree_every = 9,
                      .seed = seed + (uint64_t)mode};
        nu_result ref = {0};
        for (int li = 0; li < lv.n; li++)
            for (int th = 1; th <= 3; th++) {
                if (mode && th == 3)
                    continue;
                model_opts mo = {.n_threads = th,
                                 .kern_flags = lv.flags[li] | am,
                                 .layers = layers,
                                 .n_layers = 3,
                                 .no_pack = th == 2 && li > 0};
                model *m = NULL;
                sd_err e = model_open(&m, tu_model_path(), &mo);
                if (e)
                    fprintf(stderr, "model_open: %s\n", sd_errmsg());
                assert_int_equal(e, SD_OK);
                nu_result res;
                nu_run(m, &wk, &res);
                if (!ref.logits) {
                    ref = res;
                } else {
                    nu_expect_equal(&ref, &res, "default model, layers 0-2", mode ? "f32" : "act8",
                                    lv.name[li], th);
                    nu_result_free(&res);
                    n_cmp++;
                }
                model_free(m);
            }
        nu_result_free(&ref);
    }
    fprintf(stderr, "[numerics-model] layers 0-2, both modes: %ld runs memcmp-equal to portable\n",
            n_cmp);
}

/* FNV-1a over the bits of a logits row */
static uint64_t hash_row(const float *x, int n)
{
    const unsigned char *p = (const unsigned char *)x;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof(float) * (size_t)n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

enum { N_GEN = 64, N_PROMPTS = 5 };

static void greedy(model *m, const tok *tk, const char *prompt, int32_t *gen, uint64_t *hashes)
{
    int V = model_cfg(m)->n_vocab;
    int32_t ids[256];
    size_t n = 0;
    assert_int_equal(tok_encode(tk, prompt, strlen(prompt), TOK_ADD_BOS, ids, 256, &n), SD_OK);
    model_run *run = NULL;
    kv_cache *kv = NULL;
    assert_int_equal(model_run_init(&run, m, 64), SD_OK);
    assert_int_equal(model_kv_init(m, &kv, (int)n + N_GEN + 1), SD_OK);
    float *lg = malloc(sizeof(float) * (size_t)V);
    assert_non_null(lg);
    int last = (int)n - 1;
    assert_int_equal(model_forward(m, run, kv, ids, NULL, (int)n, &last, 1, lg), SD_OK);
    assert_int_equal(kv_commit_all(kv), SD_OK);
    for (int i = 0; i < N_GEN; i++) {
        hashes[i] = hash_row(lg, V);
        gen[i] = sample_argmax(lg, V);
        assert_int_equal(model_forward(m, run, kv, &gen[i], NULL, 1, NULL, 1, lg), SD_OK);
        assert_int_equal(kv_commit_all(kv), SD_OK);
    }
    free(lg);
    kv_free(kv);
    model_run_free(run);
}

static void test_greedy_across_levels(void **state)
{
    (void)state;
    static const char *prompts[N_PROMPTS] = {
        "Once upon a time, in a small village by the sea,",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "The three primary colors are",
        "Q: What is the capital of France?\nA:",
        "In 1969, the Apollo 11 mission",
    };
    nu_levels lv;
    nu_levels_init(&lv, "numerics-model");
    static int32_t gen[3][N_PROMPTS][N_GEN];
    static uint64_t hs[3][N_PROMPTS][N_GEN];
    for (int li = 0; li < lv.n; li++) {
        model_opts mo = {.n_threads = 0, .kern_flags = lv.flags[li]};
        model *m = NULL;
        assert_int_equal(model_open(&m, tu_model_path(), &mo), SD_OK);
        tok *tk = NULL;
        assert_int_equal(tok_load(&tk, model_gguf(m)), SD_OK);
        for (int p = 0; p < N_PROMPTS; p++) {
            greedy(m, tk, prompts[p], gen[li][p], hs[li][p]);
            if (li == 0)
                continue;
            for (int i = 0; i < N_GEN; i++)
                if (hs[li][p][i] != hs[0][p][i] || gen[li][p][i] != gen[0][p][i]) {
                    fprintf(stderr,
                            "prompt %d: level %s departs from portable at step %d (token %d vs "
                            "%d, logits %s)\n",
                            p, lv.name[li], i, gen[li][p][i], gen[0][p][i],
                            hs[li][p][i] == hs[0][p][i] ? "equal" : "differ");
                    fail();
                }
        }
        tok_free(tk);
        model_free(m);
    }
    fprintf(stderr,
            "[numerics-model] greedy %d tokens x %d prompts: tokens and every step's logits "
            "identical on %d level(s)\n",
            N_GEN, N_PROMPTS, lv.n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_layers),
        cmocka_unit_test(test_greedy_across_levels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
