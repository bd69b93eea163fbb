#include "daemon.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../common/cfg.h"
#include "../common/log.h"

sd_err daemon_common_apply(const daemon_common *c, const char *role, ucx_opts *uo)
{
    int lvl = log_level_parse(c->log_level);
    if (lvl < 0)
        return sd_fail(SD_EINVAL, "log-level: '%s' is not error, warn, info or debug",
                       c->log_level);
    log_set_role(role);
    log_set_level((log_level)lvl);
    if (!strcmp(c->ucx_err_mode, "peer"))
        uo->err_mode_peer = 1;
    else if (!strcmp(c->ucx_err_mode, "none"))
        uo->err_mode_peer = 0;
    else
        return sd_fail(SD_EINVAL, "ucx-err-mode: '%s' is not peer or none", c->ucx_err_mode);
    uo->max_unsent_bytes = (size_t)c->ucx_max_unsent_mib << 20;
    uo->link = (ucx_link){.delay_ms = c->link_delay_ms,
                          .jitter_ms = c->link_jitter_ms,
                          .bandwidth_mbps = c->link_bandwidth_mbps,
                          .reorder_prob = c->link_reorder_prob,
                          .reorder_ms = c->link_reorder_ms,
                          .seed = c->link_seed};
    if (ucx_link_active(&uo->link))
        LOG_WARN(role,
                 "link emulator ON: delay %.1f ms + jitter %.1f ms, bandwidth %.0f Mbit/s, "
                 "reorder p=%.2f (+%.1f ms) — timings are emulated",
                 c->link_delay_ms, c->link_jitter_ms, c->link_bandwidth_mbps, c->link_reorder_prob,
                 c->link_reorder_ms);
    return SD_OK;
}

static int daemon_load_config(const char *prog, const opt_def *defs, size_t n, void *target,
                              int argc, char **argv, cfg_file **keep)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--config-markdown")) { /* docs/configuration.md is made of these */
            cfg_write_markdown(stdout, prog, defs, n);
            return 0;
        }
    cfg_file *f = NULL;
    sd_err e = cfg_load(defs, n, target, argc - 1, argv + 1, &f); /* argv[0] is the program */
    if (e == SD_ECANCELED) {
        cfg_usage(stdout, prog, defs, n);
        cfg_file_free(f);
        return 0;
    }
    if (e) {
        fprintf(stderr, "%s: %s\n", prog, sd_errmsg());
        cfg_file_free(f);
        return 2;
    }
    *keep = f;
    return -1;
}

int daemon_setup(const char *prog, const char *role, const opt_def *defs, size_t n, void *target,
                 const daemon_common *common, int argc, char **argv, cfg_file **keep, ucx_opts *uo)
{
    int rc = daemon_load_config(prog, defs, n, target, argc, argv, keep);
    if (rc >= 0)
        return rc;
    if (daemon_common_apply(common, role, uo)) {
        fprintf(stderr, "%s: %s\n", prog, sd_errmsg());
        cfg_file_free(*keep);
        *keep = NULL;
        return 2;
    }
    return -1;
}

void daemon_signals_block(void)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int daemon_wait_signal(int timeout_ms)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    int sig = sigtimedwait(&s, NULL, &ts);
    return sig > 0 ? sig : 0;
}

#include <unistd.h>

#include "wire.h"

static rpc_code node_health(void *ud, const uint8_t *req, size_t len, rpc_buf *resp, rpc_status *st)
{
    const daemon_node *n = ud;
    node_load ld = {0};
    if (n->load)
        n->load(n->ud, &ld);
    Specd__HealthReply r = SPECD__HEALTH_REPLY__INIT;
    r.id = (char *)n->id;
    r.sessions = ld.sessions;
    r.numerics = (char *)(n->numerics ? n->numerics : "");
    return wire_pack(&r.base, &resp->data, &resp->len) ? RPC_INTERNAL : RPC_OK;
}

rpc_code daemon_unpack_request(const ProtobufCMessageDescriptor *d, const uint8_t *req, size_t len,
                               ProtobufCMessage **m, rpc_status *st)
{
    if (wire_unpack(d, req, len, m)) {
        snprintf(st->msg, sizeof st->msg, "%s", sd_errmsg());
        return RPC_INVALID_ARGUMENT;
    }
    return RPC_OK;
}

static rpc_code node_open(void *ud, const uint8_t *req, size_t len, rpc_buf *resp, rpc_status *st)
{
    const daemon_node *n = ud;
    ProtobufCMessage *m;
    if (daemon_unpack_request(&specd__open_session_request__descriptor, req, len, &m, st))
        return RPC_INVALID_ARGUMENT;
    Specd__OpenSessionRequest *q = (Specd__OpenSessionRequest *)m;
    rpc_code code;
    if (q->protocol_version != WIRE_PROTOCOL_VERSION) {
        snprintf(st->msg, sizeof st->msg, "protocol version %u, this %s speaks %u",
                 q->protocol_version, n->role, WIRE_PROTOCOL_VERSION);
        code = RPC_FAILED_PRECONDITION;
    } else {
        code = n->open_session(n->ud, q, st);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    if (code != RPC_OK)
        return code;
    Specd__OpenSessionReply r = SPECD__OPEN_SESSION_REPLY__INIT;
    r.ok = 1;
    return wire_pack(&r.base, &resp->data, &resp->len) ? RPC_INTERNAL : RPC_OK;
}

static rpc_code node_close(void *ud, const uint8_t *req, size_t len, rpc_buf *resp, rpc_status *st)
{
    const daemon_node *n = ud;
    ProtobufCMessage *m;
    if (daemon_unpack_request(&specd__close_session_request__descriptor, req, len, &m, st))
        return RPC_INVALID_ARGUMENT;
    uint64_t id = ((Specd__CloseSessionRequest *)m)->session_id;
    protobuf_c_message_free_unpacked(m, NULL);
    Specd__CloseSessionReply r = SPECD__CLOSE_SESSION_REPLY__INIT;
    r.ok = n->close_session(n->ud, id) == RPC_OK;
    return wire_pack(&r.base, &resp->data, &resp->len) ? RPC_INTERNAL : RPC_OK;
}

sd_err daemon_load_model(const char *role, const char *path, const model_opts *mo, model **m,
                         tok **tk, char *ident, size_t cap)
{
    *m = NULL;
    *tk = NULL;
    sd_err e = model_open(m, path, mo);
    if (e) {
        LOG_ERROR(role, "cannot load model '%s': %s", path, sd_errmsg());
        return e;
    }
    if ((e = tok_load(tk, model_gguf(*m)))) {
        LOG_ERROR(role, "tokenizer of '%s': %s", path, sd_errmsg());
        model_free(*m);
        *m = NULL;
        return e;
    }
    node_model_identity(model_gguf(*m), ident, cap);
    return SD_OK;
}

static void node_msg(void *ud, ucx_peer *from, unsigned id, const void *data, size_t len)
{
    const daemon_node *n = ud;
    n->on_msg(n->ud, from, id, data, len);
}

static void node_down(void *ud, ucx_peer *p, const char *why)
{
    const daemon_node *n = ud;
    LOG_INFO(n->role, "peer %s down: %s", ucx_peer_name(p), why);
    n->on_peer_down(n->ud, p);
}

int daemon_node_serve(const daemon_node *n0, ucx_opts *uo)
{
    daemon_node n = *n0;
    char id[256], listen[300], addr[300], ucx_addr[300], m_open[128], m_close[128], m_health[128];
    if (n.id)
        snprintf(id, sizeof id, "%s", n.id);
    else
        snprintf(id, sizeof id, "%s-%s-%d", n.role, n.host, (int)getpid());
    n.id = id;
    rpc_server *srv = NULL;
    ucx_ctx *ux = NULL;
    node_reg *reg = NULL;
    int rc = 1;
    snprintf(listen, sizeof listen, "%s:%d", n.host, n.ucx_port);
    uo->listen_addr = listen;
    uo->on_msg = node_msg;
    uo->on_peer_down = node_down;
    uo->ud = &n;
    if (ucx_create(&ux, uo)) {
        LOG_ERROR(n.role, "UCX on %s: %s", listen, sd_errmsg());
        goto out;
    }
    if (n.on_ucx)
        n.on_ucx(n.ud, ux);
    snprintf(listen, sizeof listen, "%s:%d", n.host, n.port);
    snprintf(m_open, sizeof m_open, "/%s/OpenSession", n.service);
    snprintf(m_close, sizeof m_close, "/%s/CloseSession", n.service);
    snprintf(m_health, sizeof m_health, "/%s/Health", n.service);
    rpc_server_opts so = {.addr = listen};
    int port = 0;
    if (rpc_server_create(&srv, &so) || rpc_server_add_unary(srv, m_open, node_open, &n) ||
        rpc_server_add_unary(srv, m_close, node_close, &n) ||
        rpc_server_add_unary(srv, m_health, node_health, &n) || rpc_server_start(srv, &port)) {
        LOG_ERROR(n.role, "gRPC server on %s: %s", listen, sd_errmsg());
        goto out;
    }
    snprintf(addr, sizeof addr, "%s:%d", n.host, port);
    snprintf(ucx_addr, sizeof ucx_addr, "%s:%d", n.host, ucx_listen_port(ux));
    node_reg_opts ro = {.coordinator = n.coordinator,
                        .kind = n.kind,
                        .id = id,
                        .addr = addr,
                        .ucx_addr = ucx_addr,
                        .model = n.model_ident,
                        .numerics = n.numerics,
                        .vocab_hash = n.vocab_hash,
                        .n_vocab = n.n_vocab,
                        .max_sessions = n.max_sessions,
                        .load = n.load,
                        .ud = n.ud};
    if (node_reg_start(&reg, &ro)) {
        LOG_ERROR(n.role, "%s", sd_errmsg());
        goto out;
    }
    LOG_INFO(n.role, "%s ready: gRPC %s, UCX %s, model %s%s%s, coordinator %s", id, addr, ucx_addr,
             n.model_ident, n.numerics ? ", numerics " : "", n.numerics ? n.numerics : "",
             n.coordinator);
    for (;;) {
        int sig = daemon_wait_signal(200);
        const char *why;
        if (sig) {
            LOG_INFO(n.role, "signal %d: stopping", sig);
            rc = 0;
            break;
        }
        if (node_reg_refused(reg, &why))
            break;
    }
out:
    node_reg_stop(reg);
    rpc_server_free(srv);
    if (ux && n.on_ucx)
        n.on_ucx(n.ud, NULL);
    ucx_free(ux);
    return rc;
}
