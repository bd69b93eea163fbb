#include "seq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/draft.h"

/* A node of the draft tree, ids in the current epoch's numbering. */
typedef struct {
    int32_t tok;
    int parent; /* -1 = the newest committed token */
    int depth;  /* 0 = child of the newest committed token */
    float logp;
} seq_node;

/* An extension that arrived ahead of a gap in the node ids (link reordering). */
typedef struct {
    int used;
    uint32_t epoch, first_id;
    int n;
    int32_t *parent, *tok;
    float *logp;
} seq_pending_ext;

#define SEQ_PENDING_EXT 8

typedef struct {
    int active;
    uint64_t id;
    int worker;
    int root_pos;    /* r: the position of the chunk's root token */
    int n_com0;      /* committed length at dispatch */
    int32_t *apath;  /* assumed tokens of positions n_com0 .. root_pos */
    int n_apath;
    int root_id;     /* tree id of the root (-1: the committed end at dispatch; -2: committed) */
    int base_pos;
    int n;           /* nodes */
    int32_t *tok, *parent; /* chunk-local parents */
    int *tree_id;    /* tree id of each node in the current numbering, -1 once pruned */
    int *depth;      /* depth within the chunk (0 = child of the root) */
    int leaf;        /* chunk index of the most probable leaf, -1 without nodes */
    double t_sent;
    double t_draft_ms; /* how long the session waited for the drafter before this chunk */
    int budget;        /* the controller's budget for it (-1: not adaptive) */
    int retries;
    /* a verdict that arrived before earlier chunks were applied */
    int held;
    int32_t *held_path;
    int held_n;
    int32_t held_next;
} seq_chunk_st;

struct seq {
    seq_config c;
    seq_io io;
    int32_t *com;
    int n_com, cap;
    int n_prompt;
    seq_state state;
    seq_stats st;
    /* tree */
    seq_node *tree;
    int n_tree;
    uint32_t epoch;
    int got_extend; /* the drafter has answered in this epoch (si: its one tree) */
    int drafter_alive;
    double wait_since;
    seq_pending_ext pend[SEQ_PENDING_EXT];
    /* chunks */
    seq_chunk_st *ch; /* [max_inflight] */
    uint64_t next_id;
    /* what each worker holds: tokens of positions [0, wn) */
    int32_t *wtok[SEQ_MAX_WORKERS];
    int wn[SEQ_MAX_WORKERS];
    int wdead[SEQ_MAX_WORKERS];
    uint64_t wlast[SEQ_MAX_WORKERS]; /* the last chunk sent to each worker */
    /* scratch */
    int32_t *s_tok, *s_par, *s_base;
    int *s_map;
    int adaptive;
    adapt ad;
    int budget_asked;  /* adapt_nodes was asked for the chunk waiting to go out */
    int held;          /* this epoch's Commit told the drafter to hold */
    int lookup_miss;   /* ... because the lookup drafter has nothing: the next chunk goes */
    int draft_waiting; /* the last pump left a chunk waiting for the drafter's answer */
    int n_unemitted;   /* committed tokens not yet handed to io.emit (they end at n_com or eog) */
};

static int is_eog(const seq *s, int32_t t)
{
    for (int i = 0; i < s->c.n_eog; i++)
        if (s->c.eog[i] == t)
            return 1;
    return 0;
}

static void chunk_clear(seq_chunk_st *c)
{
    free(c->apath);
    free(c->tok);
    free(c->parent);
    free(c->tree_id);
    free(c->depth);
    free(c->held_path);
    memset(c, 0, sizeof *c);
}

sd_err seq_init(seq **out, const seq_config *c, const seq_io *io, const int32_t *prompt, int n)
{
    *out = NULL;
    if (n < 1 || c->max_ctx <= n || c->n_workers < 1 || c->n_workers > SEQ_MAX_WORKERS ||
        c->max_inflight < 1 || c->max_nodes < 0 || c->max_tree < c->max_nodes)
        return sd_fail(SD_EINVAL, "seq: bad configuration (prompt %d, context %d, workers %d, "
                                  "in flight %d, nodes %d/%d)",
                       n, c->max_ctx, c->n_workers, c->max_inflight, c->max_nodes, c->max_tree);
    seq *s = calloc(1, sizeof *s);
    if (!s)
        return SD_ENOMEM;
    s->c = *c;
    if (s->c.mode != SEQ_DSI)
        s->c.max_inflight = 1;
    if (s->c.max_inflight > s->c.n_workers)
        s->c.max_inflight = s->c.n_workers;
    s->io = *io;
    s->cap = c->max_ctx;
    int tn = c->max_tree > 0 ? c->max_tree : 1;
    s->com = malloc(sizeof(int32_t) * (size_t)s->cap);
    s->tree = malloc(sizeof(seq_node) * (size_t)tn);
    s->ch = calloc((size_t)s->c.max_inflight, sizeof *s->ch);
    s->s_tok = malloc(sizeof(int32_t) * (size_t)tn);
    s->s_par = malloc(sizeof(int32_t) * (size_t)tn);
    s->s_map = malloc(sizeof(int) * (size_t)tn);
    s->s_base = malloc(sizeof(int32_t) * (size_t)s->cap);
    int ok = s->com && s->tree && s->ch && s->s_tok && s->s_par && s->s_map && s->s_base;
    for (int w = 0; w < c->n_workers && ok; w++)
        ok = (s->wtok[w] = malloc(sizeof(int32_t) * (size_t)s->cap)) != NULL;
    if (!ok) {
        seq_free(s);
        return SD_ENOMEM;
    }
    memcpy(s->com, prompt, sizeof(int32_t) * (size_t)n);
    s->n_com = s->n_prompt = n;
    s->drafter_alive = c->mode != SEQ_AR;
    s->next_id = 1;
    if (c->adaptive && c->shape && c->mode != SEQ_AR && c->max_nodes > 0) {
        adapt_config ac;
        adapt_config_defaults(&ac, c->max_nodes);
        adapt_config_shape(&ac, c->shape, c->max_nodes);
        if (c->inflight_min_p > 0)
            ac.inflight_min_p = c->inflight_min_p;
        sd_err e = adapt_init(&s->ad, &ac);
        if (e) {
            seq_free(s);
            return e;
        }
        s->adaptive = 1;
    }
    /* the worker is sent the prompt (all but its newest token) with the session */
    for (int w = 0; w < c->n_workers; w++) {
        memcpy(s->wtok[w], prompt, sizeof(int32_t) * (size_t)(n - 1));
        s->wn[w] = n - 1;
    }
    *out = s;
    return SD_OK;
}

void seq_free(seq *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->c.max_inflight && s->ch; i++)
        chunk_clear(&s->ch[i]);
    for (int i = 0; i < SEQ_PENDING_EXT; i++) {
        free(s->pend[i].parent);
        free(s->pend[i].tok);
        free(s->pend[i].logp);
    }
    for (int w = 0; w < SEQ_MAX_WORKERS; w++)
        free(s->wtok[w]);
    free(s->com);
    free(s->tree);
    free(s->ch);
    free(s->s_tok);
    free(s->s_par);
    free(s->s_map);
    free(s->s_base);
    free(s);
}

seq_state seq_get_state(const seq *s) { return s->state; }
const seq_stats *seq_get_stats(const seq *s) { return &s->st; }
seq_mode seq_get_mode(const seq *s) { return s->drafter_alive ? s->c.mode : SEQ_AR; }
uint32_t seq_epoch(const seq *s) { return s->epoch; }
int seq_tree_size(const seq *s) { return s->n_tree; }

const adapt *seq_adapt(const seq *s)
{
    return s->adaptive ? &s->ad : NULL;
}

const int32_t *seq_committed(const seq *s, int *n)
{
    *n = s->n_com;
    return s->com;
}

int seq_inflight(const seq *s)
{
    int k = 0;
    for (int i = 0; i < s->c.max_inflight; i++)
        k += s->ch[i].active;
    return k;
}

double seq_oldest_inflight_ms(const seq *s, double now_ms)
{
    double age = 0;
    for (int i = 0; i < s->c.max_inflight; i++)
        if (s->ch[i].active && !s->ch[i].held && now_ms - s->ch[i].t_sent > age)
            age = now_ms - s->ch[i].t_sent;
    return age;
}

/* ---- tree ---- */

static sd_err tree_append(seq *s, uint32_t first_id, const int32_t *parent, const int32_t *tok,
                          const float *logp, int n)
{
    if ((int)first_id != s->n_tree)
        return sd_fail(SD_EPROTO, "tree extension at node %u, the tree has %d", first_id,
                       s->n_tree);
    if (s->n_tree + n > s->c.max_tree)
        return sd_fail(SD_ERANGE, "tree extension to %d nodes exceeds the limit %d",
                       s->n_tree + n, s->c.max_tree);
    for (int i = 0; i < n; i++) {
        int p = parent[i];
        if (p < -1 || p >= s->n_tree + i)
            return sd_fail(SD_EPROTO, "tree node %d: parent %d", s->n_tree + i, p);
    }
    for (int i = 0; i < n; i++) {
        seq_node *d = &s->tree[s->n_tree + i];
        d->tok = tok[i];
        d->parent = parent[i];
        d->depth = parent[i] < 0 ? 0 : s->tree[parent[i]].depth + 1;
        d->logp = logp ? logp[i] : 0.0f;
    }
    s->n_tree += n;
    return SD_OK;
}

static void pend_drop(seq_pending_ext *p)
{
    free(p->parent);
    free(p->tok);
    free(p->logp);
    memset(p, 0, sizeof *p);
}

static void pend_apply(seq *s)
{
    for (int again = 1; again;) {
        again = 0;
        for (int i = 0; i < SEQ_PENDING_EXT; i++) {
            seq_pending_ext *p = &s->pend[i];
            if (!p->used)
                continue;
            if (p->epoch != s->epoch || (int)p->first_id < s->n_tree) {
                s->st.stale_extends++;
                pend_drop(p);
            } else if ((int)p->first_id == s->n_tree) {
                if (tree_append(s, p->first_id, p->parent, p->tok, p->logp, p->n))
                    s->st.stale_extends++;
                pend_drop(p);
                again = 1;
            }
        }
    }
}

sd_err seq_tree_extend(seq *s, uint32_t epoch, uint32_t first_id, const int32_t *parent,
                       const int32_t *tok, const float *logp, int n, double now_ms)
{
    if (s->state != SEQ_RUNNING || !s->drafter_alive)
        return SD_OK;
    s->st.extends++;
    s->st.held_extends += epoch == s->epoch && s->held; /* the drafter ignored the hold */
    if (epoch != s->epoch || (int)first_id < s->n_tree) {
        s->st.stale_extends++;
        return SD_OK;
    }
    sd_err e = SD_OK;
    if ((int)first_id > s->n_tree) { /* ahead of a gap: hold it */
        int slot = -1;
        for (int i = 0; i < SEQ_PENDING_EXT && slot < 0; i++)
            if (!s->pend[i].used)
                slot = i;
        if (slot < 0) {
            s->st.stale_extends++;
            return SD_OK;
        }
        seq_pending_ext *p = &s->pend[slot];
        p->parent = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
        p->tok = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
        p->logp = logp ? malloc(sizeof(float) * (size_t)(n ? n : 1)) : NULL;
        if (!p->parent || !p->tok || (logp && !p->logp)) {
            pend_drop(p);
            return SD_ENOMEM;
        }
        if (n > 0) { /* NULL arrays with n = 0 are allowed */
            memcpy(p->parent, parent, sizeof(int32_t) * (size_t)n);
            memcpy(p->tok, tok, sizeof(int32_t) * (size_t)n);
            if (logp)
                memcpy(p->logp, logp, sizeof(float) * (size_t)n);
        }
        p->used = 1;
        p->epoch = epoch;
        p->first_id = first_id;
        p->n = n;
    } else {
        e = tree_append(s, first_id, parent, tok, logp, n);
        if (!e) {
            pend_apply(s);
            s->got_extend = 1; /* a held extension is no answer yet */
        }
    }
    seq_pump(s, now_ms);
    return e;
}

/* Keep the subtree under `root` (an id, or -1 for nothing), renumbered in id order; s_map[old]
 * = new id or -1. Returns the number kept. */
static int tree_reroot(seq *s, int root)
{
    int kept = 0;
    /* read before the compaction below may overwrite the root's slot */
    int root_depth = root >= 0 ? s->tree[root].depth : 0;
    float root_logp = root >= 0 ? s->tree[root].logp : 0;
    for (int i = 0; i < s->n_tree; i++) {
        seq_node *d = &s->tree[i];
        int np = -2;
        if (root >= 0 && d->parent == root)
            np = -1;
        else if (root >= 0 && d->parent >= 0 && s->s_map[d->parent] >= 0)
            np = s->s_map[d->parent];
        if (np == -2) {
            s->s_map[i] = -1;
            continue;
        }
        s->s_map[i] = kept;
        seq_node nd = *d;
        nd.parent = np;
        nd.depth = d->depth - root_depth - 1;
        nd.logp = d->logp - root_logp;
        s->tree[kept++] = nd; /* kept <= i: in-place compaction is safe */
    }
    s->n_tree = kept;
    return kept;
}

/* ---- verdicts ---- */

static void cancel_chunk(seq *s, seq_chunk_st *c)
{
    s->st.cancelled++;
    if (c->worker >= 0) { /* not a chunk waiting for a new worker */
        s->io.send_cancel(s->io.ud, c->worker, c->id);
        /* the worker surely still holds what it held before this chunk */
        if (s->wn[c->worker] > c->base_pos)
            s->wn[c->worker] = c->base_pos;
    }
    chunk_clear(c);
}

/* 1 when the committed sequence contradicts the chunk's assumed base. */
static int base_contradicted(const seq *s, const seq_chunk_st *c)
{
    for (int i = 0; i < c->n_apath; i++) {
        int p = c->n_com0 + i;
        if (p < s->n_com && s->com[p] != c->apath[i])
            return 1;
    }
    return 0;
}

static void finish(seq *s, seq_state why)
{
    s->state = why;
    for (int i = 0; i < s->c.max_inflight; i++)
        if (s->ch[i].active)
            cancel_chunk(s, &s->ch[i]);
}

/* The controller's node budget for the next chunk that goes out, asked once per such chunk
 * (asking advances its exploration schedule). */
static int next_budget(seq *s)
{
    if (!s->adaptive)
        return s->c.max_nodes;
    if (!s->budget_asked) {
        adapt_nodes(&s->ad);
        s->budget_asked = 1;
    }
    return s->ad.last_budget < s->c.max_nodes ? s->ad.last_budget : s->c.max_nodes;
}

/* Apply chunk c's verdict (its base is fully committed and agrees). */
static void apply_verdict(seq *s, seq_chunk_st *c, const int32_t *path, int n_path, int32_t next,
                          double now_ms)
{
    int n_old = s->n_com;
    int32_t *nt = s->s_base; /* new tokens */
    int k = 0, bad = 0;
    for (int i = 0; i <= n_path; i++) {
        int32_t t = i < n_path ? c->tok[path[i]] : next;
        int p = c->root_pos + 1 + i;
        if (p < s->n_com) {
            bad |= s->com[p] != t; /* an earlier verdict decided this position */
            continue;
        }
        if (p >= s->c.max_ctx)
            break;
        nt[k++] = t;
    }
    /* per-depth acceptance (as in-process spec_stats) */
    int n_tried = 0, n_took = 0;
    for (int d = 0, node = -1; d <= n_path; d++) {
        int has = 0;
        for (int j = 0; j < c->n && !has; j++)
            has = c->parent[j] == node;
        if (!has)
            break;
        n_tried++;
        if (d < SEQ_MAX_DEPTH)
            s->st.tried[d]++;
        if (d == n_path)
            break;
        n_took++;
        if (d < SEQ_MAX_DEPTH)
            s->st.took[d]++;
        node = path[d];
    }
    if (s->adaptive && c->budget >= 0) {
        int levels = 0;
        for (int j = 0; j < c->n; j++)
            if (c->depth[j] + 1 > levels)
                levels = c->depth[j] + 1;
        /* the step's cost as the session saw it: waiting for the drafter, then the chunk's
         * round trip (forward, network, queueing). (The first chunk's also waited behind the
         * prompt's prefill; leaving that sample out made si settle on plain decodes where
         * drafting is slow, before Commits carried the budget: the drafter then proposed its
         * whole shape whatever the budget, so a small budget's draft cost was measured as a full
         * proposal's.) */
        adapt_step as = {.budget = c->budget,
                         .n_nodes = c->n,
                         .n_levels = levels,
                         .n_tried = n_tried,
                         .n_took = n_took,
                         .t_draft = c->t_draft_ms / 1e3,
                         .t_verify = (now_ms - c->t_sent) / 1e3};
        adapt_observe(&s->ad, &as);
    }
    s->st.steps++;
    s->st.accepted += n_path;
    s->st.rtt_ms_sum += now_ms - c->t_sent;
    s->st.draft_ms_sum += c->t_draft_ms;
    /* the worker committed its base and the accepted path — unless it has been sent a later
     * chunk since, which truncated it to what the mirror held then */
    int w = c->worker;
    if (s->wlast[w] == c->id)
        for (int i = 0; i < n_path && s->wn[w] < s->cap; i++)
            s->wtok[w][s->wn[w]++] = c->tok[path[i]];
    chunk_clear(c);
    if (bad) /* cannot happen with deterministic workers; never commit on it */
        s->st.late_verdicts++;
    if (k == 0)
        return;
    /* emit up to eog / the length limit */
    int n_emit = 0;
    seq_state done = SEQ_RUNNING;
    for (int i = 0; i < k; i++) {
        if (is_eog(s, nt[i])) {
            done = SEQ_DONE_EOS;
            break;
        }
        n_emit++;
        if (s->st.n_gen + n_emit >= s->c.n_predict) {
            done = SEQ_DONE_LENGTH;
            break;
        }
    }
    memcpy(s->com + s->n_com, nt, sizeof(int32_t) * (size_t)k);
    s->n_com += k;
    if (n_emit) { /* streamed after the Commit and the next chunk are out (seq_verdict) */
        s->st.n_gen += n_emit;
        s->n_unemitted += n_emit;
    }
    if (done == SEQ_RUNNING && s->n_com >= s->c.max_ctx)
        done = SEQ_DONE_CONTEXT;
    /* prune the tree to the subtree under the new newest token */
    int cur = -1;
    for (int i = 0; i < k && cur >= -1; i++) {
        int hit = -2;
        for (int j = 0; j < s->n_tree && hit == -2; j++)
            if (s->tree[j].parent == cur && s->tree[j].tok == nt[i])
                hit = j;
        cur = hit;
    }
    int root_node = cur >= 0 ? cur : -1;
    if (root_node >= 0)
        s->st.tree_hits++; /* the new newest token was drafted: its subtree survives */
    int n_seen = s->n_tree;
    tree_reroot(s, root_node);
    for (int i = 0; i < SEQ_PENDING_EXT; i++)
        if (s->pend[i].used)
            pend_drop(&s->pend[i]);
    s->epoch++;
    s->got_extend = 0;
    s->wait_since = now_ms;
    for (int ww = 0; ww < s->c.n_workers; ww++) { /* what the Commit makes each worker keep */
        int m = 0;
        while (m < s->wn[ww] && m < s->n_com && s->wtok[ww][m] == s->com[m])
            m++;
        if (m < s->wn[ww] && m < s->n_com)
            s->wn[ww] = m;
    }
    /* the next chunk's budget decides whether the drafter has anything to do in this epoch */
    int speculating = done == SEQ_RUNNING && s->drafter_alive && s->c.mode != SEQ_AR;
    int budget = speculating && s->adaptive ? next_budget(s) : 0;
    int hold = speculating && s->adaptive && budget == 0;
    s->lookup_miss = speculating && !hold && s->c.lookup_min > 0 && s->n_tree == 0 &&
                     !draft_lookup_match(s->com, s->n_com, s->c.lookup_min);
    s->st.held_commits += hold;
    s->st.lookup_misses += s->lookup_miss;
    hold |= s->lookup_miss;
    s->held = hold;
    seq_commit cm = {.epoch = s->epoch,
                     .n_committed = s->n_com,
                     .tokens = s->com + n_old,
                     .n_tokens = k,
                     .root_node = root_node,
                     .n_seen = n_seen,
                     .hold = hold,
                     .budget = budget};
    if (done == SEQ_RUNNING) /* a finished session is closed on its nodes: no Commit races it */
        s->io.send_commit(s->io.ud, &cm);
    /* chunks in flight: contradicted ones are cancelled, the others follow the renumbering */
    for (int i = 0; i < s->c.max_inflight; i++) {
        seq_chunk_st *o = &s->ch[i];
        if (!o->active)
            continue;
        if (base_contradicted(s, o)) {
            cancel_chunk(s, o);
            continue;
        }
        o->root_id = o->root_pos < s->n_com ? -2 : (o->root_id >= 0 ? s->s_map[o->root_id] : -1);
        for (int j = 0; j < o->n; j++)
            o->tree_id[j] = o->tree_id[j] >= 0 ? s->s_map[o->tree_id[j]] : -1;
    }
    if (done != SEQ_RUNNING)
        finish(s, done);
}

static seq_chunk_st *find_chunk(seq *s, uint64_t id)
{
    for (int i = 0; i < s->c.max_inflight; i++)
        if (s->ch[i].active && s->ch[i].id == id)
            return &s->ch[i];
    return NULL;
}

/* Apply held verdicts whose base is now committed, in base order. */
static void apply_ready(seq *s, double now_ms)
{
    for (int again = 1; again && s->state == SEQ_RUNNING;) {
        again = 0;
        for (int i = 0; i < s->c.max_inflight && s->state == SEQ_RUNNING; i++) {
            seq_chunk_st *c = &s->ch[i];
            if (!c->active || !c->held || c->root_pos >= s->n_com)
                continue;
            if (base_contradicted(s, c)) {
                cancel_chunk(s, c);
                continue;
            }
            int32_t *p = c->held_path;
            c->held_path = NULL;
            apply_verdict(s, c, p, c->held_n, c->held_next, now_ms);
            free(p);
            again = 1;
        }
    }
}

/* Hand the committed tokens not streamed yet to the client: after the sequencer has sent the
 * Commit and the next chunks, which are on the critical path — the client's stream is not. */
static void flush_emit(seq *s)
{
    if (!s->n_unemitted)
        return;
    int from = s->n_prompt + s->st.n_gen - s->n_unemitted;
    s->io.emit(s->io.ud, s->com + from, s->n_unemitted);
    s->n_unemitted = 0;
}

sd_err seq_verdict(seq *s, uint64_t id, int worker, const int32_t *path, int n_path,
                   int32_t next, double now_ms)
{
    seq_chunk_st *c = s->state == SEQ_RUNNING ? find_chunk(s, id) : NULL;
    if (!c || c->worker != worker) { /* unknown, or from a worker it is no longer on */
        s->st.late_verdicts++;
        return SD_OK;
    }
    if (n_path > c->n)
        return sd_fail(SD_EPROTO, "verdict for chunk %llu: %d accepted of %d nodes",
                       (unsigned long long)id, n_path, c->n);
    for (int i = 0, node = -1; i < n_path; i++) {
        if (path[i] < 0 || path[i] >= c->n || c->parent[path[i]] != node)
            return sd_fail(SD_EPROTO, "verdict for chunk %llu: path[%d] = %d is not a child of %d",
                           (unsigned long long)id, i, path[i], node);
        node = path[i];
    }
    if (base_contradicted(s, c)) {
        cancel_chunk(s, c);
        s->st.late_verdicts++;
    } else if (c->root_pos < s->n_com) {
        apply_verdict(s, c, path, n_path, next, now_ms);
        apply_ready(s, now_ms);
    } else { /* an earlier chunk's verdict is still missing */
        c->held_path = malloc(sizeof(int32_t) * (size_t)(n_path ? n_path : 1));
        if (!c->held_path)
            return SD_ENOMEM;
        if (n_path > 0)
            memcpy(c->held_path, path, sizeof(int32_t) * (size_t)n_path);
        c->held_n = n_path;
        c->held_next = next;
        c->held = 1;
    }
    seq_pump(s, now_ms);
    flush_emit(s);
    return SD_OK;
}

/* ---- dispatch ---- */

static void redispatch(seq *s, double now_ms);

/* Assumed tokens from position n_com up to the tree node id (root-to-node), into out; returns
 * how many (depth + 1), 0 for id -1. */
static int path_tokens(const seq *s, int id, int32_t *out)
{
    if (id < 0)
        return 0;
    int d = s->tree[id].depth;
    for (int x = id; x >= 0; x = s->tree[x].parent)
        out[s->tree[x].depth] = s->tree[x].tok;
    return d + 1;
}

/* The token chunk c assumes at position p (<= its root). */
static int32_t assumed_at(const seq *s, const seq_chunk_st *c, int p)
{
    return p < c->n_com0 ? s->com[p] : c->apath[p - c->n_com0];
}

/* Send chunk c to its worker with the base from position bp, and mirror what the worker will
 * hold: every base token is committed there, whatever the verdict. */
static void send_chunk(seq *s, seq_chunk_st *c, int bp, double now_ms)
{
    int w = c->worker, r = c->root_pos;
    for (int p = bp; p <= r; p++)
        s->s_base[p - bp] = assumed_at(s, c, p);
    seq_chunk out = {.id = c->id,
                     .worker = w,
                     .base_pos = bp,
                     .base = s->s_base,
                     .n_base = r + 1 - bp,
                     .parent = c->parent,
                     .tok = c->tok,
                     .n = c->n};
    c->base_pos = bp;
    c->t_sent = now_ms;
    s->io.send_chunk(s->io.ud, &out);
    memcpy(s->wtok[w] + bp, s->s_base, sizeof(int32_t) * (size_t)(r + 1 - bp));
    s->wn[w] = r + 1;
    s->wlast[w] = c->id;
}

static int pick_worker(const seq *s)
{
    int best = -1;
    for (int w = 0; w < s->c.n_workers; w++) {
        int busy = 0;
        for (int i = 0; i < s->c.max_inflight && !busy; i++) /* a held verdict is done work */
            busy = s->ch[i].active && !s->ch[i].held && s->ch[i].worker == w;
        if (!busy && !s->wdead[w] && (best < 0 || s->wn[w] > s->wn[best]))
            best = w;
    }
    return best;
}

/* Tree nodes under `root` (-1 = the whole tree) in id order, at most max, into ids. */
static int collect(seq *s, int root, int max, int *ids)
{
    int n = 0;
    int *in = s->s_map;
    for (int i = 0; i < s->n_tree; i++) {
        int p = s->tree[i].parent;
        int under = root < 0 || p == root || (p >= 0 && in[p]);
        in[i] = under && n < max; /* a node left out leaves its descendants out */
        if (in[i])
            ids[n++] = i;
    }
    return n;
}

/* Nonzero when some chunk in flight is rooted within the committed sequence, i.e. will commit
 * the next position once its verdict comes. Without one, the chunks in flight wait for positions
 * nothing computes (their base agreed token for token with a commit that took another branch of
 * the tree): a chunk must go out at the committed end. */
static int have_applicable(const seq *s)
{
    for (int i = 0; i < s->c.max_inflight; i++)
        if (s->ch[i].active && s->ch[i].root_pos <= s->n_com - 1)
            return 1;
    return 0;
}

double seq_deadline_ms(const seq *s)
{
    return s->state == SEQ_RUNNING && s->draft_waiting ? s->wait_since + s->c.draft_wait_ms
                                                       : INFINITY;
}

void seq_pump(seq *s, double now_ms)
{
    s->draft_waiting = 0;
    if (s->state == SEQ_RUNNING)
        redispatch(s, now_ms);
    int at_end = s->state == SEQ_RUNNING && seq_inflight(s) > 0 && !have_applicable(s);
    if (at_end && seq_inflight(s) >= s->c.max_inflight) { /* make room: drop the deepest */
        seq_chunk_st *deep = NULL;
        for (int i = 0; i < s->c.max_inflight; i++)
            if (s->ch[i].active && (!deep || s->ch[i].root_pos > deep->root_pos))
                deep = &s->ch[i];
        cancel_chunk(s, deep);
    }
    while (s->state == SEQ_RUNNING) {
        int n_act = seq_inflight(s);
        int cap = s->c.max_inflight;
        if (s->adaptive && cap > 1 && s->st.steps > 0) { /* dsi: chunks in flight that pay */
            double rtt = s->st.rtt_ms_sum / s->st.steps / 1e3;
            int k = adapt_inflight(&s->ad, cap, rtt);
            cap = k < cap ? k : cap;
        }
        if (n_act >= cap)
            return;
        seq_chunk_st *last = NULL, *slot = NULL;
        for (int i = 0; i < s->c.max_inflight; i++) {
            if (s->ch[i].active && (!last || s->ch[i].id > last->id))
                last = &s->ch[i];
            if (!s->ch[i].active && !slot)
                slot = &s->ch[i];
        }
        int w = pick_worker(s);
        if (w < 0 || !slot)
            return;
        for (int i = 0; i < s->c.max_inflight; i++)
            if (s->ch[i].active && s->ch[i].worker < 0)
                return; /* a lost chunk waits for this worker first */
        int use_tree = s->drafter_alive && s->c.mode != SEQ_AR;
        int root = -1;
        if (last && !at_end) { /* speculation parallelism: below the last chunk's best leaf */
            if (s->c.mode != SEQ_DSI || !use_tree || last->leaf < 0)
                return;
            root = last->tree_id[last->leaf];
            if (root < 0)
                return;
        }
        int *ids = malloc(sizeof(int) * (size_t)(s->c.max_nodes > 0 ? s->c.max_nodes : 1));
        if (!ids)
            return;
        /* the controller's budget for this chunk (asked once per chunk that goes out: at the
         * Commit before it, or here) */
        int budget = use_tree ? next_budget(s) : s->c.max_nodes;
        int n = use_tree && budget > 0 ? collect(s, root, budget, ids) : 0;
        if (root < 0 && use_tree && budget > 0) {
            int ready =
                s->lookup_miss || (s->c.mode == SEQ_SI ? s->got_extend : (n > 0 || s->got_extend));
            if (!ready && now_ms - s->wait_since < s->c.draft_wait_ms) {
                s->draft_waiting = 1;
                free(ids);
                return;
            }
        }
        if (root >= 0 && n == 0) {
            free(ids);
            return;
        }
        s->budget_asked = 0; /* this chunk goes out: the next one asks again */
        seq_chunk_st *c = slot;
        memset(c, 0, sizeof *c);
        int depth = root >= 0 ? s->tree[root].depth + 1 : 0;
        c->apath = malloc(sizeof(int32_t) * (size_t)(depth ? depth : 1));
        c->tok = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
        c->parent = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
        c->tree_id = malloc(sizeof(int) * (size_t)(n ? n : 1));
        c->depth = malloc(sizeof(int) * (size_t)(n ? n : 1));
        if (!c->apath || !c->tok || !c->parent || !c->tree_id || !c->depth) {
            chunk_clear(c);
            free(ids);
            return;
        }
        c->active = 1;
        c->id = s->next_id++;
        c->worker = w;
        c->budget = s->adaptive && use_tree ? budget : -1;
        /* (before the first Commit nothing was waited for: wait_since is 0) */
        c->t_draft_ms =
            root < 0 && s->wait_since > 0 && now_ms > s->wait_since ? now_ms - s->wait_since : 0;
        s->st.zero_budget += s->adaptive && use_tree && budget == 0;
        c->n_com0 = s->n_com;
        c->n_apath = path_tokens(s, root, c->apath);
        c->root_pos = s->n_com - 1 + c->n_apath;
        c->root_id = root;
        c->n = n;
        c->leaf = -1;
        for (int j = 0; j < n; j++) { /* tree ids -> chunk indices (ids are increasing) */
            const seq_node *d = &s->tree[ids[j]];
            int lp = -1;
            for (int q = j - 1; q >= 0 && lp < 0 && d->parent != root; q--)
                if (ids[q] == d->parent)
                    lp = q;
            c->tok[j] = d->tok;
            c->parent[j] = lp;
            c->tree_id[j] = ids[j];
            c->depth[j] = lp < 0 ? 0 : c->depth[lp] + 1;
        }
        for (int j = 0; j < n; j++) {
            int has_kid = 0;
            for (int q = j + 1; q < n && !has_kid; q++)
                has_kid = c->parent[q] == j;
            if (has_kid)
                continue;
            float lj = s->tree[ids[j]].logp;
            if (c->leaf < 0 || lj > s->tree[ids[c->leaf]].logp ||
                (lj == s->tree[ids[c->leaf]].logp && c->depth[j] > c->depth[c->leaf]))
                c->leaf = j;
        }
        free(ids);
        int bp = 0;
        while (bp < s->wn[w] && bp < c->root_pos && s->wtok[w][bp] == assumed_at(s, c, bp))
            bp++;
        s->st.chunks++;
        s->st.proposed += n;
        send_chunk(s, c, bp, now_ms);
        at_end = 0;
    }
}

sd_err seq_chunk_failed(seq *s, uint64_t id, int worker, double now_ms)
{
    seq_chunk_st *c = find_chunk(s, id);
    if (!c || c->worker != worker)
        return SD_OK;
    if (c->retries++ >= 1)
        return sd_fail(SD_EPROTO, "chunk %llu failed twice on worker %d",
                       (unsigned long long)id, c->worker);
    s->wn[c->worker] = 0; /* resend the whole base */
    send_chunk(s, c, 0, now_ms);
    return SD_OK;
}

void seq_drafter_lost(seq *s)
{
    s->drafter_alive = 0;
}

sd_err seq_worker_lost(seq *s, int w, double now_ms)
{
    if (w < 0 || w >= s->c.n_workers || s->wdead[w])
        return SD_OK;
    s->wdead[w] = 1;
    s->wn[w] = 0;
    int alive = 0;
    for (int x = 0; x < s->c.n_workers; x++)
        alive += !s->wdead[x];
    for (int i = 0; i < s->c.max_inflight; i++)
        if (s->ch[i].active && s->ch[i].worker == w) {
            s->ch[i].worker = -1; /* re-dispatched by seq_pump */
            s->ch[i].held = 0;
            free(s->ch[i].held_path);
            s->ch[i].held_path = NULL;
            s->st.redispatched++;
        }
    if (!alive)
        return sd_fail(SD_ENOTFOUND, "no worker of the session is left");
    seq_pump(s, now_ms);
    return SD_OK;
}

/* Chunks whose worker was lost go to a free worker, oldest first, with the base it lacks. */
static void redispatch(seq *s, double now_ms)
{
    for (;;) {
        seq_chunk_st *c = NULL;
        for (int i = 0; i < s->c.max_inflight; i++)
            if (s->ch[i].active && s->ch[i].worker < 0 && (!c || s->ch[i].id < c->id))
                c = &s->ch[i];
        if (!c)
            return;
        int w = pick_worker(s);
        if (w < 0)
            return;
        c->worker = w;
        int bp = 0;
        while (bp < s->wn[w] && bp < c->root_pos && s->wtok[w][bp] == assumed_at(s, c, bp))
            bp++;
        send_chunk(s, c, bp, now_ms);
    }
}
