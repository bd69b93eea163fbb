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
                 c->link_delay_ms, c->link_jitter_ms, c->link_bandwidth_mbps,
                 c->link_reorder_prob, c->link_reorder_ms);
    return SD_OK;
}

int daemon_load_config(const char *prog, const opt_def *defs, size_t n, void *target, int argc,
                       char **argv, cfg_file **keep)
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

static rpc_code node_health(void *ud, const uint8_t *req, size_t len, rpc_buf *resp,
                            rpc_status *st)
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
    snprintf(listen, sizeof listen, "%s:%d", n.host, n.port);
    snprintf(m_open, sizeof m_open, "/%s/OpenSession", n.service);
    snprintf(m_close, sizeof m_close, "/%s/CloseSession", n.service);
    snprintf(m_health, sizeof m_health, "/%s/Health", n.service);
    rpc_server_opts so = {.addr = listen};
    int port = 0;
    if (rpc_server_create(&srv, &so) || rpc_server_add_unary(srv, m_open, n.open_session, n.ud) ||
        rpc_server_add_unary(srv, m_close, n.close_session, n.ud) ||
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
    LOG_INFO(n.role, "%s ready: gRPC %s, UCX %s, model %s%s%s, coordinator %s", id, addr,
             ucx_addr, n.model_ident, n.numerics ? ", numerics " : "",
             n.numerics ? n.numerics : "", n.coordinator);
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
    ucx_free(ux);
    return rc;
}
