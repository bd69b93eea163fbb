/* cpu_r16_pack: the "r16" packed weight layout of Q4_0, Q4_1 and Q8_0 (rows interleaved 16 at a
 * time; the layout is documented in cpu_r16_avx512.c), shared by the AVX-512 kernels and the AVX2
 * ones (which read a group as two 8-row halves). Plain C, built without ISA flags, so packing runs
 * on any CPU. */
#include <string.h>

#include "cpu_impl.h"

/* bytes of one block of one row in the file; a group holds 16 of them per block */
static inline int blk_bytes(kcpu_r16_kind k)
{
    return k == KCPU_R16_Q4_0 ? 18 : k == KCPU_R16_Q4_1 ? 20 : 34;
}

/* Pack rows [0, n) of src (file layout, n <= 16) as one group at dst (16 rows long). */
void kcpu_r16_pack_group(uint8_t *dst, const uint8_t *src, int n, int K, kcpu_r16_kind k)
{
    int nb = K / 32, bb = blk_bytes(k), rb = nb * bb, gb = 16 * bb;
    memset(dst, 0, (size_t)gb * nb);
    for (int r = 0; r < n; r++) {
        const uint8_t *row = src + (size_t)r * rb;
        for (int b = 0; b < nb; b++) {
            uint8_t *o = dst + (size_t)b * gb;
            if (k == KCPU_R16_Q8_0) {
                const uint8_t *blk = row + bb * b;
                for (int j = 0; j < 8; j++)
                    for (int i = 0; i < 4; i++)
                        o[64 * j + 4 * r + i] = blk[2 + 4 * j + i] ^ 0x80;
                memcpy(o + 512 + 2 * r, blk, 2);
            } else {
                int qo = k == KCPU_R16_Q4_0 ? 2 : 4; /* nibbles after d (and m) */
                const uint8_t *blk = row + bb * b;
                for (int j = 0; j < 4; j++)
                    memcpy(o + 64 * j + 4 * r, blk + qo + 4 * j, 4);
                memcpy(o + 256 + 2 * r, blk, 2);
                if (k == KCPU_R16_Q4_1)
                    memcpy(o + 288 + 2 * r, blk + 2, 2);
            }
        }
    }
}

static void r16_pack(uint8_t *dst, const uint8_t *src, int n_rows, int K, kcpu_r16_kind k)
{
    size_t rb = (size_t)blk_bytes(k) * (size_t)(K / 32);
    for (int g = 0; 16 * g < n_rows; g++) {
        int n = n_rows - 16 * g < 16 ? n_rows - 16 * g : 16;
        kcpu_r16_pack_group(dst + 16 * rb * g, src + 16 * rb * g, n, K, k);
    }
}

void kcpu_r16_pack_q4_0(uint8_t *dst, const uint8_t *src, int n_rows, int K)
{
    r16_pack(dst, src, n_rows, K, KCPU_R16_Q4_0);
}
void kcpu_r16_pack_q4_1(uint8_t *dst, const uint8_t *src, int n_rows, int K)
{
    r16_pack(dst, src, n_rows, K, KCPU_R16_Q4_1);
}
void kcpu_r16_pack_q8_0(uint8_t *dst, const uint8_t *src, int n_rows, int K)
{
    r16_pack(dst, src, n_rows, K, KCPU_R16_Q8_0);
}

size_t kcpu_r16_packed_bytes(sd_dtype t, int N, int K)
{
    return (size_t)((N + 15) / 16) * 16 * dtype_row_bytes(t, (size_t)K);
}
