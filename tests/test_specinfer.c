/* SpecInfer-style multi-candidate verification is distributed exactly as target sampling: a
 * chi-square test on a synthetic model with a 32-token vocabulary over the joint distribution of
 * the first two generated tokens, against the exact target distribution computed from the
 * target's own logits. The same test must reject a deliberately broken acceptance rule (on
 * rejection, keep sampling from p instead of the residual norm(max(0, p - q))) — proof the test
 * has the power to catch a wrong implementation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/spec.h"
#include "testutil.h"
#include "tiny_model.h"

#define V 32
#define N_JOINT 6000
#define N_BROKEN 3000
/* The random tiny model is very sure of itself; a high temperature spreads its distribution over
 * many tokens so the test covers many cells. */
#define TEMP 3.0f

static char tpath[128], dpath[128];
static model *target;
static const int32_t prompt[3] = {3, 17, 9};
static const sample_params sp0 = {TEMP, 0, 1.0f, 0};

static int setup(void **state)
{
    tiny_model_opts o = tiny_model_defaults();
    o.n_vocab = V;
    o.seed = tu_seed();
    snprintf(tpath, sizeof tpath, "/tmp/specd-si-t-%d.gguf", (int)getpid());
    snprintf(dpath, sizeof dpath, "/tmp/specd-si-d-%d.gguf", (int)getpid());
    if (tiny_model_write(tpath, &o))
        return -1;
    o.seed += 1000;
    o.n_layer = 1;
    if (tiny_model_write(dpath, &o))
        return -1;
    return model_open(&target, tpath, NULL) ? -1 : 0;
}

static int teardown(void **state)
{
    model_free(target);
    unlink(tpath);
    unlink(dpath);
    return 0;
}

/* p(t1) and p(t2 | t1) under target sampling (temperature 1). */
static void exact_joint(double *joint)
{
    model_run *r;
    kv_cache *kv;
    float lg[V];
    assert_int_equal(model_run_init(&r, target, 8), SD_OK);
    assert_int_equal(model_kv_init(target, &kv, 16), SD_OK);
    sample_work *sw;
    assert_int_equal(sample_work_init(&sw, V), SD_OK);
    int ids[V];
    float pr[V];
    double p1[V] = {0};
    model_forward(target, r, kv, prompt, NULL, 3, NULL, 1, lg);
    kv_commit_all(kv);
    int n = sample_dist(sw, lg, V, &sp0, ids, pr);
    for (int i = 0; i < n; i++)
        p1[ids[i]] = pr[i];
    for (int a = 0; a < V; a++) {
        int32_t t = a;
        model_forward(target, r, kv, &t, NULL, 1, NULL, 1, lg);
        kv_clear_pending(kv);
        n = sample_dist(sw, lg, V, &sp0, ids, pr);
        for (int b = 0; b < V; b++)
            joint[a * V + b] = 0;
        for (int i = 0; i < n; i++)
            joint[a * V + ids[i]] = p1[a] * pr[i];
    }
    sample_work_free(sw);
    kv_free(kv);
    model_run_free(r);
}

/* Pearson chi-square with cells of expectation < 5 pooled; returns statistic / critical value
 * at p = 0.001 (Wilson-Hilferty). > 1 means rejected. */
static double chi_ratio(const long *cnt, const double *p, int cells, long n)
{
    double chi = 0, pool_e = 0, pool_o = 0;
    int k = 0;
    for (int i = 0; i < cells; i++) {
        double e = p[i] * (double)n;
        if (e < 5) {
            pool_e += e;
            pool_o += (double)cnt[i];
            continue;
        }
        chi += ((double)cnt[i] - e) * ((double)cnt[i] - e) / e;
        k++;
    }
    if (pool_e > 0) {
        chi += (pool_o - pool_e) * (pool_o - pool_e) / (pool_e > 1e-9 ? pool_e : 1e-9);
        k++;
    }
    double dof = k - 1, z = 3.09;
    double crit = dof * pow(1 - 2 / (9 * dof) + z * sqrt(2 / (9 * dof)), 3);
    fprintf(stderr, "  chi-square %.1f, %d cells, critical %.1f (p = 0.001)\n", chi, k, crit);
    return chi / crit;
}

typedef struct {
    int32_t t[2];
    int n;
} two;

static int keep2(void *ud, int32_t t)
{
    two *x = ud;
    if (x->n < 2)
        x->t[x->n++] = t;
    return 0;
}

static void test_joint_matches_target(void **state)
{
    double *joint = malloc(sizeof(double) * V * V);
    exact_joint(joint);
    long *cnt = calloc(V * V, sizeof(long));
    char spec[160];
    snprintf(spec, sizeof spec, "model:%s", dpath);
    uint64_t seed = tu_seed();
    long accepted = 0;
    for (int i = 0; i < N_JOINT; i++) {
        sample_params sp = sp0;
        sp.seed = seed + (uint64_t)i * 7919;
        draft_opts o = {.max_ctx = 32,
                        .max_nodes = 16,
                        .sample_children = 1,
                        .temp = TEMP,
                        .seed = sp.seed ^ 0x5555};
        draft *d;
        assert_int_equal(draft_open(&d, spec, target, &o), SD_OK);
        two x = {{0, 0}, 0};
        spec_config c = {.target = target,
                         .drafter = d,
                         .vmode = VERIFY_SPECINFER,
                         .sp = sp,
                         .n_predict = 2,
                         .max_nodes = 16,
                         .on_token = keep2,
                         .ud = &x};
        assert_int_equal(tree_shape_parse(&c.shape, "topk:3,2", 16), SD_OK);
        spec_stats st;
        assert_int_equal(spec_generate(&c, prompt, 3, &st), SD_OK);
        assert_int_equal(x.n, 2);
        cnt[x.t[0] * V + x.t[1]]++;
        accepted += st.accepted;
        draft_free(d);
    }
    fprintf(stderr, "  %d runs, %ld draft tokens accepted\n", N_JOINT, accepted);
    assert_true(accepted > N_JOINT / 4); /* the drafts mattered */
    assert_true(chi_ratio(cnt, joint, V * V, N_JOINT) < 1.0);
    free(cnt);
    free(joint);
}

/* First token by a broken rule: rejection keeps p instead of the residual. */
static void test_broken_rule_is_caught(void **state)
{
    double *joint = malloc(sizeof(double) * V * V), p1[V] = {0};
    exact_joint(joint);
    for (int a = 0; a < V; a++)
        for (int b = 0; b < V; b++)
            p1[a] += joint[a * V + b];
    long cnt[V] = {0};
    char spec[160];
    snprintf(spec, sizeof spec, "model:%s", dpath);
    model_run *r;
    kv_cache *kv;
    sample_work *sw;
    assert_int_equal(model_run_init(&r, target, 32), SD_OK);
    assert_int_equal(model_kv_init(target, &kv, 32), SD_OK);
    assert_int_equal(sample_work_init(&sw, V), SD_OK);
    tree t;
    assert_int_equal(tree_init(&t, 16, 17 * DRAFT_Q_TOP), SD_OK);
    uint64_t seed = tu_seed() ^ 0x77;
    float lg[17 * V];
    int out[17], par[17];
    int32_t tok[17];
    for (int i = 0; i < N_BROKEN; i++) {
        draft_opts o = {.max_ctx = 32,
                        .max_nodes = 16,
                        .sample_children = 1,
                        .temp = TEMP,
                        .seed = seed + (uint64_t)i};
        draft *d;
        assert_int_equal(draft_open(&d, spec, target, &o), SD_OK);
        tree_shape sh;
        tree_shape_parse(&sh, "topk:3", 16);
        assert_int_equal(draft_advance(d, prompt, 3), SD_OK);
        assert_int_equal(draft_propose(d, &sh, &t), SD_OK);
        kv_truncate(kv, 0);
        model_forward(target, r, kv, prompt, NULL, 2, NULL, 0, NULL);
        kv_commit_all(kv);
        tok[0] = prompt[2];
        par[0] = -1;
        out[0] = 0;
        for (int k = 0; k < t.n; k++) {
            tok[k + 1] = t.tok[k];
            par[k + 1] = t.parent[k] + 1;
            out[k + 1] = k + 1;
        }
        model_forward(target, r, kv, tok, par, t.n + 1, out, t.n + 1, lg);
        int ids[V];
        float pr[V], pd[V] = {0}, qd[V] = {0};
        int n = sample_dist(sw, lg, V, &sp0, ids, pr);
        for (int k = 0; k < n; k++)
            pd[ids[k]] = pr[k];
        const int32_t *qt;
        const float *qp;
        int nq = tree_q(&t, -1, &qt, &qp);
        for (int k = 0; k < nq; k++)
            qd[qt[k]] += qp[k];
        int kids[16], nk = tree_children(&t, -1, kids, 16), got = -1;
        for (int k = 0; k < nk && got < 0; k++) {
            int32_t c = t.tok[kids[k]];
            double u = sample_rng_uniform(seed + (uint64_t)i, 3, 1 + (uint64_t)k);
            if (u < pd[c] / qd[c]) /* BROKEN: no residual update after a rejection */
                got = c;
        }
        if (got < 0) {
            double u = sample_rng_uniform(seed + (uint64_t)i, 3, 0), acc = 0;
            got = ids[n - 1];
            for (int k = 0; k < n; k++) {
                acc += pd[ids[k]];
                if (u < acc) {
                    got = ids[k];
                    break;
                }
            }
        }
        cnt[got]++;
        draft_free(d);
    }
    double ratio = chi_ratio(cnt, p1, V, N_BROKEN);
    assert_true(ratio > 1.0); /* the broken rule is detected */
    tree_free(&t);
    sample_work_free(sw);
    kv_free(kv);
    model_run_free(r);
    free(joint);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_joint_matches_target),
        cmocka_unit_test(test_broken_rule_is_caught),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
