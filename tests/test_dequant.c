/* test_dequant: dtype_dequant_row and the f16/bf16 conversions against reference data written by
 * tests/reference/dequant_ref.py with the `gguf` Python package (formats in
 * tests/reference/README.md). Dequantized values must match bit for bit: the C code performs the
 * same float operations in the same order as the reference, so any difference is a bug. */
#include "kernels/dtype.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DQ_HEADER 24 /* "SDQR", u32 version, type, n, raw bytes, seed */
#define CV_HEADER 16 /* "SDCV", u32 version, n, seed */
#define MAX_REPORT 8

typedef struct {
    sd_dtype type;
    const char *file;
} dq_case;

static const dq_case dq_cases[] = {
    {SD_DTYPE_F32, "tests/reference/dequant/F32.bin"},
    {SD_DTYPE_F16, "tests/reference/dequant/F16.bin"},
    {SD_DTYPE_BF16, "tests/reference/dequant/BF16.bin"},
    {SD_DTYPE_Q8_0, "tests/reference/dequant/Q8_0.bin"},
    {SD_DTYPE_Q4_0, "tests/reference/dequant/Q4_0.bin"},
    {SD_DTYPE_Q4_1, "tests/reference/dequant/Q4_1.bin"},
    {SD_DTYPE_Q4_K, "tests/reference/dequant/Q4_K.bin"},
    {SD_DTYPE_Q6_K, "tests/reference/dequant/Q6_K.bin"},
};

static uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t rd_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint8_t *load_ref(const char *rel, size_t *len)
{
    const char *path = tu_src_path(rel);
    uint8_t *buf = tu_read_file(path, len);
    if (!buf) {
        fprintf(stderr, "cannot read reference file %s\n", path);
        fail();
    }
    return buf;
}

static void test_dequant_ref(void **state)
{
    const dq_case *c = *state;
    size_t len;
    uint8_t *buf = load_ref(c->file, &len);
    assert_true(len >= DQ_HEADER);
    assert_memory_equal(buf, "SDQR", 4);
    assert_int_equal(rd_u32(buf + 4), 1);
    assert_int_equal(rd_u32(buf + 8), c->type);
    size_t n = rd_u32(buf + 12), nraw = rd_u32(buf + 16);
    assert_true(n > 0 && n % dtype_block_elems(c->type) == 0);
    assert_int_equal(nraw, dtype_row_bytes(c->type, n));
    assert_int_equal(len, DQ_HEADER + nraw + 4 * n);

    /* copy the raw row to a fresh aligned buffer: the header leaves it at an arbitrary offset */
    uint8_t *raw = malloc(nraw);
    float *got = malloc(n * sizeof *got);
    assert_non_null(raw);
    assert_non_null(got);
    memcpy(raw, buf + DQ_HEADER, nraw);
    dtype_dequant_row(got, raw, c->type, n);

    const uint8_t *ref = buf + DQ_HEADER + nraw;
    size_t bad = 0, blk = dtype_block_elems(c->type);
    for (size_t i = 0; i < n; i++) {
        uint32_t want = rd_u32(ref + 4 * i), have = f32_bits(got[i]);
        if (want != have) {
            if (bad < MAX_REPORT)
                fprintf(
                    stderr,
                    "%s elem %zu (block %zu, index %zu): got %.9g (0x%08x) want %.9g (0x%08x)\n",
                    dtype_name(c->type), i, i / blk, i % blk, got[i], have, bits_f32(want), want);
            bad++;
        }
    }
    if (bad)
        fprintf(stderr, "%s: %zu of %zu values differ\n", dtype_name(c->type), bad, n);
    free(raw);
    free(got);
    free(buf);
    assert_int_equal(bad, 0);
}

/* f32 -> f16 and f32 -> bf16 rounding against numpy / gguf.quants.BF16 */
static void test_conv_ref(void **state)
{
    size_t len;
    uint8_t *buf = load_ref("tests/reference/dequant/conv.bin", &len);
    assert_true(len >= CV_HEADER);
    assert_memory_equal(buf, "SDCV", 4);
    assert_int_equal(rd_u32(buf + 4), 1);
    size_t n = rd_u32(buf + 8);
    assert_int_equal(len, CV_HEADER + 8 * n);
    const uint8_t *xs = buf + CV_HEADER, *hs = xs + 4 * n, *bs = hs + 2 * n;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t xb = rd_u32(xs + 4 * i);
        float x = bits_f32(xb);
        uint16_t h = dtype_f32_to_f16(x), b = dtype_f32_to_bf16(x);
        uint16_t hw = rd_u16(hs + 2 * i), bw = rd_u16(bs + 2 * i);
        if (h != hw || b != bw) {
            if (bad < MAX_REPORT)
                fprintf(stderr,
                        "x=%.9g (0x%08x): f16 0x%04x want 0x%04x, bf16 0x%04x want 0x%04x\n", x, xb,
                        h, hw, b, bw);
            bad++;
        }
    }
    if (bad)
        fprintf(stderr, "conv: %zu of %zu conversions differ\n", bad, n);
    free(buf);
    assert_int_equal(bad, 0);
}

/* Value of an f16 bit pattern computed independently of dtype.c (finite patterns only). */
static double f16_value(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
    return h & 0x8000 ? -v : v;
}

static void test_f16_exhaustive(void **state)
{
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = dtype_f16_to_f32(h);
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) {
            assert_true(isnan(f));
            uint16_t back = dtype_f32_to_f16(f);
            assert_true((back & 0x7C00) == 0x7C00 && (back & 0x3FF));
            continue;
        }
        if ((h & 0x7C00) == 0x7C00)
            assert_true(isinf(f) && (signbit(f) != 0) == ((h & 0x8000) != 0));
        else if ((double)f != f16_value(h) || (signbit(f) != 0) != ((h & 0x8000) != 0))
            fail_msg("f16 0x%04x -> %.9g, want %.9g", h, f, f16_value(h));
        if (dtype_f32_to_f16(f) != h)
            fail_msg("f16 round trip 0x%04x -> %.9g -> 0x%04x", h, f, dtype_f32_to_f16(f));
    }
}

static void test_bf16_exhaustive(void **state)
{
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = dtype_bf16_to_f32(h);
        assert_int_equal(f32_bits(f), (uint32_t)h << 16);
        uint16_t back = dtype_f32_to_bf16(f);
        if ((h & 0x7F80) == 0x7F80 && (h & 0x7F))
            assert_int_equal(back, h | 0x40); /* NaN: quietened, sign and payload kept */
        else
            assert_int_equal(back, h);
    }
}

/* Random f32 values: the f16 chosen must be a nearest one, ties to even mantissa. */
static void test_f16_rounding_random(void **state)
{
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    for (int it = 0; it < 200000; it++) {
        /* uniform bit patterns with exponents spanning the f16 range and a bit past it */
        uint32_t e = 127 - 27 + tu_below(&r, 44);
        uint32_t bits = (uint32_t)(tu_next(&r) & 0x807FFFFF) | e << 23;
        float x = bits_f32(bits);
        uint16_t h = dtype_f32_to_f16(x);
        double xv = x, err = fabs(xv - f16_value(h));
        if ((h & 0x7C00) == 0x7C00) {
            /* overflow to inf only at or past the rounding threshold 65520 */
            if (fabs(xv) < 65520.0)
                fail_msg("0x%08x (%.9g) -> inf", bits, x);
            continue;
        }
        assert_true((h & 0x8000) == ((bits >> 16) & 0x8000));
        uint16_t mag = h & 0x7FFF;
        /* neighbours by magnitude (same sign) */
        for (int d = -1; d <= 1; d += 2) {
            int nm = (int)mag + d;
            if (nm < 0 || nm > 0x7BFF)
                continue;
            double nv = f16_value((uint16_t)((h & 0x8000) | nm)), nerr = fabs(xv - nv);
            if (nerr < err || (nerr == err && (mag & 1)))
                fail_msg("0x%08x (%.9g) -> f16 0x%04x, neighbour 0x%04x is nearer or even", bits, x,
                         h, (h & 0x8000) | nm);
        }
        /* bf16: truncation toward the nearest, ties to even */
        uint16_t b = dtype_f32_to_bf16(x);
        uint32_t lo = bits & 0xFFFF, up = bits >> 16;
        uint32_t want = lo > 0x8000 || (lo == 0x8000 && (up & 1)) ? up + 1 : up;
        assert_int_equal(b, (uint16_t)want);
    }
}

int main(void)
{
    struct CMUnitTest tests[sizeof dq_cases / sizeof dq_cases[0] + 5];
    size_t k = 0;
    for (size_t i = 0; i < sizeof dq_cases / sizeof dq_cases[0]; i++) {
        struct CMUnitTest t = {.name = dq_cases[i].file,
                               .test_func = test_dequant_ref,
                               .initial_state = (void *)&dq_cases[i]};
        tests[k++] = t;
    }
    struct CMUnitTest rest[] = {
        cmocka_unit_test(test_conv_ref),
        cmocka_unit_test(test_f16_exhaustive),
        cmocka_unit_test(test_bf16_exhaustive),
        cmocka_unit_test(test_f16_rounding_random),
    };
    for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++)
        tests[k++] = rest[i];
    return _cmocka_run_group_tests("dequant", tests, k, NULL, NULL);
}
