/* cuda_stub: kern_cuda_create for builds without a CUDA toolkit (linked instead of the CUDA
 * backend), so that `--backend cuda` says why it cannot run and the caller can fall back. */
#include "../kernels.h"

sd_err kern_cuda_create(kern_backend **out, int device, unsigned flags)
{
    (void)device;
    (void)flags;
    *out = NULL;
    return sd_fail(SD_EUNSUPPORTED, "this build of specd has no CUDA backend (no CUDA toolkit "
                                    "was found when it was built)");
}
