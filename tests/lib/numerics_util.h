/* numerics_util: shared by test_numerics.c and test_numerics_model.c — the CPU levels this
 * machine has, and one fixed workload (decode, prefill, 64-node tree) whose logits are compared
 * bitwise across levels and thread counts. */
#ifndef SD_NUMERICS_UTIL_H
#define SD_NUMERICS_UTIL_H

#include <stdint.h>

#include "../../engine/model.h"

typedef struct {
    int n;
    unsigned flags[3]; /* KERN_CPU_LEVEL(...) */
    const char *name[3];
} nu_levels;

/* The levels this CPU runs (portable first: the oracle); prints which are compared and why any
 * is skipped, tagged with `tag`. */
void nu_levels_init(nu_levels *lv, const char *tag);

typedef struct {
    int n_decode;      /* token-by-token decode from an empty cache, logits of each */
    int n_prefill;     /* one prefill from an empty cache ... */
    int prefill_every; /* ... with the logits of every k-th row (and the last) */
    int tree_prefix;   /* committed tokens under the tree */
    int tree_T;        /* random tree of this many nodes (<= 64) ... */
    int tree_every;    /* ... with the logits of every k-th node */
    uint64_t seed;     /* tokens and tree shape */
} nu_work;

typedef struct {
    float *logits;
    int rows, V;
} nu_result;

void nu_run(model *m, const nu_work *w, nu_result *out);
void nu_result_free(nu_result *r);
/* Fails the test, naming the first differing row and element, unless a and b are bitwise equal. */
void nu_expect_equal(const nu_result *a, const nu_result *b, const char *what, const char *mode,
                     const char *level, int threads);

#endif
