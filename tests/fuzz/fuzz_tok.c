/* fuzz_tok: libFuzzer target for the tokenizer of the default model ($SPECD_MODEL). Any bytes
 * must encode (with and without special-token parsing) and decode back to themselves, less the
 * bytes the vocabulary cannot spell (tok_byte_supported). A mismatch traps. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/tok.h"

static tok *tk;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *path = getenv("SPECD_MODEL");
    gguf *g;
    if (!path || gguf_open(&g, path) || tok_load(&tk, g)) {
        fprintf(stderr, "fuzz_tok: set SPECD_MODEL to a GGUF with a tokenizer (%s)\n", sd_errmsg());
        exit(1);
    }
    gguf_close(g); /* the tokenizer keeps its own copy */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len > 4096)
        return 0;
    static int32_t ids[8192];
    static char text[8192], want[4096];
    size_t n, m, w = 0;
    for (size_t i = 0; i < len; i++)
        if (tok_byte_supported(tk, data[i]))
            want[w++] = (char)data[i];
    if (tok_encode(tk, (const char *)data, len, 0, ids, 8192, &n) != SD_OK)
        __builtin_trap();
    if (tok_decode(tk, ids, n, 0, text, sizeof text, &m) != SD_OK || m != w ||
        memcmp(text, want, w))
        __builtin_trap();
    /* special-token parsing may turn spellings into control tokens; it must still not fail */
    if (tok_encode(tk, (const char *)data, len, TOK_PARSE_SPECIAL, ids, 8192, &n) != SD_OK)
        __builtin_trap();
    return 0;
}
