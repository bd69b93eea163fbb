/* dtype: tensor element types (values are the GGUF/ggml type ids) and their block layouts.
 *
 * Block layouts (little-endian, as in GGUF files):
 *   F32   4 B per element            F16/BF16  2 B per element
 *   Q8_0  32 elems: f16 d, int8 q[32]                       (34 B)   x = d*q
 *   Q4_0  32 elems: f16 d, u8 qs[16]                        (18 B)   x = d*(nib-8)
 *   Q4_1  32 elems: f16 d, f16 m, u8 qs[16]                 (20 B)   x = d*nib + m
 *         nibble j (j<16) is qs[j]&15, nibble j+16 is qs[j]>>4
 *   Q4_K  256 elems: f16 d, f16 dmin, u8 scales[12], u8 qs[128]          (144 B)
 *   Q6_K  256 elems: u8 ql[128], u8 qh[64], int8 scales[16], f16 d       (210 B)
 */
#ifndef SD_DTYPE_H
#define SD_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    SD_DTYPE_F32 = 0,
    SD_DTYPE_F16 = 1,
    SD_DTYPE_Q4_0 = 2,
    SD_DTYPE_Q4_1 = 3,
    SD_DTYPE_Q8_0 = 8,
    SD_DTYPE_Q4_K = 12,
    SD_DTYPE_Q6_K = 14,
    SD_DTYPE_BF16 = 30,
} sd_dtype;

/* 1 if `t` (a raw GGUF type id) is one of the types above. */
int dtype_supported(uint32_t t);
/* Name ("Q4_1"), or "unknown". */
const char *dtype_name(uint32_t t);
/* Elements per block and bytes per block (both 0 for an unsupported type). */
size_t dtype_block_elems(sd_dtype t);
size_t dtype_block_bytes(sd_dtype t);
/* Bytes of a row of n elements; n must be a multiple of the block size. */
size_t dtype_row_bytes(sd_dtype t, size_t n);
/* Comma-separated list of supported type names, for error messages. */
const char *dtype_supported_list(void);

/* Half-precision conversions (exact, portable). */
float dtype_f16_to_f32(uint16_t h);
uint16_t dtype_f32_to_f16(float f);
float dtype_bf16_to_f32(uint16_t h);
uint16_t dtype_f32_to_bf16(float f);

/* Plain-C reference dequantization of n elements (n a multiple of the block size). */
void dtype_dequant_row(float *out, const void *row, sd_dtype t, size_t n);

#endif
