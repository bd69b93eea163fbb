#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../common/log.h"

struct model {
    model_config cfg;
    gguf *owned; /* set when model_open opened the file */
    const gguf *g;
    kern_backend *be;
    int own_be;
    kern_mat tok_embd;     /* [V][D] */
    const float *out_norm; /* [D] */
    kern_mat output;       /* [V][D] (= tok_embd when tied) */
    model_layer *layers;   /* [n_layer] */
    uint64_t weight_bytes;
    void *pack_mem; /* the backend's packed copies of the matrices (anonymous mapping) */
    size_t pack_len, pack_bytes;
    /* device backends: the packed copies (all matrices, rows as the backend reads them) and the
     * norm weights and biases, in its memory */
    void *dev_pack, *dev_vecs;
};

/* A run of consecutive positions of one sequence inside a chunk of a (multi-sequence) forward:
 * batch positions t0 .. t0+n-1 of the chunk are that sequence's batch indices first .. first+n-1
 * (pending nodes P + first ..). */
typedef struct {
    int seq, first, n, t0;
} run_seg;

struct model_run {
    kern_backend *be; /* the activations below are in its memory */
    int t_max;
    float *hx;     /* device backends: embeddings made on the host, [t_max][D] */
    float *logits; /* device backends: logits rows before the download, [t_max][V] */
    float *x, *xn, *q, *k, *v, *att, *gate, *up, *tmp; /* [t_max][...] */
    int *pos, *anc_off, *anc;
    size_t anc_cap;
    int *path; /* scratch for one node's ancestors, n_ctx long */
    int path_cap;
    run_seg *seg;    /* [t_max] a chunk's sequence runs (at most one per position) */
    float **dst;     /* [t_max] where each gathered logits row goes */
    float *head;     /* [head_cap][V] logits of rows bound for several sequences' buffers */
    size_t head_cap; /* rows */
    int *pend0;      /* [seq_cap] each sequence's pending count before the forward */
    int *next_out;   /* [seq_cap] each sequence's next logits row */
    size_t seq_cap;
};

/* Rows of the output-head matmul that go through r->head per call when a chunk's wanted rows
 * belong to several sequences (the head is streamed once per group, whatever the batch). */
#define MODEL_HEAD_GROUP 64

/* Supported architectures and how they differ. */
static const struct {
    const char *name;
    int rope_neox, qkv_bias;
} model_archs[] = {
    {"llama", 0, 0},
    {"mistral", 0, 0},
    {"qwen2", 1, 1},
};

static sd_err get_u32(const gguf *g, const char *arch, const char *key, int *out, int dflt,
                      int required)
{
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    uint32_t v;
    sd_err e = gguf_get_u32(g, full, &v);
    if (e == SD_ENOTFOUND && !required) {
        *out = dflt;
        return SD_OK;
    }
    if (e == SD_ENOTFOUND)
        return sd_fail(SD_EPROTO, "%s: missing metadata key '%s'", gguf_path(g), full);
    if (e)
        return sd_fail(e, "%s: metadata key '%s': %s", gguf_path(g), full, sd_errmsg());
    if (v == 0 || v > (1u << 24))
        return sd_fail(SD_EPROTO, "%s: metadata key '%s' = %u is out of range", gguf_path(g), full,
                       v);
    *out = (int)v;
    return SD_OK;
}

static sd_err get_f32(const gguf *g, const char *arch, const char *key, float *out, float dflt)
{
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    sd_err e = gguf_get_f32(g, full, out);
    if (e == SD_ENOTFOUND) {
        *out = dflt;
        return SD_OK;
    }
    if (e)
        return sd_fail(e, "%s: metadata key '%s': %s", gguf_path(g), full, sd_errmsg());
    if (!isfinite(*out) || *out <= 0)
        return sd_fail(SD_EPROTO, "%s: metadata key '%s' = %g is out of range", gguf_path(g), full,
                       *out);
    return SD_OK;
}

/* Find a tensor and check its shape: ne0 x ne1 (ne1 = 0 for a vector). */
static sd_err find_t(const gguf *g, const char *name, uint64_t ne0, uint64_t ne1, int optional,
                     const gguf_tensor **out)
{
    const gguf_tensor *t = gguf_find_tensor(g, name);
    *out = t;
    if (!t)
        return optional ? SD_OK : sd_fail(SD_EPROTO, "%s: missing tensor '%s'", gguf_path(g), name);
    int dims_ok = ne1 ? (t->n_dims == 2 && t->ne[0] == ne0 && t->ne[1] == ne1)
                      : (t->n_dims == 1 && t->ne[0] == ne0);
    if (!dims_ok)
        return sd_fail(SD_EPROTO, "%s: tensor '%s' has shape [%llu, %llu], expected [%llu, %llu]",
                       gguf_path(g), name, (unsigned long long)t->ne[0],
                       (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 0), (unsigned long long)ne0,
                       (unsigned long long)ne1);
    return SD_OK;
}

static sd_err load_vec(const gguf *g, const char *name, uint64_t n, int optional, const float **out)
{
    const gguf_tensor *t;
    sd_err e = find_t(g, name, n, 0, optional, &t);
    *out = NULL;
    if (e || !t)
        return e;
    if (t->type != SD_DTYPE_F32)
        return sd_fail(SD_EUNSUPPORTED, "%s: tensor '%s' is %s; norms and biases must be F32",
                       gguf_path(g), name, dtype_name(t->type));
    *out = t->data;
    return SD_OK;
}

static sd_err load_mat(model *m, const char *name, uint64_t k, uint64_t n, kern_mat *out)
{
    const gguf_tensor *t;
    sd_err e = find_t(m->g, name, k, n, 0, &t);
    if (e)
        return e;
    out->data = t->data;
    out->type = t->type;
    return SD_OK;
}

static sd_err load_config(model *m, const model_opts *o)
{
    const gguf *g = m->g;
    model_config *c = &m->cfg;
    const char *s;
    size_t len;
    if (gguf_get_str(g, "general.architecture", &s, &len))
        return sd_fail(SD_EPROTO, "%s: missing metadata key 'general.architecture'", gguf_path(g));
    if (len >= sizeof c->arch)
        len = sizeof c->arch - 1;
    memcpy(c->arch, s, len);
    c->arch[len] = 0;
    size_t a;
    for (a = 0; a < sizeof model_archs / sizeof model_archs[0]; a++)
        if (strcmp(model_archs[a].name, c->arch) == 0)
            break;
    if (a == sizeof model_archs / sizeof model_archs[0])
        return sd_fail(SD_EUNSUPPORTED,
                       "%s: architecture '%s' is not supported (supported: llama, mistral, qwen2)",
                       gguf_path(g), c->arch);
    c->rope_neox = model_archs[a].rope_neox;
    c->qkv_bias = model_archs[a].qkv_bias;
    sd_err e;
    if ((e = get_u32(g, c->arch, "block_count", &c->n_layer_file, 0, 1)) ||
        (e = get_u32(g, c->arch, "embedding_length", &c->n_embd, 0, 1)) ||
        (e = get_u32(g, c->arch, "feed_forward_length", &c->n_ff, 0, 1)) ||
        (e = get_u32(g, c->arch, "attention.head_count", &c->n_head, 0, 1)) ||
        (e = get_u32(g, c->arch, "attention.head_count_kv", &c->n_head_kv, c->n_head, 0)) ||
        (e = get_u32(g, c->arch, "context_length", &c->n_ctx_train, 2048, 0)) ||
        (e = get_f32(g, c->arch, "rope.freq_base", &c->rope_base, 10000.0f)) ||
        (e = get_f32(g, c->arch, "attention.layer_norm_rms_epsilon", &c->norm_eps, 1e-5f)))
        return e;
    if (c->n_embd % c->n_head || c->n_head % c->n_head_kv)
        return sd_fail(SD_EPROTO, "%s: width %d, %d heads, %d kv heads do not divide", gguf_path(g),
                       c->n_embd, c->n_head, c->n_head_kv);
    c->head_dim = c->n_embd / c->n_head;
    if ((e = get_u32(g, c->arch, "rope.dimension_count", &c->n_rot, c->head_dim, 0)))
        return e;
    if (c->n_rot > c->head_dim || c->n_rot % 2 || c->head_dim % 2)
        return sd_fail(SD_EPROTO, "%s: rope dimension %d does not fit head width %d", gguf_path(g),
                       c->n_rot, c->head_dim);
    const gguf_tensor *te = gguf_find_tensor(g, "token_embd.weight");
    if (!te || te->n_dims != 2 || te->ne[0] != (uint64_t)c->n_embd || te->ne[1] > (1u << 24))
        return sd_fail(SD_EPROTO, "%s: tensor 'token_embd.weight' missing or not [%d, vocab]",
                       gguf_path(g), c->n_embd);
    c->n_vocab = (int)te->ne[1];
    c->n_layer = c->n_layer_file;
    if (o && o->layers) {
        if (o->n_layers <= 0 || o->n_layers > c->n_layer_file)
            return sd_fail(SD_EINVAL, "layer subset of %d layers (model has %d)", o->n_layers,
                           c->n_layer_file);
        for (int i = 0; i < o->n_layers; i++)
            if (o->layers[i] < 0 || o->layers[i] >= c->n_layer_file ||
                (i && o->layers[i] <= o->layers[i - 1]))
                return sd_fail(SD_EINVAL, "layer subset: entry %d = %d must be increasing and < %d",
                               i, o->layers[i], c->n_layer_file);
        c->n_layer = o->n_layers;
    }
    return SD_OK;
}

static sd_err load_weights(model *m, const model_opts *o)
{
    model_config *c = &m->cfg;
    const gguf *g = m->g;
    uint64_t D = (uint64_t)c->n_embd, Q = (uint64_t)c->n_head * c->head_dim,
             KV = (uint64_t)c->n_head_kv * c->head_dim, F = (uint64_t)c->n_ff,
             V = (uint64_t)c->n_vocab;
    sd_err e;
    if ((e = load_mat(m, "token_embd.weight", D, V, &m->tok_embd)) ||
        (e = load_vec(g, "output_norm.weight", D, 0, &m->out_norm)))
        return e;
    const gguf_tensor *to;
    if ((e = find_t(g, "output.weight", D, V, 1, &to)))
        return e;
    c->tied_output = to == NULL;
    if (to) {
        m->output.data = to->data;
        m->output.type = to->type;
    } else {
        m->output = m->tok_embd;
    }
    m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
    if (!m->layers)
        return SD_ENOMEM;
    m->weight_bytes = dtype_row_bytes(m->output.type, D) * V;
    for (int i = 0; i < c->n_layer; i++) {
        int fl = o && o->layers ? o->layers[i] : i;
        model_layer *L = &m->layers[i];
        char n[96];
#define NAME(s) (snprintf(n, sizeof n, "blk.%d." s, fl), n)
        if ((e = load_vec(g, NAME("attn_norm.weight"), D, 0, &L->attn_norm)) ||
            (e = load_vec(g, NAME("ffn_norm.weight"), D, 0, &L->ffn_norm)) ||
            (e = load_mat(m, NAME("attn_q.weight"), D, Q, &L->wq)) ||
            (e = load_mat(m, NAME("attn_k.weight"), D, KV, &L->wk)) ||
            (e = load_mat(m, NAME("attn_v.weight"), D, KV, &L->wv)) ||
            (e = load_mat(m, NAME("attn_output.weight"), Q, D, &L->wo)) ||
            (e = load_mat(m, NAME("ffn_gate.weight"), D, F, &L->w_gate)) ||
            (e = load_mat(m, NAME("ffn_up.weight"), D, F, &L->w_up)) ||
            (e = load_mat(m, NAME("ffn_down.weight"), F, D, &L->w_down)))
            return e;
        if (c->qkv_bias && ((e = load_vec(g, NAME("attn_q.bias"), Q, 0, &L->bq)) ||
                            (e = load_vec(g, NAME("attn_k.bias"), KV, 0, &L->bk)) ||
                            (e = load_vec(g, NAME("attn_v.bias"), KV, 0, &L->bv))))
            return e;
#undef NAME
        m->weight_bytes +=
            dtype_row_bytes(L->wq.type, D) * Q + dtype_row_bytes(L->wk.type, D) * KV +
            dtype_row_bytes(L->wv.type, D) * KV + dtype_row_bytes(L->wo.type, Q) * D +
            dtype_row_bytes(L->w_gate.type, D) * F + dtype_row_bytes(L->w_up.type, D) * F +
            dtype_row_bytes(L->w_down.type, F) * D;
    }
    return SD_OK;
}

/* The matrices a forward pass multiplies by, with their shapes [N][K]: the output head, then
 * 7 per layer (1 + 7 * n_layer entries). */
static void model_mats(model *m, kern_mat **mats, int *N, int *K)
{
    const model_config *c = &m->cfg;
    int D = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim, F = c->n_ff;
    int i = 0;
#define MAT(w, n, k) (mats[i] = (w), N[i] = (n), K[i] = (k), i++)
    MAT(&m->output, c->n_vocab, D);
    for (int l = 0; l < c->n_layer; l++) {
        model_layer *L = &m->layers[l];
        MAT(&L->wq, Q, D);
        MAT(&L->wk, KV, D);
        MAT(&L->wv, KV, D);
        MAT(&L->wo, D, Q);
        MAT(&L->w_gate, F, D);
        MAT(&L->w_up, F, D);
        MAT(&L->w_down, D, F);
    }
#undef MAT
}

/* The 7 matrices of a layer, in model_mats order. */
#define LAYER_MATS(L)                                                                              \
    {                                                                                              \
        &(L)->wq, &(L)->wk, &(L)->wv, &(L)->wo, &(L)->w_gate, &(L)->w_up, &(L)->w_down             \
    }

/* The packed copy `sh` holds of the same rows as w, or NULL. */
static const void *packed_in(const model *sh, const kern_mat *w)
{
    if (sh->output.data == w->data && sh->output.type == w->type)
        return sh->output.packed;
    for (int l = 0; l < sh->cfg.n_layer; l++) {
        const kern_mat *ms[7] = LAYER_MATS(&sh->layers[l]);
        for (int i = 0; i < 7; i++)
            if (ms[i]->data == w->data && ms[i]->type == w->type)
                return ms[i]->packed;
    }
    return NULL;
}

/* Give the backend its own copy of every matrix it has a faster layout for, all in one
 * anonymous mapping advised for huge pages (fewer TLB misses on the weight stream); or, with
 * o->share_packed, point at the copies that model made of the same rows. */
static sd_err pack_weights(model *m, const model_opts *o)
{
    kern_backend *be = m->be;
    if (be->device && (!be->pack_bytes || !be->pack))
        return sd_fail(SD_EUNSUPPORTED, "backend %s has no way to take the weights", be->name);
    if (!be->pack_bytes || !be->pack || (o && o->no_pack && !be->device))
        return SD_OK;
    int n = 1 + 7 * m->cfg.n_layer, *N = malloc(sizeof(int) * 2 * (size_t)n), *K = N + n;
    kern_mat **mats = malloc(sizeof *mats * (size_t)n);
    sd_err e = SD_OK;
    if (!N || !mats) {
        e = SD_ENOMEM;
        goto done;
    }
    model_mats(m, mats, N, K);
    if (o && o->share_packed) {
        int shared = 0;
        for (int i = 0; i < n; i++)
            if ((mats[i]->packed = packed_in(o->share_packed, mats[i])))
                shared++;
        LOG_INFO("model", "%s: %d of %d matrices use the packed copies of the model shared",
                 gguf_path(m->g), shared, n);
        goto done;
    }
    size_t total = 0;
    size_t al = be->device ? 256 : 64; /* each copy's alignment */
    for (int i = 0; i < n; i++)
        total += (be->pack_bytes(be->ctx, mats[i]->type, N[i], K[i]) + al - 1) & ~(al - 1);
    if (!total)
        goto done;
    if (be->device) { /* the weights must be in its memory: upload every matrix */
        uint8_t *mem = be->buf_alloc(be->ctx, total);
        if (!mem) {
            e = sd_fail(SD_ENOMEM, "%s: cannot allocate %.1f MB for the weights on backend %s",
                        gguf_path(m->g), (double)total / 1e6, be->name);
            goto done;
        }
        size_t off = 0;
        for (int i = 0; i < n; i++) {
            size_t b = be->pack_bytes(be->ctx, mats[i]->type, N[i], K[i]);
            if (!b) {
                be->buf_free(be->ctx, mem);
                e = sd_fail(SD_EUNSUPPORTED, "%s: backend %s cannot hold a %s matrix",
                            gguf_path(m->g), be->name, dtype_name(mats[i]->type));
                goto done;
            }
            be->pack(be->ctx, mem + off, mats[i]->data, mats[i]->type, N[i], K[i]);
            mats[i]->packed = mem + off;
            off += (b + 255) & ~(size_t)255;
        }
        m->dev_pack = mem;
        m->pack_bytes = total;
        LOG_INFO("model", "%s: uploaded %.1f MB of weights to backend %s", gguf_path(m->g),
                 (double)total / 1e6, be->name);
        goto done;
    }
    size_t huge = (size_t)2 << 20, len = (total + huge - 1) & ~(huge - 1);
    void *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { /* still correct without: the backend reads the stored rows */
        LOG_WARN("model",
                 "%s: cannot map %zu bytes for packed weights (%s); reading them as stored",
                 gguf_path(m->g), len, strerror(errno));
        goto done;
    }
    (void)madvise(mem, len, MADV_HUGEPAGE); /* a hint: without huge pages it only runs slower */
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        size_t b = be->pack_bytes(be->ctx, mats[i]->type, N[i], K[i]);
        if (!b)
            continue;
        be->pack(be->ctx, (uint8_t *)mem + off, mats[i]->data, mats[i]->type, N[i], K[i]);
        mats[i]->packed = (uint8_t *)mem + off;
        off += (b + 63) & ~(size_t)63;
    }
    (void)mprotect(mem, len, PROT_READ);
    m->pack_mem = mem;
    m->pack_len = len;
    m->pack_bytes = total;
    LOG_INFO("model", "%s: packed %.1f MB of weights for backend %s", gguf_path(m->g),
             (double)total / 1e6, be->name);
done:
    free(mats);
    free(N);
    return e;
}

/* Device backends: one buffer with every norm weight and bias, the model's pointers moved to
 * it (they point into the mapped file otherwise). */
static sd_err upload_vecs(model *m)
{
    kern_backend *be = m->be;
    if (!be->device)
        return SD_OK;
    const model_config *c = &m->cfg;
    size_t D = (size_t)c->n_embd, Q = (size_t)c->n_head * c->head_dim,
           KV = (size_t)c->n_head_kv * c->head_dim;
    size_t per = 2 * D + (c->qkv_bias ? Q + 2 * KV : 0), n = D + per * (size_t)c->n_layer;
    float *mem = be->buf_alloc(be->ctx, n * sizeof(float));
    if (!mem)
        return sd_fail(SD_ENOMEM, "%s: cannot allocate the norm weights on backend %s",
                       gguf_path(m->g), be->name);
    size_t off = 0;
#define VEC(p, len)                                                                                \
    do {                                                                                           \
        be->upload(be->ctx, mem + off, (p), (len) * sizeof(float));                                \
        (p) = mem + off;                                                                           \
        off += (len);                                                                              \
    } while (0)
    VEC(m->out_norm, D);
    for (int l = 0; l < c->n_layer; l++) {
        model_layer *L = &m->layers[l];
        VEC(L->attn_norm, D);
        VEC(L->ffn_norm, D);
        if (L->bq) {
            VEC(L->bq, Q);
            VEC(L->bk, KV);
            VEC(L->bv, KV);
        }
    }
#undef VEC
    m->dev_vecs = mem;
    return be->sync(be->ctx);
}

sd_err model_init(model **out, const gguf *g, const model_opts *o)
{
    *out = NULL;
    model *m = calloc(1, sizeof *m);
    if (!m)
        return SD_ENOMEM;
    m->g = g;
    sd_err e = load_config(m, o);
    if (!e)
        e = load_weights(m, o);
    if (!e) {
        if (o && o->backend) {
            m->be = o->backend;
        } else {
            e = kern_cpu_create(&m->be, o ? o->n_threads : 0, o ? o->kern_flags : 0);
            m->own_be = !e;
        }
    }
    if (!e)
        e = pack_weights(m, o);
    if (!e)
        e = upload_vecs(m);
    if (e) {
        model_free(m);
        return e;
    }
    LOG_INFO("model", "%s: %s, %d/%d layers, D=%d H=%d/%d F=%d V=%d, backend %s", gguf_path(g),
             m->cfg.arch, m->cfg.n_layer, m->cfg.n_layer_file, m->cfg.n_embd, m->cfg.n_head,
             m->cfg.n_head_kv, m->cfg.n_ff, m->cfg.n_vocab, m->be->name);
    *out = m;
    return SD_OK;
}

sd_err model_open(model **out, const char *path, const model_opts *o)
{
    *out = NULL;
    gguf *g;
    sd_err e = gguf_open(&g, path);
    if (e)
        return e;
    e = model_init(out, g, o);
    if (e) {
        gguf_close(g);
        return e;
    }
    (*out)->owned = g;
    return SD_OK;
}

void model_free(model *m)
{
    if (!m)
        return;
    if (m->be && m->be->device) {
        m->be->buf_free(m->be->ctx, m->dev_pack);
        m->be->buf_free(m->be->ctx, m->dev_vecs);
    }
    if (m->own_be)
        kern_free(m->be);
    if (m->pack_mem)
        munmap(m->pack_mem, m->pack_len);
    free(m->layers);
    gguf_close(m->owned);
    free(m);
}

const model_config *model_cfg(const model *m)
{
    return &m->cfg;
}
const gguf *model_gguf(const model *m)
{
    return m->g;
}
kern_backend *model_backend(const model *m)
{
    return m->be;
}
uint64_t model_weight_bytes(const model *m)
{
    return m->weight_bytes;
}
int model_packed_mats(const model *m)
{
    int n = m->output.packed != NULL;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const kern_mat *ms[7] = LAYER_MATS(&m->layers[l]);
        for (int i = 0; i < 7; i++)
            n += ms[i]->packed != NULL;
    }
    return n;
}

uint64_t model_packed_bytes(const model *m)
{
    return m->pack_bytes;
}

sd_err model_kv_init(const model *m, kv_cache **out, int n_ctx)
{
    if (n_ctx <= 0)
        n_ctx = m->cfg.n_ctx_train;
    return kv_init_on(out, m->cfg.n_layer, m->cfg.n_head_kv, m->cfg.head_dim, n_ctx, m->be);
}

sd_err model_run_init(model_run **out, const model *m, int t_max)
{
    *out = NULL;
    if (t_max <= 0 || t_max > 4096)
        return sd_fail(SD_EINVAL, "batch size %d: must be in 1..4096", t_max);
    const model_config *c = &m->cfg;
    model_run *r = calloc(1, sizeof *r);
    if (!r)
        return SD_ENOMEM;
    size_t T = (size_t)t_max, D = (size_t)c->n_embd, Q = (size_t)c->n_head * c->head_dim,
           KV = (size_t)c->n_head_kv * c->head_dim, F = (size_t)c->n_ff;
    kern_backend *be = m->be;
    r->be = be;
    r->t_max = t_max;
#define BUF(n) be->buf_alloc(be->ctx, sizeof(float) * (n)) /* activations: backend memory */
    r->x = BUF(T * D);
    r->xn = BUF(T * D);
    r->tmp = BUF(T * D);
    r->q = BUF(T * Q);
    r->att = BUF(T * Q);
    r->k = BUF(T * KV);
    r->v = BUF(T * KV);
    r->gate = BUF(T * F);
    r->up = BUF(T * F);
    int dev_ok = 1;
    if (be->device) {
        r->hx = malloc(sizeof(float) * T * D);
        r->logits = BUF(T * (size_t)c->n_vocab);
        dev_ok = r->hx && r->logits;
    }
#undef BUF
    r->pos = malloc(sizeof(int) * T);
    r->anc_off = malloc(sizeof(int) * (T + 1));
    r->seg = malloc(sizeof(run_seg) * T);
    r->dst = malloc(sizeof(float *) * T);
    if (!r->x || !r->xn || !r->tmp || !r->q || !r->att || !r->k || !r->v || !r->gate || !r->up ||
        !r->pos || !r->anc_off || !r->seg || !r->dst || !dev_ok) {
        model_run_free(r);
        return SD_ENOMEM;
    }
    *out = r;
    return SD_OK;
}

void model_run_free(model_run *r)
{
    if (!r)
        return;
    float *bufs[] = {r->x, r->xn, r->tmp, r->q, r->att, r->k, r->v, r->gate, r->up, r->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        r->be->buf_free(r->be->ctx, bufs[i]);
    free(r->hx);
    free(r->pos);
    free(r->anc_off);
    free(r->anc);
    free(r->path);
    free(r->seg);
    free(r->dst);
    free(r->head);
    free(r->pend0);
    free(r->next_out);
    free(r);
}

static sd_err grow(int **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return SD_OK;
    size_t n = *cap ? *cap : 1024;
    while (n < need)
        n *= 2;
    int *q = realloc(*p, n * sizeof(int));
    if (!q)
        return SD_ENOMEM;
    *p = q;
    *cap = n;
    return SD_OK;
}

/* Positions and ancestor slot lists of a chunk's positions, sequence run by sequence run. The
 * lists grow only when a batch is deeper than any before (amortised, never per token in steady
 * state). */
static sd_err build_anc(model_run *r, const model_seq *seqs, int nseg, int T)
{
    size_t total = 0, pneed = 0;
    for (int s = 0; s < nseg; s++) {
        const run_seg *g = &r->seg[s];
        const kv_cache *kv = seqs[g->seq].kv;
        int P = r->pend0[g->seq];
        for (int i = 0; i < g->n; i++)
            total += (size_t)kv->depth[P + g->first + i] + 1;
        if ((size_t)kv->n_ctx > pneed)
            pneed = (size_t)kv->n_ctx;
    }
    size_t pcap = (size_t)r->path_cap;
    sd_err e = grow(&r->anc, &r->anc_cap, total);
    if (!e)
        e = grow(&r->path, &pcap, pneed);
    if (e)
        return sd_fail(SD_ENOMEM, "forward: cannot allocate ancestor lists (%zu entries)", total);
    r->path_cap = (int)pcap;
    size_t o = 0;
    for (int s = 0; s < nseg; s++) {
        const run_seg *g = &r->seg[s];
        const kv_cache *kv = seqs[g->seq].kv;
        for (int i = 0; i < g->n; i++) {
            int node = r->pend0[g->seq] + g->first + i, n = 0, t = g->t0 + i;
            r->pos[t] = kv->n_committed + kv->depth[node];
            for (int a = node; a >= 0; a = kv->parent[a])
                r->path[n++] = kv->n_committed + a;
            r->anc_off[t] = (int)o;
            while (n > 0) /* root-to-node order: the order a sequential decode sees its keys */
                r->anc[o++] = r->path[--n];
        }
    }
    r->anc_off[T] = (int)o;
    return SD_OK;
}

/* One layer over a chunk of T positions from nseg sequence runs: every matmul and elementwise
 * step over all T at once (the weights stream once for all sequences), the KV store and the
 * attention per run, each against its own sequence's cache. Every kernel is batch-invariant, so
 * a position's result does not depend on what else is in the chunk. */
static void layer_forward(model *m, model_run *r, const model_seq *seqs, int nseg, int l, int T)
{
    const model_config *c = &m->cfg;
    const model_layer *L = &m->layers[l];
    kern_backend *be = m->be;
    void *bc = be->ctx;
    int D = c->n_embd, Q = c->n_head * c->head_dim, KV = c->n_head_kv * c->head_dim, F = c->n_ff;

    be->rmsnorm(bc, r->xn, r->x, L->attn_norm, T, D, c->norm_eps);
    if (be->matmul_multi) { /* one activation prep and one dispatch for q, k, v */
        float *const outs[3] = {r->q, r->k, r->v};
        const kern_mat *const ws[3] = {&L->wq, &L->wk, &L->wv};
        const int Ns[3] = {Q, KV, KV};
        be->matmul_multi(bc, 3, outs, r->xn, ws, Ns, T, D);
    } else {
        be->matmul(bc, r->q, r->xn, &L->wq, T, Q, D);
        be->matmul(bc, r->k, r->xn, &L->wk, T, KV, D);
        be->matmul(bc, r->v, r->xn, &L->wv, T, KV, D);
    }
    if (L->bq) {
        be->add_bias(bc, r->q, L->bq, T, Q);
        be->add_bias(bc, r->k, L->bk, T, KV);
        be->add_bias(bc, r->v, L->bv, T, KV);
    }
    be->rope(bc, r->q, r->pos, T, c->n_head, c->head_dim, c->n_rot, c->rope_base, c->rope_neox);
    be->rope(bc, r->k, r->pos, T, c->n_head_kv, c->head_dim, c->n_rot, c->rope_base, c->rope_neox);
    for (int s = 0; s < nseg; s++) {
        const run_seg *g = &r->seg[s];
        kv_cache *kv = seqs[g->seq].kv;
        size_t t0 = (size_t)g->t0;
        kv_put(kv, l, kv->n_committed + r->pend0[g->seq] + g->first, r->k + t0 * KV, r->v + t0 * KV,
               g->n);
        /* anc_off is indexed from this run's first position; its entries index r->anc */
        be->attention(bc, r->att + t0 * Q, r->q + t0 * Q, kv_k(kv, l), kv_v(kv, l),
                      (size_t)c->head_dim, kv_head_stride(kv), kv->n_committed, r->anc,
                      r->anc_off + t0, g->n, c->n_head, c->n_head_kv, c->head_dim,
                      1.0f / sqrtf((float)c->head_dim));
    }
    be->matmul(bc, r->tmp, r->att, &L->wo, T, D, Q);
    be->add(bc, r->x, r->tmp, T * D);

    be->rmsnorm(bc, r->xn, r->x, L->ffn_norm, T, D, c->norm_eps);
    if (be->matmul_multi) { /* one activation prep and one dispatch for gate, up */
        float *const outs[2] = {r->gate, r->up};
        const kern_mat *const ws[2] = {&L->w_gate, &L->w_up};
        const int Ns[2] = {F, F};
        be->matmul_multi(bc, 2, outs, r->xn, ws, Ns, T, D);
    } else {
        be->matmul(bc, r->gate, r->xn, &L->w_gate, T, F, D);
        be->matmul(bc, r->up, r->xn, &L->w_up, T, F, D);
    }
    be->silu_mul(bc, r->gate, r->up, T * F);
    be->matmul(bc, r->tmp, r->gate, &L->w_down, T, D, F);
    be->add(bc, r->x, r->tmp, T * D);
}

/* Everything model_forward_multi checks before it changes anything. pfx names the sequence in
 * messages when there are several ("forward: sequence 2: "). */
static sd_err check_seq(const model *m, const model_seq *q, const char *pfx)
{
    const model_config *c = &m->cfg;
    int V = c->n_vocab, T = q->T;
    const kv_cache *kv = q->kv;
    if (T <= 0)
        return sd_fail(SD_EINVAL, "%sempty batch", pfx);
    if (!kv || !q->tokens)
        return sd_fail(SD_EINVAL, "%sno kv cache or no tokens", pfx);
    if (kv->n_layer != c->n_layer || kv->n_head != c->n_head_kv || kv->dh != c->head_dim)
        return sd_fail(SD_EINVAL, "%skv cache shaped for another model", pfx);
    if (kv->be != (m->be->device ? m->be : NULL)) /* model_kv_init makes it where it must be */
        return sd_fail(SD_EINVAL, "%skv cache not in the memory of backend %s", pfx, m->be->name);
    int P = kv->n_pending;
    if ((long)kv->n_committed + P + T > kv->n_ctx)
        return sd_fail(SD_ERANGE,
                       "%s%d committed + %d pending + %d new positions exceed the context of %d",
                       pfx, kv->n_committed, P, T, kv->n_ctx);
    for (int i = 0; i < T; i++) {
        if (q->tokens[i] < 0 || q->tokens[i] >= V)
            return sd_fail(SD_ERANGE,
                           "%stoken %d at batch index %d is outside the vocabulary (0..%d)", pfx,
                           q->tokens[i], i, V - 1);
        if (q->parents && (q->parents[i] < -1 || q->parents[i] >= P + i))
            return sd_fail(SD_EINVAL,
                           "%snode %d has parent %d; parents must be -1 or an earlier node (< %d)",
                           pfx, P + i, q->parents[i], P + i);
    }
    if (q->n_out < 0 || q->n_out > T || (!q->out_idx && q->n_out > 1))
        return sd_fail(SD_EINVAL, "%s%d logits rows requested from a batch of %d", pfx, q->n_out,
                       T);
    if (q->n_out > 0 && !q->logits)
        return sd_fail(SD_EINVAL, "%s%d logits rows requested and no buffer for them", pfx,
                       q->n_out);
    for (int j = 0; q->out_idx && j < q->n_out; j++)
        if (q->out_idx[j] < 0 || q->out_idx[j] >= T || (j && q->out_idx[j] <= q->out_idx[j - 1]))
            return sd_fail(SD_EINVAL, "%slogits index %d must be increasing in 0..%d", pfx,
                           q->out_idx[j], T - 1);
    return SD_OK;
}

/* Gather the chunk's wanted rows (in sequence-run order) into r->xn, their destinations into
 * r->dst; returns how many. */
static int head_gather(model *m, model_run *r, const model_seq *seqs, int nseg)
{
    kern_backend *be = m->be;
    int V = m->cfg.n_vocab, D = m->cfg.n_embd, g = 0;
    for (int s = 0; s < nseg; s++) {
        const run_seg *sg = &r->seg[s];
        const model_seq *q = &seqs[sg->seq];
        int *j = &r->next_out[sg->seq];
        for (; *j < q->n_out; (*j)++) {
            int bi = q->out_idx ? q->out_idx[*j] : q->T - 1;
            if (bi >= sg->first + sg->n)
                break;
            be->copy(be->ctx, r->xn + (size_t)g * D, r->x + (size_t)(sg->t0 + bi - sg->first) * D,
                     sizeof(float) * D);
            r->dst[g++] = q->logits + (size_t)*j * V;
        }
    }
    return g;
}

#define HEAD_QUEUE 1   /* the rmsnorm and output-head matmul (capturable in a decode graph) */
#define HEAD_DELIVER 2 /* the rows into their host buffers */

/* One rmsnorm and output-head matmul over the g gathered rows. The CPU writes straight into the
 * sequence's buffer when all rows are consecutive rows of one buffer (always so for a single
 * sequence), else through r->head in groups; a device backend computes all g (<= t_max) into
 * r->logits and downloads them. `what`: HEAD_QUEUE | HEAD_DELIVER (a decode graph runs the
 * first part, the second after its replay). */
static sd_err head_forward(model *m, model_run *r, int g, int what)
{
    const model_config *c = &m->cfg;
    int V = c->n_vocab, D = c->n_embd;
    if (!g)
        return SD_OK;
    kern_backend *be = m->be;
    if (what & HEAD_QUEUE)
        be->rmsnorm(be->ctx, r->xn, r->xn, m->out_norm, g, D, c->norm_eps);
    int direct = 1;
    for (int i = 1; i < g && direct; i++)
        direct = r->dst[i] == r->dst[0] + (size_t)i * V;
    float *buf = be->device ? r->logits : r->head;
    size_t rows = be->device ? (size_t)r->t_max : r->head_cap; /* sized before any compute */
    if (!be->device && direct) {
        be->matmul(be->ctx, r->dst[0], r->xn, &m->output, g, V, D);
        return SD_OK;
    }
    for (int i0 = 0; i0 < g; i0 += (int)rows) {
        int n = g - i0 < (int)rows ? g - i0 : (int)rows;
        if (what & HEAD_QUEUE)
            be->matmul(be->ctx, buf, r->xn + (size_t)i0 * D, &m->output, n, V, D);
        if (!(what & HEAD_DELIVER))
            continue;
        /* download waits for the queued work; on the CPU it is a copy */
        sd_err e =
            direct ? be->download(be->ctx, r->dst[i0], buf, sizeof(float) * (size_t)n * V) : SD_OK;
        for (int i = 0; !direct && !e && i < n; i++)
            e = be->download(be->ctx, r->dst[i0 + i], buf + (size_t)i * V, sizeof(float) * V);
        if (e)
            return e;
    }
    return SD_OK;
}

/* A plain decode step (one sequence, one token, no pending nodes) on a backend with decode
 * graphs: the layers and the head into r->logits, captured once per (model, run, cache) and
 * replayed after that (kernels.h graph_begin). 1: done (the logits still to be delivered);
 * 0: not graphed (run the ops as usual); an error < 0. */
static int decode_graph(model *m, model_run *r, const model_seq *seqs)
{
    kern_backend *be = m->be;
    const kv_cache *kv = seqs[0].kv;
    /* everything a captured step holds: the buffers' addresses and the shapes of its ops */
    struct {
        const void *m, *r, *x, *logits, *k, *v, *pack, *vecs;
        int n_ctx, n_layer, n_embd, n_ff, n_vocab, n_head;
    } key;
    memset(&key, 0, sizeof key); /* the padding is part of the key's bytes */
    key.m = m;
    key.r = r;
    key.x = r->x;
    key.logits = r->logits;
    key.k = kv->k;
    key.v = kv->v;
    key.pack = m->dev_pack;
    key.vecs = m->dev_vecs;
    key.n_ctx = kv->n_ctx;
    key.n_layer = m->cfg.n_layer;
    key.n_embd = m->cfg.n_embd;
    key.n_ff = m->cfg.n_ff;
    key.n_vocab = m->cfg.n_vocab;
    key.n_head = m->cfg.n_head * 1024 + m->cfg.n_head_kv;
    int have = be->graph_begin(be->ctx, &key, sizeof key, kv->n_committed, kv->n_ctx);
    if (have < 0)
        return 0;
    if (!have) {
        for (int l = 0; l < m->cfg.n_layer; l++)
            layer_forward(m, r, seqs, 1, l, 1);
        be->copy(be->ctx, r->xn, r->x, sizeof(float) * (size_t)m->cfg.n_embd);
        head_forward(m, r, 1, HEAD_QUEUE);
    }
    sd_err e = be->graph_end(be->ctx);
    return e == SD_EAGAIN ? 0 : e ? -1 : 1;
}

/* After a failure while computing: the caches drop this forward's nodes again. */
static sd_err drop_pending(model_run *r, const model_seq *seqs, int n_seq, sd_err e)
{
    for (int u = 0; u < n_seq; u++)
        seqs[u].kv->n_pending = r->pend0[u];
    return e;
}

sd_err model_forward_multi(model *m, model_run *r, const model_seq *seqs, int n_seq)
{
    const model_config *c = &m->cfg;
    kern_backend *be = m->be;
    int D = c->n_embd;
    if (n_seq <= 0 || !seqs)
        return sd_fail(SD_EINVAL, "forward: no sequences");
    char pfx[48] = "forward: ";
    long total = 0;
    for (int s = 0; s < n_seq; s++) {
        if (n_seq > 1)
            snprintf(pfx, sizeof pfx, "forward: sequence %d: ", s);
        sd_err e = check_seq(m, &seqs[s], pfx);
        if (e)
            return e;
        for (int u = 0; u < s; u++)
            if (seqs[u].kv == seqs[s].kv)
                return sd_fail(SD_EINVAL, "%sthe same kv cache as sequence %d", pfx, u);
        total += seqs[s].T;
    }
    if ((size_t)n_seq > r->seq_cap) { /* per-sequence cursors: grow to the most sequences seen */
        int *p0 = realloc(r->pend0, sizeof(int) * (size_t)n_seq);
        if (p0)
            r->pend0 = p0;
        int *no = p0 ? realloc(r->next_out, sizeof(int) * (size_t)n_seq) : NULL;
        if (no)
            r->next_out = no;
        if (!p0 || !no)
            return sd_fail(SD_ENOMEM, "forward: cannot allocate state for %d sequences", n_seq);
        r->seq_cap = (size_t)n_seq;
    }
    /* Rows bound for several sequences' buffers go through r->head: size it now, so that no
     * allocation can fail once logits are being written. */
    long n_rows = 0;
    for (int s = 0; s < n_seq; s++)
        n_rows += seqs[s].n_out;
    size_t rows = n_rows < MODEL_HEAD_GROUP ? (size_t)n_rows : MODEL_HEAD_GROUP;
    if (n_seq > 1 && !be->device && rows > r->head_cap) { /* grows to the widest mix, stays */
        float *h = realloc(r->head, sizeof(float) * rows * (size_t)c->n_vocab);
        if (!h)
            return sd_fail(SD_ENOMEM, "forward: cannot allocate %zu logits rows", rows);
        r->head = h;
        r->head_cap = rows;
    }

    /* Register the nodes first: every sequence's tree shape is known before any compute. */
    for (int s = 0; s < n_seq; s++) {
        const model_seq *q = &seqs[s];
        kv_cache *kv = q->kv;
        int P = kv->n_pending;
        r->pend0[s] = P;
        r->next_out[s] = 0;
        for (int i = 0; i < q->T; i++) {
            int node = P + i;
            int par = q->parents ? q->parents[i] : node - 1;
            kv->parent[node] = par;
            kv->depth[node] = par < 0 ? 0 : kv->depth[par] + 1;
            kv->tok[kv->n_committed + node] = q->tokens[i];
        }
        kv->n_pending = P + q->T;
    }

    /* a plain decode step of one sequence may replay a captured graph */
    int graph_ok = be->device && be->graph_begin && n_seq == 1 && total == 1 && r->pend0[0] == 0 &&
                   seqs[0].n_out == 1;

    /* Chunks of up to t_max positions, cut anywhere: a sequence split between two chunks has
     * its first part's KV rows stored before its second part attends to them. */
    int s = 0, i = 0; /* next position: sequence s, batch index i */
    for (long done = 0; done < total;) {
        int T = total - done < r->t_max ? (int)(total - done) : r->t_max, nseg = 0;
        /* embeddings on the host (the table stays in the mapped file); a device backend gets
         * the T rows uploaded */
        float *hx = be->device ? r->hx : r->x;
        for (int t = 0; t < T;) {
            int n = seqs[s].T - i < T - t ? seqs[s].T - i : T - t;
            r->seg[nseg++] = (run_seg){s, i, n, t};
            for (int k = 0; k < n; k++) {
                int32_t tok = seqs[s].tokens[i + k];
                dtype_dequant_row(hx + (size_t)(t + k) * D,
                                  (const uint8_t *)m->tok_embd.data +
                                      (size_t)tok * dtype_row_bytes(m->tok_embd.type, D),
                                  m->tok_embd.type, (size_t)D);
            }
            t += n;
            i += n;
            if (i == seqs[s].T)
                s++, i = 0;
        }
        sd_err e = build_anc(r, seqs, nseg, T);
        if (e) /* allocation failure only */
            return drop_pending(r, seqs, n_seq, e);
        if (be->device)
            be->upload(be->ctx, r->x, hx, sizeof(float) * (size_t)T * D);
        int graphed = 0;
        if (graph_ok)
            graphed = decode_graph(m, r, seqs);
        if (graphed < 0)
            return drop_pending(r, seqs, n_seq, SD_ECUDA); /* the backend's message stands */
        if (graphed) {
            r->dst[0] = seqs[0].logits;
            if ((e = head_forward(m, r, 1, HEAD_DELIVER)))
                return drop_pending(r, seqs, n_seq, e);
            done += T;
            continue;
        }
        for (int l = 0; l < c->n_layer; l++)
            layer_forward(m, r, seqs, nseg, l, T);
        if ((e = head_forward(m, r, head_gather(m, r, seqs, nseg), HEAD_QUEUE | HEAD_DELIVER)))
            return drop_pending(r, seqs, n_seq, e);
        done += T;
    }
    sd_err e = be->sync(be->ctx);
    return e ? drop_pending(r, seqs, n_seq, e) : SD_OK;
}

sd_err model_forward(model *m, model_run *r, kv_cache *kv, const int32_t *tokens,
                     const int *parents, int T, const int *out_idx, int n_out, float *logits)
{
    model_seq q = {kv, tokens, parents, T, out_idx, n_out, logits};
    return model_forward_multi(m, r, &q, 1);
}
