#include "node.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/clock.h"
#include "../common/log.h"
#include "rpc.h"
#include "wire.h"

uint64_t node_vocab_hash(const tok *t)
{
    uint64_t h = 1469598103934665603ull;
    int32_t n = tok_n_vocab(t);
    for (int32_t i = 0; i < n; i++) {
        const char *b;
        size_t len;
        if (tok_piece(t, i, &b, &len) != SD_OK)
            len = 0;
        for (size_t k = 0; k < len; k++)
            h = (h ^ (uint8_t)b[k]) * 1099511628211ull;
        h = (h ^ (uint64_t)(0x100 + tok_token_type(t, i))) * 1099511628211ull;
    }
    return h ^ (uint64_t)n;
}

void node_model_identity(const gguf *g, char *buf, size_t cap)
{
    const char *name = NULL;
    size_t len = 0;
    if (gguf_get_str(g, "general.name", &name, &len) != SD_OK) {
        name = "unnamed";
        len = strlen(name);
    }
    snprintf(buf, cap, "%.*s (%zu bytes)", (int)(len < 128 ? len : 128), name, gguf_file_size(g));
}

struct node_reg {
    node_reg_opts o;
    char *s_coord, *s_id, *s_addr, *s_ucx, *s_model, *s_num;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop, registered, refused;
    char why[256];
    unsigned hb_ms;
};

static char *dup0(const char *s)
{
    return strdup(s ? s : "");
}

static int reg_once(node_reg *r, rpc_client *c)
{
    Specd__RegisterRequest q = SPECD__REGISTER_REQUEST__INIT;
    q.protocol_version = WIRE_PROTOCOL_VERSION;
    q.kind = r->o.kind;
    q.id = r->s_id;
    q.addr = r->s_addr;
    q.ucx_addr = r->s_ucx;
    q.model = r->s_model;
    q.vocab_hash = r->o.vocab_hash;
    q.n_vocab = r->o.n_vocab;
    q.numerics = r->s_num;
    q.max_sessions = r->o.max_sessions;
    ProtobufCMessage *m;
    rpc_status st;
    sd_err e = wire_call(c, "/specd.Coordinator/RegisterNode", &q.base, 2000, 1,
                         &specd__register_reply__descriptor, &m, &st);
    if (e || st.code != RPC_OK) {
        LOG_DEBUG("node", "register with %s: %s %s", r->s_coord,
                  e ? sd_errmsg() : rpc_code_name(st.code), st.msg);
        return 0;
    }
    Specd__RegisterReply *rep = (Specd__RegisterReply *)m;
    int ok = rep->accepted;
    pthread_mutex_lock(&r->mu);
    if (ok) {
        r->registered = 1;
        r->hb_ms = rep->heartbeat_ms ? rep->heartbeat_ms : 1000;
        if (r->hb_ms < 50)
            r->hb_ms = 50;
    } else {
        r->refused = 1;
        snprintf(r->why, sizeof r->why, "%s", rep->reason ? rep->reason : "no reason given");
    }
    pthread_mutex_unlock(&r->mu);
    if (ok)
        LOG_INFO("node", "registered with the coordinator at %s as %s", r->s_coord, r->s_id);
    else
        LOG_ERROR("node", "the coordinator at %s refused this node: %s", r->s_coord, r->why);
    protobuf_c_message_free_unpacked(m, NULL);
    return ok;
}

/* 1 = still known, 0 = must register again */
static int heartbeat(node_reg *r, rpc_client *c)
{
    Specd__HeartbeatRequest q = SPECD__HEARTBEAT_REQUEST__INIT;
    node_load ld = {0};
    if (r->o.load)
        r->o.load(r->o.ud, &ld);
    q.id = r->s_id;
    q.sessions = ld.sessions;
    q.forwards = ld.forwards;
    q.batched_forwards = ld.batched_forwards;
    q.verified_tokens = ld.verified_tokens;
    q.batch_seqs_total = ld.batch_seqs_total;
    ProtobufCMessage *m;
    rpc_status st;
    sd_err e = wire_call(c, "/specd.Coordinator/Heartbeat", &q.base, 1000, 0,
                         &specd__heartbeat_reply__descriptor, &m, &st);
    if (e == SD_ENOMEM)
        return 1; /* not sent: try again at the next beat */
    if (e || st.code != RPC_OK)
        return -1; /* unreachable or a malformed reply: the caller counts these */
    int known = ((Specd__HeartbeatReply *)m)->known;
    protobuf_c_message_free_unpacked(m, NULL);
    return known;
}

/* Sleep up to ms unless stopped; returns nonzero when stopped. */
static int nap(node_reg *r, unsigned ms)
{
    struct timespec ts = clock_deadline(ms);
    pthread_mutex_lock(&r->mu);
    while (!r->stop && pthread_cond_timedwait(&r->cv, &r->mu, &ts) == 0)
        ;
    int s = r->stop;
    pthread_mutex_unlock(&r->mu);
    return s;
}

static void *reg_main(void *arg)
{
    node_reg *r = arg;
    rpc_client *c = NULL;
    if (rpc_client_create(&c, r->s_coord, 0)) {
        LOG_ERROR("node", "cannot create a client for %s: %s", r->s_coord, sd_errmsg());
        return NULL;
    }
    unsigned backoff = 100;
    int misses = 0;
    while (!r->stop) {
        if (!r->registered) {
            if (reg_once(r, c)) {
                backoff = 100;
                misses = 0;
            } else if (r->refused) {
                break;
            } else if (nap(r, backoff)) {
                break;
            } else if (backoff < 2000) {
                backoff *= 2;
            }
            continue;
        }
        if (nap(r, r->hb_ms))
            break;
        int k = heartbeat(r, c);
        misses = k < 0 ? misses + 1 : 0;
        if (k == 0 || misses >= 3) { /* forgotten, or gone for 3 beats: register again */
            LOG_WARN("node", "the coordinator at %s %s: registering again", r->s_coord,
                     k == 0 ? "does not know this node" : "does not answer");
            pthread_mutex_lock(&r->mu);
            r->registered = 0;
            pthread_mutex_unlock(&r->mu);
        }
    }
    rpc_client_free(c);
    return NULL;
}

sd_err node_reg_start(node_reg **out, const node_reg_opts *o)
{
    *out = NULL;
    node_reg *r = calloc(1, sizeof *r);
    if (!r)
        return SD_ENOMEM;
    r->o = *o;
    r->s_coord = dup0(o->coordinator);
    r->s_id = dup0(o->id);
    r->s_addr = dup0(o->addr);
    r->s_ucx = dup0(o->ucx_addr);
    r->s_model = dup0(o->model);
    r->s_num = dup0(o->numerics);
    pthread_mutex_init(&r->mu, NULL);
    clock_cond_init(&r->cv);
    if (pthread_create(&r->th, NULL, reg_main, r)) {
        node_reg_stop(r);
        return sd_fail(SD_ENOMEM, "cannot start the registration thread");
    }
    *out = r;
    return SD_OK;
}

void node_reg_stop(node_reg *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    int started = !r->stop;
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (started && r->th)
        pthread_join(r->th, NULL);
    free(r->s_coord);
    free(r->s_id);
    free(r->s_addr);
    free(r->s_ucx);
    free(r->s_model);
    free(r->s_num);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

int node_reg_registered(const node_reg *r)
{
    return r && r->registered;
}

int node_reg_refused(const node_reg *r, const char **why)
{
    if (!r || !r->refused)
        return 0;
    if (why)
        *why = r->why;
    return 1;
}
