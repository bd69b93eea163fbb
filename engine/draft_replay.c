/* replay drafter — an experiment tool, not a real drafter: it proposes the continuation it was
 * given (normally the target's own target-only output, recorded beforehand), each token kept with
 * probability P and otherwise replaced by a random token, as a chain. With it the acceptance
 * rate of a benchmark is a parameter (DSI's regimes: acceptance 0.5–0.95) and drafting costs
 * nothing but the emulated delay. Verification stays lossless whatever it proposes.
 *
 * Spec: replay:P:SEED:T1,T2,...  — the tokens follow the prompt (the first draft_advance call). */
#include <stdlib.h>
#include <string.h>

#include "draft.h"
#include "sample.h"

typedef struct {
    draft base;
    int32_t *ref;
    int n_ref;
    int n_prompt; /* -1 until the prompt arrived */
    double p;
    uint64_t seed;
    int V;
} draft_replay;

static void rp_free(draft *d)
{
    draft_replay *x = (draft_replay *)d;
    if (!x)
        return;
    free(x->ref);
    free(x->base.hist);
    free(x);
}

static sd_err rp_advance(draft *d, const int32_t *toks, int n)
{
    draft_replay *x = (draft_replay *)d;
    if (x->n_prompt < 0)
        x->n_prompt = d->n_hist + n;
    return draft_hist_append(d, toks, n);
}

static sd_err rp_rollback(draft *d, int n_keep)
{
    return draft_hist_cut(d, n_keep);
}

static sd_err rp_propose(draft *d, const tree_shape *s, tree *out)
{
    draft_replay *x = (draft_replay *)d;
    tree_clear(out);
    int at = d->n_hist - (x->n_prompt < 0 ? d->n_hist : x->n_prompt);
    int k = s->kind == TREE_CHAIN ? s->depth : s->budget;
    if (k > out->cap)
        k = out->cap;
    for (int i = 0, parent = -1; i < k && at + i < x->n_ref; i++) {
        uint64_t pos = (uint64_t)(d->n_hist + i);
        int32_t t = x->ref[at + i];
        if (sample_rng_uniform(x->seed, pos, 7) >= x->p) /* corrupted: some other token */
            t = (int32_t)((t + 1 + sample_rng_u64(x->seed, pos, 8) % (uint64_t)(x->V - 1)) %
                          (uint64_t)x->V);
        parent = tree_add(out, parent, t, -0.1f * (float)(i + 1));
        if (parent < 0)
            break;
    }
    return SD_OK;
}

sd_err draft_replay_open(draft **out, const char *args, int V, const draft_opts *o)
{
    *out = NULL;
    char *end;
    double p = strtod(args, &end);
    if (end == args || *end != ':' || !(p >= 0 && p <= 1))
        return sd_fail(SD_EINVAL, "drafter 'replay:%s': expected replay:P:SEED:T1,T2,... with "
                                  "0 <= P <= 1", args);
    const char *sp = end + 1;
    unsigned long long seed = strtoull(sp, &end, 10);
    if (end == sp || *end != ':')
        return sd_fail(SD_EINVAL, "drafter replay: expected a seed after P");
    draft_replay *x = calloc(1, sizeof *x);
    if (!x)
        return SD_ENOMEM;
    size_t cap = strlen(end) / 2 + 1;
    x->ref = malloc(sizeof(int32_t) * cap);
    x->base.hist = malloc(sizeof(int32_t) * (size_t)(o->max_ctx > 0 ? o->max_ctx : 1));
    if (!x->ref || !x->base.hist) {
        rp_free(&x->base);
        return SD_ENOMEM;
    }
    for (const char *c = end + 1; *c;) {
        long t = strtol(c, &end, 10);
        if (end == c || t < 0 || t >= V || (*end && *end != ',')) {
            rp_free(&x->base);
            return sd_fail(SD_ERANGE, "drafter replay: token list: '%.16s' is not a token id < %d",
                           c, V);
        }
        x->ref[x->n_ref++] = (int32_t)t;
        c = *end ? end + 1 : end;
    }
    x->p = p;
    x->seed = seed;
    x->V = V;
    x->n_prompt = -1;
    x->base.kind = "replay";
    x->base.max_ctx = o->max_ctx;
    x->base.propose = rp_propose;
    x->base.advance = rp_advance;
    x->base.rollback = rp_rollback;
    x->base.free = rp_free;
    *out = &x->base;
    return SD_OK;
}
