/* rpc: gRPC core C API wrapper (see rpc.h).
 *
 * Threads and queues:
 * - Server: one completion queue (CQ_NEXT) and one thread draining it. It owns the requested
 *   calls (RPC_REQS_PER_METHOD outstanding per registered method, plus one generic request that
 *   answers unknown methods with UNIMPLEMENTED), runs unary handlers and stream handlers.
 * - A stream's outgoing messages wait in a per-stream ring (≤ RPC_STREAM_QUEUE). The thread that
 *   finds the call idle starts the SEND_MESSAGE batch itself: grpc_call_start_batch may be called
 *   from any thread as long as batches on one call are serialised, which the stream mutex does.
 *   The completion comes back on the CQ thread, which starts the next queued message. So no
 *   wake-up of the CQ thread is needed at all (no alarm, no polling timer): a message queued on
 *   an idle stream is on the wire before rpc_stream_send returns.
 * - Each stream also has a RECV_CLOSE_ON_SERVER batch outstanding from the start; its
 *   completion with cancelled=1 is how the client's disappearance is noticed.
 * - Client: each call has its own CQ_PLUCK queue; the calling thread plucks its own tags, so
 *   any number of threads may call concurrently on one rpc_client.
 *
 * Stream lifetime: a stream is reference counted (the application until rpc_stream_finish, one
 * per outstanding batch, one while it is on the server's list). Its grpc_call is released as soon
 * as no batch is outstanding and either the application finished or the server is stopping, so
 * that a server shutdown never waits for the application; a stream the application still holds
 * after that is a "zombie" that only accepts finish (and returns SD_ECANCELED to sends). */
#include "rpc.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"

#define RPC_DEFAULT_MAX (4u << 20)
#define RPC_STREAM_QUEUE 1024
#define RPC_REQS_PER_METHOD 4

const char *rpc_code_name(rpc_code c)
{
    static const char *const n[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
    };
    if ((unsigned)c < sizeof n / sizeof n[0])
        return n[c];
    if (c == 15)
        return "DATA_LOSS";
    if (c == 16)
        return "UNAUTHENTICATED";
    return "?";
}

void rpc_buf_free(rpc_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

void rpc_global_init(void)
{
    grpc_init();
}

void rpc_global_shutdown(void)
{
    grpc_shutdown();
}

/* ---- helpers ---- */

static void set_status(rpc_status *st, rpc_code code, const char *msg)
{
    if (!st)
        return;
    st->code = code;
    snprintf(st->msg, sizeof st->msg, "%s", msg ? msg : "");
}

static void set_status_slice(rpc_status *st, grpc_status_code code, grpc_slice details)
{
    if (!st)
        return;
    st->code = (rpc_code)code;
    size_t n = GRPC_SLICE_LENGTH(details);
    if (n >= sizeof st->msg)
        n = sizeof st->msg - 1;
    memcpy(st->msg, GRPC_SLICE_START_PTR(details), n);
    st->msg[n] = 0;
}

/* Flatten a (possibly multi-slice) byte buffer into malloc'd bytes; destroys bb. */
static sd_err bb_take(grpc_byte_buffer *bb, rpc_buf *out)
{
    grpc_byte_buffer_reader r;
    out->data = NULL;
    out->len = 0;
    if (!grpc_byte_buffer_reader_init(&r, bb)) {
        grpc_byte_buffer_destroy(bb);
        return sd_fail(SD_EPROTO, "rpc: cannot read a message (bad compression?)");
    }
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    grpc_byte_buffer_destroy(bb);
    size_t n = GRPC_SLICE_LENGTH(s);
    out->data = malloc(n ? n : 1);
    if (!out->data) {
        grpc_slice_unref(s);
        return sd_fail(SD_ENOMEM, "rpc: out of memory for a %zu-byte message", n);
    }
    memcpy(out->data, GRPC_SLICE_START_PTR(s), n);
    out->len = n;
    grpc_slice_unref(s);
    return SD_OK;
}

static grpc_byte_buffer *bb_make(const void *data, size_t len)
{
    grpc_slice s = grpc_slice_malloc(len);
    if (len)
        memcpy(GRPC_SLICE_START_PTR(s), data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static gpr_timespec deadline_ms(int ms)
{
    if (ms <= 0)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis((int64_t)ms, GPR_TIMESPAN));
}

static void channel_args(grpc_arg a[2], grpc_channel_args *ca, size_t max)
{
    int lim = max > (size_t)0x7fffffff ? 0x7fffffff : (int)max;
    memset(a, 0, 2 * sizeof a[0]);
    a[0].type = GRPC_ARG_INTEGER;
    a[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    a[0].value.integer = lim;
    a[1].type = GRPC_ARG_INTEGER;
    a[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    a[1].value.integer = lim;
    ca->num_args = 2;
    ca->args = a;
}

/* ---- server ---- */

typedef enum {
    TAG_REQ,      /* a requested registered call arrived (or the request was killed) */
    TAG_GENERIC,  /* a call to an unregistered method arrived */
    TAG_UNARY,    /* a unary reply batch completed */
    TAG_UNIMPL,   /* the UNIMPLEMENTED reply batch completed */
    TAG_S_CLOSE,  /* RECV_CLOSE_ON_SERVER of a stream */
    TAG_S_SEND,   /* SEND_MESSAGE of a stream */
    TAG_S_STATUS, /* SEND_STATUS_FROM_SERVER of a stream */
    TAG_SHUTDOWN,
} tag_kind;

typedef struct {
    tag_kind kind;
    void *obj;
} srv_tag;

typedef struct {
    char *name;
    int streaming;
    rpc_unary_fn ufn;
    rpc_stream_fn sfn;
    void (*on_cancel)(void *ud, rpc_stream *s);
    void *ud;
    void *reg; /* grpc_server_register_method handle */
} srv_method;

/* An outstanding request for a call (registered method or generic). */
typedef struct {
    srv_tag tag;
    srv_method *m; /* NULL for the generic request */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_call_details details;
} srv_req;

/* A call answered with one batch (unary reply, UNIMPLEMENTED). */
typedef struct {
    srv_tag tag;
    grpc_call *call;
    grpc_byte_buffer *resp;
    grpc_slice details;
    int cancelled;
} srv_oneshot;

struct rpc_server {
    rpc_server_opts o;
    char addr[256];
    srv_method *m;
    int nm;
    grpc_server *srv;
    grpc_completion_queue *cq;
    pthread_t th;
    int started, stopped;
    atomic_int stopping;
    srv_tag shutdown_tag;
    int shutdown_seen; /* under list_mu */
    pthread_cond_t shutdown_cv;
    pthread_mutex_t list_mu; /* guards the stream list and the stopping transition */
    rpc_stream *streams;
    int n_oneshot; /* CQ thread only */
};

struct rpc_stream {
    srv_tag t_close, t_send, t_status;
    rpc_server *srv;
    srv_method *m;
    pthread_mutex_t mu;
    int refs;
    grpc_call *call;
    int md_sent, send_busy, status_started, app_done, cancelled, cancel_fired, close_cancelled;
    int status_pending; /* finish was called while messages were still queued */
    int pending;        /* outstanding batches */
    grpc_byte_buffer *q[RPC_STREAM_QUEUE];
    int qh, qn;
    grpc_byte_buffer *inflight;
    rpc_code fin_code;
    grpc_slice fin_msg;
    int have_fin_msg;
    void *ud;
    rpc_stream *prev, *next; /* server list, under srv->list_mu */
    int listed;
    /* on_cancel in progress (on cb_thread): rpc_stream_finish from another thread waits, so
     * that on_cancel never runs after finish has returned. */
    int cb_running;
    pthread_t cb_thread;
    pthread_cond_t cb_cv;
};

static void stream_free(rpc_stream *s)
{
    for (int i = 0; i < s->qn; i++)
        grpc_byte_buffer_destroy(s->q[(s->qh + i) % RPC_STREAM_QUEUE]);
    if (s->have_fin_msg)
        grpc_slice_unref(s->fin_msg);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cb_cv);
    free(s);
}

static void stream_unref(rpc_stream *s)
{
    pthread_mutex_lock(&s->mu);
    int z = --s->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (z)
        stream_free(s);
}

/* Release the grpc_call once nothing is outstanding and nobody will start a batch again. The
 * caller holds a reference. */
static void stream_settle(rpc_stream *s)
{
    grpc_call *c = NULL;
    rpc_server *srv = NULL;
    pthread_mutex_lock(&s->mu);
    /* While s->call is set the server is alive (its shutdown waits for every call). */
    if (s->call && s->pending == 0 && (s->app_done || atomic_load(&s->srv->stopping))) {
        c = s->call;
        s->call = NULL;
        srv = s->srv;
        /* Dropping the queue here (not at free) keeps gRPC objects from outliving the server. */
        for (int i = 0; i < s->qn; i++)
            grpc_byte_buffer_destroy(s->q[(s->qh + i) % RPC_STREAM_QUEUE]);
        s->qn = 0;
    }
    pthread_mutex_unlock(&s->mu);
    if (!c)
        return;
    grpc_call_unref(c);
    pthread_mutex_lock(&srv->list_mu);
    if (s->listed) {
        if (s->prev)
            s->prev->next = s->next;
        else
            srv->streams = s->next;
        if (s->next)
            s->next->prev = s->prev;
        s->listed = 0;
    }
    pthread_mutex_unlock(&srv->list_mu);
    stream_unref(s); /* the list's reference */
}

/* With s->mu held: may a batch be started now? */
static int stream_can_start(rpc_stream *s)
{
    return s->call && !s->cancelled && !atomic_load(&s->srv->stopping);
}

/* With s->mu held: start the next queued message or, when the queue is empty and finish was
 * called, the final status. */
static void stream_kick(rpc_stream *s)
{
    if (s->send_busy || s->status_started || !stream_can_start(s))
        return;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!s->md_sent) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
    }
    if (s->qn > 0) {
        grpc_byte_buffer *bb = s->q[s->qh];
        s->qh = (s->qh + 1) % RPC_STREAM_QUEUE;
        s->qn--;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = bb;
        n++;
        s->inflight = bb;
        grpc_call_error e = grpc_call_start_batch(s->call, ops, n, &s->t_send, NULL);
        if (e != GRPC_CALL_OK) {
            LOG_WARN("rpc", "stream send batch refused: %d", (int)e);
            grpc_byte_buffer_destroy(bb);
            s->inflight = NULL;
            s->cancelled = 1;
            return;
        }
        s->md_sent = 1;
        s->send_busy = 1;
        s->pending++;
        s->refs++;
        return;
    }
    if (!s->status_pending)
        return;
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)s->fin_code;
    ops[n].data.send_status_from_server.status_details = s->have_fin_msg ? &s->fin_msg : NULL;
    n++;
    grpc_call_error e = grpc_call_start_batch(s->call, ops, n, &s->t_status, NULL);
    if (e != GRPC_CALL_OK) {
        LOG_WARN("rpc", "stream status batch refused: %d", (int)e);
        s->cancelled = 1;
        return;
    }
    s->md_sent = 1;
    s->status_started = 1;
    s->pending++;
    s->refs++;
}

void rpc_stream_set_ud(rpc_stream *s, void *ud)
{
    s->ud = ud;
}

void *rpc_stream_ud(const rpc_stream *s)
{
    return s->ud;
}

int rpc_stream_cancelled(const rpc_stream *s)
{
    rpc_stream *m = (rpc_stream *)s;
    pthread_mutex_lock(&m->mu);
    int c = m->cancelled || !m->call;
    pthread_mutex_unlock(&m->mu);
    return c;
}

sd_err rpc_stream_send(rpc_stream *s, const void *data, size_t len)
{
    pthread_mutex_lock(&s->mu);
    if (s->app_done || !stream_can_start(s)) {
        pthread_mutex_unlock(&s->mu);
        return sd_fail(SD_ECANCELED, "rpc: stream cancelled (client gone or server stopping)");
    }
    if (len > s->srv->o.max_msg_bytes) {
        size_t lim = s->srv->o.max_msg_bytes;
        pthread_mutex_unlock(&s->mu);
        return sd_fail(SD_EINVAL, "rpc: stream message of %zu bytes over the %zu-byte limit", len,
                       lim);
    }
    if (s->qn >= RPC_STREAM_QUEUE) {
        pthread_mutex_unlock(&s->mu);
        return sd_fail(SD_ENOMEM, "rpc: stream queue full (%d messages pending)", RPC_STREAM_QUEUE);
    }
    s->q[(s->qh + s->qn) % RPC_STREAM_QUEUE] = bb_make(data, len);
    s->qn++;
    stream_kick(s);
    pthread_mutex_unlock(&s->mu);
    return SD_OK;
}

void rpc_stream_finish(rpc_stream *s, rpc_code code, const char *msg)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    while (s->cb_running && !pthread_equal(s->cb_thread, pthread_self()))
        pthread_cond_wait(&s->cb_cv, &s->mu);
    if (s->app_done) { /* a double finish is a caller bug; do not double-unref */
        pthread_mutex_unlock(&s->mu);
        LOG_ERROR("rpc", "rpc_stream_finish called twice");
        return;
    }
    s->app_done = 1;
    if (s->call) {
        s->fin_code = code;
        if (msg && *msg) {
            s->fin_msg = grpc_slice_from_copied_string(msg);
            s->have_fin_msg = 1;
        }
        s->status_pending = 1;
        stream_kick(s);
    }
    pthread_mutex_unlock(&s->mu);
    stream_settle(s);
    stream_unref(s); /* the application's reference */
}

/* With s->mu held: the client is gone. Returns whether on_cancel should fire (outside the lock). */
static int stream_mark_cancelled(rpc_stream *s)
{
    s->cancelled = 1;
    for (int i = 0; i < s->qn; i++)
        grpc_byte_buffer_destroy(s->q[(s->qh + i) % RPC_STREAM_QUEUE]);
    s->qn = 0;
    if (s->cancel_fired || s->app_done)
        return 0;
    s->cancel_fired = 1;
    s->cb_running = 1;
    s->cb_thread = pthread_self();
    return 1;
}

/* After stream_mark_cancelled returned 1: run on_cancel (without the lock). */
static void stream_fire_cancel(rpc_stream *s)
{
    if (s->m->on_cancel)
        s->m->on_cancel(s->m->ud, s);
    pthread_mutex_lock(&s->mu);
    s->cb_running = 0;
    pthread_cond_broadcast(&s->cb_cv);
    pthread_mutex_unlock(&s->mu);
}

static void stream_event(rpc_stream *s, tag_kind k, int ok)
{
    int fire = 0;
    pthread_mutex_lock(&s->mu);
    s->pending--;
    if (k == TAG_S_SEND) {
        grpc_byte_buffer_destroy(s->inflight);
        s->inflight = NULL;
        s->send_busy = 0;
        if (!ok)
            fire = stream_mark_cancelled(s);
        else
            stream_kick(s);
    } else if (k == TAG_S_CLOSE) {
        if (s->close_cancelled || !ok)
            fire = stream_mark_cancelled(s);
        else
            s->cancelled = 1; /* call over: nothing more can be sent */
    }
    pthread_mutex_unlock(&s->mu);
    if (fire)
        stream_fire_cancel(s);
    stream_settle(s);
    stream_unref(s); /* the batch's reference */
}

static void oneshot_reply(rpc_server *srv, grpc_call *call, tag_kind kind, rpc_code code,
                          const char *msg, grpc_byte_buffer *resp)
{
    srv_oneshot *o = calloc(1, sizeof *o);
    if (!o) {
        grpc_call_cancel(call, NULL);
        grpc_call_unref(call);
        return;
    }
    o->tag.kind = kind;
    o->tag.obj = o;
    o->call = call;
    o->resp = resp;
    o->details = grpc_slice_from_copied_string(msg ? msg : "");
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (resp) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = resp;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)code;
    ops[n++].data.send_status_from_server.status_details = &o->details;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &o->cancelled;
    grpc_call_error e = grpc_call_start_batch(call, ops, n, &o->tag, NULL);
    if (e != GRPC_CALL_OK) {
        LOG_WARN("rpc", "reply batch refused: %d", (int)e);
        grpc_call_unref(call);
        if (resp)
            grpc_byte_buffer_destroy(resp);
        grpc_slice_unref(o->details);
        free(o);
        return;
    }
    srv->n_oneshot++;
}

static void oneshot_done(rpc_server *srv, srv_oneshot *o)
{
    grpc_call_unref(o->call);
    if (o->resp)
        grpc_byte_buffer_destroy(o->resp);
    grpc_slice_unref(o->details);
    free(o);
    srv->n_oneshot--;
}

static void req_post(rpc_server *srv, srv_req *r)
{
    grpc_call_error e;
    r->call = NULL;
    r->payload = NULL;
    grpc_metadata_array_init(&r->md);
    if (r->m) {
        e = grpc_server_request_registered_call(srv->srv, r->m->reg, &r->call, &r->deadline, &r->md,
                                                &r->payload, srv->cq, srv->cq, &r->tag);
    } else {
        grpc_call_details_init(&r->details);
        e = grpc_server_request_call(srv->srv, &r->call, &r->details, &r->md, srv->cq, srv->cq,
                                     &r->tag);
    }
    if (e != GRPC_CALL_OK) {
        LOG_WARN("rpc", "request_call refused: %d", (int)e);
        grpc_metadata_array_destroy(&r->md);
        if (!r->m)
            grpc_call_details_destroy(&r->details);
        free(r);
    }
}

static void handle_unary(rpc_server *srv, srv_method *m, grpc_call *call, const rpc_buf *req)
{
    rpc_buf resp = {0};
    rpc_status st = {RPC_OK, ""};
    rpc_code c = m->ufn(m->ud, req->data, req->len, &resp, &st);
    grpc_byte_buffer *bb = NULL;
    if (c == RPC_OK && resp.len > srv->o.max_msg_bytes) {
        c = RPC_RESOURCE_EXHAUSTED;
        snprintf(st.msg, sizeof st.msg, "%s: response of %zu bytes over the %zu-byte limit",
                 m->name, resp.len, srv->o.max_msg_bytes);
    } else if (c == RPC_OK) {
        bb = bb_make(resp.data, resp.len);
        st.msg[0] = 0;
    }
    rpc_buf_free(&resp);
    oneshot_reply(srv, call, TAG_UNARY, c, st.msg, bb);
}

static void handle_stream(rpc_server *srv, srv_method *m, grpc_call *call, const rpc_buf *req)
{
    rpc_stream *s = calloc(1, sizeof *s);
    if (!s) {
        oneshot_reply(srv, call, TAG_UNARY, RPC_RESOURCE_EXHAUSTED, "out of memory", NULL);
        return;
    }
    s->t_close = (srv_tag){TAG_S_CLOSE, s};
    s->t_send = (srv_tag){TAG_S_SEND, s};
    s->t_status = (srv_tag){TAG_S_STATUS, s};
    s->srv = srv;
    s->m = m;
    s->call = call;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cb_cv, NULL);
    s->refs = 1; /* application */

    pthread_mutex_lock(&srv->list_mu);
    if (atomic_load(&srv->stopping)) {
        pthread_mutex_unlock(&srv->list_mu);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cb_cv);
        free(s);
        oneshot_reply(srv, call, TAG_UNARY, RPC_UNAVAILABLE, "server shutting down", NULL);
        return;
    }
    s->next = srv->streams;
    if (s->next)
        s->next->prev = s;
    srv->streams = s;
    s->listed = 1;
    s->refs++; /* list */
    pthread_mutex_unlock(&srv->list_mu);

    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &s->close_cancelled;
    pthread_mutex_lock(&s->mu);
    if (grpc_call_start_batch(call, &op, 1, &s->t_close, NULL) == GRPC_CALL_OK) {
        s->pending++;
        s->refs++;
    } else {
        s->cancelled = 1;
    }
    pthread_mutex_unlock(&s->mu);

    rpc_status st = {RPC_OK, ""};
    rpc_code c = m->sfn(m->ud, req->data, req->len, s, &st);
    if (c != RPC_OK)
        rpc_stream_finish(s, c, st.msg);
}

static void handle_req(rpc_server *srv, srv_req *r, int ok)
{
    int stopping = atomic_load(&srv->stopping);
    grpc_call *call = r->call;
    grpc_byte_buffer *payload = r->payload;
    srv_method *m = r->m;
    grpc_metadata_array_destroy(&r->md);
    if (!ok || !call) { /* killed by shutdown */
        if (payload)
            grpc_byte_buffer_destroy(payload);
        if (!m)
            grpc_call_details_destroy(&r->details);
        free(r);
        return;
    }
    if (!m) {
        char msg[200];
        size_t n = GRPC_SLICE_LENGTH(r->details.method);
        snprintf(msg, sizeof msg, "method %.*s not implemented", (int)(n > 150 ? 150 : n),
                 (const char *)GRPC_SLICE_START_PTR(r->details.method));
        grpc_call_details_destroy(&r->details);
        if (payload)
            grpc_byte_buffer_destroy(payload);
        oneshot_reply(srv, call, TAG_UNIMPL, RPC_UNIMPLEMENTED, msg, NULL);
    } else if (stopping) {
        if (payload)
            grpc_byte_buffer_destroy(payload);
        oneshot_reply(srv, call, TAG_UNARY, RPC_UNAVAILABLE, "server shutting down", NULL);
    } else if (!payload) {
        /* No request message: the client closed early or its message broke a limit. */
        oneshot_reply(srv, call, TAG_UNARY, RPC_INVALID_ARGUMENT, "request message missing", NULL);
    } else {
        rpc_buf req;
        if (bb_take(payload, &req) != SD_OK) {
            oneshot_reply(srv, call, TAG_UNARY, RPC_INTERNAL, sd_errmsg(), NULL);
        } else {
            if (m->streaming)
                handle_stream(srv, m, call, &req);
            else
                handle_unary(srv, m, call, &req);
            rpc_buf_free(&req);
        }
    }
    if (stopping) {
        free(r);
        return;
    }
    req_post(srv, r); /* re-arm the same request slot */
}

static void dispatch(rpc_server *srv, grpc_event ev)
{
    srv_tag *t = ev.tag;
    switch (t->kind) {
    case TAG_REQ:
    case TAG_GENERIC:
        handle_req(srv, t->obj, ev.success);
        break;
    case TAG_UNARY:
    case TAG_UNIMPL:
        oneshot_done(srv, t->obj);
        break;
    case TAG_S_CLOSE:
    case TAG_S_SEND:
    case TAG_S_STATUS:
        stream_event(t->obj, t->kind, ev.success);
        break;
    case TAG_SHUTDOWN:
        /* rpc_server_shutdown destroys the server and shuts the queue down; the thread goes on
         * draining until GRPC_QUEUE_SHUTDOWN. */
        pthread_mutex_lock(&srv->list_mu);
        srv->shutdown_seen = 1;
        pthread_cond_broadcast(&srv->shutdown_cv);
        pthread_mutex_unlock(&srv->list_mu);
        break;
    }
}

static void *server_thread(void *arg)
{
    rpc_server *srv = arg;
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            dispatch(srv, ev);
    }
    return NULL;
}

sd_err rpc_server_create(rpc_server **out, const rpc_server_opts *o)
{
    *out = NULL;
    if (!o || !o->addr || !*o->addr)
        return sd_fail(SD_EINVAL, "rpc: server needs an address");
    rpc_server *s = calloc(1, sizeof *s);
    if (!s)
        return sd_fail(SD_ENOMEM, "rpc: out of memory");
    s->o = *o;
    snprintf(s->addr, sizeof s->addr, "%s", o->addr);
    s->o.addr = s->addr;
    if (!s->o.max_msg_bytes)
        s->o.max_msg_bytes = RPC_DEFAULT_MAX;
    if (s->o.max_msg_bytes > 0x7fffffff)
        s->o.max_msg_bytes = 0x7fffffff;
    pthread_mutex_init(&s->list_mu, NULL);
    pthread_cond_init(&s->shutdown_cv, NULL);
    s->shutdown_tag.kind = TAG_SHUTDOWN;
    s->shutdown_tag.obj = s;
    grpc_init();
    *out = s;
    return SD_OK;
}

static sd_err add_method(rpc_server *s, const char *method, int streaming, rpc_unary_fn ufn,
                         rpc_stream_fn sfn, void *ud, void (*on_cancel)(void *, rpc_stream *))
{
    if (s->started)
        return sd_fail(SD_EINVAL, "rpc: %s registered after the server started", method);
    if (!method || method[0] != '/')
        return sd_fail(SD_EINVAL, "rpc: method \"%s\" must be a full path (/pkg.Service/Name)",
                       method ? method : "");
    for (int i = 0; i < s->nm; i++)
        if (strcmp(s->m[i].name, method) == 0)
            return sd_fail(SD_EINVAL, "rpc: method %s registered twice", method);
    srv_method *m = realloc(s->m, sizeof *m * (size_t)(s->nm + 1));
    if (!m)
        return sd_fail(SD_ENOMEM, "rpc: out of memory");
    s->m = m;
    srv_method *x = &s->m[s->nm];
    memset(x, 0, sizeof *x);
    x->name = strdup(method);
    if (!x->name)
        return sd_fail(SD_ENOMEM, "rpc: out of memory");
    x->streaming = streaming;
    x->ufn = ufn;
    x->sfn = sfn;
    x->ud = ud;
    x->on_cancel = on_cancel;
    s->nm++;
    return SD_OK;
}

sd_err rpc_server_add_unary(rpc_server *s, const char *method, rpc_unary_fn fn, void *ud)
{
    if (!fn)
        return sd_fail(SD_EINVAL, "rpc: %s: no handler", method ? method : "");
    return add_method(s, method, 0, fn, NULL, ud, NULL);
}

sd_err rpc_server_add_stream(rpc_server *s, const char *method, rpc_stream_fn fn, void *ud,
                             void (*on_cancel)(void *ud, rpc_stream *s))
{
    if (!fn)
        return sd_fail(SD_EINVAL, "rpc: %s: no handler", method ? method : "");
    return add_method(s, method, 1, NULL, fn, ud, on_cancel);
}

sd_err rpc_server_start(rpc_server *s, int *port)
{
    if (s->started)
        return sd_fail(SD_EINVAL, "rpc: server already started");
    grpc_arg a[2];
    grpc_channel_args ca;
    channel_args(a, &ca, s->o.max_msg_bytes);
    s->srv = grpc_server_create(&ca, NULL);
    s->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(s->srv, s->cq, NULL);
    for (int i = 0; i < s->nm; i++) {
        s->m[i].reg = grpc_server_register_method(s->srv, s->m[i].name, NULL,
                                                  GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        if (!s->m[i].reg) {
            grpc_server_destroy(s->srv);
            grpc_completion_queue_shutdown(s->cq);
            grpc_completion_queue_destroy(s->cq);
            s->srv = NULL;
            s->cq = NULL;
            return sd_fail(SD_EINVAL, "rpc: cannot register %s", s->m[i].name);
        }
    }
    grpc_server_credentials *cr = grpc_insecure_server_credentials_create();
    int p = grpc_server_add_http2_port(s->srv, s->addr, cr);
    grpc_server_credentials_release(cr);
    if (p <= 0) {
        grpc_server_destroy(s->srv);
        grpc_completion_queue_shutdown(s->cq);
        grpc_completion_queue_destroy(s->cq);
        s->srv = NULL;
        s->cq = NULL;
        return sd_fail(SD_EIO, "rpc: cannot bind %s (in use or bad address)", s->addr);
    }
    grpc_server_start(s->srv);
    for (int i = 0; i < s->nm; i++)
        for (int k = 0; k < RPC_REQS_PER_METHOD; k++) {
            srv_req *r = calloc(1, sizeof *r);
            if (!r)
                continue;
            r->tag = (srv_tag){TAG_REQ, r};
            r->m = &s->m[i];
            req_post(s, r);
        }
    srv_req *g = calloc(1, sizeof *g);
    if (g) {
        g->tag = (srv_tag){TAG_GENERIC, g};
        req_post(s, g);
    }
    s->started = 1;
    if (pthread_create(&s->th, NULL, server_thread, s) != 0) {
        /* Without the thread nothing drains the queue: stop inline. */
        atomic_store(&s->stopping, 1);
        grpc_server_shutdown_and_notify(s->srv, s->cq, &s->shutdown_tag);
        grpc_server_cancel_all_calls(s->srv);
        while (!s->shutdown_seen) {
            grpc_event ev =
                grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
            if (ev.type == GRPC_OP_COMPLETE)
                dispatch(s, ev);
        }
        grpc_server_destroy(s->srv);
        s->srv = NULL;
        grpc_completion_queue_shutdown(s->cq);
        server_thread(s);
        grpc_completion_queue_destroy(s->cq);
        s->cq = NULL;
        s->stopped = 1;
        return sd_fail(SD_ENOMEM, "rpc: cannot start the server thread");
    }
    if (port)
        *port = p;
    LOG_INFO("rpc", "server on %s (port %d), %d methods", s->addr, p, s->nm);
    return SD_OK;
}

void rpc_server_shutdown(rpc_server *s)
{
    if (!s || !s->started || s->stopped)
        return;
    /* Every stream the application has not finished is cancelled first, with its on_cancel,
     * before anything else can fail its sends; new streams are refused from here on. */
    /* Marked cancelled before `stopping` is set: a producer whose send fails from here on waits
     * in rpc_stream_finish until on_cancel has run (cb_running), so no stream is finished by its
     * application between the two and loses its on_cancel. */
    pthread_mutex_lock(&s->list_mu);
    size_t n = 0, cap = 0;
    rpc_stream **all = NULL;
    unsigned char *fire = NULL;
    for (rpc_stream *x = s->streams; x; x = x->next) {
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            rpc_stream **a = realloc(all, cap * sizeof *a);
            unsigned char *f = a ? realloc(fire, cap) : NULL;
            if (a)
                all = a;
            if (!f)
                break; /* the rest is released as its batches complete */
            fire = f;
        }
        pthread_mutex_lock(&x->mu);
        x->refs++;
        fire[n] = (unsigned char)stream_mark_cancelled(x);
        pthread_mutex_unlock(&x->mu);
        all[n++] = x;
    }
    atomic_store(&s->stopping, 1);
    pthread_mutex_unlock(&s->list_mu);
    for (size_t i = 0; i < n; i++)
        if (fire[i])
            stream_fire_cancel(all[i]);
    free(fire);
    grpc_server_shutdown_and_notify(s->srv, s->cq, &s->shutdown_tag);
    grpc_server_cancel_all_calls(s->srv);
    /* Streams with nothing outstanding release their call here (the others as their batches
     * complete), so the shutdown never waits on the application. */
    for (size_t i = 0; i < n; i++) {
        stream_settle(all[i]);
        stream_unref(all[i]);
    }
    free(all);
    pthread_mutex_lock(&s->list_mu);
    while (!s->shutdown_seen)
        pthread_cond_wait(&s->shutdown_cv, &s->list_mu);
    pthread_mutex_unlock(&s->list_mu);
    grpc_server_destroy(s->srv);
    s->srv = NULL;
    grpc_completion_queue_shutdown(s->cq);
    pthread_join(s->th, NULL);
    grpc_completion_queue_destroy(s->cq);
    s->cq = NULL;
    s->stopped = 1;
}

void rpc_server_free(rpc_server *s)
{
    if (!s)
        return;
    rpc_server_shutdown(s);
    for (int i = 0; i < s->nm; i++)
        free(s->m[i].name);
    free(s->m);
    pthread_mutex_destroy(&s->list_mu);
    pthread_cond_destroy(&s->shutdown_cv);
    free(s);
    grpc_shutdown();
}

/* ---- client ---- */

struct rpc_client {
    grpc_channel *ch;
    size_t max;
    char target[256];
};

struct rpc_call {
    grpc_call *call;
    grpc_completion_queue *cq;
    grpc_metadata_array md_init, md_trail;
    grpc_status_code status;
    grpc_slice details;
    int t_send, t_recv, t_status; /* tag addresses */
    int got_md, status_started, finished;
    rpc_status final;
};

sd_err rpc_client_create(rpc_client **out, const char *target, size_t max_msg_bytes)
{
    *out = NULL;
    if (!target || !*target)
        return sd_fail(SD_EINVAL, "rpc: client needs a target");
    rpc_client *c = calloc(1, sizeof *c);
    if (!c)
        return sd_fail(SD_ENOMEM, "rpc: out of memory");
    grpc_init();
    c->max = max_msg_bytes ? max_msg_bytes : RPC_DEFAULT_MAX;
    if (c->max > 0x7fffffff)
        c->max = 0x7fffffff;
    snprintf(c->target, sizeof c->target, "%s", target);
    grpc_arg a[2];
    grpc_channel_args ca;
    channel_args(a, &ca, c->max);
    grpc_channel_credentials *cr = grpc_insecure_credentials_create();
    c->ch = grpc_channel_create(target, cr, &ca);
    grpc_channel_credentials_release(cr);
    if (!c->ch) {
        free(c);
        grpc_shutdown();
        return sd_fail(SD_EINVAL, "rpc: cannot create a channel to %s", target);
    }
    *out = c;
    return SD_OK;
}

void rpc_client_free(rpc_client *c)
{
    if (!c)
        return;
    grpc_channel_destroy(c->ch);
    free(c);
    grpc_shutdown();
}

static int pluck(grpc_completion_queue *cq, void *tag)
{
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_pluck(cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_OP_COMPLETE)
            return ev.success;
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            return 0;
    }
}

static sd_err call_open(rpc_client *c, const char *method, int timeout_ms, rpc_call *k)
{
    memset(k, 0, sizeof *k);
    if (!method || method[0] != '/')
        return sd_fail(SD_EINVAL, "rpc: method \"%s\" must be a full path", method ? method : "");
    k->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice ms = grpc_slice_from_copied_string(method);
    k->call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, k->cq, ms, NULL,
                                       deadline_ms(timeout_ms), NULL);
    grpc_slice_unref(ms);
    if (!k->call) {
        grpc_completion_queue_shutdown(k->cq);
        grpc_completion_queue_destroy(k->cq);
        k->cq = NULL;
        return sd_fail(SD_EIO, "rpc: cannot create a call %s to %s", method, c->target);
    }
    grpc_metadata_array_init(&k->md_init);
    grpc_metadata_array_init(&k->md_trail);
    k->details = grpc_empty_slice();
    return SD_OK;
}

static void call_close(rpc_call *k)
{
    if (k->call)
        grpc_call_unref(k->call);
    k->call = NULL;
    grpc_metadata_array_destroy(&k->md_init);
    grpc_metadata_array_destroy(&k->md_trail);
    grpc_slice_unref(k->details);
    if (k->cq) {
        grpc_completion_queue_shutdown(k->cq);
        grpc_completion_queue_destroy(k->cq);
    }
    k->cq = NULL;
}

sd_err rpc_call_unary(rpc_client *c, const char *method, const void *req, size_t len,
                      int timeout_ms, int wait_for_ready, rpc_buf *resp, rpc_status *st)
{
    if (resp) {
        resp->data = NULL;
        resp->len = 0;
    }
    set_status(st, RPC_UNKNOWN, "");
    rpc_call k;
    sd_err e = call_open(c, method, timeout_ms, &k);
    if (e)
        return e;
    grpc_byte_buffer *bb = bb_make(req, len), *rb = NULL;
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].flags = wait_for_ready ? GRPC_INITIAL_METADATA_WAIT_FOR_READY : 0;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &k.md_init;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &rb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &k.md_trail;
    ops[5].data.recv_status_on_client.status = &k.status;
    ops[5].data.recv_status_on_client.status_details = &k.details;
    grpc_call_error ce = grpc_call_start_batch(k.call, ops, 6, &k.t_send, NULL);
    if (ce != GRPC_CALL_OK) {
        grpc_byte_buffer_destroy(bb);
        call_close(&k);
        return sd_fail(SD_EIO, "rpc: %s: batch refused (%d)", method, (int)ce);
    }
    pluck(k.cq, &k.t_send);
    grpc_byte_buffer_destroy(bb);
    set_status_slice(st, k.status, k.details);
    e = SD_OK;
    if (k.status == GRPC_STATUS_OK) {
        if (!rb) {
            set_status(st, RPC_INTERNAL, "no response message");
        } else if (resp) {
            if (bb_take(rb, resp) != SD_OK)
                set_status(st, RPC_INTERNAL, sd_errmsg());
            rb = NULL;
        }
    }
    if (rb)
        grpc_byte_buffer_destroy(rb);
    call_close(&k);
    return e;
}

sd_err rpc_call_stream(rpc_client *c, const char *method, const void *req, size_t len,
                       int timeout_ms, int wait_for_ready, rpc_call **out)
{
    *out = NULL;
    rpc_call *k = malloc(sizeof *k);
    if (!k)
        return sd_fail(SD_ENOMEM, "rpc: out of memory");
    sd_err e = call_open(c, method, timeout_ms, k);
    if (e) {
        free(k);
        return e;
    }
    /* The status is requested up front so that it is collected whatever happens to the call. */
    grpc_op sop;
    memset(&sop, 0, sizeof sop);
    sop.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    sop.data.recv_status_on_client.trailing_metadata = &k->md_trail;
    sop.data.recv_status_on_client.status = &k->status;
    sop.data.recv_status_on_client.status_details = &k->details;
    grpc_byte_buffer *bb = bb_make(req, len);
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].flags = wait_for_ready ? GRPC_INITIAL_METADATA_WAIT_FOR_READY : 0;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    grpc_call_error ce = grpc_call_start_batch(k->call, ops, 3, &k->t_send, NULL);
    if (ce != GRPC_CALL_OK) {
        grpc_byte_buffer_destroy(bb);
        call_close(k);
        free(k);
        return sd_fail(SD_EIO, "rpc: %s: batch refused (%d)", method, (int)ce);
    }
    ce = grpc_call_start_batch(k->call, &sop, 1, &k->t_status, NULL);
    if (ce != GRPC_CALL_OK) {
        grpc_call_cancel(k->call, NULL);
        pluck(k->cq, &k->t_send);
        grpc_byte_buffer_destroy(bb);
        call_close(k);
        free(k);
        return sd_fail(SD_EIO, "rpc: %s: status batch refused (%d)", method, (int)ce);
    }
    k->status_started = 1;
    /* Sends complete once written (or when the call fails, e.g. no server without
     * wait-for-ready); either way the outcome is read by rpc_call_next. */
    pluck(k->cq, &k->t_send);
    grpc_byte_buffer_destroy(bb);
    *out = k;
    return SD_OK;
}

int rpc_call_next(rpc_call *k, rpc_buf *msg, rpc_status *st)
{
    msg->data = NULL;
    msg->len = 0;
    if (k->finished) {
        if (st)
            *st = k->final;
        return 0;
    }
    grpc_byte_buffer *rb = NULL;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!k->got_md) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &k->md_init;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &rb;
    grpc_call_error ce = grpc_call_start_batch(k->call, ops, n, &k->t_recv, NULL);
    if (ce != GRPC_CALL_OK) {
        sd_fail(SD_EIO, "rpc: receive batch refused (%d)", (int)ce);
        return -1;
    }
    k->got_md = 1;
    pluck(k->cq, &k->t_recv);
    if (rb) {
        if (bb_take(rb, msg) != SD_OK)
            return -1;
        return 1;
    }
    pluck(k->cq, &k->t_status);
    k->status_started = 0;
    k->finished = 1;
    set_status_slice(&k->final, k->status, k->details);
    if (st)
        *st = k->final;
    return 0;
}

void rpc_call_cancel(rpc_call *k)
{
    if (k && k->call)
        grpc_call_cancel(k->call, NULL);
}

void rpc_call_free(rpc_call *k)
{
    if (!k)
        return;
    if (!k->finished)
        grpc_call_cancel(k->call, NULL);
    if (k->status_started)
        pluck(k->cq, &k->t_status);
    call_close(k);
    free(k);
}
