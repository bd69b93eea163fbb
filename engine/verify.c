#include "verify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct verify_work {
    int V, max_nodes;
    float *logits; /* [max_nodes + 1][V] */
    /* Batch of a job: pre[0..n_pre) then the tree. Sized max_nodes + 1 at init (n_pre = 1) and
     * grown when a job brings a longer pre chain (amortised: the longest seen stays). */
    int cap;
    int32_t *tok; /* [cap] batch tokens */
    int *parent;  /* [cap] batch parents */
    int *out;     /* [cap] 0, 1, 2, ... */
    int *bpath;   /* [cap] */
    int *kids;    /* [max_nodes] */
    sample_work *sw;
    int *ids;       /* [V] target distribution support (specinfer) */
    float *probs;   /* [V] */
    float *pd, *qd; /* [V] dense p and q, zero outside the touched entries */
};

sd_err verify_work_init(verify_work **out, const model *m, int max_nodes)
{
    *out = NULL;
    if (max_nodes <= 0 || max_nodes > VERIFY_MAX_NODES)
        return sd_fail(SD_EINVAL, "verify: tree limit %d must be 1..%d", max_nodes,
                       VERIFY_MAX_NODES);
    int V = model_cfg(m)->n_vocab;
    verify_work *w = calloc(1, sizeof *w);
    if (!w)
        return SD_ENOMEM;
    size_t n = (size_t)max_nodes + 1;
    w->V = V;
    w->max_nodes = max_nodes;
    w->cap = (int)n;
    w->logits = malloc(sizeof(float) * n * (size_t)V);
    w->tok = malloc(sizeof(int32_t) * n);
    w->parent = malloc(sizeof(int) * n);
    w->out = malloc(sizeof(int) * n);
    w->kids = malloc(sizeof(int) * n);
    w->bpath = malloc(sizeof(int) * n);
    w->ids = malloc(sizeof(int) * (size_t)V);
    w->probs = malloc(sizeof(float) * (size_t)V);
    w->pd = calloc((size_t)V, sizeof(float));
    w->qd = calloc((size_t)V, sizeof(float));
    sd_err e = sample_work_init(&w->sw, V);
    if (e || !w->logits || !w->tok || !w->parent || !w->out || !w->kids || !w->bpath || !w->ids ||
        !w->probs || !w->pd || !w->qd) {
        verify_work_free(w);
        return e ? e : SD_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        w->out[i] = (int)i;
    *out = w;
    return SD_OK;
}

void verify_work_free(verify_work *w)
{
    if (!w)
        return;
    free(w->logits);
    free(w->tok);
    free(w->parent);
    free(w->out);
    free(w->kids);
    free(w->bpath);
    free(w->ids);
    free(w->probs);
    free(w->pd);
    free(w->qd);
    sample_work_free(w->sw);
    free(w);
}

/* Draw from a dense distribution over the support ids[0..n) with uniform u. */
static int32_t draw(const int *ids, int n, const float *pd, double u)
{
    double sum = 0, acc = 0;
    for (int i = 0; i < n; i++)
        sum += pd[ids[i]];
    u *= sum;
    for (int i = 0; i < n; i++) {
        acc += pd[ids[i]];
        if (u < acc && pd[ids[i]] > 0)
            return ids[i];
    }
    for (int i = n - 1; i > 0; i--) /* rounding: the last token with mass */
        if (pd[ids[i]] > 0)
            return ids[i];
    return ids[0];
}

/* SpecInfer step at one node: returns the index into kids[] of the accepted child, or -1 with
 * *x the token drawn from the residual. */
static int specinfer_step(verify_work *w, const tree *t, int node, const float *lg,
                          const sample_params *sp, uint64_t pos, const int *kids, int nk,
                          int32_t *x)
{
    int n = sample_dist(w->sw, lg, w->V, sp, w->ids, w->probs);
    for (int i = 0; i < n; i++)
        w->pd[w->ids[i]] = w->probs[i];
    const int32_t *qt;
    const float *qp;
    int nq = tree_q(t, node, &qt, &qp);
    for (int i = 0; i < nq; i++)
        w->qd[qt[i]] += qp[i];
    int acc = -1;
    for (int k = 0; k < nk && acc < 0; k++) {
        int32_t c = t->tok[kids[k]];
        double u = sample_rng_uniform(sp->seed, pos, 1 + (uint64_t)k);
        double a = w->qd[c] > 0 ? (double)w->pd[c] / w->qd[c] : (w->pd[c] > 0 ? 1.0 : 0.0);
        if (u < a) {
            acc = k;
            break;
        }
        double s = 0; /* residual: norm(max(0, p - q)) */
        for (int i = 0; i < n; i++) {
            float r = w->pd[w->ids[i]] - w->qd[w->ids[i]];
            w->pd[w->ids[i]] = r > 0 ? r : 0;
            s += w->pd[w->ids[i]];
        }
        if (s <= 0) { /* p <= q everywhere: p == q on the support; fall back to p */
            for (int i = 0; i < n; i++)
                w->pd[w->ids[i]] = w->probs[i];
        } else { /* the next candidate is tested against the normalised residual */
            for (int i = 0; i < n; i++)
                w->pd[w->ids[i]] = (float)(w->pd[w->ids[i]] / s);
        }
    }
    if (acc < 0)
        *x = draw(w->ids, n, w->pd, sample_rng_uniform(sp->seed, pos, 0));
    for (int i = 0; i < n; i++)
        w->pd[w->ids[i]] = 0;
    for (int i = 0; i < nq; i++)
        w->qd[qt[i]] = 0;
    return acc;
}

/* Room for a batch of n entries (pre chain + tree). */
static sd_err work_reserve(verify_work *w, int n)
{
    if (n <= w->cap)
        return SD_OK;
    size_t c = (size_t)w->cap;
    while (c < (size_t)n)
        c *= 2;
    int32_t *tok = realloc(w->tok, sizeof(int32_t) * c);
    if (tok)
        w->tok = tok;
    int *par = tok ? realloc(w->parent, sizeof(int) * c) : NULL;
    if (par)
        w->parent = par;
    int *out = par ? realloc(w->out, sizeof(int) * c) : NULL;
    if (out)
        w->out = out;
    int *bp = out ? realloc(w->bpath, sizeof(int) * c) : NULL;
    if (bp)
        w->bpath = bp;
    if (!bp)
        return sd_fail(SD_ENOMEM, "verify: cannot allocate a batch of %d positions", n);
    for (size_t i = (size_t)w->cap; i < c; i++)
        w->out[i] = (int)i;
    w->cap = (int)c;
    return SD_OK;
}

/* The walk from the root over a verified tree's logits (logits row 0 = the root's parent, row
 * i + 1 = node i). base is the position of the token the tree hangs under. */
static void walk(verify_work *w, const tree *t, verify_mode mode, const sample_params *sp,
                 uint64_t base, verify_result *res)
{
    int node = -1; /* tree index; -1 = the token the tree hangs under */
    res->n_accept = 0;
    for (;;) {
        const float *lg = w->logits + (size_t)(node + 1) * w->V;
        /* the token drawn here goes to position base + depth(node) + 1 */
        uint64_t pos = base + (uint64_t)(node < 0 ? 0 : t->depth[node] + 1) + 1;
        int nk = tree_children(t, node, w->kids, w->max_nodes);
        int32_t x = -1;
        int next = -1;
        if (mode == VERIFY_SPECINFER && sp->temp > 0) {
            int k = specinfer_step(w, t, node, lg, sp, pos, w->kids, nk, &x);
            next = k >= 0 ? w->kids[k] : -1;
        } else {
            x = sample_token(w->sw, lg, w->V, sp, pos);
            for (int k = 0; k < nk && next < 0; k++)
                if (t->tok[w->kids[k]] == x)
                    next = w->kids[k];
        }
        if (next < 0) {
            res->next = x;
            break;
        }
        res->path[res->n_accept++] = next;
        node = next;
    }
}

static sd_err job_fail(verify_job *j, sd_err e)
{
    j->err = e;
    snprintf(j->errmsg, sizeof j->errmsg, "%s", sd_errmsg());
    return e;
}

/* Everything about one job that can be wrong, checked before any compute; fills the job's batch
 * in w. jobs[0..idx) are the jobs before it (a cache or work area used twice is an error of the
 * later job). */
static sd_err check_job(const model *m, verify_job *jobs, int idx)
{
    verify_job *j = &jobs[idx];
    const model_config *c = model_cfg(m);
    int V = c->n_vocab;
    if (!j->kv || (j->t && (!j->w || !j->res || !j->sp)) || (j->n_pre > 0 && !j->pre))
        return sd_fail(SD_EINVAL, "verify: job %d lacks a kv cache, work area, result or params",
                       idx);
    if (j->kv->n_layer != c->n_layer || j->kv->n_head != c->n_head_kv || j->kv->dh != c->head_dim)
        return sd_fail(SD_EINVAL, "verify: kv cache shaped for another model");
    if (j->t && j->w->V != V)
        return sd_fail(SD_EINVAL, "verify: work area sized for a vocabulary of %d, model has %d",
                       j->w->V, V);
    /* a prefill-only job reads nothing of w: only jobs with a tree need their own */
    for (int u = 0; u < idx; u++) {
        if (jobs[u].err)
            continue;
        if (jobs[u].kv == j->kv)
            return sd_fail(SD_EINVAL, "verify: job %d uses the kv cache of job %d", idx, u);
        if (j->t && jobs[u].t && jobs[u].w == j->w)
            return sd_fail(SD_EINVAL, "verify: job %d uses the work area of job %d", idx, u);
    }
    if (j->kv->n_pending)
        return sd_fail(SD_EINVAL, "verify: the KV cache has pending nodes");
    if (j->n_pre < 0 || (j->t && j->n_pre == 0))
        return sd_fail(SD_EINVAL, "verify: %d tokens before the tree; the tree needs its parent",
                       j->n_pre);
    for (int i = 0; i < j->n_pre; i++)
        if (j->pre[i] < 0 || j->pre[i] >= V)
            return sd_fail(SD_ERANGE,
                           "verify: token %d at index %d before the tree is outside the "
                           "vocabulary (0..%d)",
                           j->pre[i], i, V - 1);
    sd_err e;
    if (j->t) {
        if ((e = tree_validate(j->t, V, j->w->max_nodes)) || (e = sample_params_check(j->sp)))
            return e;
        if (j->mode != VERIFY_SAMPLE && j->mode != VERIFY_SPECINFER)
            return sd_fail(SD_EINVAL, "verify: mode %d unknown", (int)j->mode);
    }
    int n = j->n_pre + (j->t ? j->t->n : 0);
    if ((long)j->kv->n_committed + n > j->kv->n_ctx)
        return sd_fail(SD_ERANGE,
                       "verify: %d committed + %d new positions exceed the context of %d",
                       j->kv->n_committed, n, j->kv->n_ctx);
    if (j->t) { /* the batch: pre as a chain, then the tree under pre[n_pre - 1] */
        if ((e = work_reserve(j->w, n)))
            return e;
        verify_work *w = j->w;
        for (int i = 0; i < j->n_pre; i++) {
            w->tok[i] = j->pre[i];
            w->parent[i] = i - 1;
        }
        for (int i = 0; i < j->t->n; i++) {
            w->tok[j->n_pre + i] = j->t->tok[i];
            w->parent[j->n_pre + i] = j->t->parent[i] + j->n_pre;
        }
    }
    return SD_OK;
}

sd_err verify_batch(model *m, model_run *r, verify_job *jobs, int n)
{
    if (n < 0 || (n > 0 && !jobs))
        return sd_fail(SD_EINVAL, "verify: %d jobs", n);
    /* a worker's usual batch fits on the stack: no allocation per step */
    model_seq seq_buf[32], *seqs = seq_buf;
    int which_buf[32], *which = which_buf;
    if (n > 32) {
        seqs = malloc(sizeof *seqs * (size_t)n);
        which = malloc(sizeof(int) * (size_t)n);
        if (!seqs || !which) {
            free(seqs);
            free(which);
            return sd_fail(SD_ENOMEM, "verify: cannot allocate a batch of %d jobs", n);
        }
    }
    sd_err ret = SD_OK;
    int ns = 0;
    for (int i = 0; i < n; i++) {
        verify_job *j = &jobs[i];
        j->err = SD_OK;
        j->errmsg[0] = 0;
        if (j->t && j->res)
            j->res->n_accept = 0;
        sd_err e = check_job(m, jobs, i);
        if (e) {
            job_fail(j, e);
            if (e == SD_ENOMEM && !ret)
                ret = e;
            continue;
        }
        if (j->n_pre == 0) /* nothing to compute or commit */
            continue;
        int T = j->n_pre + (j->t ? j->t->n : 0);
        if (j->t)
            seqs[ns] =
                (model_seq){j->kv,       j->w->tok,   j->w->parent, T, j->w->out + j->n_pre - 1,
                            j->t->n + 1, j->w->logits};
        else /* prefill only: the chain as given, no logits */
            seqs[ns] = (model_seq){j->kv, j->pre, NULL, T, NULL, 0, NULL};
        which[ns++] = i;
    }
    sd_err e = ns ? model_forward_multi(m, r, seqs, ns) : SD_OK;
    for (int k = 0; k < ns; k++) {
        verify_job *j = &jobs[which[k]];
        if (e) { /* every check passed, so this is the batch's failure (memory), not the job's */
            job_fail(j, e);
            continue;
        }
        sd_err je;
        if (!j->t) {
            je = kv_commit_all(j->kv);
        } else {
            verify_work *w = j->w;
            /* the tree hangs under pre[n_pre - 1], at position n_committed + n_pre - 1 */
            walk(w, j->t, j->mode, j->sp, (uint64_t)j->kv->n_committed + (uint64_t)j->n_pre - 1,
                 j->res);
            for (int i = 0; i < j->n_pre; i++)
                w->bpath[i] = i;
            for (int i = 0; i < j->res->n_accept; i++)
                w->bpath[j->n_pre + i] = j->res->path[i] + j->n_pre;
            je = kv_commit_path(j->kv, w->bpath, j->n_pre + j->res->n_accept);
        }
        if (je) { /* cannot happen for a checked job: the batch was built as a chain/tree */
            job_fail(j, je);
            if (!ret)
                ret = je;
        }
    }
    if (e && !ret)
        ret = e;
    if (seqs != seq_buf) {
        free(seqs);
        free(which);
    }
    return ret;
}

sd_err verify_tree(model *m, model_run *r, kv_cache *kv, verify_work *w, int32_t last,
                   const tree *t, verify_mode mode, const sample_params *sp, verify_result *res)
{
    verify_job j = {
        .kv = kv, .w = w, .pre = &last, .n_pre = 1, .t = t, .mode = mode, .sp = sp, .res = res};
    res->n_accept = 0;
    if (!t)
        return sd_fail(SD_EINVAL, "verify: no tree");
    sd_err e = verify_batch(m, r, &j, 1);
    if (j.err) /* the job's own message, whatever ran after it */
        return sd_fail(j.err, "%s", j.errmsg);
    return e;
}
