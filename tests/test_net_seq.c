/* The sequencer alone (no processes, no network): a deterministic "target" f(prefix), simulated
 * workers that verify chunks exactly as the real worker does (truncate to base_pos, append the
 * base, walk the tree taking the target's token), a simulated drafter that proposes right,
 * wrong, garbage or nothing, and a message layer that delivers every message in a random order.
 * Workers die mid-session (their chunks are re-dispatched; their late verdicts ignored).
 * Whatever the order, the mode, the number of workers or the drafter, the committed sequence
 * must be the target-only sequence of f, and the sequencer must finish. A Commit that tells the
 * drafter to hold is followed by a plain-decode chunk, a drafter that obeys it (proposes nothing
 * in that epoch) changes nothing, and a never-right drafter is held; the node budget a Commit
 * carries bounds the next chunk.
 * SD_TEST_LABELS: net */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "coordinator/seq.h"

#define V 40
#define CTX 512
#define MAXQ 4096

/* the target: next token after prefix[0..n) */
static int32_t target_next(const int32_t *p, int n)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)n;
    for (int i = n - 3 < 0 ? 0 : n - 3; i < n; i++)
        h = (h ^ (uint64_t)p[i]) * 1099511628211ull;
    return (int32_t)(h % V);
}

typedef enum { EV_CHUNK, EV_CANCEL, EV_COMMIT_W, EV_COMMIT_D, EV_VERDICT, EV_EXTEND } ev_kind;

typedef struct {
    ev_kind kind;
    int worker;
    uint64_t id;
    int base_pos, n_base, n;
    int32_t base[CTX], tok[64], parent[64];
    float logp[64];
    uint32_t epoch, first_id;
    int root_node, n_seen, n_committed, hold;
    int32_t next;
    int failed;
} ev;

typedef struct {
    tu_rng rng;
    ev *q[MAXQ];
    int nq;
    seq *s;
    /* workers */
    int32_t wk[SEQ_MAX_WORKERS][CTX];
    int nk[SEQ_MAX_WORKERS];
    uint64_t cancelled[256];
    int n_cancelled;
    int dead[SEQ_MAX_WORKERS];
    /* drafter */
    int dr_kind; /* 0 good (p_right), 1 garbage, 2 silent */
    float p_right;
    int32_t dcom[CTX];
    int dn;
    int32_t dtok[256];
    int dpar[256], dn_tree;
    uint32_t depoch;
    int obey_hold, held; /* the drafter honours Commit.hold; the current epoch is held */
    int hold_sent;       /* the last Commit said hold: the next chunk must be a plain decode */
    int budget_sent;     /* the last Commit's budget: the next chunk has at most that many nodes */
    int adaptive;        /* the session has a controller (else Commits carry no budget) */
    int n_budgets;       /* Commits that carried a budget */
    uint64_t last_id;    /* the newest chunk id sent */
    /* client */
    int32_t out[CTX];
    int n_out;
} world;

static void push(world *w, ev *e)
{
    assert_true(w->nq < MAXQ);
    w->q[w->nq++] = e;
}

static ev *new_ev(ev_kind k)
{
    ev *e = calloc(1, sizeof *e);
    assert_non_null(e);
    e->kind = k;
    return e;
}

static void io_chunk(void *ud, const seq_chunk *c)
{
    world *w = ud;
    if (c->id > w->last_id) { /* a new chunk, not one sent again (failed, worker lost) */
        if (w->hold_sent && c->n != 0)
            fail_msg("a chunk of %d nodes went out after a Commit that held the drafter", c->n);
        if (w->budget_sent > 0 && c->n > w->budget_sent)
            fail_msg("a chunk of %d nodes went out after a Commit with budget %d", c->n,
                     w->budget_sent);
        w->hold_sent = 0;
        w->budget_sent = 0;
        w->last_id = c->id;
    }
    ev *e = new_ev(EV_CHUNK);
    e->worker = c->worker;
    e->id = c->id;
    e->base_pos = c->base_pos;
    e->n_base = c->n_base;
    memcpy(e->base, c->base, sizeof(int32_t) * (size_t)c->n_base);
    e->n = c->n;
    memcpy(e->tok, c->tok, sizeof(int32_t) * (size_t)c->n);
    memcpy(e->parent, c->parent, sizeof(int32_t) * (size_t)c->n);
    push(w, e);
}

static void io_cancel(void *ud, int worker, uint64_t id)
{
    world *w = ud;
    ev *e = new_ev(EV_CANCEL);
    e->worker = worker;
    e->id = id;
    push(w, e);
}

static void io_commit(void *ud, const seq_commit *c)
{
    world *w = ud;
    w->hold_sent = c->hold;
    w->budget_sent = c->budget;
    w->n_budgets += c->budget > 0;
    if ((c->hold || !w->adaptive) && c->budget)
        fail_msg("a Commit with budget %d (hold %d, adaptive %d)", c->budget, c->hold, w->adaptive);
    for (int k = 0; k < 2; k++) {
        ev *e = new_ev(k ? EV_COMMIT_D : EV_COMMIT_W);
        e->epoch = c->epoch;
        e->n_committed = c->n_committed;
        e->n_base = c->n_tokens;
        memcpy(e->base, c->tokens, sizeof(int32_t) * (size_t)c->n_tokens);
        e->root_node = c->root_node;
        e->n_seen = c->n_seen;
        e->hold = c->hold;
        if (k == 0) {
            for (int x = 0; x < SEQ_MAX_WORKERS; x++) { /* one copy per worker */
                ev *f = new_ev(EV_COMMIT_W);
                *f = *e;
                f->worker = x;
                push(w, f);
            }
            free(e);
        } else {
            push(w, e);
        }
    }
}

static void io_emit(void *ud, const int32_t *t, int n)
{
    world *w = ud;
    assert_true(w->n_out + n <= CTX);
    memcpy(w->out + w->n_out, t, sizeof(int32_t) * (size_t)n);
    w->n_out += n;
}

/* A worker verifies a chunk exactly as specd-worker does. */
static void worker_chunk(world *w, ev *e)
{
    for (int i = 0; i < w->n_cancelled; i++)
        if (w->cancelled[i] == e->id)
            return; /* dropped while queued */
    int x = e->worker;
    if (w->dead[x])
        return; /* a dead worker computes nothing */
    ev *v = new_ev(EV_VERDICT);
    v->id = e->id;
    v->worker = x;
    if (w->nk[x] < e->base_pos) {
        v->failed = 1;
        push(w, v);
        return;
    }
    w->nk[x] = e->base_pos;
    memcpy(w->wk[x] + w->nk[x], e->base, sizeof(int32_t) * (size_t)e->n_base);
    w->nk[x] += e->n_base;
    int node = -1;
    for (;;) {
        int32_t t = target_next(w->wk[x], w->nk[x]);
        int kid = -1;
        for (int j = 0; j < e->n && kid < 0; j++)
            if (e->parent[j] == node && e->tok[j] == t)
                kid = j;
        if (kid < 0) {
            v->next = t;
            break;
        }
        v->tok[v->n++] = kid; /* path */
        w->wk[x][w->nk[x]++] = t;
        node = kid;
    }
    push(w, v);
}

static void worker_commit(world *w, ev *e)
{
    int x = e->worker, p0 = e->n_committed - e->n_base;
    for (int i = 0; i < e->n_base; i++)
        if (p0 + i < w->nk[x] && w->wk[x][p0 + i] != e->base[i]) {
            w->nk[x] = p0 + i;
            break;
        }
}

/* The drafter proposes n nodes continuing its tree (mirrors the real drafter's bookkeeping). */
static void drafter_propose(world *w)
{
    if (w->dr_kind == 2 || w->dn_tree >= 48 || w->held)
        return;
    ev *e = new_ev(EV_EXTEND);
    e->epoch = w->depoch;
    e->first_id = (uint32_t)w->dn_tree;
    int n = 1 + (int)tu_below(&w->rng, 6);
    for (int i = 0; i < n; i++) {
        int id = w->dn_tree;
        int par = id == 0 ? -1 : (int)tu_below(&w->rng, (uint32_t)id + 1) - 1;
        if (tu_below(&w->rng, 3) && id > 0)
            par = id - 1; /* mostly chains */
        /* the path's tokens, to know the target's token */
        int32_t pathbuf[CTX];
        int pl = 0;
        for (int a = par; a >= 0; a = w->dpar[a])
            pl++;
        memcpy(pathbuf, w->dcom, sizeof(int32_t) * (size_t)w->dn);
        for (int a = par, k = pl; a >= 0; a = w->dpar[a])
            pathbuf[w->dn + --k] = w->dtok[a];
        int32_t t = target_next(pathbuf, w->dn + pl);
        if (w->dr_kind == 1 || tu_uniform(&w->rng) >= w->p_right)
            t = (int32_t)tu_below(&w->rng, V);
        w->dtok[id] = t;
        w->dpar[id] = par;
        w->dn_tree++;
        e->tok[e->n] = t;
        e->parent[e->n] = par;
        e->logp[e->n] = -0.1f * (float)(pl + 1) - 0.01f * (float)tu_below(&w->rng, 10);
        e->n++;
    }
    push(w, e);
}

static void drafter_commit(world *w, ev *e)
{
    if (e->epoch != w->depoch + 1) { /* out of order: retry later */
        push(w, e);
        return;
    }
    w->depoch = e->epoch;
    w->held = w->obey_hold && e->hold;
    memcpy(w->dcom + w->dn, e->base, sizeof(int32_t) * (size_t)e->n_base);
    w->dn += e->n_base;
    /* keep root_node's descendants among ids < n_seen, renumbered */
    int map[256], kept = 0;
    for (int i = 0; i < w->dn_tree && i < e->n_seen; i++) {
        int p = w->dpar[i], np = -2;
        if (e->root_node >= 0 && p == e->root_node)
            np = -1;
        else if (e->root_node >= 0 && p >= 0 && map[p] >= 0)
            np = map[p];
        map[i] = np == -2 ? -1 : kept;
        if (np != -2) {
            w->dtok[kept] = w->dtok[i];
            w->dpar[kept] = np;
            kept++;
        }
    }
    w->dn_tree = kept;
    free(e);
    drafter_propose(w);
}

static void world_free(world *w)
{
    for (int i = 0; i < w->nq; i++)
        free(w->q[i]);
    seq_free(w->s);
    free(w);
}

/* An si session of one worker over the prompt 1 2 3 that never dispatches without the
 * drafter (draft_wait_ms 1e9), driven by hand; lookup_min as seq_config's. */
static world *si_world_lookup(int lookup_min)
{
    world *w = calloc(1, sizeof *w);
    assert_non_null(w);
    int32_t prompt[3] = {1, 2, 3};
    seq_config c = {.mode = SEQ_SI,
                    .n_workers = 1,
                    .max_inflight = 1,
                    .max_nodes = 8,
                    .max_tree = 8,
                    .n_predict = 10,
                    .max_ctx = 64,
                    .draft_wait_ms = 1e9,
                    .lookup_min = lookup_min};
    seq_io io = {io_chunk, io_cancel, io_commit, io_emit, w};
    assert_int_equal(seq_init(&w->s, &c, &io, prompt, 3), SD_OK);
    return w;
}

static world *si_world(void)
{
    return si_world_lookup(0);
}

static void run_case(uint64_t seed, seq_mode mode, int n_workers, int inflight, int dr_kind,
                     float p_right, int n_predict, int with_eog, int kill_at)
{
    world *w = calloc(1, sizeof *w);
    assert_non_null(w);
    tu_rng_init(&w->rng, seed);
    int32_t prompt[16];
    int np = 1 + (int)tu_below(&w->rng, 12);
    for (int i = 0; i < np; i++)
        prompt[i] = (int32_t)tu_below(&w->rng, V);
    int32_t eog = with_eog ? (int32_t)tu_below(&w->rng, V) : -1;
    /* reference: target-only */
    int32_t ref[CTX];
    memcpy(ref, prompt, sizeof(int32_t) * (size_t)np);
    int n_ref = 0;
    while (n_ref < n_predict && np + n_ref < CTX) {
        int32_t t = target_next(ref, np + n_ref);
        if (t == eog)
            break;
        ref[np + n_ref++] = t;
    }
    int adaptive = (int)tu_below(&w->rng, 2); /* the controller changes timing, not tokens */
    w->adaptive = adaptive;
    w->obey_hold = (int)tu_below(&w->rng, 2);
    tree_shape shape;
    assert_int_equal(tree_shape_parse(&shape, "chain:8", 16), SD_OK);
    seq_config c = {.mode = mode,
                    .n_workers = n_workers,
                    .max_inflight = inflight,
                    .max_nodes = 16,
                    .max_tree = 64,
                    .n_predict = n_predict,
                    .max_ctx = CTX,
                    .draft_wait_ms = 5,
                    .eog = &eog,
                    .n_eog = with_eog,
                    .adaptive = adaptive,
                    .shape = &shape};
    seq_io io = {io_chunk, io_cancel, io_commit, io_emit, w};
    assert_int_equal(seq_init(&w->s, &c, &io, prompt, np), SD_OK);
    memcpy(w->dcom, prompt, sizeof(int32_t) * (size_t)np);
    w->dn = np;
    w->dr_kind = mode == SEQ_AR ? 2 : dr_kind;
    w->p_right = p_right;
    for (int x = 0; x < n_workers; x++) {
        memcpy(w->wk[x], prompt, sizeof(int32_t) * (size_t)(np - 1));
        w->nk[x] = np - 1;
    }
    drafter_propose(w);
    double now = 0;
    seq_pump(w->s, now);
    long steps = 0;
    while (seq_get_state(w->s) == SEQ_RUNNING) {
        assert_true(++steps < 200000);
        now += 1;
        if (steps == kill_at && n_workers > 1) { /* a worker dies mid-session */
            int victim = (int)tu_below(&w->rng, (uint32_t)n_workers);
            w->dead[victim] = 1;
            assert_int_equal(seq_worker_lost(w->s, victim, now), SD_OK);
        }
        if (w->nq == 0) {
            seq_pump(w->s, now);
            continue;
        }
        int k = (int)tu_below(&w->rng, (uint32_t)w->nq); /* any pending message may go next */
        ev *e = w->q[k];
        w->q[k] = w->q[--w->nq];
        switch (e->kind) {
        case EV_CHUNK:
            worker_chunk(w, e);
            break;
        case EV_CANCEL:
            if (w->n_cancelled < 256)
                w->cancelled[w->n_cancelled++] = e->id;
            break;
        case EV_COMMIT_W:
            if (e->worker < n_workers)
                worker_commit(w, e);
            break;
        case EV_COMMIT_D:
            if (w->dr_kind != 2) {
                drafter_commit(w, e);
                continue; /* freed or re-queued there */
            }
            break;
        case EV_VERDICT:
            /* a dead worker's last verdicts may still arrive: they must be ignored */
            if (e->failed)
                assert_int_equal(seq_chunk_failed(w->s, e->id, e->worker, now), SD_OK);
            else
                assert_int_equal(
                    seq_verdict(w->s, e->id, e->worker, e->tok, e->n, e->next, now), SD_OK);
            break;
        case EV_EXTEND:
            seq_tree_extend(w->s, e->epoch, e->first_id, e->parent, e->tok, e->logp, e->n, now);
            if (w->dr_kind == 0 && mode != SEQ_SI && tu_below(&w->rng, 2))
                drafter_propose(w); /* async: keeps extending */
            break;
        }
        free(e);
        seq_pump(w->s, now);
    }
    const seq_stats *st = seq_get_stats(w->s);
    if (w->n_out != n_ref || memcmp(w->out, ref + np, sizeof(int32_t) * (size_t)n_ref))
        fail_msg("seed %llu mode %d workers %d inflight %d drafter %d: output %d tokens, "
                 "reference %d",
                 (unsigned long long)seed, mode, n_workers, inflight, dr_kind, w->n_out, n_ref);
    assert_int_equal(st->n_gen, n_ref);
    if (getenv("SEQ_VERBOSE"))
        printf("mode %d w %d in %d dr %d adaptive %d obey %d: gen %d steps %d chunks %ld "
               "cancelled %ld accepted %ld hits %ld redispatched %ld held %ld\n",
               mode, n_workers, inflight, dr_kind, adaptive, w->obey_hold, st->n_gen, st->steps,
               st->chunks, st->cancelled, st->accepted, st->tree_hits, st->redispatched,
               st->held_commits);
    if (adaptive && mode != SEQ_AR && dr_kind == 0 && st->steps > 1 && kill_at < 0 && !w->n_budgets)
        fail_msg("seed %llu: no Commit carried the controller's budget in %d steps",
                 (unsigned long long)seed, st->steps);
    if (!adaptive || mode == SEQ_AR)
        assert_int_equal(st->held_commits, 0); /* nothing decides to hold */
    else if (dr_kind == 1 && n_ref >= 30 && kill_at < 0)
        if (st->held_commits == 0)
            fail_msg("seed %llu: a never-right drafter was never held in %d steps",
                     (unsigned long long)seed, st->steps);
    world_free(w);
}

static void test_seq_modes_random_orders(void **state)
{
    (void)state;
    uint64_t seed = tu_seed();
    tu_rng r;
    tu_rng_init(&r, seed);
    static const struct {
        seq_mode mode;
        int workers, inflight;
    } shapes[] = {{SEQ_AR, 1, 1},  {SEQ_SI, 1, 1},  {SEQ_ASYNC, 1, 1},
                  {SEQ_DSI, 2, 2}, {SEQ_DSI, 4, 4}, {SEQ_DSI, 4, 2}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
        for (int dk = 0; dk < 3; dk++)
            for (int rep = 0; rep < 6; rep++) {
                float pr = rep < 2 ? 0.9f + 0.05f * (float)rep : (float)tu_below(&r, 101) / 100.0f;
                run_case(tu_next(&r), shapes[sh].mode, shapes[sh].workers, shapes[sh].inflight,
                         dk, pr, 20 + (int)tu_below(&r, 60), (int)tu_below(&r, 2),
                         rep % 2 ? 5 + (int)tu_below(&r, 60) : -1);
            }
}

static void test_seq_rejects_bad_input(void **state)
{
    (void)state;
    world *w = si_world();
    int32_t par[3] = {-1, 0, 5}, tok[3] = {1, 2, 3};
    assert_int_equal(seq_tree_extend(w->s, 0, 0, par, tok, NULL, 3, 0), SD_EPROTO); /* parent */
    assert_int_equal(seq_tree_size(w->s), 0);
    int32_t par9[9] = {-1, 0, 1, 2, 3, 4, 5, 6, 7}, tok9[9] = {0};
    assert_int_equal(seq_tree_extend(w->s, 0, 0, par9, tok9, NULL, 9, 0), SD_ERANGE); /* size */
    assert_int_equal(seq_tree_extend(w->s, 0, 0, par, tok, NULL, 2, 0), SD_OK);
    assert_int_equal(seq_inflight(w->s), 1);
    /* a path that is not a root-to-node path changes nothing */
    int32_t bad[2] = {1, 0};
    assert_int_equal(seq_verdict(w->s, 1, 0, bad, 2, 7, 1), SD_EPROTO);
    assert_int_equal(seq_inflight(w->s), 1);
    /* an unknown chunk is ignored */
    assert_int_equal(seq_verdict(w->s, 99, 0, NULL, 0, 7, 1), SD_OK);
    /* a verdict from a worker the chunk is not on is ignored */
    assert_int_equal(seq_verdict(w->s, 1, 3, NULL, 0, 7, 1), SD_OK);
    assert_int_equal(seq_inflight(w->s), 1);
    int n;
    seq_committed(w->s, &n);
    assert_int_equal(n, 3);
    world_free(w);
}

/* The wait for the drafter (seq_stats.draft_ms_sum, SessionSummary.draft_wait_ms_mean) runs
 * from the Commit to the extension that lets the next chunk go; the first chunk, sent before
 * any Commit, waited for nothing — not for the time since the clock's zero. */
static void test_seq_draft_wait(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    world *w = si_world();
    double t0 = 1000 + tu_below(&r, 1000000), v1 = 1 + tu_below(&r, 9), d = 1 + tu_below(&r, 9),
           v2 = 1 + tu_below(&r, 9);
    int32_t par[1] = {-1}, tok[1] = {4}, tok2[1] = {5};
    assert_int_equal(seq_tree_extend(w->s, 0, 0, par, tok, NULL, 1, t0), SD_OK);
    assert_int_equal(seq_inflight(w->s), 1);
    assert_int_equal(seq_verdict(w->s, 1, 0, NULL, 0, 7, t0 + v1), SD_OK); /* Commit epoch 1 */
    assert_int_equal(seq_get_stats(w->s)->steps, 1);
    assert_true(seq_get_stats(w->s)->draft_ms_sum == 0);
    assert_int_equal(seq_inflight(w->s), 0); /* si: the next chunk waits for the drafter */
    assert_int_equal(seq_tree_extend(w->s, 1, 0, par, tok2, NULL, 1, t0 + v1 + d), SD_OK);
    assert_int_equal(seq_inflight(w->s), 1);
    assert_int_equal(seq_verdict(w->s, 2, 0, NULL, 0, 8, t0 + v1 + d + v2), SD_OK);
    assert_int_equal(seq_get_stats(w->s)->steps, 2);
    assert_true(fabs(seq_get_stats(w->s)->draft_ms_sum - d) < 1e-9);
    assert_true(fabs(seq_get_stats(w->s)->rtt_ms_sum - v1 - v2) < 1e-9);
    world_free(w);
}

/* A lookup drafter (ngram:N:2) has nothing to say after a Commit whose last two tokens never
 * occurred before: the Commit holds it and the next chunk goes out at once, a plain decode,
 * instead of waiting for its empty answer; where the pair did occur, the chunk waits as before.
 * A drafter of another kind (lookup_min 0) is always waited for. */
static void test_seq_lookup_miss(void **state)
{
    (void)state;
    for (int lm = 0; lm <= 2; lm += 2) {
        world *w = si_world_lookup(lm);
        int32_t par[1] = {-1}, tok[1] = {4};
        assert_int_equal(seq_tree_extend(w->s, 0, 0, par, tok, NULL, 1, 0), SD_OK);
        assert_int_equal(seq_inflight(w->s), 1);
        /* 1 2 3 7: (3, 7) is new */
        assert_int_equal(seq_verdict(w->s, 1, 0, NULL, 0, 7, 1), SD_OK);
        /* (the chunk that went out was checked to be empty: io_chunk after a holding Commit) */
        assert_int_equal(seq_get_stats(w->s)->lookup_misses, lm > 0);
        assert_int_equal(seq_inflight(w->s), lm > 0); /* no extension needed to go on */
        if (lm == 0) {
            world_free(w);
            continue;
        }
        /* 1 2 3 7 1: (7, 1) is new too */
        assert_int_equal(seq_verdict(w->s, 2, 0, NULL, 0, 1, 2), SD_OK);
        assert_int_equal(seq_inflight(w->s), 1);
        /* 1 2 3 7 1 2: (1, 2) occurred at the start, followed by 3: the drafter will propose */
        assert_int_equal(seq_verdict(w->s, 3, 0, NULL, 0, 2, 3), SD_OK);
        assert_int_equal(w->hold_sent, 0);
        assert_int_equal(seq_inflight(w->s), 0);
        int32_t tok3[1] = {3};
        assert_int_equal(seq_tree_extend(w->s, 3, 0, par, tok3, NULL, 1, 4), SD_OK);
        assert_int_equal(seq_inflight(w->s), 1);
        const seq_stats *st = seq_get_stats(w->s);
        assert_int_equal(st->lookup_misses, 2);
        assert_int_equal(st->held_commits, 0);
        assert_true(st->draft_ms_sum == 0); /* the two plain decodes waited for nothing */
        int n;
        const int32_t *com = seq_committed(w->s, &n);
        int32_t want[6] = {1, 2, 3, 7, 1, 2};
        assert_int_equal(n, 6);
        assert_memory_equal(com, want, sizeof want);
        world_free(w);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seq_modes_random_orders),
        cmocka_unit_test(test_seq_rejects_bad_input),
        cmocka_unit_test(test_seq_draft_wait),
        cmocka_unit_test(test_seq_lookup_miss),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
