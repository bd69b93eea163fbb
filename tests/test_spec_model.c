/* Lossless speculation on the real default model: 5 prompts x every drafter (a draft model, the
 * layer-skip self-drafter, n-gram lookup, and an adversary proposing random trees) x chain,
 * top-k and dynamic trees, greedy and seeded sampling (temperature 0.8, top-p 0.95): the tokens
 * are exactly those of plain target-only decoding.
 * SD_TEST_LABELS: model slow */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/spec.h"
#include "../engine/tok.h"
#include "adversary.h"
#include "decode_ref.h"
#include "testutil.h"

#define N_GEN 24

static const char *prompts[] = {
    "<|im_start|>user\nGive me three tips for a good night's sleep.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "def binary_search(arr, target):\n    lo, hi = 0, len(arr) - 1\n",
    "Summarize: The Amazon rainforest covers much of the Amazon basin of South America. The "
    "forest spans nine nations and holds about ten percent of all known species.\nSummary:",
    "Here is a list of the planets in order from the sun: Mercury, Venus,",
    "Once upon a time, in a small village by the sea, there lived",
};

static const char *shapes[] = {"chain:4", "topk:4,2,1", "dynamic:16"};

static void test_lossless_real_model(void **state)
{
    model *m;
    assert_int_equal(model_open(&m, tu_model_path(), NULL), SD_OK);
    tok *tk;
    assert_int_equal(tok_load(&tk, model_gguf(m)), SD_OK);
    char self[4200];
    snprintf(self, sizeof self, "model:%s", tu_model_path());
    const char *drafters[] = {self, "layerskip:0-27,29", "ngram:3", "adversary"};
    int V = model_cfg(m)->n_vocab;
    uint64_t seed = tu_seed();
    for (int temp_i = 0; temp_i < 2; temp_i++) {
        sample_params sp = {temp_i ? 0.8f : 0.0f, 0, temp_i ? 0.95f : 1.0f, seed};
        for (size_t p = 0; p < sizeof prompts / sizeof prompts[0]; p++) {
            int32_t ids[256], want[N_GEN], got[N_GEN + 8];
            size_t n;
            assert_int_equal(
                tok_encode(tk, prompts[p], strlen(prompts[p]), TOK_PARSE_SPECIAL, ids, 256, &n),
                SD_OK);
            decode_ref(m, ids, (int)n, &sp, N_GEN, want);
            long acc = 0;
            for (size_t d = 0; d < sizeof drafters / sizeof drafters[0]; d++)
                for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
                    draft_opts o = {.max_ctx = 512, .max_nodes = 32, .temp = sp.temp, .seed = seed};
                    draft *dr;
                    sd_err e = strcmp(drafters[d], "adversary")
                                   ? draft_open(&dr, drafters[d], m, &o)
                                   : adversary_open(&dr, V, 512, seed + p, 30);
                    assert_int_equal(e, SD_OK);
                    tok_sink sink = {got, 0, N_GEN + 8};
                    spec_config c = {.target = m,
                                     .drafter = dr,
                                     .vmode = VERIFY_SAMPLE,
                                     .sp = sp,
                                     .n_predict = N_GEN,
                                     .max_nodes = 32,
                                     .on_token = tok_sink_put,
                                     .ud = &sink};
                    assert_int_equal(tree_shape_parse(&c.shape, shapes[s], 32), SD_OK);
                    spec_stats st;
                    assert_int_equal(spec_generate(&c, ids, (int)n, &st), SD_OK);
                    if (sink.n != N_GEN || memcmp(got, want, sizeof want))
                        fail_msg("temp %.1f prompt %zu drafter %s tree %s: differs from "
                                 "target-only",
                                 sp.temp, p, drafters[d], shapes[s]);
                    acc += st.accepted;
                    draft_free(dr);
                }
            fprintf(stderr,
                    "  temp %.1f prompt %zu: 4 drafters x 3 trees identical to "
                    "target-only (%ld draft tokens accepted)\n",
                    sp.temp, p, acc);
            assert_true(acc > 0);
        }
    }
    tok_free(tk);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_lossless_real_model)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
