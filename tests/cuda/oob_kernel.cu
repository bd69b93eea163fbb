/* oob_kernel: a kernel that reads one float past its input, run in the simulator under ASan
 * (ctest cuda_sim_asan_oob, SPECD_SANITIZE builds only): the test passes when ASan reports the
 * heap-buffer-overflow at this file's line — proof that the fiber annotations let ASan see
 * into kernels. */
#include "kernels/cuda/kcuda_rt.h"

#include <stdio.h>
#include <stdlib.h>

__global__ void k_oob(float *out, const float *x, int n)
{
    int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    out[i] = x[i + 1]; /* the last thread reads x[n]: one past the end */
    (void)n;
}

int main(void)
{
    enum { N = 64 };
    float *x = (float *)malloc(sizeof(float) * N), *out = (float *)malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++)
        x[i] = (float)i;
    KLAUNCH(k_oob, 1, N, 0, (cudaStream_t)0, out, (const float *)x, (int)N);
    printf("no error reported (out[0] = %g)\n", out[0]);
    free(x);
    free(out);
    return 0;
}
