#include "draft.h"

#include <stdlib.h>
#include <string.h>

#include "../common/log.h"

sd_err draft_hist_append(draft *d, const int32_t *toks, int n)
{
    if (n < 0 || d->n_hist + n > d->max_ctx)
        return sd_fail(SD_ERANGE, "drafter: %d + %d tokens exceed its context of %d", d->n_hist, n,
                       d->max_ctx);
    memcpy(d->hist + d->n_hist, toks, sizeof(int32_t) * (size_t)n);
    d->n_hist += n;
    return SD_OK;
}

sd_err draft_hist_cut(draft *d, int n_keep)
{
    if (n_keep < 0 || n_keep > d->n_hist)
        return sd_fail(SD_ERANGE, "drafter: rollback to %d of %d tokens", n_keep, d->n_hist);
    d->n_hist = n_keep;
    return SD_OK;
}

/* "0-9,29" -> sorted unique layer list within [0, n_layer). */
static sd_err parse_layers(const char *spec, int n_layer, int *out, int *n_out)
{
    char *used = calloc((size_t)n_layer, 1);
    if (!used)
        return SD_ENOMEM;
    const char *p = spec;
    sd_err e = SD_OK;
    while (*p && !e) {
        char *end;
        long a = strtol(p, &end, 10), b = a;
        if (end == p) {
            e = sd_fail(SD_EINVAL, "layerskip '%s': expected layer ranges like 0-9,29", spec);
            break;
        }
        if (*end == '-') {
            const char *q = end + 1;
            b = strtol(q, &end, 10);
            if (end == q)
                e = sd_fail(SD_EINVAL, "layerskip '%s': bad range", spec);
        }
        if (!e && (a < 0 || b < a || b >= n_layer))
            e = sd_fail(SD_ERANGE, "layerskip '%s': layers must be within 0..%d", spec,
                        n_layer - 1);
        for (long i = a; !e && i <= b; i++)
            used[i] = 1;
        if (*end == ',')
            end++;
        else if (*end && !e)
            e = sd_fail(SD_EINVAL, "layerskip '%s': unexpected '%c'", spec, *end);
        p = end;
    }
    int n = 0;
    for (int i = 0; i < n_layer; i++)
        if (used[i])
            out[n++] = i;
    free(used);
    if (!e && n == 0)
        e = sd_fail(SD_EINVAL, "layerskip '%s': no layers", spec);
    *n_out = n;
    return e;
}

/* A draft model must spell every token exactly as the target does. */
static sd_err check_vocab(const model *target, const model *dm, const char *path)
{
    int V = model_cfg(target)->n_vocab;
    if (model_cfg(dm)->n_vocab != V)
        return sd_fail(SD_EINVAL, "draft model %s has a vocabulary of %d tokens; the target has %d",
                       path, model_cfg(dm)->n_vocab, V);
    const gguf *a = model_gguf(target), *b = model_gguf(dm);
    for (int i = 0; i < V; i++) {
        const char *sa, *sb;
        size_t la, lb;
        sd_err ea = gguf_get_arr_str(a, "tokenizer.ggml.tokens", (uint64_t)i, &sa, &la);
        sd_err eb = gguf_get_arr_str(b, "tokenizer.ggml.tokens", (uint64_t)i, &sb, &lb);
        if (ea != eb || (!ea && (la != lb || memcmp(sa, sb, la))))
            return sd_fail(SD_EINVAL,
                           "draft model %s: token %d differs from the target's "
                           "vocabulary",
                           path, i);
    }
    return SD_OK;
}

/* ---- random:SEED — a test and benchmark drafter, never useful for real generation ----------
 * Proposes the requested shape (a chain, a top-k tree filled level by level, or for dynamic a
 * tree with random parents) filled with uniformly random tokens: a drafter that is (almost)
 * never right, which is what the "speculation must not cost more than it returns" checks need
 * (bench/spec's do-no-harm rows, tests/test_spec.c). Tokens are a hash of (seed, history length,
 * node), so a proposal depends only on what was committed. */
typedef struct {
    draft base;
    uint64_t seed;
    int n_vocab, max_nodes;
} draft_random;

static uint64_t rnd_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static sd_err rnd_propose(draft *d, const tree_shape *s, tree *t)
{
    draft_random *x = (draft_random *)d;
    tree_clear(t);
    int budget = s->budget < t->cap ? s->budget : t->cap;
    budget = budget < x->max_nodes ? budget : x->max_nodes;
    uint64_t h = rnd_mix(x->seed ^ rnd_mix((uint64_t)d->n_hist));
    for (int i = 0; i < budget; i++) {
        h = rnd_mix(h + (uint64_t)i);
        int parent;
        if (s->kind == TREE_CHAIN) {
            if (i >= s->depth)
                break;
            parent = i - 1;
        } else if (s->kind == TREE_TOPK) {
            /* level by level: node i's parent is the first node of the level above that still
             * has room for a child */
            parent = -2;
            for (int p = -1; p < i && parent == -2; p++) {
                int dp = p < 0 ? 0 : t->depth[p] + 1, kids[64];
                if (dp < s->depth && tree_children(t, p, kids, 64) < s->branch[dp])
                    parent = p;
            }
            if (parent == -2)
                break;
        } else {
            parent = (int)(h % (uint64_t)(i + 1)) - 1;
            if (parent >= 0 && t->depth[parent] + 1 >= TREE_MAX_DEPTH)
                parent = -1;
        }
        int32_t tok = (int32_t)((h >> 17) % (uint64_t)x->n_vocab);
        if (tree_add(t, parent, tok, 0) < 0)
            break;
    }
    return SD_OK;
}

static sd_err rnd_advance(draft *d, const int32_t *toks, int n)
{
    return draft_hist_append(d, toks, n);
}

static sd_err rnd_rollback(draft *d, int n_keep)
{
    return draft_hist_cut(d, n_keep);
}

static void rnd_free(draft *d)
{
    if (!d)
        return;
    free(d->hist);
    free(d);
}

static sd_err draft_random_open(draft **out, const char *spec, int n_vocab, const draft_opts *o)
{
    *out = NULL;
    char *end;
    unsigned long long seed = strtoull(spec, &end, 10);
    if (end == spec || *end)
        return sd_fail(SD_EINVAL, "drafter 'random:%s': expected random:SEED (an integer)", spec);
    if (o->max_ctx <= 0 || o->max_nodes <= 0)
        return sd_fail(SD_EINVAL, "drafter: context %d / tree of %d nodes", o->max_ctx,
                       o->max_nodes);
    if (o->sample_children)
        return sd_fail(SD_EUNSUPPORTED, "the random drafter has no draft distribution to sample "
                                        "children from; use greedy or sample verification");
    draft_random *x = calloc(1, sizeof *x);
    if (!x)
        return SD_ENOMEM;
    x->seed = seed;
    x->n_vocab = n_vocab;
    x->max_nodes = o->max_nodes;
    x->base.kind = "random";
    x->base.propose = rnd_propose;
    x->base.advance = rnd_advance;
    x->base.rollback = rnd_rollback;
    x->base.free = rnd_free;
    x->base.max_ctx = o->max_ctx;
    x->base.hist = malloc(sizeof(int32_t) * (size_t)o->max_ctx);
    if (!x->base.hist) {
        free(x);
        return SD_ENOMEM;
    }
    *out = &x->base;
    return SD_OK;
}

/* ngram[:N[:M]]: 0 not an n-gram spec, 1 parsed, -1 malformed. */
static int parse_ngram(const char *spec, int *n_out, int *n_min_out)
{
    if (strncmp(spec, "ngram", 5) || (spec[5] != 0 && spec[5] != ':'))
        return 0;
    long n = 3, n_min = 1;
    if (spec[5] == ':') {
        char *end;
        n = strtol(spec + 6, &end, 10);
        if (end != spec + 6 && *end == ':') {
            const char *m = end + 1;
            n_min = strtol(m, &end, 10);
            if (end == m)
                n_min = -1;
        }
        if (end == spec + 6 || *end || n < 1 || n > 16 || n_min < 1 || n_min > n)
            return -1;
    }
    *n_out = (int)n;
    *n_min_out = (int)n_min;
    return 1;
}

int draft_lookup_min(const char *spec)
{
    int n, n_min;
    return spec && parse_ngram(spec, &n, &n_min) == 1 ? n_min : 0;
}

sd_err draft_open(draft **out, const char *spec, model *target, const draft_opts *o)
{
    *out = NULL;
    int V = model_cfg(target)->n_vocab;
    int ng_n, ng_min, ng = parse_ngram(spec, &ng_n, &ng_min);
    if (ng < 0)
        return sd_fail(SD_EINVAL, "drafter '%s': expected ngram[:N[:M]] with 1 <= M <= N <= 16",
                       spec);
    if (ng > 0)
        return draft_ngram_open(out, ng_n, ng_min, o);
    if (!strncmp(spec, "layerskip:", 10)) {
        int L = model_cfg(target)->n_layer_file;
        int *layers = malloc(sizeof(int) * (size_t)L), n = 0;
        if (!layers)
            return SD_ENOMEM;
        sd_err e = parse_layers(spec + 10, L, layers, &n);
        model *dm = NULL;
        model_opts mo = {.backend = model_backend(target),
                         .layers = layers,
                         .n_layers = n,
                         .share_packed = target};
        if (!e)
            e = model_init(&dm, model_gguf(target), &mo);
        free(layers);
        if (!e)
            e = draft_model_open(out, dm, 1, V, o, "layerskip");
        if (e)
            model_free(dm);
        return e;
    }
    if (!strncmp(spec, "model:", 6)) {
        model *dm = NULL;
        model_opts mo = {.backend = model_backend(target)};
        sd_err e = model_open(&dm, spec + 6, &mo);
        if (!e)
            e = check_vocab(target, dm, spec + 6);
        if (!e)
            e = draft_model_open(out, dm, 1, V, o, "model");
        if (e)
            model_free(dm);
        return e;
    }
    if (!strncmp(spec, "replay:", 7))
        return draft_replay_open(out, spec + 7, V, o);
    if (!strncmp(spec, "random:", 7))
        return draft_random_open(out, spec + 7, V, o);
    return sd_fail(SD_EINVAL,
                   "drafter '%s': expected model:PATH, layerskip:LAYERS, ngram[:N], or the "
                   "experiment drafters random:SEED and replay:P:SEED:TOKENS",
                   spec);
}

void draft_free(draft *d)
{
    if (d)
        d->free(d);
}
