/* verify: lossless verification of a draft tree by the target model (DESIGN.md §3).
 *
 * One batched forward over [last committed token, tree nodes] through the KV cache's tree append;
 * then a walk from the root:
 *   greedy / sample (default): at a node, draw the target's token x for the next position exactly
 *     as target-only decoding would (argmax, or the (seed, position) draw from the filtered
 *     distribution); if a child carries x, accept it and descend, else x is the correction and
 *     the walk stops. The committed tokens are exactly target-only's, for any tree.
 *   specinfer: children drawn i.i.d. from the drafter's recorded q; child c is accepted with
 *     probability min(1, p(c)/q(c)), after a rejection p becomes norm(max(0, p - q)); with all
 *     children rejected the token is drawn from what remains of p. Distributed exactly as
 *     target sampling when the children really are draws from q.
 * The accepted path (with `last`) is committed to the KV cache. */
#ifndef SD_VERIFY_H
#define SD_VERIFY_H

#include <stdint.h>

#include "../common/sd_err.h"
#include "model.h"
#include "sample.h"
#include "tree.h"

#define VERIFY_MAX_NODES 1024

typedef enum { VERIFY_SAMPLE = 0, VERIFY_SPECINFER = 1 } verify_mode;

typedef struct {
    int n_accept;               /* tree nodes accepted */
    int path[VERIFY_MAX_NODES]; /* their tree indices, root to leaf */
    int32_t next;               /* the target's token after the accepted path (not in kv) */
} verify_result;

typedef struct verify_work verify_work;

sd_err verify_work_init(verify_work **out, const model *m, int max_nodes);
void verify_work_free(verify_work *w);

/* kv holds the committed sequence except its newest token `last`, with nothing pending. The tree
 * is validated first (bad trees are SD_EINVAL/SD_ERANGE and change nothing). */
sd_err verify_tree(model *m, model_run *r, kv_cache *kv, verify_work *w, int32_t last,
                   const tree *t, verify_mode mode, const sample_params *sp, verify_result *res);

/* One sequence's verification inside a batch (verify_batch). The chain pre[0..n_pre) is appended
 * first (the tokens the cache lacks up to and including the chunk's root token, i.e. the
 * committed/assumed sequence's newest token), then the tree hangs under pre[n_pre-1]. Afterwards
 * pre and the accepted path are committed to kv and res says what was accepted. t == NULL:
 * prefill only (pre appended and committed, res untouched; n_pre == 0 then does nothing). err
 * gets this job's result and errmsg its message: a bad tree or token, pending nodes in kv, a
 * batch that would overflow kv's context, a kv or w another job of the batch uses, bad sample
 * params, a kv shaped for another model — each fails its own job only, before anything is
 * computed, and leaves its kv as it was. Each job needs its own kv, and each job with a tree
 * its own w (a prefill-only job does not use w; it may be NULL). */
typedef struct {
    kv_cache *kv;
    verify_work *w;
    const int32_t *pre;
    int n_pre;
    const tree *t;
    verify_mode mode;
    const sample_params *sp;
    verify_result *res;
    sd_err err;
    char errmsg[192]; /* sd_errmsg() of err ("" when err == SD_OK) */
} verify_job;

/* Verify several sequences with one model_forward_multi; each job's outcome is bitwise that of
 * verifying it alone. Returns the first error that is not a single job's (e.g. SD_ENOMEM; the
 * jobs it hit have it in err too). verify_tree is the one-job, n_pre = 1 case. */
sd_err verify_batch(model *m, model_run *r, verify_job *jobs, int n);

#endif
