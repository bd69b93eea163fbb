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

sd_err draft_open(draft **out, const char *spec, model *target, const draft_opts *o)
{
    *out = NULL;
    int V = model_cfg(target)->n_vocab;
    if (!strncmp(spec, "ngram", 5) && (spec[5] == 0 || spec[5] == ':')) {
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
                return sd_fail(SD_EINVAL,
                               "drafter '%s': expected ngram[:N[:M]] with "
                               "1 <= M <= N <= 16",
                               spec);
        }
        return draft_ngram_open(out, (int)n, (int)n_min, o);
    }
    if (!strncmp(spec, "layerskip:", 10)) {
        int L = model_cfg(target)->n_layer_file;
        int *layers = malloc(sizeof(int) * (size_t)L), n = 0;
        if (!layers)
            return SD_ENOMEM;
        sd_err e = parse_layers(spec + 10, L, layers, &n);
        model *dm = NULL;
        model_opts mo = {.backend = model_backend(target), .layers = layers, .n_layers = n,
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
    return sd_fail(SD_EINVAL, "drafter '%s': expected model:PATH, layerskip:LAYERS or ngram[:N]",
                   spec);
}

void draft_free(draft *d)
{
    if (d)
        d->free(d);
}
