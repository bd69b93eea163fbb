/* daemon: what the three daemons share — the config keys every daemon has (log level, UCX
 * error mode, the link emulator), process signals, and small helpers around them. */
#ifndef SD_DAEMON_H
#define SD_DAEMON_H

#include <stddef.h>

#include "../common/cfg.h"
#include "../common/opt.h"
#include "../common/sd_err.h"
#include "ucx.h"

/* Config fields every daemon has; embed as a member and list DAEMON_COMMON_DEFS in its table. */
typedef struct {
    const char *log_level, *ucx_err_mode;
    int ucx_max_unsent_mib;
    float link_delay_ms, link_jitter_ms, link_bandwidth_mbps, link_reorder_prob, link_reorder_ms;
    unsigned long long link_seed;
} daemon_common;

#define DAEMON_COMMON_DEFS(T, f)                                                                   \
    {"log-level",  0,      OPT_STR, offsetof(T, f.log_level),                                      \
     OPT_NOBOUNDS, "info", "LEVEL", "error, warn, info or debug"},                                 \
        {"ucx-err-mode",                                                                           \
         0,                                                                                        \
         OPT_STR,                                                                                  \
         offsetof(T, f.ucx_err_mode),                                                              \
         OPT_NOBOUNDS,                                                                             \
         "peer",                                                                                   \
         "MODE",                                                                                   \
         "UCX error handling: peer (failure callbacks; TCP) or none (shared memory allowed; "      \
         "heartbeats only)"},                                                                      \
        {"ucx-max-unsent-mib",                                                                     \
         0,                                                                                        \
         OPT_INT,                                                                                  \
         offsetof(T, f.ucx_max_unsent_mib),                                                        \
         1,                                                                                        \
         4096,                                                                                     \
         "64",                                                                                     \
         "MIB",                                                                                    \
         "a peer with more than this unsent to it (it stopped reading) is dropped as failed"},     \
        {"link-delay-ms",                                                                          \
         0,                                                                                        \
         OPT_FLOAT,                                                                                \
         offsetof(T, f.link_delay_ms),                                                             \
         0,                                                                                        \
         60000,                                                                                    \
         "0",                                                                                      \
         "MS",                                                                                     \
         "link emulator: fixed delay added to every message this daemon sends"},                   \
        {"link-jitter-ms",                                                                         \
         0,                                                                                        \
         OPT_FLOAT,                                                                                \
         offsetof(T, f.link_jitter_ms),                                                            \
         0,                                                                                        \
         60000,                                                                                    \
         "0",                                                                                      \
         "MS",                                                                                     \
         "link emulator: + uniform random delay in [0, MS)"},                                      \
        {"link-bandwidth-mbps",                                                                    \
         0,                                                                                        \
         OPT_FLOAT,                                                                                \
         offsetof(T, f.link_bandwidth_mbps),                                                       \
         0,                                                                                        \
         1e6,                                                                                      \
         "0",                                                                                      \
         "MBPS",                                                                                   \
         "link emulator: bandwidth cap in megabits/s (0 = none)"},                                 \
        {"link-reorder-prob",                                                                      \
         0,                                                                                        \
         OPT_FLOAT,                                                                                \
         offsetof(T, f.link_reorder_prob),                                                         \
         0,                                                                                        \
         1,                                                                                        \
         "0",                                                                                      \
         "P",                                                                                      \
         "link emulator: probability a message is held back link-reorder-ms (reordering)"},        \
        {"link-reorder-ms",                                                                        \
         0,                                                                                        \
         OPT_FLOAT,                                                                                \
         offsetof(T, f.link_reorder_ms),                                                           \
         0,                                                                                        \
         60000,                                                                                    \
         "5",                                                                                      \
         "MS",                                                                                     \
         "link emulator: extra delay of a reordered message"},                                     \
    {                                                                                              \
        "link-seed", 0, OPT_U64, offsetof(T, f.link_seed), OPT_NOBOUNDS, "1", "S",                 \
            "link emulator: seed of its random draws"                                              \
    }

/* Apply log level and role; fill a ucx_opts' error mode and link from the common keys. Errors
 * name the key. */
sd_err daemon_common_apply(const daemon_common *c, const char *role, ucx_opts *uo);

/* Load a daemon's config (cfg_load: defaults < --config FILE < command line; --help prints the
 * table, --config-markdown prints it as the Markdown of the configuration reference), then apply
 * its common keys (daemon_common_apply). Errors are printed as "prog: message". Returns -1 to go
 * on, else the exit status (0 after --help, 2 after an error). */
int daemon_setup(const char *prog, const char *role, const opt_def *defs, size_t n, void *target,
                 const daemon_common *common, int argc, char **argv, cfg_file **keep, ucx_opts *uo);

/* Block SIGTERM/SIGINT/SIGPIPE in the calling thread (call first, before any thread starts, so
 * every thread inherits it), then wait for SIGTERM/SIGINT with daemon_wait_signal. */
void daemon_signals_block(void);
/* Wait up to timeout_ms for SIGTERM or SIGINT; returns the signal, or 0 on timeout. */
int daemon_wait_signal(int timeout_ms);

#endif

/* The serving part of a node daemon (worker, drafter): UCX listener, gRPC control server
 * (SERVICE/OpenSession, CloseSession, Health), registration with the coordinator, then wait for
 * SIGTERM/SIGINT (returns 0) or a refusal by the coordinator (returns 1). Everything started is
 * stopped before it returns; the caller then frees its core. */
#include "../engine/model.h"
#include "../engine/tok.h"
#include "node.h"
#include "proto/specd.pb-c.h"
#include "rpc.h"

/* Unpack a gRPC request as d; on malformed bytes fill st and return RPC_INVALID_ARGUMENT (the
 * handlers' answer), else RPC_OK with *m to free with protobuf_c_message_free_unpacked. */
rpc_code daemon_unpack_request(const ProtobufCMessageDescriptor *d, const uint8_t *req, size_t len,
                               ProtobufCMessage **m, rpc_status *st);

/* Load a node's model and its tokenizer (errors logged as role); ident gets the model identity
 * (node_model_identity). On error nothing is left allocated. */
sd_err daemon_load_model(const char *role, const char *path, const model_opts *mo, model **m,
                         tok **tk, char *ident, size_t cap);

typedef struct {
    const char *role;    /* "worker", "drafter" (logs, default id) */
    const char *service; /* "specd.Worker" */
    int kind;            /* SPECD__NODE_KIND__* */
    const char *coordinator, *host, *id, *model_ident, *numerics;
    int port, ucx_port, max_sessions, n_vocab;
    uint64_t vocab_hash;
    /* Session control, requests already decoded and their protocol version checked. */
    rpc_code (*open_session)(void *ud, const Specd__OpenSessionRequest *q, rpc_status *st);
    rpc_code (*close_session)(void *ud, uint64_t session_id);
    void (*on_msg)(void *ud, ucx_peer *from, unsigned msg_id, const void *data, size_t len);
    void (*on_peer_down)(void *ud, ucx_peer *p);
    void (*load)(void *ud, node_load *out);
    /* Optional: the data plane once it exists, and NULL before it is freed: the node stops
     * every thread of its own that sends on it or polls it before this returns. */
    void (*on_ucx)(void *ud, ucx_ctx *ux);
    void *ud;
} daemon_node;

int daemon_node_serve(const daemon_node *n, ucx_opts *uo);
