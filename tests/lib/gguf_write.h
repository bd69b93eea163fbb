/* gguf_write: a small GGUF writer for tests — builds synthetic model files in memory or on disk.
 *
 *   gw *w = gw_init();
 *   gw_add_str(w, "general.architecture", "llama");
 *   gw_add_u32(w, "llama.block_count", 2);
 *   gw_add_tensor(w, "tok_embd.weight", SD_DTYPE_F32, 2, (uint64_t[]){64, 10}, data);
 *   gw_write_file(w, path);   or   gw_write_mem(w, &buf, &len);  (free(buf) after)
 *   gw_free(w);
 *
 * Output: GGUF v3 (gw_set_version to change), little-endian, keys and tensors in insertion
 * order, tensor data aligned to 32 bytes or to the u32 value of a "general.alignment" key if one
 * was added. Data is copied at add time. Nothing is validated beyond what is needed to write
 * (tests use the writer to produce broken files on purpose). Functions return 0 on success,
 * -1 on allocation failure. */
#ifndef SD_GGUF_WRITE_H
#define SD_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"

typedef struct gw gw;

gw *gw_init(void);
void gw_free(gw *w); /* NULL is a no-op */
void gw_set_version(gw *w, uint32_t version);

/* Scalars. gw_add_scalar writes vt_size(type) bytes from `val` (any non-string, non-array type). */
int gw_add_scalar(gw *w, const char *key, gguf_vtype type, const void *val);
int gw_add_u8(gw *w, const char *key, uint8_t v);
int gw_add_i8(gw *w, const char *key, int8_t v);
int gw_add_u16(gw *w, const char *key, uint16_t v);
int gw_add_i16(gw *w, const char *key, int16_t v);
int gw_add_u32(gw *w, const char *key, uint32_t v);
int gw_add_i32(gw *w, const char *key, int32_t v);
int gw_add_u64(gw *w, const char *key, uint64_t v);
int gw_add_i64(gw *w, const char *key, int64_t v);
int gw_add_f32(gw *w, const char *key, float v);
int gw_add_f64(gw *w, const char *key, double v);
int gw_add_bool(gw *w, const char *key, int v);
int gw_add_str(gw *w, const char *key, const char *s);
int gw_add_strn(gw *w, const char *key, const char *s, size_t len);

/* Arrays. gw_add_arr copies n packed elements of a numeric/bool type. */
int gw_add_arr(gw *w, const char *key, gguf_vtype elem, uint64_t n, const void *data);
int gw_add_arr_i32(gw *w, const char *key, uint64_t n, const int32_t *v);
int gw_add_arr_f32(gw *w, const char *key, uint64_t n, const float *v);
int gw_add_arr_str(gw *w, const char *key, uint64_t n, const char *const *s);

/* A tensor of a supported dtype; its byte size comes from dtype_row_bytes (ne[0] must be a
 * multiple of the block size). `data` may be NULL (zeros). */
int gw_add_tensor(gw *w, const char *name, sd_dtype type, int n_dims, const uint64_t *ne,
                  const void *data);
/* Any raw type id, any byte count (for writing unsupported or inconsistent tensors). */
int gw_add_tensor_raw(gw *w, const char *name, uint32_t type, int n_dims, const uint64_t *ne,
                      const void *data, size_t nbytes);

/* Serialise. gw_write_mem hands back a malloc'd buffer. */
int gw_write_mem(gw *w, uint8_t **buf, size_t *len);
int gw_write_file(gw *w, const char *path);

/* After a write: absolute file offset of tensor i's info record (its name length field) and of
 * its data; of key i's record. -1 if out of range. For corruption tests. */
int64_t gw_tensor_info_offset(const gw *w, size_t i);
int64_t gw_tensor_data_offset(const gw *w, size_t i);
int64_t gw_kv_offset(const gw *w, size_t i);

#endif
