#include "tiny_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_write.h"

tiny_model_opts tiny_model_defaults(void)
{
    return (tiny_model_opts){"llama",       2, 64,       4, 2, 96, 97, 256, SD_DTYPE_Q8_0,
                             SD_DTYPE_Q8_0, 0, 10000.0f, 1};
}

const tiny_variant tiny_variants[] = {
    {"q8_0", "llama", SD_DTYPE_Q8_0, SD_DTYPE_Q8_0, 64, 96, 0},
    {"q4_0", "llama", SD_DTYPE_Q4_0, SD_DTYPE_Q8_0, 64, 96, 0},
    {"q4_1", "llama", SD_DTYPE_Q4_1, SD_DTYPE_Q8_0, 64, 96, 1},
    {"f32", "llama", SD_DTYPE_F32, SD_DTYPE_F32, 64, 96, 0},
    {"f16", "qwen2", SD_DTYPE_F16, SD_DTYPE_F16, 64, 96, 0},
    {"bf16", "llama", SD_DTYPE_BF16, SD_DTYPE_BF16, 64, 96, 1},
    {"q4_k", "qwen2", SD_DTYPE_Q4_K, SD_DTYPE_Q8_0, 256, 512, 0},
    {"q6_k", "llama", SD_DTYPE_Q6_K, SD_DTYPE_Q6_K, 256, 512, 0},
};
const int tiny_n_variants = (int)(sizeof tiny_variants / sizeof tiny_variants[0]);

tiny_model_opts tiny_variant_opts(const tiny_variant *v)
{
    tiny_model_opts o = tiny_model_defaults();
    o.arch = v->arch;
    o.wtype = v->wtype;
    o.etype = v->etype;
    o.n_embd = v->D;
    o.n_ff = v->F;
    o.untied = v->untied;
    return o;
}

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float unif(uint64_t *s)
{
    return (float)(rnd(s) >> 40) / 16777216.0f;
}

static void put_f16(uint8_t *p, float f)
{
    uint16_t h = dtype_f32_to_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

void tiny_random_row(void *out, sd_dtype t, int n, float amp, uint64_t *rng)
{
    uint8_t *p = out;
    size_t nb = dtype_row_bytes(t, (size_t)n), bb = dtype_block_bytes(t);
    for (size_t i = 0; i < nb; i++)
        p[i] = (uint8_t)rnd(rng);
    /* scale fields: each block's d (and min) drawn in [0.5, 1] of the level that maps the
     * quantised range onto +-amp */
    for (size_t b = 0; b < nb / bb; b++) {
        uint8_t *blk = p + b * bb;
        float r = 0.5f + 0.5f * unif(rng);
        switch (t) {
        case SD_DTYPE_F32: {
            float f = amp * (2 * unif(rng) - 1);
            memcpy(blk, &f, 4);
            break;
        }
        case SD_DTYPE_F16:
            put_f16(blk, amp * (2 * unif(rng) - 1));
            break;
        case SD_DTYPE_BF16: {
            uint16_t h = dtype_f32_to_bf16(amp * (2 * unif(rng) - 1));
            blk[0] = (uint8_t)h;
            blk[1] = (uint8_t)(h >> 8);
            break;
        }
        case SD_DTYPE_Q8_0:
            put_f16(blk, r * amp / 127);
            break;
        case SD_DTYPE_Q4_0:
            put_f16(blk, r * amp / 8);
            break;
        case SD_DTYPE_Q4_1:
            put_f16(blk, r * 2 * amp / 15);
            put_f16(blk + 2, -r * amp);
            break;
        case SD_DTYPE_Q4_K:
            put_f16(blk, r * 2 * amp / (63 * 15));
            put_f16(blk + 2, r * amp / 63);
            break;
        case SD_DTYPE_Q6_K:
            put_f16(blk + 208, r * amp / (128 * 32));
            break;
        }
    }
}

static int add_mat(gw *w, const char *name, sd_dtype t, int k, int n, float amp, uint64_t *rng)
{
    size_t rb = dtype_row_bytes(t, (size_t)k);
    uint8_t *buf = malloc(rb * (size_t)n);
    if (!buf)
        return -1;
    for (int i = 0; i < n; i++)
        tiny_random_row(buf + rb * (size_t)i, t, k, amp, rng);
    int rc = gw_add_tensor(w, name, t, 2, (uint64_t[]){(uint64_t)k, (uint64_t)n}, buf);
    free(buf);
    return rc;
}

static int add_vec(gw *w, const char *name, int n, float center, float spread, uint64_t *rng)
{
    float *v = malloc(sizeof(float) * (size_t)n);
    if (!v)
        return -1;
    for (int i = 0; i < n; i++)
        v[i] = center + spread * (2 * unif(rng) - 1);
    int rc = gw_add_tensor(w, name, SD_DTYPE_F32, 1, (uint64_t[]){(uint64_t)n}, v);
    free(v);
    return rc;
}

int tiny_model_write(const char *path, const tiny_model_opts *o)
{
    gw *w = gw_init();
    if (!w)
        return -1;
    uint64_t rng = o->seed * 7919 + 17;
    char k[128];
    const char *a = o->arch;
    int rc = 0, Dh = o->n_embd / o->n_head, Q = o->n_embd, KV = o->n_head_kv * Dh;
#define KEY(s) (snprintf(k, sizeof k, "%s." s, a), k)
    rc |= gw_add_str(w, "general.architecture", a);
    rc |= gw_add_str(w, "general.name", "tiny-test-model");
    rc |= gw_add_u32(w, KEY("block_count"), (uint32_t)o->n_layer);
    rc |= gw_add_u32(w, KEY("context_length"), (uint32_t)o->n_ctx);
    rc |= gw_add_u32(w, KEY("embedding_length"), (uint32_t)o->n_embd);
    rc |= gw_add_u32(w, KEY("feed_forward_length"), (uint32_t)o->n_ff);
    rc |= gw_add_u32(w, KEY("attention.head_count"), (uint32_t)o->n_head);
    rc |= gw_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)o->n_head_kv);
    rc |= gw_add_f32(w, KEY("rope.freq_base"), o->rope_base);
    rc |= gw_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
#undef KEY
    rc |= add_mat(w, "token_embd.weight", o->etype, o->n_embd, o->n_vocab, 1.0f, &rng);
    rc |= add_vec(w, "output_norm.weight", o->n_embd, 1.0f, 0.2f, &rng);
    if (o->untied)
        rc |= add_mat(w, "output.weight", o->etype, o->n_embd, o->n_vocab, 0.5f, &rng);
    int qwen = strcmp(a, "qwen2") == 0;
    for (int l = 0; l < o->n_layer && !rc; l++) {
        char n[64];
        float ad = 2.0f / sqrtf((float)o->n_embd), af = 2.0f / sqrtf((float)o->n_ff);
#define T(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
        rc |= add_vec(w, T("attn_norm.weight"), o->n_embd, 1.0f, 0.2f, &rng);
        rc |= add_vec(w, T("ffn_norm.weight"), o->n_embd, 1.0f, 0.2f, &rng);
        rc |= add_mat(w, T("attn_q.weight"), o->wtype, o->n_embd, Q, ad, &rng);
        rc |= add_mat(w, T("attn_k.weight"), o->wtype, o->n_embd, KV, ad, &rng);
        rc |= add_mat(w, T("attn_v.weight"), o->wtype, o->n_embd, KV, ad, &rng);
        rc |= add_mat(w, T("attn_output.weight"), o->wtype, Q, o->n_embd, ad, &rng);
        rc |= add_mat(w, T("ffn_gate.weight"), o->wtype, o->n_embd, o->n_ff, ad, &rng);
        rc |= add_mat(w, T("ffn_up.weight"), o->wtype, o->n_embd, o->n_ff, ad, &rng);
        rc |= add_mat(w, T("ffn_down.weight"), o->wtype, o->n_ff, o->n_embd, af, &rng);
        if (qwen) {
            rc |= add_vec(w, T("attn_q.bias"), Q, 0.0f, 0.1f, &rng);
            rc |= add_vec(w, T("attn_k.bias"), KV, 0.0f, 0.1f, &rng);
            rc |= add_vec(w, T("attn_v.bias"), KV, 0.0f, 0.1f, &rng);
        }
#undef T
    }
    if (!rc)
        rc = gw_write_file(w, path);
    gw_free(w);
    return rc;
}
