/* Speculation on tiny synthetic models: every drafter x every tree shape x greedy and seeded
 * sampling gives token-for-token the target-only output (also with an adversarial drafter), tree
 * node logits equal decoding the node's path alone, and bad trees are refused without side
 * effects. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/spec.h"
#include "adversary.h"
#include "decode_ref.h"
#include "testutil.h"
#include "tiny_model.h"

static char target_path[128], draft_path[128];
static model *target;

static int setup(void **state)
{
    tiny_model_opts o = tiny_model_defaults();
    o.n_layer = 3;
    o.seed = tu_seed();
    snprintf(target_path, sizeof target_path, "/tmp/specd-spec-t-%d.gguf", (int)getpid());
    snprintf(draft_path, sizeof draft_path, "/tmp/specd-spec-d-%d.gguf", (int)getpid());
    if (tiny_model_write(target_path, &o))
        return -1;
    o.n_layer = 1;
    o.seed += 99;
    if (tiny_model_write(draft_path, &o))
        return -1;
    model_opts mo = {.n_threads = 2};
    return model_open(&target, target_path, &mo) ? -1 : 0;
}

static int teardown(void **state)
{
    model_free(target);
    unlink(target_path);
    unlink(draft_path);
    return 0;
}

static void run_spec(draft *d, const char *shape, verify_mode vm, const sample_params *sp,
                     const int32_t *prompt, int n, int n_gen, tok_sink *out, spec_stats *st)
{
    spec_config c = {.target = target,
                     .drafter = d,
                     .vmode = vm,
                     .sp = *sp,
                     .n_predict = n_gen,
                     .max_nodes = 64,
                     .on_token = tok_sink_put,
                     .ud = out};
    assert_int_equal(tree_shape_parse(&c.shape, shape, 64), SD_OK);
    out->n = 0;
    sd_err e = spec_generate(&c, prompt, n, st);
    if (e)
        fail_msg("spec_generate: %s", sd_errmsg());
}

static const char *drafters[] = {"ngram",         "ngram:1", "ngram:3:2",
                                 "layerskip:0,2", "model",   "adversary"};
static const char *shapes[] = {"chain:1",  "chain:5",    "topk:3,2,1",
                               "topk:4,4", "dynamic:12", "dynamic:40"};

static draft *open_drafter(const char *name, const draft_opts *o, uint64_t seed)
{
    draft *d = NULL;
    sd_err e;
    if (!strcmp(name, "adversary")) {
        e = adversary_open(&d, model_cfg(target)->n_vocab, o->max_ctx, seed, 30);
    } else if (!strcmp(name, "model")) {
        char spec[160];
        snprintf(spec, sizeof spec, "model:%s", draft_path);
        e = draft_open(&d, spec, target, o);
    } else {
        e = draft_open(&d, name, target, o);
    }
    if (e)
        fail_msg("draft_open(%s): %s", name, sd_errmsg());
    return d;
}

static void check_lossless(float temp, float top_p)
{
    tu_rng rng;
    tu_rng_init(&rng, tu_seed() + (uint64_t)(temp * 100));
    int V = model_cfg(target)->n_vocab;
    const int N_GEN = 40;
    int32_t want[40], buf[64];
    tok_sink out = {buf, 0, 64};
    for (int p = 0; p < 3; p++) {
        int32_t prompt[24];
        int n = 4 + (int)tu_below(&rng, 20);
        /* repetitive prompts give the n-gram drafter something to find */
        for (int i = 0; i < n; i++)
            prompt[i] = i >= 6 && p == 1 ? prompt[i - 6] : (int32_t)tu_below(&rng, (uint32_t)V);
        sample_params sp = {temp, 0, top_p, tu_next(&rng)};
        decode_ref(target, prompt, n, &sp, N_GEN, want);
        spec_stats st;
        run_spec(NULL, "chain:1", VERIFY_SAMPLE, &sp, prompt, n, N_GEN, &out, &st);
        assert_int_equal(out.n, N_GEN);
        assert_memory_equal(out.ids, want, sizeof(int32_t) * N_GEN);
        long accepted = 0;
        for (size_t di = 0; di < sizeof drafters / sizeof drafters[0]; di++)
            for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
                draft_opts o = {.max_ctx = 256, .max_nodes = 64, .temp = temp, .seed = sp.seed};
                draft *d = open_drafter(drafters[di], &o, tu_next(&rng));
                run_spec(d, shapes[si], VERIFY_SAMPLE, &sp, prompt, n, N_GEN, &out, &st);
                if (out.n != N_GEN || memcmp(out.ids, want, sizeof(int32_t) * N_GEN))
                    fail_msg("temp %.1f prompt %d drafter %s tree %s: output differs from "
                             "target-only",
                             temp, p, drafters[di], shapes[si]);
                accepted += st.accepted;
                draft_free(d);
            }
        fprintf(stderr,
                "  temp %.1f prompt %d: all drafters x shapes identical (%ld draft "
                "tokens accepted)\n",
                temp, p, accepted);
        assert_true(accepted > 0); /* the comparisons exercised accepted paths */
    }
}

static void test_lossless_greedy(void **state)
{
    check_lossless(0.0f, 1.0f);
}
static void test_lossless_sampling(void **state)
{
    check_lossless(0.8f, 0.95f);
}

/* Every node's logits equal those of decoding its root-to-node path alone; after a random
 * commit, continued decoding equals decoding the committed sequence token by token. */
static void test_tree_logits(void **state)
{
    tu_rng rng;
    tu_rng_init(&rng, tu_seed() ^ 0xABC);
    int V = model_cfg(target)->n_vocab;
    model_run *r;
    kv_cache *kv, *ref;
    assert_int_equal(model_run_init(&r, target, 64), SD_OK);
    assert_int_equal(model_kv_init(target, &kv, 256), SD_OK);
    assert_int_equal(model_kv_init(target, &ref, 256), SD_OK);
    float *lg = malloc(sizeof(float) * 64 * (size_t)V), *one = malloc(sizeof(float) * (size_t)V);
    for (int round = 0; round < 6; round++) {
        int32_t prefix[16];
        int np = 1 + (int)tu_below(&rng, 16);
        for (int i = 0; i < np; i++)
            prefix[i] = (int32_t)tu_below(&rng, (uint32_t)V);
        kv_truncate(kv, 0);
        assert_int_equal(model_forward(target, r, kv, prefix, NULL, np, NULL, 0, NULL), SD_OK);
        kv_commit_all(kv);
        int T = 1 + (int)tu_below(&rng, 64), par[64], out[64];
        int32_t tok[64];
        for (int i = 0; i < T; i++) {
            par[i] = (int)tu_below(&rng, (uint32_t)i + 1) - 1;
            tok[i] = (int32_t)tu_below(&rng, (uint32_t)V);
            out[i] = i;
        }
        assert_int_equal(model_forward(target, r, kv, tok, par, T, out, T, lg), SD_OK);
        int path[64];
        for (int i = 0; i < T; i++) {
            int n = 0;
            for (int a = i; a >= 0; a = par[a])
                path[n++] = a;
            kv_truncate(ref, 0);
            model_forward(target, r, ref, prefix, NULL, np, NULL, 0, NULL);
            kv_commit_all(ref);
            for (int k = n - 1; k >= 0; k--) {
                assert_int_equal(
                    model_forward(target, r, ref, &tok[path[k]], NULL, 1, NULL, 1, one), SD_OK);
                kv_commit_all(ref);
            }
            assert_memory_equal(one, lg + (size_t)i * V, sizeof(float) * (size_t)V);
        }
        /* commit a random node's path, continue; compare with the token-by-token sequence */
        int leaf = (int)tu_below(&rng, (uint32_t)T), n = 0, cp[64];
        for (int a = leaf; a >= 0; a = par[a])
            path[n++] = a;
        for (int k = 0; k < n; k++)
            cp[k] = path[n - 1 - k];
        assert_int_equal(kv_commit_path(kv, cp, n), SD_OK);
        for (int step = 0; step < 5; step++) {
            int32_t t = (int32_t)tu_below(&rng, (uint32_t)V);
            assert_int_equal(model_forward(target, r, kv, &t, NULL, 1, NULL, 1, lg), SD_OK);
            kv_commit_all(kv);
            kv_truncate(ref, 0);
            model_forward(target, r, ref, prefix, NULL, np, NULL, 0, NULL);
            kv_commit_all(ref);
            for (int k = 0; k < kv->n_committed - np; k++) {
                model_forward(target, r, ref, &kv->tok[np + k], NULL, 1, NULL, 1, one);
                kv_commit_all(ref);
            }
            assert_memory_equal(one, lg, sizeof(float) * (size_t)V);
        }
    }
    free(lg);
    free(one);
    kv_free(kv);
    kv_free(ref);
    model_run_free(r);
}

/* A drafter rolled back to a prefix proposes exactly what a fresh drafter that only ever saw
 * that prefix proposes (its own KV cache and history are cut back, not merely ignored). */
static void test_drafter_rollback(void **state)
{
    tu_rng rng;
    tu_rng_init(&rng, tu_seed() ^ 0x7777);
    int V = model_cfg(target)->n_vocab;
    const char *shapes_rb[] = {"chain:4", "topk:3,2", "dynamic:12"};
    for (size_t di = 0; di < sizeof drafters / sizeof drafters[0]; di++) {
        if (!strcmp(drafters[di], "adversary"))
            continue; /* random by design */
        for (size_t si = 0; si < 3; si++) {
            int32_t seq[48];
            for (int i = 0; i < 48; i++)
                seq[i] = i >= 8 && i % 3 ? seq[i - 8] : (int32_t)tu_below(&rng, (uint32_t)V);
            int keep = 10 + (int)tu_below(&rng, 20);
            draft_opts o = {.max_ctx = 256, .max_nodes = 64};
            draft *fresh = open_drafter(drafters[di], &o, 1),
                  *used = open_drafter(drafters[di], &o, 1);
            tree_shape sh;
            assert_int_equal(tree_shape_parse(&sh, shapes_rb[si], 64), SD_OK);
            tree a, b;
            assert_int_equal(tree_init(&a, 64, 0), SD_OK);
            assert_int_equal(tree_init(&b, 64, 0), SD_OK);
            /* `used` runs ahead through the whole sequence in pieces, proposing on the way */
            for (int i = 0; i < 48; i += 12) {
                assert_int_equal(draft_advance(used, seq + i, 12), SD_OK);
                assert_int_equal(draft_propose(used, &sh, &b), SD_OK);
            }
            assert_int_equal(draft_rollback(used, keep), SD_OK);
            assert_int_equal(draft_rollback(used, 49), SD_ERANGE); /* beyond the history */
            assert_int_equal(draft_advance(fresh, seq, keep), SD_OK);
            assert_int_equal(draft_propose(fresh, &sh, &a), SD_OK);
            assert_int_equal(draft_propose(used, &sh, &b), SD_OK);
            if (a.n != b.n || memcmp(a.tok, b.tok, sizeof(int32_t) * (size_t)a.n) ||
                memcmp(a.parent, b.parent, sizeof(int) * (size_t)a.n))
                fail_msg("drafter %s tree %s: proposal after rollback to %d differs", drafters[di],
                         shapes_rb[si], keep);
            tree_free(&a);
            tree_free(&b);
            draft_free(fresh);
            draft_free(used);
        }
    }
}

/* A lookup drafter proposes nothing exactly when draft_lookup_match says so (the coordinator
 * relies on it to skip waiting for an empty answer): random histories over a small vocabulary
 * (so suffixes repeat about half the time), every n-gram spec x shape, against the drafter and
 * against a brute-force reference written here. */
static int ref_match(const int32_t *h, int n, int m)
{
    for (int i = 0; m >= 1 && i + m < n; i++) { /* an occurrence at i with a token after it */
        int eq = 1;
        for (int k = 0; k < m && eq; k++)
            eq = h[i + k] == h[n - m + k];
        if (eq)
            return 1;
    }
    return 0;
}

static void test_lookup_predicate(void **state)
{
    tu_rng rng;
    tu_rng_init(&rng, tu_seed() ^ 0x100c);
    const char *specs[] = {"ngram", "ngram:1", "ngram:3:2", "ngram:4:3", "ngram:2:2"};
    const int mins[] = {1, 1, 2, 3, 2};
    const char *shapes_lk[] = {"chain:1", "chain:4", "topk:3,2", "dynamic:12"};
    int n_match = 0, n_none = 0;
    for (size_t k = 0; k < sizeof specs / sizeof specs[0]; k++) {
        assert_int_equal(draft_lookup_min(specs[k]), mins[k]);
        for (size_t si = 0; si < 4; si++) {
            tree_shape sh;
            assert_int_equal(tree_shape_parse(&sh, shapes_lk[si], 64), SD_OK);
            tree t;
            assert_int_equal(tree_init(&t, 64, 0), SD_OK);
            for (int round = 0; round < 40; round++) {
                int32_t h[40];
                int n = 1 + (int)tu_below(&rng, 40), vocab = 2 + (int)tu_below(&rng, 12);
                for (int i = 0; i < n; i++)
                    h[i] = (int32_t)tu_below(&rng, (uint32_t)vocab);
                draft_opts o = {.max_ctx = 64, .max_nodes = 64};
                draft *d = open_drafter(specs[k], &o, 1);
                assert_int_equal(draft_advance(d, h, n), SD_OK);
                assert_int_equal(draft_propose(d, &sh, &t), SD_OK);
                int m = draft_lookup_match(h, n, mins[k]);
                assert_int_equal(m, ref_match(h, n, mins[k]));
                if ((t.n > 0) != (m != 0))
                    fail_msg("%s %s, %d tokens: %d nodes proposed, lookup_match %d", specs[k],
                             shapes_lk[si], n, t.n, m);
                n_match += m != 0;
                n_none += m == 0;
                draft_free(d);
            }
            tree_free(&t);
        }
    }
    fprintf(stderr, "  lookup predicate = the drafter's: %d histories with a match, %d without\n",
            n_match, n_none);
    assert_true(n_match > 50 && n_none > 50);
    for (const char *const *x = (const char *const[]){"model:x", "layerskip:0", "random:1",
                                                      "ngram:0", "ngram:3:4", "ngramx", NULL};
         *x; x++)
        assert_int_equal(draft_lookup_min(*x), 0);
}

/* Trees from outside are checked before use and a bad one changes nothing. */
static void test_bad_trees(void **state)
{
    int V = model_cfg(target)->n_vocab;
    model_run *r;
    kv_cache *kv;
    verify_work *w;
    assert_int_equal(model_run_init(&r, target, 64), SD_OK);
    assert_int_equal(model_kv_init(target, &kv, 64), SD_OK);
    assert_int_equal(verify_work_init(&w, target, 8), SD_OK);
    int32_t p[3] = {1, 2, 3};
    model_forward(target, r, kv, p, NULL, 3, NULL, 0, NULL);
    kv_commit_all(kv);
    tree t;
    assert_int_equal(tree_init(&t, 16, 16), SD_OK);
    verify_result *res = malloc(sizeof *res);
    sample_params sp = {0, 0, 1, 0};
    struct {
        int n;
        int parent[3];
        int32_t tok[3];
        sd_err want;
    } cases[] = {
        {2, {-1, 1}, {1, 2}, SD_EINVAL},  /* a node its own parent */
        {2, {-1, 5}, {1, 2}, SD_EINVAL},  /* a later node as parent */
        {2, {-1, -2}, {1, 2}, SD_EINVAL}, /* below -1 */
        {1, {-1}, {-1}, SD_ERANGE},       /* negative token */
        {2, {-1, 0}, {1, 97}, SD_ERANGE}, /* token == vocabulary size */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tree_clear(&t);
        for (int k = 0; k < cases[i].n; k++) {
            t.tok[k] = cases[i].tok[k];
            t.parent[k] = cases[i].parent[k];
            t.depth[k] = 0;
            t.q_off[k + 2] = 0;
        }
        t.n = cases[i].n;
        assert_int_equal(verify_tree(target, r, kv, w, 5, &t, VERIFY_SAMPLE, &sp, res),
                         cases[i].want);
        assert_non_null(strstr(sd_errmsg(), "tree node"));
        assert_int_equal(kv->n_committed, 3);
        assert_int_equal(kv->n_pending, 0);
    }
    /* oversized */
    tree_clear(&t);
    for (int k = 0; k < 9; k++)
        tree_add(&t, k - 1, 1, 0);
    assert_int_equal(verify_tree(target, r, kv, w, 5, &t, VERIFY_SAMPLE, &sp, res), SD_ERANGE);
    assert_int_equal(kv->n_committed, 3);
    /* the same cache still verifies a good tree afterwards */
    tree_clear(&t);
    tree_add(&t, -1, 7, 0);
    assert_int_equal(verify_tree(target, r, kv, w, 5, &t, VERIFY_SAMPLE, &sp, res), SD_OK);
    assert_true(res->next >= 0 && res->next < V);
    free(res);
    tree_free(&t);
    verify_work_free(w);
    kv_free(kv);
    model_run_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lossless_greedy), cmocka_unit_test(test_lossless_sampling),
        cmocka_unit_test(test_tree_logits),     cmocka_unit_test(test_drafter_rollback),
        cmocka_unit_test(test_bad_trees),       cmocka_unit_test(test_lookup_predicate),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
