/* kv: the per-sequence key/value cache.
 *
 * Slots 0..n_committed-1 hold the committed sequence (slot = position). After them come the
 * pending nodes of a token tree (slots n_committed + i), appended by model_forward: each pending
 * node i has a parent (another pending node < i, or -1 for "hangs off the committed prefix") and a
 * depth; its position is n_committed + depth. A pending node's attention sees the committed
 * prefix plus its ancestors, so a chain of pending nodes is exactly a normal decode.
 *
 * kv_commit_path keeps one root-to-node path of pending nodes and compacts it into place;
 * kv_truncate rolls back. K/V rows are f32 so that moving them is exact: logits after a commit are
 * bitwise those of decoding the path token by token. */
#ifndef SD_KV_H
#define SD_KV_H

#include <stddef.h>
#include <stdint.h>

#include "../common/sd_err.h"

typedef struct {
    int n_layer, n_ctx, n_head, dh; /* n_head = Hkv, dh = Dh */
    int row;                        /* Hkv * Dh floats per slot and layer */
    /* [n_layer][n_head][n_ctx][dh]: head-major, so one KV head's keys (or values) for the whole
     * sequence are contiguous, which attention reads front to back for every query */
    float *k, *v;
    int n_committed;
    int n_pending;
    int *parent;  /* [n_ctx] pending node -> parent pending node or -1 */
    int *depth;   /* [n_ctx] pending node depth (0 = child of the committed prefix) */
    int32_t *tok; /* [n_ctx] token at each slot (committed and pending) */
    /* non-NULL: k and v live in this device backend's memory (kernels.h), and kv_put /
     * kv_commit_path move rows with its copies */
    struct kern_backend *be;
} kv_cache;

sd_err kv_init(kv_cache **out, int n_layer, int n_head, int dh, int n_ctx);
/* The same with k and v in the memory of `be` when it is a device backend (be->device); a
 * host backend (or NULL) gives kv_init's cache. */
sd_err kv_init_on(kv_cache **out, int n_layer, int n_head, int dh, int n_ctx,
                  struct kern_backend *be);
void kv_free(kv_cache *kv);

/* Layer l's keys / values: element (slot, head, d) at [head * kv_head_stride + slot * dh + d]. */
static inline float *kv_k(const kv_cache *kv, int layer)
{
    return kv->k + (size_t)layer * kv->n_ctx * kv->row;
}
static inline float *kv_v(const kv_cache *kv, int layer)
{
    return kv->v + (size_t)layer * kv->n_ctx * kv->row;
}
static inline size_t kv_head_stride(const kv_cache *kv)
{
    return (size_t)kv->n_ctx * kv->dh;
}
/* Store T positions' keys and values, given as [T][Hkv][Dh] rows, at slots slot0.. of layer l. */
void kv_put(kv_cache *kv, int layer, int slot0, const float *k, const float *v, int T);

/* Drop pending nodes and keep only the first n committed positions (n <= n_committed). */
sd_err kv_truncate(kv_cache *kv, int n);
/* Drop pending nodes only. */
void kv_clear_pending(kv_cache *kv);
/* Commit pending nodes path[0..n): path[0] must be a root (parent -1) and path[i]'s parent must be
 * path[i-1]. Other pending nodes are dropped. On error nothing changes. */
sd_err kv_commit_path(kv_cache *kv, const int *path, int n);
/* Commit all pending nodes; they must form one chain (the common decode/prefill case). */
sd_err kv_commit_all(kv_cache *kv);

#endif
