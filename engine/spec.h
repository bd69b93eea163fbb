/* spec: speculative generation in one process — the loop every distributed mode runs in pieces.
 * Each step the drafter proposes a tree continuing the committed sequence, the target verifies
 * it in one forward (verify.h), and the accepted tokens plus the target's correction are
 * committed and streamed. Without a drafter it is plain target-only decoding (mode "ar") through
 * the same code. */
#ifndef SD_SPEC_H
#define SD_SPEC_H

#include <stdint.h>

#include "adapt.h"
#include "draft.h"
#include "model.h"
#include "sample.h"
#include "tree.h"
#include "verify.h"

typedef struct {
    model *target;
    draft *drafter; /* NULL: target-only */
    tree_shape shape;
    verify_mode vmode;
    sample_params sp;
    int n_predict;
    int max_nodes; /* tree size limit */
    /* 1: each step's tree is cut to the node budget of an adapt.h controller fed with this run's
     * measured draft and verify times and acceptance by depth (0 = a plain decode step, no draft
     * call) — what specd generate and bench_spec do unless told otherwise; 0: the shape as given
     * every step. The output is the same either way. */
    int adaptive;
    int n_ctx;          /* 0: prompt + n_predict + tree */
    const int32_t *eog; /* tokens that end generation (not emitted) */
    int n_eog;
    /* Called for every committed token in order; nonzero stops generation. */
    int (*on_token)(void *ud, int32_t tok);
    void *ud;
} spec_config;

typedef struct {
    int n_prompt, n_gen, n_steps;
    double t_prefill, t_draft, t_verify, t_total;
    /* the same spans in CPU seconds of the whole process (all threads): on a machine shared with
     * other jobs, time spent waiting for a core does not count here */
    double c_prefill, c_total;
    long proposed;                                    /* tree nodes proposed */
    long accepted;                                    /* tree nodes accepted */
    long tried[TREE_MAX_DEPTH], took[TREE_MAX_DEPTH]; /* per depth: walks that reached a node
                                                         with children / that accepted one */
    /* adaptive runs: steps with budget 0 (no draft call), of those explorations of a small
     * budget, and the sum of the budgets given */
    long zero_steps, explore_steps, budget_sum;
} spec_stats;

/* Generate from prompt[0..n). The drafter (if any) must be fresh or rolled back to empty. */
sd_err spec_generate(const spec_config *c, const int32_t *prompt, int n, spec_stats *st);

/* Decode tokens per second, mean accepted length, acceptance per depth, draft/verify time. */
void spec_stats_print(const spec_stats *st, const char *label);

#endif
