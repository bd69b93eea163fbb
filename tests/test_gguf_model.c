/* test_gguf_model: the GGUF loader on the real default model (SmolLM2-135M-Instruct Q4_1).
 * SD_TEST_LABELS: model */
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "testutil.h"

static void test_model_header(void **st)
{
    gguf *g = NULL;
    sd_err e = gguf_open(&g, tu_model_path());
    if (e)
        fail_msg("%s", sd_errmsg());
    assert_int_equal(gguf_version(g), 3);
    assert_int_equal(gguf_n_tensors(g), 272);

    const char *s;
    size_t len;
    assert_int_equal(gguf_get_str(g, "general.architecture", &s, &len), SD_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "llama", 5);
    uint32_t u;
    assert_int_equal(gguf_get_u32(g, "llama.block_count", &u), SD_OK);
    assert_int_equal(u, 30);
    assert_int_equal(gguf_get_u32(g, "llama.embedding_length", &u), SD_OK);
    assert_int_equal(u, 576);
    assert_int_equal(gguf_get_u32(g, "llama.attention.head_count_kv", &u), SD_OK);
    assert_int_equal(u, 3);
    assert_int_equal(gguf_get_str(g, "tokenizer.ggml.pre", &s, &len), SD_OK);
    assert_int_equal(len, 6);
    assert_memory_equal(s, "smollm", 6);

    gguf_vtype et;
    uint64_t n;
    assert_int_equal(gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, NULL), SD_OK);
    assert_int_equal(et, GGUF_VT_STRING);
    assert_int_equal(n, 49152);
    static const char *const first[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                        "<repo_name>", "<reponame>"};
    for (uint64_t i = 0; i < sizeof first / sizeof first[0]; i++) {
        assert_int_equal(gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len), SD_OK);
        assert_int_equal(len, strlen(first[i]));
        assert_memory_equal(s, first[i], len);
    }
    assert_int_equal(gguf_get_arr_str(g, "tokenizer.ggml.tokens", 49152, &s, &len), SD_ERANGE);
    assert_int_equal(gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n, NULL), SD_OK);
    assert_int_equal(et, GGUF_VT_STRING);
    assert_true(n > 0);

    const gguf_tensor *t = gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->type, SD_DTYPE_Q8_0);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 576);
    assert_int_equal(t->ne[1], 49152);
    assert_int_equal(t->nbytes, 576ull * 49152 / 32 * 34);
    t = gguf_find_tensor(g, "blk.0.attn_q.weight");
    assert_non_null(t);
    assert_int_equal(t->type, SD_DTYPE_Q4_1);
    assert_int_equal(t->ne[0], 576);
    assert_int_equal(t->ne[1], 576);
    t = gguf_find_tensor(g, "blk.29.attn_norm.weight");
    assert_non_null(t);
    assert_int_equal(t->type, SD_DTYPE_F32);
    assert_int_equal(t->n_dims, 1);
    assert_int_equal(t->ne[0], 576);
    assert_null(gguf_find_tensor(g, "output.weight")); /* tied to token_embd */

    /* every tensor lies inside the file, aligned, and sums to no more than the file */
    uint64_t total = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        t = gguf_tensor_at(g, i);
        assert_int_equal(t->file_offset % 32, 0);
        assert_true(t->file_offset + t->nbytes <= gguf_file_size(g));
        total += t->nbytes;
    }
    assert_true(total <= gguf_file_size(g));
    gguf_close(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
