#include "dn.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "../common/log.h"
#include "../engine/draft.h"
#include "../engine/tree.h"
#include "../net/wire.h"

#define DN_MAX_QUEUED 64 /* messages waiting per session */

typedef struct dn_msg {
    struct dn_msg *next;
    unsigned kind; /* DATA_MSG_PROMPT / DATA_MSG_COMMIT */
    uint32_t epoch;
    int n_committed, root_node, n_seen, hold, budget;
    int32_t *tok;
    int n_tok;
} dn_msg;

typedef struct dn_sess {
    struct dn_sess *next;
    uint64_t id;
    int mode; /* SPECD__MODE__* */
    draft *d;
    tree_shape shape;
    tree t; /* one proposal */
    int max_nodes, max_ctx;
    ucx_peer *peer;
    dn_msg *head, *tail;
    int busy, closing, broken, started;
    uint32_t epoch;
    int n_committed;
    /* the tree as the coordinator sees it */
    int n;
    int32_t *tok;
    int *par, *depth, *dead; /* dead: nothing more to propose below this node */
    float *logp;
    int need_root; /* propose from the committed end in this epoch */
    int hold;      /* this epoch's Commit said the next chunk is a plain decode: propose nothing */
    int budget;    /* si: the next chunk's node budget (0: the whole shape) */
    int32_t *path;
} dn_sess;

struct dn {
    dn_opts o;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    int stop, started;
    dn_sess *sessions;
    int n_sessions;
    dn_stats st;
};

static void msg_free(dn_msg *m)
{
    if (m) {
        free(m->tok);
        free(m);
    }
}

static void sess_free(dn_sess *s)
{
    while (s->head) {
        dn_msg *n = s->head->next;
        msg_free(s->head);
        s->head = n;
    }
    if (s->peer)
        ucx_peer_unref(s->peer);
    draft_free(s->d);
    tree_free(&s->t);
    free(s->tok);
    free(s->par);
    free(s->depth);
    free(s->dead);
    free(s->logp);
    free(s->path);
    free(s);
}

static dn_sess *find(dn *d, uint64_t id)
{
    for (dn_sess *s = d->sessions; s; s = s->next)
        if (s->id == id && !s->closing)
            return s;
    return NULL;
}

/* model:PATH drafters only from the configured directory (a client names them). */
static int path_allowed(const char *dir, const char *path)
{
    char rd[PATH_MAX], rp[PATH_MAX];
    if (!dir || !realpath(dir, rd) || !realpath(path, rp))
        return 0;
    size_t n = strlen(rd);
    return !strncmp(rd, rp, n) && (rp[n] == '/' || rd[n - 1] == '/');
}

rpc_code dn_open_session(dn *d, uint64_t id, int mode, const char *spec, const char *shape,
                         int max_ctx, int max_nodes, rpc_status *st)
{
    pthread_mutex_lock(&d->mu);
    int n = d->n_sessions, dup = find(d, id) != NULL;
    pthread_mutex_unlock(&d->mu);
    if (dup) {
        snprintf(st->msg, sizeof st->msg, "session %llu is already open",
                 (unsigned long long)id);
        return RPC_ALREADY_EXISTS;
    }
    if (n >= d->o.max_sessions) {
        snprintf(st->msg, sizeof st->msg, "the drafter holds its maximum of %d sessions",
                 d->o.max_sessions);
        return RPC_RESOURCE_EXHAUSTED;
    }
    if (max_nodes < 1 || max_nodes > d->o.max_tree) {
        snprintf(st->msg, sizeof st->msg, "tree of %d nodes outside 1..%d (drafter max_tree)",
                 max_nodes, d->o.max_tree);
        return RPC_OUT_OF_RANGE;
    }
    if (max_ctx < 2 || max_ctx > d->o.max_ctx) { /* the drafter's state is sized by it */
        snprintf(st->msg, sizeof st->msg, "context %d outside 2..%d (drafter max_ctx)", max_ctx,
                 d->o.max_ctx);
        return RPC_OUT_OF_RANGE;
    }
    if (!strncmp(spec, "model:", 6) && !path_allowed(d->o.model_dir, spec + 6)) {
        snprintf(st->msg, sizeof st->msg,
                 "drafter '%s': draft models must be files under %s (drafter model-dir)", spec,
                 d->o.model_dir ? d->o.model_dir : "(none configured)");
        return RPC_PERMISSION_DENIED;
    }
    dn_sess *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(st->msg, sizeof st->msg, "out of memory");
        return RPC_RESOURCE_EXHAUSTED;
    }
    s->id = id;
    s->mode = mode;
    s->max_nodes = max_nodes;
    s->max_ctx = max_ctx;
    sd_err e = tree_shape_parse(&s->shape, shape, max_nodes);
    if (e) {
        snprintf(st->msg, sizeof st->msg, "tree: %s", sd_errmsg());
        sess_free(s);
        return RPC_INVALID_ARGUMENT;
    }
    draft_opts dop = {.max_ctx = max_ctx, .max_nodes = max_nodes};
    if ((e = draft_open(&s->d, spec, d->o.target, &dop))) {
        snprintf(st->msg, sizeof st->msg, "drafter: %s", sd_errmsg());
        sess_free(s);
        return RPC_INVALID_ARGUMENT;
    }
    int mt = d->o.max_tree;
    e = tree_init(&s->t, max_nodes, 0);
    s->tok = malloc(sizeof(int32_t) * (size_t)mt);
    s->par = malloc(sizeof(int) * (size_t)mt);
    s->depth = malloc(sizeof(int) * (size_t)mt);
    s->dead = malloc(sizeof(int) * (size_t)mt);
    s->logp = malloc(sizeof(float) * (size_t)mt);
    s->path = malloc(sizeof(int32_t) * (size_t)(mt + 1));
    if (e || !s->tok || !s->par || !s->depth || !s->dead || !s->logp || !s->path) {
        snprintf(st->msg, sizeof st->msg, "out of memory");
        sess_free(s);
        return RPC_RESOURCE_EXHAUSTED;
    }
    pthread_mutex_lock(&d->mu);
    s->next = d->sessions;
    d->sessions = s;
    d->n_sessions++;
    pthread_mutex_unlock(&d->mu);
    LOG_INFO("drafter", "session %llu open: %s, tree %s, mode %d", (unsigned long long)id, spec,
             shape, mode);
    return RPC_OK;
}

rpc_code dn_close_session(dn *d, uint64_t id)
{
    pthread_mutex_lock(&d->mu);
    dn_sess *s = find(d, id);
    if (s) {
        s->closing = 1;
        d->n_sessions--;
        pthread_cond_signal(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    return s ? RPC_OK : RPC_NOT_FOUND;
}

static int run_session(dn *d, dn_sess *s);

void dn_on_msg(dn *d, ucx_peer *from, unsigned msg_id, const void *data, size_t len)
{
    ProtobufCMessage *m;
    int V = model_cfg(d->o.target)->n_vocab;
    if (wire_decode_data(msg_id, data, len, V, d->o.max_tree, &m)) {
        LOG_WARN("drafter", "rejected a %s from %s: %s", wire_data_name(msg_id),
                 ucx_peer_name(from), sd_errmsg());
        pthread_mutex_lock(&d->mu);
        d->st.rejected++;
        pthread_mutex_unlock(&d->mu);
        return;
    }
    dn_msg *q = calloc(1, sizeof *q);
    uint64_t sid = 0;
    const int32_t *tok = NULL;
    size_t n_tok = 0;
    const char *bad = q ? NULL : "out of memory";
    if (q && msg_id == SPECD__DATA_MSG_ID__DATA_MSG_PROMPT) {
        Specd__Prompt *p = (Specd__Prompt *)m;
        sid = p->session_id;
        tok = p->tokens;
        n_tok = p->n_tokens;
        q->n_committed = (int)n_tok;
    } else if (q && msg_id == SPECD__DATA_MSG_ID__DATA_MSG_COMMIT) {
        Specd__Commit *c = (Specd__Commit *)m;
        sid = c->session_id;
        tok = c->tokens;
        n_tok = c->n_tokens;
        q->epoch = c->epoch;
        q->n_committed = (int)c->n_committed;
        q->root_node = c->root_node;
        q->n_seen = (int)c->n_seen;
        q->hold = c->hold;
        q->budget = (int)c->budget;
    } else if (q) {
        bad = "not a message for a drafter";
    }
    if (q) {
        q->kind = msg_id;
        q->n_tok = (int)n_tok;
        q->tok = malloc(sizeof(int32_t) * (n_tok ? n_tok : 1));
        if (!q->tok)
            bad = "out of memory";
        else if (n_tok)
            memcpy(q->tok, tok, sizeof(int32_t) * n_tok);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    pthread_mutex_lock(&d->mu);
    dn_sess *s = bad ? NULL : find(d, sid);
    if (!bad && !s)
        bad = "unknown session";
    if (!bad && (q->n_committed < 0 || q->n_committed > s->max_ctx))
        bad = "sequence beyond the session's context";
    int queued = 0;
    for (dn_msg *x = s ? s->head : NULL; x; x = x->next)
        queued++;
    if (!bad && queued >= DN_MAX_QUEUED)
        bad = "too many messages waiting (a commit is missing)";
    if (bad) {
        d->st.rejected++;
        pthread_mutex_unlock(&d->mu);
        LOG_WARN("drafter", "session %llu: rejected a %s: %s", (unsigned long long)sid,
                 wire_data_name(msg_id), bad);
        msg_free(q);
        return;
    }
    if (!s->peer) {
        ucx_peer_ref(from);
        s->peer = from;
    }
    if (s->tail)
        s->tail->next = q;
    else
        s->head = q;
    s->tail = q;
    /* si: the coordinator waits for exactly one answer to this Commit, and handing it to the
     * drafting thread costs a wake-up (tens to hundreds of µs on a virtual CPU): answer here,
     * on the progress thread, unless the drafting thread has the session or drafting is
     * slowed down on purpose (the emulated delay would hold the progress thread) */
    if (s->mode == SPECD__MODE__MODE_SI && !s->busy && !s->broken && d->o.draft_delay_ms <= 0) {
        if (run_session(d, s))
            d->st.inline_answers++;
    } else {
        pthread_cond_signal(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
}

void dn_on_peer_down(dn *d, ucx_peer *p)
{
    pthread_mutex_lock(&d->mu);
    for (dn_sess *s = d->sessions; s; s = s->next)
        if (s->peer == p && !s->closing) {
            s->closing = 1;
            d->n_sessions--;
        }
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/* ---- compute thread ---- */

static void send_extend(dn_sess *s, int first, int n)
{
    Specd__TreeExtend m = SPECD__TREE_EXTEND__INIT;
    m.session_id = s->id;
    m.epoch = s->epoch;
    m.first_id = (uint32_t)first;
    m.n_parent = m.n_token = m.n_logp = (size_t)n;
    m.parent = s->par + first; /* int and int32_t are the same width here */
    m.token = s->tok + first;
    m.logp = s->logp + first;
    uint8_t *b;
    size_t len;
    if (wire_pack(&m.base, &b, &len) == SD_OK) {
        if (ucx_send(s->peer, SPECD__DATA_MSG_ID__DATA_MSG_TREE_EXTEND, b, len))
            LOG_DEBUG("drafter", "session %llu: extension not sent: %s",
                      (unsigned long long)s->id, sd_errmsg());
        free(b);
    }
}

/* Re-root the mirror tree as the coordinator does (seq.c tree_reroot). */
static void reroot(dn_sess *s, int root, int n_seen)
{
    int kept = 0;
    int *map = s->dead; /* reused as the id map, then reset */
    int n = s->n < n_seen ? s->n : n_seen;
    float base_lp = root >= 0 && root < s->n ? s->logp[root] : 0;
    int base_d = root >= 0 && root < s->n ? s->depth[root] : 0;
    for (int i = 0; i < n; i++) {
        int p = s->par[i], np = -2;
        if (root >= 0 && p == root)
            np = -1;
        else if (root >= 0 && p >= 0 && map[p] >= 0)
            np = map[p];
        map[i] = np == -2 ? -1 : kept;
        if (np == -2)
            continue;
        s->tok[kept] = s->tok[i];
        s->par[kept] = np;
        s->depth[kept] = s->depth[i] - base_d - 1;
        s->logp[kept] = s->logp[i] - base_lp;
        kept++;
    }
    s->n = kept;
    memset(s->dead, 0, sizeof(int) * (size_t)kept);
}

/* Apply one queued message; 0 when the session cannot go on. */
static int apply_msg(dn *d, dn_sess *s, dn_msg *q)
{
    if (q->kind == SPECD__DATA_MSG_ID__DATA_MSG_PROMPT) {
        if (s->started || draft_advance(s->d, q->tok, q->n_tok)) {
            LOG_WARN("drafter", "session %llu: bad prompt: %s", (unsigned long long)s->id,
                     s->started ? "a second prompt" : sd_errmsg());
            return 0;
        }
        s->started = 1;
        s->n_committed = q->n_tok;
        s->need_root = 1;
        return 1;
    }
    if (q->epoch <= s->epoch)
        return 1; /* a duplicate */
    if (!s->started || q->n_committed - q->n_tok != s->n_committed) {
        LOG_WARN("drafter", "session %llu: commit to %d tokens does not follow the %d held",
                 (unsigned long long)s->id, q->n_committed, s->n_committed);
        return 0;
    }
    if (draft_advance(s->d, q->tok, q->n_tok)) {
        LOG_WARN("drafter", "session %llu: %s", (unsigned long long)s->id, sd_errmsg());
        return 0;
    }
    s->n_committed = q->n_committed;
    s->epoch = q->epoch;
    reroot(s, q->root_node, q->n_seen);
    s->need_root = 1;
    s->hold = q->hold;
    s->budget = q->budget;
    pthread_mutex_lock(&d->mu); /* the progress thread applies si sessions' messages too */
    d->st.held += q->hold;
    d->st.commits++;
    pthread_mutex_unlock(&d->mu);
    return 1;
}

/* Take the next message in epoch order (commits may arrive reordered). */
static dn_msg *take_msg(dn_sess *s)
{
    dn_msg **pp = &s->head, *prev = NULL;
    for (dn_msg *m = s->head; m; prev = m, m = m->next) {
        int ready = m->kind == SPECD__DATA_MSG_ID__DATA_MSG_PROMPT ||
                    (s->started && m->epoch <= s->epoch + 1);
        if (!ready) {
            pp = &m->next;
            continue;
        }
        *pp = m->next;
        if (s->tail == m)
            s->tail = prev;
        m->next = NULL;
        return m;
    }
    return NULL;
}

/* EMULATION: drafting costs ms more. A newer message for the session (a Commit: the tree is
 * rerooted and what is being drafted may be pruned) ends the wait early, as a drafter producing
 * tokens one by one would stop; returns nonzero then. Called without the lock. */
static int draft_delay(dn *d, dn_sess *s, double ms)
{
    if (ms <= 0)
        return 0;
    struct timespec ts = clock_deadline(ms);
    pthread_mutex_lock(&d->mu);
    int rc = 0;
    while (!s->head && !s->closing && !d->stop && rc == 0)
        rc = pthread_cond_timedwait(&d->cv, &d->mu, &ts); /* 0: woken, ETIMEDOUT: done */
    int cut = s->head || s->closing || d->stop;
    pthread_mutex_unlock(&d->mu);
    return cut;
}

/* The most probable live leaf of the tree that can grow (-1: none). */
static int best_leaf(const dn_sess *s)
{
    int best = -1;
    for (int i = 0; i < s->n; i++) {
        int leaf = !s->dead[i];
        for (int j = i + 1; j < s->n && leaf; j++)
            leaf = s->par[j] != i;
        if (leaf && s->depth[i] + 2 < TREE_MAX_DEPTH && (best < 0 || s->logp[i] > s->logp[best]))
            best = i;
    }
    return best;
}

/* One drafting step; returns nonzero when it did something. Called without the lock.
 * si: at the start of an epoch, exactly one answer (a TreeExtend, empty for "nothing more")
 * that grows the surviving subtree to the Commit's budget — what an in-process step drafts.
 * async/dsi: a proposal from the root when nothing survived, then below the most probable live
 * leaf, step after step, until the tree is full or the next Commit. */
static int draft_step(dn *d, dn_sess *s)
{
    int first = s->n, root = -1, si = s->mode == SPECD__MODE__MODE_SI;
    if (s->hold)
        return 0;
    int room = d->o.max_tree - s->n;
    tree_shape shape = s->shape;
    if (s->need_root) {
        s->need_root = 0;
        if (si) {
            int want = s->budget > 0 && s->budget < shape.budget ? s->budget : shape.budget;
            if (s->n > 0 && (s->n >= want || (root = best_leaf(s)) < 0)) {
                send_extend(s, s->n, 0); /* the survivors fill the budget */
                return 1;
            }
            shape = tree_shape_cut(&shape, want - s->n);
            room = room < shape.budget ? room : shape.budget;
        } else if (s->n > 0) {
            return 1; /* the survivors are already there */
        }
    } else {
        if (si || room <= 0 || (root = best_leaf(s)) < 0)
            return 0;
    }
    int n_hist = s->d->n_hist, plen = 0;
    if (root >= 0) {
        plen = s->depth[root] + 1;
        for (int x = root; x >= 0; x = s->par[x])
            s->path[s->depth[x]] = s->tok[x];
        if (s->n_committed + plen + s->max_nodes >= s->max_ctx ||
            draft_advance(s->d, s->path, plen)) {
            s->dead[root] = 1;
            if (si)
                send_extend(s, s->n, 0);
            return 1;
        }
    }
    tree_clear(&s->t);
    sd_err e = draft_propose(s->d, &shape, &s->t);
    if (root >= 0)
        draft_rollback(s->d, n_hist);
    if (e) {
        LOG_WARN("drafter", "session %llu: %s", (unsigned long long)s->id, sd_errmsg());
        s->broken = 1;
        return 1;
    }
    int n = s->t.n < room ? s->t.n : room;
    float lp0 = root >= 0 ? s->logp[root] : 0;
    int d0 = root >= 0 ? s->depth[root] + 1 : 0;
    for (int i = 0; i < n; i++) {
        int k = s->n + i;
        int p = s->t.parent[i];
        s->tok[k] = s->t.tok[i];
        s->par[k] = p < 0 ? root : first + p;
        s->depth[k] = d0 + s->t.depth[i];
        s->logp[k] = lp0 + (isfinite(s->t.logp[i]) ? s->t.logp[i] : -30.0f);
        s->dead[k] = 0;
    }
    s->n += n;
    if (root >= 0 && n == 0)
        s->dead[root] = 1;
    /* si waits for its one answer per commit, so only async/dsi drafting is cut short */
    if (draft_delay(d, s, d->o.draft_delay_ms * (n > 0 ? n : 1)) && !si) {
        s->n = first; /* never sent: the coordinator's tree does not have it */
        pthread_mutex_lock(&d->mu);
        d->st.cut++;
        pthread_mutex_unlock(&d->mu);
        return 1;
    }
    if (n > 0 || root < 0 || si) /* si / epoch start: an empty answer says "nothing" */
        send_extend(s, first, n);
    pthread_mutex_lock(&d->mu);
    d->st.proposals++;
    d->st.nodes += n;
    pthread_mutex_unlock(&d->mu);
    return 1;
}

/* Apply s's queued messages, then one drafting step. d->mu held (released around the work);
 * s is busy meanwhile. Returns nonzero when it did something. */
static int run_session(dn *d, dn_sess *s)
{
    int did = 0;
    s->busy = 1;
    dn_msg *q;
    while ((q = take_msg(s))) {
        pthread_mutex_unlock(&d->mu);
        int ok = apply_msg(d, s, q);
        msg_free(q);
        pthread_mutex_lock(&d->mu);
        if (!ok)
            s->broken = 1;
        did = 1;
    }
    /* a newer commit waiting: drafting now would be for a stale epoch */
    int newer = s->head != NULL;
    if (!s->broken && s->started && !newer && !s->closing) {
        pthread_mutex_unlock(&d->mu);
        did |= draft_step(d, s);
        pthread_mutex_lock(&d->mu);
    }
    s->busy = 0;
    return did;
}

static void *dn_main(void *arg)
{
    dn *d = arg;
    pthread_mutex_lock(&d->mu);
    while (!d->stop) {
        dn_sess **pp = &d->sessions;
        while (*pp) {
            dn_sess *s = *pp;
            if (s->closing && !s->busy) {
                *pp = s->next;
                sess_free(s);
                continue;
            }
            pp = &s->next;
        }
        int did = 0;
        for (dn_sess *s = d->sessions; s && !d->stop; s = s->next)
            if (!s->closing && !s->broken && !s->busy) /* busy: the progress thread has it */
                did |= run_session(d, s);
        if (!did && !d->stop)
            pthread_cond_wait(&d->cv, &d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

sd_err dn_create(dn **out, const dn_opts *o)
{
    *out = NULL;
    dn *d = calloc(1, sizeof *d);
    if (!d)
        return SD_ENOMEM;
    d->o = *o;
    pthread_mutex_init(&d->mu, NULL);
    clock_cond_init(&d->cv); /* draft_delay's deadline */
    if (pthread_create(&d->th, NULL, dn_main, d)) {
        free(d);
        return sd_fail(SD_ENOMEM, "cannot start the drafting thread");
    }
    d->started = 1;
    *out = d;
    return SD_OK;
}

void dn_stop(dn *d)
{
    pthread_mutex_lock(&d->mu);
    d->stop = 1;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
    if (d->started)
        pthread_join(d->th, NULL);
    d->started = 0;
}

void dn_free(dn *d)
{
    if (!d)
        return;
    dn_stop(d);
    while (d->sessions) {
        dn_sess *n = d->sessions->next;
        sess_free(d->sessions);
        d->sessions = n;
    }
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    free(d);
}

void dn_get_stats(dn *d, dn_stats *st)
{
    pthread_mutex_lock(&d->mu);
    *st = d->st;
    st->sessions = d->n_sessions;
    pthread_mutex_unlock(&d->mu);
}
