/* seq: the per-session sequencer (DESIGN.md §4). It holds the session's committed sequence and
 * the draft tree the drafter keeps extending, cuts chunks out of the tree for workers, applies
 * verdicts in base order, cancels chunks whose base the commit contradicts, and prunes the tree
 * to the subtree under the new newest token. It is pure logic — no threads, no network: every
 * effect goes out through the seq_io callbacks, so tests drive it alone.
 *
 * Positions: the committed sequence is com[0..n_com); its newest token com[n_com-1] is the root
 * of the tree (node -1). A chunk is rooted at a position r >= n_com-1 (the committed end, or a
 * node of the tree assumed accepted — speculation parallelism, mode dsi): its base is the
 * assumed sequence from what its worker already holds up to r, its nodes the subtree under r.
 * Its verdict yields the tokens of positions r+1 .. r+1+len(path). A verdict is applied once
 * the committed sequence reaches r+1 and agrees with the chunk's base; one whose base the
 * committed sequence contradicts is dropped (its chunk cancelled). */
#ifndef SD_SEQ_H
#define SD_SEQ_H

#include <stdint.h>

#include "../common/sd_err.h"
#include "../engine/adapt.h"
#include "../engine/tree.h"

typedef enum { SEQ_AR = 1, SEQ_SI = 2, SEQ_ASYNC = 3, SEQ_DSI = 4 } seq_mode;

#define SEQ_MAX_WORKERS 16
#define SEQ_MAX_DEPTH 32

typedef struct {
    seq_mode mode;
    int n_workers;     /* workers this session may use, indices 0 .. n_workers-1 */
    int max_inflight;  /* chunks in flight (1 except in dsi) */
    int max_nodes;     /* tree nodes per chunk */
    int max_tree;      /* nodes the tree may hold per epoch */
    int n_predict;     /* tokens to generate */
    int max_ctx;       /* committed tokens may not exceed this */
    double draft_wait_ms; /* si/async: dispatch without a tree after waiting this long */
    double inflight_min_p; /* dsi: adapt_config.inflight_min_p; 0 = the controller's default */
    const int32_t *eog; /* tokens that end generation (not emitted) */
    int n_eog;
    /* How much to speculate adapts per session (engine/adapt.h) from the measured acceptance
     * by depth, chunk round trips and waits for the drafter: each chunk is cut to the
     * controller's budget (0: an empty chunk at once, without waiting for the drafter) and, in
     * dsi, the chunks in flight to its SP degree. NULL shape or adaptive = 0: fixed. */
    int adaptive;
    const tree_shape *shape;
    /* The drafter is a lookup drafter (ngram) whose shortest suffix is this many tokens (0: any
     * other drafter). After a Commit that leaves no tree, whether it will propose anything is
     * draft_lookup_match over the committed sequence: when not, the Commit tells it to hold and
     * the next chunk goes out at once instead of waiting for its empty answer (the drafter's turn
     * is paid only where it has something to say). */
    int lookup_min;
} seq_config;

typedef struct {
    uint64_t id;
    int worker;
    int base_pos;         /* the worker holds positions [0, base_pos) */
    const int32_t *base;  /* positions base_pos .. root (n_base >= 1) */
    int n_base;
    const int32_t *parent; /* nodes under the root: parent -1 = the root */
    const int32_t *tok;
    int n;
} seq_chunk;

typedef struct {
    uint32_t epoch;
    int n_committed;
    const int32_t *tokens; /* the new committed tokens */
    int n_tokens;
    int root_node; /* the previous epoch's node id of the new newest token, -1 if not in the tree */
    int n_seen;    /* nodes of the previous epoch the sequencer had */
    int hold;      /* the next chunk is a plain decode: the drafter should propose nothing */
    int budget;    /* the next chunk's node budget (0: not adaptive, the whole shape) */
} seq_commit;

typedef struct {
    void (*send_chunk)(void *ud, const seq_chunk *c);
    void (*send_cancel)(void *ud, int worker, uint64_t chunk_id);
    void (*send_commit)(void *ud, const seq_commit *c); /* to the drafter and the workers */
    /* Newly committed tokens for the client (eog and everything after it are not emitted). */
    void (*emit)(void *ud, const int32_t *tok, int n);
    void *ud;
} seq_io;

typedef enum { SEQ_RUNNING = 0, SEQ_DONE_EOS, SEQ_DONE_LENGTH, SEQ_DONE_CONTEXT } seq_state;

typedef struct {
    int n_gen, steps;
    long chunks, cancelled, extends, stale_extends, tree_hits, late_verdicts, redispatched;
    long held_commits; /* Commits with hold set */
    long held_extends; /* extensions for an epoch whose Commit said hold (a drafter ignoring it) */
    long zero_budget;  /* chunks the controller sent without speculation */
    long lookup_misses; /* Commits held because the lookup drafter has no match (lookup_min) */
    long proposed, accepted;
    long tried[SEQ_MAX_DEPTH], took[SEQ_MAX_DEPTH];
    double rtt_ms_sum;
    double draft_ms_sum; /* applied chunks' waits for the drafter before dispatch */
} seq_stats;

typedef struct seq seq;

/* prompt[0..n) is committed at once (n >= 1). */
sd_err seq_init(seq **out, const seq_config *c, const seq_io *io, const int32_t *prompt, int n);
void seq_free(seq *s);

/* Nodes from the drafter for `epoch` starting at node id first_id (parents: -1 or earlier ids of
 * that epoch). Extensions of an older epoch are stale and ignored; ones that arrive ahead of a
 * gap wait (bounded) until the gap is filled. Checked: bad parents/ids are SD_EPROTO and change
 * nothing. logp may be NULL. */
sd_err seq_tree_extend(seq *s, uint32_t epoch, uint32_t first_id, const int32_t *parent,
                       const int32_t *tok, const float *logp, int n, double now_ms);

/* The verdict of chunk `id` from `worker`: accepted chunk node indices path[0..n_path) and the
 * target's token after them. Unknown (cancelled, already applied) chunks and chunks no longer on
 * that worker are ignored. SD_EPROTO for a path that
 * is not a root-to-node path of the chunk (nothing changes). */
sd_err seq_verdict(seq *s, uint64_t id, int worker, const int32_t *path, int n_path,
                   int32_t next, double now_ms);

/* The adaptive controller's state (NULL when the session does not adapt). */
const adapt *seq_adapt(const seq *s);

/* The worker rejected chunk id (reason logged by the caller): it is re-sent with its full base
 * when possible; SD_EPROTO when the same chunk failed twice. */
sd_err seq_chunk_failed(seq *s, uint64_t id, int worker, double now_ms);

/* The drafter is gone: from now on every chunk is empty (mode ar). */
void seq_drafter_lost(seq *s);

/* Worker w is gone: its chunks go to the session's other workers (with the base they lack) and
 * w gets no more. SD_ENOTFOUND when no worker is left (the session cannot go on). */
sd_err seq_worker_lost(seq *s, int w, double now_ms);

/* Send whatever should go out now (chunks to idle workers; a chunk without a tree once
 * draft_wait_ms has passed). Called after every event and periodically. */
void seq_pump(seq *s, double now_ms);

seq_state seq_get_state(const seq *s);
const seq_stats *seq_get_stats(const seq *s);
/* The committed sequence (prompt included). */
const int32_t *seq_committed(const seq *s, int *n);
int seq_inflight(const seq *s);
/* How long the oldest chunk in flight has waited for its verdict (0 with none). */
double seq_oldest_inflight_ms(const seq *s, double now_ms);
/* When seq_pump would next act on time alone: the end of the wait for the drafter's answer
 * (draft_wait_ms after the commit); INFINITY when nothing waits on the clock. */
double seq_deadline_ms(const seq *s);
seq_mode seq_get_mode(const seq *s);
uint32_t seq_epoch(const seq *s);
int seq_tree_size(const seq *s);

#endif
