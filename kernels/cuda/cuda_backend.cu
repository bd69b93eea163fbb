/* cuda_backend: the CUDA kern_backend (kernels.h) over the kernels of kcuda_ops.cu — device
 * memory, one stream, weights uploaded once at load (kern_mat.packed: the rows as stored, in
 * device memory), host-side staging of the small int arrays (positions, ancestor lists) and the
 * RoPE cos/sin table (computed on the host in double, as the canonical numerics ask).
 *
 * Dimension letters as in kernels.h. Every op is canon1 (docs/numerics.md), so the backend
 * advertises the CPU backend's numerics strings: its logits are bitwise the CPU's.
 *
 * Errors: the table's ops return nothing, so the first CUDA error is kept (sticky) and reported
 * by the next download / sync / argmax as SD_ECUDA; an op with arguments the kernels refuse
 * (a program bug: shapes are validated at model load) fills its output with NaN. */
#include "kcuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../../common/log.h"
#include "../kernels.h"
}

namespace
{

struct cuda_ctx {
    int device;
    unsigned flags;
    cudaStream_t st;
    cudaError_t err; /* first failure, sticky */
    char where[96];
    /* 8-bit activation record (device) */
    int8_t *aq;
    float *ad;
    size_t aq_cap, ad_cap;
    /* staging for the int arrays, one ring per kind (0: rope positions, 1: ancestor lists):
     * pinned host memory -> device, grown on demand. Every layer of a one-sequence forward
     * passes the same arrays, so an array equal to the last one staged is not copied again; a
     * multi-sequence forward alternates between its sequences' lists, each appended after the
     * last (the queued work still reads the earlier ones), so the stream is drained only when
     * the ring wraps. */
    struct {
        int *h, *d;
        size_t cap, n, last, used; /* last staged: [last, last + n); [0, used) may be in use */
    } stg[2];
    /* rope table for positions [0, rope_cap) of (rope_nrot, rope_base) */
    float *rope_tab;
    int rope_cap, rope_nrot;
    float rope_base;
    int *d_idx; /* argmax results */
    int idx_cap;
    char name[320];
    /* decode graphs: a few captured steps, by key; any scratch regrowth (gen) drops them, since
     * the graphs hold the old addresses */
    enum { NG = 4, KEYMAX = 128 };
    struct {
        unsigned char key[KEYMAX];
        size_t key_len;
        cudaGraphExec_t exec;
        unsigned long gen, used;
    } g[NG];
    unsigned long gen, tick;
    int capturing, cap_failed, cap_slot, step, max_keys;
    int *d_step, *h_step; /* the step of the moment: pinned host -> device before a replay */
};

void note(cuda_ctx *c, cudaError_t e, const char *where)
{
    if (e != cudaSuccess && c->err == cudaSuccess) {
        c->err = e;
        snprintf(c->where, sizeof c->where, "%s", where);
    }
}

sd_err report(cuda_ctx *c)
{
    if (c->err == cudaSuccess)
        return SD_OK;
    return sd_fail(SD_ECUDA, "cuda backend: %s failed: %s (%s)", c->where,
                   cudaGetErrorString(c->err), cudaGetErrorName(c->err));
}

/* Every entry point makes the backend's device the calling thread's current one: the current
 * device is per thread, and a daemon calls one backend from several (a worker allocates session
 * caches on its gRPC thread and runs forwards on its compute thread). Cached per thread, so
 * this is a compare in the common case. */
thread_local int tl_device = -1; /* this thread's current device as last set here */

cuda_ctx *on_dev(void *vctx)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(vctx);
    if (tl_device != c->device) {
        note(c, cudaSetDevice(c->device), "cudaSetDevice");
        tl_device = c->device;
    }
    return c;
}

void nan_fill(cuda_ctx *c, float *out, size_t n, const char *where)
{
    note(c, cudaMemsetAsync(out, 0xff, n * sizeof(float), c->st), where);
}

/* grow a device buffer (the stream is drained first: queued work may still read the old one) */
template <class T> int grow_dev(cuda_ctx *c, T **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    if (c->capturing) { /* no allocation inside a capture: the step runs uncaptured instead */
        c->cap_failed = 1;
        return -1;
    }
    c->gen++;
    size_t n = need + need / 2 + 1024;
    cudaStreamSynchronize(c->st);
    cudaFree(*p);
    *p = nullptr;
    *cap = 0;
    cudaError_t e = cudaMalloc((void **)p, n * sizeof(T));
    if (e != cudaSuccess) {
        note(c, e, "cudaMalloc (scratch)");
        *p = nullptr;
        return -1;
    }
    *cap = n;
    return 0;
}

int ensure_act(cuda_ctx *c, size_t n)
{
    return grow_dev(c, &c->aq, &c->aq_cap, n) || grow_dev(c, &c->ad, &c->ad_cap, n / 32 + 1) ? -1
                                                                                             : 0;
}

/* The concatenation of k host int arrays in device memory (staging slot `kind`); dev_parts[i]
 * points at array i there. NULL (error noted) when out of memory. */
int *stage_ints(cuda_ctx *c, int kind, const int *const *srcs, const size_t *ns, int k,
                int **dev_parts)
{
    auto &s = c->stg[kind];
    size_t total = 0;
    for (int i = 0; i < k; i++)
        total += ns[i];
    int same = total == s.n && s.h;
    for (size_t i = 0, o = s.last; same && i < (size_t)k; o += ns[i], i++)
        same = memcmp(s.h + o, srcs[i], ns[i] * sizeof(int)) == 0;
    if (!same) {
        if (s.used + total > s.cap) {
            /* the ring wraps: copies out of it and kernels reading it must have finished */
            cudaStreamSynchronize(c->st);
            s.used = 0;
        }
        if (total > s.cap) {
            size_t n = 4 * total + 65536;
            cudaFreeHost(s.h);
            cudaFree(s.d);
            s.h = nullptr;
            s.d = nullptr;
            s.cap = s.n = s.last = s.used = 0;
            cudaError_t e = cudaMallocHost((void **)&s.h, n * sizeof(int));
            if (e == cudaSuccess)
                e = cudaMalloc((void **)&s.d, n * sizeof(int));
            if (e != cudaSuccess) {
                note(c, e, "cudaMalloc (staging)");
                return nullptr;
            }
            s.cap = n;
        }
        for (size_t i = 0, o = s.used; i < (size_t)k; o += ns[i], i++)
            memcpy(s.h + o, srcs[i], ns[i] * sizeof(int));
        s.last = s.used;
        s.n = total;
        s.used += total;
        note(c,
             cudaMemcpyAsync(s.d + s.last, s.h + s.last, total * sizeof(int),
                             cudaMemcpyHostToDevice, c->st),
             "staging copy");
    }
    for (size_t i = 0, o = s.last; i < (size_t)k; o += ns[i], i++)
        dev_parts[i] = s.d + o;
    return s.d + s.last;
}

const uint8_t *mat_bytes(const kern_mat *w)
{
    return static_cast<const uint8_t *>(w->packed ? w->packed : w->data);
}

int use_q8(const cuda_ctx *c, sd_dtype wt)
{
    return !(c->flags & KERN_CPU_F32_ACT) && kcuda_q8_type(wt);
}

/* ---- ops ---- */

void cu_matmul_multi(void *vctx, int n, float *const *outs, const float *x,
                     const kern_mat *const *ws, const int *Ns, int T, int K)
{
    cuda_ctx *c = on_dev(vctx);
    if (T <= 0)
        return;
    int any_q8 = 0;
    for (int i = 0; i < n; i++)
        any_q8 |= use_q8(c, ws[i]->type);
    if (any_q8) { /* one activation record for every quantized matrix */
        if (K <= 0 || K % 32 || ensure_act(c, (size_t)T * K) != 0) {
            for (int i = 0; i < n; i++)
                nan_fill(c, outs[i], (size_t)T * Ns[i], "matmul");
            return;
        }
        note(c, kcuda_quant_q8(c->aq, c->ad, x, T, K, c->st), "activation quantization");
    }
    for (int i = 0; i < n; i++) {
        sd_dtype wt = ws[i]->type;
        cudaError_t e = use_q8(c, wt) ? kcuda_matmul_q8(outs[i], Ns[i], c->aq, c->ad,
                                                        mat_bytes(ws[i]), wt, T, Ns[i], K, c->st)
                                      : kcuda_matmul_f32(outs[i], Ns[i], x, mat_bytes(ws[i]), wt, T,
                                                         Ns[i], K, c->st);
        if (e == cudaErrorInvalidValue)
            nan_fill(c, outs[i], (size_t)T * Ns[i], "matmul");
        else
            note(c, e, "matmul");
    }
}

void cu_matmul(void *vctx, float *out, const float *x, const kern_mat *w, int T, int N, int K)
{
    float *const outs[1] = {out};
    const kern_mat *const ws[1] = {w};
    const int Ns[1] = {N};
    cu_matmul_multi(vctx, 1, outs, x, ws, Ns, T, K);
}

size_t cu_pack_bytes(void *vctx, sd_dtype wt, int N, int K)
{
    (void)vctx;
    size_t be = dtype_block_elems(wt);
    if (!be || N <= 0 || K <= 0 || K % (int)be)
        return 0;
    return dtype_row_bytes(wt, (size_t)K) * (size_t)N;
}

/* The "packed" copy is the rows as stored, uploaded: dst is device memory from buf_alloc. */
void cu_pack(void *vctx, void *dst, const void *w, sd_dtype wt, int N, int K)
{
    cuda_ctx *c = on_dev(vctx);
    size_t n = cu_pack_bytes(vctx, wt, N, K);
    if (n)
        note(c, cudaMemcpyAsync(dst, w, n, cudaMemcpyHostToDevice, c->st), "weight upload");
}

void cu_rmsnorm(void *vctx, float *out, const float *x, const float *w, int T, int D, float eps)
{
    cuda_ctx *c = on_dev(vctx);
    if (T > 0)
        note(c, kcuda_rmsnorm(out, x, w, T, D, eps, c->st), "rmsnorm");
}

void cu_rope(void *vctx, float *x, const int *pos, int T, int H, int Dh, int n_rot, float freq_base,
             int neox)
{
    cuda_ctx *c = on_dev(vctx);
    if (T <= 0)
        return;
    int nr = (n_rot > Dh ? Dh : n_rot) & ~1, maxp = 0;
    for (int t = 0; t < T; t++)
        maxp = pos[t] > maxp ? pos[t] : maxp;
    if (nr <= 0)
        return;
    if (c->capturing) { /* the replayed position is the device-side step */
        if (T != 1 || pos[0] != c->step || c->max_keys > c->rope_cap || nr != c->rope_nrot ||
            freq_base != c->rope_base) {
            c->cap_failed = 1;
            return;
        }
        note(c, kcuda_rope_step(x, c->d_step, c->rope_tab, H, Dh, nr, neox, c->st), "rope");
        return;
    }
    if (c->max_keys > maxp)
        maxp = c->max_keys; /* room for the positions a decode graph will replay */
    if (maxp >= c->rope_cap || nr != c->rope_nrot || freq_base != c->rope_base) {
        c->gen++;
        /* a table for positions [0, cap): the angles depend on (pos, i) alone */
        int cap = maxp + 1 > 2 * c->rope_cap ? maxp + 1 : 2 * c->rope_cap;
        cap = cap < 4096 ? 4096 : cap;
        size_t n = (size_t)cap * nr;
        float *h = static_cast<float *>(malloc(n * sizeof(float)));
        if (!h) {
            note(c, cudaErrorMemoryAllocation, "rope table");
            return;
        }
        kcuda_rope_table(h, 0, cap, nr, freq_base);
        cudaStreamSynchronize(c->st);
        cudaFree(c->rope_tab);
        c->rope_tab = nullptr;
        c->rope_cap = 0;
        cudaError_t e = cudaMalloc((void **)&c->rope_tab, n * sizeof(float));
        /* on the backend's stream (a non-blocking one: a plain cudaMemcpy would not be ordered
         * with its kernels), and finished before h goes */
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(c->rope_tab, h, n * sizeof(float), cudaMemcpyHostToDevice, c->st);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(c->st);
        free(h);
        if (e != cudaSuccess) {
            note(c, e, "rope table");
            return;
        }
        c->rope_cap = cap;
        c->rope_nrot = nr;
        c->rope_base = freq_base;
    }
    const int *srcs[1] = {pos};
    size_t ns[1] = {(size_t)T};
    int *dpos[1];
    if (!stage_ints(c, 0, srcs, ns, 1, dpos))
        return;
    note(c, kcuda_rope(x, dpos[0], c->rope_tab, T, H, Dh, nr, neox, c->st), "rope");
}

void cu_attention(void *vctx, float *out, const float *q, const float *kc, const float *vc,
                  size_t ld_slot, size_t ld_head, int n_prefix, const int *anc, const int *anc_off,
                  int T, int H, int Hkv, int Dh, float scale)
{
    cuda_ctx *c = on_dev(vctx);
    if (T <= 0)
        return;
    if (c->capturing) { /* one node at slot step over the keys 0..step, read at replay */
        if (T != 1 || n_prefix != c->step || anc_off[0] != 0 || anc_off[1] != 1 ||
            anc[0] != c->step) {
            c->cap_failed = 1;
            return;
        }
        note(c,
             kcuda_attention_step(out, q, kc, vc, ld_slot, ld_head, c->d_step, H, Hkv, Dh, scale,
                                  c->max_keys, c->st),
             "attention");
        return;
    }
    int maxk = 0;
    for (int t = 0; t < T; t++) {
        int n = n_prefix + anc_off[t + 1] - anc_off[t];
        maxk = n > maxk ? n : maxk;
    }
    size_t na = (size_t)anc_off[T];
    const int *srcs[2] = {anc, anc_off};
    size_t ns[2] = {na, (size_t)T + 1};
    int *d[2];
    if (!stage_ints(c, 1, srcs, ns, 2, d))
        return;
    cudaError_t e = kcuda_attention(out, q, kc, vc, ld_slot, ld_head, n_prefix, d[0], d[1], T, H,
                                    Hkv, Dh, scale, maxk, c->st);
    if (e == cudaErrorInvalidValue)
        nan_fill(c, out, (size_t)T * H * Dh, "attention");
    else
        note(c, e, "attention");
}

void cu_silu_mul(void *vctx, float *gate, const float *up, int n)
{
    cuda_ctx *c = on_dev(vctx);
    note(c, kcuda_silu_mul(gate, up, n, c->st), "silu_mul");
}

void cu_add(void *vctx, float *x, const float *y, int n)
{
    cuda_ctx *c = on_dev(vctx);
    note(c, kcuda_add(x, y, n, c->st), "add");
}

void cu_add_bias(void *vctx, float *out, const float *bias, int T, int N)
{
    cuda_ctx *c = on_dev(vctx);
    if (T > 0)
        note(c, kcuda_add_bias(out, bias, T, N, c->st), "add_bias");
}

/* ---- memory ---- */

void *cu_buf_alloc(void *vctx, size_t bytes)
{
    on_dev(vctx);
    void *p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* an allocation failure is reported by the NULL, not kept */
        LOG_WARN("cuda", "cudaMalloc(%zu): %s", bytes, cudaGetErrorString(e));
        return nullptr;
    }
    return p;
}

void cu_buf_free(void *vctx, void *p)
{
    on_dev(vctx);
    if (p)
        cudaFree(p);
}

void cu_upload(void *vctx, void *dst, const void *src, size_t bytes)
{
    cuda_ctx *c = on_dev(vctx);
    if (bytes)
        note(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->st), "upload");
}

void cu_copy(void *vctx, void *dst, const void *src, size_t bytes)
{
    cuda_ctx *c = on_dev(vctx);
    if (!bytes || dst == src)
        return;
    const char *d = static_cast<const char *>(dst), *s = static_cast<const char *>(src);
    if (d < s + bytes && s < d + bytes) { /* overlapping: forward chunks below the gap */
        size_t gap = d > s ? (size_t)(d - s) : (size_t)(s - d);
        if (d < s) {
            for (size_t o = 0; o < bytes; o += gap) {
                size_t n = bytes - o < gap ? bytes - o : gap;
                note(c, cudaMemcpyAsync((char *)dst + o, s + o, n, cudaMemcpyDeviceToDevice, c->st),
                     "copy");
            }
        } else {
            for (size_t end = bytes; end > 0;) {
                size_t n = end < gap ? end : gap;
                end -= n;
                note(
                    c,
                    cudaMemcpyAsync((char *)dst + end, s + end, n, cudaMemcpyDeviceToDevice, c->st),
                    "copy");
            }
        }
        return;
    }
    note(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->st), "copy");
}

void cu_copy2d(void *vctx, void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
               size_t rows)
{
    cuda_ctx *c = on_dev(vctx);
    if (width && rows)
        note(c,
             cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, rows, cudaMemcpyDeviceToDevice,
                               c->st),
             "copy2d");
}

sd_err cu_sync(void *vctx)
{
    cuda_ctx *c = on_dev(vctx);
    note(c, cudaStreamSynchronize(c->st), "stream");
    return report(c);
}

sd_err cu_download(void *vctx, void *dst, const void *src, size_t bytes)
{
    cuda_ctx *c = on_dev(vctx);
    if (bytes)
        note(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->st), "download");
    return cu_sync(vctx);
}

sd_err cu_argmax(void *vctx, int *idx, const float *logits, int rows, int V, size_t ld)
{
    cuda_ctx *c = on_dev(vctx);
    if (rows <= 0)
        return SD_OK;
    if (rows > c->idx_cap) {
        cudaStreamSynchronize(c->st);
        cudaFree(c->d_idx);
        c->d_idx = nullptr;
        c->idx_cap = 0;
        cudaError_t e = cudaMalloc((void **)&c->d_idx, sizeof(int) * (size_t)rows);
        if (e != cudaSuccess) {
            note(c, e, "argmax");
            return report(c);
        }
        c->idx_cap = rows;
    }
    note(c, kcuda_argmax(c->d_idx, logits, rows, V, ld, c->st), "argmax");
    return cu_download(vctx, idx, c->d_idx, sizeof(int) * (size_t)rows);
}

void cu_kv_put(void *vctx, float *kl, float *vl, const float *k, const float *v, int slot0, int T,
               int Hkv, int Dh, size_t head_stride)
{
    cuda_ctx *c = on_dev(vctx);
    if (c->capturing && (T != 1 || slot0 != c->step)) {
        c->cap_failed = 1;
        return;
    }
    note(c,
         kcuda_kv_put(kl, vl, k, v, slot0, c->capturing ? c->d_step : nullptr, T, Hkv, Dh,
                      head_stride, c->st),
         "kv_put");
}

int cu_graph_begin(void *vctx, const void *key, size_t key_len, int step, int max_keys)
{
    cuda_ctx *c = on_dev(vctx);
    if (c->capturing || c->err != cudaSuccess || key_len > cuda_ctx::KEYMAX || step < 0 ||
        step >= max_keys || max_keys > kcuda_attention_max_keys())
        return -1;
    if (!c->d_step) {
        if (cudaMalloc((void **)&c->d_step, sizeof(int)) != cudaSuccess ||
            cudaMallocHost((void **)&c->h_step, sizeof(int)) != cudaSuccess) {
            cudaGetLastError();
            cudaFree(c->d_step);
            c->d_step = nullptr;
            return -1;
        }
    }
    /* the previous step ended with a download: nothing reads h_step any more */
    *c->h_step = step;
    note(c, cudaMemcpyAsync(c->d_step, c->h_step, sizeof(int), cudaMemcpyHostToDevice, c->st),
         "graph step");
    c->step = step;
    c->tick++;
    int free_slot = 0;
    for (int i = 0; i < cuda_ctx::NG; i++) {
        if (c->g[i].exec && c->g[i].gen == c->gen && c->g[i].key_len == key_len &&
            !memcmp(c->g[i].key, key, key_len) && c->max_keys == max_keys) {
            c->cap_slot = i;
            c->g[i].used = c->tick;
            return 1;
        }
        if (c->g[i].used < c->g[free_slot].used)
            free_slot = i;
    }
    if (c->max_keys != max_keys || c->rope_cap < max_keys) {
        /* the first step at this capacity runs uncaptured: it grows the rope table and the
         * scratch to what the replays need */
        c->max_keys = max_keys;
        return -1;
    }
    auto &g = c->g[free_slot];
    if (g.exec) {
        cudaGraphExecDestroy(g.exec);
        g.exec = nullptr;
    }
    memcpy(g.key, key, key_len);
    g.key_len = key_len;
    g.used = c->tick;
    c->cap_slot = free_slot;
    c->cap_failed = 0;
    if (cudaStreamBeginCapture(c->st, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    c->capturing = 1;
    return 0;
}

sd_err cu_graph_end(void *vctx)
{
    cuda_ctx *c = on_dev(vctx);
    auto &g = c->g[c->cap_slot];
    if (c->capturing) {
        c->capturing = 0;
        cudaGraph_t graph = nullptr;
        cudaError_t e = cudaStreamEndCapture(c->st, &graph);
        if (e == cudaSuccess && !c->cap_failed && c->err == cudaSuccess)
            e = cudaGraphInstantiate(&g.exec, graph, 0);
        if (graph)
            cudaGraphDestroy(graph);
        if (e != cudaSuccess || c->cap_failed || c->err != cudaSuccess) {
            cudaGetLastError();
            if (g.exec)
                cudaGraphExecDestroy(g.exec);
            g.exec = nullptr;
            g.key_len = 0;
            if (c->err != cudaSuccess)
                return report(c);
            return SD_EAGAIN; /* nothing ran: the caller runs the step's ops */
        }
        g.gen = c->gen;
    }
    if (!g.exec)
        return SD_EAGAIN;
    note(c, cudaGraphLaunch(g.exec, c->st), "graph launch");
    return report(c);
}

void cu_free(kern_backend *b)
{
    if (!b)
        return;
    cuda_ctx *c = static_cast<cuda_ctx *>(b->ctx);
    if (c) {
        on_dev(c);
        if (c->st)
            cudaStreamSynchronize(c->st);
        cudaFree(c->aq);
        cudaFree(c->ad);
        for (int k = 0; k < 2; k++) {
            cudaFree(c->stg[k].d);
            cudaFreeHost(c->stg[k].h);
        }
        cudaFree(c->rope_tab);
        cudaFree(c->d_idx);
        for (int i = 0; i < cuda_ctx::NG; i++)
            if (c->g[i].exec)
                cudaGraphExecDestroy(c->g[i].exec);
        cudaFree(c->d_step);
        cudaFreeHost(c->h_step);
        if (c->st)
            cudaStreamDestroy(c->st);
        free(c);
    }
    free(b);
}

} // namespace

extern "C" sd_err kern_cuda_create(kern_backend **out, int device, unsigned flags)
{
    *out = nullptr;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || (e == cudaSuccess && !n)) {
        cudaGetLastError();
        return sd_fail(SD_EUNSUPPORTED, "no CUDA GPU: %s",
                       e == cudaErrorInsufficientDriver ? "no driver (cudaErrorInsufficientDriver)"
                                                        : "no device (cudaErrorNoDevice)");
    }
    if (e != cudaSuccess)
        return sd_fail(SD_ECUDA, "cudaGetDeviceCount: %s", cudaGetErrorString(e));
    if (device < 0 || device >= n)
        return sd_fail(SD_EINVAL, "CUDA device %d: this machine has %d (0..%d)", device, n, n - 1);
    if ((e = cudaSetDevice(device)) != cudaSuccess)
        return sd_fail(SD_ECUDA, "cudaSetDevice(%d): %s", device, cudaGetErrorString(e));
    tl_device = device;
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess)
        return sd_fail(SD_ECUDA, "cudaGetDeviceProperties(%d): %s", device, cudaGetErrorString(e));
    kern_backend *b = static_cast<kern_backend *>(calloc(1, sizeof *b));
    cuda_ctx *c = static_cast<cuda_ctx *>(calloc(1, sizeof *c));
    if (!b || !c) {
        free(b);
        free(c);
        return sd_fail(SD_ENOMEM, "kern_cuda_create: out of memory");
    }
    b->ctx = c;
    b->free = cu_free;
    c->device = device;
    c->flags = flags;
    if ((e = cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking)) != cudaSuccess) {
        cu_free(b);
        return sd_fail(SD_ECUDA, "cudaStreamCreate: %s", cudaGetErrorString(e));
    }
    snprintf(c->name, sizeof c->name, "cuda:%d %s sm_%d%d", device, prop.name, prop.major,
             prop.minor);
    b->name = c->name;
    b->numerics = (flags & KERN_CPU_F32_ACT) ? "cpu-canon1-f32" : "cpu-canon1-act8";
    b->matmul = cu_matmul;
    b->matmul_multi = cu_matmul_multi;
    b->pack_bytes = cu_pack_bytes;
    b->pack = cu_pack;
    b->rmsnorm = cu_rmsnorm;
    b->rope = cu_rope;
    b->attention = cu_attention;
    b->silu_mul = cu_silu_mul;
    b->add = cu_add;
    b->add_bias = cu_add_bias;
    b->buf_alloc = cu_buf_alloc;
    b->buf_free = cu_buf_free;
    b->upload = cu_upload;
    b->download = cu_download;
    b->copy = cu_copy;
    b->copy2d = cu_copy2d;
    b->kv_put = cu_kv_put;
    if (!getenv("SPECD_CUDA_NO_GRAPHS")) { /* graphs off: for comparisons */
        b->graph_begin = cu_graph_begin;
        b->graph_end = cu_graph_end;
    }
    b->device = 1;
    b->sync = cu_sync;
    b->argmax = cu_argmax;
    *out = b;
    return SD_OK;
}
