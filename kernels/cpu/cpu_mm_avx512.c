/* cpu_mm_avx512: avx512 matmul kernels (this file is compiled with the avx512 flags; it is only
 * entered after run-time dispatch found the ISA). */
#include "cpu_impl.h"

void kcpu_mm_avx512(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2])
{
    (void)tab;
}
