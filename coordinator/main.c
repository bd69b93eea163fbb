/* specd-coordinator: takes generation requests, places sessions on a worker and a drafter, runs
 * each session's sequencer and streams the committed text to the client.
 *
 * Threads and queues (details in coordinator/co.h):
 *   main thread         config, start-up, then waits for SIGTERM/SIGINT: drains (running sessions
 *                       finish or fail with UNAVAILABLE) and exits 0.
 *   gRPC server thread  Coordinator.Generate / Status / RegisterNode / Heartbeat (net/rpc);
 *                       Generate queues the session for placement; token events are queued on
 *                       the client's stream and sent one at a time by this thread.
 *   control thread      placement and the blocking calls to nodes (OpenSession, CloseSession).
 *   UCX progress thread data plane (net/ucx): TreeExtend and Verdict into the sequencers; Prompt,
 *                       Chunk, Commit, Cancel out through ucx_send's queue; the token events
 *                       a round committed once its sends are out (on_round_end).
 *   timer thread        sleeps until the next deadline: a session's wait for the drafter, a
 *                       chunk's timeout, the reap of silent nodes (at least every 100 ms).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/paths.h"
#include "../net/daemon.h"
#include "../net/rpc.h"
#include "co.h"

typedef struct {
    daemon_common c;
    const char *host, *model, *port_file, *default_draft, *default_tree;
    int port, max_sessions, max_ctx, max_nodes, max_predict, heartbeat_ms, node_timeout_ms,
        chunk_timeout_ms, draft_wait_ms, max_inflight, drain_ms, max_msg_kib;
    float inflight_min_p;
} coord_cfg;

#define F(x) offsetof(coord_cfg, x)
static const opt_def coord_defs[] = {
    {"host", 0, OPT_STR, F(host), OPT_NOBOUNDS, "127.0.0.1", "ADDR",
     "address the gRPC API listens on (0.0.0.0 = every interface)"},
    {"port", 0, OPT_INT, F(port), 0, 65535, "7700", "N", "gRPC port (0 = any free port)"},
    {"port-file", 0, OPT_STR, F(port_file), OPT_NOBOUNDS, NULL, "PATH",
     "write the bound port to this file once serving (for launchers)"},
    {"model", 0, OPT_STR, F(model), OPT_NOBOUNDS, NULL, "PATH",
     "the target model's GGUF: its tokenizer and identity (default: the cached "
     "SmolLM2-135M-Instruct)"},
    {"max-sessions", 0, OPT_INT, F(max_sessions), 1, 65536, "64", "N",
     "sessions at once; more are refused with RESOURCE_EXHAUSTED"},
    {"max-ctx", 0, OPT_INT, F(max_ctx), 16, 1 << 20, "4096", "N",
     "longest prompt + generation + tree of a session"},
    {"max-nodes", 0, OPT_INT, F(max_nodes), 1, 1024, "64", "N", "largest tree per chunk"},
    {"max-predict", 0, OPT_INT, F(max_predict), 1, 1 << 20, "4096", "N",
     "largest n_predict a client may ask for"},
    {"heartbeat-ms", 0, OPT_INT, F(heartbeat_ms), 20, 60000, "500", "MS",
     "nodes heartbeat this often"},
    {"node-timeout-ms", 0, OPT_INT, F(node_timeout_ms), 100, 600000, "3000", "MS",
     "a node silent this long is dropped (its sessions fail or lose their drafter)"},
    {"chunk-timeout-ms", 0, OPT_INT, F(chunk_timeout_ms), 100, 3600000, "30000", "MS",
     "a chunk unanswered this long fails its session with UNAVAILABLE"},
    {"draft-wait-ms", 0, OPT_INT, F(draft_wait_ms), 0, 60000, "200", "MS",
     "si/async: dispatch an empty chunk when the drafter has proposed nothing for this long"},
    {"max-inflight", 0, OPT_INT, F(max_inflight), 1, 16, "1", "N",
     "dsi: chunks of one session in flight on different workers"},
    {"inflight-min-p", 0, OPT_FLOAT, F(inflight_min_p), 0, 1, "0.2", "P",
     "dsi: a chunk rooted below the ones in flight goes out only when at least this likely to be "
     "used (raise it where workers are shared by many sessions)"},
    {"default-draft", 0, OPT_STR, F(default_draft), OPT_NOBOUNDS, "ngram:3:2", "SPEC",
     "drafter for requests that name none"},
    {"default-tree", 0, OPT_STR, F(default_tree), OPT_NOBOUNDS, "chain:4", "SHAPE",
     "tree shape for requests that name none"},
    {"drain-ms", 0, OPT_INT, F(drain_ms), 0, 3600000, "10000", "MS",
     "on SIGTERM, wait this long for running sessions before failing them"},
    {"max-msg-kib", 0, OPT_INT, F(max_msg_kib), 4, 1 << 20, "4096", "KIB",
     "largest gRPC message accepted"},
    DAEMON_COMMON_DEFS(coord_cfg, c),
};
#undef F
#define N_DEFS (sizeof coord_defs / sizeof coord_defs[0])

int main(int argc, char **argv)
{
    daemon_signals_block();
    coord_cfg c;
    memset(&c, 0, sizeof c);
    cfg_file *keep = NULL;
    ucx_opts uo = {0};
    int rc = daemon_setup("specd-coordinator", "coordinator", coord_defs, N_DEFS, &c, &c.c, argc,
                          argv, &keep, &uo);
    if (rc >= 0)
        return rc;
    co_opts o = {.model = c.model ? c.model : paths_default_model(),
                 .max_sessions = c.max_sessions,
                 .max_ctx = c.max_ctx,
                 .max_nodes = c.max_nodes,
                 .max_predict = c.max_predict,
                 .heartbeat_ms = c.heartbeat_ms,
                 .node_timeout_ms = c.node_timeout_ms,
                 .chunk_timeout_ms = c.chunk_timeout_ms,
                 .draft_wait_ms = c.draft_wait_ms,
                 .max_inflight = c.max_inflight,
                 .inflight_min_p = c.inflight_min_p,
                 .default_draft = c.default_draft,
                 .default_tree = c.default_tree,
                 .uo = uo};
    if (c.node_timeout_ms <= 2 * c.heartbeat_ms) {
        fprintf(stderr, "specd-coordinator: node-timeout-ms (%d) must exceed twice heartbeat-ms "
                        "(%d)\n",
                c.node_timeout_ms, c.heartbeat_ms);
        cfg_file_free(keep);
        return 2;
    }
    co *core = NULL;
    rpc_server *srv = NULL;
    rc = 1;
    if (co_create(&core, &o)) {
        LOG_ERROR("coordinator", "model '%s': %s", o.model, sd_errmsg());
        goto out;
    }
    char listen[300];
    snprintf(listen, sizeof listen, "%s:%d", c.host, c.port);
    rpc_server_opts so = {.addr = listen, .max_msg_bytes = (size_t)c.max_msg_kib << 10};
    int port = 0;
    if (rpc_server_create(&srv, &so) || co_add_methods(core, srv) || rpc_server_start(srv, &port)) {
        LOG_ERROR("coordinator", "gRPC server on %s: %s", listen, sd_errmsg());
        goto out;
    }
    if (c.port_file) {
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp", c.port_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) || rename(tmp, c.port_file)) {
            LOG_ERROR("coordinator", "cannot write the port file %s", c.port_file);
            goto out;
        }
    }
    LOG_INFO("coordinator", "serving on %s:%d (model %s)", c.host, port, o.model);
    while (!daemon_wait_signal(1000))
        ;
    LOG_INFO("coordinator", "draining (up to %d ms)", c.drain_ms);
    co_drain(core, c.drain_ms);
    rc = 0;
out:
    rpc_server_free(srv);
    co_free(core);
    cfg_file_free(keep);
    return rc;
}
