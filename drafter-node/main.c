/* specd-drafter: the edge drafter daemon.
 *
 * Threads and queues:
 *   main thread        config, start-up, then waits for SIGTERM/SIGINT (exit 0) or a refusal by
 *                      the coordinator (exit 1).
 *   gRPC server thread Drafter.OpenSession / CloseSession / Health (net/rpc) — opening a session
 *                      creates its drafter (drafter-node/dn.c).
 *   UCX progress thread data plane (net/ucx): Prompt and Commit are decoded, validated and
 *                      queued per session; an si session's are answered right there (one
 *                      proposal per Commit: no hand-off), the others' by the drafting thread.
 *                      TreeExtends from the drafting thread go out directly while the progress
 *                      thread sleeps, else through its queue.
 *   drafting thread    round-robin over the sessions: applies their messages in epoch order,
 *                      then one drafting step each (dn.c) unless the epoch's Commit said hold;
 *                      an emulated draft delay waits on the queue, so a Commit ends it.
 *   registration       registers with the coordinator, heartbeats, re-registers (net/node.c).
 */
#include <libgen.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/paths.h"
#include "../engine/model.h"
#include "../engine/tok.h"
#include "../net/daemon.h"
#include "../net/node.h"
#include "../net/wire.h"
#include "dn.h"

typedef struct {
    daemon_common c;
    const char *coordinator, *host, *id, *model, *model_dir;
    int port, ucx_port, threads, max_sessions, max_tree, max_ctx;
    float draft_delay_ms;
} drafter_cfg;

#define F(x) offsetof(drafter_cfg, x)
static const opt_def drafter_defs[] = {
    {"coordinator", 0, OPT_STR, F(coordinator), OPT_NOBOUNDS, "127.0.0.1:7700", "HOST:PORT",
     "the coordinator's gRPC address"},
    {"host", 0, OPT_STR, F(host), OPT_NOBOUNDS, "127.0.0.1", "ADDR",
     "address this drafter listens on and advertises (gRPC and UCX)"},
    {"port", 0, OPT_INT, F(port), 0, 65535, "0", "N", "gRPC control port (0 = any free port)"},
    {"ucx-port", 0, OPT_INT, F(ucx_port), 0, 65535, "0", "N",
     "UCX data-plane port (0 = any free port)"},
    {"id", 0, OPT_STR, F(id), OPT_NOBOUNDS, NULL, "NAME", "node name (default drafter-HOST-PID)"},
    {"model", 0, OPT_STR, F(model), OPT_NOBOUNDS, NULL, "PATH",
     "the target's GGUF (its vocabulary; its layers for layerskip drafters; default: the cached "
     "SmolLM2-135M-Instruct)"},
    {"model-dir", 0, OPT_STR, F(model_dir), OPT_NOBOUNDS, NULL, "DIR",
     "directory that model:PATH drafters must be in (default: the target model's directory)"},
    {"threads", 0, OPT_INT, F(threads), 0, 1024, "1", "N",
     "compute threads of model drafters (0 = all cores)"},
    {"max-sessions", 0, OPT_INT, F(max_sessions), 1, 1024, "16", "N", "sessions held at once"},
    {"max-tree", 0, OPT_INT, F(max_tree), 1, 1024, "128", "N",
     "draft nodes per session between two commits"},
    {"max-ctx", 0, OPT_INT, F(max_ctx), 16, 1 << 20, "4096", "N",
     "longest context (prompt + generation + tree) of one session; larger opens are refused"},
    {"draft-delay-ms", 0, OPT_FLOAT, F(draft_delay_ms), 0, 60000, "0", "MS",
     "EMULATION: extra time per drafted node, as if the drafter were slower (experiments)"},
    DAEMON_COMMON_DEFS(drafter_cfg, c),
};
#undef F
#define N_DEFS (sizeof drafter_defs / sizeof drafter_defs[0])

static rpc_code on_open(void *ud, const Specd__OpenSessionRequest *q, rpc_status *st)
{
    return dn_open_session(ud, q->session_id, q->mode, q->draft && *q->draft ? q->draft : "ngram:3:2",
                           q->tree && *q->tree ? q->tree : "chain:4", q->max_ctx, q->max_nodes, st);
}

static rpc_code on_close(void *ud, uint64_t id)
{
    return dn_close_session(ud, id);
}

static void on_msg(void *ud, ucx_peer *from, unsigned id, const void *data, size_t len)
{
    dn_on_msg(ud, from, id, data, len);
}

static void on_down(void *ud, ucx_peer *p)
{
    dn_on_peer_down(ud, p);
}

static void on_ucx(void *ud, ucx_ctx *ux)
{
    if (!ux) /* the data plane goes away: nothing of ours may send on it any more */
        dn_stop(ud);
}

static void load(void *ud, node_load *out)
{
    dn_stats ds;
    dn_get_stats(ud, &ds);
    out->sessions = ds.sessions;
}

int main(int argc, char **argv)
{
    daemon_signals_block();
    drafter_cfg c;
    memset(&c, 0, sizeof c);
    cfg_file *keep = NULL;
    ucx_opts uo = {0};
    int rc = daemon_setup("specd-drafter", "drafter", drafter_defs, N_DEFS, &c, &c.c, argc, argv, &keep, &uo);
    if (rc >= 0)
        return rc;
    char model_path[4096], dir[4096], ident[256];
    snprintf(model_path, sizeof model_path, "%s", c.model ? c.model : paths_default_model());
    snprintf(dir, sizeof dir, "%s", model_path);
    model_opts mo = {.n_threads = c.threads};
    model *m = NULL;
    tok *tk = NULL;
    dn *core = NULL;
    rc = 1;
    if (daemon_load_model("drafter", model_path, &mo, &m, &tk, ident, sizeof ident))
        goto out;
    dn_opts o = {.target = m,
                 .max_sessions = c.max_sessions,
                 .max_tree = c.max_tree,
                 .max_ctx = c.max_ctx,
                 .model_dir = c.model_dir ? c.model_dir : dirname(dir),
                 .draft_delay_ms = c.draft_delay_ms};
    if (dn_create(&core, &o)) {
        LOG_ERROR("drafter", "%s", sd_errmsg());
        goto out;
    }
    if (c.draft_delay_ms > 0)
        LOG_WARN("drafter", "EMULATION: +%.2f ms per drafted node", c.draft_delay_ms);
    daemon_node n = {.role = "drafter",
                     .service = "specd.Drafter",
                     .kind = SPECD__NODE_KIND__NODE_DRAFTER,
                     .coordinator = c.coordinator,
                     .host = c.host,
                     .id = c.id,
                     .model_ident = ident,
                     .port = c.port,
                     .ucx_port = c.ucx_port,
                     .max_sessions = c.max_sessions,
                     .n_vocab = model_cfg(m)->n_vocab,
                     .vocab_hash = node_vocab_hash(tk),
                     .open_session = on_open,
                     .close_session = on_close,
                     .on_msg = on_msg,
                     .on_peer_down = on_down,
                     .load = load,
                     .on_ucx = on_ucx,
                     .ud = core};
    rc = daemon_node_serve(&n, &uo);
    dn_stats ds;
    dn_get_stats(core, &ds);
    LOG_INFO("drafter",
             "%lld proposals (%lld nodes), %lld commits (%lld held: plain-decode steps), %lld "
             "si messages answered on the progress thread, %lld emulated drafts cut short by a "
             "commit, %lld messages rejected",
             (long long)ds.proposals, (long long)ds.nodes, (long long)ds.commits,
             (long long)ds.held, (long long)ds.inline_answers, (long long)ds.cut,
             (long long)ds.rejected);
out:
    dn_free(core);
    tok_free(tk);
    model_free(m);
    cfg_file_free(keep);
    return rc;
}
