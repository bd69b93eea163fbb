/* cpu_mm_avx2: avx2 matmul kernels (this file is compiled with the avx2 flags; it is only
 * entered after run-time dispatch found the ISA). */
#include "cpu_impl.h"

void kcpu_mm_avx2(kcpu_mm_kernel tab[KCPU_DTYPE_SLOTS][2])
{
    (void)tab;
}
