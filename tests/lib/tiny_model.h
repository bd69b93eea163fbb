/* tiny_model: writes small random llama-family GGUF models for tests (milliseconds to run). */
#ifndef SD_TINY_MODEL_H
#define SD_TINY_MODEL_H

#include <stdint.h>

#include "kernels/dtype.h"

typedef struct {
    const char *arch; /* "llama" (default) or "qwen2" (QKV bias, neox rope) */
    int n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    sd_dtype wtype; /* type of the layer matrices */
    sd_dtype etype; /* type of token_embd (and output) */
    int untied;     /* write a separate output.weight */
    float rope_base;
    uint64_t seed;
} tiny_model_opts;

/* Defaults: llama, 2 layers, D=64, 4/2 heads, F=96, V=97, ctx 256, Q8_0/Q8_0, tied. */
tiny_model_opts tiny_model_defaults(void);
/* Random bytes that form n elements of type t, with block scales set so that values stay
 * within about +-amp. */
void tiny_random_row(void *out, sd_dtype t, int n, float amp, uint64_t *rng);
/* Write the model to `path`; 0 on success. */
int tiny_model_write(const char *path, const tiny_model_opts *o);

/* One kind of tiny model the engine tests sweep: architecture, layer and embedding types, width
 * D, feed-forward size F, untied output. */
typedef struct {
    const char *name, *arch;
    sd_dtype wtype, etype;
    int D, F, untied;
} tiny_variant;

/* Every weight type once, llama and qwen2: q8_0 q4_0 q4_1 f32 f16 bf16 q4_k q6_k. */
extern const tiny_variant tiny_variants[];
extern const int tiny_n_variants;
/* tiny_model_defaults() with v's architecture, types and sizes (2 layers, seed 1). */
tiny_model_opts tiny_variant_opts(const tiny_variant *v);

#endif
