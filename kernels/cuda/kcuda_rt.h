/* kcuda_rt: what every .cu file of the CUDA backend includes. Under nvcc it defines the two
 * spellings the simulator needs (KLAUNCH, CUDA_DYN_SMEM) in their CUDA form; in the simulator
 * build (g++ with -include kernels/cuda/sim/cuda_sim.h, CUSIM defined) the header already did.
 *
 * Rules for kernels that stay testable in the simulator (docs/cuda.md): block sizes are
 * multiples of 32, warp operations use full masks, no early return before a barrier, fast
 * paths (dp4a, mma, cp.async) only inside small __device__ helpers under __CUDA_ARCH__ guards
 * with a portable fallback of the same layout and reduction order. */
#ifndef SD_KCUDA_RT_H
#define SD_KCUDA_RT_H

#if defined(CUSIM)
#if !defined(CUSIM_CUDA_SIM_H)
#error "simulator build: compile with -include kernels/cuda/sim/cuda_sim.h"
#endif
#else
#include <cuda_runtime.h>
#define KLAUNCH(kernel, grid, block, smem, stream, ...)                                            \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define CUDA_DYN_SMEM(T, name)                                                                     \
    extern __shared__ __align__(16) unsigned char kcuda_dyn_smem_[];                               \
    T *name = reinterpret_cast<T *>(kcuda_dyn_smem_)
#endif

#endif
