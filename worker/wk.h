/* wk: the target worker's core — per-session target KV caches and one compute thread that
 * batches the ready work of all sessions (prompt prefills and chunks) into one forward
 * (verify_batch: every matmul over all sessions' positions at once), bounded by a maximum batch
 * in tokens, and answers each chunk with a Verdict.
 *
 * Threads: wk_on_msg runs on the UCX progress thread (decode, validate, queue; a Cancel drops a
 * queued chunk at once or marks one being computed so its result is discarded); session open and
 * close come from the gRPC thread; the compute thread takes work under the lock and computes
 * without it. Sessions being computed are freed only by the compute thread. */
#ifndef SD_WK_H
#define SD_WK_H

#include <stdint.h>

#include "../common/sd_err.h"
#include "../engine/model.h"
#include "../engine/sample.h"
#include "../net/rpc.h"
#include "../net/ucx.h"

typedef struct {
    model *m;
    int max_sessions;
    int max_ctx;          /* per session */
    int max_nodes;        /* per chunk */
    int max_batch_tokens; /* positions in one forward */
    int batching;         /* 0: one forward per session (benchmarks) */
    double forward_delay_ms; /* emulated extra time per forward (experiments) */
    int poll_us;             /* after a forward, poll the data plane this long for the next chunk */
} wk_opts;

typedef struct {
    int64_t forwards, batched_forwards, verified_tokens, batch_seqs_total, chunks, cancelled,
        rejected;
    int sessions;
} wk_stats;

typedef struct wk wk;

sd_err wk_create(wk **out, const wk_opts *o);
/* Stop the compute thread after the work already queued (bounded by timeout_ms) and free. */
void wk_free(wk *w, int timeout_ms);

/* Session control (gRPC thread). Returns RPC_OK, or a code with st->msg. */
rpc_code wk_open_session(wk *w, uint64_t id, const sample_params *sp, int max_ctx, int max_nodes,
                         rpc_status *st);
rpc_code wk_close_session(wk *w, uint64_t id);

/* A data-plane message from peer (UCX progress thread). */
void wk_on_msg(wk *w, ucx_peer *from, unsigned msg_id, const void *data, size_t len);
/* A peer went away: its sessions are closed. */
void wk_on_peer_down(wk *w, ucx_peer *p);

/* The data plane the compute thread polls between chunks. NULL: the data plane is about to go
 * away: the compute thread stops (queued chunks dropped, the batch being computed finishes and
 * its verdicts go out) and nothing uses the data plane any more when this returns. */
void wk_set_ucx(wk *w, ucx_ctx *ux);

void wk_get_stats(wk *w, wk_stats *st);

#endif
