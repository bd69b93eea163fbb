/* dn: the edge drafter's core — one drafter (draft.h: ngram, layerskip, model) per session that
 * follows the committed sequence and keeps proposing draft tree nodes to the coordinator
 * (TreeExtend), in the session's mode:
 *   si     one tree per commit (an empty one when the drafter has nothing), then waits;
 *   async, dsi  a tree at each commit, then keeps extending below the most probable leaf until
 *          the tree budget is used or the next commit arrives.
 * It mirrors the coordinator's view of the tree: a Commit names the node that became the newest
 * committed token (root_node) and how many nodes the coordinator had (n_seen); the survivors are
 * that node's descendants among those, renumbered in id order — exactly as coordinator/seq.c.
 *
 * Threads: dn_on_msg on the UCX progress thread (decode, validate, queue); open/close on the
 * gRPC thread; one compute thread drafts for all sessions round-robin, one step each. */
#ifndef SD_DN_H
#define SD_DN_H

#include <stdint.h>

#include "../common/sd_err.h"
#include "../engine/model.h"
#include "../net/rpc.h"
#include "../net/ucx.h"

typedef struct {
    model *target; /* its vocabulary; its weights for layerskip drafters */
    int max_sessions;
    int max_tree;           /* nodes per epoch */
    int max_ctx;            /* longest sequence of a session (its drafter state is sized by it) */
    const char *model_dir;  /* model:PATH drafters must live under this directory */
    double draft_delay_ms;  /* EMULATION: extra time per drafted node */
} dn_opts;

typedef struct {
    int64_t proposals, nodes, commits, rejected;
    int64_t held; /* commits that said hold */
    int64_t cut;  /* emulated draft delays cut short by a newer commit (proposal dropped) */
    int64_t inline_answers; /* si messages answered on the UCX progress thread */
    int sessions;
} dn_stats;

typedef struct dn dn;

sd_err dn_create(dn **out, const dn_opts *o);
/* Stop the drafting thread (idempotent): before the data plane it sends on goes away. */
void dn_stop(dn *d);
void dn_free(dn *d);

rpc_code dn_open_session(dn *d, uint64_t id, int mode, const char *draft, const char *tree,
                         int max_ctx, int max_nodes, rpc_status *st);
rpc_code dn_close_session(dn *d, uint64_t id);
void dn_on_msg(dn *d, ucx_peer *from, unsigned msg_id, const void *data, size_t len);
void dn_on_peer_down(dn *d, ucx_peer *p);
void dn_get_stats(dn *d, dn_stats *st);

#endif
