/* adapt: how much to speculate, decided per session from measurements (docs/speculation.md,
 * "How much to speculate").
 *
 * Pure logic: no model, no drafter, no clock. The caller measures and reports each step
 * (adapt_observe) and asks before the next one (adapt_nodes). The same controller runs inside
 * spec_generate (one process) and, per session, in the coordinator's sequencer.
 *
 * What it keeps:
 *   - acceptance by depth, as exponentially decayed counts (one decay per observed walk, so it
 *     follows a drafter whose quality changes): reach[d] walks that accepted d nodes, tried[d]
 *     of those whose node at depth d-1 (or the root) had children, took[d] of those that
 *     accepted one. tried/took are spec_stats' counters; reach adds the case "the drafter
 *     proposed nothing there". Each depth's estimate is shrunk towards the one above it (a
 *     depth never measured is assumed as good as the last measured one, which is what lets a
 *     budget grow one level past what has been seen);
 *   - the cost of a verify forward of T positions and of a draft call for a budget of b nodes,
 *     as robust EWMAs per size bucket (each T up to 16, then powers of two), interpolated
 *     between measured buckets;
 *   - how often a draft call proposes anything, how full proposals are relative to the budget
 *     and (dynamic trees) how many nodes a level holds.
 *
 * adapt_nodes picks the budget b in [0, max_nodes] that maximises the modelled committed
 * tokens per second
 *     rate(b) = (1 + f·E(b)) / ((1 - f)·c(1) + f·c(1 + fill·b) + draft(b)),   rate(0) = 1/c(1)
 * (f: share of draft calls that propose something; E(b): expected accepted tokens of a
 * non-empty proposal under budget b, from the per-depth acceptance and the shape — see
 * adapt.c), requiring b > 0 to beat b = 0 by min_gain · f (the margin is on the steps with a
 * proposal). At b = 0 it explores: every `interval` steps one step gets the smallest budget, where
 * interval is bounded below so that exploring costs at most explore_cost of the time (from the
 * measured costs) and doubles after each exploration that accepted nothing (an exploration that
 * proposed nothing is retried at once). More rules keep the measurements honest: the first step is
 * a plain decode (c(1) is measured first) and the first speculative one the smallest budget that
 * measures; after 8 walks, a budget whose forward would be larger than any measured (up to twice
 * the largest) is tried once when it would pay at the largest measured cost (so cheap big trees are
 * found); while speculating for a marginal gain (< 10 %) one step in 16 without a 1-position
 * measurement is a plain decode (so the cost every budget is compared with does not go stale), and
 * so is a step while the 1-position cost has few samples and a larger size fits no dearer (a cold
 * first forward); no budget below the smallest that measures anything is chosen. Leaving budget 0
 * takes twice min_gain (hysteresis against noise). */
#ifndef SD_ADAPT_H
#define SD_ADAPT_H

#include "../common/sd_err.h"
#include "tree.h"

#define ADAPT_MAX_DEPTH 64
#define ADAPT_NBUCKET 24 /* sizes 1..16 one bucket each, then 17..32, 33..64, ... 2^27 */

typedef enum {
    ADAPT_CHAIN = 1,  /* one node per depth */
    ADAPT_LEVELS = 2, /* width[d] nodes at depth d (a top-k shape), filled level by level */
    ADAPT_DYNAMIC = 3 /* best-first growth: a level holds the measured mean number of nodes */
} adapt_kind;

typedef struct {
    adapt_kind kind;
    int max_nodes;                /* budgets are 0..max_nodes (>= 1) */
    int n_levels;                 /* ADAPT_LEVELS: levels in width[] */
    int width[ADAPT_MAX_DEPTH];   /* ADAPT_LEVELS: nodes at each depth of the full shape */
    double prior_accept;          /* acceptance assumed before anything is measured (0.5) */
    double prior_weight;          /* walks that prior is worth (1) */
    double decay;                 /* weight of the past per observed walk (0.93: ~14 walks) */
    double cost_alpha;            /* EWMA weight of a new cost sample (0.1) */
    double prior_slope;           /* unmeasured c(T)/c(1) = 1 + prior_slope·(T - 1) (0.1) */
    double min_gain;              /* b > 0 beats b = 0 by this on proposing steps (0.02) */
    double explore_cost;          /* exploring costs at most this share of the time (0.02) */
    int explore_min, explore_max; /* steps between explorations (8, 256) */
    double inflight_min_p;        /* adapt_inflight: a chunk goes out only when at least this
                                     likely to be used (0.2) */
} adapt_config;

#define ADAPT_FIRST 5 /* a bucket's first samples, whose median is its estimate until then */

typedef struct {
    double n, x, y; /* samples (saturating), EWMA of size, robust EWMA of seconds */
    double first[ADAPT_FIRST];
    double ref; /* verify: the 1-position estimate when y was last updated (0: none) */
} adapt_bucket;

typedef struct {
    adapt_bucket b[ADAPT_NBUCKET];
    double fit[ADAPT_NBUCKET]; /* the buckets' costs made non-decreasing in size (see adapt.c) */
} adapt_curve;

/* One step, as the caller saw it. */
typedef struct {
    int budget;   /* what adapt_nodes returned for it */
    int n_nodes;  /* nodes verified (after cutting to the budget) */
    int n_levels; /* levels of the verified tree: its deepest node's depth + 1 (0 if empty) */
    /* The verification walk: depths 0..n_tried-1 reached a node with children (the root is
     * depth 0), depths 0..n_took-1 accepted one; n_took <= n_tried <= n_took + 1. */
    int n_tried, n_took;
    double t_draft;  /* seconds in the drafter; < 0: not measured (0 is a real 0) */
    double t_verify; /* seconds of the verify forward over n_nodes + 1 positions; < 0: unknown */
} adapt_step;

typedef struct {
    long steps, zero_steps, explore_steps, explore_hits;
} adapt_stats;

/* The controller's state. A plain struct so a session can embed it; only adapt_* touch it. */
typedef struct {
    adapt_config c;
    double reach[ADAPT_MAX_DEPTH + 1], tried[ADAPT_MAX_DEPTH + 1], took[ADAPT_MAX_DEPTH + 1];
    adapt_curve verify, draft;
    double f_propose, fill, level_width;
    int idle;         /* steps at budget 0 since the last speculative step */
    int backoff;      /* exploration interval before the cost bound */
    int last_budget;  /* what adapt_nodes returned last */
    int last_explore; /* the last budget was an exploration */
    int last_probe;   /* the last budget probed a size never measured */
    int speculating;  /* the last decision (not an exploration) was b > 0 */
    int last_refresh; /* the last 0 only re-measured the 1-position cost */
    int since_c1;     /* steps since a 1-position forward was measured */
    long walks;       /* verification walks over non-empty proposals observed */
    adapt_stats st;
} adapt;

/* Defaults (values in parentheses above) for a chain of up to max_nodes nodes. */
void adapt_config_defaults(adapt_config *c, int max_nodes);
/* Set kind/levels from a tree shape: chain, top-k (its level widths), dynamic. max_nodes is
 * min(the shape's size, max_nodes). */
void adapt_config_shape(adapt_config *c, const tree_shape *s, int max_nodes);

/* SD_EINVAL for a config out of range (the message names the field). */
sd_err adapt_init(adapt *a, const adapt_config *c);

/* The node budget for the next step (0: do not draft, plain decode). Call once per step: it
 * advances the exploration schedule. */
int adapt_nodes(adapt *a);

/* Report the step that followed the last adapt_nodes. Out-of-range fields are clamped. */
void adapt_observe(adapt *a, const adapt_step *s);

/* Chunks worth having in flight (speculation parallelism, DSI), in 1..max_inflight:
 * ceil((c(T) + link_rtt) / draft(b)) — the chunks the drafter can produce while one is being
 * verified and its verdict travels back, DSI's SP degree with chunk_len × draft time = the
 * measured draft time of a chunk — at the current budget b, and no more than make chunk k+1
 * (rooted below chunk k's leaf) at least inflight_min_p likely to be used: P(leaf)^k >= min_p,
 * P(leaf) the modelled probability that a chunk is accepted to its deepest level. 1 at b = 0. */
int adapt_inflight(const adapt *a, int max_inflight, double link_rtt_seconds);

/* The model, for tests, benchmarks and logs. */
double adapt_accept(const adapt *a, int depth);    /* P(accept at depth d | reached d) */
double adapt_expected(const adapt *a, int budget); /* E(b) of a non-empty proposal */
double adapt_verify_cost(const adapt *a, double T);
double adapt_draft_cost(const adapt *a, double budget);
double adapt_rate(const adapt *a, int budget); /* modelled committed tokens per second */
const adapt_stats *adapt_get_stats(const adapt *a);

#endif
