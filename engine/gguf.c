/* gguf: validated reader for GGUF v2/v3.
 *
 * The whole file is parsed once at open with a bounds-checked cursor; every count read from the
 * file is capped by what the rest of the file could possibly hold before anything is allocated,
 * so a header claiming 2^64 keys costs nothing. After open the accessors only index tables built
 * here (keys and tensor names are hashed; string arrays get an offset table so element i is one
 * lookup). */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" read little-endian */
#define GGUF_DEFAULT_ALIGN 32u

typedef struct {
    const char *key;    /* NUL-terminated copy */
    gguf_vtype type;    /* value type */
    gguf_vtype elem;    /* arrays: element type */
    uint64_t n;         /* strings: byte length; arrays: element count */
    const uint8_t *val; /* scalars: the value; strings: the bytes; arrays: first element */
    uint64_t *str_offs; /* string arrays: offset (from val) of each element's length prefix */
    uint64_t key_off;   /* where the record starts, for messages */
} gguf_kv;

struct gguf {
    char *path;
    const uint8_t *base;
    size_t size;
    int mapped;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_start;

    uint64_t n_kv;
    gguf_kv *kv;
    uint64_t n_tensors;
    gguf_tensor *tensors;

    /* open-addressing hash tables of indices + 1 (0 = empty); capacity is a power of two */
    uint64_t *kv_hash, kv_cap;
    uint64_t *t_hash, t_cap;
};

/* ---- cursor ---- */

typedef struct {
    const uint8_t *p;
    size_t size;
    size_t off;
    const char *name;
} rd;

static size_t rd_left(const rd *r)
{
    return r->size - r->off;
}

static sd_err rd_bytes(rd *r, void *dst, size_t n, const char *what)
{
    if (rd_left(r) < n)
        return sd_fail(SD_EPROTO, "%s: offset %zu: truncated: %s needs %zu bytes, %zu left",
                       r->name, r->off, what, n, rd_left(r));
    memcpy(dst, r->p + r->off, n);
    r->off += n;
    return SD_OK;
}

static sd_err rd_u32(rd *r, uint32_t *v, const char *what)
{
    return rd_bytes(r, v, 4, what);
}
static sd_err rd_u64(rd *r, uint64_t *v, const char *what)
{
    return rd_bytes(r, v, 8, what);
}

/* A GGUF string: u64 length then bytes. Points into the buffer. */
static sd_err rd_str(rd *r, const uint8_t **s, uint64_t *len, const char *what)
{
    size_t at = r->off;
    uint64_t n = 0;
    sd_err e = rd_u64(r, &n, what);
    if (e)
        return e;
    if (n > rd_left(r))
        return sd_fail(SD_EPROTO, "%s: offset %zu: %s length %llu exceeds the %zu bytes left",
                       r->name, at, what, (unsigned long long)n, rd_left(r));
    *s = r->p + r->off;
    *len = n;
    r->off += (size_t)n;
    return SD_OK;
}

/* ---- hashing ---- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t hash_cap_for(uint64_t n)
{
    uint64_t c = 16;
    while (c < 2 * n)
        c <<= 1;
    return c;
}

/* Look `name` up; returns slot index; *found set to the stored index or -1. */
typedef const char *(*name_at_fn)(const gguf *g, uint64_t i);

static const char *kv_name_at(const gguf *g, uint64_t i)
{
    return g->kv[i].key;
}
static const char *t_name_at(const gguf *g, uint64_t i)
{
    return g->tensors[i].name;
}

static uint64_t hash_probe(const gguf *g, const uint64_t *tab, uint64_t cap, name_at_fn at,
                           const char *name, size_t len, int64_t *found)
{
    uint64_t mask = cap - 1, i = hash_bytes(name, len) & mask;
    *found = -1;
    for (;;) {
        uint64_t v = tab[i];
        if (!v)
            return i;
        const char *s = at(g, v - 1);
        if (strlen(s) == len && memcmp(s, name, len) == 0) {
            *found = (int64_t)(v - 1);
            return i;
        }
        i = (i + 1) & mask;
    }
}

/* Grow *p (zero-filled) to hold at least `need` elements. */
static int vec_grow(void **p, uint64_t *cap, uint64_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    uint64_t c = *cap ? *cap * 2 : 16;
    if (c < need)
        c = need;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q)
        return -1;
    memset((char *)q + *cap * elem, 0, (size_t)(c - *cap) * elem);
    *p = q;
    *cap = c;
    return 0;
}

/* Make the table big enough for n + 1 entries at load <= 1/2, rehashing the first n. */
static int hash_reserve(gguf *g, uint64_t **tab, uint64_t *cap, uint64_t n, name_at_fn at)
{
    if (*tab && 2 * (n + 1) <= *cap)
        return 0;
    uint64_t c = hash_cap_for(n + 1);
    uint64_t *t = calloc((size_t)c, sizeof *t);
    if (!t)
        return -1;
    free(*tab);
    *tab = t;
    *cap = c;
    for (uint64_t i = 0; i < n; i++) {
        const char *s = at(g, i);
        int64_t found;
        t[hash_probe(g, t, c, at, s, strlen(s), &found)] = i + 1;
    }
    return 0;
}

/* ---- helpers ---- */

static size_t vt_size(uint32_t t)
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
        return 0; /* string, array, unknown */
    }
}

static const char *vt_name(uint32_t t)
{
    static const char *const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                        "bool", "string", "array", "u64", "i64", "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

/* Names of all ggml type ids, supported or not, so an error can say what the file holds. */
static const char *ggml_type_name(uint32_t t)
{
    static const char *const names[] = {
        "F32",      "F16",      "Q4_0",    "Q4_1",  "Q4_2",   "Q4_3",  "Q5_0",  "Q5_1",
        "Q8_0",     "Q8_1",     "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",
        "IQ2_XXS",  "IQ2_XS",   "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
        "I8",       "I16",      "I32",     "I64",   "F64",    "IQ1_M", "BF16",  "Q4_0_4_4",
        "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",   "TQ2_0"};
    return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

static int has_nul(const uint8_t *s, uint64_t n)
{
    return memchr(s, 0, (size_t)n) != NULL;
}

static char *dup_n(const uint8_t *s, uint64_t n)
{
    char *d = malloc((size_t)n + 1);
    if (d) {
        memcpy(d, s, (size_t)n);
        d[n] = 0;
    }
    return d;
}

static sd_err check_bools(rd *r, const uint8_t *p, uint64_t n, size_t at, const char *key)
{
    for (uint64_t i = 0; i < n; i++)
        if (p[i] > 1)
            return sd_fail(SD_EPROTO, "%s: offset %zu: key '%s': bool value %u is not 0 or 1",
                           r->name, at + (size_t)i, key, p[i]);
    return SD_OK;
}

/* ---- parsing ---- */

static sd_err parse_kv(gguf *g, rd *r, gguf_kv *kv)
{
    sd_err e;
    const uint8_t *ks;
    uint64_t klen;
    kv->key_off = r->off;
    if ((e = rd_str(r, &ks, &klen, "key")))
        return e;
    if (klen == 0 || has_nul(ks, klen))
        return sd_fail(SD_EPROTO, "%s: offset %llu: key is empty or contains a NUL byte", r->name,
                       (unsigned long long)kv->key_off);
    if (!(kv->key = dup_n(ks, klen)))
        return sd_fail(SD_ENOMEM, "%s: out of memory", r->name);

    int64_t dup;
    hash_probe(g, g->kv_hash, g->kv_cap, kv_name_at, kv->key, (size_t)klen, &dup);
    if (dup >= 0)
        return sd_fail(SD_EPROTO, "%s: offset %llu: duplicate key '%s' (first at offset %llu)",
                       r->name, (unsigned long long)kv->key_off, kv->key,
                       (unsigned long long)g->kv[dup].key_off);

    size_t toff = r->off;
    uint32_t t = 0;
    if ((e = rd_u32(r, &t, "value type")))
        return e;
    if (t > GGUF_VT_FLOAT64)
        return sd_fail(SD_EPROTO, "%s: offset %zu: key '%s': unknown value type %u", r->name, toff,
                       kv->key, t);
    kv->type = (gguf_vtype)t;

    size_t voff = r->off;
    if (t == GGUF_VT_STRING) {
        const uint8_t *s;
        if ((e = rd_str(r, &s, &kv->n, "string value")))
            return e;
        kv->val = s;
        return SD_OK;
    }
    if (t != GGUF_VT_ARRAY) {
        size_t sz = vt_size(t);
        if (rd_left(r) < sz)
            return sd_fail(SD_EPROTO,
                           "%s: offset %zu: truncated: key '%s' value (%s) needs %zu bytes",
                           r->name, voff, kv->key, vt_name(t), sz);
        kv->val = r->p + r->off;
        kv->n = 1;
        if (t == GGUF_VT_BOOL && (e = check_bools(r, kv->val, 1, voff, kv->key)))
            return e;
        r->off += sz;
        return SD_OK;
    }

    uint32_t et = 0;
    if ((e = rd_u32(r, &et, "array element type")))
        return e;
    if (et == GGUF_VT_ARRAY)
        return sd_fail(SD_EUNSUPPORTED,
                       "%s: offset %zu: key '%s': arrays of arrays are not supported", r->name,
                       voff, kv->key);
    if (et > GGUF_VT_FLOAT64)
        return sd_fail(SD_EPROTO, "%s: offset %zu: key '%s': unknown array element type %u",
                       r->name, voff, kv->key, et);
    kv->elem = (gguf_vtype)et;
    size_t noff = r->off;
    uint64_t n = 0;
    if ((e = rd_u64(r, &n, "array length")))
        return e;
    size_t esz = et == GGUF_VT_STRING ? 8 : vt_size(et); /* minimum bytes per element */
    if (n > rd_left(r) / esz)
        return sd_fail(SD_EPROTO,
                       "%s: offset %zu: key '%s': array of %llu %s elements cannot fit in the %zu "
                       "bytes left",
                       r->name, noff, kv->key, (unsigned long long)n, vt_name(et), rd_left(r));
    kv->n = n;
    kv->val = r->p + r->off;
    if (et != GGUF_VT_STRING) {
        if (et == GGUF_VT_BOOL && (e = check_bools(r, kv->val, n, r->off, kv->key)))
            return e;
        r->off += (size_t)(n * esz);
        return SD_OK;
    }
    /* n <= left/8, so this table is never larger than the file itself */
    kv->str_offs = malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
    if (!kv->str_offs)
        return sd_fail(SD_ENOMEM, "%s: out of memory for %llu strings", r->name,
                       (unsigned long long)n);
    size_t start = r->off;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *s;
        uint64_t len;
        kv->str_offs[i] = r->off - start;
        if ((e = rd_str(r, &s, &len, "array string")))
            return e;
    }
    return SD_OK;
}

static sd_err parse_tensor(gguf *g, rd *r, gguf_tensor *t, uint64_t idx, uint32_t *raw_type,
                           uint64_t *rel_off)
{
    sd_err e;
    size_t at = r->off;
    const uint8_t *ns;
    uint64_t nlen;
    if ((e = rd_str(r, &ns, &nlen, "tensor name")))
        return e;
    if (nlen == 0 || has_nul(ns, nlen))
        return sd_fail(SD_EPROTO,
                       "%s: offset %zu: tensor %llu: name is empty or contains a NUL byte", r->name,
                       at, (unsigned long long)idx);
    char *name = dup_n(ns, nlen);
    if (!name)
        return sd_fail(SD_ENOMEM, "%s: out of memory", r->name);
    t->name = name;

    int64_t dup;
    hash_probe(g, g->t_hash, g->t_cap, t_name_at, name, (size_t)nlen, &dup);
    if (dup >= 0)
        return sd_fail(SD_EPROTO, "%s: offset %zu: duplicate tensor name '%s'", r->name, at, name);

    size_t doff = r->off;
    uint32_t nd = 0;
    if ((e = rd_u32(r, &nd, "tensor n_dims")))
        return e;
    if (nd < 1 || nd > GGUF_MAX_DIMS)
        return sd_fail(SD_EPROTO, "%s: offset %zu: tensor '%s': n_dims %u not in 1..%d", r->name,
                       doff, name, nd, GGUF_MAX_DIMS);
    t->n_dims = (int)nd;
    uint64_t prod = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        size_t eoff = r->off;
        uint64_t ne = 0;
        if ((e = rd_u64(r, &ne, "tensor dimension")))
            return e;
        if (ne == 0)
            return sd_fail(SD_EPROTO, "%s: offset %zu: tensor '%s': ne[%u] is 0", r->name, eoff,
                           name, d);
        if (prod > UINT64_MAX / ne)
            return sd_fail(SD_EPROTO, "%s: offset %zu: tensor '%s': element count overflows",
                           r->name, eoff, name);
        prod *= ne;
        t->ne[d] = ne;
    }
    t->n_elems = prod;

    size_t toff = r->off;
    uint32_t ty = 0;
    if ((e = rd_u32(r, &ty, "tensor type")))
        return e;
    if (!dtype_supported(ty))
        return sd_fail(SD_EUNSUPPORTED,
                       "%s: offset %zu: tensor '%s': type %u (%s) unsupported; "
                       "supported: %s",
                       r->name, toff, name, ty, ggml_type_name(ty), dtype_supported_list());
    t->type = (sd_dtype)ty;
    *raw_type = ty;
    uint64_t be = dtype_block_elems(t->type), bb = dtype_block_bytes(t->type);
    if (t->ne[0] % be)
        return sd_fail(SD_EPROTO,
                       "%s: offset %zu: tensor '%s': ne[0]=%llu is not a multiple of "
                       "the %s block size %llu",
                       r->name, doff, name, (unsigned long long)t->ne[0], dtype_name(ty),
                       (unsigned long long)be);
    uint64_t blocks = prod / be;
    if (blocks > UINT64_MAX / bb)
        return sd_fail(SD_EPROTO, "%s: offset %zu: tensor '%s': byte size overflows", r->name, doff,
                       name);
    t->nbytes = blocks * bb;

    size_t ooff = r->off;
    if ((e = rd_u64(r, rel_off, "tensor data offset")))
        return e;
    if (*rel_off % g->alignment)
        return sd_fail(SD_EPROTO,
                       "%s: offset %zu: tensor '%s': data offset %llu is not a "
                       "multiple of the alignment %u",
                       r->name, ooff, name, (unsigned long long)*rel_off, g->alignment);
    return SD_OK;
}

/* Merge sort of tensor indices by file offset (qsort has no context argument). */
static void sort_idx(const gguf *g, uint64_t *idx, uint64_t *tmp, uint64_t n)
{
    if (n < 2)
        return;
    uint64_t h = n / 2;
    sort_idx(g, idx, tmp, h);
    sort_idx(g, idx + h, tmp, n - h);
    uint64_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        if (g->tensors[idx[j]].file_offset < g->tensors[idx[i]].file_offset)
            tmp[k++] = idx[j++];
        else
            tmp[k++] = idx[i++];
    }
    while (i < h)
        tmp[k++] = idx[i++];
    while (j < n)
        tmp[k++] = idx[j++];
    memcpy(idx, tmp, (size_t)n * sizeof *idx);
}

static sd_err parse(gguf *g)
{
    rd r = {g->base, g->size, 0, g->path};
    sd_err e;
    uint32_t magic = 0, ver = 0;
    if ((e = rd_u32(&r, &magic, "magic")))
        return e;
    if (magic != GGUF_MAGIC)
        return sd_fail(SD_EPROTO, "%s: offset 0: bad magic 0x%08x (not a GGUF file)", g->path,
                       magic);
    if ((e = rd_u32(&r, &ver, "version")))
        return e;
    if (ver == 1)
        return sd_fail(SD_EUNSUPPORTED,
                       "%s: offset 4: GGUF version 1 is unsupported (only v2 and v3)", g->path);
    if ((ver & 0xffff) == 0 && ver != 0)
        return sd_fail(SD_EUNSUPPORTED,
                       "%s: offset 4: version 0x%08x looks big-endian; only little-endian GGUF "
                       "is supported",
                       g->path, ver);
    if (ver != 2 && ver != 3)
        return sd_fail(SD_EUNSUPPORTED,
                       "%s: offset 4: GGUF version %u unsupported (only v2 and v3)", g->path, ver);
    g->version = ver;

    uint64_t nt = 0, nkv = 0;
    if ((e = rd_u64(&r, &nt, "tensor count")) || (e = rd_u64(&r, &nkv, "key/value count")))
        return e;
    /* Cap the counts by what the rest of the file can hold before allocating anything: the
     * smallest key/value record is 8 (key length) + 1 (key) + 4 (type) + 1 (value) = 14 bytes
     * (13 is used, conservatively); the smallest tensor record is 8 (name length) + 1 (name)
     * + 4 (n_dims) + 8 (ne[0]) + 4 (type) + 8 (offset) = 33 bytes. */
    size_t left = rd_left(&r);
    if (nkv > left / 13)
        return sd_fail(SD_EPROTO, "%s: offset 16: key/value count %llu cannot fit in %zu bytes",
                       g->path, (unsigned long long)nkv, left);
    if (nt > left / 33)
        return sd_fail(SD_EPROTO, "%s: offset 8: tensor count %llu cannot fit in %zu bytes",
                       g->path, (unsigned long long)nt, left);

    /* Tables grow with the records actually parsed, so a large but bounded count on a large
     * file costs memory only as far as its records are real. */
    uint64_t kv_vcap = 0;
    for (uint64_t i = 0; i < nkv; i++) {
        if (vec_grow((void **)&g->kv, &kv_vcap, i + 1, sizeof *g->kv) ||
            hash_reserve(g, &g->kv_hash, &g->kv_cap, i, kv_name_at))
            return sd_fail(SD_ENOMEM, "%s: out of memory", g->path);
        gguf_kv *kv = &g->kv[i];
        g->n_kv = i + 1; /* so close frees this entry's allocations even on failure */
        if ((e = parse_kv(g, &r, kv)))
            return e;
        int64_t dup;
        uint64_t slot =
            hash_probe(g, g->kv_hash, g->kv_cap, kv_name_at, kv->key, strlen(kv->key), &dup);
        g->kv_hash[slot] = i + 1;
    }
    if (hash_reserve(g, &g->kv_hash, &g->kv_cap, nkv, kv_name_at) ||
        hash_reserve(g, &g->t_hash, &g->t_cap, 0, t_name_at))
        return sd_fail(SD_ENOMEM, "%s: out of memory", g->path);

    g->alignment = GGUF_DEFAULT_ALIGN;
    int64_t ai = gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        const gguf_kv *kv = &g->kv[ai];
        if (kv->type != GGUF_VT_UINT32)
            return sd_fail(SD_EPROTO,
                           "%s: offset %llu: general.alignment has type %s, expected u32", g->path,
                           (unsigned long long)kv->key_off, vt_name(kv->type));
        uint32_t a;
        memcpy(&a, kv->val, 4);
        if (a == 0 || (a & (a - 1)))
            return sd_fail(SD_EPROTO, "%s: offset %llu: general.alignment %u is not a power of two",
                           g->path, (unsigned long long)(kv->val - g->base), a);
        g->alignment = a;
    }

    uint64_t *rel = NULL, t_vcap = 0, rel_cap = 0, io_cap = 0;
    size_t *info_off = NULL;
    for (uint64_t i = 0; i < nt; i++) {
        uint32_t ty = 0;
        if (vec_grow((void **)&g->tensors, &t_vcap, i + 1, sizeof *g->tensors) ||
            vec_grow((void **)&rel, &rel_cap, i + 1, sizeof *rel) ||
            vec_grow((void **)&info_off, &io_cap, i + 1, sizeof *info_off) ||
            hash_reserve(g, &g->t_hash, &g->t_cap, i, t_name_at)) {
            e = sd_fail(SD_ENOMEM, "%s: out of memory", g->path);
            goto out;
        }
        g->n_tensors = i + 1;
        info_off[i] = r.off;
        if ((e = parse_tensor(g, &r, &g->tensors[i], i, &ty, &rel[i])))
            goto out;
        int64_t dup;
        uint64_t slot = hash_probe(g, g->t_hash, g->t_cap, t_name_at, g->tensors[i].name,
                                   strlen(g->tensors[i].name), &dup);
        g->t_hash[slot] = i + 1;
    }

    /* data section: after the tensor infos, rounded up to the alignment */
    uint64_t ds = r.off, a = g->alignment;
    ds = ds % a ? ds + (a - ds % a) : ds; /* r.off < 2^63 in practice; no overflow for a <= 2^31 */
    g->data_start = ds;
    for (uint64_t i = 0; i < nt; i++) {
        gguf_tensor *t = &g->tensors[i];
        uint64_t size = g->size;
        if (ds > size || rel[i] > size - ds || t->nbytes > size - ds - rel[i]) {
            e = sd_fail(SD_EPROTO,
                        "%s: offset %zu: tensor '%s': data [%llu + %llu, %llu bytes] is outside "
                        "the file (%zu bytes)",
                        g->path, info_off[i], t->name, (unsigned long long)ds,
                        (unsigned long long)rel[i], (unsigned long long)t->nbytes, g->size);
            goto out;
        }
        t->file_offset = ds + rel[i];
        t->data = g->base + t->file_offset;
    }
    if (nt > 1) {
        uint64_t *idx = malloc((size_t)nt * sizeof *idx), *tmp = malloc((size_t)nt * sizeof *tmp);
        if (!idx || !tmp) {
            free(idx);
            free(tmp);
            e = sd_fail(SD_ENOMEM, "%s: out of memory", g->path);
            goto out;
        }
        for (uint64_t i = 0; i < nt; i++)
            idx[i] = i;
        sort_idx(g, idx, tmp, nt);
        for (uint64_t i = 1; i < nt; i++) {
            const gguf_tensor *p = &g->tensors[idx[i - 1]], *q = &g->tensors[idx[i]];
            if (p->file_offset + p->nbytes > q->file_offset) {
                e = sd_fail(SD_EPROTO,
                            "%s: offset %zu: tensor '%s': data at %llu overlaps tensor '%s' "
                            "(%llu..%llu)",
                            g->path, info_off[idx[i]], q->name, (unsigned long long)q->file_offset,
                            p->name, (unsigned long long)p->file_offset,
                            (unsigned long long)(p->file_offset + p->nbytes));
                break;
            }
        }
        free(idx);
        free(tmp);
    }
out:
    free(rel);
    free(info_off);
    return e;
}

static sd_err finish_open(gguf *g, gguf **out)
{
    sd_err e = parse(g);
    if (e) {
        gguf_close(g);
        return e;
    }
    *out = g;
    return SD_OK;
}

sd_err gguf_open_mem(gguf **out, const void *buf, size_t len, const char *name)
{
    if (!out)
        return sd_fail(SD_EINVAL, "gguf_open_mem: out is NULL");
    *out = NULL;
    if (!name)
        name = "<memory>";
    if (!buf && len)
        return sd_fail(SD_EINVAL, "%s: NULL buffer", name);
    gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(name))) {
        free(g);
        return sd_fail(SD_ENOMEM, "%s: out of memory", name);
    }
    g->base = buf;
    g->size = len;
    return finish_open(g, out);
}

sd_err gguf_open(gguf **out, const char *path)
{
    if (!out || !path)
        return sd_fail(SD_EINVAL, "gguf_open: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sd_fail(errno == ENOENT ? SD_ENOTFOUND : SD_EIO, "%s: cannot open: %s", path,
                       strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return sd_fail(SD_EIO, "%s: not a readable regular file", path);
    }
    size_t size = (size_t)st.st_size;
    const void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int err = errno;
            close(fd);
            return sd_fail(SD_EIO, "%s: mmap of %zu bytes failed: %s", path, size, strerror(err));
        }
    }
    close(fd);
    gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        if (map)
            munmap((void *)map, size);
        return sd_fail(SD_ENOMEM, "%s: out of memory", path);
    }
    g->base = map;
    g->size = size;
    g->mapped = map != NULL;
    return finish_open(g, out);
}

void gguf_close(gguf *g)
{
    if (!g)
        return;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        free((void *)g->kv[i].key);
        free(g->kv[i].str_offs);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++)
        free((void *)g->tensors[i].name);
    free(g->kv);
    free(g->kv_hash);
    free(g->tensors);
    free(g->t_hash);
    if (g->mapped)
        munmap((void *)g->base, g->size);
    free(g->path);
    free(g);
}

const char *gguf_path(const gguf *g)
{
    return g->path;
}
uint32_t gguf_version(const gguf *g)
{
    return g->version;
}
size_t gguf_file_size(const gguf *g)
{
    return g->size;
}

/* ---- metadata ---- */

uint64_t gguf_n_kv(const gguf *g)
{
    return g->n_kv;
}

const char *gguf_kv_key(const gguf *g, uint64_t i)
{
    return i < g->n_kv ? g->kv[i].key : NULL;
}

int64_t gguf_find_key(const gguf *g, const char *key)
{
    if (!key || !g->kv_hash)
        return -1;
    int64_t found;
    hash_probe(g, g->kv_hash, g->kv_cap, kv_name_at, key, strlen(key), &found);
    return found;
}

gguf_vtype gguf_kv_type(const gguf *g, int64_t i)
{
    return i >= 0 && (uint64_t)i < g->n_kv ? g->kv[i].type : (gguf_vtype)-1;
}

static const gguf_kv *kv_get(const gguf *g, const char *key, sd_err *e)
{
    int64_t i = gguf_find_key(g, key);
    if (i < 0) {
        *e = sd_fail(SD_ENOTFOUND, "%s: key '%s' not found", g->path, key ? key : "(null)");
        return NULL;
    }
    *e = SD_OK;
    return &g->kv[i];
}

/* Any integer kv as a wide value: *neg set when negative (then *mag is the magnitude). */
static int kv_int(const gguf_kv *kv, uint64_t *mag, int *neg)
{
    *neg = 0;
    switch (kv->type) {
    case GGUF_VT_UINT8:
        *mag = kv->val[0];
        return 1;
    case GGUF_VT_UINT16: {
        uint16_t v;
        memcpy(&v, kv->val, 2);
        *mag = v;
        return 1;
    }
    case GGUF_VT_UINT32: {
        uint32_t v;
        memcpy(&v, kv->val, 4);
        *mag = v;
        return 1;
    }
    case GGUF_VT_UINT64:
        memcpy(mag, kv->val, 8);
        return 1;
    case GGUF_VT_INT8:
    case GGUF_VT_INT16:
    case GGUF_VT_INT32:
    case GGUF_VT_INT64: {
        int64_t v;
        if (kv->type == GGUF_VT_INT8) {
            v = (int8_t)kv->val[0];
        } else if (kv->type == GGUF_VT_INT16) {
            int16_t x;
            memcpy(&x, kv->val, 2);
            v = x;
        } else if (kv->type == GGUF_VT_INT32) {
            int32_t x;
            memcpy(&x, kv->val, 4);
            v = x;
        } else {
            memcpy(&v, kv->val, 8);
        }
        *neg = v < 0;
        *mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
        return 1;
    }
    default:
        return 0;
    }
}

sd_err gguf_get_u32(const gguf *g, const char *key, uint32_t *out)
{
    sd_err e;
    const gguf_kv *kv = kv_get(g, key, &e);
    if (!kv)
        return e;
    uint64_t m;
    int neg;
    if (!kv_int(kv, &m, &neg))
        return sd_fail(SD_EPROTO, "%s: key '%s' has type %s, expected an integer", g->path, key,
                       vt_name(kv->type));
    if ((neg && m) || m > UINT32_MAX)
        return sd_fail(SD_EPROTO, "%s: key '%s': value %s%llu does not fit in u32", g->path, key,
                       neg ? "-" : "", (unsigned long long)m);
    *out = (uint32_t)m;
    return SD_OK;
}

sd_err gguf_get_i32(const gguf *g, const char *key, int32_t *out)
{
    sd_err e;
    const gguf_kv *kv = kv_get(g, key, &e);
    if (!kv)
        return e;
    uint64_t m;
    int neg;
    if (!kv_int(kv, &m, &neg))
        return sd_fail(SD_EPROTO, "%s: key '%s' has type %s, expected an integer", g->path, key,
                       vt_name(kv->type));
    if (neg ? m > (uint64_t)INT32_MAX + 1 : m > INT32_MAX)
        return sd_fail(SD_EPROTO, "%s: key '%s': value %s%llu does not fit in i32", g->path, key,
                       neg ? "-" : "", (unsigned long long)m);
    *out = neg ? (int32_t)(-(int64_t)m) : (int32_t)m;
    return SD_OK;
}

sd_err gguf_get_f32(const gguf *g, const char *key, float *out)
{
    sd_err e;
    const gguf_kv *kv = kv_get(g, key, &e);
    if (!kv)
        return e;
    if (kv->type == GGUF_VT_FLOAT32) {
        memcpy(out, kv->val, 4);
    } else if (kv->type == GGUF_VT_FLOAT64) {
        double d;
        memcpy(&d, kv->val, 8);
        *out = (float)d;
    } else {
        return sd_fail(SD_EPROTO, "%s: key '%s' has type %s, expected f32 or f64", g->path, key,
                       vt_name(kv->type));
    }
    return SD_OK;
}

sd_err gguf_get_bool(const gguf *g, const char *key, int *out)
{
    sd_err e;
    const gguf_kv *kv = kv_get(g, key, &e);
    if (!kv)
        return e;
    if (kv->type != GGUF_VT_BOOL)
        return sd_fail(SD_EPROTO, "%s: key '%s' has type %s, expected bool", g->path, key,
                       vt_name(kv->type));
    *out = kv->val[0] != 0;
    return SD_OK;
}

sd_err gguf_get_str(const gguf *g, const char *key, const char **s, size_t *len)
{
    sd_err e;
    const gguf_kv *kv = kv_get(g, key, &e);
    if (!kv)
        return e;
    if (kv->type != GGUF_VT_STRING)
        return sd_fail(SD_EPROTO, "%s: key '%s' has type %s, expected string", g->path, key,
                       vt_name(kv->type));
    *s = (const char *)kv->val;
    *len = (size_t)kv->n;
    return SD_OK;
}

sd_err gguf_get_arr(const gguf *g, const char *key, gguf_vtype *elem_type, uint64_t *n,
                    const void **data)
{
    sd_err e;
    const gguf_kv *kv = kv_get(g, key, &e);
    if (!kv)
        return e;
    if (kv->type != GGUF_VT_ARRAY)
        return sd_fail(SD_EPROTO, "%s: key '%s' has type %s, expected array", g->path, key,
                       vt_name(kv->type));
    if (elem_type)
        *elem_type = kv->elem;
    if (n)
        *n = kv->n;
    if (data)
        *data = kv->val;
    return SD_OK;
}

sd_err gguf_get_arr_str(const gguf *g, const char *key, uint64_t idx, const char **s, size_t *len)
{
    sd_err e;
    const gguf_kv *kv = kv_get(g, key, &e);
    if (!kv)
        return e;
    if (kv->type != GGUF_VT_ARRAY || kv->elem != GGUF_VT_STRING)
        return sd_fail(SD_EPROTO, "%s: key '%s' is not a string array", g->path, key);
    if (idx >= kv->n)
        return sd_fail(SD_ERANGE, "%s: key '%s': index %llu out of range (%llu strings)", g->path,
                       key, (unsigned long long)idx, (unsigned long long)kv->n);
    const uint8_t *p = kv->val + kv->str_offs[idx];
    uint64_t l;
    memcpy(&l, p, 8);
    *s = (const char *)p + 8;
    *len = (size_t)l;
    return SD_OK;
}

/* ---- tensors ---- */

uint64_t gguf_n_tensors(const gguf *g)
{
    return g->n_tensors;
}

const gguf_tensor *gguf_tensor_at(const gguf *g, uint64_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf *g, const char *name)
{
    if (!name || !g->t_hash)
        return NULL;
    int64_t found;
    hash_probe(g, g->t_hash, g->t_cap, t_name_at, name, strlen(name), &found);
    return found >= 0 ? &g->tensors[found] : NULL;
}
