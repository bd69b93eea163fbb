/* tree: a token tree proposed by a drafter and verified by the target (DESIGN.md §3).
 *
 * Nodes are in topological order: parent[i] < i, and parent -1 means "child of the last
 * committed token". Each node carries its token id, depth, and optionally the sparse draft
 * distribution q its *children* were drawn from (SpecInfer-style verification needs it; the
 * default verification does not). A tree received from outside is checked with tree_validate
 * before any use. */
#ifndef SD_TREE_H
#define SD_TREE_H

#include <stdint.h>

#include "../common/sd_err.h"

typedef struct {
    int n, cap;
    int32_t *tok; /* [cap] */
    int *parent;  /* [cap] */
    int *depth;   /* [cap] */
    float *logp;  /* [cap] cumulative draft log-probability of the root-to-node path */
    /* Sparse draft distribution over the children of each node and of the root (index 0 is the
     * root, node i is i + 1): entries q_off[i] .. q_off[i+1]-1 of q_tok / q_p. Empty when the
     * drafter did not record one. */
    int q_cap, q_n;
    int *q_off; /* [cap + 2] */
    int32_t *q_tok;
    float *q_p;
} tree;

/* Static shapes a drafter grows (parsed from --tree). */
typedef enum { TREE_CHAIN = 1, TREE_TOPK = 2, TREE_DYNAMIC = 3 } tree_kind;

#define TREE_MAX_DEPTH 32

typedef struct {
    tree_kind kind;
    int depth;                  /* chain: K nodes; topk: number of levels */
    int branch[TREE_MAX_DEPTH]; /* topk: children per node at each depth */
    int budget;                 /* node budget (dynamic; for others the shape's size) */
} tree_shape;

/* Parse "chain:K", "topk:B1,B2,..." or "dynamic:NODES" (bounds: 1 <= nodes <= max_nodes). */
sd_err tree_shape_parse(tree_shape *s, const char *spec, int max_nodes);
/* The shape a drafter grows for a node budget (>= 1): at most budget nodes, a chain no deeper
 * (what the drafter grows past the budget would never be verified). A proposal can still exceed
 * it (topk levels are grown whole): keep its first budget nodes, a topological prefix. */
tree_shape tree_shape_cut(const tree_shape *s, int budget);

sd_err tree_init(tree *t, int cap, int q_cap);
void tree_free(tree *t);
void tree_clear(tree *t);
/* Append a node; returns its index or -1 when full / bad parent. */
int tree_add(tree *t, int parent, int32_t tok, float logp);
/* Record the draft distribution over node `node`'s children (node -1 = the root). Must be called
 * in node order (root first) once per node, after all earlier nodes'. */
sd_err tree_set_q(tree *t, int node, const int32_t *toks, const float *p, int n);
/* Entries of the q recorded for `node` (-1 = root); 0 when none. */
int tree_q(const tree *t, int node, const int32_t **toks, const float **p);

/* Check a tree from outside: size within max_nodes, parents topological, tokens < n_vocab, depth
 * consistent, q entries (if any) in range and finite. The error names the offending node. */
sd_err tree_validate(const tree *t, int n_vocab, int max_nodes);

/* Children of `node` (-1 = root), in index order, into out; returns how many (<= cap). */
int tree_children(const tree *t, int node, int *out, int cap);

#endif
