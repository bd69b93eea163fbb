/* specd-worker: the target verifier daemon.
 *
 * Threads and queues:
 *   main thread        config, start-up, then waits for SIGTERM/SIGINT (drain + exit 0) and
 *                      watches the registration (a refusal by the coordinator exits 1).
 *   gRPC server thread Worker.OpenSession / CloseSession / Health (net/rpc): session table
 *                      changes under the core's lock (worker/wk.c).
 *   UCX progress thread data plane (net/ucx): Prompt, Chunk, Commit, Cancel are decoded,
 *                      validated and queued per session (wk_on_msg); verdicts go back from the
 *                      compute thread (ucx_send: directly while the progress thread sleeps, else
 *                      through its queue).
 *   compute thread     takes the ready work of all sessions, one forward for all of it
 *                      (continuous batching), sends the verdicts (wk.c); for poll_us after a
 *                      forward it polls the data plane itself (ucx_poll) for the next chunk.
 *   registration       registers with the coordinator, heartbeats, re-registers (net/node.c).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/paths.h"
#include "../engine/model.h"
#include "../engine/tok.h"
#include "../net/daemon.h"
#include "../net/node.h"
#include "../net/rpc.h"
#include "../net/wire.h"
#include "wk.h"

typedef struct {
    daemon_common c;
    const char *coordinator, *host, *id, *model, *backend, *cpu_level;
    int port, ucx_port, device, threads, f32_act, no_pack, max_sessions, max_ctx, max_nodes,
        max_batch_tokens, batching, poll_us;
    float forward_delay_ms;
} worker_cfg;

#define F(x) offsetof(worker_cfg, x)
static const opt_def worker_defs[] = {
    {"coordinator", 0, OPT_STR, F(coordinator), OPT_NOBOUNDS, "127.0.0.1:7700", "HOST:PORT",
     "the coordinator's gRPC address"},
    {"host", 0, OPT_STR, F(host), OPT_NOBOUNDS, "127.0.0.1", "ADDR",
     "address this worker listens on and advertises (gRPC and UCX)"},
    {"port", 0, OPT_INT, F(port), 0, 65535, "0", "N", "gRPC control port (0 = any free port)"},
    {"ucx-port", 0, OPT_INT, F(ucx_port), 0, 65535, "0", "N",
     "UCX data-plane port (0 = any free port)"},
    {"id", 0, OPT_STR, F(id), OPT_NOBOUNDS, NULL, "NAME", "node name (default worker-HOST-PID)"},
    {"model", 0, OPT_STR, F(model), OPT_NOBOUNDS, NULL, "PATH",
     "target model GGUF (default: the cached SmolLM2-135M-Instruct)"},
    {"backend", 0, OPT_STR, F(backend), OPT_NOBOUNDS, "cpu", "NAME",
     "cpu | cuda (the GPU, or the CPU with one log line when there is none) | cuda! (exit 2 "
     "without a GPU); the advertised numerics fingerprint is the backend's"},
    {"device", 0, OPT_INT, F(device), 0, 1024, "0", "N", "CUDA device for backend cuda"},
    {"threads", 0, OPT_INT, F(threads), 0, 1024, "0", "N", "compute threads (0 = all cores)"},
    {"cpu-level", 0, OPT_STR, F(cpu_level), OPT_NOBOUNDS, "best", "LEVEL",
     "cap the CPU kernels: portable | avx2 | avx512 | best (all give the same bits)"},
    {"f32-act", 0, OPT_FLAG, F(f32_act), OPT_NOBOUNDS, NULL, NULL,
     "f32 activations in matmuls (a different numerics fingerprint)"},
    {"no-pack", 0, OPT_FLAG, F(no_pack), OPT_NOBOUNDS, NULL, NULL,
     "read weights as stored (same output, slower)"},
    {"max-sessions", 0, OPT_INT, F(max_sessions), 1, 1024, "16", "N",
     "sessions held at once; more are refused with RESOURCE_EXHAUSTED"},
    {"max-ctx", 0, OPT_INT, F(max_ctx), 16, 1 << 20, "4096", "N",
     "largest context (prompt + generation + tree) of one session"},
    {"max-nodes", 0, OPT_INT, F(max_nodes), 1, 1024, "64", "N", "largest chunk (tree nodes)"},
    {"max-batch-tokens", 0, OPT_INT, F(max_batch_tokens), 1, 1 << 16, "512", "N",
     "positions in one batched forward"},
    {"batching", 0, OPT_INT, F(batching), 0, 1, "1", "0|1",
     "1: one forward over the ready chunks of all sessions; 0: one forward per session"},
    {"poll-us", 0, OPT_INT, F(poll_us), 0, 1000000, "1000", "US",
     "after a forward, the compute thread polls the data plane this long for the next chunk "
     "(one core busy meanwhile; 0 = sleep at once)"},
    {"forward-delay-ms", 0, OPT_FLOAT, F(forward_delay_ms), 0, 60000, "0", "MS",
     "EMULATION: extra time per forward, as if the target were larger (experiments)"},
    DAEMON_COMMON_DEFS(worker_cfg, c),
};
#undef F
#define N_DEFS (sizeof worker_defs / sizeof worker_defs[0])

static rpc_code on_open(void *ud, const Specd__OpenSessionRequest *q, rpc_status *st)
{
    if (q->verify_mode != 0) {
        snprintf(st->msg, sizeof st->msg, "verification mode %u is not supported by workers",
                 q->verify_mode);
        return RPC_UNIMPLEMENTED;
    }
    sample_params sp = {0, 0, 1, 0};
    if (q->sampling) {
        sp.temp = q->sampling->temp;
        sp.top_k = q->sampling->top_k;
        sp.top_p = q->sampling->top_p > 0 ? q->sampling->top_p : 1.0f;
        sp.seed = q->sampling->seed;
    }
    return wk_open_session(ud, q->session_id, &sp, q->max_ctx, q->max_nodes, st);
}

static rpc_code on_close(void *ud, uint64_t id)
{
    return wk_close_session(ud, id);
}

static void on_msg(void *ud, ucx_peer *from, unsigned id, const void *data, size_t len)
{
    wk_on_msg(ud, from, id, data, len);
}

static void on_down(void *ud, ucx_peer *p)
{
    wk_on_peer_down(ud, p);
}

static void on_ucx(void *ud, ucx_ctx *ux)
{
    wk_set_ucx(ud, ux);
}

static void load(void *ud, node_load *out)
{
    wk_stats ws;
    wk_get_stats(ud, &ws);
    out->sessions = ws.sessions;
    out->forwards = ws.forwards;
    out->batched_forwards = ws.batched_forwards;
    out->verified_tokens = ws.verified_tokens;
    out->batch_seqs_total = ws.batch_seqs_total;
}

int main(int argc, char **argv)
{
    daemon_signals_block();
    worker_cfg c;
    memset(&c, 0, sizeof c);
    cfg_file *keep = NULL;
    ucx_opts uo = {0};
    int rc = daemon_setup("specd-worker", "worker", worker_defs, N_DEFS, &c, &c.c, argc, argv,
                          &keep, &uo);
    if (rc >= 0)
        return rc;
    char model_path[4096], ident[256], numerics[128];
    snprintf(model_path, sizeof model_path, "%s", c.model ? c.model : paths_default_model());
    kern_cpu_level level;
    if (kern_cpu_level_parse(c.cpu_level, &level)) {
        fprintf(stderr, "specd-worker: cpu-level: %s\n", sd_errmsg());
        cfg_file_free(keep);
        return 2;
    }
    unsigned kflags = (c.f32_act ? KERN_CPU_F32_ACT : 0u) | KERN_CPU_LEVEL(level);
    kern_backend *be = NULL;
    sd_err e = kern_backend_open(&be, c.backend, c.device, c.threads, kflags);
    if (e) { /* as specd generate: a bad name or a required GPU that is not there exits 2 */
        fprintf(stderr, "specd-worker: backend %s: %s\n", c.backend, sd_errmsg());
        cfg_file_free(keep);
        return e == SD_EUNSUPPORTED || e == SD_EINVAL ? 2 : 1;
    }
    model_opts mo = {
        .n_threads = c.threads, .kern_flags = kflags, .backend = be, .no_pack = c.no_pack};
    model *m = NULL;
    tok *tk = NULL;
    wk *core = NULL;
    rc = 1;
    if (daemon_load_model("worker", model_path, &mo, &m, &tk, ident, sizeof ident))
        goto out;
    /* logits of workers with the same fingerprint are bitwise equal (docs/numerics.md) */
    snprintf(numerics, sizeof numerics, "%s", model_backend(m)->numerics);
    LOG_INFO("worker", "backend %s, numerics %s", model_backend(m)->name, numerics);
    wk_opts wo = {.m = m,
                  .max_sessions = c.max_sessions,
                  .max_ctx = c.max_ctx,
                  .max_nodes = c.max_nodes,
                  .max_batch_tokens = c.max_batch_tokens,
                  .batching = c.batching,
                  .forward_delay_ms = c.forward_delay_ms,
                  .poll_us = c.poll_us};
    if (wk_create(&core, &wo)) {
        LOG_ERROR("worker", "%s", sd_errmsg());
        goto out;
    }
    if (c.forward_delay_ms > 0)
        LOG_WARN("worker", "EMULATION: +%.1f ms per forward (a larger target)", c.forward_delay_ms);
    daemon_node dn = {.role = "worker",
                      .service = "specd.Worker",
                      .kind = SPECD__NODE_KIND__NODE_WORKER,
                      .coordinator = c.coordinator,
                      .host = c.host,
                      .id = c.id,
                      .model_ident = ident,
                      .numerics = numerics,
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
    rc = daemon_node_serve(&dn, &uo);
out:
    wk_free(core, 2000);
    tok_free(tk);
    model_free(m);
    kern_free(be);
    cfg_file_free(keep);
    return rc;
}
