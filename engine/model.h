/* model: the llama-family transformer (llama, SmolLM/SmolLM2, Mistral, Qwen2 with QKV bias) over
 * a memory-mapped GGUF file, and its forward pass over a batch of tree nodes.
 *
 * One call does prefill, single-token decode and tree verification alike: the batch is a set of
 * new pending nodes of the sequence's KV cache (see kv.h), each attending to the committed prefix
 * and its ancestors. With the CPU backend the forward pass is batch-invariant: a node's logits are
 * bitwise the same however it is batched. */
#ifndef SD_MODEL_H
#define SD_MODEL_H

#include <stdint.h>

#include "../common/sd_err.h"
#include "../kernels/kernels.h"
#include "gguf.h"
#include "kv.h"

typedef struct {
    char arch[32];
    int n_layer; /* layers this instance runs (a layer subset for self-drafting) */
    int n_layer_file;
    int n_embd;    /* D */
    int n_head;    /* H */
    int n_head_kv; /* Hkv */
    int head_dim;  /* Dh */
    int n_ff;      /* F */
    int n_vocab;   /* V */
    int n_ctx_train;
    int n_rot;
    float rope_base;
    float norm_eps;
    int rope_neox;
    int qkv_bias;
    int tied_output;
} model_config;

typedef struct {
    const float *attn_norm;        /* [D] */
    kern_mat wq, wk, wv, wo;       /* [H*Dh][D], [Hkv*Dh][D] x2, [D][H*Dh] */
    const float *bq, *bk, *bv;     /* Qwen2 biases or NULL */
    const float *ffn_norm;         /* [D] */
    kern_mat w_gate, w_up, w_down; /* [F][D], [F][D], [D][F] */
} model_layer;

typedef struct {
    int n_threads;         /* <= 0: all cores */
    unsigned kern_flags;   /* KERN_CPU_* */
    kern_backend *backend; /* shared backend (not owned); NULL = create one */
    /* Layer subset (self-drafting): run only these layers of the file, in order. NULL = all. */
    const int *layers;
    int n_layers;
    /* A model over the same file and backend whose packed weights this one reuses instead of
     * packing its own (self-drafting); it must outlive this model. NULL = pack (when the
     * backend has a layout of its own). */
    const struct model *share_packed;
    int no_pack; /* read the weights as stored (tests, comparisons) */
} model_opts;

typedef struct model model;

/* Open a GGUF file and build the model. opts may be NULL. */
sd_err model_open(model **out, const char *path, const model_opts *opts);
/* Build a model over an already open file (not owned: it must outlive the model). */
sd_err model_init(model **out, const gguf *g, const model_opts *opts);
void model_free(model *m);

const model_config *model_cfg(const model *m);
const gguf *model_gguf(const model *m);
kern_backend *model_backend(const model *m);
/* Bytes of weights read by one single-token forward (all layer matrices + output head). */
uint64_t model_weight_bytes(const model *m);
/* Bytes of the backend's packed weight copies this model made (0: none, or shared). */
uint64_t model_packed_bytes(const model *m);
/* How many of the matrices a forward multiplies by (1 + 7 per layer) the backend reads from a
 * packed copy, this model's own or one it shares. */
int model_packed_mats(const model *m);

/* A KV cache shaped for this model. n_ctx <= 0: the model's training context. */
sd_err model_kv_init(const model *m, kv_cache **out, int n_ctx);

/* Activations for batches of up to t_max positions (longer batches are processed in chunks). */
typedef struct model_run model_run;
sd_err model_run_init(model_run **out, const model *m, int t_max);
void model_run_free(model_run *r);

/* Append T pending nodes to kv and compute them.
 *   tokens[T]   token ids (< V, else SD_ERANGE and nothing changes)
 *   parents[T]  each node's parent as a pending-node index (existing pending nodes first, then
 *               this batch; must be < the node's own index) or -1 for a child of the committed
 *               prefix. NULL = a chain continuing the last pending node (or the prefix).
 *   out_idx[n_out]  strictly increasing batch indices whose logits are wanted, written to
 *               logits[n_out][V]; NULL with n_out == 1 means the last node.
 * Nothing is committed: call kv_commit_all / kv_commit_path afterwards. */
sd_err model_forward(model *m, model_run *r, kv_cache *kv, const int32_t *tokens,
                     const int *parents, int T, const int *out_idx, int n_out, float *logits);

/* One sequence's part of a multi-sequence forward: the arguments of model_forward. */
typedef struct {
    kv_cache *kv;
    const int32_t *tokens;
    const int *parents;
    int T;
    const int *out_idx;
    int n_out;
    float *logits;
} model_seq;

/* Several sequences (distinct KV caches) in one forward (continuous batching): every matmul runs
 * over all sequences' positions together, attention per sequence. Each sequence's logits and KV
 * rows are bitwise those of model_forward on it alone. Every sequence is checked before anything
 * is computed (messages name the sequence: "forward: sequence 2: ..."), and a cache given twice
 * is an error; on error nothing changes (an allocation failure while computing, the only error
 * left then, drops the new pending nodes again). The total of T may exceed the run's t_max
 * (processed in chunks of whole positions, a sequence split between chunks where the cut falls,
 * still bitwise equal). model_forward is the n_seq = 1 case. */
sd_err model_forward_multi(model *m, model_run *r, const model_seq *seqs, int n_seq);

#endif
