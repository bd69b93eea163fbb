/* tok: loading, the vocabulary map, special-token splitting, decoding. The two models' encoders
 * live in tok_bpe.c and tok_spm.c, chat templates in tok_chat.c. */
#include "tok_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"

/* ---- UTF-8 ---- */

int tok_utf8_next(const uint8_t *s, size_t n, uint32_t *cp)
{
    if (n == 0)
        return 0;
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)len > n)
        return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}

int tok_utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- GPT-2 byte alphabet: printable Latin-1 bytes spell themselves, the other 68 bytes take
 * the code points 256.. in byte order, so every byte is one visible character. ---- */

static int byte_prints_as_itself(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* The 68 others, in byte order: 0x00-0x20, 0x7F-0xA0, 0xAD. */
uint32_t tok_byte_to_cp(uint8_t b)
{
    if (byte_prints_as_itself(b))
        return b;
    if (b <= 0x20)
        return 256u + b;
    if (b >= 0x7F && b <= 0xA0)
        return 256u + 33u + (b - 0x7Fu);
    return 256u + 67u; /* 0xAD */
}

int tok_cp_to_byte(uint32_t cp)
{
    if (cp < 256)
        return byte_prints_as_itself(cp) ? (int)cp : -1;
    uint32_t k = cp - 256;
    if (k < 33)
        return (int)k;
    if (k < 67)
        return (int)(0x7F + k - 33);
    return k == 67 ? 0xAD : -1;
}

/* ---- string → id ---- */

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h;
}

int32_t tok_strmap_get(const tok *t, const char *s, size_t len)
{
    const tok_strmap *m = &t->vocab;
    uint32_t h = hash_bytes(s, len);
    for (uint32_t i = h & m->mask;; i = (i + 1) & m->mask) {
        int32_t id = m->id[i];
        if (id < 0)
            return -1;
        if (m->hash[i] == h && t->text_len[id] == len &&
            memcmp(t->text + t->text_off[id], s, len) == 0)
            return id;
    }
}

static sd_err strmap_build(tok *t)
{
    uint32_t cap = 16;
    while (cap < (uint32_t)t->n_vocab * 2u)
        cap <<= 1;
    tok_strmap *m = &t->vocab;
    m->hash = malloc(cap * sizeof *m->hash);
    m->id = malloc(cap * sizeof *m->id);
    if (!m->hash || !m->id)
        return sd_fail(SD_ENOMEM, "tokenizer: vocabulary map of %u slots", cap);
    memset(m->id, 0xff, cap * sizeof *m->id);
    m->mask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text + t->text_off[id];
        uint32_t len = t->text_len[id];
        uint32_t h = hash_bytes(s, len);
        uint32_t i = h & m->mask;
        /* A spelling listed twice maps to its last id, as a Python dict built from the list. */
        for (; m->id[i] >= 0; i = (i + 1) & m->mask) {
            int32_t o = m->id[i];
            if (m->hash[i] == h && t->text_len[o] == len &&
                memcmp(t->text + t->text_off[o], s, len) == 0)
                break;
        }
        m->hash[i] = h;
        m->id[i] = id;
    }
    return SD_OK;
}

/* ---- loading ---- */

static sd_err get_opt_id(const gguf *g, const char *key, int32_t n_vocab, int32_t *out)
{
    uint32_t v;
    *out = -1;
    sd_err e = gguf_get_u32(g, key, &v);
    if (e == SD_ENOTFOUND)
        return SD_OK;
    if (e != SD_OK) {
        /* some writers store -1 for "none" in a signed type */
        int32_t s;
        if (gguf_get_i32(g, key, &s) == SD_OK && s < 0) {
            sd_errclear();
            return SD_OK;
        }
        return sd_fail(SD_EPROTO, "tokenizer: %s: %s", key, sd_errmsg());
    }
    if (v >= (uint32_t)n_vocab) {
        /* llama.cpp ignores such ids with a warning; a file that names a token it lacks must
         * still load, without that token. */
        LOG_WARN("tok", "%s = %u is outside the vocabulary of %d tokens; ignored", key, v, n_vocab);
        return SD_OK;
    }
    *out = (int32_t)v;
    return SD_OK;
}

static sd_err get_opt_bool(const gguf *g, const char *key, int dflt, int *out)
{
    sd_err e = gguf_get_bool(g, key, out);
    if (e == SD_ENOTFOUND) {
        *out = dflt;
        return SD_OK;
    }
    if (e != SD_OK)
        return sd_fail(SD_EPROTO, "tokenizer: %s: %s", key, sd_errmsg());
    return SD_OK;
}

/* Read element i of a numeric array as int64 (integer types) or double (float types). */
static int read_num(gguf_vtype et, const void *data, uint64_t i, int64_t *iv, double *fv)
{
    const uint8_t *p = data;
    switch (et) {
    case GGUF_VT_UINT8:
        *iv = p[i];
        break;
    case GGUF_VT_INT8:
        *iv = (int8_t)p[i];
        break;
    case GGUF_VT_UINT16: {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        *iv = v;
        break;
    }
    case GGUF_VT_INT16: {
        int16_t v;
        memcpy(&v, p + 2 * i, 2);
        *iv = v;
        break;
    }
    case GGUF_VT_UINT32: {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        *iv = v;
        break;
    }
    case GGUF_VT_INT32: {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        *iv = v;
        break;
    }
    case GGUF_VT_UINT64: {
        uint64_t v;
        memcpy(&v, p + 8 * i, 8);
        *iv = (int64_t)v;
        break;
    }
    case GGUF_VT_INT64: {
        int64_t v;
        memcpy(&v, p + 8 * i, 8);
        *iv = v;
        break;
    }
    case GGUF_VT_FLOAT32: {
        float v;
        memcpy(&v, p + 4 * i, 4);
        *fv = v;
        return 1;
    }
    case GGUF_VT_FLOAT64: {
        double v;
        memcpy(&v, p + 8 * i, 8);
        *fv = v;
        return 1;
    }
    default:
        return -1;
    }
    *fv = (double)*iv;
    return 0;
}

static sd_err load_tokens(tok *t, const gguf *g)
{
    gguf_vtype et;
    uint64_t n;
    const void *data;
    sd_err e = gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, &data);
    if (e == SD_ENOTFOUND)
        return sd_fail(e, "tokenizer: missing key tokenizer.ggml.tokens");
    if (e != SD_OK)
        return sd_fail(e, "tokenizer: tokenizer.ggml.tokens: %s", sd_errmsg());
    if (et != GGUF_VT_STRING)
        return sd_fail(SD_EPROTO,
                       "tokenizer: tokenizer.ggml.tokens is an array of type %d, not strings",
                       (int)et);
    if (n == 0 || n > (1u << 30))
        return sd_fail(SD_EPROTO,
                       "tokenizer: tokenizer.ggml.tokens has %llu entries (1..2^30 allowed)",
                       (unsigned long long)n);
    t->n_vocab = (int32_t)n;
    t->text_off = malloc(n * sizeof *t->text_off);
    t->text_len = malloc(n * sizeof *t->text_len);
    t->type = malloc(n);
    if (!t->text_off || !t->text_len || !t->type)
        return sd_fail(SD_ENOMEM, "tokenizer: %llu tokens", (unsigned long long)n);
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        e = gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len);
        if (e != SD_OK)
            return sd_fail(e, "tokenizer: tokenizer.ggml.tokens[%llu]: %s", (unsigned long long)i,
                           sd_errmsg());
        if (len > (1u << 20))
            return sd_fail(SD_EPROTO, "tokenizer: tokenizer.ggml.tokens[%llu] is %zu bytes long",
                           (unsigned long long)i, len);
        t->text_off[i] = (uint32_t)total;
        t->text_len[i] = (uint32_t)len;
        total += len + 1;
        if (total >= UINT32_MAX)
            return sd_fail(SD_EPROTO, "tokenizer: token texts exceed 4 GiB");
    }
    t->text = malloc(total);
    if (!t->text)
        return sd_fail(SD_ENOMEM, "tokenizer: %llu bytes of token text", (unsigned long long)total);
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len);
        memcpy(t->text + t->text_off[i], s, len);
        t->text[t->text_off[i] + len] = 0;
    }

    /* token types: optional (all NORMAL without them) */
    e = gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n, &data);
    if (e == SD_ENOTFOUND) {
        memset(t->type, TOK_TYPE_NORMAL, (size_t)t->n_vocab);
    } else if (e != SD_OK) {
        return sd_fail(e, "tokenizer: tokenizer.ggml.token_type: %s", sd_errmsg());
    } else {
        if (n != (uint64_t)t->n_vocab)
            return sd_fail(SD_EPROTO,
                           "tokenizer: tokenizer.ggml.token_type has %llu entries, tokens %d",
                           (unsigned long long)n, t->n_vocab);
        for (uint64_t i = 0; i < n; i++) {
            int64_t iv;
            double fv;
            if (read_num(et, data, i, &iv, &fv) != 0)
                return sd_fail(SD_EPROTO,
                               "tokenizer: tokenizer.ggml.token_type is not an integer array");
            if (iv < 0 || iv > TOK_TYPE_BYTE)
                return sd_fail(
                    SD_EPROTO,
                    "tokenizer: tokenizer.ggml.token_type[%llu] = %lld is not a token type",
                    (unsigned long long)i, (long long)iv);
            t->type[i] = (int8_t)iv;
        }
    }

    /* scores: SPM merge priorities (optional; all 0 without them) */
    t->score = calloc((size_t)t->n_vocab, sizeof *t->score);
    if (!t->score)
        return sd_fail(SD_ENOMEM, "tokenizer: scores");
    e = gguf_get_arr(g, "tokenizer.ggml.scores", &et, &n, &data);
    if (e == SD_OK) {
        if (n != (uint64_t)t->n_vocab)
            return sd_fail(SD_EPROTO,
                           "tokenizer: tokenizer.ggml.scores has %llu entries, tokens %d",
                           (unsigned long long)n, t->n_vocab);
        for (uint64_t i = 0; i < n; i++) {
            int64_t iv;
            double fv;
            if (read_num(et, data, i, &iv, &fv) < 0)
                return sd_fail(SD_EPROTO,
                               "tokenizer: tokenizer.ggml.scores is not a numeric array");
            t->score[i] = (float)fv;
        }
    } else if (e != SD_ENOTFOUND) {
        return sd_fail(e, "tokenizer: tokenizer.ggml.scores: %s", sd_errmsg());
    }
    return SD_OK;
}

/* The bytes a token stands for. */
static size_t piece_of(const tok *t, int32_t id, char *out)
{
    const char *s = t->text + t->text_off[id];
    size_t n = t->text_len[id], o = 0;
    int ty = t->type[id];
    if (ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED || ty == TOK_TYPE_UNKNOWN) {
        memcpy(out, s, n);
        return n;
    }
    if (t->model == TOK_MODEL_BPE) {
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            int l = tok_utf8_next((const uint8_t *)s + i, n - i, &cp);
            int b = l ? tok_cp_to_byte(cp) : -1;
            if (b >= 0) {
                out[o++] = (char)b;
                i += (size_t)l;
            } else { /* not in the byte alphabet: keep it as written */
                size_t k = l ? (size_t)l : 1;
                memcpy(out + o, s + i, k);
                o += k, i += k;
            }
        }
        return o;
    }
    /* SPM */
    if (ty == TOK_TYPE_BYTE && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
        unsigned v;
        char hex[3] = {s[3], s[4], 0};
        char *end;
        v = (unsigned)strtoul(hex, &end, 16);
        if (*end == 0) {
            out[0] = (char)v;
            return 1;
        }
    }
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
            out[o++] = ' ';
            i += 3;
        } else {
            out[o++] = s[i++];
        }
    }
    return o;
}

static sd_err build_pieces(tok *t)
{
    /* A decoded piece is never longer than its spelling. */
    size_t total = (size_t)t->text_off[t->n_vocab - 1] + t->text_len[t->n_vocab - 1] + 1;
    t->piece = malloc(total);
    t->piece_off = malloc((size_t)t->n_vocab * sizeof *t->piece_off);
    t->piece_len = malloc((size_t)t->n_vocab * sizeof *t->piece_len);
    if (!t->piece || !t->piece_off || !t->piece_len)
        return sd_fail(SD_ENOMEM, "tokenizer: pieces");
    uint32_t o = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        t->piece_off[id] = o;
        t->piece_len[id] = (uint32_t)piece_of(t, id, t->piece + o);
        o += t->piece_len[id];
    }
    return SD_OK;
}

static sd_err build_trie(tok *t)
{
    int32_t cap = 1;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->type[id] == TOK_TYPE_CONTROL || t->type[id] == TOK_TYPE_USER_DEFINED)
            cap += (int32_t)t->text_len[id];
    t->trie = malloc((size_t)cap * sizeof *t->trie);
    if (!t->trie)
        return sd_fail(SD_ENOMEM, "tokenizer: special-token trie");
    t->trie[0] = (tok_trie_node){-1, -1, -1, 0};
    t->n_trie = 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->type[id] != TOK_TYPE_CONTROL && t->type[id] != TOK_TYPE_USER_DEFINED)
            continue;
        const uint8_t *s = (const uint8_t *)t->text + t->text_off[id];
        uint32_t n = t->text_len[id];
        if (n == 0)
            continue;
        t->first_byte[s[0]] = 1;
        int32_t node = 0;
        for (uint32_t i = 0; i < n; i++) {
            int32_t c = t->trie[node].child;
            while (c >= 0 && t->trie[c].c != s[i])
                c = t->trie[c].sibling;
            if (c < 0) {
                c = t->n_trie++;
                t->trie[c] = (tok_trie_node){-1, t->trie[node].child, -1, s[i]};
                t->trie[node].child = c;
            }
            node = c;
        }
        if (t->trie[node].id < 0) /* the first of duplicate spellings wins */
            t->trie[node].id = id;
    }
    return SD_OK;
}

/* Longest special token at s[0..n) that may match (CONTROL ones only with parse_special). */
static size_t trie_match(const tok *t, const uint8_t *s, size_t n, int parse_special, int32_t *id)
{
    int32_t node = 0;
    size_t best = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->trie[node].child;
        while (c >= 0 && t->trie[c].c != s[i])
            c = t->trie[c].sibling;
        if (c < 0)
            break;
        node = c;
        int32_t k = t->trie[node].id;
        if (k >= 0 && (parse_special || t->type[k] != TOK_TYPE_CONTROL)) {
            best = i + 1;
            *id = k;
        }
    }
    return best;
}

static void find_eot(tok *t, const gguf *g)
{
    int32_t v;
    if (get_opt_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &v) == SD_OK && v >= 0) {
        t->eot = v;
        return;
    }
    sd_errclear();
    static const char *names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        int32_t id = tok_strmap_get(t, names[i], strlen(names[i]));
        if (id >= 0 && t->type[id] == TOK_TYPE_CONTROL) {
            t->eot = id;
            return;
        }
    }
    t->eot = t->eos;
}

sd_err tok_load(tok **out, const gguf *g)
{
    if (!out)
        return sd_fail(SD_EINVAL, "tok_load: out is NULL");
    *out = NULL;
    if (!g)
        return sd_fail(SD_EINVAL, "tok_load: gguf is NULL");
    tok *t = calloc(1, sizeof *t);
    if (!t)
        return sd_fail(SD_ENOMEM, "tok_load");
    memset(t->byte_tok, 0xff, sizeof t->byte_tok);
    sd_err e;

    const char *ms;
    size_t ml;
    e = gguf_get_str(g, "tokenizer.ggml.model", &ms, &ml);
    if (e != SD_OK) {
        e = e == SD_ENOTFOUND ? sd_fail(e, "tokenizer: missing key tokenizer.ggml.model")
                              : sd_fail(e, "tokenizer: tokenizer.ggml.model: %s", sd_errmsg());
        goto fail;
    }
    if (ml == 4 && memcmp(ms, "gpt2", 4) == 0) {
        t->model = TOK_MODEL_BPE;
    } else if (ml == 5 && memcmp(ms, "llama", 5) == 0) {
        t->model = TOK_MODEL_SPM;
    } else {
        e = sd_fail(
            SD_EUNSUPPORTED,
            "tokenizer: tokenizer.ggml.model '%.*s' is not supported (supported: gpt2, llama)",
            (int)(ml > 64 ? 64 : ml), ms);
        goto fail;
    }
    if ((e = load_tokens(t, g)) != SD_OK)
        goto fail;
    if ((e = strmap_build(t)) != SD_OK)
        goto fail;
    if ((e = build_pieces(t)) != SD_OK)
        goto fail;

    if ((e = get_opt_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos)) ||
        (e = get_opt_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos)) ||
        (e = get_opt_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk)) ||
        (e = get_opt_id(g, "tokenizer.ggml.padding_token_id", t->n_vocab, &t->pad)))
        goto fail;
    find_eot(t, g);
    if ((e = get_opt_bool(g, "tokenizer.ggml.add_bos_token", t->model == TOK_MODEL_SPM,
                          &t->add_bos)) ||
        (e = get_opt_bool(g, "tokenizer.ggml.add_space_prefix", t->model == TOK_MODEL_SPM,
                          &t->add_space_prefix)))
        goto fail;

    if (t->model == TOK_MODEL_BPE) {
        if ((e = tok_bpe_init(t, g)) != SD_OK)
            goto fail;
    } else {
        snprintf(t->pre, sizeof t->pre, "%s", "default");
        for (int b = 0; b < 256; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            t->byte_tok[b] = tok_strmap_get(t, name, 6);
        }
    }
    if ((e = build_trie(t)) != SD_OK)
        goto fail;
    if ((e = tok_chat_init(t, g)) != SD_OK)
        goto fail;
    *out = t;
    return SD_OK;
fail:
    tok_free(t);
    return e;
}

void tok_free(tok *t)
{
    if (!t)
        return;
    tok_bpe_free(t);
    free(t->text);
    free(t->text_off);
    free(t->text_len);
    free(t->piece);
    free(t->piece_off);
    free(t->piece_len);
    free(t->type);
    free(t->score);
    free(t->vocab.hash);
    free(t->vocab.id);
    free(t->trie);
    free(t->chat_default_system);
    free(t);
}

/* ---- accessors ---- */

tok_model tok_get_model(const tok *t)
{
    return t->model;
}
const char *tok_pre_name(const tok *t)
{
    return t->pre;
}
int32_t tok_n_vocab(const tok *t)
{
    return t->n_vocab;
}
int32_t tok_bos(const tok *t)
{
    return t->bos;
}
int32_t tok_eos(const tok *t)
{
    return t->eos;
}
int32_t tok_eot(const tok *t)
{
    return t->eot;
}
int32_t tok_unk(const tok *t)
{
    return t->unk;
}
int32_t tok_pad(const tok *t)
{
    return t->pad;
}
int tok_wants_bos(const tok *t)
{
    return t->add_bos;
}

int tok_is_eog(const tok *t, int32_t id)
{
    return id >= 0 && (id == t->eos || id == t->eot);
}

int tok_is_special(const tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->type[id] == TOK_TYPE_CONTROL;
}

int tok_token_type(const tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab ? t->type[id] : -1;
}

const char *tok_token_text(const tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab ? t->text + t->text_off[id] : NULL;
}

int32_t tok_find(const tok *t, const char *s, size_t len)
{
    return s ? tok_strmap_get(t, s, len) : -1;
}

int tok_byte_supported(const tok *t, uint8_t b)
{
    return t->byte_tok[b] >= 0;
}

/* ---- encode ---- */

void tok_scratch_free(tok_scratch *s)
{
    free(s->sym);
    free(s->len);
    free(s->prev);
    free(s->next);
    free(s->heap);
    free(s->buf);
    if (s->md)
        pcre2_match_data_free(s->md);
    memset(s, 0, sizeof *s);
}

static sd_err encode_text(const tok *t, tok_scratch *s, const char *text, size_t len, int *first,
                          tok_sink *sink)
{
    sd_err e = t->model == TOK_MODEL_BPE
                   ? tok_bpe_encode_text(t, s, text, len, sink)
                   : tok_spm_encode_text(t, s, text, len, *first && t->add_space_prefix, sink);
    *first = 0;
    return e;
}

sd_err tok_encode_into(const tok *t, tok_scratch *s, const char *text, size_t len,
                       int parse_special, int *first, tok_sink *sink)
{
    if (len > (size_t)INT32_MAX / 4) /* symbol positions are 32-bit */
        return sd_fail(SD_ERANGE, "tokenizer: %zu bytes of text (at most %d)", len, INT32_MAX / 4);
    const uint8_t *u = (const uint8_t *)text;
    sd_err e;
    size_t seg = 0;
    for (size_t pos = 0; pos < len;) {
        int32_t id;
        size_t m =
            t->first_byte[u[pos]] ? trie_match(t, u + pos, len - pos, parse_special, &id) : 0;
        if (!m) {
            pos++;
            continue;
        }
        if (pos > seg && (e = encode_text(t, s, text + seg, pos - seg, first, sink)) != SD_OK)
            return e;
        tok_emit(sink, id);
        pos += m;
        seg = pos;
    }
    if (seg < len)
        return encode_text(t, s, text + seg, len - seg, first, sink);
    return SD_OK;
}

sd_err tok_encode(const tok *t, const char *text, size_t len, int flags, int32_t *out, size_t cap,
                  size_t *n_out)
{
    if (!t || !n_out || (!text && len) || (!out && cap))
        return sd_fail(SD_EINVAL, "tok_encode: NULL argument");
    *n_out = 0;
    tok_sink sink = {out, cap, 0};
    tok_scratch s = {0};
    if ((flags & TOK_ADD_BOS) && t->bos >= 0)
        tok_emit(&sink, t->bos);
    int first = 1;
    sd_err e = tok_encode_into(t, &s, text, len, (flags & TOK_PARSE_SPECIAL) != 0, &first, &sink);
    tok_scratch_free(&s);
    if (e != SD_OK)
        return e;
    *n_out = sink.n;
    if (sink.n > cap)
        return sd_fail(SD_ERANGE, "tok_encode: %zu ids do not fit in %zu", sink.n, cap);
    return SD_OK;
}

/* ---- decode ---- */

sd_err tok_piece(const tok *t, int32_t id, const char **bytes, size_t *len)
{
    if (!t || !bytes || !len)
        return sd_fail(SD_EINVAL, "tok_piece: NULL argument");
    if (id < 0 || id >= t->n_vocab)
        return sd_fail(SD_ERANGE, "token id %d outside the vocabulary [0, %d)", id, t->n_vocab);
    *bytes = t->piece + t->piece_off[id];
    *len = t->piece_len[id];
    return SD_OK;
}

sd_err tok_decode_piece(const tok *t, int32_t id, char *buf, size_t cap, size_t *n_out)
{
    const char *p;
    size_t n;
    if (!n_out || (!buf && cap))
        return sd_fail(SD_EINVAL, "tok_decode_piece: NULL argument");
    sd_err e = tok_piece(t, id, &p, &n);
    if (e != SD_OK)
        return e;
    *n_out = n;
    if (n > cap)
        return sd_fail(SD_ERANGE, "token %d is %zu bytes, buffer %zu", id, n, cap);
    memcpy(buf, p, n);
    return SD_OK;
}

sd_err tok_decode(const tok *t, const int32_t *ids, size_t n, int flags, char *buf, size_t cap,
                  size_t *n_out)
{
    if (!t || !n_out || (!ids && n) || (!buf && cap))
        return sd_fail(SD_EINVAL, "tok_decode: NULL argument");
    *n_out = 0;
    int strip =
        t->model == TOK_MODEL_SPM && t->add_space_prefix && !(flags & TOK_DECODE_KEEP_PREFIX_SPACE);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab)
            return sd_fail(SD_ERANGE, "tok_decode: ids[%zu] = %d outside the vocabulary [0, %d)", i,
                           id, t->n_vocab);
        int ty = t->type[id];
        if (ty == TOK_TYPE_CONTROL && (flags & TOK_DECODE_SKIP_SPECIAL))
            continue;
        const char *p = t->piece + t->piece_off[id];
        size_t len = t->piece_len[id];
        if (strip && ty != TOK_TYPE_CONTROL && ty != TOK_TYPE_USER_DEFINED && len) {
            if (p[0] == ' ')
                p++, len--;
            strip = 0;
        }
        if (o + len <= cap)
            memcpy(buf + o, p, len);
        o += len;
    }
    *n_out = o;
    if (o > cap)
        return sd_fail(SD_ERANGE, "tok_decode: %zu bytes do not fit in %zu", o, cap);
    return SD_OK;
}
