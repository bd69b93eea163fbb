#include "wk.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "../common/log.h"
#include "../engine/tree.h"
#include "../engine/verify.h"
#include "../net/wire.h"

typedef enum { WK_PREFILL = 1, WK_CHUNK = 2, WK_COMMIT = 3 } wk_item_kind;

typedef struct wk_item {
    struct wk_item *next;
    wk_item_kind kind;
    int cancelled;
    uint64_t chunk_id;
    int base_pos;
    int32_t *tok; /* prefill: tokens; chunk: base tokens; commit: new committed tokens */
    int n_tok;
    int32_t *node_tok, *node_par; /* chunk nodes */
    int n_nodes;
    int n_committed; /* commit */
} wk_item;

typedef struct wk_sess {
    struct wk_sess *next;
    uint64_t id;
    sample_params sp;
    int max_ctx, max_nodes;
    kv_cache *kv;
    verify_work *vw;
    tree t;
    ucx_peer *peer;
    wk_item *head, *tail;
    int busy, closing;
    /* the job being computed */
    wk_item *cur;
    verify_result res;
} wk_sess;

struct wk {
    wk_opts o;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    int stop, started;
    ucx_ctx *ux; /* polled between chunks (wk_set_ucx) */
    wk_sess *sessions;
    int n_sessions;
    model_run *run;
    wk_stats st;
    /* batch scratch */
    wk_sess **bs;     /* [max_sessions] sessions in this batch */
    verify_job *jobs; /* [max_sessions] their jobs (sessions with work to compute) */
    int *job_of;      /* [max_sessions] job index of bs[i], -1 for none */
    sd_err *err;      /* [max_sessions] outcome of bs[i] */
};

static void item_free(wk_item *it)
{
    if (!it)
        return;
    free(it->tok);
    free(it->node_tok);
    free(it->node_par);
    free(it);
}

static void sess_free(wk_sess *s)
{
    while (s->head) {
        wk_item *n = s->head->next;
        item_free(s->head);
        s->head = n;
    }
    item_free(s->cur);
    if (s->peer)
        ucx_peer_unref(s->peer);
    tree_free(&s->t);
    verify_work_free(s->vw);
    kv_free(s->kv);
    free(s);
}

static wk_sess *find(wk *w, uint64_t id)
{
    for (wk_sess *s = w->sessions; s; s = s->next)
        if (s->id == id && !s->closing)
            return s;
    return NULL;
}

rpc_code wk_open_session(wk *w, uint64_t id, const sample_params *sp, int max_ctx, int max_nodes,
                         rpc_status *st)
{
    if (sample_params_check(sp)) {
        snprintf(st->msg, sizeof st->msg, "sampling: %s", sd_errmsg());
        return RPC_INVALID_ARGUMENT;
    }
    if (max_ctx < 2 || max_ctx > w->o.max_ctx) {
        snprintf(st->msg, sizeof st->msg, "context %d outside 2..%d (worker max_ctx)", max_ctx,
                 w->o.max_ctx);
        return RPC_OUT_OF_RANGE;
    }
    if (max_nodes < 0 || max_nodes > w->o.max_nodes) {
        snprintf(st->msg, sizeof st->msg, "tree of %d nodes outside 0..%d (worker max_nodes)",
                 max_nodes, w->o.max_nodes);
        return RPC_OUT_OF_RANGE;
    }
    pthread_mutex_lock(&w->mu);
    int n = w->n_sessions, dup = find(w, id) != NULL, stopping = w->stop;
    pthread_mutex_unlock(&w->mu);
    if (stopping) {
        snprintf(st->msg, sizeof st->msg, "the worker is shutting down");
        return RPC_UNAVAILABLE;
    }
    if (dup) {
        snprintf(st->msg, sizeof st->msg, "session %llu is already open",
                 (unsigned long long)id);
        return RPC_ALREADY_EXISTS;
    }
    if (n >= w->o.max_sessions) {
        snprintf(st->msg, sizeof st->msg, "the worker holds its maximum of %d sessions",
                 w->o.max_sessions);
        return RPC_RESOURCE_EXHAUSTED;
    }
    wk_sess *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(st->msg, sizeof st->msg, "out of memory");
        return RPC_RESOURCE_EXHAUSTED;
    }
    s->id = id;
    s->sp = *sp;
    s->max_ctx = max_ctx;
    s->max_nodes = max_nodes;
    int mn = max_nodes > 0 ? max_nodes : 1;
    sd_err e = model_kv_init(w->o.m, &s->kv, max_ctx);
    if (!e)
        e = verify_work_init(&s->vw, w->o.m, mn);
    if (!e)
        e = tree_init(&s->t, mn, 0);
    if (e) {
        snprintf(st->msg, sizeof st->msg, "cannot allocate the session: %s", sd_errmsg());
        sess_free(s);
        return RPC_RESOURCE_EXHAUSTED;
    }
    pthread_mutex_lock(&w->mu);
    s->next = w->sessions;
    w->sessions = s;
    w->n_sessions++;
    pthread_mutex_unlock(&w->mu);
    LOG_INFO("worker", "session %llu open (context %d, tree %d)", (unsigned long long)id, max_ctx,
             max_nodes);
    return RPC_OK;
}

rpc_code wk_close_session(wk *w, uint64_t id)
{
    pthread_mutex_lock(&w->mu);
    wk_sess *s = find(w, id);
    if (s) {
        s->closing = 1; /* the compute thread frees it when it is not computing */
        w->n_sessions--;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    if (s)
        LOG_INFO("worker", "session %llu closed", (unsigned long long)id);
    return s ? RPC_OK : RPC_NOT_FOUND;
}

static void send_verdict(ucx_peer *p, uint64_t sid, uint64_t cid, const verify_result *r,
                         const char *err, unsigned us, unsigned bseq, unsigned btok)
{
    Specd__Verdict v = SPECD__VERDICT__INIT;
    int32_t path[VERIFY_MAX_NODES];
    v.session_id = sid;
    v.chunk_id = cid;
    if (err) {
        v.error = (char *)err;
    } else {
        for (int i = 0; i < r->n_accept; i++)
            path[i] = r->path[i];
        v.n_path = (size_t)r->n_accept;
        v.path = path;
        v.next = r->next;
    }
    v.compute_us = us;
    v.batch_seqs = bseq;
    v.batch_tokens = btok;
    uint8_t *b;
    size_t len;
    if (wire_pack(&v.base, &b, &len) == SD_OK) {
        if (ucx_send(p, SPECD__DATA_MSG_ID__DATA_MSG_VERDICT, b, len))
            LOG_WARN("worker", "session %llu: verdict for chunk %llu not sent: %s",
                     (unsigned long long)sid, (unsigned long long)cid, sd_errmsg());
        free(b);
    }
}

static void push_item(wk_sess *s, wk_item *it)
{
    if (s->tail)
        s->tail->next = it;
    else
        s->head = it;
    s->tail = it;
}

static int32_t *copy_tok(const int32_t *t, size_t n)
{
    int32_t *c = malloc(sizeof(int32_t) * (n ? n : 1));
    if (c && n)
        memcpy(c, t, sizeof(int32_t) * n);
    return c;
}

void wk_on_msg(wk *w, ucx_peer *from, unsigned msg_id, const void *data, size_t len)
{
    const model_config *mc = model_cfg(w->o.m);
    ProtobufCMessage *m;
    if (wire_decode_data(msg_id, data, len, mc->n_vocab, w->o.max_nodes, &m)) {
        LOG_WARN("worker", "rejected a %s from %s: %s", wire_data_name(msg_id),
                 ucx_peer_name(from), sd_errmsg());
        pthread_mutex_lock(&w->mu);
        w->st.rejected++;
        pthread_mutex_unlock(&w->mu);
        return;
    }
    uint64_t sid = 0;
    wk_item *it = calloc(1, sizeof *it);
    const char *bad = it ? NULL : "out of memory";
    switch (msg_id) {
    case SPECD__DATA_MSG_ID__DATA_MSG_PROMPT: {
        Specd__Prompt *p = (Specd__Prompt *)m;
        sid = p->session_id;
        if (it) {
            it->kind = WK_PREFILL;
            it->n_tok = (int)p->n_tokens - 1; /* the newest token is the first chunk's root */
            it->tok = copy_tok(p->tokens, p->n_tokens);
        }
        break;
    }
    case SPECD__DATA_MSG_ID__DATA_MSG_CHUNK: {
        Specd__Chunk *c = (Specd__Chunk *)m;
        sid = c->session_id;
        if (it) {
            it->kind = WK_CHUNK;
            it->chunk_id = c->chunk_id;
            it->base_pos = (int)c->base_pos;
            it->n_tok = (int)c->n_base_tokens;
            it->tok = copy_tok(c->base_tokens, c->n_base_tokens);
            it->n_nodes = (int)c->n_token;
            it->node_tok = copy_tok(c->token, c->n_token);
            it->node_par = copy_tok(c->parent, c->n_parent);
        }
        break;
    }
    case SPECD__DATA_MSG_ID__DATA_MSG_COMMIT: {
        Specd__Commit *c = (Specd__Commit *)m;
        sid = c->session_id;
        if (it) {
            it->kind = WK_COMMIT;
            it->n_committed = (int)c->n_committed;
            it->n_tok = (int)c->n_tokens;
            it->tok = copy_tok(c->tokens, c->n_tokens);
        }
        break;
    }
    case SPECD__DATA_MSG_ID__DATA_MSG_CANCEL: {
        Specd__Cancel *c = (Specd__Cancel *)m;
        pthread_mutex_lock(&w->mu);
        wk_sess *s = find(w, c->session_id);
        if (s) {
            for (wk_item *q = s->head; q; q = q->next)
                if (q->kind == WK_CHUNK && q->chunk_id == c->chunk_id)
                    q->cancelled = 1;
            if (s->cur && s->cur->chunk_id == c->chunk_id)
                s->cur->cancelled = 1;
        }
        pthread_mutex_unlock(&w->mu);
        item_free(it);
        protobuf_c_message_free_unpacked(m, NULL);
        return;
    }
    default:
        bad = "not a message for a worker";
        break;
    }
    protobuf_c_message_free_unpacked(m, NULL);
    if (!bad && (!it->tok || (it->kind == WK_CHUNK && (!it->node_tok || !it->node_par))))
        bad = "out of memory";
    pthread_mutex_lock(&w->mu);
    wk_sess *s = bad ? NULL : find(w, sid);
    if (!bad && !s)
        bad = "unknown session";
    if (!bad && it->kind == WK_CHUNK && it->n_nodes > s->max_nodes)
        bad = "chunk larger than the session's tree limit";
    if (!bad && it->kind == WK_CHUNK &&
        (it->base_pos < 0 || (int64_t)it->base_pos + it->n_tok + it->n_nodes > s->max_ctx))
        bad = "chunk beyond the session's context";
    if (!bad && it->kind == WK_PREFILL && it->n_tok + 1 > s->max_ctx)
        bad = "prompt longer than the session's context";
    if (bad) {
        w->st.rejected++;
        pthread_mutex_unlock(&w->mu);
        LOG_WARN("worker", "session %llu: rejected a %s from %s: %s", (unsigned long long)sid,
                 wire_data_name(msg_id), ucx_peer_name(from), bad);
        if (it && it->kind == WK_CHUNK && s) /* the coordinator waits for this chunk */
            send_verdict(from, sid, it->chunk_id, NULL, bad, 0, 0, 0);
        item_free(it);
        return;
    }
    if (!s->peer) {
        ucx_peer_ref(from);
        s->peer = from;
    }
    push_item(s, it);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void wk_on_peer_down(wk *w, ucx_peer *p)
{
    pthread_mutex_lock(&w->mu);
    for (wk_sess *s = w->sessions; s; s = s->next)
        if (s->peer == p && !s->closing) {
            s->closing = 1;
            w->n_sessions--;
            LOG_WARN("worker", "session %llu: its coordinator went away; closed",
                     (unsigned long long)s->id);
        }
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Keep the prefix of the KV cache that the commit confirms (positions beyond it stay: a later
 * chunk's base_pos decides about them). */
static void apply_commit(wk_sess *s, const wk_item *it)
{
    int p0 = it->n_committed - it->n_tok;
    for (int i = 0; i < it->n_tok; i++) {
        int p = p0 + i;
        if (p >= s->kv->n_committed)
            break;
        if (p >= 0 && s->kv->tok[p] != it->tok[i]) {
            kv_truncate(s->kv, p);
            break;
        }
    }
}

/* Take one batch of work under the lock; returns its size. */
static int gather(wk *w)
{
    int n = 0, tokens = 0;
    wk_sess **pp = &w->sessions;
    while (*pp) { /* free closed sessions nobody computes */
        wk_sess *s = *pp;
        if (s->closing && !s->busy) {
            *pp = s->next;
            sess_free(s);
            continue;
        }
        pp = &s->next;
    }
    for (wk_sess *s = w->sessions; s; s = s->next) {
        if (s->closing)
            continue;
        while (s->head && (s->head->kind == WK_COMMIT || s->head->cancelled)) {
            wk_item *it = s->head;
            s->head = it->next;
            if (!s->head)
                s->tail = NULL;
            if (it->kind == WK_COMMIT)
                apply_commit(s, it);
            else
                w->st.cancelled++;
            item_free(it);
        }
        if (!s->head)
            continue;
        int need = s->head->n_tok + s->head->n_nodes;
        if (n > 0 && (tokens + need > w->o.max_batch_tokens || !w->o.batching))
            continue;
        wk_item *it = s->head;
        s->head = it->next;
        if (!s->head)
            s->tail = NULL;
        it->next = NULL;
        s->cur = it;
        s->busy = 1;
        w->bs[n++] = s;
        tokens += need;
    }
    return n;
}

/* Prepare session i's job; SD_OK with *skip set for a one-token prompt (nothing to prefill). */
static sd_err prepare(wk_sess *s, verify_job *j, int *skip)
{
    wk_item *it = s->cur;
    memset(j, 0, sizeof *j);
    *skip = 0;
    j->kv = s->kv;
    j->w = s->vw;
    j->mode = VERIFY_SAMPLE;
    j->sp = &s->sp;
    j->res = &s->res;
    j->pre = it->tok;
    j->n_pre = it->n_tok;
    if (it->kind == WK_PREFILL) {
        *skip = it->n_tok <= 0;
        return SD_OK;
    }
    if (s->kv->n_committed < it->base_pos)
        return sd_fail(SD_EPROTO, "the worker holds %d positions, the chunk starts at %d",
                       s->kv->n_committed, it->base_pos);
    kv_truncate(s->kv, it->base_pos);
    tree_clear(&s->t);
    for (int k = 0; k < it->n_nodes; k++)
        if (tree_add(&s->t, it->node_par[k], it->node_tok[k], 0.0f) < 0)
            return sd_fail(SD_EPROTO, "chunk node %d: bad parent %d", k, it->node_par[k]);
    j->t = &s->t;
    return SD_OK;
}

static void compute(wk *w, int n)
{
    int ng = 0, tokens = 0;
    for (int i = 0; i < n; i++) {
        int skip;
        w->err[i] = prepare(w->bs[i], &w->jobs[ng], &skip);
        if (w->err[i] || skip) {
            w->job_of[i] = -1;
            continue;
        }
        w->job_of[i] = ng++;
        tokens += w->bs[i]->cur->n_tok + w->bs[i]->cur->n_nodes;
    }
    double t0 = clock_now_s();
    sd_err e = ng ? verify_batch(w->o.m, w->run, w->jobs, ng) : SD_OK;
    for (int i = 0; i < n; i++)
        if (w->job_of[i] >= 0)
            w->err[i] = e ? e : w->jobs[w->job_of[i]].err;
    if (ng > 0)
        clock_sleep_ms(w->o.forward_delay_ms); /* emulated: a larger target (experiments) */
    unsigned us = (unsigned)((clock_now_s() - t0) * 1e6);
    pthread_mutex_lock(&w->mu);
    if (ng > 0) {
        w->st.forwards++;
        w->st.batched_forwards += ng > 1;
        w->st.verified_tokens += tokens;
        w->st.batch_seqs_total += ng;
    }
    for (int i = 0; i < n; i++) {
        wk_sess *s = w->bs[i];
        wk_item *it = s->cur;
        s->cur = NULL;
        s->busy = 0;
        if (it->kind == WK_CHUNK) {
            w->st.chunks++;
            if (it->cancelled || s->closing) {
                w->st.cancelled++; /* cancelled mid-forward: the result is discarded */
            } else {
                char why[200];
                const char *err = NULL;
                if (w->err[i]) {
                    snprintf(why, sizeof why, "%s",
                             *sd_errmsg() ? sd_errmsg() : sd_strerror(w->err[i]));
                    err = why;
                    LOG_WARN("worker", "session %llu: chunk %llu failed: %s",
                             (unsigned long long)s->id, (unsigned long long)it->chunk_id, why);
                }
                ucx_peer_ref(s->peer);
                ucx_peer *p = s->peer;
                verify_result res = s->res;
                uint64_t sid = s->id;
                pthread_mutex_unlock(&w->mu);
                send_verdict(p, sid, it->chunk_id, &res, err, us, (unsigned)ng,
                             (unsigned)tokens);
                ucx_peer_unref(p);
                pthread_mutex_lock(&w->mu);
            }
        } else if (w->err[i]) {
            LOG_WARN("worker", "session %llu: prefill failed: %s", (unsigned long long)s->id,
                     sd_errmsg());
        }
        item_free(it);
    }
    pthread_mutex_unlock(&w->mu);
}

/* Between chunks the compute thread polls the data plane for up to poll_us: the next chunk
 * of a session usually comes within a few hundred µs of its verdict, and taking it off the
 * network here saves waking the sleeping progress thread and then this one (tens of µs each
 * on a virtual CPU). After that it sleeps until work is queued. */
static void *wk_main(void *arg)
{
    wk *w = arg;
    double idle_since = 0;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        int n = gather(w);
        if (n == 0) {
            if (w->stop)
                break;
            if (w->ux && (clock_now_s() - idle_since) * 1e6 < w->o.poll_us) {
                ucx_ctx *ux = w->ux; /* alive: wk_set_ucx(NULL) joins this thread first */
                pthread_mutex_unlock(&w->mu);
                if (!ucx_poll(ux))
                    sched_yield(); /* a busy machine: whatever else is runnable goes first */
                pthread_mutex_lock(&w->mu);
                continue;
            }
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        pthread_mutex_unlock(&w->mu);
        compute(w, n);
        idle_since = clock_now_s();
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

sd_err wk_create(wk **out, const wk_opts *o)
{
    *out = NULL;
    wk *w = calloc(1, sizeof *w);
    if (!w)
        return SD_ENOMEM;
    w->o = *o;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->bs = calloc((size_t)o->max_sessions, sizeof *w->bs);
    w->jobs = calloc((size_t)o->max_sessions, sizeof *w->jobs);
    w->job_of = calloc((size_t)o->max_sessions, sizeof *w->job_of);
    w->err = calloc((size_t)o->max_sessions, sizeof *w->err);
    sd_err e = w->bs && w->jobs && w->job_of && w->err ? model_run_init(&w->run, o->m, o->max_batch_tokens) : SD_ENOMEM;
    if (!e && pthread_create(&w->th, NULL, wk_main, w))
        e = sd_fail(SD_ENOMEM, "cannot start the compute thread");
    if (e) {
        model_run_free(w->run);
        free(w->bs);
        free(w->jobs);
        free(w->job_of);
        free(w->err);
        free(w);
        return e;
    }
    w->started = 1;
    *out = w;
    return SD_OK;
}

/* Stop the compute thread: queued chunks are dropped, the batch being computed finishes and
 * its verdicts go out. Idempotent; from the thread that owns w. */
static void stop_compute(wk *w)
{
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    w->ux = NULL;
    for (wk_sess *s = w->sessions; s; s = s->next)
        for (wk_item *it = s->head; it; it = it->next)
            if (it->kind == WK_CHUNK)
                it->cancelled = 1; /* drain: nothing new is computed */
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->started)
        pthread_join(w->th, NULL);
    w->started = 0;
}

void wk_free(wk *w, int timeout_ms)
{
    if (!w)
        return;
    (void)timeout_ms; /* the queue is bounded by the sessions; the thread finishes it */
    stop_compute(w);
    while (w->sessions) {
        wk_sess *n = w->sessions->next;
        sess_free(w->sessions);
        w->sessions = n;
    }
    model_run_free(w->run);
    free(w->bs);
    free(w->jobs);
    free(w->job_of);
    free(w->err);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

void wk_set_ucx(wk *w, ucx_ctx *ux)
{
    if (!ux) {
        stop_compute(w);
        return;
    }
    pthread_mutex_lock(&w->mu);
    w->ux = ux;
    pthread_mutex_unlock(&w->mu);
}

void wk_get_stats(wk *w, wk_stats *st)
{
    pthread_mutex_lock(&w->mu);
    *st = w->st;
    st->sessions = w->n_sessions;
    pthread_mutex_unlock(&w->mu);
}
