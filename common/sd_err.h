/* sd_err: the one project-wide error enum, plus a per-thread message that carries context
 * (file and line, byte offset, offending field) from where an error is detected to the user. */
#ifndef SD_ERR_H
#define SD_ERR_H

typedef enum {
    SD_OK = 0,
    SD_EINVAL, /* bad argument or bad input from outside */
    SD_ENOMEM, /* allocation failed */
    SD_EIO,    /* file or device I/O */
    SD_EPROTO, /* malformed message or file format */
    SD_ETIMEDOUT,
    SD_ECANCELED,
    SD_EUNSUPPORTED, /* valid but not supported (architecture, tensor type, ...) */
    SD_ECUDA,
    SD_ERANGE,    /* a value outside its allowed range (token id, context length) */
    SD_ENOTFOUND, /* a named thing (key, tensor, file) does not exist */
    SD_EAGAIN,
    SD_ERR_COUNT
} sd_err;

const char *sd_strerror(sd_err e);

/* Record a formatted message for the calling thread and return `e`, so a failing function can
 * `return sd_fail(SD_EPROTO, "%s: offset %zu: ...", path, off);`. */
sd_err sd_fail(sd_err e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The message recorded by the last sd_fail on this thread ("" if none). */
const char *sd_errmsg(void);

/* Drop the recorded message. */
void sd_errclear(void);

#endif
