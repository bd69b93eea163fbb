/* test_numerics: every CPU dispatch level computes the canonical numerics (docs/numerics.md) bit
 * for bit. On random tiny models of every weight type (llama and qwen2, tied and untied), in
 * both activation modes, the logits of a token-by-token decode, a prefill and a 64-node tree are
 * memcmp-equal across portable, AVX2 and AVX-512 at 1, 2 and 3 threads, the portable level at
 * one thread being the oracle; and the backends' numerics fingerprints agree. A level the CPU
 * lacks is skipped with the reason printed. (The default model: test_numerics_model.c.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/model.h"
#include "numerics_util.h"
#include "testutil.h"
#include "tiny_model.h"

/* D = 320: 10 blocks per row, N = 320 / 20 rows: short row groups and odd block counts */
static const tiny_variant odd = {"q4_1-odd", "llama", SD_DTYPE_Q4_1, SD_DTYPE_Q4_0, 320, 160, 1};
#define NV ((size_t)tiny_n_variants + 1) /* every weight type, then odd */

static void test_levels_tiny_models(void **state)
{
    (void)state;
    nu_levels lv;
    nu_levels_init(&lv, "numerics");
    uint64_t seed = tu_seed();
    long n_cmp = 0;
    for (size_t vi = 0; vi < NV; vi++) {
        const tiny_variant *v = vi < (size_t)tiny_n_variants ? &tiny_variants[vi] : &odd;
        tiny_model_opts o = tiny_variant_opts(v);
        o.seed = seed + vi;
        char path[256];
        snprintf(path, sizeof path, "/tmp/specd-numerics-%d-%s.gguf", (int)getpid(), v->name);
        assert_int_equal(tiny_model_write(path, &o), 0);
        for (int mode = 0; mode < 2; mode++) {
            unsigned am = mode ? KERN_CPU_F32_ACT : 0u;
            nu_work wk = {.n_decode = 12,
                          .n_prefill = 30,
                          .prefill_every = 1,
                          .tree_prefix = 10,
                          .tree_T = 64,
                          .tree_every = 1,
                          .seed = seed ^ (vi * 131 + (uint64_t)mode)};
            nu_result ref = {0};
            const char *ref_fp = NULL;
            for (int li = 0; li < lv.n; li++)
                for (int th = 1; th <= 3; th++)
                    for (int no_pack = 0; no_pack < 2; no_pack++) {
                        if (no_pack && th != 2)
                            continue; /* the stored-rows path once per level */
                        model_opts mo = {
                            .n_threads = th, .kern_flags = lv.flags[li] | am, .no_pack = no_pack};
                        model *m = NULL;
                        sd_err e = model_open(&m, path, &mo);
                        if (e)
                            fprintf(stderr, "model_open: %s\n", sd_errmsg());
                        assert_int_equal(e, SD_OK);
                        const char *fp = model_backend(m)->numerics;
                        assert_non_null(fp);
                        nu_result res;
                        nu_run(m, &wk, &res);
                        if (!ref.logits) {
                            ref = res;
                            ref_fp = fp;
                        } else {
                            assert_string_equal(fp, ref_fp);
                            nu_expect_equal(&ref, &res, v->name, mode ? "f32" : "act8", lv.name[li],
                                            th);
                            nu_result_free(&res);
                            n_cmp++;
                        }
                        model_free(m);
                    }
            nu_result_free(&ref);
        }
        unlink(path);
    }
    fprintf(stderr,
            "[numerics] %zu tiny models x 2 activation modes: %ld runs (levels x threads 1-3 x "
            "packed/stored) memcmp-equal to portable at 1 thread\n",
            NV, n_cmp);
}

static void test_fingerprint_and_levels(void **state)
{
    (void)state;
    kern_backend *a = NULL, *b = NULL;
    assert_int_equal(kern_cpu_create(&a, 1, 0), SD_OK);
    assert_int_equal(kern_cpu_create(&b, 1, KERN_CPU_F32_ACT), SD_OK);
    assert_string_equal(a->numerics, "cpu-canon1-act8");
    assert_string_equal(b->numerics, "cpu-canon1-f32");
    kern_free(a);
    kern_free(b);
    kern_cpu_level l;
    assert_int_equal(kern_cpu_level_parse("avx2", &l), SD_OK);
    assert_int_equal(l, KERN_CPU_LEVEL_AVX2);
    assert_int_equal(kern_cpu_level_parse("portable", &l), SD_OK);
    assert_int_equal(l, KERN_CPU_LEVEL_PORTABLE);
    assert_int_equal(kern_cpu_level_parse("avx512", &l), SD_OK);
    assert_int_equal(kern_cpu_level_parse("best", &l), SD_OK);
    assert_int_equal(kern_cpu_level_parse("sse9", &l), SD_EINVAL);
    assert_non_null(strstr(sd_errmsg(), "portable, avx2, avx512"));
    /* every level names its own backend, and a level the CPU lacks is refused, not faked */
    static const struct {
        kern_cpu_level l;
        const char *name;
    } t[] = {{KERN_CPU_LEVEL_PORTABLE, "cpu-portable"},
             {KERN_CPU_LEVEL_AVX2, "cpu-avx2"},
             {KERN_CPU_LEVEL_AVX512, "cpu-avx512vnni"}};
    for (size_t i = 0; i < 3; i++) {
        kern_backend *c = NULL;
        sd_err e = kern_cpu_create(&c, 1, KERN_CPU_LEVEL(t[i].l));
        if (kern_cpu_level_available(t[i].l)) {
            assert_int_equal(e, SD_OK);
            assert_string_equal(c->name, t[i].name);
            assert_string_equal(c->numerics, "cpu-canon1-act8");
        } else {
            assert_int_equal(e, SD_EUNSUPPORTED);
            assert_null(c);
        }
        kern_free(c);
    }
    kern_backend *c = NULL;
    assert_int_equal(kern_cpu_create(&c, 1, KERN_CPU_LEVEL(9)), SD_EINVAL);
    assert_null(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fingerprint_and_levels),
        cmocka_unit_test(test_levels_tiny_models),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
