/* kcuda: the CUDA kernels' launch wrappers (kernels/cuda/kcuda_ops.cu). Every pointer is device
 * memory (host memory in the simulator build); every call only enqueues work on `st` and
 * returns the launch status. Included from .cu files only (C++).
 *
 * Dimension letters as in kernels/kernels.h: T positions, N output rows, K reduction length,
 * D model width, H / Hkv query / key-value heads, Dh head width, V vocabulary.
 *
 * Numerics: every output element is computed with the canonical sequence of docs/numerics.md
 * (canon1) — the CPU backend's on every level — by one thread, or by lanes that each replay one
 * LANE16 accumulator and combine with the R16 pairings, so results are bitwise the CPU's and
 * never depend on T, the grid or the position of a row in a batch. */
#ifndef SD_KCUDA_H
#define SD_KCUDA_H

#include <stddef.h>
#include <stdint.h>

#include "kcuda_rt.h"

extern "C" {
#include "../dtype.h"
}

/* The 8-bit activation record of T rows of K floats (K % 32 == 0): q[T][K] int8 and d[T][K/32]
 * float, quantized exactly as kcpu_q8_quantize_row does (d = max|x|/127, q = rne(x * (1/d))). */
cudaError_t kcuda_quant_q8(int8_t *q, float *d, const float *x, int T, int K, cudaStream_t st);

/* out[t * ldo + n] = x[t] . W[n] for t < T, n < N, 8-bit activations (q, d from kcuda_quant_q8)
 * against the quantized weight rows as stored (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K). */
cudaError_t kcuda_matmul_q8(float *out, int ldo, const int8_t *q, const float *d, const void *w,
                            sd_dtype wt, int T, int N, int K, cudaStream_t st);

/* The same with f32 activations against the dequantized weight values (every type: F32, F16,
 * BF16 and the quantized ones, dequantized as dtype_dequant_row does). */
cudaError_t kcuda_matmul_f32(float *out, int ldo, const float *x, const void *w, sd_dtype wt, int T,
                             int N, int K, cudaStream_t st);

/* 1 if kcuda_matmul_q8 takes this type (the others use kcuda_matmul_f32 in both modes). */
int kcuda_q8_type(sd_dtype wt);

cudaError_t kcuda_rmsnorm(float *out, const float *x, const float *w, int T, int D, float eps,
                          cudaStream_t st);

/* In place on x[T][H][Dh]; tab holds, per position p, cos[half] then sin[half] of the angles
 * p * base^(-2i/n_rot) (half = n_rot/2, computed on the host in double like the CPU backend:
 * kcuda_rope_table), for every p in pos[T]. */
cudaError_t kcuda_rope(float *x, const int *pos, const float *tab, int T, int H, int Dh, int n_rot,
                       int neox, cudaStream_t st);
/* Host side: the table rows for positions [p0, p1) into tab (2 * (n_rot/2) floats a row). */
void kcuda_rope_table(float *tab, int p0, int p1, int n_rot, float base);

/* Tree attention as kern_backend.attention (kernels.h); anc and anc_off are device arrays;
 * max_keys >= n_prefix + the longest ancestor list (it sizes the shared memory). */
cudaError_t kcuda_attention(float *out, const float *q, const float *kc, const float *vc,
                            size_t ld_slot, size_t ld_head, int n_prefix, const int *anc,
                            const int *anc_off, int T, int H, int Hkv, int Dh, float scale,
                            int max_keys, cudaStream_t st);
/* Largest max_keys kcuda_attention takes (its scores live in shared memory). */
int kcuda_attention_max_keys(void);

/* Decode-graph forms: the position / prefix length is *step, read when the kernel runs (a
 * captured graph replays with the step of the moment). rope: one position (T = 1) at *step;
 * attention: one node at slot *step over the keys 0..*step (max_keys >= *step + 1 sizes the
 * shared memory); kv_put: rows to slots *step.. (step NULL: slot0). */
cudaError_t kcuda_rope_step(float *x, const int *step, const float *tab, int H, int Dh, int n_rot,
                            int neox, cudaStream_t st);
cudaError_t kcuda_attention_step(float *out, const float *q, const float *kc, const float *vc,
                                 size_t ld_slot, size_t ld_head, const int *step, int H, int Hkv,
                                 int Dh, float scale, int max_keys, cudaStream_t st);
cudaError_t kcuda_kv_put(float *kl, float *vl, const float *k, const float *v, int slot0,
                         const int *step, int T, int Hkv, int Dh, size_t head_stride,
                         cudaStream_t st);

cudaError_t kcuda_silu_mul(float *gate, const float *up, int n, cudaStream_t st);
cudaError_t kcuda_add(float *x, const float *y, int n, cudaStream_t st);
cudaError_t kcuda_add_bias(float *out, const float *bias, int T, int N, cudaStream_t st);

/* idx[r] = the index of the largest non-NaN logits[r * ld + i], i < V, the lowest index on
 * ties (0 when all are NaN): sample_argmax's rule. */
cudaError_t kcuda_argmax(int *idx, const float *logits, int rows, int V, size_t ld,
                         cudaStream_t st);

/* EXP of docs/numerics.md (for tests): y[i] = EXP(x[i]). */
cudaError_t kcuda_exp(float *y, const float *x, int n, cudaStream_t st);

#endif
