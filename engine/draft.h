/* draft: drafters behind one interface (DESIGN.md §3).
 *
 * A drafter follows the committed sequence (draft_advance appends committed tokens,
 * draft_rollback cuts it back) and proposes a token tree continuing it (draft_propose). Tree
 * nodes with parent -1 continue the last committed token. A drafter keeps its own state (KV
 * cache, history) and reuses the work of the previous proposal when the accepted tokens follow a
 * path it already computed.
 *
 * Kinds (draft_open spec):
 *   model:PATH      a draft model: any GGUF whose vocabulary equals the target's
 *   layerskip:SPEC  the target's own weights, a subset of layers ("0-9,29"), sharing its file
 *   ngram[:N[:M]]   prompt lookup: continuations of the longest matching n-gram of N down to M
 *                   tokens (default 3 and 1; M = 2 skips one-token matches, which mostly propose
 *                   noise in free text) in the prompt and generated text; no model
 *   replay:P:SEED:T1,T2,...  experiments only: proposes the given continuation of the prompt,
 *                   each token kept with probability P (acceptance as a parameter)
 *   random:SEED     tests and benchmarks only: random tokens, a drafter that is never right */
#ifndef SD_DRAFT_H
#define SD_DRAFT_H

#include <stdint.h>

#include "../common/sd_err.h"
#include "model.h"
#include "tree.h"

typedef struct draft draft;

/* Support of the draft distribution a drafter records per node when it samples children (the
 * top DRAFT_Q_TOP tokens, renormalised): size tree q buffers as (nodes + 1) * DRAFT_Q_TOP. */
#define DRAFT_Q_TOP 64

typedef struct {
    int max_ctx;   /* longest sequence followed (committed tokens) */
    int max_nodes; /* largest tree proposed */
    /* Children drawn i.i.d. from the draft distribution (temperature temp, keyed by seed)
     * instead of taken best-first — what SpecInfer-style verification requires — and the sparse
     * distribution recorded in the tree. */
    int sample_children;
    float temp;
    uint64_t seed;
} draft_opts;

struct draft {
    const char *kind;
    sd_err (*propose)(draft *d, const tree_shape *s, tree *out);
    sd_err (*advance)(draft *d, const int32_t *toks, int n);
    sd_err (*rollback)(draft *d, int n_keep);
    void (*free)(draft *d);
    int32_t *hist; /* committed tokens followed so far */
    int n_hist, max_ctx;
};

/* Create a drafter for `target` from a spec string (see above). */
sd_err draft_open(draft **out, const char *spec, model *target, const draft_opts *o);
void draft_free(draft *d); /* NULL is a no-op */

static inline sd_err draft_propose(draft *d, const tree_shape *s, tree *out)
{
    return d->propose(d, s, out);
}
static inline sd_err draft_advance(draft *d, const int32_t *toks, int n)
{
    return d->advance(d, toks, n);
}
static inline sd_err draft_rollback(draft *d, int n_keep)
{
    return d->rollback(d, n_keep);
}

/* Shared by the implementations: append to / cut the history, with range checks. */
sd_err draft_hist_append(draft *d, const int32_t *toks, int n);
sd_err draft_hist_cut(draft *d, int n_keep);

/* Lookup drafters (ngram): the shortest suffix a spec looks up (M of ngram:N:M), 0 for any
 * other spec or a malformed one. Such a drafter proposes nothing exactly when
 * draft_lookup_match(history, n, M) is 0 — a question anyone holding the committed sequence can
 * answer without asking the drafter (the coordinator does, to skip waiting for an empty answer). */
int draft_lookup_min(const char *spec);
/* Nonzero when the last m tokens of h[0..n) occurred earlier with a token after them. */
int draft_lookup_match(const int32_t *h, int n, int m);

/* Implementations (draft_model.c, draft_ngram.c). */
sd_err draft_model_open(draft **out, model *dm, int own_model, int n_vocab, const draft_opts *o,
                        const char *kind);
sd_err draft_ngram_open(draft **out, int n, int n_min, const draft_opts *o);
/* Experiments: replays a given continuation with per-token corruption (draft_replay.c). */
sd_err draft_replay_open(draft **out, const char *args, int V, const draft_opts *o);

#endif
