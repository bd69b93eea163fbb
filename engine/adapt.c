#include "adapt.h"

#include <math.h>
#include <string.h>

/* ---- cost curves ---------------------------------------------------------------------------
 * One robust EWMA per size bucket. Buckets rather than one linear fit because the real curve is
 * not linear: on the CPU a 4-node forward costs ~1.2x a 1-node one, and above ~8 nodes every node
 * adds its full share (docs/performance.md). Between measured buckets the curve is interpolated;
 * beyond them it is extended with the slope of the last two (never negative) or, with a single
 * measured bucket, with the prior slope (verify) / proportionally to size (draft). */

enum { CURVE_VERIFY, CURVE_DRAFT };

static int bucket_of(int size)
{
    if (size <= 16)
        return size < 1 ? 0 : size - 1;
    int k = 0;
    while ((1L << k) < size)
        k++;
    int b = 16 + (k - 5); /* 17..32 -> 16, 33..64 -> 17, ... */
    return b < ADAPT_NBUCKET ? b : ADAPT_NBUCKET - 1;
}

/* track: the verify curve. Each bucket remembers the 1-position estimate current when it was last
 * updated, and is read scaled by how that estimate has moved since: the shared machine's speed
 * drifts (±20 % between runs), and while the budget sits at 0 only 1-position forwards are
 * measured — without this, a stale 2-position bucket against a drifting 1-position one would
 * flip marginal decisions. */
static void curve_add(adapt_curve *cv, int size, double secs, double alpha, int track)
{
    adapt_bucket *b = &cv->b[bucket_of(size)];
    if (b->n < ADAPT_FIRST) {
        /* Timing noise here is one-sided and heavy (another tenant stalls a forward 10-50x), so
         * a new bucket's estimate is the median of its first samples — the smaller of two — not
         * their mean: one stall among them does not count. */
        int k = (int)b->n;
        b->first[k] = secs;
        for (int i = k; i > 0 && b->first[i - 1] > b->first[i]; i--) {
            double t = b->first[i];
            b->first[i] = b->first[i - 1];
            b->first[i - 1] = t;
        }
        b->y = k == 1 ? b->first[0] : b->first[k / 2];
        b->x += (size - b->x) / (k + 1);
        b->n++;
    } else {
        /* then an EWMA whose samples are clipped to a factor 2 of it: a stall moves it by at
         * most alpha, a real change of speed still gets through at up to (1 + alpha)x a sample */
        if (secs > 2 * b->y)
            secs = 2 * b->y;
        if (secs < b->y / 2)
            secs = b->y / 2;
        b->x += alpha * (size - b->x);
        b->y += alpha * (secs - b->y);
        if (b->n < 1e9)
            b->n++;
    }
    /* (a 1-position estimate of fewer than ADAPT_FIRST samples may rest on a cold first forward:
     * scaled by it, every bucket measured before looked 3x cheaper once it was re-measured) */
    if (track)
        b->ref = cv->b[0].n >= ADAPT_FIRST ? cv->b[0].y : 0;
}

static double bucket_y(const adapt_curve *cv, const adapt_bucket *b)
{
    return b->ref > 0 && cv->b[0].n > 0 ? b->y * cv->b[0].y / b->ref : b->y;
}

/* More positions never cost less, but noisy buckets can say so — one sample taken while another
 * tenant held the CPU can make a 1-node forward look dearer than a 2-node one, and a budget
 * would then stick where the curve dips. So the curve is read through the weighted isotonic
 * (non-decreasing) regression of the buckets (pool adjacent violators, each bucket weighted by
 * its samples up to 1/alpha): a violating pair is replaced by its weighted mean, a bucket with
 * one sample against one with many moving to the latter. Refit after every sample. */
static void curve_fit(adapt_curve *cv, double alpha)
{
    double val[ADAPT_NBUCKET], w[ADAPT_NBUCKET];
    int len[ADAPT_NBUCKET], idx[ADAPT_NBUCKET], nb = 0, np = 0;
    for (int i = 0; i < ADAPT_NBUCKET; i++)
        if (cv->b[i].n > 0)
            idx[np++] = i;
    for (int k = 0; k < np; k++) {
        const adapt_bucket *b = &cv->b[idx[k]];
        val[nb] = bucket_y(cv, b);
        w[nb] = b->n < 1 / alpha ? b->n : 1 / alpha;
        if (b->n >= ADAPT_FIRST && w[nb] < ADAPT_FIRST)
            w[nb] = ADAPT_FIRST;
        len[nb++] = 1;
        while (nb > 1 && val[nb - 2] > val[nb - 1]) {
            double ws = w[nb - 2] + w[nb - 1];
            val[nb - 2] = (val[nb - 2] * w[nb - 2] + val[nb - 1] * w[nb - 1]) / ws;
            w[nb - 2] = ws;
            len[nb - 2] += len[nb - 1];
            nb--;
        }
    }
    for (int g = 0, k = 0; g < nb; g++)
        for (int j = 0; j < len[g]; j++)
            cv->fit[idx[k++]] = val[g];
}

static double prior_rel(double slope, double x)
{
    return 1 + slope * (x > 1 ? x - 1 : 0);
}

/* optimistic: beyond the largest measured size the curve stays flat (used once per bucket to
 * probe a size never measured, see adapt_nodes) */
static double curve_at(const adapt_curve *cv, double x, int kind, double slope0, int optimistic)
{
    const adapt_bucket *lo = NULL, *lo2 = NULL, *hi = NULL;
    double ylo = 0, ylo2 = 0, yhi = 0;
    for (int i = 0; i < ADAPT_NBUCKET; i++) {
        const adapt_bucket *b = &cv->b[i];
        if (b->n <= 0)
            continue;
        if (b->x <= x) {
            lo2 = lo;
            ylo2 = ylo;
            lo = b;
            ylo = cv->fit[i];
        } else if (!hi) {
            hi = b;
            yhi = cv->fit[i];
        }
    }
    if (lo && hi) /* interpolate */
        return ylo + (yhi - ylo) * (x - lo->x) / (hi->x - lo->x);
    if (lo) {
        if (optimistic)
            return ylo;
        if (lo2 && lo->x > lo2->x) {
            double s = (ylo - ylo2) / (lo->x - lo2->x);
            return ylo + (s > 0 ? s : 0) * (x - lo->x);
        }
        if (kind == CURVE_VERIFY)
            return ylo * prior_rel(slope0, x) / prior_rel(slope0, lo->x);
        return lo->x > 0 ? ylo * x / lo->x : ylo;
    }
    if (hi) {
        if (kind == CURVE_VERIFY)
            return yhi * prior_rel(slope0, x) / prior_rel(slope0, hi->x);
        return yhi * x / hi->x;
    }
    /* nothing measured: verify in units of a 1-position forward, drafting free — only ratios
     * matter to the decision, and the first step measures both */
    return kind == CURVE_VERIFY ? prior_rel(slope0, x) : 0;
}

/* ---- acceptance --------------------------------------------------------------------------- */

/* Depth 0 starts from prior_weight pseudo-walks at prior_accept (set in adapt_init), which decay
 * like real ones: a drafter that is never right drives it to 0 rather than to a floor of
 * prior/(window + prior), which with cheap nodes could still look worth a node. Deeper depths are
 * shrunk towards the depth above with prior_weight walks: never measured, a depth is as good as
 * the one above it. */
static double shrink(const adapt *a, int d, double above)
{
    if (d == 0)
        return a->reach[0] > 0 ? a->took[0] / a->reach[0] : a->c.prior_accept;
    double m = a->c.prior_weight;
    return (a->took[d] + m * above) / (a->reach[d] + m);
}

double adapt_accept(const adapt *a, int depth)
{
    if (depth >= ADAPT_MAX_DEPTH)
        depth = ADAPT_MAX_DEPTH - 1;
    double g = a->c.prior_accept;
    for (int d = 0; d <= depth; d++)
        g = shrink(a, d, g);
    return g;
}

/* Nodes at depth d in the model of the shape (0: no such level). */
static double level_width(const adapt *a, int d)
{
    switch (a->c.kind) {
    case ADAPT_CHAIN:
        return 1;
    case ADAPT_LEVELS:
        /* no wider than the shape allows, and no wider than the drafter fills it: a drafter
         * that finds one continuation proposes a chain whatever the shape */
        if (d >= a->c.n_levels)
            return 0;
        return a->level_width < a->c.width[d] ? a->level_width : a->c.width[d];
    default:
        return a->level_width;
    }
}

/* Walk the levels a budget of b nodes covers: E(b) (expected accepted tokens), the probability
 * of accepting down to the deepest covered level, and how many levels are covered entirely.
 *
 * The model: a budget fills the shape level by level (a top-k tree cut to a prefix of b nodes,
 * or a chain of b); level d, reached with probability P_d, is accepted with probability g_d
 * (the measured acceptance at depth d, which already includes the drafter's breadth there and
 * the chance it proposed nothing), scaled by the part of the level the budget covers — a
 * partial level keeps the drafter's best nodes first, so linear in the covered share is a
 * lower bound. E(b) = sum over covered levels of P_{d+1} = prod_{j<=d} g_j·cover_j. A dynamic
 * tree is modelled the same way with levels as wide as its recent proposals were on average
 * (nodes / levels), a best-first tree being roughly that many alternatives per depth; a top-k
 * level is as wide as that too, up to the shape's width (a drafter that finds a single
 * continuation proposes a chain under any shape). */
static double levels_walk(const adapt *a, int b, double *p_leaf, int *full)
{
    double e = 0, p = 1, g = a->c.prior_accept, used = 0;
    int nf = 0;
    for (int d = 0; used < b; d++) {
        double w = level_width(a, d);
        if (w <= 0)
            break;
        double cov = (b - used) / w;
        if (cov > 1)
            cov = 1;
        if (d < ADAPT_MAX_DEPTH)
            g = shrink(a, d, g);
        p *= g * cov;
        e += p;
        used += w;
        if (cov < 1)
            break;
        nf++;
    }
    if (p_leaf)
        *p_leaf = p;
    if (full)
        *full = nf;
    return e;
}

double adapt_expected(const adapt *a, int budget)
{
    return budget > 0 ? levels_walk(a, budget, NULL, NULL) : 0;
}

double adapt_verify_cost(const adapt *a, double T)
{
    return curve_at(&a->verify, T, CURVE_VERIFY, a->c.prior_slope, 0);
}

double adapt_draft_cost(const adapt *a, double budget)
{
    return budget > 0 ? curve_at(&a->draft, budget, CURVE_DRAFT, 0, 0) : 0;
}

static double rate_model(const adapt *a, int b, int optimistic)
{
    double c1 = adapt_verify_cost(a, 1);
    if (b <= 0)
        return c1 > 0 ? 1 / c1 : 0;
    double f = a->f_propose;
    double cv = curve_at(&a->verify, 1 + a->fill * b, CURVE_VERIFY, a->c.prior_slope, optimistic);
    double cost = (1 - f) * c1 + f * cv + adapt_draft_cost(a, b);
    return cost > 0 ? (1 + f * adapt_expected(a, b)) / cost : 0;
}

double adapt_rate(const adapt *a, int b)
{
    return rate_model(a, b, 0);
}

/* The largest verify size measured (0: none). */
static double max_measured(const adapt *a)
{
    for (int i = ADAPT_NBUCKET - 1; i >= 0; i--)
        if (a->verify.b[i].n > 0)
            return a->verify.b[i].x;
    return 0;
}

/* ---- configuration ------------------------------------------------------------------------ */

void adapt_config_defaults(adapt_config *c, int max_nodes)
{
    memset(c, 0, sizeof *c);
    c->kind = ADAPT_CHAIN;
    c->max_nodes = max_nodes;
    c->prior_accept = 0.5;
    c->prior_weight = 1;
    c->decay = 0.93;
    c->cost_alpha = 0.1;
    c->prior_slope = 0.1;
    c->min_gain = 0.02;
    c->explore_cost = 0.02;
    c->explore_min = 8;
    c->explore_max = 256;
    c->inflight_min_p = 0.2;
}

void adapt_config_shape(adapt_config *c, const tree_shape *s, int max_nodes)
{
    int size = s->budget;
    if (s->kind == TREE_TOPK) {
        c->kind = ADAPT_LEVELS;
        c->n_levels = s->depth < ADAPT_MAX_DEPTH ? s->depth : ADAPT_MAX_DEPTH;
        int w = 1;
        size = 0;
        for (int d = 0; d < c->n_levels; d++) {
            w *= s->branch[d];
            c->width[d] = w;
            size += w;
        }
    } else if (s->kind == TREE_DYNAMIC) {
        c->kind = ADAPT_DYNAMIC;
    } else {
        c->kind = ADAPT_CHAIN;
        size = s->depth;
    }
    c->max_nodes = size < max_nodes ? size : max_nodes;
}

sd_err adapt_init(adapt *a, const adapt_config *c)
{
    const char *bad = NULL;
    if (c->kind != ADAPT_CHAIN && c->kind != ADAPT_LEVELS && c->kind != ADAPT_DYNAMIC)
        bad = "kind";
    else if (c->max_nodes < 1 || c->max_nodes > (1 << 20))
        bad = "max_nodes (1..1048576)";
    else if (!(c->prior_accept > 0 && c->prior_accept < 1))
        bad = "prior_accept (0 < p < 1)";
    else if (!(c->prior_weight > 0 && c->prior_weight < 1e6))
        bad = "prior_weight (> 0)";
    else if (!(c->decay > 0 && c->decay <= 1))
        bad = "decay (0 < d <= 1)";
    else if (!(c->cost_alpha > 0 && c->cost_alpha <= 1))
        bad = "cost_alpha (0 < a <= 1)";
    else if (!(c->prior_slope >= 0 && c->prior_slope < 1e6))
        bad = "prior_slope (>= 0)";
    else if (!(c->min_gain >= 0 && c->min_gain < 10))
        bad = "min_gain (>= 0)";
    else if (!(c->explore_cost > 0 && c->explore_cost <= 1))
        bad = "explore_cost (0 < x <= 1)";
    else if (c->explore_min < 1 || c->explore_max < c->explore_min)
        bad = "explore_min/explore_max (1 <= min <= max)";
    else if (!(c->inflight_min_p >= 0 && c->inflight_min_p <= 1))
        bad = "inflight_min_p (0..1)";
    else if (c->kind == ADAPT_LEVELS) {
        if (c->n_levels < 1 || c->n_levels > ADAPT_MAX_DEPTH)
            bad = "n_levels (1..64)";
        for (int d = 0; !bad && d < c->n_levels; d++)
            if (c->width[d] < 1)
                bad = "width (>= 1 per level)";
    }
    if (bad)
        return sd_fail(SD_EINVAL, "adapt: bad %s", bad);
    memset(a, 0, sizeof *a);
    a->c = *c;
    a->f_propose = 1; /* optimistic until drafting is seen: the first steps measure it */
    a->fill = 1;
    a->level_width = 1.5;
    a->backoff = c->explore_min;
    a->reach[0] = a->tried[0] = c->prior_weight;
    a->took[0] = c->prior_weight * c->prior_accept;
    return SD_OK;
}

/* ---- decisions ---------------------------------------------------------------------------- */

/* The smallest budget that measures something: one node, or a top-k shape's first level as wide
 * as the drafter fills it (a partial level is not counted as a measurement). */
static int explore_budget(const adapt *a)
{
    int b = a->c.kind == ADAPT_LEVELS ? (int)ceil(level_width(a, 0)) : 1;
    return b < a->c.max_nodes ? b : a->c.max_nodes;
}

/* Steps at budget 0 between explorations: the backoff, but never so few that exploring (one step
 * with the exploration budget instead of 0, at worst all its nodes and a draft call) could cost
 * more than explore_cost of the time. */
static int explore_interval(const adapt *a)
{
    int e = explore_budget(a);
    double c1 = adapt_verify_cost(a, 1);
    double excess = adapt_verify_cost(a, 1 + e) + adapt_draft_cost(a, e) - c1;
    double floor = c1 > 0 ? ceil(excess / (a->c.explore_cost * c1)) : 0;
    if (!(floor < 1e6))
        floor = 1e6;
    return a->backoff > floor ? a->backoff : (int)floor;
}

#define REFRESH_EVERY 16
#define PROBE_WALKS 8 /* no size probes before this many walks: the prior is not evidence */

/* Candidate budgets: every size up to 32, then steps of 1/16 of the size — the rate is smooth
 * there and this keeps a decision at ~100 rate evaluations whatever max_nodes is. */
static int next_candidate(int b)
{
    return b < 32 ? b + 1 : b + b / 16;
}

int adapt_nodes(adapt *a)
{
    int best = 0;
    double r0 = adapt_rate(a, 0), rbest = 0;
    /* a budget smaller than the smallest that measures something would never be corrected */
    for (int b = explore_budget(a); b <= a->c.max_nodes; b = next_candidate(b)) {
        double r = adapt_rate(a, b);
        if (r > rbest) {
            rbest = r;
            best = b;
        }
    }
    /* Leaving budget 0 takes twice the margin: a decision that flips with every noisy sample
     * would pay the losing side half the time. The margin is on the steps the decision changes,
     * those with a proposal (share f): an n-gram drafter that matches one step in eight and then
     * gains 30 % on it gains ~4 % overall, all of it real — against the whole rate, that margin
     * would keep it at plain decoding. */
    double margin = a->c.min_gain * (a->speculating ? 1 : 2) * a->f_propose;
    if (best > 0 && !(rbest > r0 * (1 + margin)))
        best = 0;
    a->speculating = best > 0;
    a->last_probe = 0;
    a->last_refresh = 0;
    a->last_explore = 0;
    /* The 1-position cost is what every budget is compared with, and a drafter that always
     * proposes never measures it again: with a marginal gain (< 10 %), one step in
     * REFRESH_EVERY is a plain decode that does (costing < 1 % where it applies). The first step
     * of a session is one too: every other cost is judged against it. And while it rests on
     * few samples (< 2 ADAPT_FIRST), a larger size measured cheaper says they are stale: the
     * session's first forwards run cold (on the Xeon VM the first 3x its later cost, the next
     * ones settling over ~10 steps; in the cluster the first chunk also waited behind the
     * prefill), the fitted curve is flat up to that size and every node looks free — a
     * never-right drafter got 13 full trees in its first 15 steps. Such a step is a plain decode
     * too (at most 2 ADAPT_FIRST - 1 of them in a session; test_cold_start). */
    int c1_suspect = a->verify.b[0].n > 0 && a->verify.b[0].n < 2 * ADAPT_FIRST &&
                     a->since_c1 > 0 && a->verify.fit[0] < bucket_y(&a->verify, &a->verify.b[0]);
    if (best > 0 && ((a->since_c1 >= REFRESH_EVERY && rbest < r0 * 1.1) || a->verify.b[0].n == 0 ||
                     c1_suspect)) {
        a->last_refresh = 1;
        a->last_budget = 0;
        return 0;
    }
    /* Sizes beyond every measured one are costed with the prior slope, which could keep a
     * session from ever learning that big trees are cheap (a GPU, or a top-k shape whose next
     * level is a jump of several sizes). So: if a budget whose forward would be up to twice the
     * largest size measured would pay were it no dearer than that one, try the best such budget
     * once; its real cost is measured and decides from then on. Doubling bounds what probing
     * can waste, whatever max_nodes is. */
    double xm = max_measured(a), rprobe = rbest * (1 + a->c.min_gain);
    int probe = 0;
    for (int b = next_candidate(best);
         best > 0 && xm > 0 && a->walks >= PROBE_WALKS && b <= a->c.max_nodes;
         b = next_candidate(b)) {
        double T = 1 + a->fill * b;
        if (T > 2 * xm)
            break;
        if (T <= xm || a->verify.b[bucket_of((int)ceil(T))].n > 0)
            continue;
        double r = rate_model(a, b, 1);
        if (r > rprobe) {
            rprobe = r;
            probe = b;
        }
    }
    if (probe) {
        best = probe;
        a->last_probe = 1;
    }
    /* before the first walk the acceptance is only the prior: the first speculative step is the
     * smallest that measures, so a drafter that is never right costs one small tree, not a big
     * one (a good one grows from there a level per step) */
    if (best > 0 && a->walks == 0 && best > explore_budget(a))
        best = explore_budget(a);
    if (best > 0) {
        a->idle = 0;
    } else if (++a->idle >= explore_interval(a)) {
        a->idle = 0;
        a->last_explore = 1;
        best = explore_budget(a);
    }
    a->last_budget = best;
    return best;
}

/* Levels of depth < the returned count were entirely inside the step's budget: only their
 * outcomes measure the drafter (a deeper level was missing because of the cut). */
static int covered_levels(const adapt *a, const adapt_step *s)
{
    int n;
    if (a->c.kind == ADAPT_CHAIN) {
        n = s->budget;
    } else if (a->c.kind == ADAPT_LEVELS) {
        levels_walk(a, s->budget, NULL, &n);
    } else {
        n = s->n_levels; /* the drafter shaped a dynamic tree itself within the budget */
    }
    return n < ADAPT_MAX_DEPTH ? n : ADAPT_MAX_DEPTH;
}

void adapt_observe(adapt *a, const adapt_step *in)
{
    adapt_step s = *in;
    if (s.budget < 0)
        s.budget = 0;
    if (s.n_nodes < 0)
        s.n_nodes = 0;
    if (s.budget > a->c.max_nodes)
        s.budget = a->c.max_nodes;
    if (s.n_took < 0)
        s.n_took = 0;
    if (s.n_took > s.n_nodes)
        s.n_took = s.n_nodes;
    if (s.n_tried < s.n_took)
        s.n_tried = s.n_took;
    if (s.n_tried > s.n_took + 1)
        s.n_tried = s.n_took + 1;
    if (s.n_levels < (s.n_nodes > 0))
        s.n_levels = s.n_nodes > 0;
    a->st.steps++;
    if (s.budget == 0)
        a->st.zero_steps++;
    if (s.t_verify >= 0 && s.t_verify < 1e6) {
        curve_add(&a->verify, s.n_nodes + 1, s.t_verify, a->c.cost_alpha, 1);
        curve_fit(&a->verify, a->c.cost_alpha);
        a->since_c1 = s.n_nodes == 0 ? 0 : a->since_c1 + 1;
    }
    if (s.budget > 0 && s.t_draft >= 0 && s.t_draft < 1e6) {
        curve_add(&a->draft, s.budget, s.t_draft, a->c.cost_alpha, 0);
        curve_fit(&a->draft, a->c.cost_alpha);
    }
    const double al = 0.1;
    if (s.budget > 0)
        a->f_propose += al * ((s.n_nodes > 0) - a->f_propose);
    if (s.budget > 0 && s.n_nodes > 0) {
        double fill = (double)s.n_nodes / s.budget;
        a->fill += al * ((fill < 1 ? fill : 1) - a->fill);
        a->level_width += al * ((double)s.n_nodes / s.n_levels - a->level_width);
        int cov = covered_levels(a, &s);
        a->walks++;
        for (int d = 0; d <= ADAPT_MAX_DEPTH; d++) {
            a->reach[d] *= a->c.decay;
            a->tried[d] *= a->c.decay;
            a->took[d] *= a->c.decay;
        }
        for (int d = 0; d < cov; d++) {
            if (d > s.n_took)
                break;
            a->reach[d] += 1;
            a->tried[d] += d < s.n_tried;
            a->took[d] += d < s.n_took;
        }
    }
    if (a->last_explore && s.budget > 0) {
        a->st.explore_steps++;
        if (s.n_nodes == 0) {
            /* the drafter had nothing to propose (an n-gram drafter without a match): nothing
             * learnt and next to nothing spent, so look again at the next step */
            a->idle = explore_interval(a);
        } else if (s.n_took > 0) {
            a->st.explore_hits++;
            a->backoff = a->c.explore_min;
        } else if (a->backoff < a->c.explore_max) {
            a->backoff = 2 * a->backoff < a->c.explore_max ? 2 * a->backoff : a->c.explore_max;
        }
    }
    a->last_explore = 0;
}

int adapt_inflight(const adapt *a, int max_inflight, double link_rtt_seconds)
{
    int b = a->last_budget;
    if (max_inflight <= 1 || b <= 0)
        return 1;
    double rtt = link_rtt_seconds > 0 ? link_rtt_seconds : 0;
    double tv = adapt_verify_cost(a, 1 + a->fill * b) + rtt, td = adapt_draft_cost(a, b);
    double sp = td > 0 ? ceil(tv / td) : max_inflight;
    int cap = sp < max_inflight ? (int)sp : max_inflight;
    double leaf;
    levels_walk(a, b, &leaf, NULL);
    int k = 1;
    for (double p = leaf; k < cap && p >= a->c.inflight_min_p; p *= leaf)
        k++;
    return k;
}

const adapt_stats *adapt_get_stats(const adapt *a)
{
    return &a->st;
}
