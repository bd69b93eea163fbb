#include "dtype.h"

#include <string.h>

typedef struct {
    uint32_t id;
    const char *name;
    size_t elems, bytes;
} dtype_info;

static const dtype_info dtype_table[] = {
    {SD_DTYPE_F32, "F32", 1, 4},       {SD_DTYPE_F16, "F16", 1, 2},
    {SD_DTYPE_BF16, "BF16", 1, 2},     {SD_DTYPE_Q8_0, "Q8_0", 32, 34},
    {SD_DTYPE_Q4_0, "Q4_0", 32, 18},   {SD_DTYPE_Q4_1, "Q4_1", 32, 20},
    {SD_DTYPE_Q4_K, "Q4_K", 256, 144}, {SD_DTYPE_Q6_K, "Q6_K", 256, 210},
};
#define DTYPE_N (sizeof dtype_table / sizeof dtype_table[0])

static const dtype_info *dtype_find(uint32_t t)
{
    for (size_t i = 0; i < DTYPE_N; i++)
        if (dtype_table[i].id == t)
            return &dtype_table[i];
    return NULL;
}

int dtype_supported(uint32_t t)
{
    return dtype_find(t) != NULL;
}

const char *dtype_name(uint32_t t)
{
    const dtype_info *d = dtype_find(t);
    return d ? d->name : "unknown";
}

size_t dtype_block_elems(sd_dtype t)
{
    const dtype_info *d = dtype_find(t);
    return d ? d->elems : 0;
}

size_t dtype_block_bytes(sd_dtype t)
{
    const dtype_info *d = dtype_find(t);
    return d ? d->bytes : 0;
}

size_t dtype_row_bytes(sd_dtype t, size_t n)
{
    const dtype_info *d = dtype_find(t);
    return d ? n / d->elems * d->bytes : 0;
}

const char *dtype_supported_list(void)
{
    return "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K";
}

float dtype_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t dtype_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff);
    uint32_t man = x & 0x7fffff;
    if (exp == 255) /* inf / nan */
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int32_t e = exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (e <= 0) { /* subnormal or zero, round to nearest even */
        if (e < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = 1u << (shift - 1);
        uint32_t r = man >> shift, rem = man & ((1u << shift) - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = man >> 13, rem = man & 0x1fff;
    uint32_t h = sign | ((uint32_t)e << 10) | r;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1)))
        h++; /* may carry into the exponent: that is the correct rounding */
    return (uint16_t)h;
}

float dtype_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t dtype_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static float rd_f16(const uint8_t *p)
{
    return dtype_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

static void q4k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

void dtype_dequant_row(float *y, const void *row, sd_dtype t, size_t n)
{
    const uint8_t *p = row;
    switch (t) {
    case SD_DTYPE_F32:
        memcpy(y, row, n * 4);
        break;
    case SD_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            y[i] = rd_f16(p + 2 * i);
        break;
    case SD_DTYPE_BF16:
        for (size_t i = 0; i < n; i++)
            y[i] = dtype_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    case SD_DTYPE_Q8_0:
        for (size_t b = 0; b < n / 32; b++, p += 34, y += 32) {
            float d = rd_f16(p);
            for (int j = 0; j < 32; j++)
                y[j] = d * (float)(int8_t)p[2 + j];
        }
        break;
    case SD_DTYPE_Q4_0:
        for (size_t b = 0; b < n / 32; b++, p += 18, y += 32) {
            float d = rd_f16(p);
            for (int j = 0; j < 16; j++) {
                y[j] = d * (float)((p[2 + j] & 0xF) - 8);
                y[j + 16] = d * (float)((p[2 + j] >> 4) - 8);
            }
        }
        break;
    case SD_DTYPE_Q4_1:
        for (size_t b = 0; b < n / 32; b++, p += 20, y += 32) {
            float d = rd_f16(p), m = rd_f16(p + 2);
            for (int j = 0; j < 16; j++) {
                y[j] = d * (float)(p[4 + j] & 0xF) + m;
                y[j + 16] = d * (float)(p[4 + j] >> 4) + m;
            }
        }
        break;
    case SD_DTYPE_Q4_K:
        for (size_t b = 0; b < n / 256; b++, p += 144) {
            float d = rd_f16(p), dmin = rd_f16(p + 2);
            const uint8_t *sc = p + 4, *q = p + 16;
            for (int j = 0; j < 8; j += 2, q += 32) {
                uint8_t s1, m1, s2, m2;
                q4k_scale_min(j, sc, &s1, &m1);
                q4k_scale_min(j + 1, sc, &s2, &m2);
                float d1 = d * s1, mm1 = dmin * m1, d2 = d * s2, mm2 = dmin * m2;
                for (int l = 0; l < 32; l++)
                    *y++ = d1 * (float)(q[l] & 0xF) - mm1;
                for (int l = 0; l < 32; l++)
                    *y++ = d2 * (float)(q[l] >> 4) - mm2;
            }
        }
        break;
    case SD_DTYPE_Q6_K:
        for (size_t b = 0; b < n / 256; b++, p += 210) {
            const uint8_t *ql = p, *qh = p + 128;
            const int8_t *sc = (const int8_t *)(p + 192);
            float d = rd_f16(p + 208);
            for (int h = 0; h < 2; h++, y += 128, ql += 64, qh += 32, sc += 8) {
                for (int l = 0; l < 32; l++) {
                    int is = l / 16;
                    int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * (float)sc[is] * (float)q1;
                    y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                    y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                    y[l + 96] = d * (float)sc[is + 6] * (float)q4;
                }
            }
        }
        break;
    }
}
