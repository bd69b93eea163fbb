/* co: the coordinator's state — the node registry (workers and drafters that registered,
 * heartbeat, are reached over UCX and dropped when silent or disconnected), the sessions (one
 * sequencer each, coordinator/seq.h) and the client API (Generate, Status) and node API
 * (RegisterNode, Heartbeat) handlers.
 *
 * Threads: every handler and callback takes the one coordinator lock for its (short) work.
 *   gRPC server thread  handlers; Generate validates and tokenizes, then queues the session for
 *                       placement.
 *   control thread      the blocking calls: OpenSession on the chosen worker/drafter, then the
 *                       Prompt; CloseSession when a session ends.
 *   UCX progress thread TreeExtend / Verdict into the session's sequencer, whose effects (Chunk,
 *                       Commit, Cancel over UCX; token events into the client's stream) are
 *                       queued sends.
 *   timer thread        every few ms: the sequencers' timers (dispatch without a tree after
 *                       draft-wait-ms), chunk timeouts, silent nodes. */
#ifndef SD_CO_H
#define SD_CO_H

#include "../common/sd_err.h"
#include "../net/rpc.h"
#include "../net/ucx.h"

typedef struct {
    const char *model;   /* GGUF of the target: its tokenizer and identity */
    int max_sessions;    /* sessions at once (more: RESOURCE_EXHAUSTED) */
    int max_ctx;         /* prompt + generation + tree, per session */
    int max_nodes;       /* tree nodes per chunk */
    int max_predict;     /* largest n_predict */
    int heartbeat_ms;    /* nodes heartbeat this often */
    int node_timeout_ms; /* a node silent this long is dropped */
    int chunk_timeout_ms; /* a chunk unanswered this long fails its session */
    int draft_wait_ms;   /* si/async: wait this long for the drafter before an empty chunk */
    int max_inflight;    /* dsi */
    double inflight_min_p; /* dsi: a chunk below another goes out when at least this likely used */
    const char *default_draft, *default_tree;
    ucx_opts uo;         /* error mode and link emulation for the data plane */
} co_opts;

typedef struct co co;

sd_err co_create(co **out, const co_opts *o);
/* Register the Coordinator service's methods on srv (before rpc_server_start). */
sd_err co_add_methods(co *c, rpc_server *srv);
/* Stop accepting sessions; wait up to timeout_ms for running ones; fail the rest with
 * UNAVAILABLE. */
void co_drain(co *c, int timeout_ms);
void co_free(co *c);

#endif
