/* Sampling: argmax rules, the counter-based RNG, and that sample_token / sample_dist implement
 * temperature, top-k and top-p exactly as a naive full-sort reference does. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/sample.h"
#include "testutil.h"

static void test_argmax(void **state)
{
    float a[] = {1, 3, 3, -1};
    assert_int_equal(sample_argmax(a, 4), 1); /* lowest index wins a tie */
    float b[] = {NAN, -5, -2, NAN};
    assert_int_equal(sample_argmax(b, 4), 2); /* NaN never wins */
    float c[] = {-INFINITY, -INFINITY, 0};
    assert_int_equal(sample_argmax(c, 3), 2);
}

static void test_params(void **state)
{
    sample_params ok = {0.8f, 40, 0.95f, 1};
    assert_int_equal(sample_params_check(&ok), SD_OK);
    sample_params bad[] = {
        {-1, 0, 1, 0}, {NAN, 0, 1, 0}, {INFINITY, 0, 1, 0},
        {1, -3, 1, 0}, {1, 0, 0, 0},   {1, 0, 1.5f, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(sample_params_check(&bad[i]), SD_EINVAL);
}

static void test_rng(void **state)
{
    /* A pure function of its key... */
    assert_true(sample_rng_u64(7, 100, 0) == sample_rng_u64(7, 100, 0));
    assert_true(sample_rng_u64(7, 100, 0) != sample_rng_u64(7, 101, 0));
    assert_true(sample_rng_u64(7, 100, 0) != sample_rng_u64(8, 100, 0));
    assert_true(sample_rng_u64(7, 100, 0) != sample_rng_u64(7, 100, 1));
    /* ...and uniform: chi-square over 16 buckets, 64k draws along consecutive positions. */
    uint64_t seed = tu_seed();
    int cnt[16] = {0};
    const int N = 1 << 16;
    for (int i = 0; i < N; i++) {
        double u = sample_rng_uniform(seed, (uint64_t)i, 0);
        assert_true(u >= 0.0 && u < 1.0);
        cnt[(int)(u * 16)]++;
    }
    double chi = 0, e = N / 16.0;
    for (int i = 0; i < 16; i++)
        chi += (cnt[i] - e) * (cnt[i] - e) / e;
    assert_true(chi < 37.7); /* 15 dof, p = 0.001 */
}

/* Reference: full sort, softmax, top-k then top-p (on the renormalised top-k set). */
static int ref_dist(const float *logits, int V, const sample_params *p, int *ids, double *probs)
{
    int *ord = malloc(sizeof(int) * V);
    double *e = malloc(sizeof(double) * V);
    float mx = -INFINITY;
    for (int i = 0; i < V; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    for (int i = 0; i < V; i++) {
        e[i] = expf((logits[i] - mx) * (1.0f / p->temp));
        ord[i] = i;
    }
    for (int i = 1; i < V; i++) { /* insertion sort, V is small here */
        int v = ord[i], j = i - 1;
        while (j >= 0 && (e[ord[j]] < e[v] || (e[ord[j]] == e[v] && ord[j] > v))) {
            ord[j + 1] = ord[j];
            j--;
        }
        ord[j + 1] = v;
    }
    int n = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    double mass = 0;
    for (int i = 0; i < n; i++)
        mass += e[ord[i]];
    if (p->top_p < 1) {
        double acc = 0;
        int k = 0;
        while (k < n) {
            acc += e[ord[k++]];
            if (acc >= p->top_p * mass)
                break;
        }
        n = k;
        mass = acc;
    }
    for (int i = 0; i < n; i++) {
        ids[i] = ord[i];
        probs[i] = e[ord[i]] / mass;
    }
    free(ord);
    free(e);
    return n;
}

static void test_dist_matches_reference(void **state)
{
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    const int V = 300;
    sample_work *w;
    assert_int_equal(sample_work_init(&w, V), SD_OK);
    float logits[300];
    int ids[300], rids[300];
    float probs[300];
    double rprobs[300];
    for (int it = 0; it < 200; it++) {
        float spread = 0.5f + 8.0f * tu_uniform(&r);
        for (int i = 0; i < V; i++)
            logits[i] = spread * tu_normal(&r);
        sample_params p = {0.2f + 1.5f * tu_uniform(&r),
                           (int)tu_below(&r, 3) ? 0 : 1 + (int)tu_below(&r, 100),
                           tu_below(&r, 3) ? 0.05f + 0.94f * tu_uniform(&r) : 1.0f, 1};
        int n = sample_dist(w, logits, V, &p, ids, probs);
        int rn = ref_dist(logits, V, &p, rids, rprobs);
        assert_int_equal(n, rn);
        if (p.top_k == 0 && p.top_p >= 1) { /* unfiltered: id order */
            for (int i = 0; i < n; i++)
                assert_int_equal(ids[i], i);
            continue;
        }
        for (int i = 0; i < n; i++) {
            assert_int_equal(ids[i], rids[i]);
            assert_true(fabs(probs[i] - rprobs[i]) < 1e-5);
        }
    }
    sample_work_free(w);
}

/* Drawn tokens follow the filtered distribution: chi-square over many positions. */
static void test_sampling_frequencies(void **state)
{
    uint64_t seed = tu_seed();
    tu_rng r;
    tu_rng_init(&r, seed ^ 0x55);
    const int V = 12, N = 40000;
    float logits[12];
    for (int i = 0; i < V; i++)
        logits[i] = 1.5f * tu_normal(&r);
    sample_params ps[] = {
        {1.0f, 0, 1.0f, seed}, {0.7f, 5, 1.0f, seed + 1}, {1.3f, 0, 0.8f, seed + 2}};
    sample_work *w;
    assert_int_equal(sample_work_init(&w, V), SD_OK);
    for (size_t c = 0; c < sizeof ps / sizeof ps[0]; c++) {
        int ids[12], cnt[12] = {0};
        double pr[12];
        int n = ref_dist(logits, V, &ps[c], ids, pr);
        for (int i = 0; i < N; i++) {
            int t = sample_token(w, logits, V, &ps[c], (uint64_t)i);
            /* same (seed, pos) -> same token */
            assert_int_equal(t, sample_token(w, logits, V, &ps[c], (uint64_t)i));
            cnt[t]++;
        }
        double chi = 0;
        int kept = 0;
        for (int i = 0; i < n; i++) {
            double e = pr[i] * N;
            chi += (cnt[ids[i]] - e) * (cnt[ids[i]] - e) / e;
            kept += cnt[ids[i]];
        }
        assert_int_equal(kept, N); /* nothing outside the filtered set */
        assert_true(chi < 40.0);   /* <= 11 dof, p < 0.0001 */
    }
    sample_work_free(w);
}

static void test_greedy_is_argmax(void **state)
{
    sample_work *w;
    assert_int_equal(sample_work_init(&w, 5), SD_OK);
    float l[] = {0.1f, 2.0f, -1.0f, 2.0f, 1.9f};
    sample_params p = {0, 0, 1, 123};
    for (int pos = 0; pos < 10; pos++)
        assert_int_equal(sample_token(w, l, 5, &p, (uint64_t)pos), 1);
    sample_work_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argmax),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_dist_matches_reference),
        cmocka_unit_test(test_sampling_frequencies),
        cmocka_unit_test(test_greedy_is_argmax),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
