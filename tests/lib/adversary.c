#include "adversary.h"

#include <stdlib.h>

typedef struct {
    draft base;
    int V, plant;
    uint64_t s;
} adversary;

static uint64_t adv_next(adversary *a)
{
    uint64_t z = (a->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static sd_err adv_propose(draft *d, const tree_shape *s, tree *t)
{
    adversary *a = (adversary *)d;
    tree_clear(t);
    int n = (int)(adv_next(a) % (uint64_t)(s->budget + 1));
    for (int i = 0; i < n && i < t->cap; i++) {
        int parent = (int)(adv_next(a) % (uint64_t)(i + 1)) - 1;
        int32_t tok = (int32_t)(adv_next(a) % (uint64_t)a->V);
        if (a->plant && (int)(adv_next(a) % 100) < a->plant && d->n_hist > 0)
            tok = d->hist[adv_next(a) % (uint64_t)d->n_hist];
        tree_add(t, parent, tok, 0.0f);
    }
    return SD_OK;
}

static sd_err adv_advance(draft *d, const int32_t *toks, int n)
{
    return draft_hist_append(d, toks, n);
}
static sd_err adv_rollback(draft *d, int n_keep)
{
    return draft_hist_cut(d, n_keep);
}

static void adv_free(draft *d)
{
    if (!d)
        return;
    free(d->hist);
    free(d);
}

sd_err adversary_open(draft **out, int n_vocab, int max_ctx, uint64_t seed, int plant)
{
    adversary *a = calloc(1, sizeof *a);
    if (!a)
        return SD_ENOMEM;
    a->V = n_vocab;
    a->plant = plant;
    a->s = seed;
    a->base.kind = "adversary";
    a->base.propose = adv_propose;
    a->base.advance = adv_advance;
    a->base.rollback = adv_rollback;
    a->base.free = adv_free;
    a->base.max_ctx = max_ctx;
    a->base.hist = malloc(sizeof(int32_t) * (size_t)max_ctx);
    if (!a->base.hist) {
        free(a);
        return SD_ENOMEM;
    }
    *out = &a->base;
    return SD_OK;
}
