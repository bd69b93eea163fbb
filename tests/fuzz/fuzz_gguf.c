/* fuzz_gguf: libFuzzer target for the GGUF loader. Any input must either be rejected with an
 * error message or open into an object whose every accessor is safe to call. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"

static volatile uint64_t sink;

static void touch_key(const gguf *g, const char *k)
{
    uint32_t u;
    int32_t i;
    float f;
    int b;
    const char *s;
    size_t len;
    gguf_vtype et;
    uint64_t n;
    const void *d;
    if (gguf_get_u32(g, k, &u) == SD_OK)
        sink += u;
    if (gguf_get_i32(g, k, &i) == SD_OK)
        sink += (uint64_t)i;
    if (gguf_get_f32(g, k, &f) == SD_OK)
        sink += (uint64_t)(f == f);
    if (gguf_get_bool(g, k, &b) == SD_OK)
        sink += (uint64_t)b;
    if (gguf_get_str(g, k, &s, &len) == SD_OK && len)
        sink += (uint8_t)s[0] + (uint8_t)s[len - 1];
    if (gguf_get_arr(g, k, &et, &n, &d) == SD_OK) {
        if (et == GGUF_VT_STRING) {
            for (uint64_t j = 0; j < n; j++)
                if (gguf_get_arr_str(g, k, j, &s, &len) == SD_OK && len)
                    sink += (uint8_t)s[0] + (uint8_t)s[len - 1];
            if (gguf_get_arr_str(g, k, n, &s, &len) != SD_ERANGE)
                abort(); /* the fuzzer's own invariant, not input handling */
        } else if (n) {
            sink += ((const uint8_t *)d)[0];
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gguf *g = NULL;
    if (gguf_open_mem(&g, data, size, "fuzz.gguf") != SD_OK) {
        if (g || !strstr(sd_errmsg(), "fuzz.gguf"))
            abort();
        return 0;
    }
    sink += gguf_version(g) + gguf_file_size(g) + strlen(gguf_path(g));
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const char *k = gguf_kv_key(g, i);
        if (!k || gguf_find_key(g, k) != (int64_t)i)
            abort();
        sink += (uint64_t)gguf_kv_type(g, (int64_t)i);
        touch_key(g, k);
    }
    touch_key(g, "general.alignment");
    touch_key(g, "absent.key");
    sink += (uint64_t)gguf_kv_type(g, -1) + (uint64_t)gguf_kv_type(g, (int64_t)gguf_n_kv(g));
    if (gguf_kv_key(g, gguf_n_kv(g)))
        abort();
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        if (!t || gguf_find_tensor(g, t->name) != t || t->nbytes == 0 ||
            t->file_offset + t->nbytes > size)
            abort();
        const uint8_t *p = t->data;
        sink += p[0] + p[t->nbytes - 1] + t->ne[0] + t->ne[3] + (uint64_t)t->n_dims;
    }
    if (gguf_tensor_at(g, gguf_n_tensors(g)) || gguf_find_tensor(g, "absent.tensor"))
        abort();
    gguf_close(g);
    return 0;
}
