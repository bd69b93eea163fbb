/* test_gguf: the GGUF loader against synthetic files written with tests/lib/gguf_write —
 * round trips of every metadata type and every supported tensor type, v2, integer conversions,
 * and a table of corruptions (each with its error code, the offset and the name it must
 * report), truncation at every byte, and seeded random byte flips. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "gguf_write.h"
#include "testutil.h"

/* ---- helpers ---- */

static void put_u32(uint8_t *b, int64_t off, uint32_t v)
{
    memcpy(b + off, &v, 4);
}
static void put_u64(uint8_t *b, int64_t off, uint64_t v)
{
    memcpy(b + off, &v, 8);
}

static void write_mem(gw *w, uint8_t **buf, size_t *len)
{
    assert_int_equal(gw_write_mem(w, buf, len), 0);
}

/* Open a private, exactly-sized copy so that ASan flags any read past the end. */
static sd_err open_copy(gguf **g, const uint8_t *buf, size_t len)
{
    uint8_t *c = malloc(len ? len : 1);
    assert_non_null(c);
    memcpy(c, buf, len);
    sd_err e = gguf_open_mem(g, c, len, "t.gguf");
    if (e == SD_OK) {
        /* the object points into the buffer: keep the copy alive as long as the object
         * by re-opening on the caller's buffer instead */
        gguf_close(*g);
        e = gguf_open_mem(g, buf, len, "t.gguf");
        assert_int_equal(e, SD_OK);
    }
    free(c);
    return e;
}

/* Read every accessor of an opened file; the fuzzer does the same. */
static void touch_all(const gguf *g)
{
    volatile uint64_t sink = gguf_version(g) + gguf_file_size(g);
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const char *k = gguf_kv_key(g, i);
        assert_non_null(k);
        assert_int_equal(gguf_find_key(g, k), (int64_t)i);
        uint32_t u;
        int32_t s;
        float f;
        int b;
        const char *str;
        size_t len;
        gguf_vtype et;
        uint64_t n;
        const void *d;
        sink += gguf_get_u32(g, k, &u) + gguf_get_i32(g, k, &s) + gguf_get_f32(g, k, &f) +
                gguf_get_bool(g, k, &b);
        if (gguf_get_str(g, k, &str, &len) == SD_OK && len)
            sink += (uint8_t)str[len - 1];
        if (gguf_get_arr(g, k, &et, &n, &d) == SD_OK && et == GGUF_VT_STRING) {
            for (uint64_t j = 0; j < n && j < 64; j++) {
                assert_int_equal(gguf_get_arr_str(g, k, j, &str, &len), SD_OK);
                if (len)
                    sink += (uint8_t)str[len - 1];
            }
            assert_int_equal(gguf_get_arr_str(g, k, n, &str, &len), SD_ERANGE);
        }
    }
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        assert_non_null(t);
        assert_ptr_equal(gguf_find_tensor(g, t->name), t);
        const uint8_t *p = t->data;
        sink += p[0] + p[t->nbytes - 1];
    }
    assert_null(gguf_tensor_at(g, gguf_n_tensors(g)));
    (void)sink;
}

/* ---- round trip ---- */

static const sd_dtype all_dtypes[] = {SD_DTYPE_F32,  SD_DTYPE_F16,  SD_DTYPE_BF16, SD_DTYPE_Q8_0,
                                      SD_DTYPE_Q4_0, SD_DTYPE_Q4_1, SD_DTYPE_Q4_K, SD_DTYPE_Q6_K};
#define N_DTYPES (sizeof all_dtypes / sizeof all_dtypes[0])

static void fill(tu_rng *r, void *p, size_t n)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)tu_next(r);
}

static void roundtrip(uint32_t version, uint32_t align, int via_file)
{
    tu_rng r;
    tu_rng_init(&r, tu_seed() + version * 131 + align + (uint64_t)via_file);
    gw *w = gw_init();
    gw_set_version(w, version);
    if (align)
        assert_int_equal(gw_add_u32(w, "general.alignment", align), 0);

    uint8_t u8 = (uint8_t)tu_next(&r);
    int8_t i8 = (int8_t)tu_next(&r);
    uint16_t u16 = (uint16_t)tu_next(&r);
    int16_t i16 = (int16_t)tu_next(&r);
    uint32_t u32 = (uint32_t)tu_next(&r);
    int32_t i32 = (int32_t)tu_next(&r);
    uint64_t u64 = tu_next(&r);
    int64_t i64 = (int64_t)tu_next(&r);
    float f32 = tu_normal(&r);
    double f64 = (double)tu_normal(&r) * 1e-3;
    int bl = (int)(tu_next(&r) & 1);
    assert_int_equal(gw_add_u8(w, "k.u8", u8), 0);
    assert_int_equal(gw_add_i8(w, "k.i8", i8), 0);
    assert_int_equal(gw_add_u16(w, "k.u16", u16), 0);
    assert_int_equal(gw_add_i16(w, "k.i16", i16), 0);
    assert_int_equal(gw_add_u32(w, "k.u32", u32), 0);
    assert_int_equal(gw_add_i32(w, "k.i32", i32), 0);
    assert_int_equal(gw_add_u64(w, "k.u64", u64), 0);
    assert_int_equal(gw_add_i64(w, "k.i64", i64), 0);
    assert_int_equal(gw_add_f32(w, "k.f32", f32), 0);
    assert_int_equal(gw_add_f64(w, "k.f64", f64), 0);
    assert_int_equal(gw_add_bool(w, "k.bool", bl), 0);
    assert_int_equal(gw_add_str(w, "k.str", "héllo wörld"), 0);
    assert_int_equal(gw_add_str(w, "k.empty", ""), 0);

    /* one array of every element type, random contents */
    static const gguf_vtype arr_types[] = {
        GGUF_VT_UINT8,   GGUF_VT_INT8, GGUF_VT_UINT16, GGUF_VT_INT16, GGUF_VT_UINT32, GGUF_VT_INT32,
        GGUF_VT_FLOAT32, GGUF_VT_BOOL, GGUF_VT_UINT64, GGUF_VT_INT64, GGUF_VT_FLOAT64};
    static const size_t arr_size[] = {1, 1, 2, 2, 4, 4, 4, 1, 8, 8, 8};
    enum { NA = sizeof arr_types / sizeof arr_types[0] };
    uint8_t arr_data[NA][8 * 40];
    uint64_t arr_n[NA];
    for (int i = 0; i < NA; i++) {
        char key[32];
        snprintf(key, sizeof key, "arr.%d", i);
        arr_n[i] = tu_below(&r, 40); /* includes empty arrays */
        fill(&r, arr_data[i], sizeof arr_data[i]);
        if (arr_types[i] == GGUF_VT_BOOL)
            for (int j = 0; j < 40; j++)
                arr_data[i][j] &= 1;
        assert_int_equal(gw_add_arr(w, key, arr_types[i], arr_n[i], arr_data[i]), 0);
    }
    enum { NS = 300 };
    static char strs[NS][24];
    const char *sp[NS];
    for (int i = 0; i < NS; i++) {
        int n = (int)tu_below(&r, 20);
        for (int j = 0; j < n; j++)
            strs[i][j] = (char)(' ' + tu_below(&r, 95));
        strs[i][n] = 0;
        sp[i] = strs[i];
    }
    assert_int_equal(gw_add_arr_str(w, "arr.str", NS, sp), 0);

    /* one tensor of every supported type, with random shapes and random bytes */
    void *tdata[N_DTYPES];
    uint64_t tne[N_DTYPES][4];
    int tnd[N_DTYPES];
    size_t tbytes[N_DTYPES];
    for (size_t i = 0; i < N_DTYPES; i++) {
        sd_dtype t = all_dtypes[i];
        tnd[i] = 1 + (int)tu_below(&r, 4);
        tne[i][0] = dtype_block_elems(t) * (1 + tu_below(&r, 3));
        for (int d = 1; d < 4; d++)
            tne[i][d] = d < tnd[i] ? 1 + tu_below(&r, 3) : 1;
        uint64_t n = tne[i][0] * tne[i][1] * tne[i][2] * tne[i][3];
        tbytes[i] = n / dtype_block_elems(t) * dtype_block_bytes(t);
        tdata[i] = malloc(tbytes[i]);
        fill(&r, tdata[i], tbytes[i]);
        char name[32];
        snprintf(name, sizeof name, "t.%s", dtype_name(t));
        assert_int_equal(gw_add_tensor(w, name, t, tnd[i], tne[i], tdata[i]), 0);
    }

    uint8_t *buf;
    size_t len;
    write_mem(w, &buf, &len);
    gguf *g = NULL;
    char path[] = "/tmp/test_gguf_XXXXXX";
    if (via_file) {
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        close(fd);
        assert_int_equal(gw_write_file(w, path), 0);
        assert_int_equal(gguf_open(&g, path), SD_OK);
        assert_string_equal(gguf_path(g), path);
    } else {
        assert_int_equal(gguf_open_mem(&g, buf, len, "rt.gguf"), SD_OK);
    }
    assert_int_equal(gguf_version(g), version);
    assert_int_equal(gguf_file_size(g), len);
    assert_int_equal(gguf_n_kv(g), 13 + NA + 1 + (align ? 1 : 0));
    assert_int_equal(gguf_n_tensors(g), N_DTYPES);

    uint32_t gu32;
    int32_t gi32;
    float gf;
    int gb;
    const char *s;
    size_t sl;
    assert_int_equal(gguf_get_u32(g, "k.u32", &gu32), SD_OK);
    assert_int_equal(gu32, u32);
    assert_int_equal(gguf_get_i32(g, "k.i32", &gi32), SD_OK);
    assert_int_equal(gi32, i32);
    assert_int_equal(gguf_get_u32(g, "k.u8", &gu32), SD_OK);
    assert_int_equal(gu32, u8);
    assert_int_equal(gguf_get_i32(g, "k.i8", &gi32), SD_OK);
    assert_int_equal(gi32, i8);
    assert_int_equal(gguf_get_u32(g, "k.u16", &gu32), SD_OK);
    assert_int_equal(gu32, u16);
    assert_int_equal(gguf_get_i32(g, "k.i16", &gi32), SD_OK);
    assert_int_equal(gi32, i16);
    assert_int_equal(gguf_get_f32(g, "k.f32", &gf), SD_OK);
    assert_memory_equal(&gf, &f32, 4);
    assert_int_equal(gguf_get_f32(g, "k.f64", &gf), SD_OK);
    assert_true(gf == (float)f64);
    assert_int_equal(gguf_get_bool(g, "k.bool", &gb), SD_OK);
    assert_int_equal(gb, bl);
    assert_int_equal(gguf_get_str(g, "k.str", &s, &sl), SD_OK);
    assert_int_equal(sl, strlen("héllo wörld"));
    assert_memory_equal(s, "héllo wörld", sl);
    assert_int_equal(gguf_get_str(g, "k.empty", &s, &sl), SD_OK);
    assert_int_equal(sl, 0);
    int64_t ki = gguf_find_key(g, "k.u64");
    assert_true(ki >= 0);
    assert_int_equal(gguf_kv_type(g, ki), GGUF_VT_UINT64);
    assert_int_equal(gguf_kv_type(g, gguf_find_key(g, "k.i64")), GGUF_VT_INT64);
    /* u64/i64 values convert only when in range */
    sd_err e64 = gguf_get_u32(g, "k.u64", &gu32);
    assert_int_equal(e64, u64 <= UINT32_MAX ? SD_OK : SD_EPROTO);

    for (int i = 0; i < NA; i++) {
        char key[32];
        snprintf(key, sizeof key, "arr.%d", i);
        gguf_vtype et;
        uint64_t n;
        const void *d;
        assert_int_equal(gguf_get_arr(g, key, &et, &n, &d), SD_OK);
        assert_int_equal(et, arr_types[i]);
        assert_int_equal(n, arr_n[i]);
        if (n)
            assert_memory_equal(d, arr_data[i], n * arr_size[i]);
    }
    gguf_vtype et;
    uint64_t n;
    assert_int_equal(gguf_get_arr(g, "arr.str", &et, &n, NULL), SD_OK);
    assert_int_equal(et, GGUF_VT_STRING);
    assert_int_equal(n, NS);
    for (int i = 0; i < NS; i++) {
        assert_int_equal(gguf_get_arr_str(g, "arr.str", (uint64_t)i, &s, &sl), SD_OK);
        assert_int_equal(sl, strlen(strs[i]));
        assert_memory_equal(s, strs[i], sl);
    }

    uint32_t a = align ? align : 32;
    for (size_t i = 0; i < N_DTYPES; i++) {
        char name[32];
        snprintf(name, sizeof name, "t.%s", dtype_name(all_dtypes[i]));
        const gguf_tensor *t = gguf_find_tensor(g, name);
        assert_non_null(t);
        assert_ptr_equal(t, gguf_tensor_at(g, i));
        assert_string_equal(t->name, name);
        assert_int_equal(t->type, all_dtypes[i]);
        assert_int_equal(t->n_dims, tnd[i]);
        for (int d = 0; d < 4; d++)
            assert_int_equal(t->ne[d], tne[i][d]);
        assert_int_equal(t->n_elems, tne[i][0] * tne[i][1] * tne[i][2] * tne[i][3]);
        assert_int_equal(t->nbytes, tbytes[i]);
        assert_int_equal(t->file_offset, (uint64_t)gw_tensor_data_offset(w, i));
        assert_int_equal(t->file_offset % a, 0);
        assert_memory_equal(t->data, tdata[i], tbytes[i]);
        free(tdata[i]);
    }
    touch_all(g);
    gguf_close(g);
    if (via_file)
        unlink(path);
    free(buf);
    gw_free(w);
}

static void test_roundtrip_v3_mem(void **st)
{
    roundtrip(3, 0, 0);
}
static void test_roundtrip_v3_file(void **st)
{
    roundtrip(3, 0, 1);
}
static void test_roundtrip_v2(void **st)
{
    roundtrip(2, 0, 0);
}
static void test_roundtrip_align64(void **st)
{
    roundtrip(3, 64, 1);
}
static void test_roundtrip_align1(void **st)
{
    roundtrip(3, 1, 0);
}

/* ---- integer conversion ---- */

typedef struct {
    gguf_vtype type;
    int64_t v; /* value as written (u64 cases use the bit pattern) */
    sd_err want_u32;
    uint32_t u32;
    sd_err want_i32;
    int32_t i32;
} conv_case;

static void test_int_conversions(void **st)
{
    static const conv_case cases[] = {
        {GGUF_VT_UINT8, 255, SD_OK, 255, SD_OK, 255},
        {GGUF_VT_INT8, -1, SD_EPROTO, 0, SD_OK, -1},
        {GGUF_VT_INT8, 127, SD_OK, 127, SD_OK, 127},
        {GGUF_VT_UINT16, 65535, SD_OK, 65535, SD_OK, 65535},
        {GGUF_VT_INT16, -32768, SD_EPROTO, 0, SD_OK, -32768},
        {GGUF_VT_UINT32, 4294967295LL, SD_OK, 4294967295u, SD_EPROTO, 0},
        {GGUF_VT_UINT32, 2147483647LL, SD_OK, 2147483647u, SD_OK, 2147483647},
        {GGUF_VT_INT32, -2147483647LL - 1, SD_EPROTO, 0, SD_OK, INT32_MIN},
        {GGUF_VT_INT32, 0, SD_OK, 0, SD_OK, 0},
        {GGUF_VT_UINT64, 4294967296LL, SD_EPROTO, 0, SD_EPROTO, 0},
        {GGUF_VT_UINT64, 49152, SD_OK, 49152, SD_OK, 49152},
        {GGUF_VT_UINT64, -1 /* 2^64-1 */, SD_EPROTO, 0, SD_EPROTO, 0},
        {GGUF_VT_INT64, -2147483648LL, SD_EPROTO, 0, SD_OK, INT32_MIN},
        {GGUF_VT_INT64, -2147483649LL, SD_EPROTO, 0, SD_EPROTO, 0},
        {GGUF_VT_INT64, INT64_MIN, SD_EPROTO, 0, SD_EPROTO, 0},
        {GGUF_VT_INT64, 4294967295LL, SD_OK, 4294967295u, SD_EPROTO, 0},
        {GGUF_VT_FLOAT32, 0, SD_EPROTO, 0, SD_EPROTO, 0},
        {GGUF_VT_BOOL, 1, SD_EPROTO, 0, SD_EPROTO, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const conv_case *c = &cases[i];
        gw *w = gw_init();
        uint8_t raw[8];
        memcpy(raw, &c->v, 8); /* little-endian: the low bytes are the narrower value */
        if (c->type == GGUF_VT_FLOAT32)
            memset(raw, 0, 8);
        assert_int_equal(gw_add_scalar(w, "v", c->type, raw), 0);
        uint8_t *buf;
        size_t len;
        write_mem(w, &buf, &len);
        gguf *g;
        assert_int_equal(gguf_open_mem(&g, buf, len, "conv"), SD_OK);
        uint32_t u = 0xdeadbeef;
        int32_t s = 0x5eadbeef;
        sd_err eu = gguf_get_u32(g, "v", &u), es = gguf_get_i32(g, "v", &s);
        if (eu != c->want_u32 || es != c->want_i32)
            fail_msg("case %zu: u32 -> %d (want %d), i32 -> %d (want %d): %s", i, eu, c->want_u32,
                     es, c->want_i32, sd_errmsg());
        assert_int_equal(u, eu == SD_OK ? c->u32 : 0xdeadbeef); /* untouched on error */
        assert_int_equal(s, es == SD_OK ? c->i32 : 0x5eadbeef);
        gguf_close(g);
        free(buf);
        gw_free(w);
    }
}

/* ---- getters on absent / mistyped keys ---- */

static void test_getter_errors(void **st)
{
    gw *w = gw_init();
    gw_add_str(w, "s", "x");
    gw_add_f32(w, "f", 1.5f);
    gw_add_arr_i32(w, "ai", 2, (const int32_t[]){1, 2});
    gw_add_u32(w, "u", 3);
    uint8_t *buf;
    size_t len;
    write_mem(w, &buf, &len);
    gguf *g;
    assert_int_equal(gguf_open_mem(&g, buf, len, NULL), SD_OK);
    assert_string_equal(gguf_path(g), "<memory>");
    uint32_t u = 77;
    float f = 2.0f;
    int b = 5;
    const char *s = NULL;
    size_t sl = 9;
    assert_int_equal(gguf_get_u32(g, "missing", &u), SD_ENOTFOUND);
    assert_int_equal(u, 77);
    assert_non_null(strstr(sd_errmsg(), "missing"));
    assert_int_equal(gguf_get_u32(g, "s", &u), SD_EPROTO);
    assert_int_equal(gguf_get_f32(g, "u", &f), SD_EPROTO);
    assert_true(f == 2.0f);
    assert_int_equal(gguf_get_bool(g, "u", &b), SD_EPROTO);
    assert_int_equal(b, 5);
    assert_int_equal(gguf_get_str(g, "f", &s, &sl), SD_EPROTO);
    assert_null(s);
    assert_int_equal(gguf_get_arr(g, "s", NULL, NULL, NULL), SD_EPROTO);
    assert_int_equal(gguf_get_arr_str(g, "ai", 0, &s, &sl), SD_EPROTO);
    assert_int_equal(gguf_get_arr_str(g, "nope", 0, &s, &sl), SD_ENOTFOUND);
    assert_int_equal(gguf_find_key(g, "nope"), -1);
    assert_null(gguf_kv_key(g, 4));
    assert_int_equal((int)gguf_kv_type(g, 4), -1);
    assert_int_equal((int)gguf_kv_type(g, -1), -1);
    assert_null(gguf_find_tensor(g, "x"));
    assert_null(gguf_tensor_at(g, 0));
    assert_int_equal(gguf_n_tensors(g), 0);
    gguf_close(g);
    gguf_close(NULL);
    free(buf);
    gw_free(w);
}

static void test_open_errors(void **st)
{
    gguf *g = (gguf *)&g;
    assert_int_equal(gguf_open(&g, "/nonexistent/dir/model.gguf"), SD_ENOTFOUND);
    assert_null(g);
    assert_non_null(strstr(sd_errmsg(), "/nonexistent/dir/model.gguf"));
    assert_int_equal(gguf_open(&g, "/tmp"), SD_EIO);
    char path[] = "/tmp/test_gguf_empty_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(gguf_open(&g, path), SD_EPROTO);
    assert_non_null(strstr(sd_errmsg(), path));
    assert_non_null(strstr(sd_errmsg(), "offset 0"));
    unlink(path);
    assert_int_equal(gguf_open_mem(&g, NULL, 0, "empty"), SD_EPROTO);
    assert_null(g);
}

/* ---- corruption table ---- */

/* The base file: a few keys, a string array and three tensors. */
static gw *base_file(void)
{
    gw *w = gw_init();
    gw_add_str(w, "general.architecture", "llama");
    gw_add_u32(w, "llama.block_count", 2);
    gw_add_arr_str(w, "tokenizer.ggml.tokens", 3, (const char *const[]){"a", "bc", "def"});
    gw_add_arr_i32(w, "tokenizer.ggml.token_type", 3, (const int32_t[]){1, 1, 3});
    gw_add_bool(w, "tokenizer.ggml.add_bos_token", 1);
    gw_add_tensor(w, "t0", SD_DTYPE_F32, 2, (const uint64_t[]){8, 2}, NULL);
    gw_add_tensor(w, "blk.0.attn_q.weight", SD_DTYPE_Q8_0, 2, (const uint64_t[]){32, 2}, NULL);
    gw_add_tensor(w, "t2", SD_DTYPE_F16, 1, (const uint64_t[]){16}, NULL);
    return w;
}

/* Field offsets inside tensor i's info record (n_dims is the tensor's current n_dims). */
static int64_t t_ndims_off(gw *w, size_t i, const char *name)
{
    return gw_tensor_info_offset(w, i) + 8 + (int64_t)strlen(name);
}
static int64_t t_type_off(gw *w, size_t i, const char *name, int nd)
{
    return t_ndims_off(w, i, name) + 4 + 8 * nd;
}

typedef struct {
    const char *what;
    /* Builds the file (may patch it); sets the offset the message must name. */
    void (*make)(uint8_t **buf, size_t *len, int64_t *off);
    sd_err code;
    const char *needle; /* another substring the message must contain */
} corrupt_case;

static void emit(gw *w, uint8_t **buf, size_t *len)
{
    write_mem(w, buf, len);
}

static void mk_bad_magic(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    (*b)[0] = 'X';
    *off = 0;
    gw_free(w);
}
static void mk_v1(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    gw_set_version(w, 1);
    emit(w, b, n);
    *off = 4;
    gw_free(w);
}
static void mk_v4(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    gw_set_version(w, 4);
    emit(w, b, n);
    *off = 4;
    gw_free(w);
}
static void mk_big_endian(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    gw_set_version(w, 0x03000000u);
    emit(w, b, n);
    *off = 4;
    gw_free(w);
}
static void mk_huge_tensors(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    put_u64(*b, 8, UINT64_MAX);
    *off = 8;
    gw_free(w);
}
static void mk_huge_kv(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    put_u64(*b, 16, (uint64_t)1 << 62);
    *off = 16;
    gw_free(w);
}
static void mk_huge_key_len(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = gw_kv_offset(w, 1);
    put_u64(*b, *off, (uint64_t)1 << 63);
    gw_free(w);
}
static void mk_huge_str_len(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = gw_kv_offset(w, 0) + 8 + 20 + 4; /* "general.architecture" value */
    put_u64(*b, *off, *n);
    gw_free(w);
}
static void mk_huge_arr(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = gw_kv_offset(w, 3) + 8 + 25 + 4 + 4; /* token_type count */
    put_u64(*b, *off, UINT64_MAX / 2);
    gw_free(w);
}
static void mk_huge_str_arr(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = gw_kv_offset(w, 2) + 8 + 21 + 4 + 4; /* tokens count */
    put_u64(*b, *off, *n / 8);
    gw_free(w);
}
static void mk_nested_arr(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = gw_kv_offset(w, 3) + 8 + 25 + 4;
    put_u32(*b, *off, GGUF_VT_ARRAY);
    gw_free(w);
}
static void mk_bad_vtype(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = gw_kv_offset(w, 1) + 8 + 17;
    put_u32(*b, *off, 13);
    gw_free(w);
}
static void mk_bad_bool(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = gw_kv_offset(w, 4) + 8 + 28 + 4;
    (*b)[*off] = 2;
    gw_free(w);
}
static void mk_empty_key(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    gw_add_u32(w, "", 1);
    emit(w, b, n);
    *off = gw_kv_offset(w, 5);
    gw_free(w);
}
static void mk_dup_key(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    gw_add_u32(w, "llama.block_count", 3);
    emit(w, b, n);
    *off = gw_kv_offset(w, 5);
    gw_free(w);
}
static void mk_align_npot(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    gw_add_u32(w, "general.alignment", 48);
    emit(w, b, n);
    *off = gw_kv_offset(w, 5) + 8 + 17 + 4;
    gw_free(w);
}
static void mk_align_type(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    gw_add_u64(w, "general.alignment", 32);
    emit(w, b, n);
    *off = gw_kv_offset(w, 5);
    gw_free(w);
}
static void mk_unsupported_type(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = t_type_off(w, 1, "blk.0.attn_q.weight", 2);
    put_u32(*b, *off, 13);
    gw_free(w);
}
static void mk_unknown_type(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = t_type_off(w, 0, "t0", 2);
    put_u32(*b, *off, 0x7fffffff);
    gw_free(w);
}
static void mk_bad_block(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = t_ndims_off(w, 1, "blk.0.attn_q.weight");
    put_u64(*b, *off + 4, 48);
    gw_free(w);
}
static void mk_zero_dim(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = t_ndims_off(w, 0, "t0") + 4 + 8;
    put_u64(*b, *off, 0);
    gw_free(w);
}
static void mk_ndims5(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = t_ndims_off(w, 2, "t2");
    put_u32(*b, *off, 5);
    gw_free(w);
}
static void mk_ndims0(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = t_ndims_off(w, 2, "t2");
    put_u32(*b, *off, 0);
    gw_free(w);
}
static void mk_elem_overflow(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = gw_init();
    gw_add_tensor_raw(w, "big", SD_DTYPE_F32, 3, (const uint64_t[]){1ull << 32, 1ull << 31, 2},
                      NULL, 64);
    emit(w, b, n);
    *off = gw_tensor_info_offset(w, 0) + 8 + 3 + 4 + 16;
    gw_free(w);
}
static void mk_byte_overflow(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = gw_init();
    gw_add_tensor_raw(w, "big", SD_DTYPE_F32, 2, (const uint64_t[]){1ull << 32, 1ull << 31}, NULL,
                      64);
    emit(w, b, n);
    *off = gw_tensor_info_offset(w, 0) + 8 + 3;
    gw_free(w);
}
static void mk_unaligned(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = t_type_off(w, 2, "t2", 1) + 4;
    uint64_t v;
    memcpy(&v, *b + *off, 8);
    put_u64(*b, *off, v + 2);
    gw_free(w);
}
static void mk_out_of_file(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    put_u64(*b, t_type_off(w, 2, "t2", 1) + 4, 1024);
    *off = gw_tensor_info_offset(w, 2);
    gw_free(w);
}
static void mk_short_data(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    gw_add_tensor_raw(w, "short", SD_DTYPE_F32, 1, (const uint64_t[]){64}, NULL, 200);
    emit(w, b, n);
    *off = gw_tensor_info_offset(w, 3);
    gw_free(w);
}
static void mk_huge_offset(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    put_u64(*b, t_type_off(w, 0, "t0", 2) + 4, UINT64_MAX - 31);
    *off = gw_tensor_info_offset(w, 0);
    gw_free(w);
}
static void mk_overlap(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    put_u64(*b, t_type_off(w, 2, "t2", 1) + 4, 32); /* inside t0 (bytes 0..64) */
    *off = gw_tensor_info_offset(w, 2);
    gw_free(w);
}
static void mk_dup_tensor(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    gw_add_tensor(w, "t0", SD_DTYPE_F32, 1, (const uint64_t[]){4}, NULL);
    emit(w, b, n);
    *off = gw_tensor_info_offset(w, 3);
    gw_free(w);
}
static void mk_empty_name(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    gw_add_tensor(w, "", SD_DTYPE_F32, 1, (const uint64_t[]){4}, NULL);
    emit(w, b, n);
    *off = gw_tensor_info_offset(w, 3);
    gw_free(w);
}
static void mk_nul_in_name(uint8_t **b, size_t *n, int64_t *off)
{
    gw *w = base_file();
    emit(w, b, n);
    *off = gw_tensor_info_offset(w, 2);
    (*b)[*off + 8 + 1] = 0; /* "t2" -> "t\0" */
    gw_free(w);
}

static const corrupt_case corrupt_cases[] = {
    {"bad magic", mk_bad_magic, SD_EPROTO, "magic"},
    {"version 1", mk_v1, SD_EUNSUPPORTED, "version 1"},
    {"version 4", mk_v4, SD_EUNSUPPORTED, "version 4"},
    {"big-endian", mk_big_endian, SD_EUNSUPPORTED, "big-endian"},
    {"huge tensor count", mk_huge_tensors, SD_EPROTO, "tensor count 18446744073709551615"},
    {"huge kv count", mk_huge_kv, SD_EPROTO, "key/value count"},
    {"huge key length", mk_huge_key_len, SD_EPROTO, "key length"},
    {"huge string length", mk_huge_str_len, SD_EPROTO, "string value length"},
    {"huge array", mk_huge_arr, SD_EPROTO, "'tokenizer.ggml.token_type': array of"},
    {"huge string array", mk_huge_str_arr, SD_EPROTO, "string elements cannot fit"},
    {"nested array", mk_nested_arr, SD_EUNSUPPORTED, "arrays of arrays"},
    {"bad value type", mk_bad_vtype, SD_EPROTO, "unknown value type 13"},
    {"bad bool", mk_bad_bool, SD_EPROTO, "bool value 2"},
    {"empty key", mk_empty_key, SD_EPROTO, "empty"},
    {"duplicate key", mk_dup_key, SD_EPROTO, "duplicate key 'llama.block_count'"},
    {"alignment not pow2", mk_align_npot, SD_EPROTO, "power of two"},
    {"alignment wrong type", mk_align_type, SD_EPROTO, "expected u32"},
    {"unsupported type", mk_unsupported_type, SD_EUNSUPPORTED,
     "tensor 'blk.0.attn_q.weight': type 13 (Q5_K) unsupported; supported: F32, F16"},
    {"unknown type", mk_unknown_type, SD_EUNSUPPORTED, "tensor 't0': type 2147483647 (unknown)"},
    {"row not a block multiple", mk_bad_block, SD_EPROTO,
     "'blk.0.attn_q.weight': ne[0]=48 is not a multiple"},
    {"zero dim", mk_zero_dim, SD_EPROTO, "'t0': ne[1] is 0"},
    {"5 dims", mk_ndims5, SD_EPROTO, "'t2': n_dims 5"},
    {"0 dims", mk_ndims0, SD_EPROTO, "'t2': n_dims 0"},
    {"element count overflow", mk_elem_overflow, SD_EPROTO, "'big': element count overflows"},
    {"byte size overflow", mk_byte_overflow, SD_EPROTO, "'big': byte size overflows"},
    {"unaligned data", mk_unaligned, SD_EPROTO, "'t2': data offset"},
    {"data past end", mk_out_of_file, SD_EPROTO, "'t2': data"},
    {"short data", mk_short_data, SD_EPROTO, "'short': data"},
    {"offset near 2^64", mk_huge_offset, SD_EPROTO, "'t0': data"},
    {"overlap", mk_overlap, SD_EPROTO, "tensor 't2': data at"},
    {"overlap names the other", mk_overlap, SD_EPROTO, "overlaps tensor 't0'"},
    {"duplicate tensor", mk_dup_tensor, SD_EPROTO, "duplicate tensor name 't0'"},
    {"empty tensor name", mk_empty_name, SD_EPROTO, "tensor 3: name is empty"},
    {"NUL in tensor name", mk_nul_in_name, SD_EPROTO, "tensor 2: name"},
};

static void test_corruptions(void **st)
{
    for (size_t i = 0; i < sizeof corrupt_cases / sizeof corrupt_cases[0]; i++) {
        const corrupt_case *c = &corrupt_cases[i];
        uint8_t *buf;
        size_t len;
        int64_t off = -1;
        c->make(&buf, &len, &off);
        gguf *g = (gguf *)&g;
        sd_errclear();
        sd_err e = open_copy(&g, buf, len);
        char want_off[64];
        snprintf(want_off, sizeof want_off, "t.gguf: offset %lld:", (long long)off);
        const char *m = sd_errmsg();
        if (e != c->code || g != NULL || !strstr(m, want_off) || !strstr(m, c->needle))
            fail_msg("case '%s': got %d (%s), want %d; message \"%s\" should contain \"%s\" and "
                     "\"%s\"",
                     c->what, e, sd_strerror(e), c->code, m, want_off, c->needle);
        free(buf);
    }
}

/* The base file opens cleanly (so the cases above test exactly one fault each). */
static void test_base_ok(void **st)
{
    gw *w = base_file();
    uint8_t *buf;
    size_t len;
    emit(w, &buf, &len);
    gguf *g;
    assert_int_equal(open_copy(&g, buf, len), SD_OK);
    assert_int_equal(gguf_n_tensors(g), 3);
    assert_int_equal(gguf_n_kv(g), 5);
    const char *s;
    size_t sl;
    assert_int_equal(gguf_get_arr_str(g, "tokenizer.ggml.tokens", 2, &s, &sl), SD_OK);
    assert_int_equal(sl, 3);
    assert_memory_equal(s, "def", 3);
    /* the last tensor's data ends exactly at the end of the file, so every truncation fails */
    const gguf_tensor *t = gguf_tensor_at(g, 2);
    assert_int_equal(t->file_offset + t->nbytes, len);
    touch_all(g);
    gguf_close(g);
    free(buf);
    gw_free(w);
}

/* ---- truncation and random flips ---- */

static void test_truncation_every_byte(void **st)
{
    gw *w = base_file();
    uint8_t *buf;
    size_t len;
    emit(w, &buf, &len);
    for (size_t n = 0; n < len; n++) {
        gguf *g = (gguf *)&g;
        sd_errclear();
        sd_err e = open_copy(&g, buf, n);
        if (e == SD_OK)
            fail_msg("truncated to %zu of %zu bytes: opened", n, len);
        assert_null(g);
        if (e != SD_EPROTO || !strstr(sd_errmsg(), "t.gguf: offset "))
            fail_msg("truncated to %zu: code %d, message \"%s\"", n, e, sd_errmsg());
    }
    free(buf);
    gw_free(w);
}

static void test_random_flips(void **st)
{
    tu_rng r;
    tu_rng_init(&r, tu_seed() ^ 0xf1f5);
    gw *w = base_file();
    uint8_t *buf;
    size_t len;
    emit(w, &buf, &len);
    uint8_t *m = malloc(len);
    int opened = 0, failed = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(m, buf, len);
        int nflip = 1 + (int)tu_below(&r, 4);
        for (int k = 0; k < nflip; k++) {
            size_t at = tu_below(&r, (uint32_t)len);
            /* favour the header and metadata, where the structure is */
            if (tu_below(&r, 2))
                at = tu_below(&r, (uint32_t)gw_tensor_data_offset(w, 0));
            if (tu_below(&r, 3) == 0)
                m[at] = (uint8_t)tu_next(&r);
            else
                m[at] ^= (uint8_t)(1u << tu_below(&r, 8));
        }
        gguf *g = (gguf *)&g;
        sd_errclear();
        sd_err e = gguf_open_mem(&g, m, len, "t.gguf");
        if (e == SD_OK) {
            touch_all(g);
            gguf_close(g);
            opened++;
        } else {
            assert_null(g);
            assert_non_null(strstr(sd_errmsg(), "t.gguf"));
            failed++;
        }
    }
    fprintf(stderr, "[flips] %d opened, %d rejected\n", opened, failed);
    assert_true(failed > 0 && opened > 0);
    free(m);
    free(buf);
    gw_free(w);
}

/* ---- the committed fuzz seeds (written by tests/fuzz/make_corpus.py, an independent writer) ----
 */

static void test_corpus_seeds(void **st)
{
    static const struct {
        const char *file;
        sd_err code;
        uint64_t n_kv, n_tensors;
    } seeds[] = {
        {"empty_v3.gguf", SD_OK, 0, 0},
        {"empty_v2.gguf", SD_OK, 0, 0},
        {"scalars.gguf", SD_OK, 12, 0},
        {"arrays.gguf", SD_OK, 7, 0},
        {"tokenizer.gguf", SD_OK, 7, 0},
        {"tensor_f32.gguf", SD_OK, 1, 1},
        {"tensor_f16.gguf", SD_OK, 1, 1},
        {"tensor_bf16.gguf", SD_OK, 1, 1},
        {"tensor_q8_0.gguf", SD_OK, 1, 1},
        {"tensor_q4_0.gguf", SD_OK, 1, 1},
        {"tensor_q4_1.gguf", SD_OK, 1, 1},
        {"tensor_q4_k.gguf", SD_OK, 1, 1},
        {"tensor_q6_k.gguf", SD_OK, 1, 1},
        {"all_tensors_v2.gguf", SD_OK, 1, 8},
        {"align64.gguf", SD_OK, 1, 3},
        {"dims4.gguf", SD_OK, 0, 2},
        {"bad_type.gguf", SD_EUNSUPPORTED, 0, 0},
        {"bad_version1.gguf", SD_EUNSUPPORTED, 0, 0},
        {"nested_arr_hdr.gguf", SD_EUNSUPPORTED, 0, 0},
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        char rel[128];
        snprintf(rel, sizeof rel, "tests/fuzz/corpus/%s", seeds[i].file);
        const char *path = tu_src_path(rel);
        gguf *g = NULL;
        sd_err e = gguf_open(&g, path);
        if (e != seeds[i].code)
            fail_msg("%s: got %d, want %d: %s", path, e, seeds[i].code, sd_errmsg());
        if (e == SD_OK) {
            assert_int_equal(gguf_n_kv(g), seeds[i].n_kv);
            assert_int_equal(gguf_n_tensors(g), seeds[i].n_tensors);
            touch_all(g);
            gguf_close(g);
        } else {
            assert_non_null(strstr(sd_errmsg(), seeds[i].file));
        }
    }
}

int main(void)
{
    tu_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_v3_mem),
        cmocka_unit_test(test_roundtrip_v3_file),
        cmocka_unit_test(test_roundtrip_v2),
        cmocka_unit_test(test_roundtrip_align64),
        cmocka_unit_test(test_roundtrip_align1),
        cmocka_unit_test(test_int_conversions),
        cmocka_unit_test(test_getter_errors),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_base_ok),
        cmocka_unit_test(test_corruptions),
        cmocka_unit_test(test_truncation_every_byte),
        cmocka_unit_test(test_random_flips),
        cmocka_unit_test(test_corpus_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
