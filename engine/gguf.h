/* gguf: a validated, memory-mapped reader for GGUF v2/v3 model files.
 *
 * gguf_open maps the file and checks everything before returning: header, every key/value
 * (types, string and array lengths within the file), every tensor (name, dims, supported type,
 * row size a multiple of its block, data offset aligned and inside the file, no overlap past the
 * end). Any problem is an error whose message (sd_errmsg) names the file, the byte offset or the
 * tensor, and what is supported. After a successful open, every pointer handed out points into
 * the mapping and stays valid until gguf_close. */
#ifndef SD_GGUF_H
#define SD_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "../common/sd_err.h"
#include "../kernels/dtype.h"

typedef enum {
    GGUF_VT_UINT8 = 0,
    GGUF_VT_INT8 = 1,
    GGUF_VT_UINT16 = 2,
    GGUF_VT_INT16 = 3,
    GGUF_VT_UINT32 = 4,
    GGUF_VT_INT32 = 5,
    GGUF_VT_FLOAT32 = 6,
    GGUF_VT_BOOL = 7,
    GGUF_VT_STRING = 8,
    GGUF_VT_ARRAY = 9,
    GGUF_VT_UINT64 = 10,
    GGUF_VT_INT64 = 11,
    GGUF_VT_FLOAT64 = 12,
} gguf_vtype;

#define GGUF_MAX_DIMS 4

typedef struct {
    const char *name;           /* NUL-terminated copy owned by the gguf object */
    sd_dtype type;
    int n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] = row length (innermost), unused dims are 1 */
    uint64_t n_elems;
    uint64_t nbytes;
    uint64_t file_offset;       /* absolute byte offset of the data in the file */
    const void *data;           /* into the mapping */
} gguf_tensor;

typedef struct gguf gguf;

/* Open and validate `path`. On error *out is NULL and sd_errmsg() says what and where. */
sd_err gguf_open(gguf **out, const char *path);
/* Same, over a caller-owned buffer (used by the fuzzer and tests); `buf` must outlive the object. */
sd_err gguf_open_mem(gguf **out, const void *buf, size_t len, const char *name);
void gguf_close(gguf *g); /* NULL is a no-op */

const char *gguf_path(const gguf *g);
uint32_t gguf_version(const gguf *g);
size_t gguf_file_size(const gguf *g);

/* ---- metadata ---- */
uint64_t gguf_n_kv(const gguf *g);
const char *gguf_kv_key(const gguf *g, uint64_t i);
/* Index of `key`, or -1. */
int64_t gguf_find_key(const gguf *g, const char *key);
gguf_vtype gguf_kv_type(const gguf *g, int64_t i);

/* Typed getters. SD_ENOTFOUND if absent (output untouched), SD_EPROTO if the stored type does
 * not fit (any integer type converts to the requested one when the value is in range). */
sd_err gguf_get_u32(const gguf *g, const char *key, uint32_t *out);
sd_err gguf_get_i32(const gguf *g, const char *key, int32_t *out);
sd_err gguf_get_f32(const gguf *g, const char *key, float *out); /* accepts f32/f64 */
sd_err gguf_get_bool(const gguf *g, const char *key, int *out);
/* String: pointer into the mapping, NOT NUL-terminated; length in *len. */
sd_err gguf_get_str(const gguf *g, const char *key, const char **s, size_t *len);

/* Arrays. gguf_get_arr gives the element type and count. For numeric element types *data points
 * at the packed little-endian elements in the mapping (possibly unaligned: use memcpy).
 * For string arrays use gguf_get_arr_str (O(1) per element: offsets are indexed at open). */
sd_err gguf_get_arr(const gguf *g, const char *key, gguf_vtype *elem_type, uint64_t *n,
                    const void **data);
sd_err gguf_get_arr_str(const gguf *g, const char *key, uint64_t idx, const char **s,
                        size_t *len);

/* ---- tensors ---- */
uint64_t gguf_n_tensors(const gguf *g);
const gguf_tensor *gguf_tensor_at(const gguf *g, uint64_t i);
/* NULL if absent. */
const gguf_tensor *gguf_find_tensor(const gguf *g, const char *name);

#endif
