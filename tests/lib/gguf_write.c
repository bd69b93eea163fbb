#include "gguf_write.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A growable byte buffer. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
} gw_buf;

static int buf_put(gw_buf *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, src, n);
    b->n += n;
    return 0;
}

static int buf_u32(gw_buf *b, uint32_t v)
{
    return buf_put(b, &v, 4);
}
static int buf_u64(gw_buf *b, uint64_t v)
{
    return buf_put(b, &v, 8);
}
static int buf_str(gw_buf *b, const char *s, size_t n)
{
    return buf_u64(b, n) || buf_put(b, s, n);
}
static int buf_zeros(gw_buf *b, size_t n)
{
    static const uint8_t z[64];
    while (n) {
        size_t k = n < sizeof z ? n : sizeof z;
        if (buf_put(b, z, k))
            return -1;
        n -= k;
    }
    return 0;
}

typedef struct {
    gw_buf rec;     /* the whole serialised key/value record */
    uint32_t align; /* general.alignment u32 value, 0 if not that key */
    int64_t off;
} gw_kv;

typedef struct {
    gw_buf info; /* name, n_dims, ne (offset is appended at write time) */
    uint8_t *data;
    size_t nbytes;
    int64_t info_off, data_off;
} gw_tensor;

struct gw {
    uint32_t version;
    gw_kv *kv;
    size_t n_kv, cap_kv;
    gw_tensor *t;
    size_t n_t, cap_t;
};

gw *gw_init(void)
{
    gw *w = calloc(1, sizeof *w);
    if (w)
        w->version = 3;
    return w;
}

void gw_free(gw *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++)
        free(w->kv[i].rec.p);
    for (size_t i = 0; i < w->n_t; i++) {
        free(w->t[i].info.p);
        free(w->t[i].data);
    }
    free(w->kv);
    free(w->t);
    free(w);
}

void gw_set_version(gw *w, uint32_t version)
{
    w->version = version;
}

static size_t gw_vt_size(gguf_vtype t)
{
    switch (t) {
    case GGUF_VT_UINT8:
    case GGUF_VT_INT8:
    case GGUF_VT_BOOL:
        return 1;
    case GGUF_VT_UINT16:
    case GGUF_VT_INT16:
        return 2;
    case GGUF_VT_UINT32:
    case GGUF_VT_INT32:
    case GGUF_VT_FLOAT32:
        return 4;
    case GGUF_VT_UINT64:
    case GGUF_VT_INT64:
    case GGUF_VT_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

/* Start a new key record: key string + value type. */
static gw_kv *kv_new(gw *w, const char *key, gguf_vtype type)
{
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
        gw_kv *p = realloc(w->kv, cap * sizeof *p);
        if (!p)
            return NULL;
        w->kv = p;
        w->cap_kv = cap;
    }
    gw_kv *kv = &w->kv[w->n_kv];
    memset(kv, 0, sizeof *kv);
    kv->off = -1;
    if (buf_str(&kv->rec, key, strlen(key)) || buf_u32(&kv->rec, (uint32_t)type)) {
        free(kv->rec.p);
        return NULL;
    }
    w->n_kv++;
    return kv;
}

int gw_add_scalar(gw *w, const char *key, gguf_vtype type, const void *val)
{
    size_t sz = gw_vt_size(type);
    gw_kv *kv = sz ? kv_new(w, key, type) : NULL;
    if (!kv || buf_put(&kv->rec, val, sz))
        return -1;
    if (type == GGUF_VT_UINT32 && strcmp(key, "general.alignment") == 0)
        memcpy(&kv->align, val, 4);
    return 0;
}

int gw_add_u8(gw *w, const char *key, uint8_t v)
{
    return gw_add_scalar(w, key, GGUF_VT_UINT8, &v);
}
int gw_add_i8(gw *w, const char *key, int8_t v)
{
    return gw_add_scalar(w, key, GGUF_VT_INT8, &v);
}
int gw_add_u16(gw *w, const char *key, uint16_t v)
{
    return gw_add_scalar(w, key, GGUF_VT_UINT16, &v);
}
int gw_add_i16(gw *w, const char *key, int16_t v)
{
    return gw_add_scalar(w, key, GGUF_VT_INT16, &v);
}
int gw_add_u32(gw *w, const char *key, uint32_t v)
{
    return gw_add_scalar(w, key, GGUF_VT_UINT32, &v);
}
int gw_add_i32(gw *w, const char *key, int32_t v)
{
    return gw_add_scalar(w, key, GGUF_VT_INT32, &v);
}
int gw_add_u64(gw *w, const char *key, uint64_t v)
{
    return gw_add_scalar(w, key, GGUF_VT_UINT64, &v);
}
int gw_add_i64(gw *w, const char *key, int64_t v)
{
    return gw_add_scalar(w, key, GGUF_VT_INT64, &v);
}
int gw_add_f32(gw *w, const char *key, float v)
{
    return gw_add_scalar(w, key, GGUF_VT_FLOAT32, &v);
}
int gw_add_f64(gw *w, const char *key, double v)
{
    return gw_add_scalar(w, key, GGUF_VT_FLOAT64, &v);
}
int gw_add_bool(gw *w, const char *key, int v)
{
    uint8_t b = v != 0;
    return gw_add_scalar(w, key, GGUF_VT_BOOL, &b);
}

int gw_add_strn(gw *w, const char *key, const char *s, size_t len)
{
    gw_kv *kv = kv_new(w, key, GGUF_VT_STRING);
    return !kv || buf_str(&kv->rec, s, len) ? -1 : 0;
}

int gw_add_str(gw *w, const char *key, const char *s)
{
    return gw_add_strn(w, key, s, strlen(s));
}

int gw_add_arr(gw *w, const char *key, gguf_vtype elem, uint64_t n, const void *data)
{
    size_t sz = gw_vt_size(elem);
    gw_kv *kv = sz ? kv_new(w, key, GGUF_VT_ARRAY) : NULL;
    if (!kv || buf_u32(&kv->rec, (uint32_t)elem) || buf_u64(&kv->rec, n) ||
        buf_put(&kv->rec, data, (size_t)n * sz))
        return -1;
    return 0;
}

int gw_add_arr_i32(gw *w, const char *key, uint64_t n, const int32_t *v)
{
    return gw_add_arr(w, key, GGUF_VT_INT32, n, v);
}

int gw_add_arr_f32(gw *w, const char *key, uint64_t n, const float *v)
{
    return gw_add_arr(w, key, GGUF_VT_FLOAT32, n, v);
}

int gw_add_arr_str(gw *w, const char *key, uint64_t n, const char *const *s)
{
    gw_kv *kv = kv_new(w, key, GGUF_VT_ARRAY);
    if (!kv || buf_u32(&kv->rec, GGUF_VT_STRING) || buf_u64(&kv->rec, n))
        return -1;
    for (uint64_t i = 0; i < n; i++)
        if (buf_str(&kv->rec, s[i], strlen(s[i])))
            return -1;
    return 0;
}

int gw_add_tensor_raw(gw *w, const char *name, uint32_t type, int n_dims, const uint64_t *ne,
                      const void *data, size_t nbytes)
{
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? w->cap_t * 2 : 16;
        gw_tensor *p = realloc(w->t, cap * sizeof *p);
        if (!p)
            return -1;
        w->t = p;
        w->cap_t = cap;
    }
    gw_tensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->info_off = t->data_off = -1;
    t->nbytes = nbytes;
    t->data = calloc(1, nbytes ? nbytes : 1);
    int bad =
        !t->data || buf_str(&t->info, name, strlen(name)) || buf_u32(&t->info, (uint32_t)n_dims);
    for (int d = 0; !bad && d < n_dims; d++)
        bad = buf_u64(&t->info, ne[d]);
    bad = bad || buf_u32(&t->info, type);
    if (bad) {
        free(t->data);
        free(t->info.p);
        return -1;
    }
    if (data && nbytes)
        memcpy(t->data, data, nbytes);
    w->n_t++;
    return 0;
}

int gw_add_tensor(gw *w, const char *name, sd_dtype type, int n_dims, const uint64_t *ne,
                  const void *data)
{
    uint64_t n = 1;
    for (int d = 0; d < n_dims; d++)
        n *= ne[d];
    size_t be = dtype_block_elems(type);
    if (!be)
        return -1;
    return gw_add_tensor_raw(w, name, (uint32_t)type, n_dims, ne, data,
                             (size_t)(n / be * dtype_block_bytes(type)));
}

static uint64_t gw_align(const gw *w)
{
    uint32_t a = 32;
    for (size_t i = 0; i < w->n_kv; i++)
        if (w->kv[i].align)
            a = w->kv[i].align;
    return a;
}

static size_t pad_to(size_t x, uint64_t a)
{
    return x % a ? (size_t)(a - x % a) : 0;
}

int gw_write_mem(gw *w, uint8_t **out, size_t *len)
{
    gw_buf b = {0};
    uint64_t a = gw_align(w);
    int bad = buf_u32(&b, 0x46554747u) || buf_u32(&b, w->version) || buf_u64(&b, w->n_t) ||
              buf_u64(&b, w->n_kv);
    for (size_t i = 0; !bad && i < w->n_kv; i++) {
        w->kv[i].off = (int64_t)b.n;
        bad = buf_put(&b, w->kv[i].rec.p, w->kv[i].rec.n);
    }
    uint64_t rel = 0;
    for (size_t i = 0; !bad && i < w->n_t; i++) {
        w->t[i].info_off = (int64_t)b.n;
        bad = buf_put(&b, w->t[i].info.p, w->t[i].info.n) || buf_u64(&b, rel);
        rel += w->t[i].nbytes;
        rel += pad_to((size_t)rel, a);
    }
    if (!bad && w->n_t)
        bad = buf_zeros(&b, pad_to(b.n, a));
    for (size_t i = 0; !bad && i < w->n_t; i++) {
        w->t[i].data_off = (int64_t)b.n;
        bad = buf_put(&b, w->t[i].data, w->t[i].nbytes) ||
              (i + 1 < w->n_t && buf_zeros(&b, pad_to(b.n, a)));
    }
    if (bad) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    *len = b.n;
    return 0;
}

int gw_write_file(gw *w, const char *path)
{
    uint8_t *buf;
    size_t len;
    if (gw_write_mem(w, &buf, &len))
        return -1;
    FILE *f = fopen(path, "wb");
    int bad = !f || fwrite(buf, 1, len, f) != len;
    if (f && fclose(f))
        bad = 1;
    free(buf);
    return bad ? -1 : 0;
}

int64_t gw_tensor_info_offset(const gw *w, size_t i)
{
    return i < w->n_t ? w->t[i].info_off : -1;
}
int64_t gw_tensor_data_offset(const gw *w, size_t i)
{
    return i < w->n_t ? w->t[i].data_off : -1;
}
int64_t gw_kv_offset(const gw *w, size_t i)
{
    return i < w->n_kv ? w->kv[i].off : -1;
}
