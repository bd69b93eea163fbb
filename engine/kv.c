#include "kv.h"

#include "../kernels/kernels.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* n bytes; from 2 MiB up, 2 MiB aligned and advised for transparent huge pages: attention
 * walks a layer's cache for every query, and with 4 KiB pages that walk misses the TLB. */
static float *kv_alloc(size_t n)
{
    size_t huge = (size_t)2 << 20;
    if (n < huge)
        return aligned_alloc(64, (n + 63) & ~(size_t)63);
    size_t len = (n + huge - 1) & ~(huge - 1);
    void *p = aligned_alloc(huge, len);
    if (p)
        (void)madvise(p, len, MADV_HUGEPAGE); /* a hint: without it only slower */
    return p;
}

sd_err kv_init(kv_cache **out, int n_layer, int n_head, int dh, int n_ctx)
{
    return kv_init_on(out, n_layer, n_head, dh, n_ctx, NULL);
}

sd_err kv_init_on(kv_cache **out, int n_layer, int n_head, int dh, int n_ctx, kern_backend *be)
{
    *out = NULL;
    if (n_layer <= 0 || n_head <= 0 || dh <= 0 || n_ctx <= 0)
        return sd_fail(SD_EINVAL, "kv cache: bad shape (layers %d, heads %d x %d, context %d)",
                       n_layer, n_head, dh, n_ctx);
    int row = n_head * dh;
    kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv)
        return SD_ENOMEM;
    size_t n = (size_t)n_layer * (size_t)n_ctx * (size_t)row;
    kv->n_layer = n_layer;
    kv->n_ctx = n_ctx;
    kv->n_head = n_head;
    kv->dh = dh;
    kv->row = row;
    if (be && be->device) {
        kv->be = be;
        kv->k = be->buf_alloc(be->ctx, n * sizeof(float));
        kv->v = be->buf_alloc(be->ctx, n * sizeof(float));
    } else {
        kv->k = kv_alloc(n * sizeof(float));
        kv->v = kv_alloc(n * sizeof(float));
    }
    kv->parent = malloc(sizeof(int) * (size_t)n_ctx);
    kv->depth = malloc(sizeof(int) * (size_t)n_ctx);
    kv->tok = malloc(sizeof(int32_t) * (size_t)n_ctx);
    if (!kv->k || !kv->v || !kv->parent || !kv->depth || !kv->tok) {
        kv_free(kv);
        return sd_fail(SD_ENOMEM, "kv cache: cannot allocate %zu MiB for %d positions",
                       2 * n * sizeof(float) >> 20, n_ctx);
    }
    *out = kv;
    return SD_OK;
}

void kv_free(kv_cache *kv)
{
    if (!kv)
        return;
    if (kv->be) {
        kv->be->buf_free(kv->be->ctx, kv->k);
        kv->be->buf_free(kv->be->ctx, kv->v);
    } else {
        free(kv->k);
        free(kv->v);
    }
    free(kv->parent);
    free(kv->depth);
    free(kv->tok);
    free(kv);
}

void kv_clear_pending(kv_cache *kv)
{
    kv->n_pending = 0;
}

sd_err kv_truncate(kv_cache *kv, int n)
{
    if (n < 0 || n > kv->n_committed)
        return sd_fail(SD_ERANGE, "kv truncate to %d: committed length is %d", n, kv->n_committed);
    kv->n_committed = n;
    kv->n_pending = 0;
    return SD_OK;
}

sd_err kv_commit_path(kv_cache *kv, const int *path, int n)
{
    if (n < 0 || n > kv->n_pending)
        return sd_fail(SD_ERANGE, "kv commit: path of %d nodes, %d pending", n, kv->n_pending);
    for (int i = 0; i < n; i++) {
        int p = path[i];
        if (p < 0 || p >= kv->n_pending)
            return sd_fail(SD_ERANGE, "kv commit: path[%d] = %d, %d pending", i, p, kv->n_pending);
        int want = i == 0 ? -1 : path[i - 1];
        if (kv->parent[p] != want)
            return sd_fail(SD_EINVAL, "kv commit: path[%d] = node %d has parent %d, expected %d", i,
                           p, kv->parent[p], want);
    }
    /* Pending indices along a path strictly increase and path[i] >= i, so copying slot
     * base+path[i] down to base+i never overwrites a source still to be read. */
    int base = kv->n_committed;
    for (int i = 0; i < n; i++) {
        int src = base + path[i], dst = base + i;
        if (src == dst)
            continue;
        size_t hs = kv_head_stride(kv) * sizeof(float), w = sizeof(float) * (size_t)kv->dh;
        for (int l = 0; kv->be && l < kv->n_layer; l++) { /* one strided copy for all heads */
            kv->be->copy2d(kv->be->ctx, kv_k(kv, l) + (size_t)dst * kv->dh, hs,
                           kv_k(kv, l) + (size_t)src * kv->dh, hs, w, (size_t)kv->n_head);
            kv->be->copy2d(kv->be->ctx, kv_v(kv, l) + (size_t)dst * kv->dh, hs,
                           kv_v(kv, l) + (size_t)src * kv->dh, hs, w, (size_t)kv->n_head);
        }
        for (int l = 0; !kv->be && l < kv->n_layer; l++)
            for (int h = 0; h < kv->n_head; h++) {
                size_t o = (size_t)h * kv_head_stride(kv), dh = (size_t)kv->dh;
                memcpy(kv_k(kv, l) + o + dst * dh, kv_k(kv, l) + o + src * dh, sizeof(float) * dh);
                memcpy(kv_v(kv, l) + o + dst * dh, kv_v(kv, l) + o + src * dh, sizeof(float) * dh);
            }
        kv->tok[dst] = kv->tok[src];
    }
    kv->n_committed += n;
    kv->n_pending = 0;
    return SD_OK;
}

void kv_put(kv_cache *kv, int layer, int slot0, const float *k, const float *v, int T)
{
    size_t dh = (size_t)kv->dh;
    if (kv->be && kv->be->kv_put) {
        kv->be->kv_put(kv->be->ctx, kv_k(kv, layer), kv_v(kv, layer), k, v, slot0, T, kv->n_head,
                       kv->dh, kv_head_stride(kv));
        return;
    }
    if (kv->be) { /* per head: T rows of dh floats, strided in the source */
        for (int h = 0; h < kv->n_head; h++) {
            size_t o = (size_t)h * kv_head_stride(kv) + (size_t)slot0 * dh;
            kv->be->copy2d(kv->be->ctx, kv_k(kv, layer) + o, dh * 4, k + h * dh,
                           (size_t)kv->row * 4, dh * 4, (size_t)T);
            kv->be->copy2d(kv->be->ctx, kv_v(kv, layer) + o, dh * 4, v + h * dh,
                           (size_t)kv->row * 4, dh * 4, (size_t)T);
        }
        return;
    }
    for (int h = 0; h < kv->n_head; h++) {
        float *kd = kv_k(kv, layer) + (size_t)h * kv_head_stride(kv) + (size_t)slot0 * dh;
        float *vd = kv_v(kv, layer) + (size_t)h * kv_head_stride(kv) + (size_t)slot0 * dh;
        for (int t = 0; t < T; t++) {
            memcpy(kd + (size_t)t * dh, k + ((size_t)t * kv->n_head + h) * dh, sizeof(float) * dh);
            memcpy(vd + (size_t)t * dh, v + ((size_t)t * kv->n_head + h) * dh, sizeof(float) * dh);
        }
    }
}

sd_err kv_commit_all(kv_cache *kv)
{
    for (int i = 0; i < kv->n_pending; i++)
        if (kv->parent[i] != i - 1)
            return sd_fail(SD_EINVAL, "kv commit: pending node %d is not on one chain", i);
    kv->n_committed += kv->n_pending;
    kv->n_pending = 0;
    return SD_OK;
}
