/* tok: the tokenizer, built from a GGUF file's `tokenizer.*` metadata.
 *
 * Two models:
 *  - "gpt2": byte-level BPE. Text is split around special tokens, each stretch is pre-tokenized
 *    by the regex sequence `tokenizer.ggml.pre` names (PCRE2, Unicode properties), every piece's
 *    bytes are spelled in the GPT-2 byte alphabet and merged by rank (`tokenizer.ggml.merges`).
 *    Any byte the vocabulary can spell round-trips: decode(encode(s)) == s, invalid UTF-8
 *    included. A byte with no token of its own is dropped, as the Hugging Face tokenizer and
 *    llama.cpp drop it (tok_byte_supported tells which; SmolLM2 lacks 21 such bytes).
 *  - "llama": SentencePiece-style: ' ' is written as U+2581, pieces merge by score, characters
 *    without a token fall back to <0xAB> byte tokens.
 *
 * Special tokens: USER_DEFINED tokens are always matched whole in the text; CONTROL tokens
 * (<|im_start|>, <|endoftext|>, ...) only with TOK_PARSE_SPECIAL. Without it their text is
 * tokenized as ordinary text, which is what a user's prompt content must get.
 *
 * A loaded tok is immutable: any number of threads may encode and decode with it at once. It
 * copies what it needs, so the gguf may be closed after tok_load. */
#ifndef SD_TOK_H
#define SD_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "../common/sd_err.h"
#include "gguf.h"

typedef struct tok tok;

/* Token types, as llama.cpp writes them in tokenizer.ggml.token_type. */
typedef enum {
    TOK_TYPE_UNDEFINED = 0,
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
} tok_type;

typedef enum { TOK_MODEL_BPE = 1, TOK_MODEL_SPM = 2 } tok_model;

/* tok_encode flags */
enum {
    TOK_ADD_BOS = 1 << 0,       /* prepend the BOS token (see tok_wants_bos for the file's wish) */
    TOK_PARSE_SPECIAL = 1 << 1, /* match CONTROL tokens' text as those tokens */
};

/* tok_decode flags */
enum {
    TOK_DECODE_SKIP_SPECIAL = 1 << 0, /* leave CONTROL tokens out of the text */
    /* SPM with add_space_prefix: tok_decode drops the one space the encoder put in front of the
     * text; set this when the ids do not start at the beginning of an encoded text. */
    TOK_DECODE_KEEP_PREFIX_SPACE = 1 << 1,
};

/* Read and validate the tokenizer. On error *out is NULL and sd_errmsg() names the key or the
 * entry at fault (SD_ENOTFOUND for a missing required key, SD_EPROTO for inconsistent data,
 * SD_EUNSUPPORTED for a tokenizer model or pre-tokenizer this code does not implement). */
sd_err tok_load(tok **out, const gguf *g);
void tok_free(tok *t); /* NULL is a no-op */

tok_model tok_get_model(const tok *t);
const char *tok_pre_name(const tok *t); /* tokenizer.ggml.pre, "default" when absent */
int32_t tok_n_vocab(const tok *t);
int32_t tok_bos(const tok *t); /* -1 when the file names none */
int32_t tok_eos(const tok *t);
/* End of turn: tokenizer.ggml.eot_token_id, else a CONTROL token spelled like one
 * (<|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>), else EOS. */
int32_t tok_eot(const tok *t);
int32_t tok_unk(const tok *t);
int32_t tok_pad(const tok *t);
/* Whether generation should stop at id (EOS or EOT). */
int tok_is_eog(const tok *t, int32_t id);
/* tokenizer.ggml.add_bos_token (for "llama" models true when absent, as llama.cpp does). */
int tok_wants_bos(const tok *t);
/* CONTROL tokens; 0 for anything else, out-of-range ids included. */
int tok_is_special(const tok *t, int32_t id);
/* TOK_TYPE_*; -1 for an out-of-range id. */
int tok_token_type(const tok *t, int32_t id);
/* The token's text exactly as the file spells it (byte alphabet, U+2581, ...), NUL-terminated;
 * NULL for an out-of-range id. */
const char *tok_token_text(const tok *t, int32_t id);
/* Id of the token whose file spelling is s[0..len), or -1. */
int32_t tok_find(const tok *t, const char *s, size_t len);
/* gpt2 model: whether raw byte b has a token (the only bytes that survive encoding). */
int tok_byte_supported(const tok *t, uint8_t b);

/* Encode text[0..len) (any bytes). Writes up to cap ids to out and the count to *n_out. If cap
 * is too small, returns SD_ERANGE with *n_out set to the count needed (out holds the first cap
 * ids). Other errors: SD_EINVAL (NULL arguments), SD_ENOMEM. */
sd_err tok_encode(const tok *t, const char *text, size_t len, int flags, int32_t *out, size_t cap,
                  size_t *n_out);

/* The bytes one token stands for, without copying: *bytes points into t (not NUL-terminated),
 * valid until tok_free. SD_ERANGE for an id outside [0, n_vocab). */
sd_err tok_piece(const tok *t, int32_t id, const char **bytes, size_t *len);
/* Same, copied into buf. SD_ERANGE (with *n_out = bytes needed) if cap is too small. */
sd_err tok_decode_piece(const tok *t, int32_t id, char *buf, size_t cap, size_t *n_out);
/* Concatenate the pieces of ids[0..n) (TOK_DECODE_* flags). Raw bytes, no terminator. An id
 * outside the vocabulary is SD_ERANGE naming its index, with nothing meaningful in buf; a short
 * buf is SD_ERANGE with *n_out = bytes needed. */
sd_err tok_decode(const tok *t, const int32_t *ids, size_t n, int flags, char *buf, size_t cap,
                  size_t *n_out);

/* ---- chat ---- */

typedef struct {
    const char *role;    /* "system", "user", "assistant", ... (NUL-terminated) */
    const char *content; /* NUL-terminated */
} tok_chat_msg;

typedef enum {
    TOK_CHAT_NONE = 0,        /* the file has no tokenizer.chat_template */
    TOK_CHAT_CHATML = 1,      /* <|im_start|>role\ncontent<|im_end|>\n */
    TOK_CHAT_UNSUPPORTED = 2, /* a template this code does not recognise */
} tok_chat_kind;

enum {
    TOK_CHAT_ADD_ASSISTANT = 1 << 0, /* end with the assistant's turn opener */
    /* Without a usable template, write "role: content\n\n" per message (and "assistant: ")
     * instead of failing. */
    TOK_CHAT_PLAIN_FALLBACK = 1 << 1,
};

tok_chat_kind tok_get_chat_kind(const tok *t);
/* The system message the template inserts when the first message is not "system" (SmolLM2's
 * "You are a helpful AI assistant named SmolLM, trained by Hugging Face"), or NULL. */
const char *tok_chat_default_system(const tok *t);

/* Render msgs as the model's chat template does, NUL-terminated, into buf; *n_out = length
 * without the NUL. SD_ERANGE with *n_out = length needed if cap < length + 1;
 * SD_EUNSUPPORTED if the template is absent or not recognised (unless
 * TOK_CHAT_PLAIN_FALLBACK); SD_EINVAL for a NULL role or content. */
sd_err tok_chat_format(const tok *t, const tok_chat_msg *msgs, size_t n_msgs, int flags, char *buf,
                       size_t cap, size_t *n_out);

/* Render and encode in one step, with the template's markers as special tokens and every
 * message's role and content encoded as plain text, so a CONTROL token's spelling inside a
 * message cannot open or close a turn. Gives the same ids as tok_encode(tok_chat_format(...),
 * TOK_PARSE_SPECIAL) whenever no message spells a CONTROL token. Buffer contract as tok_encode. */
sd_err tok_chat_encode(const tok *t, const tok_chat_msg *msgs, size_t n_msgs, int flags,
                       int32_t *out, size_t cap, size_t *n_out);

/* A prompt as `specd generate` (and the coordinator) takes it: raw text (CONTROL tokens' spellings
 * parsed, BOS when the file wants one) or, with chat, one user turn (after a system turn when
 * system is non-NULL) and the assistant's opener. *ids is malloc'd (free it, also on error). */
sd_err tok_encode_prompt(const tok *t, const char *prompt, const char *system, int chat,
                         int32_t **ids, size_t *n);

#endif
