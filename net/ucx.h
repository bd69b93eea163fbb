/* ucx: the data plane over UCX (1.13) active messages. One ucx_ctx = a UCP context + worker, an
 * optional listener and one progress thread that owns the worker. Sends from any thread copy
 * the payload; they go out from the calling thread when the progress thread is asleep and
 * nothing is queued ahead of them, else through its queue (woken with ucp_worker_signal).
 * Back-pressure: a peer that lets more than max_unsent_bytes pile up on our side (queued, held
 * by the link emulator or in flight in UCX: it stopped reading, e.g. a stalled process) is
 * treated as failed: the send that would exceed it fails, and the peer goes down through
 * on_peer_down with the reason, so memory stays bounded and the application's failure handling
 * takes over. Received messages are delivered on the progress thread through on_msg, in
 * the order the peer sent them (eager and rendezvous alike: a message that arrives while an
 * earlier rendezvous receive from the same peer is in progress waits for it); data is valid only
 * during the callback, which must not block.
 *
 * Connections are client-server (sockaddr): a connecting side gets a peer from ucx_connect, an
 * accepting side gets one through on_peer_up; both can send on it. Error handling mode PEER
 * reports a dead peer through on_peer_down (forces TCP); mode NONE allows shared memory but
 * reports nothing (pair it with heartbeats).
 *
 * Link emulator (off by default): every send to a peer is held back by delay + uniform jitter +
 * its size over the bandwidth cap (messages to one peer queue behind each other for the
 * bandwidth), and with probability reorder_prob by an extra reorder_ms so that later messages
 * overtake it. It changes timing and order only, never content. */
#ifndef SD_UCX_H
#define SD_UCX_H

#include <stddef.h>
#include <stdint.h>

#include "../common/sd_err.h"

typedef struct ucx_ctx ucx_ctx;
typedef struct ucx_peer ucx_peer;

typedef struct {
    double delay_ms;       /* fixed one-way delay */
    double jitter_ms;      /* + uniform [0, jitter_ms) */
    double bandwidth_mbps; /* megabits/s; 0 = unlimited */
    double reorder_prob;   /* probability a message is held an extra reorder_ms */
    double reorder_ms;
    uint64_t seed; /* random stream of the jitter / reordering draws */
} ucx_link;

/* Nonzero when l emulates anything. */
int ucx_link_active(const ucx_link *l);

typedef struct {
    const char *listen_addr; /* "127.0.0.1:0" (0 = ephemeral), "0.0.0.0:7100"; NULL = none */
    int err_mode_peer;       /* 1: UCP_ERR_HANDLING_MODE_PEER (failure callbacks, TCP);
                                0: MODE_NONE (shared memory allowed, no failure callbacks) */
    ucx_link link;           /* emulated link applied to sends to every peer (per-peer override:
                                ucx_peer_set_link) */
    size_t max_msg_bytes;    /* larger incoming messages are dropped with a log line (0 = 64 MiB) */
    size_t max_unsent_bytes; /* per peer, see back-pressure above (0 = 64 MiB) */
    /* Callbacks, all on the progress thread. */
    void (*on_msg)(void *ud, ucx_peer *from, unsigned msg_id, const void *data, size_t len);
    void (*on_peer_up)(void *ud, ucx_peer *p);                       /* accepted connection */
    void (*on_peer_down)(void *ud, ucx_peer *p, const char *reason); /* once per peer */
    /* After a round of the progress loop that delivered messages, once the sends on_msg queued
     * in it have been handed to UCX: work that should not delay those sends goes here. */
    void (*on_round_end)(void *ud);
    void *ud;
} ucx_opts;

/* Create the context, worker and listener and start the progress thread. Sets
 * UCX_WARN_UNUSED_ENV_VARS=n and UCX_CM_REUSEADDR=y unless the environment already sets them. */
sd_err ucx_create(ucx_ctx **out, const ucx_opts *o);
/* Stop the progress thread, close every endpoint, free everything (peers included). */
void ucx_free(ucx_ctx *c);
/* Port the listener is bound to (0 without one). */
int ucx_listen_port(const ucx_ctx *c);

/* Connect to "host:port" (non-blocking: sends queue until the endpoint is up; a failure is
 * reported through on_peer_down). The peer holds one reference for the caller. */
sd_err ucx_connect(ucx_ctx *c, const char *addr, ucx_peer **out);

/* Queue a message to p (data copied). msg_id < 256. SD_ECANCELED when p is down or closed, or
 * when this message would take p over max_unsent_bytes (p then goes down). */
sd_err ucx_send(ucx_peer *p, unsigned msg_id, const void *data, size_t len);

/* Run one round of the progress loop from the calling thread if the progress thread is asleep
 * (else nothing happens): messages that have arrived are delivered to on_msg (and then
 * on_round_end, after the sends they queued went out) on this thread, which
 * must not hold a lock on_msg takes. For a thread that waits for a message on the critical path
 * (a worker between chunks): polling saves the wake-ups of two sleeping threads. 1: something
 * was delivered. c must stay alive during the call. */
int ucx_poll(ucx_ctx *c);

/* Peers are reference counted: the context holds one while the peer is connected; ucx_connect
 * and on_peer_up hand one to the application (on_peer_up's only for the duration of the
 * callback unless the application takes ucx_peer_ref). */
void ucx_peer_ref(ucx_peer *p);
void ucx_peer_unref(ucx_peer *p);
/* Close the endpoint (flushes queued sends first); later sends fail with SD_ECANCELED. */
void ucx_peer_close(ucx_peer *p);
int ucx_peer_is_up(const ucx_peer *p);
void ucx_peer_set_link(ucx_peer *p, const ucx_link *l);
void ucx_peer_set_ud(ucx_peer *p, void *ud);
void *ucx_peer_ud(const ucx_peer *p);
/* "ip:port" of the remote side as far as known, for logs. */
const char *ucx_peer_name(const ucx_peer *p);

/* Counters for status and benchmarks. */
typedef struct {
    uint64_t sent, received, bytes_sent, bytes_received, dropped, rndv_received;
} ucx_stats;
void ucx_get_stats(const ucx_ctx *c, ucx_stats *st);

#endif
