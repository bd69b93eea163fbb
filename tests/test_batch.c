/* Continuous batching on tiny synthetic models (every weight type the tiny writer has, llama and
 * qwen2, f32 and 8-bit activations, 1-3 threads):
 *   - model_forward_multi over random mixes of 1-6 sequences (random committed prefixes, nodes
 *     already pending, chains and trees, random logits rows, runs whose t_max cuts the batch
 *     anywhere) gives logits and KV rows bitwise those of separate model_forward calls;
 *   - verify_batch over sessions (prefill-only jobs, n_pre > 1 after a rollback, greedy, seeded
 *     sampling and SpecInfer) gives results and KV caches identical to verify_tree one session
 *     at a time, and the committed tokens are target-only decoding's; a bad job fails alone;
 *   - a bad sequence fails model_forward_multi as a whole and changes nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../engine/model.h"
#include "../engine/verify.h"
#include "decode_ref.h"
#include "testutil.h"
#include "tiny_model.h"

typedef struct {
    model *m;
    int V;
    char path[256];
} fixture;

static void open_fixture(fixture *f, const tiny_variant *v, unsigned flags, int threads)
{
    tiny_model_opts o = tiny_variant_opts(v);
    o.seed = tu_seed() + (uint64_t)v->wtype;
    snprintf(f->path, sizeof f->path, "/tmp/specd-batch-%d-%s.gguf", (int)getpid(), v->name);
    assert_int_equal(tiny_model_write(f->path, &o), 0);
    model_opts mo = {.n_threads = threads, .kern_flags = flags};
    sd_err e = model_open(&f->m, f->path, &mo);
    if (e)
        fail_msg("model_open: %s", sd_errmsg());
    f->V = model_cfg(f->m)->n_vocab;
}

static void close_fixture(fixture *f)
{
    model_free(f->m);
    unlink(f->path);
}

/* Two caches hold the same state: counts, tokens, pending tree, and every used slot's key and
 * value rows in every layer and head, bit for bit. */
static void assert_kv_equal(const kv_cache *a, const kv_cache *b, const char *what, int idx)
{
    if (a->n_committed != b->n_committed || a->n_pending != b->n_pending)
        fail_msg("%s %d: kv %d+%d vs %d+%d", what, idx, a->n_committed, a->n_pending,
                 b->n_committed, b->n_pending);
    int used = a->n_committed + a->n_pending;
    assert_memory_equal(a->tok, b->tok, sizeof(int32_t) * (size_t)used);
    if (a->n_pending) {
        assert_memory_equal(a->parent, b->parent, sizeof(int) * (size_t)a->n_pending);
        assert_memory_equal(a->depth, b->depth, sizeof(int) * (size_t)a->n_pending);
    }
    for (int l = 0; l < a->n_layer; l++)
        for (int h = 0; h < a->n_head; h++) {
            size_t o = (size_t)h * kv_head_stride(a), ob = (size_t)h * kv_head_stride(b);
            size_t n = sizeof(float) * (size_t)used * (size_t)a->dh;
            if (memcmp(kv_k(a, l) + o, kv_k(b, l) + ob, n) ||
                memcmp(kv_v(a, l) + o, kv_v(b, l) + ob, n))
                fail_msg("%s %d: layer %d head %d: KV rows differ", what, idx, l, h);
        }
}

/* ---- model_forward_multi vs model_forward ---- */

#define MAXT 31

typedef struct {
    int32_t tok[MAXT];
    int par[MAXT], out[MAXT];
    int T, with_par, n_out, out_null;
} seq_spec;

static void random_seq(tu_rng *r, int V, int P, seq_spec *s)
{
    s->T = 1 + (int)tu_below(r, MAXT);
    for (int i = 0; i < s->T; i++)
        s->tok[i] = (int32_t)tu_below(r, (uint32_t)V);
    int kind = (int)tu_below(r, 3); /* chain as NULL parents, explicit chain, tree */
    s->with_par = kind > 0;
    for (int i = 0; i < s->T; i++)
        s->par[i] = kind == 1 ? P + i - 1 : (int)tu_below(r, (uint32_t)(P + i + 1)) - 1;
    int okind = (int)tu_below(r, 4); /* none, the last (NULL), all, a random subset */
    s->out_null = okind == 1;
    s->n_out = okind == 0 ? 0 : okind == 1 ? 1 : 0;
    if (okind >= 2)
        for (int i = 0; i < s->T; i++)
            if (okind == 2 || tu_below(r, 2))
                s->out[s->n_out++] = i;
}

static void check_multi(const tiny_variant *v, unsigned flags, int threads, tu_rng *rng)
{
    fixture f;
    open_fixture(&f, v, flags, threads);
    int V = f.V, t_max = 1 + (int)tu_below(rng, 32);
    model_run *rref, *rmul;
    assert_int_equal(model_run_init(&rref, f.m, 64), SD_OK);
    assert_int_equal(model_run_init(&rmul, f.m, t_max), SD_OK);
    fprintf(stderr, "  %s %s, %d thread(s), multi t_max %d\n", v->name,
            flags & KERN_CPU_F32_ACT ? "f32 act" : "8-bit act", threads, t_max);
    for (int round = 0; round < 4; round++) {
        int n = 1 + (int)tu_below(rng, 6);
        kv_cache *ka[6], *kb[6];
        seq_spec sp[6];
        float *la[6], *lb[6];
        for (int s = 0; s < n; s++) {
            assert_int_equal(model_kv_init(f.m, &ka[s], 96), SD_OK);
            assert_int_equal(model_kv_init(f.m, &kb[s], 96), SD_OK);
            int32_t pre[40];
            int L = (int)tu_below(rng, 40), Pn = (int)tu_below(rng, 3);
            for (int i = 0; i < 40; i++)
                pre[i] = (int32_t)tu_below(rng, (uint32_t)V);
            kv_cache *both[2] = {ka[s], kb[s]};
            for (int w = 0; w < 2; w++) {
                if (L) {
                    assert_int_equal(model_forward(f.m, rref, both[w], pre, NULL, L, NULL, 0, NULL),
                                     SD_OK);
                    assert_int_equal(kv_commit_all(both[w]), SD_OK);
                }
                if (Pn) /* nodes already pending before the batch */
                    assert_int_equal(
                        model_forward(f.m, rref, both[w], pre, NULL, Pn, NULL, 0, NULL), SD_OK);
            }
            random_seq(rng, V, Pn, &sp[s]);
            size_t rows = sp[s].n_out ? (size_t)sp[s].n_out : 1;
            la[s] = malloc(sizeof(float) * rows * (size_t)V);
            lb[s] = malloc(sizeof(float) * rows * (size_t)V);
            memset(la[s], 0xA5, sizeof(float) * rows * (size_t)V);
            memset(lb[s], 0x5A, sizeof(float) * rows * (size_t)V);
        }
        for (int s = 0; s < n; s++) {
            const seq_spec *q = &sp[s];
            assert_int_equal(model_forward(f.m, rref, ka[s], q->tok, q->with_par ? q->par : NULL,
                                           q->T, q->out_null ? NULL : q->out, q->n_out, la[s]),
                             SD_OK);
        }
        /* the batch in a random order of sequences */
        model_seq seqs[6];
        int order[6];
        for (int s = 0; s < n; s++)
            order[s] = s;
        for (int s = n - 1; s > 0; s--) {
            int k = (int)tu_below(rng, (uint32_t)s + 1), x = order[s];
            order[s] = order[k];
            order[k] = x;
        }
        for (int k = 0; k < n; k++) {
            const seq_spec *q = &sp[order[k]];
            seqs[k] = (model_seq){kb[order[k]],
                                  q->tok,
                                  q->with_par ? q->par : NULL,
                                  q->T,
                                  q->out_null ? NULL : q->out,
                                  q->n_out,
                                  lb[order[k]]};
        }
        sd_err e = model_forward_multi(f.m, rmul, seqs, n);
        if (e)
            fail_msg("model_forward_multi: %s", sd_errmsg());
        for (int s = 0; s < n; s++) {
            if (sp[s].n_out &&
                memcmp(la[s], lb[s], sizeof(float) * (size_t)sp[s].n_out * (size_t)V))
                fail_msg("round %d: sequence %d of %d (T %d): logits differ", round, s, n, sp[s].T);
            assert_kv_equal(ka[s], kb[s], "sequence", s);
            kv_free(ka[s]);
            kv_free(kb[s]);
            free(la[s]);
            free(lb[s]);
        }
    }
    model_run_free(rref);
    model_run_free(rmul);
    close_fixture(&f);
}

static void test_multi_forward(void **state)
{
    tu_rng rng;
    tu_rng_init(&rng, tu_seed());
    for (size_t i = 0; i < (size_t)tiny_n_variants; i++)
        for (int fl = 0; fl < 2; fl++)
            check_multi(&tiny_variants[i], fl ? KERN_CPU_F32_ACT : 0, 1 + (int)(2 * i + fl) % 3,
                        &rng);
}

/* ---- bad input to model_forward_multi: the whole call fails, nothing changes ---- */

static void test_multi_bad(void **state)
{
    fixture f;
    open_fixture(&f, &tiny_variants[0], 0, 2);
    int V = f.V;
    model_run *r;
    assert_int_equal(model_run_init(&r, f.m, 8), SD_OK);
    kv_cache *kv[3], *snap;
    int32_t toks[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    for (int s = 0; s < 3; s++) {
        assert_int_equal(model_kv_init(f.m, &kv[s], 16), SD_OK);
        assert_int_equal(model_forward(f.m, r, kv[s], toks, NULL, 4 + s, NULL, 0, NULL), SD_OK);
        assert_int_equal(kv_commit_all(kv[s]), SD_OK);
        assert_int_equal(model_forward(f.m, r, kv[s], toks, NULL, 1, NULL, 0, NULL), SD_OK);
    }
    assert_int_equal(model_kv_init(f.m, &snap, 16), SD_OK);
    float *lg = malloc(sizeof(float) * 8 * (size_t)V), *lg0 = malloc(sizeof(float) * 8 * (size_t)V);
    int32_t bad_tok[2] = {3, (int32_t)V};
    int bad_par[2] = {0, 2}; /* node 2 (after 1 pending) cannot be its own parent */
    int out_bad[2] = {1, 1};
    int out_ok[2] = {0, 1};
    static const struct {
        int which; /* the bad sequence's kind */
        sd_err want;
        const char *msg;
    } cases[] = {
        {0, SD_ERANGE, "sequence 2: token"},
        {1, SD_EINVAL, "sequence 2: node 2 has parent 2"},
        {2, SD_EINVAL, "sequence 2: logits index"},
        {3, SD_ERANGE, "sequence 2: 6 committed + 1 pending + 10 new positions exceed the context"},
        {4, SD_EINVAL, "sequence 2: the same kv cache as sequence 0"},
        {5, SD_EINVAL, "sequence 2: empty batch"},
        {6, SD_EINVAL, "sequence 2: 2 logits rows requested and no buffer"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        model_seq q[3] = {
            {kv[0], toks, NULL, 2, out_ok, 2, lg},
            {kv[1], toks, NULL, 3, NULL, 1, lg + 2 * (size_t)V},
            {kv[2], toks, NULL, 2, out_ok, 2, lg + 3 * (size_t)V},
        };
        switch (cases[c].which) {
        case 0:
            q[2].tokens = bad_tok;
            break;
        case 1:
            q[2].parents = bad_par;
            break;
        case 2:
            q[2].out_idx = out_bad;
            break;
        case 3:
            q[2].T = 10;
            q[2].n_out = 0;
            break;
        case 4:
            q[2].kv = kv[0];
            break;
        case 5:
            q[2].T = 0;
            q[2].n_out = 0;
            break;
        case 6:
            q[2].logits = NULL;
            break;
        }
        memset(lg, 0x77, sizeof(float) * 8 * (size_t)V);
        memcpy(lg0, lg, sizeof(float) * 8 * (size_t)V);
        kv_cache before[3];
        for (int s = 0; s < 3; s++)
            before[s] = *kv[s];
        sd_err e = model_forward_multi(f.m, r, q, 3);
        if (e != cases[c].want || !strstr(sd_errmsg(), cases[c].msg))
            fail_msg("case %zu: %s '%s', want %s '%s'", c, sd_strerror(e), sd_errmsg(),
                     sd_strerror(cases[c].want), cases[c].msg);
        assert_memory_equal(lg, lg0, sizeof(float) * 8 * (size_t)V);
        for (int s = 0; s < 3; s++) {
            assert_int_equal(kv[s]->n_committed, before[s].n_committed);
            assert_int_equal(kv[s]->n_pending, before[s].n_pending);
        }
    }
    assert_int_equal(model_forward_multi(f.m, r, NULL, 0), SD_EINVAL);
    /* the same caches still compute a good batch */
    model_seq ok[2] = {{kv[0], toks, NULL, 2, out_ok, 2, lg}, {kv[1], toks, NULL, 1, NULL, 1, lg}};
    (void)snap;
    assert_int_equal(model_forward_multi(f.m, r, ok, 2), SD_OK);
    for (int s = 0; s < 3; s++)
        kv_free(kv[s]);
    kv_free(snap);
    free(lg);
    free(lg0);
    model_run_free(r);
    close_fixture(&f);
}

/* ---- verify_batch vs verify_tree ---- */

#define N_GEN 200
#define MAX_NODES 16

typedef struct {
    kv_cache *kv[2]; /* [0] batched world, [1] one-at-a-time world */
    verify_work *w[2];
    verify_result *res[2];
    int32_t seq[400]; /* committed sequence (prompt, then generated), identical in both worlds */
    int n, plen, start;
    int32_t want[N_GEN]; /* target-only continuation (lossless modes) */
    sample_params sp;
    verify_mode mode;
    int32_t pre[400];
    int n_pre;
    tree t;
    int prefill; /* this step is the prefill-only job */
} session;

/* A tree for one step: under VERIFY_SAMPLE the target-only continuation as a chain of random
 * depth with distractors hanging anywhere; under SpecInfer random tokens with a recorded q. */
static void make_tree(session *s, int V, tu_rng *r)
{
    tree *t = &s->t;
    tree_clear(t);
    int total = (int)tu_below(r, 13);
    int fut = s->n - s->plen, d = (int)tu_below(r, 6), last = -1, k = 0;
    for (int i = 0; i < total; i++) {
        int32_t tok;
        int par;
        if (s->mode == VERIFY_SAMPLE && k < d && fut + k < N_GEN && tu_below(r, 2)) {
            tok = s->want[fut + k++];
            par = last;
            last = t->n;
        } else {
            tok = (int32_t)tu_below(r, (uint32_t)V);
            par = (int)tu_below(r, (uint32_t)t->n + 1) - 1;
        }
        assert_true(tree_add(t, par, tok, 0) >= 0);
    }
    if (s->mode == VERIFY_SPECINFER) { /* q over each node's children, in node order */
        int kids[MAX_NODES];
        for (int node = -1; node < t->n; node++) {
            int nk = tree_children(t, node, kids, MAX_NODES);
            int32_t qt[MAX_NODES];
            float qp[MAX_NODES], sum = 0;
            for (int i = 0; i < nk; i++)
                sum += (qp[i] = 0.1f + tu_uniform(r));
            for (int i = 0; i < nk; i++) {
                qt[i] = t->tok[kids[i]];
                qp[i] /= sum;
            }
            assert_int_equal(tree_set_q(t, node, qt, qp, nk), SD_OK);
        }
    }
}

/* Bad jobs, each with its own cache (or a session's, for the shared-cache case). */
typedef struct {
    kv_cache *kv, *other;
    verify_work *w;
    verify_result *res;
    tree t;
} bad_job;

static void check_verify(const tiny_variant *v, unsigned flags, int threads, tu_rng *rng)
{
    fixture f;
    open_fixture(&f, v, flags, threads);
    int V = f.V, ns = 1 + (int)tu_below(rng, 6), t_max = 1 + (int)tu_below(rng, 40);
    model_run *ra, *rb;
    assert_int_equal(model_run_init(&ra, f.m, t_max), SD_OK);
    assert_int_equal(model_run_init(&rb, f.m, 64), SD_OK);
    session *S = calloc((size_t)ns, sizeof *S);
    assert_non_null(S);
    uint64_t seed = tu_next(rng);
    for (int s = 0; s < ns; s++) {
        session *x = &S[s];
        for (int w = 0; w < 2; w++) {
            assert_int_equal(model_kv_init(f.m, &x->kv[w], 400), SD_OK);
            assert_int_equal(verify_work_init(&x->w[w], f.m, MAX_NODES), SD_OK);
            x->res[w] = malloc(sizeof(verify_result));
        }
        assert_int_equal(tree_init(&x->t, MAX_NODES, 4 * MAX_NODES), SD_OK);
        x->plen = 1 + (int)tu_below(rng, 30);
        for (int i = 0; i < x->plen; i++)
            x->seq[i] = (int32_t)tu_below(rng, (uint32_t)V);
        x->n = x->plen;
        x->start = (int)tu_below(rng, 3); /* sessions arrive at different steps */
        int kind = (int)tu_below(rng, 3); /* greedy, seeded sampling, SpecInfer */
        x->sp = (sample_params){kind ? 0.8f : 0.0f, kind == 1 ? 20 : 0, kind ? 0.95f : 1.0f,
                                seed + (uint64_t)s};
        x->mode = kind == 2 ? VERIFY_SPECINFER : VERIFY_SAMPLE;
        if (x->mode == VERIFY_SAMPLE)
            decode_ref(f.m, x->seq, x->plen, &x->sp, N_GEN, x->want);
    }
    fprintf(stderr, "  %s %s, %d thread(s), %d sessions, batch t_max %d\n", v->name,
            flags & KERN_CPU_F32_ACT ? "f32 act" : "8-bit act", threads, ns, t_max);

    bad_job bad;
    assert_int_equal(model_kv_init(f.m, &bad.kv, 16), SD_OK);
    assert_int_equal(kv_init(&bad.other, 3, 2, 16, 16), SD_OK);
    assert_int_equal(verify_work_init(&bad.w, f.m, MAX_NODES), SD_OK);
    bad.res = malloc(sizeof(verify_result));
    assert_int_equal(tree_init(&bad.t, MAX_NODES, 0), SD_OK);

    int n_acc = 0, n_long_pre = 0, n_bad = 0, n_jobs = 0;
    for (int step = 0; step < 10; step++) {
        verify_job jobs[8];
        int nj = 0, idx[8];
        for (int s = 0; s < ns; s++) {
            session *x = &S[s];
            if (step < x->start || x->n + MAX_NODES + 2 >= 400 ||
                x->n - x->plen + MAX_NODES + 2 >= N_GEN)
                continue;
            kv_cache *ka = x->kv[0];
            x->prefill = step == x->start;
            if (x->prefill) { /* the prompt but its newest token */
                x->n_pre = x->n - 1;
                memcpy(x->pre, x->seq, sizeof(int32_t) * (size_t)x->n_pre);
            } else {
                if (tu_below(rng, 4) == 0 && ka->n_committed > 0) { /* roll back both worlds */
                    int k = 1 + (int)tu_below(rng, ka->n_committed < 3 ? ka->n_committed : 3);
                    assert_int_equal(kv_truncate(ka, ka->n_committed - k), SD_OK);
                    assert_int_equal(kv_truncate(x->kv[1], x->kv[1]->n_committed - k), SD_OK);
                }
                x->n_pre = x->n - ka->n_committed;
                memcpy(x->pre, x->seq + ka->n_committed, sizeof(int32_t) * (size_t)x->n_pre);
                make_tree(x, V, rng);
            }
            jobs[nj] = (verify_job){.kv = ka,
                                    /* a prefill-only job needs no work area */
                                    .w = x->prefill && tu_below(rng, 2) ? NULL : x->w[0],
                                    .pre = x->pre,
                                    .n_pre = x->n_pre,
                                    .t = x->prefill ? NULL : &x->t,
                                    .mode = x->mode,
                                    .sp = &x->sp,
                                    .res = x->res[0]};
            idx[nj++] = s;
        }
        /* a bad job at a random place, every other step */
        int bad_at = -1, bad_kind = -1;
        sd_err bad_want = SD_OK;
        int bad_committed = 0, bad_pending = 0;
        int32_t bad_pre[2] = {1, 2};
        if (step % 2 && nj < 8) {
            bad_kind = (int)tu_below(rng, 7);
            assert_int_equal(kv_truncate(bad.kv, 0), SD_OK);
            int32_t fill[16] = {0};
            tree_clear(&bad.t);
            tree_add(&bad.t, -1, 3, 0);
            tree_add(&bad.t, 0, 4, 0);
            verify_job b = {.kv = bad.kv,
                            .w = bad.w,
                            .pre = bad_pre,
                            .n_pre = 2,
                            .t = &bad.t,
                            .mode = VERIFY_SAMPLE,
                            .sp = &S[0].sp,
                            .res = bad.res};
            switch (bad_kind) {
            case 0:
                bad_pre[1] = (int32_t)V; /* a token outside the vocabulary */
                bad_want = SD_ERANGE;
                break;
            case 1:
                bad.t.parent[1] = 1; /* a node its own parent */
                bad_want = SD_EINVAL;
                break;
            case 2: /* 13 committed + 2 + 2 > 16 */
                model_forward(f.m, rb, bad.kv, fill, NULL, 13, NULL, 0, NULL);
                kv_commit_all(bad.kv);
                bad_want = SD_ERANGE;
                break;
            case 3:
                model_forward(f.m, rb, bad.kv, fill, NULL, 2, NULL, 0, NULL); /* left pending */
                bad_want = SD_EINVAL;
                break;
            case 4:
                if (nj == 0) { /* nobody to share a cache with */
                    bad_kind = 5;
                    b.n_pre = 0;
                } else {
                    b.kv = jobs[0].kv; /* a second job on a session's cache */
                }
                bad_want = SD_EINVAL;
                break;
            case 5:
                b.n_pre = 0; /* a tree with no token to hang under */
                bad_want = SD_EINVAL;
                break;
            case 6:
                b.kv = bad.other; /* a cache shaped for another model */
                bad_want = SD_EINVAL;
                break;
            }
            bad_at = bad_kind == 4 ? nj : (int)tu_below(rng, (uint32_t)nj + 1);
            memmove(&jobs[bad_at + 1], &jobs[bad_at], sizeof jobs[0] * (size_t)(nj - bad_at));
            memmove(&idx[bad_at + 1], &idx[bad_at], sizeof idx[0] * (size_t)(nj - bad_at));
            jobs[bad_at] = b;
            idx[bad_at] = -1;
            nj++;
            bad_committed = bad.kv->n_committed;
            bad_pending = bad.kv->n_pending;
        }
        if (!nj)
            continue;
        sd_err e = verify_batch(f.m, ra, jobs, nj);
        if (e)
            fail_msg("verify_batch: %s", sd_errmsg());

        for (int k = 0; k < nj; k++) {
            if (idx[k] < 0) {
                if (jobs[k].err != bad_want || !jobs[k].errmsg[0])
                    fail_msg("step %d: bad job kind %d: %s '%s', want %s", step, bad_kind,
                             sd_strerror(jobs[k].err), jobs[k].errmsg, sd_strerror(bad_want));
                n_bad++;
                if (bad_kind != 4 && bad_kind != 6) {
                    assert_int_equal(bad.kv->n_committed, bad_committed);
                    assert_int_equal(bad.kv->n_pending, bad_pending);
                }
                continue;
            }
            session *x = &S[idx[k]];
            n_jobs++;
            n_long_pre += !x->prefill && x->n_pre > 1;
            n_acc += x->prefill ? 0 : x->res[0]->n_accept;
            if (jobs[k].err)
                fail_msg("step %d: session %d failed: %s", step, idx[k], jobs[k].errmsg);
            /* the same session alone: prefill what verify_tree cannot take, then the tree */
            kv_cache *kb = x->kv[1];
            int nb = x->prefill ? x->n_pre : x->n_pre - 1;
            if (nb > 0) {
                assert_int_equal(model_forward(f.m, rb, kb, x->pre, NULL, nb, NULL, 0, NULL),
                                 SD_OK);
                assert_int_equal(kv_commit_all(kb), SD_OK);
            }
            if (!x->prefill) {
                sd_err eb = verify_tree(f.m, rb, kb, x->w[1], x->pre[x->n_pre - 1], &x->t, x->mode,
                                        &x->sp, x->res[1]);
                if (eb)
                    fail_msg("verify_tree: %s", sd_errmsg());
                verify_result *a = x->res[0], *b = x->res[1];
                if (a->n_accept != b->n_accept || a->next != b->next ||
                    memcmp(a->path, b->path, sizeof(int) * (size_t)a->n_accept))
                    fail_msg("step %d session %d: batched accepted %d next %d, alone %d next %d",
                             step, idx[k], a->n_accept, a->next, b->n_accept, b->next);
                for (int i = 0; i < a->n_accept; i++)
                    x->seq[x->n++] = x->t.tok[a->path[i]];
                x->seq[x->n++] = a->next;
            }
            assert_kv_equal(x->kv[0], kb, "session", idx[k]);
            assert_int_equal(x->kv[0]->n_committed, x->n - 1);
        }
    }
    fprintf(stderr, "    %d jobs (%d after a rollback), %d tree nodes accepted, %d bad jobs\n",
            n_jobs, n_long_pre, n_acc, n_bad);
    for (int s = 0; s < ns; s++) {
        session *x = &S[s];
        /* lossless: exactly the target-only tokens */
        if (x->mode == VERIFY_SAMPLE)
            for (int i = x->plen; i < x->n; i++)
                if (x->seq[i] != x->want[i - x->plen])
                    fail_msg("session %d token %d: %d, target-only %d", s, i, x->seq[i],
                             x->want[i - x->plen]);
        for (int w = 0; w < 2; w++) {
            kv_free(x->kv[w]);
            verify_work_free(x->w[w]);
            free(x->res[w]);
        }
        tree_free(&x->t);
    }
    kv_free(bad.kv);
    kv_free(bad.other);
    verify_work_free(bad.w);
    free(bad.res);
    tree_free(&bad.t);
    free(S);
    model_run_free(ra);
    model_run_free(rb);
    close_fixture(&f);
}

static void test_verify_batch(void **state)
{
    tu_rng rng;
    tu_rng_init(&rng, tu_seed() ^ 0x5eed);
    for (size_t i = 0; i < (size_t)tiny_n_variants; i++)
        for (int fl = 0; fl < 2; fl++)
            check_verify(&tiny_variants[i], fl ? KERN_CPU_F32_ACT : 0, 1 + (int)(i + fl) % 3, &rng);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multi_forward),
        cmocka_unit_test(test_multi_bad),
        cmocka_unit_test(test_verify_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
