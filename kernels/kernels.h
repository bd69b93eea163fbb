/* kernels: the compute backend interface. A backend is one table of functions plus a context
 * pointer (ggml-style); the CPU backend (kernels/cpu) is the reference, CUDA comes later.
 *
 * Dimension letters:
 *   T   positions in the batch            D   model width
 *   N   output rows of a matmul           K   reduction length (input width)
 *   H   query heads   Hkv  key/value heads   Dh  head width
 *   S   KV-cache slots (row stride of the caches is Hkv*Dh floats)
 *
 * Batch invariance (DESIGN.md §2): every output element is computed with a reduction order
 * fixed by the element alone — never by T, the thread count or which thread runs it — so a
 * position's result is bitwise the same whether it is computed alone or inside a batch.
 *
 * Canonical numerics (docs/numerics.md): that order, per op, is written down as an exact f32
 * operation sequence, and every CPU dispatch level computes it bit for bit; `numerics` names
 * it, so two backends with equal fingerprints give the same logits. */
#ifndef SD_KERNELS_H
#define SD_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/sd_err.h"
#include "dtype.h"

typedef struct kern_backend kern_backend;

/* A weight matrix W[N][K] as the backend reads it: the rows as stored in the model file (type,
 * row stride dtype_row_bytes(type, K)) and, optionally, the backend's own copy of them in a
 * layout its kernels read faster (made by pack(); NULL = read data). A packed copy belongs to
 * the backend that made it; every result is bitwise the one the file layout gives. */
typedef struct {
    const void *data;
    sd_dtype type;
    const void *packed;
} kern_mat;

struct kern_backend {
    const char *name;     /* "cpu-avx512vnni", "cpu-avx2", "cpu-portable", ... */
    const char *numerics; /* numerics fingerprint, e.g. "cpu-canon1-act8" */
    void *ctx;

    /* out[T][N] = x[T][K] · W[N][K]^T. */
    void (*matmul)(void *ctx, float *out, const float *x, const kern_mat *w, int T, int N, int K);

    /* n matmuls on the same input (n <= 8): outs[i][T][Ns[i]] = x[T][K] · W_i[Ns[i]][K]^T.
     * Each output element is bitwise the one matmul computes; the backend may share the
     * activation preparation and spread all rows over its threads at once. */
    void (*matmul_multi)(void *ctx, int n, float *const *outs, const float *x,
                         const kern_mat *const *ws, const int *Ns, int T, int K);

    /* Weight repacking, done once at model load (both NULL when the backend has no layout of
     * its own). pack_bytes: size of the packed copy of W[N][K] of type wt, 0 when the backend
     * reads that type as stored. pack: writes it to dst (64-byte aligned, pack_bytes long);
     * the caller keeps dst alive while any kern_mat.packed points at it. */
    size_t (*pack_bytes)(void *ctx, sd_dtype wt, int N, int K);
    void (*pack)(void *ctx, void *dst, const void *w, sd_dtype wt, int N, int K);

    /* out[T][D] = x / sqrt(mean(x^2) + eps) * w[D]. out may alias x. */
    void (*rmsnorm)(void *ctx, float *out, const float *x, const float *w, int T, int D, float eps);

    /* Rotary embedding in place on x[T][H][Dh] at positions pos[T]; the first n_rot dims of each
     * head rotate. neox = 0: pairs (2i, 2i+1); neox = 1: pairs (i, i + n_rot/2). */
    void (*rope)(void *ctx, float *x, const int *pos, int T, int H, int Dh, int n_rot,
                 float freq_base, int neox);

    /* Causal/tree attention. For position t, the keys are cache slots 0..n_prefix-1 followed by
     * the slots anc[anc_off[t] .. anc_off[t+1]-1] (its in-batch ancestors in root-to-node order,
     * then itself), in exactly that order — the order a token-by-token decode would see.
     * q[T][H][Dh], out[T][H][Dh]; element d of slot s of KV head g at kc/vc[s * ld_slot +
     * g * ld_head + d] (slot-major: ld_slot = Hkv * Dh, ld_head = Dh; the engine's cache is
     * head-major: ld_slot = Dh, ld_head = capacity * Dh). Head h reads KV head h / (H/Hkv).
     * scale multiplies q·k (normally 1/sqrt(Dh)). */
    void (*attention)(void *ctx, float *out, const float *q, const float *kc, const float *vc,
                      size_t ld_slot, size_t ld_head, int n_prefix, const int *anc,
                      const int *anc_off, int T, int H, int Hkv, int Dh, float scale);

    /* gate[T*F] = silu(gate) * up, in place on gate. */
    void (*silu_mul)(void *ctx, float *gate, const float *up, int n);

    /* x[n] += y[n]. */
    void (*add)(void *ctx, float *x, const float *y, int n);

    /* out[T][N] += bias[N] (Qwen2 QKV bias). */
    void (*add_bias)(void *ctx, float *out, const float *bias, int T, int N);

    /* ---- backend memory ----
     * Every float pointer the ops above take (activations, the KV cache, norm weights, biases,
     * packed weights) is backend memory: plain host memory on the CPU backend, device memory on
     * CUDA. The small int arrays (rope's pos, attention's anc / anc_off) and kern_mat.data are
     * host memory on every backend (a device backend stages them itself). Work is queued in
     * order on the backend's one stream: upload and copy are ordered with the ops, download and
     * sync wait for everything queued before them. A failure inside queued work is reported by
     * the next download or sync (SD_ECUDA with the device's message). */
    int device; /* 1: backend memory is not host memory (CUDA); 0: it is (the CPU) */
    void *(*buf_alloc)(void *ctx, size_t bytes); /* 256-byte aligned; NULL when out of memory */
    void (*buf_free)(void *ctx, void *p);        /* NULL is a no-op */
    void (*upload)(void *ctx, void *dst, const void *src, size_t bytes);     /* host -> backend */
    sd_err (*download)(void *ctx, void *dst, const void *src, size_t bytes); /* backend -> host */
    void (*copy)(void *ctx, void *dst, const void *src, size_t bytes); /* may overlap (memmove) */
    /* rows blocks of width bytes, dst + r * dpitch <- src + r * spitch (no overlap) */
    void (*copy2d)(void *ctx, void *dst, size_t dpitch, const void *src, size_t spitch,
                   size_t width, size_t rows);
    sd_err (*sync)(void *ctx);
    /* Store T rows k/v[T][Hkv][Dh] (backend memory) at slots slot0.. of one layer of a
     * head-major cache (kl, vl: the layer's keys and values, head_stride floats between heads).
     * NULL: kv.c uses copy2d. */
    void (*kv_put)(void *ctx, float *kl, float *vl, const float *k, const float *v, int slot0,
                   int T, int Hkv, int Dh, size_t head_stride);
    /* Decode graphs (both NULL where unsupported): a plain decode step — one token at position
     * `step` after a committed prefix of `step` slots, no pending nodes, whose keys are slots
     * 0..step — recorded once per key (the caller's buffers: model, run, cache) and replayed.
     * graph_begin returns 1 when a graph for key exists (issue no ops; graph_end replays it),
     * 0 when the ops issued until graph_end are to be captured (graph_end then replays them),
     * -1 when graphs cannot be used now (run the ops as usual; no graph_end). graph_end:
     * SD_OK once the step ran; SD_EAGAIN when the capture failed and nothing ran (run the ops
     * as usual). max_keys: the cache's capacity (the largest step + 1 a replay may see). */
    int (*graph_begin)(void *ctx, const void *key, size_t key_len, int step, int max_keys);
    sd_err (*graph_end)(void *ctx);
    /* idx[r] = sample_argmax(logits + r * ld, V) for r < rows, computed where the logits are;
     * idx is host memory (the call waits). */
    sd_err (*argmax)(void *ctx, int *idx, const float *logits, int rows, int V, size_t ld);

    void (*free)(kern_backend *b);
};

/* CPU backend flags.
 *
 * Activation modes of matmul (both batch-invariant):
 *   default: each activation row is quantized once per call to int8 in blocks of 32 (scale
 *     max|x|/127, round to nearest even) and multiplied with the quantized weights in integer
 *     arithmetic (exact), scales applied in f32. Error vs the f32 product: at most
 *     sum_i |w_i| * d_block(i)/2 (d_block = max|x_block|/127, i.e. < 0.4% of the block's largest
 *     activation per element); for Gaussian-like rows the rounding errors cancel and the
 *     typical error is ~1e-3 of sum|x||w| (tests/test_kernels.c checks the bound exactly).
 *     F32/F16/BF16 weights always use f32 activations.
 *   KERN_CPU_F32_ACT: f32 activations against the dequantized weight values (the same floats
 *     as dtype_dequant_row); error ~1e-7 of sum|x||w| (f32 summation only). */
enum {
    KERN_CPU_F32_ACT = 1u << 1, /* f32 activations in matmul (exact path); default quantizes
                                   activations to 8-bit blocks for integer dot products */
};

/* Dispatch levels. Every level computes the canonical numerics of docs/numerics.md bit for bit
 * (the portable level is the oracle), so the level only changes speed; a cap exists for tests
 * and comparisons. Pass KERN_CPU_LEVEL(l) in kern_cpu_create's flags to dispatch no higher
 * than l; asking for a level the CPU lacks is an error (SD_EUNSUPPORTED). */
typedef enum {
    KERN_CPU_LEVEL_BEST = 0, /* the best the CPU offers (flags without a cap) */
    KERN_CPU_LEVEL_PORTABLE = 1,
    KERN_CPU_LEVEL_AVX2 = 2,   /* AVX2 + FMA + F16C */
    KERN_CPU_LEVEL_AVX512 = 3, /* AVX-512 F/BW/VL/DQ + VNNI */
} kern_cpu_level;
#define KERN_CPU_LEVEL(l) (((unsigned)(l)&0xfu) << 8)

/* "portable", "avx2", "avx512" (and "best"): SD_EINVAL naming the accepted words otherwise. */
sd_err kern_cpu_level_parse(const char *s, kern_cpu_level *out);
const char *kern_cpu_level_name(kern_cpu_level l);
/* 1 if this CPU can run level l (BEST and PORTABLE always). */
int kern_cpu_level_available(kern_cpu_level l);

/* n_threads <= 0: all online cores. */
sd_err kern_cpu_create(kern_backend **out, int n_threads, unsigned flags);

/* The CUDA backend (kernels/cuda, docs/cuda.md) on GPU `device`; flags: KERN_CPU_F32_ACT picks
 * the f32-activation numerics as on the CPU (both modes are canon1, bitwise the CPU backend's).
 * SD_EUNSUPPORTED when the build has no CUDA, or there is no GPU or no driver (message says
 * which); SD_ECUDA for other CUDA failures. */
sd_err kern_cuda_create(kern_backend **out, int device, unsigned flags);

/* The backend a user names (--backend, a config's backend key): "cpu" (or NULL) the CPU
 * backend; "cuda" the CUDA backend on GPU `device`, or — with no GPU, no driver or a build
 * without CUDA — one log line and the CPU backend; "cuda!" CUDA or SD_EUNSUPPORTED. n_threads
 * and the CPU flags serve the CPU backend; KERN_CPU_F32_ACT picks the mode on both. */
sd_err kern_backend_open(kern_backend **out, const char *spec, int device, int n_threads,
                         unsigned flags);

/* What the CPU offers, as detected at run time: "avx512vnni avx2 fma ..." */
const char *kern_cpu_features(void);

static inline void kern_free(kern_backend *b)
{
    if (b)
        b->free(b);
}

#endif
