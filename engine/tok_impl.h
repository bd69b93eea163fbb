/* tok internals shared by engine/tok*.c and the tokenizer's unit tests. */
#ifndef SD_TOK_IMPL_H
#define SD_TOK_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tok.h"

#define TOK_MAX_RE 4

/* Open-addressing map from a token's spelling to its id (the spelling lives in tok.text). */
typedef struct {
    uint32_t *hash; /* per slot; meaningful where id >= 0 */
    int32_t *id;    /* -1 = empty */
    uint32_t mask;
} tok_strmap;

/* Open-addressing map from an id pair to its merge rank and the merged token. */
typedef struct {
    uint64_t key; /* (left << 32) | right */
    int32_t rank; /* -1 = empty */
    int32_t result;
} tok_pair_slot;

typedef struct {
    tok_pair_slot *slots;
    uint32_t mask;
} tok_pairmap;

/* Special-token trie over raw bytes: children as sibling lists, node 0 is the root. */
typedef struct {
    int32_t child, sibling, id;
    uint8_t c;
} tok_trie_node;

struct tok {
    tok_model model;
    int32_t n_vocab;
    char *text; /* every token's file spelling, NUL after each */
    uint32_t *text_off, *text_len;
    char *piece; /* every token's decoded bytes */
    uint32_t *piece_off, *piece_len;
    int8_t *type;
    float *score; /* SPM only (zeros when the file has none) */
    tok_strmap vocab;

    /* BPE */
    tok_pairmap merges;
    int32_t n_merges;
    int32_t byte_tok[256]; /* BPE: the token spelling that byte alone; SPM: <0xAB>; -1 = none */
    int n_re;
    pcre2_code *re[TOK_MAX_RE];
    int ignore_merges; /* a piece that is a whole token is taken as is (llama3) */
    char pre[64];

    /* special tokens */
    tok_trie_node *trie;
    int32_t n_trie;
    uint8_t first_byte[256]; /* 1 if some special token starts with that byte */

    int32_t bos, eos, eot, unk, pad;
    int add_bos, add_space_prefix;

    tok_chat_kind chat_kind;
    char *chat_default_system; /* NULL if none */
};

/* Byte-level alphabet (GPT-2's bytes_to_unicode): the code point spelling byte b, and back. */
uint32_t tok_byte_to_cp(uint8_t b);
/* The byte spelt by code point cp, or -1. */
int tok_cp_to_byte(uint32_t cp);

/* Decode one UTF-8 character at s[0..n): its length (1..4) and code point, or 0 if the bytes
 * there do not start a valid character (overlong, surrogate, > U+10FFFF, truncated). */
int tok_utf8_next(const uint8_t *s, size_t n, uint32_t *cp);
/* Encode cp as UTF-8 into out (4 bytes room); returns the length. */
int tok_utf8_put(uint32_t cp, char *out);

int32_t tok_strmap_get(const tok *t, const char *s, size_t len);

/* Where each encoded id goes: out[0..cap), with the total counted past cap. */
typedef struct {
    int32_t *out;
    size_t cap, n;
} tok_sink;

static inline void tok_emit(tok_sink *s, int32_t id)
{
    if (s->n < s->cap)
        s->out[s->n] = id;
    s->n++;
}

/* Per-call scratch, grown on demand and freed by tok_scratch_free. */
typedef struct {
    int32_t *sym; /* symbol ids (BPE) / symbol start offsets (SPM) */
    int32_t *len; /* SPM: symbol byte lengths */
    int32_t *prev, *next;
    uint64_t *heap; /* (key << 32) | pos; smallest first */
    size_t cap, heap_cap;
    char *buf; /* spelled text (BPE ignore_merges) / escaped text (SPM) */
    size_t buf_cap;
    pcre2_match_data *md;
} tok_scratch;

void tok_scratch_free(tok_scratch *s);
/* Room for n symbols (and 3n heap entries) / an n-byte buffer. */
sd_err tok_scratch_reserve(tok_scratch *s, size_t n);
sd_err tok_scratch_buf(tok_scratch *s, size_t n);
/* Min-heap of (key << 32 | pos): lowest key first, then leftmost position. */
void tok_heap_push(uint64_t *h, size_t *n, uint64_t v);
uint64_t tok_heap_pop(uint64_t *h, size_t *n);

/* Split text around special tokens (CONTROL ones only if parse_special) and encode the rest.
 * *first is 1 until the first stretch of plain text has been encoded (SPM space prefix). */
sd_err tok_encode_into(const tok *t, tok_scratch *s, const char *text, size_t len,
                       int parse_special, int *first, tok_sink *sink);

/* BPE (tok_bpe.c) */
sd_err tok_bpe_init(tok *t, const gguf *g);
void tok_bpe_free(tok *t);
/* Encode one stretch of text that holds no special token. */
sd_err tok_bpe_encode_text(const tok *t, tok_scratch *s, const char *text, size_t len,
                           tok_sink *sink);
/* Pre-tokenize text and call fn for every piece, in order (tests). */
typedef void (*tok_piece_fn)(void *ctx, const char *piece, size_t len);
sd_err tok_pretokenize(const tok *t, const char *text, size_t len, tok_piece_fn fn, void *ctx);

/* SPM (tok_spm.c) */
sd_err tok_spm_encode_text(const tok *t, tok_scratch *s, const char *text, size_t len,
                           int add_prefix, tok_sink *sink);

/* chat (tok_chat.c) */
sd_err tok_chat_init(tok *t, const gguf *g);

#endif
