/* Continuous batching on the real default model: 4 sessions with different prompts decoded
 * batched (model_forward_multi: one prefill over all prompts, cut into chunks by a small t_max,
 * then one 4-sequence forward per step; and verify_batch with 3-node draft chains, one session
 * arriving a step late) give the tokens and logits of each session decoded alone, for 32 steps.
 * SD_TEST_LABELS: model */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/tok.h"
#include "../engine/verify.h"
#include "testutil.h"

#define NS 4
#define STEPS 32

static const char *prompts[NS] = {
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "The three primary colors are",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
};

static void test_batched_vs_alone(void **state)
{
    model *m;
    assert_int_equal(model_open(&m, tu_model_path(), NULL), SD_OK);
    tok *tk;
    assert_int_equal(tok_load(&tk, model_gguf(m)), SD_OK);
    int V = model_cfg(m)->n_vocab;
    int32_t ids[NS][128], want[NS][STEPS];
    int n[NS];
    float *alone = malloc(sizeof(float) * NS * STEPS * (size_t)V);
    float *lg = malloc(sizeof(float) * NS * (size_t)V);
    assert_true(alone && lg);
    model_run *r1, *r16;
    assert_int_equal(model_run_init(&r1, m, 64), SD_OK);
    assert_int_equal(model_run_init(&r16, m, 16), SD_OK);

    /* alone: plain greedy decoding, one session after the other */
    for (int s = 0; s < NS; s++) {
        size_t len;
        assert_int_equal(
            tok_encode(tk, prompts[s], strlen(prompts[s]), TOK_PARSE_SPECIAL, ids[s], 128, &len),
            SD_OK);
        n[s] = (int)len;
        kv_cache *kv;
        assert_int_equal(model_kv_init(m, &kv, 256), SD_OK);
        float *l = alone + (size_t)s * STEPS * V;
        assert_int_equal(model_forward(m, r1, kv, ids[s], NULL, n[s], NULL, 1, l), SD_OK);
        assert_int_equal(kv_commit_all(kv), SD_OK);
        for (int i = 0; i < STEPS; i++) {
            want[s][i] = sample_argmax(l + (size_t)i * V, V);
            if (i + 1 < STEPS) {
                assert_int_equal(model_forward(m, r1, kv, &want[s][i], NULL, 1, NULL, 1,
                                               l + (size_t)(i + 1) * V),
                                 SD_OK);
                assert_int_equal(kv_commit_all(kv), SD_OK);
            }
        }
        kv_free(kv);
    }

    /* batched forwards: one prefill of all four prompts, then one forward per step */
    kv_cache *kv[NS];
    model_seq q[NS];
    for (int s = 0; s < NS; s++) {
        assert_int_equal(model_kv_init(m, &kv[s], 256), SD_OK);
        q[s] = (model_seq){kv[s], ids[s], NULL, n[s], NULL, 1, lg + (size_t)s * V};
    }
    int32_t cur[NS];
    for (int i = 0; i < STEPS; i++) {
        assert_int_equal(model_forward_multi(m, r16, q, NS), SD_OK);
        for (int s = 0; s < NS; s++) {
            assert_int_equal(kv_commit_all(kv[s]), SD_OK);
            if (memcmp(lg + (size_t)s * V, alone + ((size_t)s * STEPS + i) * V,
                       sizeof(float) * (size_t)V))
                fail_msg("session %d step %d: batched logits differ from alone", s, i);
            cur[s] = sample_argmax(lg + (size_t)s * V, V);
            assert_int_equal(cur[s], want[s][i]);
            q[s].tokens = &cur[s];
            q[s].T = 1;
        }
    }

    /* verify_batch: 3-node chains of the right tokens with a random one wrong */
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    verify_work *w[NS];
    verify_result *res[NS];
    tree t[NS];
    int32_t got[NS][STEPS + 8], last[NS];
    int ng[NS] = {0}, acc = 0, jobs_run = 0;
    sample_params sp = {0, 0, 1, 0};
    for (int s = 0; s < NS; s++) {
        assert_int_equal(kv_truncate(kv[s], 0), SD_OK);
        assert_int_equal(verify_work_init(&w[s], m, 8), SD_OK);
        assert_int_equal(tree_init(&t[s], 8, 0), SD_OK);
        res[s] = malloc(sizeof *res[s]);
        last[s] = ids[s][n[s] - 1];
    }
    for (int step = 0; step < 64; step++) {
        verify_job jobs[NS];
        int nj = 0, who[NS];
        for (int s = 0; s < NS; s++) {
            int start = s == 3; /* the last session arrives one step late */
            if (step < start || ng[s] >= STEPS)
                continue;
            if (step == start) {
                jobs[nj] = (verify_job){.kv = kv[s], .w = w[s], .pre = ids[s], .n_pre = n[s] - 1};
            } else {
                tree_clear(&t[s]);
                int bad = (int)tu_below(&rng, 5);
                for (int k = 0; k < 3 && ng[s] + k < STEPS; k++)
                    tree_add(&t[s], k - 1,
                             k == bad ? (want[s][ng[s] + k] + 1) % V : want[s][ng[s] + k], 0);
                jobs[nj] = (verify_job){.kv = kv[s],
                                        .w = w[s],
                                        .pre = &last[s],
                                        .n_pre = 1,
                                        .t = &t[s],
                                        .mode = VERIFY_SAMPLE,
                                        .sp = &sp,
                                        .res = res[s]};
            }
            who[nj++] = s;
        }
        if (!nj)
            break;
        assert_int_equal(verify_batch(m, r16, jobs, nj), SD_OK);
        for (int k = 0; k < nj; k++) {
            int s = who[k];
            if (jobs[k].err)
                fail_msg("session %d: %s", s, jobs[k].errmsg);
            jobs_run++;
            if (!jobs[k].t)
                continue;
            for (int i = 0; i < res[s]->n_accept; i++)
                got[s][ng[s]++] = t[s].tok[res[s]->path[i]];
            got[s][ng[s]++] = res[s]->next;
            acc += res[s]->n_accept;
            last[s] = res[s]->next;
        }
    }
    fprintf(stderr, "  verify_batch: %d jobs, %d draft tokens accepted\n", jobs_run, acc);
    for (int s = 0; s < NS; s++) {
        assert_true(ng[s] >= STEPS);
        for (int i = 0; i < STEPS; i++)
            if (got[s][i] != want[s][i])
                fail_msg("session %d token %d: batched %d, alone %d", s, i, got[s][i], want[s][i]);
        kv_free(kv[s]);
        verify_work_free(w[s]);
        tree_free(&t[s]);
        free(res[s]);
    }
    model_run_free(r1);
    model_run_free(r16);
    free(alone);
    free(lg);
    tok_free(tk);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batched_vs_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
