#include "decode_ref.h"

#include <stdlib.h>

#include "testutil.h"

void decode_ref(model *m, const int32_t *prompt, int n, const sample_params *sp, int n_gen,
                int32_t *out)
{
    int V = model_cfg(m)->n_vocab;
    kv_cache *kv;
    model_run *r;
    sample_work *sw;
    float *lg = malloc(sizeof(float) * (size_t)V);
    assert_int_equal(model_kv_init(m, &kv, n + n_gen + 1), SD_OK);
    assert_int_equal(model_run_init(&r, m, 64), SD_OK);
    assert_int_equal(sample_work_init(&sw, V), SD_OK);
    assert_int_equal(model_forward(m, r, kv, prompt, NULL, n, NULL, 1, lg), SD_OK);
    assert_int_equal(kv_commit_all(kv), SD_OK);
    for (int i = 0; i < n_gen; i++) {
        out[i] = sample_token(sw, lg, V, sp, (uint64_t)kv->n_committed);
        assert_int_equal(model_forward(m, r, kv, &out[i], NULL, 1, NULL, 1, lg), SD_OK);
        assert_int_equal(kv_commit_all(kv), SD_OK);
    }
    free(lg);
    sample_work_free(sw);
    model_run_free(r);
    kv_free(kv);
}

int tok_sink_put(void *ud, int32_t t)
{
    tok_sink *s = ud;
    if (s->n < s->cap)
        s->ids[s->n++] = t;
    return 0;
}
