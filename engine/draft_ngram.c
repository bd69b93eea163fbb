/* n-gram / prompt-lookup drafter: no model. The longest suffix of the history (N down to M
 * tokens) that occurred before is looked up; what followed each earlier occurrence (most recent
 * first, longer matches first) is merged into a trie weighted by how many occurrences agree, and
 * the tree is cut from that trie by the requested shape. Works best where text repeats: code,
 * summaries, edits of a given passage. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "draft.h"

#define NG_MAX_MATCHES 16
#define NG_DYN_DEPTH 12

typedef struct {
    int parent;
    int32_t tok;
    float w;
    int depth;
} ng_node;

typedef struct {
    draft base;
    int n, n_min; /* longest and shortest suffix looked up */
    int max_nodes;
    ng_node *trie;
    int trie_cap;
    int *map; /* trie index -> tree index */
} draft_ngram;

static void ng_free(draft *d)
{
    draft_ngram *x = (draft_ngram *)d;
    if (!x)
        return;
    free(x->trie);
    free(x->map);
    free(x->base.hist);
    free(x);
}

static int trie_child(const draft_ngram *x, int nt, int parent, int32_t tok)
{
    for (int i = parent + 1; i < nt; i++)
        if (x->trie[i].parent == parent && x->trie[i].tok == tok)
            return i;
    return -1;
}

/* Insert continuation c[0..len) with weight w; returns the new trie size. */
static int trie_insert(draft_ngram *x, int nt, const int32_t *c, int len, float w)
{
    int cur = -1;
    for (int i = 0; i < len; i++) {
        int ch = trie_child(x, nt, cur, c[i]);
        if (ch < 0) {
            if (nt >= x->trie_cap)
                return nt;
            ch = nt++;
            x->trie[ch] = (ng_node){cur, c[i], 0, cur < 0 ? 0 : x->trie[cur].depth + 1};
        }
        x->trie[ch].w += w;
        cur = ch;
    }
    return nt;
}

static int shape_depth(const tree_shape *s)
{
    return s->kind == TREE_DYNAMIC ? NG_DYN_DEPTH : s->depth;
}

static sd_err ng_propose(draft *d, const tree_shape *s, tree *t)
{
    draft_ngram *x = (draft_ngram *)d;
    tree_clear(t);
    const int32_t *h = d->hist;
    int nh = d->n_hist, depth = shape_depth(s), nt = 0, matches = 0;
    int starts[NG_MAX_MATCHES];
    float total = 0;
    for (int n = x->n < nh ? x->n : nh - 1; n >= x->n_min && matches < NG_MAX_MATCHES; n--) {
        const int32_t *suf = h + nh - n;
        for (int i = nh - n - 1; i >= 0 && matches < NG_MAX_MATCHES; i--) {
            if (memcmp(h + i, suf, sizeof(int32_t) * (size_t)n))
                continue;
            int start = i + n, len = nh - start < depth ? nh - start : depth, seen = 0;
            for (int k = 0; k < matches && !seen; k++)
                seen = starts[k] == start; /* already found through a longer match */
            if (len <= 0 || seen)
                continue;
            starts[matches] = start;
            float w = (float)n; /* longer matches count more */
            nt = trie_insert(x, nt, h + start, len, w);
            total += w;
            matches++;
        }
        if (matches && s->kind == TREE_CHAIN)
            break; /* a chain follows the longest match only */
    }
    if (!nt)
        return SD_OK;
    int budget = s->budget < t->cap ? s->budget : t->cap;
    budget = budget < x->max_nodes ? budget : x->max_nodes;
    for (int i = 0; i < nt; i++)
        x->map[i] = -1;
    /* Trie nodes are numbered parents-first, and a parent's weight is at least the sum of its
     * children's, so taking nodes best-first keeps every chosen node's parent chosen. */
    for (int added = 0; added < budget; added++) {
        int best = -1;
        for (int i = 0; i < nt; i++) {
            const ng_node *c = &x->trie[i];
            if (x->map[i] >= 0 || (c->parent >= 0 && x->map[c->parent] < 0))
                continue;
            int tp = c->parent < 0 ? -1 : x->map[c->parent];
            if (s->kind != TREE_DYNAMIC) {
                int limit = s->kind == TREE_CHAIN ? 1 : s->branch[c->depth];
                int kids[64];
                if (c->depth >= s->depth || tree_children(t, tp, kids, 64) >= limit)
                    continue;
            }
            if (best < 0 || c->w > x->trie[best].w)
                best = i;
        }
        if (best < 0)
            break;
        const ng_node *c = &x->trie[best];
        x->map[best] =
            tree_add(t, c->parent < 0 ? -1 : x->map[c->parent], c->tok, logf(c->w / total));
    }
    return SD_OK;
}

int draft_lookup_match(const int32_t *h, int n, int m)
{
    if (m < 1 || n - 1 < m)
        return 0;
    const int32_t *suf = h + n - m;
    for (int i = n - m - 1; i >= 0; i--)
        if (!memcmp(h + i, suf, sizeof(int32_t) * (size_t)m))
            return 1;
    return 0;
}

static sd_err ng_advance(draft *d, const int32_t *toks, int n)
{
    return draft_hist_append(d, toks, n);
}

static sd_err ng_rollback(draft *d, int n_keep)
{
    return draft_hist_cut(d, n_keep);
}

sd_err draft_ngram_open(draft **out, int n, int n_min, const draft_opts *o)
{
    *out = NULL;
    if (o->max_ctx <= 0 || o->max_nodes <= 0)
        return sd_fail(SD_EINVAL, "drafter: context %d / tree of %d nodes", o->max_ctx,
                       o->max_nodes);
    if (o->sample_children)
        return sd_fail(SD_EUNSUPPORTED, "the n-gram drafter has no draft distribution to sample "
                                        "children from; use greedy or sample verification");
    draft_ngram *x = calloc(1, sizeof *x);
    if (!x)
        return SD_ENOMEM;
    x->n = n;
    x->n_min = n_min;
    x->max_nodes = o->max_nodes;
    x->trie_cap = NG_MAX_MATCHES * (NG_DYN_DEPTH > TREE_MAX_DEPTH ? NG_DYN_DEPTH : TREE_MAX_DEPTH);
    x->base.kind = "ngram";
    x->base.propose = ng_propose;
    x->base.advance = ng_advance;
    x->base.rollback = ng_rollback;
    x->base.free = ng_free;
    x->base.max_ctx = o->max_ctx;
    x->base.hist = malloc(sizeof(int32_t) * (size_t)o->max_ctx);
    x->trie = malloc(sizeof(ng_node) * (size_t)x->trie_cap);
    x->map = malloc(sizeof(int) * (size_t)x->trie_cap);
    if (!x->base.hist || !x->trie || !x->map) {
        ng_free(&x->base);
        return SD_ENOMEM;
    }
    *out = &x->base;
    return SD_OK;
}
