#include "numerics_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

void nu_levels_init(nu_levels *lv, const char *tag)
{
    static const struct {
        kern_cpu_level l;
        const char *name, *needs;
    } t[] = {{KERN_CPU_LEVEL_PORTABLE, "portable", ""},
             {KERN_CPU_LEVEL_AVX2, "avx2", "AVX2 + FMA + F16C"},
             {KERN_CPU_LEVEL_AVX512, "avx512", "AVX-512 F/BW/VL/DQ + VNNI"}};
    lv->n = 0;
    char buf[64] = "";
    for (int i = 0; i < 3; i++) {
        if (!kern_cpu_level_available(t[i].l)) {
            fprintf(stderr, "[%s] skipping level %s: this CPU lacks %s (it has: %s)\n", tag,
                    t[i].name, t[i].needs, kern_cpu_features());
            continue;
        }
        lv->flags[lv->n] = KERN_CPU_LEVEL(t[i].l);
        lv->name[lv->n] = t[i].name;
        lv->n++;
        strcat(buf, " ");
        strcat(buf, t[i].name);
    }
    fprintf(stderr, "[%s] comparing levels:%s (oracle: portable, 1 thread)\n", tag, buf);
}

static void grow(nu_result *r, int rows)
{
    float *p = realloc(r->logits, sizeof(float) * (size_t)(r->rows + rows) * (size_t)r->V);
    assert_non_null(p);
    r->logits = p;
}

void nu_run(model *m, const nu_work *w, nu_result *out)
{
    int V = model_cfg(m)->n_vocab;
    memset(out, 0, sizeof *out);
    out->V = V;
    tu_rng rng;
    tu_rng_init(&rng, w->seed);
    int n_tok = w->n_decode > w->n_prefill ? w->n_decode : w->n_prefill;
    if (w->tree_prefix > n_tok)
        n_tok = w->tree_prefix;
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)(n_tok + 64));
    assert_non_null(toks);
    for (int i = 0; i < n_tok + 64; i++)
        toks[i] = (int32_t)tu_below(&rng, (uint32_t)V);
    model_run *run = NULL;
    kv_cache *kv = NULL;
    assert_int_equal(model_run_init(&run, m, 64), SD_OK);
    assert_int_equal(model_kv_init(m, &kv, n_tok + 80), SD_OK);

    /* decode */
    grow(out, w->n_decode);
    for (int i = 0; i < w->n_decode; i++) {
        assert_int_equal(model_forward(m, run, kv, &toks[i], NULL, 1, NULL, 1,
                                       out->logits + (size_t)(out->rows++) * V),
                         SD_OK);
        assert_int_equal(kv_commit_all(kv), SD_OK);
    }

    /* prefill (in chunks of at most 64, the run's size), selected rows */
    assert_int_equal(kv_truncate(kv, 0), SD_OK);
    for (int c0 = 0; c0 < w->n_prefill; c0 += 64) {
        int n = w->n_prefill - c0 < 64 ? w->n_prefill - c0 : 64;
        int idx[64], k = 0;
        for (int i = 0; i < n; i++)
            if ((c0 + i) % w->prefill_every == 0 || c0 + i == w->n_prefill - 1)
                idx[k++] = i;
        grow(out, k);
        assert_int_equal(model_forward(m, run, kv, toks + c0, NULL, n, idx, k,
                                       out->logits + (size_t)out->rows * V),
                         SD_OK);
        out->rows += k;
        assert_int_equal(kv_commit_all(kv), SD_OK);
    }

    /* a random tree over a committed prefix */
    if (w->tree_T > 0) {
        assert_int_equal(kv_truncate(kv, 0), SD_OK);
        if (w->tree_prefix > 0) {
            assert_int_equal(model_forward(m, run, kv, toks, NULL, w->tree_prefix, NULL, 0, NULL),
                             SD_OK);
            assert_int_equal(kv_commit_all(kv), SD_OK);
        }
        int par[64], idx[64], k = 0;
        int32_t tt[64];
        for (int i = 0; i < w->tree_T; i++) {
            par[i] = (int)tu_below(&rng, (uint32_t)i + 1) - 1;
            tt[i] = (int32_t)tu_below(&rng, (uint32_t)V);
            if (i % w->tree_every == 0 || i == w->tree_T - 1)
                idx[k++] = i;
        }
        grow(out, k);
        assert_int_equal(model_forward(m, run, kv, tt, par, w->tree_T, idx, k,
                                       out->logits + (size_t)out->rows * V),
                         SD_OK);
        out->rows += k;
    }
    kv_free(kv);
    model_run_free(run);
    free(toks);
}

void nu_result_free(nu_result *r)
{
    free(r->logits);
    r->logits = NULL;
}

void nu_expect_equal(const nu_result *a, const nu_result *b, const char *what, const char *mode,
                     const char *level, int threads)
{
    assert_int_equal(a->rows, b->rows);
    assert_int_equal(a->V, b->V);
    size_t n = (size_t)a->rows * (size_t)a->V;
    if (memcmp(a->logits, b->logits, sizeof(float) * n) == 0)
        return;
    size_t i = 0, nd = 0;
    for (size_t j = 0; j < n; j++)
        if (memcmp(&a->logits[j], &b->logits[j], sizeof(float)) != 0) {
            if (!nd)
                i = j;
            nd++;
        }
    fprintf(stderr,
            "%s %s: level %s at %d thread(s) differs from portable: %zu of %zu logits, first row "
            "%zu element %zu: %.9g vs %.9g\n",
            what, mode, level, threads, nd, n, i / (size_t)a->V, i % (size_t)a->V, b->logits[i],
            a->logits[i]);
    fail();
}
