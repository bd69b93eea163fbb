/* backend_select: kern_backend_open, the one place that turns a --backend / config spelling into
 * a backend, with the CUDA fallback policy of docs/cuda.md. */
#include <stdio.h>
#include <string.h>

#include "../../common/log.h"
#include "../kernels.h"

sd_err kern_backend_open(kern_backend **out, const char *spec, int device, int n_threads,
                         unsigned flags)
{
    *out = NULL;
    if (!spec || !strcmp(spec, "cpu"))
        return kern_cpu_create(out, n_threads, flags);
    int required = !strcmp(spec, "cuda!");
    if (!required && strcmp(spec, "cuda"))
        return sd_fail(SD_EINVAL,
                       "backend '%s': use cpu, cuda (CPU when there is no GPU) or "
                       "cuda! (fail without a GPU)",
                       spec);
    sd_err e = kern_cuda_create(out, device, flags & KERN_CPU_F32_ACT);
    if (e != SD_EUNSUPPORTED)
        return e;
    if (required) {
        char why[256];
        snprintf(why, sizeof why, "%s", sd_errmsg());
        return sd_fail(SD_EUNSUPPORTED, "backend cuda! required: %s", why);
    }
    LOG_WARN("backend", "CUDA backend unavailable (%s): running on the CPU backend", sd_errmsg());
    return kern_cpu_create(out, n_threads, flags);
}
