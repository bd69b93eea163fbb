#include "sd_err.h"

#include <stdarg.h>
#include <stdio.h>

static const char *const sd_err_names[SD_ERR_COUNT] = {
    [SD_OK] = "success",
    [SD_EINVAL] = "invalid argument",
    [SD_ENOMEM] = "out of memory",
    [SD_EIO] = "input/output error",
    [SD_EPROTO] = "malformed data",
    [SD_ETIMEDOUT] = "timed out",
    [SD_ECANCELED] = "canceled",
    [SD_EUNSUPPORTED] = "unsupported",
    [SD_ECUDA] = "CUDA error",
    [SD_ERANGE] = "value out of range",
    [SD_ENOTFOUND] = "not found",
    [SD_EAGAIN] = "try again",
};

static _Thread_local char sd_err_buf[1024];

const char *sd_strerror(sd_err e)
{
    if ((unsigned)e >= SD_ERR_COUNT || !sd_err_names[e])
        return "unknown error";
    return sd_err_names[e];
}

sd_err sd_fail(sd_err e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sd_err_buf, sizeof sd_err_buf, fmt, ap);
    va_end(ap);
    return e;
}

const char *sd_errmsg(void)
{
    return sd_err_buf;
}

void sd_errclear(void)
{
    sd_err_buf[0] = 0;
}
