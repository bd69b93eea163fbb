/* Model drafters (a separate draft model, or the target's own layers): grow the tree in rounds,
 * each round one batched forward of the nodes just added, their children becoming candidates:
 *   chain   the best child of the newest node
 *   topk    the best branch[d] children of every node at depth d-1
 *   dynamic best-first over all candidates by cumulative draft probability, DYN_WIDTH per round,
 *           until the node budget is spent (EAGLE-2 style growth)
 * With sample_children the children are i.i.d. draws from the draft distribution (SpecInfer)
 * and that distribution is recorded in the tree. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "draft.h"
#include "sample.h"

#define DYN_WIDTH 8  /* nodes added per round in dynamic trees */
#define DYN_FANOUT 8 /* candidate children per expanded node */

typedef struct {
    int parent;
    int32_t tok;
    float logp;
} cand;

typedef struct {
    draft base;
    model *m;
    int own;
    int V;
    draft_opts o;
    kv_cache *kv;
    model_run *run;
    sample_work *sw;
    float *logits; /* [max_nodes + 1][V] */
    int n_fwd;     /* tree nodes forwarded (pending in kv) by the last proposal */
    cand *pool;    /* candidate children */
    int n_pool, pool_cap;
    int32_t *ids; /* [DRAFT_Q_TOP] scratch */
    float *probs;
    int *out_idx;   /* [max_nodes] 0, 1, 2, ... */
    uint64_t draws; /* counter for child sampling */
} draft_model;

static void dm_free(draft *d)
{
    draft_model *x = (draft_model *)d;
    if (!x)
        return;
    kv_free(x->kv);
    model_run_free(x->run);
    sample_work_free(x->sw);
    free(x->logits);
    free(x->pool);
    free(x->ids);
    free(x->probs);
    free(x->out_idx);
    free(x->base.hist);
    if (x->own)
        model_free(x->m);
    free(x);
}

/* Children candidates of a node (tree index, -1 = root) from its logits row. */
static sd_err add_candidates(draft_model *x, tree *t, int node, const float *lg, int k)
{
    float base = node < 0 ? 0.0f : t->logp[node];
    int n;
    if (x->o.sample_children) {
        /* the recorded q is exactly what the children are drawn from: the top DRAFT_Q_TOP
         * renormalised */
        n = sample_top(x->sw, lg, x->V, x->o.temp, DRAFT_Q_TOP, x->ids, x->probs);
        float s = 0;
        for (int i = 0; i < n; i++)
            s += x->probs[i];
        for (int i = 0; i < n; i++)
            x->probs[i] /= s;
        sd_err e = tree_set_q(t, node, x->ids, x->probs, n);
        if (e)
            return e;
        for (int c = 0; c < k && x->n_pool < x->pool_cap; c++) {
            double u = sample_rng_uniform(x->o.seed ^ 0xD1A7ull, x->draws++, 7), acc = 0;
            int j = 0;
            for (; j < n - 1; j++) {
                acc += x->probs[j];
                if (u < acc)
                    break;
            }
            x->pool[x->n_pool++] = (cand){node, x->ids[j], base + logf(x->probs[j])};
        }
        return SD_OK;
    }
    n = sample_top(x->sw, lg, x->V, 1.0f, k, x->ids, x->probs);
    for (int i = 0; i < n && x->n_pool < x->pool_cap; i++)
        x->pool[x->n_pool++] =
            (cand){node, x->ids[i], base + logf(x->probs[i] > 1e-30f ? x->probs[i] : 1e-30f)};
    return SD_OK;
}

static int cand_better(const cand *a, const cand *b)
{
    return a->logp > b->logp || (a->logp == b->logp && a->tok < b->tok);
}

static int fanout(const tree_shape *s, int depth)
{
    if (s->kind == TREE_CHAIN)
        return depth < s->depth ? 1 : 0;
    if (s->kind == TREE_TOPK)
        return depth < s->depth ? s->branch[depth] : 0;
    return DYN_FANOUT;
}

static sd_err dm_propose(draft *d, const tree_shape *s, tree *t)
{
    draft_model *x = (draft_model *)d;
    tree_clear(t);
    kv_clear_pending(x->kv);
    x->n_fwd = 0;
    if (d->n_hist == 0)
        return sd_fail(SD_EINVAL, "drafter: nothing to continue (empty history)");
    if (x->o.sample_children && s->kind == TREE_DYNAMIC)
        return sd_fail(SD_EUNSUPPORTED, "sampled children (SpecInfer) need a chain or topk tree");
    if (x->kv->n_committed >= d->n_hist) /* need the last token's logits: recompute it */
        kv_truncate(x->kv, d->n_hist - 1);
    int nf = d->n_hist - x->kv->n_committed;
    sd_err e = model_forward(x->m, x->run, x->kv, d->hist + x->kv->n_committed, NULL, nf, NULL, 1,
                             x->logits);
    if (!e)
        e = kv_commit_all(x->kv);
    if (e)
        return e;
    int budget = s->budget < t->cap ? s->budget : t->cap;
    budget = budget < x->o.max_nodes ? budget : x->o.max_nodes;
    x->n_pool = 0;
    if ((e = add_candidates(x, t, -1, x->logits, fanout(s, 0))))
        return e;
    while (x->n_pool > 0 && t->n < budget) {
        /* pick this round's nodes */
        int first = t->n;
        if (s->kind == TREE_DYNAMIC) {
            for (int r = 0; r < DYN_WIDTH && x->n_pool > 0 && t->n < budget; r++) {
                int b = 0;
                for (int i = 1; i < x->n_pool; i++)
                    if (cand_better(&x->pool[i], &x->pool[b]))
                        b = i;
                cand c = x->pool[b];
                x->pool[b] = x->pool[--x->n_pool];
                if (c.parent >= 0 && t->depth[c.parent] + 1 >= TREE_MAX_DEPTH)
                    continue;
                tree_add(t, c.parent, c.tok, c.logp);
            }
        } else {
            for (int i = 0; i < x->n_pool && t->n < budget; i++)
                tree_add(t, x->pool[i].parent, x->pool[i].tok, x->pool[i].logp);
            x->n_pool = 0;
        }
        int added = t->n - first;
        if (added == 0)
            break;
        /* children needed from these nodes? */
        int need = 0;
        for (int i = first; i < t->n && !need; i++)
            need = fanout(s, t->depth[i] + 1) > 0;
        if (!need || t->n >= budget)
            break;
        /* forward the round: tree index == pending index because every earlier node was
         * forwarded in order */
        for (int i = 0; i < added; i++)
            x->out_idx[i] = i;
        e = model_forward(x->m, x->run, x->kv, t->tok + first, t->parent + first, added, x->out_idx,
                          added, x->logits);
        if (e)
            return e;
        x->n_fwd = t->n;
        for (int i = 0; i < added; i++)
            if ((e = add_candidates(x, t, first + i, x->logits + (size_t)i * x->V,
                                    fanout(s, t->depth[first + i] + 1))))
                return e;
    }
    return SD_OK;
}

static sd_err dm_advance(draft *d, const int32_t *toks, int n)
{
    draft_model *x = (draft_model *)d;
    sd_err e = draft_hist_append(d, toks, n);
    if (e)
        return e;
    /* keep the part of the last proposal the accepted tokens walked through */
    int path[TREE_MAX_DEPTH + 1], k = 0, cur = -1;
    kv_cache *kv = x->kv;
    for (int i = 0; i < n && k < TREE_MAX_DEPTH; i++) {
        int found = -1;
        for (int j = cur + 1; j < x->n_fwd && j < kv->n_pending; j++)
            if (kv->parent[j] == cur && kv->tok[kv->n_committed + j] == toks[i]) {
                found = j;
                break;
            }
        if (found < 0)
            break;
        path[k++] = cur = found;
    }
    /* only if the history before these tokens is exactly what the cache holds */
    if (k > 0 && kv->n_committed == d->n_hist - n)
        e = kv_commit_path(kv, path, k);
    else
        kv_clear_pending(kv);
    x->n_fwd = 0;
    return e;
}

static sd_err dm_rollback(draft *d, int n_keep)
{
    draft_model *x = (draft_model *)d;
    sd_err e = draft_hist_cut(d, n_keep);
    if (e)
        return e;
    kv_clear_pending(x->kv);
    x->n_fwd = 0;
    if (x->kv->n_committed > n_keep)
        return kv_truncate(x->kv, n_keep);
    return SD_OK;
}

sd_err draft_model_open(draft **out, model *dm, int own_model, int n_vocab, const draft_opts *o,
                        const char *kind)
{
    *out = NULL;
    if (o->max_ctx <= 0 || o->max_nodes <= 0 || o->max_nodes > 1024)
        return sd_fail(SD_EINVAL, "drafter: context %d / tree of %d nodes", o->max_ctx,
                       o->max_nodes);
    draft_model *x = calloc(1, sizeof *x);
    if (!x)
        return SD_ENOMEM;
    x->m = dm;
    x->o = *o;
    x->V = n_vocab;
    x->base.kind = kind;
    x->base.propose = dm_propose;
    x->base.advance = dm_advance;
    x->base.rollback = dm_rollback;
    x->base.free = dm_free;
    x->base.max_ctx = o->max_ctx;
    x->pool_cap = (o->max_nodes + 1) * DYN_FANOUT + DRAFT_Q_TOP;
    x->base.hist = malloc(sizeof(int32_t) * (size_t)o->max_ctx);
    x->logits = malloc(sizeof(float) * (size_t)(o->max_nodes + 1) * (size_t)n_vocab);
    x->pool = malloc(sizeof(cand) * (size_t)x->pool_cap);
    x->ids =
        malloc(sizeof(int32_t) * (size_t)(DRAFT_Q_TOP > DYN_FANOUT ? DRAFT_Q_TOP : DYN_FANOUT) * 2);
    x->probs =
        malloc(sizeof(float) * (size_t)(DRAFT_Q_TOP > DYN_FANOUT ? DRAFT_Q_TOP : DYN_FANOUT) * 2);
    x->out_idx = malloc(sizeof(int) * (size_t)o->max_nodes);
    sd_err e = SD_OK;
    if (!x->base.hist || !x->logits || !x->pool || !x->ids || !x->probs || !x->out_idx)
        e = SD_ENOMEM;
    if (!e)
        e = model_kv_init(dm, &x->kv, o->max_ctx + o->max_nodes + 1);
    if (!e)
        e = model_run_init(&x->run, dm, o->max_nodes + 1 > 64 ? o->max_nodes + 1 : 64);
    if (!e)
        e = sample_work_init(&x->sw, n_vocab);
    x->own = 0; /* on failure the caller frees the model */
    if (e) {
        dm_free(&x->base);
        return e;
    }
    x->own = own_model;
    *out = &x->base;
    return SD_OK;
}
