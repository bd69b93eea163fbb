/* test_cuda_model_default: the default model (SmolLM2-135M, Q4_1 layers, Q8_0 head), its first
 * two layers, on the CUDA backend through the engine's forward path against the CPU backend:
 * logits memcmp-equal for a prefill and for a tree, and a position alone == inside the prefill
 * == as a tree node, bitwise. In the simulator (three fiber orders) and on a GPU.
 * SD_TEST_LABELS: cuda-sim model */
#include "kernels/cuda/kcuda.h"
#include "tests/cuda/cuda_testutil.h"

#include <unistd.h>

extern "C" {
#include "engine/kv.h"
#include "engine/model.h"
}

tu_rng rng;

static int group_setup(void **state)
{
    (void)state;
    cu_test_start();
#if !defined(CUSIM)
    const char *mp = getenv("SPECD_MODEL");
    if (!mp || access(mp, R_OK) != 0) { /* a GPU machine may not have the model */
        fprintf(stderr, "model %s not found: skipping\n", mp ? mp : "(SPECD_MODEL unset)");
        exit(77);
    }
#endif
    return 0;
}

static void test_first_layers(void **state)
{
    (void)state;
    const char *path = tu_model_path();
    static const int layers[2] = {0, 1};
    kern_backend *bc = NULL, *bg = NULL;
    assert_int_equal(kern_cpu_create(&bc, 0, 0), SD_OK);
    assert_int_equal(kern_cuda_create(&bg, 0, 0), SD_OK);
    model *mc = NULL, *mg = NULL;
    model_opts oc, og;
    memset(&oc, 0, sizeof oc);
    oc.backend = bc;
    oc.layers = layers;
    oc.n_layers = 2;
    og = oc;
    og.backend = bg;
    assert_int_equal(model_open(&mc, path, &oc), SD_OK);
    assert_int_equal(model_open(&mg, path, &og), SD_OK);
    int V = model_cfg(mc)->n_vocab;
    model_run *rc = NULL, *rg = NULL;
    kv_cache *kc = NULL, *kg = NULL;
    assert_int_equal(model_run_init(&rc, mc, 32), SD_OK);
    assert_int_equal(model_run_init(&rg, mg, 32), SD_OK);
    assert_int_equal(model_kv_init(mc, &kc, 128), SD_OK);
    assert_int_equal(model_kv_init(mg, &kg, 128), SD_OK);
    enum { P = 24, NO = 3 };
    int32_t tok[P];
    for (int i = 0; i < P; i++)
        tok[i] = (int32_t)tu_below(&rng, (unsigned)V);
    int idx[NO] = {10, 17, P - 1};
    float *lc = (float *)malloc(sizeof(float) * NO * V),
          *lg = (float *)malloc(sizeof(float) * NO * V);
    assert_int_equal(model_forward(mc, rc, kc, tok, NULL, P, idx, NO, lc), SD_OK);
    assert_int_equal(model_forward(mg, rg, kg, tok, NULL, P, idx, NO, lg), SD_OK);
    assert_same("default model, 2 layers: prefill logits, cuda vs cpu", lg, lc, (size_t)NO * V);
    /* position 17 alone after committing 17 tokens, and as node 2 of a tree over them */
    float *one = (float *)malloc(sizeof(float) * 4 * V);
    assert_int_equal(kv_truncate(kg, 0), SD_OK);
    assert_int_equal(model_forward(mg, rg, kg, tok, NULL, 17, NULL, 0, NULL), SD_OK);
    assert_int_equal(kv_commit_all(kg), SD_OK);
    assert_int_equal(model_forward(mg, rg, kg, tok + 17, NULL, 1, NULL, 1, one), SD_OK);
    assert_same("position 17 alone vs in the prefill", one, lg + (size_t)V, (size_t)V);
    kv_clear_pending(kg);
    int32_t tt[4] = {(int32_t)tu_below(&rng, (unsigned)V), tok[17],
                     (int32_t)tu_below(&rng, (unsigned)V), tok[18]};
    int par[4] = {-1, -1, 0, 1}, ti[4] = {0, 1, 2, 3};
    assert_int_equal(model_forward(mg, rg, kg, tt, par, 4, ti, 4, one), SD_OK);
    assert_same("position 17 as a tree node vs in the prefill", one + (size_t)V, lg + (size_t)V,
                (size_t)V);
    free(one);
    free(lc);
    free(lg);
    kv_free(kc);
    kv_free(kg);
    model_run_free(rc);
    model_run_free(rg);
    model_free(mc);
    model_free(mg);
    kern_free(bc);
    kern_free(bg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_first_layers)};
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
