#include "verify.h"

#include <stdlib.h>
#include <string.h>

struct verify_work {
    int V, max_nodes;
    float *logits; /* [max_nodes + 1][V] */
    int32_t *tok;  /* [max_nodes + 1] batch tokens */
    int *parent;   /* [max_nodes + 1] batch parents */
    int *out;      /* [max_nodes + 1] 0, 1, 2, ... */
    int *kids;     /* [max_nodes] */
    int *bpath;    /* [max_nodes + 1] */
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

sd_err verify_tree(model *m, model_run *r, kv_cache *kv, verify_work *w, int32_t last,
                   const tree *t, verify_mode mode, const sample_params *sp, verify_result *res)
{
    res->n_accept = 0;
    if (kv->n_pending)
        return sd_fail(SD_EINVAL, "verify: the KV cache has pending nodes");
    sd_err e = tree_validate(t, w->V, w->max_nodes);
    if (e)
        return e;
    int T = t->n + 1;
    w->tok[0] = last;
    w->parent[0] = -1;
    for (int i = 0; i < t->n; i++) {
        w->tok[i + 1] = t->tok[i];
        w->parent[i + 1] = t->parent[i] + 1; /* tree roots hang off `last` (batch index 0) */
    }
    e = model_forward(m, r, kv, w->tok, w->parent, T, w->out, T, w->logits);
    if (e)
        return e;
    int node = -1; /* tree index; -1 = last */
    uint64_t base = (uint64_t)kv->n_committed;
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
    w->bpath[0] = 0;
    for (int i = 0; i < res->n_accept; i++)
        w->bpath[i + 1] = res->path[i] + 1;
    return kv_commit_path(kv, w->bpath, res->n_accept + 1);
}
