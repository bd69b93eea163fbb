/* node: what workers and drafters share — their identity (model, vocabulary hash) and their
 * registration with the coordinator: a thread that registers (retrying until the coordinator
 * answers), heartbeats, and registers again by itself when the coordinator has forgotten it (a
 * restarted coordinator answers a heartbeat with known = false, or is unreachable for a while).
 * A refusal (protocol version, vocabulary, model) is final: logged with the coordinator's
 * reason and reported through node_reg_refused. */
#ifndef SD_NODE_H
#define SD_NODE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/sd_err.h"
#include "../engine/gguf.h"
#include "../engine/tok.h"

/* FNV-1a over every token's bytes and type: equal hashes = the same vocabulary. */
uint64_t node_vocab_hash(const tok *t);
/* "general.name (N bytes)" of the model file. */
void node_model_identity(const gguf *g, char *buf, size_t cap);

typedef struct {
    int64_t forwards, batched_forwards, verified_tokens, batch_seqs_total;
    int sessions;
} node_load;

typedef struct {
    const char *coordinator; /* host:port of its gRPC server */
    int kind;                /* SPECD__NODE_KIND__NODE_WORKER / _DRAFTER */
    const char *id, *addr, *ucx_addr, *model, *numerics;
    uint64_t vocab_hash;
    int n_vocab, max_sessions;
    /* Current load for heartbeats (called on the registration thread). */
    void (*load)(void *ud, node_load *out);
    void *ud;
} node_reg_opts;

typedef struct node_reg node_reg;

/* Start the registration thread (strings copied). */
sd_err node_reg_start(node_reg **out, const node_reg_opts *o);
/* Stop the thread (bounded by one call's deadline) and free. NULL is a no-op. */
void node_reg_stop(node_reg *r);
int node_reg_registered(const node_reg *r);
/* Nonzero once the coordinator refused this node; *why gets its reason. */
int node_reg_refused(const node_reg *r, const char **why);

#endif
