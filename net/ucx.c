/* ucx: UCX active-message data plane (see ucx.h).
 *
 * Threads and queues:
 * - One progress thread per context owns the UCP worker (UCS_THREAD_MODE_SERIALIZED, the
 *   mutex wmu): it holds wmu always except while it sleeps in poll(), and every ucp_* call after
 *   ucx_create happens on it, with one exception: a SEND from another thread that finds wmu free,
 *   the command queue empty and the peer up without emulation is sent by that thread at once
 *   (send_direct) — a hand-off to a sleeping thread costs tens of µs on a busy or virtual CPU,
 *   and a worker's verdict would pay it on every chunk. ucp_worker_signal is called from any
 *   thread, which UCX allows.
 * - ucx_poll: a thread waiting for a message may run a round of the progress loop itself while
 *   the progress thread sleeps (trylock of wmu), so that the message is delivered on the thread
 *   that needs it without two wake-ups; what needs housekeeping (peer down, close handshake, a
 *   connection request) sets `kick` and the poller wakes the progress thread for it.
 * - Otherwise application threads talk to it through one command queue (mutex + singly linked
 *   FIFO): SEND (payload copied into the command), CONNECT, CLOSE, SET_LINK, FAIL, STOP. A
 *   producer appends and calls ucp_worker_signal; the progress thread sleeps in poll() on the
 *   worker's event fd after ucp_worker_arm, so a command or a network event wakes it, and it
 *   sleeps at most until the next held send of the link emulator is due. After a round that
 *   delivered messages and handed their queued sends to UCX it calls on_round_end.
 * - Back-pressure: ucx_send adds each message's size (and its command's) to its peer's `unsent`
 *   and cmd_free takes it off when the send completed, failed or was dropped; the sender that
 *   would pass max_unsent_bytes queues FAIL instead, which takes the peer down (peer_down).
 * - The link emulator is a binary min-heap of held SEND commands ordered by (release time,
 *   sequence number) on the progress thread: no thread or timer per peer.
 * - Receive: one AM handler. Eager data is delivered from the callback when nothing earlier
 *   from that peer is pending; otherwise it is copied behind the pending entries. A rendezvous
 *   message becomes a pending entry whose buffer ucp_am_recv_data_nbx fills; entries are
 *   delivered strictly in arrival order per peer, so on_msg sees the sender's order.
 *
 * Peer lifetime: the context holds a reference from creation until its endpoint is closed and
 * nothing (send, receive) is outstanding on it; the application holds the ones it took. A peer
 * outlives ucx_free as a closed shell until its last reference goes (sends then fail with
 * SD_ECANCELED), so an application that unrefs after freeing the context is safe. */
#include "ucx.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <ucs/config/global_opts.h>

#include "../common/clock.h"
#include "../common/log.h"
#include "linkemu.h"

#define UCX_AM_ID 7
#define UCX_RNDV_MIN (64u << 10) /* forced rendezvous from this size on */
#define UCX_DEFAULT_MAX (64ull << 20)
/* Control messages share the AM id; their header has this bit (message ids are < 256). */
#define UCX_CTRL 0x10000u
#define UCX_CTRL_CLOSE_REQ (UCX_CTRL | 1)
#define UCX_CTRL_CLOSE_ACK (UCX_CTRL | 2)
#define UCX_CLOSE_WAIT_S 1.0 /* how long a closing side waits for the other side's ack */

enum { P_CONNECTING, P_UP, P_CLOSING, P_DOWN, P_CLOSED };

typedef enum { CMD_SEND, CMD_CONNECT, CMD_CLOSE, CMD_SET_LINK, CMD_FAIL, CMD_STOP } cmd_kind;

typedef struct cmd {
    struct cmd *next;
    cmd_kind kind;
    ucx_peer *peer; /* a reference */
    uint32_t hdr;   /* AM header: the message id; lives until the send completes */
    size_t len;
    size_t counted; /* bytes this send adds to its peer's unsent (ucx_send's, until freed) */
    double release; /* link emulator */
    uint64_t seq;
    ucx_link link;
    struct sockaddr_storage sa;
    socklen_t salen;
    uint8_t data[];
} cmd;

typedef struct rx_entry {
    struct rx_entry *next;
    ucx_peer *peer;
    unsigned msg_id;
    size_t len;
    int done, failed, rndv;
    uint8_t *buf;
} rx_entry;

struct ucx_peer {
    ucx_ctx *c;
    atomic_int refs;
    atomic_int state;
    char name[64];
    void *ud;
    /* progress thread only: */
    ucp_ep_h ep;
    void *close_req;
    int close_wanted, need_force_close, down_reported, in_ctx, listed;
    /* close handshake: see peers_housekeeping */
    int creq_sent, ack_received, remote_closed, ack_sent;
    double creq_deadline, ack_done_at;
    atomic_size_t unsent; /* bytes of ucx_send's messages not yet sent (back-pressure) */
    atomic_int overrun;   /* went over max_unsent_bytes: failed, CMD_FAIL queued */
    int inflight; /* UCX send and receive requests outstanding */
    int held;     /* sends waiting in the link emulator */
    linkemu emu;
    int emu_on;
    rx_entry *rx_head, *rx_tail;
    ucx_peer *next; /* context list */
};

struct ucx_ctx {
    ucx_opts o;
    char listen_addr[128];
    ucp_context_h uc;
    ucp_worker_h w;
    ucp_listener_h lis;
    int efd;
    int port;
    pthread_t th;
    int running;

    /* Held by the progress thread except while it sleeps in poll(): another thread that takes
     * it may use the worker for one direct send (UCS_THREAD_MODE_SERIALIZED). */
    pthread_mutex_t wmu;
    pthread_mutex_t mu; /* command queue */
    cmd *q_head, *q_tail;
    int stopping; /* under mu: no more commands accepted */

    /* progress thread only */
    ucx_peer *peers;
    cmd **heap;
    size_t heap_n, heap_cap;
    uint64_t seq;
    ucp_conn_request_h *conn_reqs;
    size_t n_conn, cap_conn;
    int stop;
    cmd *stop_cmd;
    /* Set under wmu when something needs the progress thread's housekeeping (a peer went down,
     * a close handshake moved, a connection request): ucx_poll wakes it for that. */
    int kick;

    _Atomic uint64_t sent, received, bytes_sent, bytes_received, dropped, rndv_received;
};

/* ---- references ---- */

void ucx_peer_ref(ucx_peer *p)
{
    atomic_fetch_add(&p->refs, 1);
}

void ucx_peer_unref(ucx_peer *p)
{
    if (p && atomic_fetch_sub(&p->refs, 1) == 1)
        free(p);
}

int ucx_peer_is_up(const ucx_peer *p)
{
    return atomic_load(&((ucx_peer *)p)->state) == P_UP;
}

void ucx_peer_set_ud(ucx_peer *p, void *ud)
{
    p->ud = ud;
}

void *ucx_peer_ud(const ucx_peer *p)
{
    return p->ud;
}

const char *ucx_peer_name(const ucx_peer *p)
{
    return p->name;
}

int ucx_listen_port(const ucx_ctx *c)
{
    return c->port;
}

void ucx_get_stats(const ucx_ctx *c, ucx_stats *st)
{
    ucx_ctx *m = (ucx_ctx *)c;
    st->sent = atomic_load(&m->sent);
    st->received = atomic_load(&m->received);
    st->bytes_sent = atomic_load(&m->bytes_sent);
    st->bytes_received = atomic_load(&m->bytes_received);
    st->dropped = atomic_load(&m->dropped);
    st->rndv_received = atomic_load(&m->rndv_received);
}

/* ---- command queue ---- */

static cmd *cmd_new(cmd_kind k, ucx_peer *p, size_t len)
{
    cmd *x = malloc(sizeof *x + len);
    if (!x)
        return NULL;
    memset(x, 0, sizeof *x);
    x->kind = k;
    x->peer = p;
    x->len = len;
    if (p)
        ucx_peer_ref(p);
    return x;
}

static void cmd_free(cmd *x)
{
    if (x->counted)
        atomic_fetch_sub(&x->peer->unsent, x->counted);
    if (x->peer)
        ucx_peer_unref(x->peer);
    free(x);
}

/* A command that will never be handled: a CONNECT also carries the context's reference to a
 * peer that never got on the context's list. */
static void cmd_drop(cmd *x)
{
    if (x->kind == CMD_CONNECT && x->peer && !x->peer->listed) {
        atomic_store(&x->peer->state, P_CLOSED);
        ucx_peer_unref(x->peer);
    }
    cmd_free(x);
}

/* Append x; SD_ECANCELED (x freed) when the context is stopping. */
static sd_err cmd_push(ucx_ctx *c, cmd *x)
{
    pthread_mutex_lock(&c->mu);
    if (c->stopping && x->kind != CMD_STOP) {
        pthread_mutex_unlock(&c->mu);
        cmd_free(x);
        return sd_fail(SD_ECANCELED, "ucx: context is shutting down");
    }
    if (x->kind == CMD_STOP)
        c->stopping = 1;
    if (c->q_tail)
        c->q_tail->next = x;
    else
        c->q_head = x;
    c->q_tail = x;
    pthread_mutex_unlock(&c->mu);
    ucp_worker_signal(c->w);
    return SD_OK;
}

/* ---- addresses ---- */

static sd_err parse_addr(const char *addr, struct sockaddr_storage *sa, socklen_t *len)
{
    char host[128];
    const char *colon = strrchr(addr ? addr : "", ':');
    if (!addr || !colon || colon == addr || (size_t)(colon - addr) >= sizeof host)
        return sd_fail(SD_EINVAL, "ucx: address \"%s\" is not host:port", addr ? addr : "");
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535)
        return sd_fail(SD_EINVAL, "ucx: bad port in \"%s\"", addr);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int r = getaddrinfo(host, colon + 1, &hints, &res);
    if (r != 0 || !res)
        return sd_fail(SD_EINVAL, "ucx: cannot resolve \"%s\": %s", host, gai_strerror(r));
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    *len = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return SD_OK;
}

static void sa_name(const struct sockaddr *sa, char *out, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)sa;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        port = ntohs(a->sin_port);
        snprintf(out, n, "%s:%d", ip, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)sa;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        port = ntohs(a->sin6_port);
        snprintf(out, n, "[%s]:%d", ip, port);
    } else {
        snprintf(out, n, "?");
    }
}

/* ---- peers (progress thread) ---- */

static ucx_peer *peer_new(ucx_ctx *c, int state)
{
    ucx_peer *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->c = c;
    atomic_init(&p->refs, 1); /* the context's */
    atomic_init(&p->state, state);
    p->in_ctx = 1;
    if (ucx_link_active(&c->o.link)) {
        linkemu_init(&p->emu, &c->o.link);
        p->emu_on = 1;
    }
    return p;
}

static void peer_list_add(ucx_ctx *c, ucx_peer *p)
{
    p->next = c->peers;
    c->peers = p;
    p->listed = 1;
}

static ucx_peer *peer_by_ep(ucx_ctx *c, ucp_ep_h ep)
{
    for (ucx_peer *p = c->peers; p; p = p->next)
        if (p->ep == ep)
            return p;
    return NULL;
}

/* The peer is gone (error callback or failed connect): report once, close by force later. */
static void peer_down(ucx_peer *p, const char *reason)
{
    ucx_ctx *c = p->c;
    int st = atomic_load(&p->state);
    if (st == P_CLOSED || st == P_DOWN)
        return;
    atomic_store(&p->state, P_DOWN);
    p->need_force_close = 1;
    c->kick = 1;
    if (p->close_wanted || p->down_reported)
        return; /* a local close is not a failure */
    p->down_reported = 1;
    LOG_INFO("ucx", "peer %s down: %s", p->name, reason);
    if (c->o.on_peer_down)
        c->o.on_peer_down(c->o.ud, p, reason);
}

static void ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    peer_down(arg, ucs_status_string(status));
}

static void heap_push(ucx_ctx *c, cmd *x);

/* ---- sending (progress thread) ---- */

static void send_done(cmd *x, ucs_status_t st)
{
    ucx_peer *p = x->peer;
    ucx_ctx *c = p->c;
    if (st == UCS_OK) {
        atomic_fetch_add(&c->sent, 1);
        atomic_fetch_add(&c->bytes_sent, x->len);
    } else {
        LOG_DEBUG("ucx", "send to %s failed: %s", p->name, ucs_status_string(st));
    }
    cmd_free(x);
}

static void send_cb(void *req, ucs_status_t st, void *ud)
{
    cmd *x = ud;
    x->peer->inflight--;
    send_done(x, st);
    ucp_request_free(req);
}

static void ctrl_cb(void *req, ucs_status_t st, void *ud)
{
    cmd *x = ud;
    x->peer->inflight--;
    cmd_free(x);
    ucp_request_free(req);
}

/* Post x (its header, then its len bytes) on its peer's endpoint. 1: in flight, cb(x) completes
 * it and p->inflight counts it; 0: done at once with status *st (cb never runs). */
static int am_post(cmd *x, ucp_send_nbx_callback_t cb, uint32_t flags, ucs_status_t *st)
{
    ucx_peer *p = x->peer;
    ucp_request_param_t prm;
    memset(&prm, 0, sizeof prm);
    prm.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    prm.cb.send = cb;
    prm.user_data = x;
    /* REPLY: the receiver learns which endpoint a message came from (param->reply_ep). */
    prm.flags = UCP_AM_SEND_FLAG_REPLY | flags;
    ucs_status_ptr_t r =
        ucp_am_send_nbx(p->ep, UCX_AM_ID, &x->hdr, sizeof x->hdr, x->data, x->len, &prm);
    if (UCS_PTR_IS_PTR(r)) {
        p->inflight++;
        return 1;
    }
    *st = UCS_PTR_STATUS(r);
    return 0;
}

static void send_now(ucx_ctx *c, cmd *x)
{
    ucx_peer *p = x->peer;
    int st = atomic_load(&p->state);
    if (!p->ep || st == P_DOWN || st == P_CLOSED) {
        cmd_free(x);
        return;
    }
    ucs_status_t done;
    if (!am_post(x, send_cb, x->len >= UCX_RNDV_MIN ? UCP_AM_SEND_FLAG_RNDV : 0, &done))
        send_done(x, done);
}

/* A control message (close handshake) on the progress thread, never held by the emulator:
 * it must follow the data it closes, and the data has left already when it is sent. */
static void send_ctrl(ucx_ctx *c, ucx_peer *p, uint32_t what)
{
    cmd *x = cmd_new(CMD_SEND, p, 0);
    if (!x)
        return;
    x->hdr = what;
    ucs_status_t done;
    if (!p->ep || !am_post(x, ctrl_cb, 0, &done))
        cmd_free(x);
}

static void handle_send(ucx_ctx *c, cmd *x)
{
    ucx_peer *p = x->peer;
    if (p->emu_on) {
        x->release = linkemu_release(&p->emu, clock_now_s(), x->len, NULL);
        x->seq = c->seq++;
        p->held++;
        heap_push(c, x);
        return;
    }
    send_now(c, x);
}

/* ---- link emulator heap (progress thread) ---- */

static int heap_less(const cmd *a, const cmd *b)
{
    return a->release < b->release || (a->release == b->release && a->seq < b->seq);
}

static void heap_push(ucx_ctx *c, cmd *x)
{
    if (c->heap_n == c->heap_cap) {
        size_t nc = c->heap_cap ? c->heap_cap * 2 : 64;
        cmd **h = realloc(c->heap, nc * sizeof *h);
        if (!h) { /* cannot hold it: send at once rather than lose it */
            x->peer->held--;
            LOG_WARN("ucx", "link emulator: out of memory, sending without delay");
            send_now(c, x);
            return;
        }
        c->heap = h;
        c->heap_cap = nc;
    }
    size_t i = c->heap_n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!heap_less(x, c->heap[up]))
            break;
        c->heap[i] = c->heap[up];
        i = up;
    }
    c->heap[i] = x;
}

static cmd *heap_pop(ucx_ctx *c)
{
    cmd *top = c->heap[0], *last = c->heap[--c->heap_n];
    size_t i = 0, n = c->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const cmd *mv = last;
        if (l < n && heap_less(c->heap[l], mv)) {
            m = l;
            mv = c->heap[l];
        }
        if (r < n && heap_less(c->heap[r], mv))
            m = r;
        if (m == i)
            break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (n)
        c->heap[i] = last;
    return top;
}

/* Send every held message that is due; returns the next due time (or -1). */
static double release_due(ucx_ctx *c)
{
    while (c->heap_n) {
        double now = clock_now_s();
        if (c->heap[0]->release > now)
            return c->heap[0]->release;
        cmd *x = heap_pop(c);
        x->peer->held--;
        send_now(c, x);
    }
    return -1;
}

/* ---- receiving (progress thread) ---- */

static void rx_deliver_ready(ucx_peer *p)
{
    ucx_ctx *c = p->c;
    while (p->rx_head && p->rx_head->done) {
        rx_entry *e = p->rx_head;
        p->rx_head = e->next;
        if (!p->rx_head)
            p->rx_tail = NULL;
        if (!e->failed) {
            atomic_fetch_add(&c->received, 1);
            atomic_fetch_add(&c->bytes_received, e->len);
            if (e->rndv)
                atomic_fetch_add(&c->rndv_received, 1);
            if (c->o.on_msg)
                c->o.on_msg(c->o.ud, p, e->msg_id, e->buf, e->len);
        }
        free(e->buf);
        free(e);
    }
}

static void rx_append(ucx_peer *p, rx_entry *e)
{
    e->peer = p;
    if (p->rx_tail)
        p->rx_tail->next = e;
    else
        p->rx_head = e;
    p->rx_tail = e;
}

static void recv_cb(void *req, ucs_status_t st, size_t len, void *ud)
{
    rx_entry *e = ud;
    ucx_peer *p = e->peer;
    p->inflight--;
    e->done = 1;
    if (st != UCS_OK) {
        e->failed = 1;
        LOG_WARN("ucx", "rendezvous receive from %s failed: %s", p->name, ucs_status_string(st));
    }
    ucp_request_free(req);
    rx_deliver_ready(p);
}

static ucs_status_t am_cb(void *arg, const void *header, size_t hlen, void *data, size_t len,
                          const ucp_am_recv_param_t *param)
{
    ucx_ctx *c = arg;
    int rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    ucx_peer *p = NULL;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP)
        p = peer_by_ep(c, param->reply_ep);
    if (!p || hlen != sizeof(uint32_t)) {
        atomic_fetch_add(&c->dropped, 1);
        LOG_WARN("ucx", "dropping a %zu-byte message from an unknown endpoint", len);
        return UCS_OK;
    }
    uint32_t id;
    memcpy(&id, header, sizeof id);
    if (id == UCX_CTRL_CLOSE_ACK) {
        p->ack_received = 1;
        c->kick = 1;
        return UCS_OK;
    }
    if (id == UCX_CTRL_CLOSE_REQ) {
        /* Everything the other side sent came before this (same endpoint, same order). The
         * ack goes out once the receives still in progress are done (housekeeping). */
        p->remote_closed = 1;
        peer_down(p, "closed by the remote side");
        p->need_force_close = 0;
        return UCS_OK;
    }
    if (id & UCX_CTRL)
        return UCS_OK;
    if (len > c->o.max_msg_bytes) {
        atomic_fetch_add(&c->dropped, 1);
        LOG_WARN("ucx", "dropping message %u of %zu bytes from %s: over the %zu-byte limit", id,
                 len, p->name, c->o.max_msg_bytes);
        return UCS_OK; /* for rendezvous: the data is never fetched */
    }
    int st = atomic_load(&p->state);
    if (st == P_DOWN || st == P_CLOSED)
        return UCS_OK;
    if (!rndv && !p->rx_head) { /* the common case: nothing earlier pending */
        atomic_fetch_add(&c->received, 1);
        atomic_fetch_add(&c->bytes_received, len);
        if (c->o.on_msg)
            c->o.on_msg(c->o.ud, p, id, data, len);
        return UCS_OK;
    }
    rx_entry *e = calloc(1, sizeof *e);
    uint8_t *buf = e ? malloc(len ? len : 1) : NULL;
    if (!buf) {
        free(e);
        atomic_fetch_add(&c->dropped, 1);
        LOG_ERROR("ucx", "out of memory for a %zu-byte message from %s: dropped", len, p->name);
        return UCS_OK;
    }
    e->msg_id = id;
    e->len = len;
    e->buf = buf;
    e->rndv = rndv;
    rx_append(p, e);
    if (!rndv) {
        memcpy(buf, data, len);
        e->done = 1;
        return UCS_OK;
    }
    ucp_request_param_t prm;
    memset(&prm, 0, sizeof prm);
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    prm.cb.recv_am = recv_cb;
    prm.user_data = e;
    ucs_status_ptr_t r = ucp_am_recv_data_nbx(c->w, data, buf, len, &prm);
    if (UCS_PTR_IS_PTR(r)) {
        p->inflight++;
    } else {
        e->done = 1;
        if (UCS_PTR_STATUS(r) != UCS_OK) {
            e->failed = 1;
            LOG_WARN("ucx", "rendezvous receive from %s failed: %s", p->name,
                     ucs_status_string(UCS_PTR_STATUS(r)));
        }
        rx_deliver_ready(p);
    }
    return UCS_INPROGRESS;
}

/* ---- connections (progress thread) ---- */

static void flush_cb(void *req, ucs_status_t st, void *ud)
{
    ucx_peer *p = ud;
    p->inflight--;
    if (st == UCS_OK) {
        int want = P_CONNECTING;
        atomic_compare_exchange_strong(&p->state, &want, P_UP);
    }
    ucp_request_free(req);
}

static ucs_status_t ep_create(ucx_ctx *c, ucx_peer *p, const struct sockaddr *sa, socklen_t salen,
                              ucp_conn_request_h cr)
{
    ucp_ep_params_t ep;
    memset(&ep, 0, sizeof ep);
    ep.field_mask = UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.err_mode = c->o.err_mode_peer ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
    ep.err_handler.cb = ep_err_cb;
    ep.err_handler.arg = p;
    if (cr) {
        ep.field_mask |= UCP_EP_PARAM_FIELD_CONN_REQUEST;
        ep.conn_request = cr;
    } else {
        ep.field_mask |= UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR;
        ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
        ep.sockaddr.addr = sa;
        ep.sockaddr.addrlen = salen;
    }
    return ucp_ep_create(c->w, &ep, &p->ep);
}

static void handle_connect(ucx_ctx *c, cmd *x)
{
    ucx_peer *p = x->peer;
    peer_list_add(c, p);
    if (atomic_load(&p->state) != P_CONNECTING) /* closed before it got here */
        return;
    ucs_status_t st = ep_create(c, p, (struct sockaddr *)&x->sa, x->salen, NULL);
    if (st != UCS_OK) {
        p->ep = NULL;
        peer_down(p, ucs_status_string(st));
        return;
    }
    /* The flush completes once the connection is wired up: that is when the peer is "up". */
    ucp_request_param_t prm;
    memset(&prm, 0, sizeof prm);
    prm.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    prm.cb.send = flush_cb;
    prm.user_data = p;
    ucs_status_ptr_t r = ucp_ep_flush_nbx(p->ep, &prm);
    if (UCS_PTR_IS_PTR(r)) {
        p->inflight++;
    } else if (UCS_PTR_STATUS(r) == UCS_OK) {
        int want = P_CONNECTING;
        atomic_compare_exchange_strong(&p->state, &want, P_UP);
    }
}

static void conn_cb(ucp_conn_request_h cr, void *arg)
{
    /* Endpoints are created outside the callback, from the progress loop. */
    ucx_ctx *c = arg;
    if (c->n_conn == c->cap_conn) {
        size_t nc = c->cap_conn ? c->cap_conn * 2 : 8;
        ucp_conn_request_h *a = realloc(c->conn_reqs, nc * sizeof *a);
        if (!a) {
            ucp_listener_reject(c->lis, cr);
            return;
        }
        c->conn_reqs = a;
        c->cap_conn = nc;
    }
    c->conn_reqs[c->n_conn++] = cr;
    c->kick = 1;
}

static void accept_pending(ucx_ctx *c)
{
    for (size_t i = 0; i < c->n_conn; i++) {
        ucp_conn_request_h cr = c->conn_reqs[i];
        if (c->stop) {
            ucp_listener_reject(c->lis, cr);
            continue;
        }
        ucx_peer *p = peer_new(c, P_UP);
        if (!p) {
            ucp_listener_reject(c->lis, cr);
            continue;
        }
        ucp_conn_request_attr_t a;
        memset(&a, 0, sizeof a);
        a.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR;
        if (ucp_conn_request_query(cr, &a) == UCS_OK)
            sa_name((struct sockaddr *)&a.client_address, p->name, sizeof p->name);
        else
            snprintf(p->name, sizeof p->name, "?");
        ucs_status_t st = ep_create(c, p, NULL, 0, cr);
        if (st != UCS_OK) {
            LOG_WARN("ucx", "cannot accept %s: %s", p->name, ucs_status_string(st));
            free(p);
            continue;
        }
        peer_list_add(c, p);
        LOG_INFO("ucx", "accepted peer %s", p->name);
        if (c->o.on_peer_up)
            c->o.on_peer_up(c->o.ud, p);
    }
    c->n_conn = 0;
}

/* Close endpoints that asked for it and drop the context's reference to finished peers. */
/* Closing is a handshake so that no message is lost, whatever the transport (shared memory
 * data can otherwise still be in flight when the connection manager's disconnect lands):
 * the closing side waits until its held and outstanding sends are done, sends CLOSE_REQ behind
 * them and waits (≤ UCX_CLOSE_WAIT_S) for CLOSE_ACK; the other side reports the peer down
 * ("closed by the remote side"), finishes the receives in progress, acks and closes too. Then
 * both close their endpoint with a flush. */
static int close_ready(ucx_peer *p)
{
    if (p->remote_closed) {
        if (!p->ack_sent && !p->rx_head && p->inflight == 0) {
            send_ctrl(p->c, p, UCX_CTRL_CLOSE_ACK);
            p->ack_sent = 1;
            return 0;
        }
        /* Let the closing side's close (which follows our ack) land first: two crossing
         * flushes end in an endpoint timeout on one side. */
        if (p->ack_sent && p->inflight == 0 && p->ack_done_at == 0)
            p->ack_done_at = clock_now_s();
        return p->ack_sent && p->inflight == 0 && clock_now_s() - p->ack_done_at > 0.1;
    }
    if (!p->close_wanted || p->held || p->inflight)
        return 0;
    if (atomic_load(&p->state) == P_DOWN)
        return 1;
    if (!p->creq_sent) {
        send_ctrl(p->c, p, UCX_CTRL_CLOSE_REQ);
        p->creq_sent = 1;
        p->creq_deadline = clock_now_s() + UCX_CLOSE_WAIT_S;
        return 0;
    }
    return p->ack_received || clock_now_s() > p->creq_deadline;
}

static void peers_housekeeping(ucx_ctx *c)
{
    ucx_peer **pp = &c->peers;
    while (*pp) {
        ucx_peer *p = *pp;
        if (p->ep && !p->close_req) {
            int acked = p->remote_closed && close_ready(p);
            if ((p->need_force_close && c->o.err_mode_peer) || acked) {
                /* The acking side closes by force: the other side has closed already (a
                 * flush towards it would only time out). */
                ucp_request_param_t prm;
                memset(&prm, 0, sizeof prm);
                prm.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
                prm.flags = UCP_EP_CLOSE_FLAG_FORCE;
                ucs_status_ptr_t r = ucp_ep_close_nbx(p->ep, &prm);
                if (UCS_PTR_IS_PTR(r))
                    p->close_req = r;
                else
                    p->ep = NULL;
            } else if (!p->remote_closed && (p->need_force_close || close_ready(p))) {
                ucp_request_param_t prm;
                memset(&prm, 0, sizeof prm);
                /* flush first; FORCE only where both sides tolerate it (mode PEER) */
                ucs_status_ptr_t r = ucp_ep_close_nbx(p->ep, &prm);
                if (UCS_PTR_IS_PTR(r))
                    p->close_req = r;
                else
                    p->ep = NULL;
            }
        }
        if (p->close_req && ucp_request_check_status(p->close_req) != UCS_INPROGRESS) {
            ucp_request_free(p->close_req);
            p->close_req = NULL;
            p->ep = NULL;
        }
        int st = atomic_load(&p->state);
        int finished = !p->ep && (st == P_DOWN || st == P_CLOSING || st == P_CLOSED) &&
                       p->inflight == 0 && p->held == 0;
        if (finished) {
            /* Receives that were still queued cannot complete any more. */
            while (p->rx_head) {
                rx_entry *e = p->rx_head;
                p->rx_head = e->next;
                free(e->buf);
                free(e);
            }
            p->rx_tail = NULL;
            atomic_store(&p->state, P_CLOSED);
            *pp = p->next;
            p->listed = 0;
            p->in_ctx = 0;
            ucx_peer_unref(p);
            continue;
        }
        pp = &p->next;
    }
}

static void handle_cmd(ucx_ctx *c, cmd *x)
{
    switch (x->kind) {
    case CMD_SEND:
        handle_send(c, x);
        return; /* x now belongs to UCX or the heap */
    case CMD_CONNECT:
        handle_connect(c, x);
        break;
    case CMD_CLOSE:
        x->peer->close_wanted = 1;
        if (!x->peer->ep) {
            int want = P_CONNECTING;
            atomic_compare_exchange_strong(&x->peer->state, &want, P_CLOSING);
        }
        break;
    case CMD_SET_LINK:
        if (ucx_link_active(&x->link)) {
            linkemu_init(&x->peer->emu, &x->link);
            x->peer->emu_on = 1;
        } else {
            x->peer->emu_on = 0;
        }
        break;
    case CMD_FAIL:
        peer_down(x->peer, (const char *)x->data);
        break;
    case CMD_STOP:
        c->stop = 1;
        break;
    }
    cmd_free(x);
}

/* One round on the UCP worker (wmu held; the progress thread's, or a poller's): deliver what
 * has arrived, accept connections, hand the queued commands to UCX, then on_round_end when
 * messages were delivered. Returns 1 when it handled commands. */
static int run_round(ucx_ctx *c)
{
    uint64_t rx0 = atomic_load(&c->received);
    while (ucp_worker_progress(c->w))
        ;
    accept_pending(c);
    pthread_mutex_lock(&c->mu);
    cmd *list = c->q_head;
    c->q_head = c->q_tail = NULL;
    pthread_mutex_unlock(&c->mu);
    int did = list != NULL;
    while (list) {
        cmd *x = list;
        list = x->next;
        x->next = NULL;
        if (c->stop) { /* after STOP: drop */
            cmd_drop(x);
            continue;
        }
        handle_cmd(c, x);
    }
    if (c->o.on_round_end && !c->stop && atomic_load(&c->received) != rx0)
        c->o.on_round_end(c->o.ud);
    return did;
}

static void *progress_main(void *arg)
{
    ucx_ctx *c = arg;
    pthread_mutex_lock(&c->wmu);
    while (!c->stop) {
        c->kick = 0; /* this round does the housekeeping */
        int did = run_round(c);
        double next = release_due(c);
        peers_housekeeping(c);
        if (c->stop || did)
            continue;
        /* Arm only when idle: UCS_ERR_BUSY means events are pending. */
        if (ucp_worker_arm(c->w) == UCS_ERR_BUSY)
            continue;
        int timeout = -1;
        if (next >= 0) {
            double ms = (next - clock_now_s()) * 1e3;
            timeout = ms <= 0 ? 0 : (int)ms + 1; /* round up: never early */
        }
        /* A connection or a close in flight needs progress without wake-up events. */
        for (ucx_peer *p = c->peers; p; p = p->next)
            if (p->close_req || (p->creq_sent && p->ep) || (p->remote_closed && p->ep)) {
                timeout = timeout < 0 || timeout > 1 ? 1 : timeout;
                break;
            }
        struct pollfd pfd = {c->efd, POLLIN, 0};
        pthread_mutex_unlock(&c->wmu);
        poll(&pfd, 1, timeout);
        pthread_mutex_lock(&c->wmu);
    }
    pthread_mutex_unlock(&c->wmu);
    return NULL;
}

/* ---- public API ---- */

sd_err ucx_create(ucx_ctx **out, const ucx_opts *o)
{
    *out = NULL;
    if (!o)
        return sd_fail(SD_EINVAL, "ucx: no options");
    sd_err e = linkemu_check(&o->link);
    if (e)
        return e;
    if (!getenv("UCX_WARN_UNUSED_ENV_VARS")) {
        /* UCS read its globals when the library loaded: set the live value too, or setting the
         * variable now would itself be warned about as unused. */
        ucs_global_opts_set_value("WARN_UNUSED_ENV_VARS", "n");
        setenv("UCX_WARN_UNUSED_ENV_VARS", "n", 0);
    }
    setenv("UCX_CM_REUSEADDR", "y", 0);
    ucx_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return sd_fail(SD_ENOMEM, "ucx: out of memory");
    c->o = *o;
    if (!c->o.max_msg_bytes)
        c->o.max_msg_bytes = UCX_DEFAULT_MAX;
    if (!c->o.max_unsent_bytes)
        c->o.max_unsent_bytes = UCX_DEFAULT_MAX;
    c->efd = -1;
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->wmu, NULL);

    ucp_config_t *cfg;
    ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
    if (st != UCS_OK) {
        e = sd_fail(SD_EIO, "ucx: config: %s", ucs_status_string(st));
        goto fail;
    }
    ucp_params_t up;
    memset(&up, 0, sizeof up);
    up.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    up.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    up.mt_workers_shared = 0;
    st = ucp_init(&up, cfg, &c->uc);
    ucp_config_release(cfg);
    if (st != UCS_OK) {
        e = sd_fail(SD_EIO, "ucx: ucp_init: %s", ucs_status_string(st));
        goto fail;
    }
    ucp_worker_params_t wp;
    memset(&wp, 0, sizeof wp);
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SERIALIZED; /* the progress thread, or a sender with wmu */
    st = ucp_worker_create(c->uc, &wp, &c->w);
    if (st != UCS_OK) {
        e = sd_fail(SD_EIO, "ucx: worker: %s", ucs_status_string(st));
        goto fail;
    }
    st = ucp_worker_get_efd(c->w, &c->efd);
    if (st != UCS_OK) {
        e = sd_fail(SD_EIO, "ucx: worker event fd: %s", ucs_status_string(st));
        goto fail;
    }
    ucp_am_handler_param_t hp;
    memset(&hp, 0, sizeof hp);
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    hp.id = UCX_AM_ID;
    hp.cb = am_cb;
    hp.arg = c;
    hp.flags = UCP_AM_FLAG_WHOLE_MSG;
    st = ucp_worker_set_am_recv_handler(c->w, &hp);
    if (st != UCS_OK) {
        e = sd_fail(SD_EIO, "ucx: AM handler: %s", ucs_status_string(st));
        goto fail;
    }
    if (o->listen_addr) {
        snprintf(c->listen_addr, sizeof c->listen_addr, "%s", o->listen_addr);
        c->o.listen_addr = c->listen_addr;
        struct sockaddr_storage sa;
        socklen_t salen;
        if ((e = parse_addr(o->listen_addr, &sa, &salen)) != SD_OK)
            goto fail;
        ucp_listener_params_t lp;
        memset(&lp, 0, sizeof lp);
        lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
        lp.sockaddr.addr = (struct sockaddr *)&sa;
        lp.sockaddr.addrlen = salen;
        lp.conn_handler.cb = conn_cb;
        lp.conn_handler.arg = c;
        st = ucp_listener_create(c->w, &lp, &c->lis);
        if (st != UCS_OK) {
            e = sd_fail(SD_EIO, "ucx: cannot listen on %s: %s", o->listen_addr,
                        ucs_status_string(st));
            goto fail;
        }
        ucp_listener_attr_t la;
        memset(&la, 0, sizeof la);
        la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
        if (ucp_listener_query(c->lis, &la) == UCS_OK) {
            const struct sockaddr *s = (const struct sockaddr *)&la.sockaddr;
            if (s->sa_family == AF_INET)
                c->port = ntohs(((const struct sockaddr_in *)s)->sin_port);
            else if (s->sa_family == AF_INET6)
                c->port = ntohs(((const struct sockaddr_in6 *)s)->sin6_port);
        }
    }
    c->stop_cmd = cmd_new(CMD_STOP, NULL, 0);
    if (!c->stop_cmd) {
        e = sd_fail(SD_ENOMEM, "ucx: out of memory");
        goto fail;
    }
    if (pthread_create(&c->th, NULL, progress_main, c) != 0) {
        e = sd_fail(SD_ENOMEM, "ucx: cannot start the progress thread");
        goto fail;
    }
    c->running = 1;
    LOG_INFO("ucx", "context up (err mode %s, listen %s, port %d)",
             o->err_mode_peer ? "PEER" : "NONE", o->listen_addr ? o->listen_addr : "-", c->port);
    *out = c;
    return SD_OK;
fail:
    free(c->stop_cmd);
    if (c->lis)
        ucp_listener_destroy(c->lis);
    if (c->w)
        ucp_worker_destroy(c->w);
    if (c->uc)
        ucp_cleanup(c->uc);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->wmu);
    free(c);
    return e;
}

sd_err ucx_connect(ucx_ctx *c, const char *addr, ucx_peer **out)
{
    *out = NULL;
    cmd *x = cmd_new(CMD_CONNECT, NULL, 0);
    if (!x)
        return sd_fail(SD_ENOMEM, "ucx: out of memory");
    sd_err e = parse_addr(addr, &x->sa, &x->salen);
    if (e) {
        free(x);
        return e;
    }
    ucx_peer *p = peer_new(c, P_CONNECTING);
    if (!p) {
        free(x);
        return sd_fail(SD_ENOMEM, "ucx: out of memory");
    }
    snprintf(p->name, sizeof p->name, "%s", addr);
    ucx_peer_ref(p); /* the caller's */
    /* The peer goes on the context's list on the progress thread, with the command. */
    x->peer = p;
    ucx_peer_ref(p);
    e = cmd_push(c, x);
    if (e) {
        ucx_peer_unref(p); /* the context's: it never got the peer */
        ucx_peer_unref(p);
        return e;
    }
    *out = p;
    return SD_OK;
}

/* Send x from the calling thread when the progress thread sleeps and nothing queued earlier
 * could be overtaken: no wake-up on the way out (a verdict leaves as its forward ends). 0 when
 * x must go through the queue (x untouched). */
static int send_direct(ucx_ctx *c, cmd *x)
{
    ucx_peer *p = x->peer;
    if (pthread_mutex_trylock(&c->wmu)) /* the progress thread is busy (or it is us) */
        return 0;
    pthread_mutex_lock(&c->mu);
    int ok = !c->q_head && !c->stopping;
    pthread_mutex_unlock(&c->mu);
    ok = ok && p->ep && !p->emu_on && !p->close_wanted && atomic_load(&p->state) == P_UP;
    if (ok) {
        int before = p->inflight;
        send_now(c, x);
        if (p->inflight != before) /* not complete yet: the progress thread finishes it */
            ucp_worker_signal(c->w);
    }
    pthread_mutex_unlock(&c->wmu);
    return ok;
}

/* p went over its unsent limit: the first sender to notice has the progress thread take it
 * down (on_peer_down reports why; the force close cancels what UCX still holds). */
static sd_err fail_overrun(ucx_peer *p, size_t unsent, size_t max)
{
    char why[160];
    int n = snprintf(why, sizeof why, "not keeping up: %zu bytes unsent, at most %zu allowed",
                     unsent, max);
    int no = 0;
    if (atomic_compare_exchange_strong(&p->overrun, &no, 1)) {
        cmd *x = cmd_new(CMD_FAIL, p, (size_t)n + 1);
        if (x) {
            memcpy(x->data, why, (size_t)n + 1);
            cmd_push(p->c, x);
        }
    }
    return sd_fail(SD_ECANCELED, "ucx: peer %s is %s", p->name, why);
}

sd_err ucx_send(ucx_peer *p, unsigned msg_id, const void *data, size_t len)
{
    int st = atomic_load(&p->state);
    if (st != P_UP && st != P_CONNECTING)
        return sd_fail(SD_ECANCELED, "ucx: peer %s is %s", p->name,
                       st == P_DOWN ? "down" : "closed");
    if (msg_id >= 256)
        return sd_fail(SD_EINVAL, "ucx: message id %u out of range (< 256)", msg_id);
    if (atomic_load(&p->overrun))
        return sd_fail(SD_ECANCELED, "ucx: peer %s is down (not keeping up)", p->name);
    size_t cost = sizeof(cmd) + len, max = p->c->o.max_unsent_bytes;
    size_t unsent = atomic_fetch_add(&p->unsent, cost) + cost;
    if (unsent > max) {
        atomic_fetch_sub(&p->unsent, cost);
        return fail_overrun(p, unsent - cost, max);
    }
    cmd *x = cmd_new(CMD_SEND, p, len);
    if (!x) {
        atomic_fetch_sub(&p->unsent, cost);
        return sd_fail(SD_ENOMEM, "ucx: out of memory for a %zu-byte message", len);
    }
    x->counted = cost;
    x->hdr = msg_id;
    if (len)
        memcpy(x->data, data, len);
    if (send_direct(p->c, x))
        return SD_OK;
    return cmd_push(p->c, x);
}

int ucx_poll(ucx_ctx *c)
{
    if (pthread_mutex_trylock(&c->wmu)) /* the progress thread is awake (or another poller) */
        return 0;
    uint64_t rx0 = atomic_load(&c->received);
    int did = c->stop ? 0 : run_round(c);
    /* The events this consumed may not wake the progress thread: wake it for its housekeeping,
     * and when commands went out, for the link emulator's release times. */
    if (c->kick || did) {
        c->kick = 0;
        ucp_worker_signal(c->w);
    }
    pthread_mutex_unlock(&c->wmu);
    return atomic_load(&c->received) != rx0;
}

void ucx_peer_close(ucx_peer *p)
{
    int st = atomic_load(&p->state);
    while (st == P_UP || st == P_CONNECTING) {
        if (atomic_compare_exchange_weak(&p->state, &st, P_CLOSING))
            break;
    }
    if (st != P_UP && st != P_CONNECTING)
        return; /* already closing, down or closed */
    cmd *x = cmd_new(CMD_CLOSE, p, 0);
    if (x)
        cmd_push(p->c, x);
}

void ucx_peer_set_link(ucx_peer *p, const ucx_link *l)
{
    int st = atomic_load(&p->state);
    if (st == P_CLOSED || !l || linkemu_check(l) != SD_OK)
        return;
    cmd *x = cmd_new(CMD_SET_LINK, p, 0);
    if (!x)
        return;
    x->link = *l;
    cmd_push(p->c, x);
}

void ucx_free(ucx_ctx *c)
{
    if (!c)
        return;
    cmd_push(c, c->stop_cmd); /* allocated up front: stopping cannot fail */
    c->stop_cmd = NULL;
    pthread_join(c->th, NULL);
    pthread_mutex_lock(&c->wmu); /* the worker is this thread's now (no direct sends either) */
    while (c->heap_n) {
        cmd *x = heap_pop(c);
        x->peer->held--;
        cmd_free(x);
    }
    pthread_mutex_lock(&c->mu);
    cmd *list = c->q_head;
    c->q_head = c->q_tail = NULL;
    pthread_mutex_unlock(&c->mu);
    while (list) {
        cmd *x = list;
        list = x->next;
        cmd_drop(x);
    }
    for (size_t i = 0; i < c->n_conn; i++)
        ucp_listener_reject(c->lis, c->conn_reqs[i]);
    c->n_conn = 0;
    if (c->lis)
        ucp_listener_destroy(c->lis);
    c->lis = NULL;
    /* Close every endpoint: flush (the remote side sees a disconnect), bounded in time; what
     * is still open after that is closed by force where the error mode allows it. */
    for (ucx_peer *p = c->peers; p; p = p->next) {
        p->close_wanted = 1;
        p->held = 0;
        if (atomic_load(&p->state) != P_CLOSED)
            atomic_store(&p->state, P_CLOSING);
    }
    double t0 = clock_now_s();
    int forced = 0;
    for (;;) {
        ucp_worker_progress(c->w);
        int open = 0;
        for (ucx_peer *p = c->peers; p; p = p->next) {
            if (forced && p->ep && !p->close_req && c->o.err_mode_peer)
                p->need_force_close = 1;
            if (p->ep || p->close_req || p->inflight)
                open++;
        }
        peers_housekeeping(c);
        if (!c->peers || !open)
            break;
        double dt = clock_now_s() - t0;
        if (dt > 1.0 && !forced)
            forced = 1;
        if (dt > 3.0) {
            LOG_WARN("ucx", "%d endpoints did not close in time", open);
            break;
        }
    }
    /* Whatever is left (a peer that never closed): detach it from the context. */
    while (c->peers) {
        ucx_peer *p = c->peers;
        c->peers = p->next;
        while (p->rx_head) {
            rx_entry *e = p->rx_head;
            p->rx_head = e->next;
            free(e->buf);
            free(e);
        }
        if (p->close_req)
            ucp_request_free(p->close_req);
        atomic_store(&p->state, P_CLOSED);
        ucx_peer_unref(p);
    }
    ucp_worker_destroy(c->w);
    ucp_cleanup(c->uc);
    pthread_mutex_unlock(&c->wmu);
    free(c->heap);
    free(c->conn_reqs);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->wmu);
    free(c);
}
