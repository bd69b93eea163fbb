#include "tree.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sd_err tree_shape_parse(tree_shape *s, const char *spec, int max_nodes)
{
    memset(s, 0, sizeof *s);
    char *end;
    if (!strncmp(spec, "chain:", 6)) {
        long k = strtol(spec + 6, &end, 10);
        if (end == spec + 6 || *end || k < 1 || k > max_nodes || k > TREE_MAX_DEPTH)
            return sd_fail(SD_EINVAL, "tree '%s': chain length must be 1..%d", spec,
                           max_nodes < TREE_MAX_DEPTH ? max_nodes : TREE_MAX_DEPTH);
        s->kind = TREE_CHAIN;
        s->depth = (int)k;
        s->budget = (int)k;
        return SD_OK;
    }
    if (!strncmp(spec, "topk:", 5)) {
        const char *p = spec + 5;
        long nodes = 0, level = 1;
        s->kind = TREE_TOPK;
        while (*p) {
            long b = strtol(p, &end, 10);
            if (end == p || b < 1 || b > 64 || s->depth >= TREE_MAX_DEPTH)
                return sd_fail(SD_EINVAL,
                               "tree '%s': branching factors must be 1..64, at most "
                               "%d levels",
                               spec, TREE_MAX_DEPTH);
            s->branch[s->depth++] = (int)b;
            level *= b;
            nodes += level;
            if (nodes > max_nodes)
                return sd_fail(SD_EINVAL, "tree '%s' has more than %d nodes", spec, max_nodes);
            if (*end == ',')
                end++;
            else if (*end)
                return sd_fail(SD_EINVAL, "tree '%s': expected topk:B1,B2,...", spec);
            p = end;
        }
        if (!s->depth)
            return sd_fail(SD_EINVAL, "tree '%s': expected topk:B1,B2,...", spec);
        s->budget = (int)nodes;
        return SD_OK;
    }
    if (!strncmp(spec, "dynamic:", 8)) {
        long k = strtol(spec + 8, &end, 10);
        if (end == spec + 8 || *end || k < 1 || k > max_nodes)
            return sd_fail(SD_EINVAL, "tree '%s': node budget must be 1..%d", spec, max_nodes);
        s->kind = TREE_DYNAMIC;
        s->budget = (int)k;
        s->depth = TREE_MAX_DEPTH;
        return SD_OK;
    }
    return sd_fail(SD_EINVAL, "tree '%s': expected chain:K, topk:B1,B2,... or dynamic:NODES", spec);
}

tree_shape tree_shape_cut(const tree_shape *s, int budget)
{
    tree_shape c = *s;
    if (c.budget > budget)
        c.budget = budget;
    if (c.kind == TREE_CHAIN && c.depth > budget)
        c.depth = budget;
    return c;
}

sd_err tree_init(tree *t, int cap, int q_cap)
{
    memset(t, 0, sizeof *t);
    if (cap <= 0 || q_cap < 0)
        return sd_fail(SD_EINVAL, "tree capacity %d", cap);
    t->cap = cap;
    t->q_cap = q_cap;
    t->tok = malloc(sizeof(int32_t) * (size_t)cap);
    t->parent = malloc(sizeof(int) * (size_t)cap);
    t->depth = malloc(sizeof(int) * (size_t)cap);
    t->logp = malloc(sizeof(float) * (size_t)cap);
    t->q_off = calloc((size_t)cap + 2, sizeof(int));
    t->q_tok = malloc(sizeof(int32_t) * (size_t)(q_cap ? q_cap : 1));
    t->q_p = malloc(sizeof(float) * (size_t)(q_cap ? q_cap : 1));
    if (!t->tok || !t->parent || !t->depth || !t->logp || !t->q_off || !t->q_tok || !t->q_p) {
        tree_free(t);
        return SD_ENOMEM;
    }
    return SD_OK;
}

void tree_free(tree *t)
{
    free(t->tok);
    free(t->parent);
    free(t->depth);
    free(t->logp);
    free(t->q_off);
    free(t->q_tok);
    free(t->q_p);
    memset(t, 0, sizeof *t);
}

void tree_clear(tree *t)
{
    t->n = 0;
    t->q_n = 0;
    t->q_off[0] = 0;
    t->q_off[1] = 0;
}

int tree_add(tree *t, int parent, int32_t tok, float logp)
{
    if (t->n >= t->cap || parent < -1 || parent >= t->n)
        return -1;
    int i = t->n++;
    t->tok[i] = tok;
    t->parent[i] = parent;
    t->depth[i] = parent < 0 ? 0 : t->depth[parent] + 1;
    t->logp[i] = logp;
    t->q_off[i + 2] = t->q_off[i + 1]; /* node i has no q until set */
    return i;
}

sd_err tree_set_q(tree *t, int node, const int32_t *toks, const float *p, int n)
{
    if (node < -1 || node >= t->n)
        return sd_fail(SD_EINVAL, "tree q: node %d of %d", node, t->n);
    int slot = node + 1;
    /* q entries are appended in node order: everything after this node must still be empty */
    if (t->q_off[slot] != t->q_n || t->q_n + n > t->q_cap)
        return sd_fail(SD_ERANGE, "tree q: out of order or capacity (%d + %d > %d)", t->q_n, n,
                       t->q_cap);
    memcpy(t->q_tok + t->q_n, toks, sizeof(int32_t) * (size_t)n);
    memcpy(t->q_p + t->q_n, p, sizeof(float) * (size_t)n);
    t->q_n += n;
    for (int i = slot + 1; i <= t->n + 1; i++)
        t->q_off[i] = t->q_n;
    return SD_OK;
}

int tree_q(const tree *t, int node, const int32_t **toks, const float **p)
{
    int s = node + 1;
    *toks = t->q_tok + t->q_off[s];
    *p = t->q_p + t->q_off[s];
    return t->q_off[s + 1] - t->q_off[s];
}

sd_err tree_validate(const tree *t, int n_vocab, int max_nodes)
{
    if (t->n < 0 || t->n > max_nodes || t->n > t->cap)
        return sd_fail(SD_ERANGE, "tree of %d nodes exceeds the limit of %d", t->n, max_nodes);
    for (int i = 0; i < t->n; i++) {
        if (t->parent[i] < -1 || t->parent[i] >= i)
            return sd_fail(SD_EINVAL, "tree node %d: parent %d is not an earlier node or -1", i,
                           t->parent[i]);
        if (t->tok[i] < 0 || t->tok[i] >= n_vocab)
            return sd_fail(SD_ERANGE, "tree node %d: token %d is outside the vocabulary (0..%d)", i,
                           t->tok[i], n_vocab - 1);
        int d = t->parent[i] < 0 ? 0 : t->depth[t->parent[i]] + 1;
        if (t->depth[i] != d)
            return sd_fail(SD_EINVAL, "tree node %d: depth %d, expected %d", i, t->depth[i], d);
    }
    if (t->q_off[0] != 0)
        return sd_fail(SD_EINVAL, "tree q offsets do not start at 0");
    for (int s = 0; s <= t->n; s++) {
        if (t->q_off[s + 1] < t->q_off[s] || t->q_off[s + 1] > t->q_n || t->q_n > t->q_cap)
            return sd_fail(SD_EINVAL, "tree q offsets of node %d are not increasing", s - 1);
        for (int j = t->q_off[s]; j < t->q_off[s + 1]; j++)
            if (t->q_tok[j] < 0 || t->q_tok[j] >= n_vocab || !isfinite(t->q_p[j]) ||
                t->q_p[j] < 0 || t->q_p[j] > 1)
                return sd_fail(SD_ERANGE,
                               "tree node %d: draft probability entry %d (token %d, "
                               "p %g) out of range",
                               s - 1, j - t->q_off[s], t->q_tok[j], t->q_p[j]);
    }
    return SD_OK;
}

int tree_children(const tree *t, int node, int *out, int cap)
{
    int n = 0;
    for (int i = node + 1; i < t->n; i++)
        if (t->parent[i] == node && n < cap)
            out[n++] = i;
    return n;
}
