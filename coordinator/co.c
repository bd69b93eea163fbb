#include "co.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/clock.h"
#include "../common/log.h"
#include "../engine/draft.h"
#include "../engine/gguf.h"
#include "../engine/sample.h"
#include "../engine/tok.h"
#include "../engine/tree.h"
#include "../net/daemon.h"
#include "../net/node.h"
#include "../net/wire.h"
#include "seq.h"

#define CO_MAX_EVENTS 8

typedef struct co_node {
    struct co_node *next;
    int refs; /* the registry + sessions using it */
    int kind, alive, max_sessions, sessions;
    char id[128], addr[256], ucx_addr[256], numerics[128];
    double last_seen, registered;
    ucx_peer *peer;
    rpc_client *ctl;
    int64_t forwards, batched_forwards, verified_tokens, batch_seqs_total;
} co_node;

typedef enum { CS_PLACING = 0, CS_RUNNING, CS_DONE } co_sess_state;

typedef struct co_sess {
    struct co_sess *next;
    struct co *c;
    uint64_t id;
    co_sess_state state;
    rpc_stream *stream;
    seq *sq;
    co_node *workers[SEQ_MAX_WORKERS]; /* seq's worker index -> node; NULL once lost */
    int n_workers, max_inflight;
    co_node *drafter;
    int mode; /* SPECD__MODE__* as requested (resolved) */
    sample_params sp;
    int n_predict, max_nodes, max_ctx, ignore_eos, no_adapt;
    tree_shape shape;
    char draft[4096], tree[128];
    int32_t *prompt;
    int n_prompt;
    char utf8[8]; /* incomplete UTF-8 sequence carried to the next token event */
    int n_utf8;
    double t_start, t_first, t_end;
    double compute_us_sum; /* Verdict.compute_us of the verdicts the sequencer applied */
    char events[CO_MAX_EVENTS][200];
    int n_events;
    int emit_failed; /* a token event could not be queued for the client */
    int32_t *pend;   /* committed tokens not yet streamed (held until the UCX sends are out) */
    int n_pend, cap_pend;
    char who_workers[300], who_drafter[128], who_numerics[128]; /* for the summary */
} co_sess;

typedef struct co_task {
    struct co_task *next;
    int kind; /* 1 open session, 2 close session on a node */
    co_sess *s;
    co_node *node;
    uint64_t sid;
} co_task;

struct co {
    co_opts o;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_cond_t tcv; /* the timer thread's sleep (CLOCK_MONOTONIC); broadcast on stop */
    gguf *g;
    tok *tk;
    int V;
    int32_t eog[2];
    int n_eog;
    uint64_t vocab_hash;
    char model_ident[256];
    ucx_ctx *ux;
    co_node *nodes;
    co_sess *sessions;
    int n_sessions;
    uint64_t next_sid;
    co_task *tasks, *tasks_tail;
    pthread_t th_ctl, th_timer;
    int stop, draining, threads;
    int in_msg; /* on_msg is running (lock held): token events wait for on_round_end */
    int64_t done, failed;
};

static double now_ms(void)
{
    return clock_now_s() * 1e3;
}

/* ---- nodes ---- */

static void node_unref(co_node *n)
{
    if (--n->refs > 0)
        return;
    if (n->peer)
        ucx_peer_unref(n->peer);
    rpc_client_free(n->ctl);
    free(n);
}

static co_node *node_by_id(co *c, const char *id)
{
    for (co_node *n = c->nodes; n; n = n->next)
        if (!strcmp(n->id, id))
            return n;
    return NULL;
}

static void sess_fail(co *c, co_sess *s, rpc_code code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void sess_event(co_sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sess_event(co_sess *s, const char *fmt, ...)
{
    if (s->n_events >= CO_MAX_EVENTS)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->events[s->n_events++], sizeof s->events[0], fmt, ap);
    va_end(ap);
    LOG_INFO("coordinator", "session %llu: %s", (unsigned long long)s->id,
             s->events[s->n_events - 1]);
}

static void sess_pump(co *c, co_sess *s);

static int sess_worker_index(const co_sess *s, const co_node *n)
{
    for (int w = 0; n && w < s->n_workers; w++)
        if (s->workers[w] == n)
            return w;
    return -1;
}

/* A node is gone (disconnected, silent, or replaced): its sessions lose it. Lock held. */
static void node_lost(co *c, co_node *n, const char *why)
{
    if (!n->alive)
        return;
    n->alive = 0;
    LOG_WARN("coordinator", "%s %s lost: %s",
             n->kind == SPECD__NODE_KIND__NODE_WORKER ? "worker" : "drafter", n->id, why);
    co_node **pp = &c->nodes;
    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = n->next;
        n->next = NULL;
    }
    for (co_sess *s = c->sessions, *nx; s; s = nx) {
        nx = s->next;
        if (s->state == CS_DONE)
            continue;
        int w = sess_worker_index(s, n);
        if (w >= 0) {
            s->workers[w] = NULL;
            n->sessions--;
            node_unref(n);
            if (!s->sq || seq_worker_lost(s->sq, w, now_ms())) {
                sess_fail(c, s, RPC_UNAVAILABLE, "worker %s lost: %s", n->id, why);
                continue;
            }
            sess_event(s,
                       "worker %s lost after %d tokens (%s): its chunks went to the session's "
                       "other workers",
                       n->id, seq_get_stats(s->sq)->n_gen, why);
            sess_pump(c, s);
        } else if (s->drafter == n) {
            int ng = s->sq ? seq_get_stats(s->sq)->n_gen : 0;
            sess_event(s, "drafter %s lost after %d tokens (%s): continuing as ar", n->id, ng, why);
            if (s->sq) {
                seq_drafter_lost(s->sq);
                sess_pump(c, s);
            }
        }
    }
    if (n->peer) {
        ucx_peer_set_ud(n->peer, NULL);
        ucx_peer_close(n->peer);
    }
    node_unref(n);
}

/* ---- sessions: the sequencer's effects ---- */

static void send_msg(co_node *n, unsigned id, const ProtobufCMessage *m)
{
    uint8_t *b;
    size_t len;
    if (!n || !n->alive || !n->peer || wire_pack(m, &b, &len))
        return;
    if (ucx_send(n->peer, id, b, len))
        LOG_DEBUG("coordinator", "%s to %s not sent: %s", wire_data_name(id), n->id, sd_errmsg());
    free(b);
}

static void io_chunk(void *ud, const seq_chunk *ch)
{
    co_sess *s = ud;
    Specd__Chunk m = SPECD__CHUNK__INIT;
    m.session_id = s->id;
    m.chunk_id = ch->id;
    m.base_pos = (uint32_t)ch->base_pos;
    m.n_base_tokens = (size_t)ch->n_base;
    m.base_tokens = (int32_t *)ch->base;
    m.n_parent = m.n_token = (size_t)ch->n;
    m.parent = (int32_t *)ch->parent;
    m.token = (int32_t *)ch->tok;
    send_msg(s->workers[ch->worker], SPECD__DATA_MSG_ID__DATA_MSG_CHUNK, &m.base);
}

static void io_cancel(void *ud, int worker, uint64_t id)
{
    co_sess *s = ud;
    Specd__Cancel m = SPECD__CANCEL__INIT;
    m.session_id = s->id;
    m.chunk_id = id;
    send_msg(s->workers[worker], SPECD__DATA_MSG_ID__DATA_MSG_CANCEL, &m.base);
}

static void io_commit(void *ud, const seq_commit *cm)
{
    co_sess *s = ud;
    Specd__Commit m = SPECD__COMMIT__INIT;
    m.session_id = s->id;
    m.epoch = cm->epoch;
    m.n_committed = (uint32_t)cm->n_committed;
    m.n_tokens = (size_t)cm->n_tokens;
    m.tokens = (int32_t *)cm->tokens;
    m.root_node = cm->root_node;
    m.n_seen = (uint32_t)cm->n_seen;
    m.hold = cm->hold;
    m.budget = (uint32_t)cm->budget;
    /* si: the next chunk waits for the drafter's answer to this Commit, so the drafter's goes
     * out first; in the other modes the next chunk follows the workers' at once. In si with one
     * worker the worker's copy is not sent: it holds exactly the accepted path, and its next
     * chunk (base_pos and base) says all the Commit would — one wake-up fewer of its two threads
     * in the middle of the drafter's turn. */
    int drafter_first = s->drafter && seq_get_mode(s->sq) == SEQ_SI;
    if (drafter_first)
        send_msg(s->drafter, SPECD__DATA_MSG_ID__DATA_MSG_COMMIT, &m.base);
    int to_workers = !(drafter_first && s->n_workers == 1);
    for (int w = 0; to_workers && w < s->n_workers; w++) /* each keeps its committed prefix */
        send_msg(s->workers[w], SPECD__DATA_MSG_ID__DATA_MSG_COMMIT, &m.base);
    if (s->drafter && !drafter_first)
        send_msg(s->drafter, SPECD__DATA_MSG_ID__DATA_MSG_COMMIT, &m.base);
}

/* Length of the longest prefix of b[0..n) that ends on a UTF-8 character boundary. */
static int utf8_complete(const char *b, int n)
{
    int i = n;
    for (int k = 1; k <= 4 && k <= n; k++) {
        unsigned char ch = (unsigned char)b[n - k];
        if ((ch & 0xC0) == 0x80)
            continue; /* continuation byte */
        int need = ch < 0x80         ? 1
                   : (ch >> 5) == 6  ? 2
                   : (ch >> 4) == 14 ? 3
                   : (ch >> 3) == 30 ? 4
                                     : 1;
        i = need > k ? n - k : n;
        break;
    }
    return i;
}

/* Replace bytes that are not valid UTF-8 by U+FFFD so the text field is always valid. */
static size_t utf8_clean(const char *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char ch = (unsigned char)in[i];
        size_t need = ch < 0x80         ? 1
                      : (ch >> 5) == 6  ? 2
                      : (ch >> 4) == 14 ? 3
                      : (ch >> 3) == 30 ? 4
                                        : 0;
        int ok = need > 0 && i + need <= n;
        for (size_t k = 1; ok && k < need; k++)
            ok = ((unsigned char)in[i + k] & 0xC0) == 0x80;
        if (ok) {
            memcpy(out + o, in + i, need);
            o += need;
            i += need;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    return o;
}

/* One token event with tok[0..n) to the client. Lock held. */
static void emit_now(co_sess *s, const int32_t *tok, int n)
{
    co *c = s->c;
    if (s->t_first == 0)
        s->t_first = now_ms();
    size_t cap = (size_t)n * 64 + 16, len = s->n_utf8;
    char *raw = malloc(cap), *text = malloc(cap * 3 + 4);
    if (!raw || !text) {
        free(raw);
        free(text);
        return;
    }
    memcpy(raw, s->utf8, (size_t)s->n_utf8);
    for (int i = 0; i < n; i++) {
        const char *b;
        size_t bl;
        if (tok_is_special(c->tk, tok[i]) || tok_piece(c->tk, tok[i], &b, &bl))
            continue; /* control tokens are not text (as in specd generate) */
        if (len + bl > cap)
            bl = cap - len;
        memcpy(raw + len, b, bl);
        len += bl;
    }
    int done = utf8_complete(raw, (int)len);
    s->n_utf8 = (int)len - done;
    memcpy(s->utf8, raw + done, (size_t)s->n_utf8);
    size_t tl = utf8_clean(raw, (size_t)done, text);
    text[tl] = 0;
    Specd__TokenEvent te = SPECD__TOKEN_EVENT__INIT;
    te.n_tokens = (size_t)n;
    te.tokens = (int32_t *)tok;
    te.text = text;
    Specd__GenerateEvent ev = SPECD__GENERATE_EVENT__INIT;
    ev.ev_case = SPECD__GENERATE_EVENT__EV_TOKENS;
    ev.tokens = &te;
    uint8_t *b;
    size_t bl;
    if (s->stream && wire_pack(&ev.base, &b, &bl) == SD_OK) {
        sd_err e = rpc_stream_send(s->stream, b, bl);
        if (e && e != SD_ECANCELED) /* gone clients are handled by on_cancel */
            s->emit_failed = 1;
        free(b);
    }
    free(raw);
    free(text);
}

/* Stream the tokens held back (sess_defer). Lock held. */
static void sess_flush(co_sess *s)
{
    if (s->n_pend > 0 && !s->emit_failed)
        emit_now(s, s->pend, s->n_pend);
    s->n_pend = 0;
}

/* Hold tokens committed while a message is handled: the Commit and the next chunk that the
 * same message caused are queued to UCX and leave when on_msg returns, and the token event's
 * gRPC send (tens of µs) must not delay them. Lock held. */
static int sess_defer(co_sess *s, const int32_t *tok, int n)
{
    if (s->n_pend + n > s->cap_pend) {
        int cap = (s->n_pend + n) * 2 + 16;
        int32_t *p = realloc(s->pend, sizeof *p * (size_t)cap);
        if (!p)
            return -1;
        s->pend = p;
        s->cap_pend = cap;
    }
    memcpy(s->pend + s->n_pend, tok, sizeof *tok * (size_t)n);
    s->n_pend += n;
    return 0;
}

static void io_emit(void *ud, const int32_t *tok, int n)
{
    co_sess *s = ud;
    if (s->c->in_msg && sess_defer(s, tok, n) == 0)
        return;
    sess_flush(s); /* in order */
    emit_now(s, tok, n);
}

static const char *stop_reason(seq_state st)
{
    return st == SEQ_DONE_EOS ? "eos" : st == SEQ_DONE_LENGTH ? "length" : "context";
}

static void push_task(co *c, int kind, co_sess *s, co_node *n, uint64_t sid)
{
    co_task *t = calloc(1, sizeof *t);
    if (!t)
        return; /* a close that cannot be queued: the node frees the session with its peer */
    t->kind = kind;
    t->s = s;
    t->node = n;
    t->sid = sid;
    if (n)
        n->refs++;
    if (c->tasks_tail)
        c->tasks_tail->next = t;
    else
        c->tasks = t;
    c->tasks_tail = t;
    pthread_cond_broadcast(&c->cv);
}

/* Release the session's nodes (CloseSession queued) and unlink it. Lock held. */
static void sess_end(co *c, co_sess *s)
{
    s->state = CS_DONE;
    s->t_end = now_ms();
    co_node *nodes[SEQ_MAX_WORKERS + 1];
    int nn = 0;
    for (int w = 0; w < s->n_workers; w++)
        nodes[nn++] = s->workers[w];
    nodes[nn++] = s->drafter;
    for (int i = 0; i < nn; i++) {
        if (!nodes[i])
            continue;
        nodes[i]->sessions--;
        if (nodes[i]->alive)
            push_task(c, 2, NULL, nodes[i], s->id);
        node_unref(nodes[i]);
    }
    memset(s->workers, 0, sizeof s->workers);
    s->drafter = NULL;
    co_sess **pp = &c->sessions;
    while (*pp && *pp != s)
        pp = &(*pp)->next;
    if (*pp)
        *pp = s->next;
    c->n_sessions--;
    pthread_cond_broadcast(&c->cv);
}

static void sess_destroy(co_sess *s)
{
    seq_free(s->sq);
    free(s->prompt);
    free(s->pend);
    free(s);
}

static void fill_summary(co_sess *s, Specd__SessionSummary *m, char **ev, int32_t *tried,
                         int32_t *took)
{
    const seq_stats *st = s->sq ? seq_get_stats(s->sq) : NULL;
    m->session_id = s->id;
    m->mode = s->sq ? (Specd__Mode)seq_get_mode(s->sq) : (Specd__Mode)s->mode;
    m->n_prompt = s->n_prompt;
    if (st) {
        m->n_gen = st->n_gen;
        m->steps = st->steps;
        m->proposed = st->proposed;
        m->accepted = st->accepted;
        m->chunks = st->chunks;
        m->cancelled_chunks = st->cancelled;
        m->tree_hits = st->tree_hits;
        m->extends = st->extends;
        m->stale_extends = st->stale_extends;
        m->held_commits = st->held_commits;
        m->held_extends = st->held_extends;
        m->lookup_misses = st->lookup_misses;
        m->chunk_rtt_ms_mean = st->steps ? st->rtt_ms_sum / st->steps : 0;
        m->compute_ms_mean = st->steps ? s->compute_us_sum / 1e3 / st->steps : 0;
        m->draft_wait_ms_mean = st->steps ? st->draft_ms_sum / st->steps : 0;
        int nd = 0;
        while (nd < SEQ_MAX_DEPTH && st->tried[nd]) {
            tried[nd] = (int32_t)st->tried[nd];
            took[nd] = (int32_t)st->took[nd];
            nd++;
        }
        m->n_accepted_by_depth_tried = m->n_accepted_by_depth_took = (size_t)nd;
        m->accepted_by_depth_tried = tried;
        m->accepted_by_depth_took = took;
        m->stop_reason = (char *)stop_reason(seq_get_state(s->sq));
    }
    m->worker = s->who_workers;
    m->drafter = s->who_drafter;
    m->numerics = s->who_numerics;
    double end = s->t_end ? s->t_end : now_ms();
    m->ttft_ms = s->t_first ? s->t_first - s->t_start : 0;
    m->total_ms = end - s->t_start;
    double gen_ms = s->t_first ? end - s->t_first : 0;
    m->tokens_per_s = gen_ms > 0 && st && st->n_gen > 1 ? (st->n_gen - 1) / (gen_ms / 1e3) : 0;
    for (int i = 0; i < s->n_events; i++)
        ev[i] = s->events[i];
    m->n_events = (size_t)s->n_events;
    m->events = ev;
}

/* The sequencer finished: summary, final status, release. Lock held. */
static void sess_finish(co *c, co_sess *s)
{
    sess_flush(s);
    sess_end(c, s);
    Specd__SessionSummary sm = SPECD__SESSION_SUMMARY__INIT;
    char *ev[CO_MAX_EVENTS];
    int32_t tried[SEQ_MAX_DEPTH], took[SEQ_MAX_DEPTH];
    fill_summary(s, &sm, ev, tried, took);
    if (s->n_utf8) { /* a token that ended inside a character */
        s->n_utf8 = 0;
    }
    Specd__GenerateEvent gev = SPECD__GENERATE_EVENT__INIT;
    gev.ev_case = SPECD__GENERATE_EVENT__EV_SUMMARY;
    gev.summary = &sm;
    uint8_t *b;
    size_t len;
    if (wire_pack(&gev.base, &b, &len) == SD_OK) {
        rpc_stream_send(s->stream, b, len);
        free(b);
    }
    LOG_INFO("coordinator", "session %llu done: %d tokens, %ld steps, %.1f tok/s (%s)",
             (unsigned long long)s->id, sm.n_gen, (long)sm.steps, sm.tokens_per_s,
             sm.stop_reason ? sm.stop_reason : "");
    rpc_stream_finish(s->stream, RPC_OK, NULL);
    s->stream = NULL;
    c->done++;
    sess_destroy(s);
}

static void sess_fail(co *c, co_sess *s, rpc_code code, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    LOG_WARN("coordinator", "session %llu failed: %s: %s", (unsigned long long)s->id,
             rpc_code_name(code), msg);
    int placing = s->state == CS_PLACING;
    sess_flush(s); /* what was committed before the failure */
    if (s->state != CS_DONE)
        sess_end(c, s);
    if (s->stream)
        rpc_stream_finish(s->stream, code, msg);
    s->stream = NULL;
    c->failed++;
    if (!placing) /* a session being placed is freed by the control thread */
        sess_destroy(s);
}

/* After the sequencer ran: a client that cannot take the stream fails the session (never a
 * silent gap in its text); a finished sequencer finishes it. */
static void sess_check(co *c, co_sess *s)
{
    if (s->emit_failed)
        sess_fail(c, s, RPC_RESOURCE_EXHAUSTED,
                  "the client does not read the stream fast enough (%d token events queued)", 1024);
    else if (seq_get_state(s->sq) != SEQ_RUNNING)
        sess_finish(c, s);
}

static void sess_pump(co *c, co_sess *s)
{
    if (s->state != CS_RUNNING)
        return;
    seq_pump(s->sq, now_ms());
    sess_check(c, s);
}

static co_sess *sess_by_id(co *c, uint64_t id)
{
    for (co_sess *s = c->sessions; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

/* ---- data plane (UCX progress thread) ---- */

static void on_msg(void *ud, ucx_peer *from, unsigned id, const void *data, size_t len)
{
    co *c = ud;
    ProtobufCMessage *m;
    if (wire_decode_data(id, data, len, c->V, c->o.max_nodes * 4, &m)) {
        LOG_WARN("coordinator", "rejected a %s from %s: %s", wire_data_name(id),
                 ucx_peer_name(from), sd_errmsg());
        return;
    }
    pthread_mutex_lock(&c->mu);
    c->in_msg = 1;
    co_node *n = ucx_peer_ud(from);
    double t = now_ms();
    if (id == SPECD__DATA_MSG_ID__DATA_MSG_TREE_EXTEND) {
        Specd__TreeExtend *x = (Specd__TreeExtend *)m;
        co_sess *s = sess_by_id(c, x->session_id);
        if (s && s->state == CS_RUNNING && s->drafter == n) {
            sd_err e = seq_tree_extend(s->sq, x->epoch, x->first_id, x->parent, x->token,
                                       x->n_logp ? x->logp : NULL, (int)x->n_token, t);
            if (e)
                LOG_WARN("coordinator", "session %llu: tree extension from %s rejected: %s",
                         (unsigned long long)s->id, n->id, sd_errmsg());
            sess_check(c, s);
        } else if (!n || n->kind != SPECD__NODE_KIND__NODE_DRAFTER) { /* not late: misdirected */
            LOG_WARN("coordinator", "ignored a TreeExtend from %s: not a drafter",
                     n ? n->id : ucx_peer_name(from));
        }
    } else if (id == SPECD__DATA_MSG_ID__DATA_MSG_VERDICT) {
        Specd__Verdict *v = (Specd__Verdict *)m;
        co_sess *s = sess_by_id(c, v->session_id);
        int w = s && s->state == CS_RUNNING ? sess_worker_index(s, n) : -1;
        if (w >= 0) {
            sd_err e;
            if (v->error && *v->error) {
                LOG_WARN("coordinator", "session %llu: worker %s rejected chunk %llu: %s",
                         (unsigned long long)s->id, n->id, (unsigned long long)v->chunk_id,
                         v->error);
                e = seq_chunk_failed(s->sq, v->chunk_id, w, t);
            } else {
                int steps = seq_get_stats(s->sq)->steps;
                e = seq_verdict(s->sq, v->chunk_id, w, v->path, (int)v->n_path, v->next, t);
                /* applied: counted in rtt_ms_sum too (exact with one chunk in flight; in dsi a
                 * held verdict is counted with the one whose arrival applies it) */
                if (seq_get_stats(s->sq)->steps > steps)
                    s->compute_us_sum += v->compute_us;
            }
            if (e)
                sess_fail(c, s, RPC_INTERNAL, "worker %s: %s", n->id, sd_errmsg());
            else
                sess_check(c, s);
        } else if (!n || n->kind != SPECD__NODE_KIND__NODE_WORKER) { /* not late: misdirected */
            LOG_WARN("coordinator", "ignored a Verdict from %s: not a worker",
                     n ? n->id : ucx_peer_name(from));
        }
    } else {
        LOG_WARN("coordinator", "unexpected %s from %s", wire_data_name(id),
                 n ? n->id : ucx_peer_name(from));
    }
    c->in_msg = 0;
    pthread_mutex_unlock(&c->mu);
    protobuf_c_message_free_unpacked(m, NULL);
}

/* The sends of this round are out: stream the token events they held back. */
static void on_round_end(void *ud)
{
    co *c = ud;
    pthread_mutex_lock(&c->mu);
    for (co_sess *s = c->sessions, *next; s; s = next) {
        next = s->next;
        if (s->n_pend == 0)
            continue;
        sess_flush(s);
        if (s->state == CS_RUNNING)
            sess_check(c, s);
    }
    pthread_mutex_unlock(&c->mu);
}

static void on_peer_down(void *ud, ucx_peer *p, const char *why)
{
    co *c = ud;
    pthread_mutex_lock(&c->mu);
    co_node *n = ucx_peer_ud(p);
    if (n && n->peer == p)
        node_lost(c, n, why);
    pthread_mutex_unlock(&c->mu);
}

/* ---- control thread: placement and the blocking node calls ---- */

/* Least loaded live node of a kind with room, not in ex[0..n_ex); workers of the fingerprint
 * `numerics` only when it is non-NULL (a session never mixes numerics). */
static co_node *pick(co *c, int kind, const char *numerics, co_node *const *ex, int n_ex)
{
    co_node *best = NULL;
    for (co_node *n = c->nodes; n; n = n->next) {
        int skip = !n->alive || n->kind != kind || n->sessions >= n->max_sessions ||
                   (numerics && strcmp(n->numerics, numerics));
        for (int i = 0; i < n_ex && !skip; i++)
            skip = ex[i] == n;
        if (skip)
            continue;
        if (!best ||
            (double)n->sessions / n->max_sessions < (double)best->sessions / best->max_sessions)
            best = n;
    }
    return best;
}

static rpc_code node_open(co_node *n, co_sess *s, rpc_status *st)
{
    Specd__OpenSessionRequest q = SPECD__OPEN_SESSION_REQUEST__INIT;
    Specd__SamplingParams sp = SPECD__SAMPLING_PARAMS__INIT;
    sp.temp = s->sp.temp;
    sp.top_k = s->sp.top_k;
    sp.top_p = s->sp.top_p;
    sp.seed = s->sp.seed;
    q.protocol_version = WIRE_PROTOCOL_VERSION;
    q.session_id = s->id;
    q.mode = s->mode;
    q.sampling = &sp;
    q.max_ctx = s->max_ctx;
    q.max_nodes = s->max_nodes;
    q.draft = s->draft;
    q.tree = s->tree;
    char method[64];
    snprintf(method, sizeof method, "/specd.%s/OpenSession",
             n->kind == SPECD__NODE_KIND__NODE_WORKER ? "Worker" : "Drafter");
    sd_err e = wire_call(n->ctl, method, &q.base, 10000, 0, NULL, NULL, st);
    if (e == SD_ENOMEM) {
        snprintf(st->msg, sizeof st->msg, "out of memory");
        return RPC_RESOURCE_EXHAUSTED;
    }
    if (e) {
        snprintf(st->msg, sizeof st->msg, "cannot reach %s: %s", n->id, sd_errmsg());
        return RPC_UNAVAILABLE;
    }
    return st->code;
}

static void node_close(co_node *n, uint64_t sid)
{
    Specd__CloseSessionRequest q = SPECD__CLOSE_SESSION_REQUEST__INIT;
    q.session_id = sid;
    char method[64];
    snprintf(method, sizeof method, "/specd.%s/CloseSession",
             n->kind == SPECD__NODE_KIND__NODE_WORKER ? "Worker" : "Drafter");
    rpc_status st;
    wire_call(n->ctl, method, &q.base, 2000, 0, NULL, NULL, &st); /* best effort */
}

static void send_prompt(co_node *n, co_sess *s)
{
    Specd__Prompt p = SPECD__PROMPT__INIT;
    p.session_id = s->id;
    p.n_tokens = (size_t)s->n_prompt;
    p.tokens = s->prompt;
    send_msg(n, SPECD__DATA_MSG_ID__DATA_MSG_PROMPT, &p.base);
}

/* Place session s (lock held on entry and exit; released around the calls). */
static void place(co *c, co_sess *s)
{
    if (s->state == CS_DONE) { /* failed while queued */
        sess_destroy(s);
        return;
    }
    co_node *w = pick(c, SPECD__NODE_KIND__NODE_WORKER, NULL, NULL, 0);
    if (!w) {
        sess_fail(c, s, c->nodes ? RPC_RESOURCE_EXHAUSTED : RPC_UNAVAILABLE,
                  c->nodes ? "every worker holds its maximum of sessions"
                           : "no worker is registered");
        sess_destroy(s);
        return;
    }
    /* dsi: more workers of the same numerics, one per chunk in flight */
    int want = s->mode == SPECD__MODE__MODE_DSI ? s->max_inflight : 1;
    s->workers[s->n_workers++] = w;
    while (s->n_workers < want) {
        co_node *x = pick(c, SPECD__NODE_KIND__NODE_WORKER, w->numerics, s->workers, s->n_workers);
        if (!x)
            break;
        s->workers[s->n_workers++] = x;
    }
    for (int i = 0; i < s->n_workers; i++) {
        s->workers[i]->refs++;
        s->workers[i]->sessions++;
    }
    if (s->n_workers < want)
        sess_event(s, "dsi asked for %d workers; %d of numerics %s have room", want, s->n_workers,
                   w->numerics);
    co_node *d = NULL;
    if (s->mode != SPECD__MODE__MODE_AR) {
        d = pick(c, SPECD__NODE_KIND__NODE_DRAFTER, NULL, NULL, 0);
        if (d) {
            s->drafter = d;
            d->refs++;
            d->sessions++;
        } else {
            sess_event(s, "no drafter available: running as ar");
            s->mode = SPECD__MODE__MODE_AR;
        }
    }
    co_node *ws[SEQ_MAX_WORKERS];
    int nw = s->n_workers;
    memcpy(ws, s->workers, sizeof ws);
    pthread_mutex_unlock(&c->mu);
    rpc_status st[SEQ_MAX_WORKERS], dst;
    rpc_code code[SEQ_MAX_WORKERS], dcode = RPC_OK;
    for (int i = 0; i < nw; i++)
        code[i] = node_open(ws[i], s, &st[i]);
    if (code[0] == RPC_OK && d)
        dcode = node_open(d, s, &dst);
    pthread_mutex_lock(&c->mu);
    if (s->state == CS_DONE) { /* failed or cancelled meanwhile */
        sess_destroy(s);
        return;
    }
    if (code[0] != RPC_OK) {
        sess_fail(c, s, code[0] == RPC_RESOURCE_EXHAUSTED ? code[0] : RPC_UNAVAILABLE,
                  "worker %s: %s", ws[0]->id, st[0].msg);
        sess_destroy(s);
        return;
    }
    int k = 0;
    for (int i = 0; i < nw; i++) { /* drop the extra workers that refused or were lost */
        co_node *x = ws[i];
        if (code[i] == RPC_OK && s->workers[i] == x) {
            s->workers[k++] = x;
            continue;
        }
        if (s->workers[i] == x) {
            sess_event(s, "worker %s refused the session (%s)", x->id, st[i].msg);
            x->sessions--;
            node_unref(x);
        }
    }
    for (int i = k; i < nw; i++)
        s->workers[i] = NULL;
    s->n_workers = k;
    if (k == 0) {
        sess_fail(c, s, RPC_UNAVAILABLE, "the session's workers were lost while it was placed");
        sess_destroy(s);
        return;
    }
    if (d && dcode != RPC_OK) {
        if (dcode == RPC_INVALID_ARGUMENT || dcode == RPC_PERMISSION_DENIED) {
            sess_fail(c, s, dcode, "drafter %s: %s", d->id, dst.msg);
            sess_destroy(s);
            return;
        }
        if (s->drafter == d) {
            sess_event(s, "drafter %s refused the session (%s): running as ar", d->id, dst.msg);
            d->sessions--;
            node_unref(d);
            s->drafter = NULL;
        }
        s->mode = SPECD__MODE__MODE_AR;
    }
    seq_mode sm = s->mode == SPECD__MODE__MODE_AR      ? SEQ_AR
                  : s->mode == SPECD__MODE__MODE_ASYNC ? SEQ_ASYNC
                  : s->mode == SPECD__MODE__MODE_DSI   ? SEQ_DSI
                                                       : SEQ_SI;
    seq_config sc = {.mode = sm,
                     .n_workers = s->n_workers,
                     .max_inflight = s->n_workers,
                     .max_nodes = s->max_nodes,
                     .max_tree = s->max_nodes * 4,
                     .n_predict = s->n_predict,
                     .max_ctx = s->max_ctx,
                     .draft_wait_ms = c->o.draft_wait_ms,
                     .inflight_min_p = c->o.inflight_min_p,
                     .eog = c->eog,
                     .n_eog = s->ignore_eos ? 0 : c->n_eog,
                     .adaptive = !s->no_adapt,
                     .shape = &s->shape,
                     .lookup_min = draft_lookup_min(s->draft)};
    seq_io io = {io_chunk, io_cancel, io_commit, io_emit, s};
    if (seq_init(&s->sq, &sc, &io, s->prompt, s->n_prompt)) {
        sess_fail(c, s, RPC_INTERNAL, "%s", sd_errmsg());
        sess_destroy(s);
        return;
    }
    s->state = CS_RUNNING;
    for (int i = 0; i < s->n_workers; i++) {
        size_t l = strlen(s->who_workers);
        snprintf(s->who_workers + l, sizeof s->who_workers - l, "%s%s", i ? "," : "",
                 s->workers[i]->id);
        send_prompt(s->workers[i], s);
    }
    snprintf(s->who_numerics, sizeof s->who_numerics, "%s", s->workers[0]->numerics);
    snprintf(s->who_drafter, sizeof s->who_drafter, "%s", s->drafter ? s->drafter->id : "");
    if (s->drafter)
        send_prompt(s->drafter, s);
    sess_pump(c, s);
}

static void *ctl_main(void *arg)
{
    co *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        co_task *t = c->tasks;
        if (!t) {
            if (c->stop)
                break;
            pthread_cond_wait(&c->cv, &c->mu);
            continue;
        }
        c->tasks = t->next;
        if (!c->tasks)
            c->tasks_tail = NULL;
        if (t->kind == 1) {
            place(c, t->s);
        } else {
            pthread_mutex_unlock(&c->mu);
            node_close(t->node, t->sid);
            pthread_mutex_lock(&c->mu);
        }
        if (t->node)
            node_unref(t->node);
        free(t);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---- timer thread ---- */

/* Sleeps until the earliest deadline of a session (its wait for the drafter's answer, its
 * oldest chunk's timeout) or the next reap of silent nodes, at most `cap` ms: every deadline a
 * session starts lies at least cap ms ahead, so none is overslept and no wake-up is needed when
 * one starts. (A fixed 2 ms tick cost ~500 wake-ups a second, each taking a vCPU from the
 * worker's forward on a small machine.) */
static void *timer_main(void *arg)
{
    co *c = arg;
    double last_reap = 0, cap = 100;
    if (c->o.draft_wait_ms > 0 && c->o.draft_wait_ms < cap)
        cap = c->o.draft_wait_ms;
    if (c->o.chunk_timeout_ms < cap)
        cap = c->o.chunk_timeout_ms;
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        double t = now_ms(), next = t + cap;
        for (co_sess *s = c->sessions, *nx; s; s = nx) {
            nx = s->next;
            if (s->state != CS_RUNNING)
                continue;
            double age = seq_oldest_inflight_ms(s->sq, t);
            if (age > c->o.chunk_timeout_ms) {
                sess_fail(c, s, RPC_UNAVAILABLE, "worker %s did not answer a chunk in %d ms",
                          s->workers[0] ? s->workers[0]->id : "of the session",
                          c->o.chunk_timeout_ms);
                continue;
            }
            if (age > 0 && t - age + c->o.chunk_timeout_ms < next)
                next = t - age + c->o.chunk_timeout_ms;
            double d = seq_deadline_ms(s->sq);
            if (d <= t)
                sess_pump(c, s); /* what it leaves waiting starts a deadline >= cap ahead */
            else if (d < next)
                next = d;
        }
        if (t - last_reap >= 100) {
            last_reap = t;
            for (co_node *n = c->nodes, *nx; n; n = nx) {
                nx = n->next;
                if (t - n->last_seen > c->o.node_timeout_ms) {
                    node_lost(c, n, "no heartbeat");
                } else if (n->peer && !ucx_peer_is_up(n->peer) &&
                           t - n->registered > c->o.node_timeout_ms) {
                    /* its connection can fail before on_register has made the node the peer's
                     * ud (on_peer_down cannot drop it then); a node that heartbeats but is
                     * unreachable on the data plane would be placed on forever */
                    char why[300];
                    snprintf(why, sizeof why, "its data plane (UCX %s) is not connected",
                             n->ucx_addr);
                    node_lost(c, n, why);
                }
            }
        }
        if (!c->stop) {
            struct timespec ts = clock_deadline(next - now_ms());
            pthread_cond_timedwait(&c->tcv, &c->mu, &ts);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---- gRPC handlers ---- */

static rpc_code reply(const ProtobufCMessage *m, rpc_buf *resp)
{
    return wire_pack(m, &resp->data, &resp->len) ? RPC_INTERNAL : RPC_OK;
}

static rpc_code on_register(void *ud, const uint8_t *req, size_t len, rpc_buf *resp, rpc_status *st)
{
    co *c = ud;
    ProtobufCMessage *m;
    if (daemon_unpack_request(&specd__register_request__descriptor, req, len, &m, st))
        return RPC_INVALID_ARGUMENT;
    Specd__RegisterRequest *q = (Specd__RegisterRequest *)m;
    Specd__RegisterReply r = SPECD__REGISTER_REPLY__INIT;
    char why[600] = "";
    int worker = q->kind == SPECD__NODE_KIND__NODE_WORKER;
    if (q->protocol_version != WIRE_PROTOCOL_VERSION)
        snprintf(why, sizeof why, "protocol version %u; this coordinator speaks %u",
                 q->protocol_version, WIRE_PROTOCOL_VERSION);
    else if (!worker && q->kind != SPECD__NODE_KIND__NODE_DRAFTER)
        snprintf(why, sizeof why, "unknown node kind %d", q->kind);
    else if (!q->id || !*q->id || strlen(q->id) >= 128 || !q->addr || !*q->addr ||
             strlen(q->addr) >= 256 || !q->ucx_addr || !*q->ucx_addr || strlen(q->ucx_addr) >= 256)
        snprintf(why, sizeof why, "id, addr and ucx_addr are required (and short)");
    else if (q->vocab_hash != c->vocab_hash || q->n_vocab != c->V)
        snprintf(why, sizeof why,
                 "its vocabulary differs from the target's (%d tokens, hash %016llx; the "
                 "target has %d tokens, hash %016llx)",
                 q->n_vocab, (unsigned long long)q->vocab_hash, c->V,
                 (unsigned long long)c->vocab_hash);
    else if (worker && (!q->model || strcmp(q->model, c->model_ident)))
        snprintf(why, sizeof why, "it serves model '%s'; the target is '%s'",
                 q->model ? q->model : "", c->model_ident);
    else if (q->max_sessions < 1)
        snprintf(why, sizeof why, "max_sessions %d", q->max_sessions);
    if (*why) {
        LOG_WARN("coordinator", "refused node '%s' (%s): %s", q->id ? q->id : "",
                 q->addr ? q->addr : "", why);
        r.accepted = 0;
        r.reason = why;
        protobuf_c_message_free_unpacked(m, NULL);
        return reply(&r.base, resp);
    }
    co_node *n = calloc(1, sizeof *n);
    sd_err e = n ? rpc_client_create(&n->ctl, q->addr, 0) : SD_ENOMEM;
    if (!e) {
        n->refs = 1;
        n->alive = 1;
        n->kind = q->kind;
        n->max_sessions = q->max_sessions;
        snprintf(n->id, sizeof n->id, "%s", q->id);
        snprintf(n->addr, sizeof n->addr, "%s", q->addr);
        snprintf(n->ucx_addr, sizeof n->ucx_addr, "%s", q->ucx_addr);
        snprintf(n->numerics, sizeof n->numerics, "%s", q->numerics ? q->numerics : "");
        n->last_seen = n->registered = now_ms();
        e = ucx_connect(c->ux, n->ucx_addr, &n->peer);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    if (e) {
        snprintf(st->msg, sizeof st->msg, "cannot connect to the node: %s", sd_errmsg());
        if (n) {
            rpc_client_free(n->ctl);
            free(n);
        }
        return RPC_UNAVAILABLE;
    }
    ucx_peer_set_ud(n->peer, n);
    pthread_mutex_lock(&c->mu);
    co_node *old = node_by_id(c, n->id);
    if (old)
        node_lost(c, old, "registered again");
    n->next = c->nodes;
    c->nodes = n;
    pthread_mutex_unlock(&c->mu);
    LOG_INFO("coordinator", "registered %s %s (gRPC %s, UCX %s%s%s)", worker ? "worker" : "drafter",
             n->id, n->addr, n->ucx_addr, worker ? ", numerics " : "", worker ? n->numerics : "");
    r.accepted = 1;
    r.heartbeat_ms = (uint32_t)c->o.heartbeat_ms;
    r.protocol_version = WIRE_PROTOCOL_VERSION;
    return reply(&r.base, resp);
}

static rpc_code on_heartbeat(void *ud, const uint8_t *req, size_t len, rpc_buf *resp,
                             rpc_status *st)
{
    co *c = ud;
    ProtobufCMessage *m;
    if (daemon_unpack_request(&specd__heartbeat_request__descriptor, req, len, &m, st))
        return RPC_INVALID_ARGUMENT;
    Specd__HeartbeatRequest *q = (Specd__HeartbeatRequest *)m;
    Specd__HeartbeatReply r = SPECD__HEARTBEAT_REPLY__INIT;
    pthread_mutex_lock(&c->mu);
    co_node *n = q->id ? node_by_id(c, q->id) : NULL;
    if (n && n->alive) {
        n->last_seen = now_ms();
        n->forwards = q->forwards;
        n->batched_forwards = q->batched_forwards;
        n->verified_tokens = q->verified_tokens;
        n->batch_seqs_total = q->batch_seqs_total;
        r.known = 1;
    }
    pthread_mutex_unlock(&c->mu);
    protobuf_c_message_free_unpacked(m, NULL);
    return reply(&r.base, resp);
}

static rpc_code on_status(void *ud, const uint8_t *req, size_t len, rpc_buf *resp, rpc_status *st)
{
    co *c = ud;
    Specd__StatusReply r = SPECD__STATUS_REPLY__INIT;
    pthread_mutex_lock(&c->mu);
    size_t nn = 0, ns = 0;
    for (co_node *n = c->nodes; n; n = n->next)
        nn++;
    for (co_sess *s = c->sessions; s; s = s->next)
        ns++;
    Specd__NodeStatus *nodes = calloc(nn ? nn : 1, sizeof *nodes);
    Specd__NodeStatus **np = calloc(nn ? nn : 1, sizeof *np);
    Specd__SessionStatus *sess = calloc(ns ? ns : 1, sizeof *sess);
    Specd__SessionStatus **sp = calloc(ns ? ns : 1, sizeof *sp);
    rpc_code code = RPC_OK;
    if (!nodes || !np || !sess || !sp) {
        code = RPC_RESOURCE_EXHAUSTED;
        snprintf(st->msg, sizeof st->msg, "out of memory");
        goto out;
    }
    double t = now_ms();
    size_t i = 0;
    for (co_node *n = c->nodes; n; n = n->next, i++) {
        Specd__NodeStatus *x = &nodes[i];
        specd__node_status__init(x);
        x->id = n->id;
        x->kind = n->kind;
        x->addr = n->addr;
        x->ucx_addr = n->ucx_addr;
        x->numerics = n->numerics;
        x->sessions = n->sessions;
        x->max_sessions = n->max_sessions;
        x->last_seen_ms = t - n->last_seen;
        x->forwards = n->forwards;
        x->batched_forwards = n->batched_forwards;
        x->verified_tokens = n->verified_tokens;
        x->mean_batch_seqs = n->forwards ? (double)n->batch_seqs_total / n->forwards : 0;
        np[i] = x;
    }
    i = 0;
    for (co_sess *s = c->sessions; s; s = s->next, i++) {
        Specd__SessionStatus *x = &sess[i];
        specd__session_status__init(x);
        x->id = s->id;
        x->mode = s->sq ? (Specd__Mode)seq_get_mode(s->sq) : (Specd__Mode)s->mode;
        x->worker = s->workers[0] ? s->workers[0]->id : (char *)"";
        x->drafter = s->drafter ? s->drafter->id : (char *)"";
        if (s->sq) {
            const seq_stats *q = seq_get_stats(s->sq);
            x->n_gen = q->n_gen;
            x->acceptance = q->proposed ? (double)q->accepted / q->proposed : 0;
            x->chunk_rtt_ms_mean = q->steps ? q->rtt_ms_sum / q->steps : 0;
            double gen_ms = s->t_first ? t - s->t_first : 0;
            x->tokens_per_s = gen_ms > 0 && q->n_gen > 1 ? (q->n_gen - 1) / (gen_ms / 1e3) : 0;
        }
        sp[i] = x;
    }
    r.version = (char *)"specd "
                        "0.2";
    r.model = c->model_ident;
    r.n_nodes = nn;
    r.nodes = np;
    r.n_sessions = ns;
    r.sessions = sp;
    r.sessions_done = c->done;
    r.sessions_failed = c->failed;
    code = reply(&r.base, resp);
out:
    pthread_mutex_unlock(&c->mu);
    free(nodes);
    free(np);
    free(sess);
    free(sp);
    return code;
}

static rpc_code on_generate(void *ud, const uint8_t *req, size_t len, rpc_stream *stream,
                            rpc_status *st)
{
    co *c = ud;
    ProtobufCMessage *m;
    if (daemon_unpack_request(&specd__generate_request__descriptor, req, len, &m, st))
        return RPC_INVALID_ARGUMENT;
    Specd__GenerateRequest *q = (Specd__GenerateRequest *)m;
    rpc_code code = RPC_INVALID_ARGUMENT;
    co_sess *s = calloc(1, sizeof *s);
    if (!s) {
        code = RPC_RESOURCE_EXHAUSTED;
        snprintf(st->msg, sizeof st->msg, "out of memory");
        goto out;
    }
    s->c = c;
    s->t_start = now_ms();
    s->n_predict = q->n_predict ? q->n_predict : 128;
    s->ignore_eos = q->ignore_eos;
    s->mode = q->mode ? (int)q->mode : SPECD__MODE__MODE_SI;
    s->max_nodes = q->max_nodes ? q->max_nodes : c->o.max_nodes;
    s->max_inflight = q->max_inflight ? q->max_inflight : c->o.max_inflight;
    if (q->sampling) {
        s->sp.temp = q->sampling->temp;
        s->sp.top_k = q->sampling->top_k;
        s->sp.top_p = q->sampling->top_p > 0 ? q->sampling->top_p : 1.0f;
        s->sp.seed = q->sampling->seed;
    } else {
        s->sp.top_p = 1.0f;
    }
    snprintf(s->draft, sizeof s->draft, "%s",
             q->draft && *q->draft ? q->draft : c->o.default_draft);
    snprintf(s->tree, sizeof s->tree, "%s", q->tree && *q->tree ? q->tree : c->o.default_tree);
    if (!strcmp(s->draft, "none"))
        s->mode = SPECD__MODE__MODE_AR;
    s->no_adapt = q->no_adapt;
    tree_shape *shape = &s->shape;
    if ((int)q->mode < 0 || q->mode > SPECD__MODE__MODE_DSI) {
        snprintf(st->msg, sizeof st->msg, "mode %d is not ar, si, async or dsi", q->mode);
        goto out;
    }
    if (s->n_predict < 1 || s->n_predict > c->o.max_predict) {
        snprintf(st->msg, sizeof st->msg, "n_predict %d outside 1..%d", s->n_predict,
                 c->o.max_predict);
        goto out;
    }
    if (s->max_inflight < 1 || s->max_inflight > SEQ_MAX_WORKERS) {
        snprintf(st->msg, sizeof st->msg, "max_inflight %d outside 1..%d", s->max_inflight,
                 SEQ_MAX_WORKERS);
        goto out;
    }
    if (s->max_nodes < 1 || s->max_nodes > c->o.max_nodes) {
        snprintf(st->msg, sizeof st->msg, "max_nodes %d outside 1..%d", s->max_nodes,
                 c->o.max_nodes);
        goto out;
    }
    if (sample_params_check(&s->sp)) {
        snprintf(st->msg, sizeof st->msg, "sampling: %s", sd_errmsg());
        goto out;
    }
    if (tree_shape_parse(shape, s->tree, s->max_nodes)) {
        snprintf(st->msg, sizeof st->msg, "tree: %s", sd_errmsg());
        goto out;
    }
    if (q->n_prompt_tokens) {
        if (wire_check_tokens(q->prompt_tokens, q->n_prompt_tokens, c->V, WIRE_MAX_TOKENS,
                              "prompt_tokens")) {
            snprintf(st->msg, sizeof st->msg, "%s", sd_errmsg());
            goto out;
        }
        s->prompt = malloc(sizeof(int32_t) * q->n_prompt_tokens);
        if (s->prompt)
            memcpy(s->prompt, q->prompt_tokens, sizeof(int32_t) * q->n_prompt_tokens);
        s->n_prompt = (int)q->n_prompt_tokens;
    } else {
        size_t n = 0;
        if (!q->prompt || !*q->prompt) {
            snprintf(st->msg, sizeof st->msg, "prompt or prompt_tokens is required");
            goto out;
        }
        if (tok_encode_prompt(c->tk, q->prompt, q->system && *q->system ? q->system : NULL, q->chat,
                              &s->prompt, &n)) {
            snprintf(st->msg, sizeof st->msg, "prompt: %s", sd_errmsg());
            goto out;
        }
        s->n_prompt = (int)n;
    }
    if (!s->prompt || s->n_prompt < 1) {
        snprintf(st->msg, sizeof st->msg, "the prompt encodes to no tokens");
        goto out;
    }
    s->max_ctx = s->n_prompt + s->n_predict + s->max_nodes + 2;
    if (s->max_ctx > c->o.max_ctx) {
        code = RPC_OUT_OF_RANGE;
        snprintf(st->msg, sizeof st->msg,
                 "prompt (%d tokens) + n_predict (%d) + tree (%d) exceed the context limit %d",
                 s->n_prompt, s->n_predict, s->max_nodes, c->o.max_ctx);
        goto out;
    }
    pthread_mutex_lock(&c->mu);
    if (c->draining) {
        pthread_mutex_unlock(&c->mu);
        code = RPC_UNAVAILABLE;
        snprintf(st->msg, sizeof st->msg, "the coordinator is shutting down");
        goto out;
    }
    if (c->n_sessions >= c->o.max_sessions) {
        pthread_mutex_unlock(&c->mu);
        code = RPC_RESOURCE_EXHAUSTED;
        snprintf(st->msg, sizeof st->msg, "the coordinator holds its maximum of %d sessions",
                 c->o.max_sessions);
        goto out;
    }
    s->id = c->next_sid++;
    s->stream = stream;
    rpc_stream_set_ud(stream, s);
    s->next = c->sessions;
    c->sessions = s;
    c->n_sessions++;
    /* logged before the lock goes: from then on the control thread may place and free s */
    LOG_INFO("coordinator", "session %llu: %d prompt tokens, %d to generate, mode %d, %s, %s",
             (unsigned long long)s->id, s->n_prompt, s->n_predict, s->mode, s->draft, s->tree);
    push_task(c, 1, s, NULL, 0);
    pthread_mutex_unlock(&c->mu);
    protobuf_c_message_free_unpacked(m, NULL);
    return RPC_OK;
out:
    protobuf_c_message_free_unpacked(m, NULL);
    if (s) {
        free(s->prompt);
        free(s);
    }
    return code;
}

static void on_cancel(void *ud, rpc_stream *stream)
{
    co *c = ud;
    pthread_mutex_lock(&c->mu);
    for (co_sess *s = c->sessions; s; s = s->next)
        if (s->stream == stream && s->state != CS_DONE) {
            sess_fail(c, s, RPC_CANCELLED, "the client went away");
            break;
        }
    pthread_mutex_unlock(&c->mu);
}

/* ---- life cycle ---- */

sd_err co_create(co **out, const co_opts *o)
{
    *out = NULL;
    co *c = calloc(1, sizeof *c);
    if (!c)
        return SD_ENOMEM;
    c->o = *o;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    clock_cond_init(&c->tcv);
    c->next_sid = ((uint64_t)time(NULL) << 20) | 1; /* unique across restarts */
    sd_err e = gguf_open(&c->g, o->model);
    if (!e)
        e = tok_load(&c->tk, c->g);
    if (e) {
        co_free(c);
        return e;
    }
    c->V = tok_n_vocab(c->tk);
    c->eog[0] = tok_eos(c->tk);
    c->eog[1] = tok_eot(c->tk);
    c->n_eog = c->eog[1] >= 0 && c->eog[1] != c->eog[0] ? 2 : 1;
    c->vocab_hash = node_vocab_hash(c->tk);
    node_model_identity(c->g, c->model_ident, sizeof c->model_ident);
    ucx_opts uo = o->uo;
    uo.listen_addr = NULL; /* the coordinator connects to its nodes */
    uo.on_msg = on_msg;
    uo.on_peer_down = on_peer_down;
    uo.on_round_end = on_round_end;
    uo.ud = c;
    if ((e = ucx_create(&c->ux, &uo))) {
        co_free(c);
        return e;
    }
    if (pthread_create(&c->th_ctl, NULL, ctl_main, c)) {
        co_free(c);
        return sd_fail(SD_ENOMEM, "cannot start the control thread");
    }
    c->threads = 1;
    if (pthread_create(&c->th_timer, NULL, timer_main, c)) {
        co_free(c);
        return sd_fail(SD_ENOMEM, "cannot start the timer thread");
    }
    c->threads = 2;
    *out = c;
    return SD_OK;
}

sd_err co_add_methods(co *c, rpc_server *srv)
{
    sd_err e = rpc_server_add_stream(srv, "/specd.Coordinator/Generate", on_generate, c, on_cancel);
    if (!e)
        e = rpc_server_add_unary(srv, "/specd.Coordinator/Status", on_status, c);
    if (!e)
        e = rpc_server_add_unary(srv, "/specd.Coordinator/RegisterNode", on_register, c);
    if (!e)
        e = rpc_server_add_unary(srv, "/specd.Coordinator/Heartbeat", on_heartbeat, c);
    return e;
}

void co_drain(co *c, int timeout_ms)
{
    pthread_mutex_lock(&c->mu);
    c->draining = 1;
    double end = now_ms() + timeout_ms;
    while (c->sessions && now_ms() < end) {
        pthread_mutex_unlock(&c->mu);
        clock_sleep_ms(10);
        pthread_mutex_lock(&c->mu);
    }
    while (c->sessions) /* sessions being placed are freed by the control thread */
        sess_fail(c, c->sessions, RPC_UNAVAILABLE, "the coordinator is shutting down");
    /* let the control thread send the CloseSessions (bounded by their deadlines) */
    end = now_ms() + 3000;
    while (c->tasks && now_ms() < end) {
        pthread_mutex_unlock(&c->mu);
        clock_sleep_ms(10);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
}

void co_free(co *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_cond_broadcast(&c->tcv);
    pthread_mutex_unlock(&c->mu);
    if (c->threads >= 1)
        pthread_join(c->th_ctl, NULL);
    if (c->threads >= 2)
        pthread_join(c->th_timer, NULL);
    while (c->tasks) {
        co_task *t = c->tasks;
        c->tasks = t->next;
        if (t->node)
            node_unref(t->node);
        if (t->kind == 1) { /* never placed */
            if (t->s->state != CS_DONE)
                sess_fail(c, t->s, RPC_UNAVAILABLE, "the coordinator is shutting down");
            sess_destroy(t->s);
        }
        free(t);
    }
    while (c->sessions)
        sess_fail(c, c->sessions, RPC_UNAVAILABLE, "the coordinator is shutting down");
    while (c->nodes)
        node_lost(c, c->nodes, "coordinator shutdown");
    ucx_free(c->ux);
    tok_free(c->tk);
    gguf_close(c->g);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    pthread_cond_destroy(&c->tcv);
    free(c);
}
