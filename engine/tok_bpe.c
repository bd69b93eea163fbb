/* tok_bpe: byte-level BPE ("gpt2" model): regex pre-tokenizer sequences, merge ranks, and the
 * priority merge of one piece. */
#include "tok_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"

/* ---- pre-tokenizers ----
 * Each `tokenizer.ggml.pre` names a sequence of regexes. Every regex splits each piece the
 * previous one produced into its matches and the stretches between them (the Hugging Face
 * `Split(..., "isolated")` behaviour), so "\p{N}" first isolates every digit as SmolLM2's
 * tokenizer.json (Digits(individual_digits) then ByteLevel) does. */

/* The Hugging Face tokenizers (0.23) match with Oniguruma's and Rust's Unicode tables; PCRE2
 * 10.42 knows Unicode 14. To tokenize the same, the classes are spelt out: letters and numbers
 * assigned since (a union, so harmless under a newer PCRE2), the numbers only Rust counts, and
 * whitespace without U+180E, which PCRE2 still counts as space and Unicode has not since 6.3.
 * Comparing the pieces for every code point in several contexts against the Hugging Face
 * pre-tokenizers (smollm, gpt2, llama3, qwen2) left no other difference. */
#define XL                                                                                         \
    "\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}"               \
    "\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}"         \
    "\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}"           \
    "\\x{113D3}\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}"          \
    "\\x{1342F}\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}"                    \
    "\\x{16D40}-\\x{16D6C}\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}"                     \
    "\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{1E4EB}\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}"          \
    "\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}"
#define XN                                                                                         \
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}"         \
    "\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}"         \
    "\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}"
/* numeric to Rust's char::is_numeric (the Digits pre-tokenizer) but not to Oniguruma's \p{N} */
#define XN_RUST "\\x{11DE0}-\\x{11DE9}\\x{16FF4}-\\x{16FF6}"
/* White_Space, as Oniguruma's \s: PCRE2's \s adds U+180E. */
#define SPACES                                                                                     \
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"    \
    "\\x{205F}\\x{3000}"
#define L "[\\p{L}" XL "]"
#define N "[\\p{N}" XN "]"
#define DIGIT "[\\p{N}" XN XN_RUST "]" /* Digits(individual_digits) */
#define WS "[" SPACES "]"
#define NWS "[^" SPACES "]"
/* single classes only: a repeated group would need a backtracking frame per character */
#define PUNCT "[^" SPACES "\\p{L}\\p{N}" XL XN "]" /* [^\s\p{L}\p{N}] */
#define NOT_CRLF_L_N "[^\\r\\n\\p{L}\\p{N}" XL XN "]"

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?" L "+| ?" N "+| ?" PUNCT "+|" WS "+(?!" NWS ")|" WS "+"
/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
 * |\s*[\r\n]+|\s+(?!\S)|\s+ */
#define RE_LLAMA3                                                                                  \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|" NOT_CRLF_L_N "?" L "+|" N "{1,3}| ?" PUNCT "+[\\r\\n]*|" WS    \
    "*[\\r\\n]+|" WS "+(?!" NWS ")|" WS "+"
/* the same with single digits */
#define RE_QWEN2                                                                                   \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|" NOT_CRLF_L_N "?" L "+|" N "| ?" PUNCT "+[\\r\\n]*|" WS         \
    "*[\\r\\n]+|" WS "+(?!" NWS ")|" WS "+"

static const struct {
    const char *names; /* space-separated values of tokenizer.ggml.pre */
    int ignore_merges;
    const char *re[TOK_MAX_RE];
} pre_defs[] = {
    /* "default" (and no key) is plain GPT-2, as transformers builds it; llama.cpp's own
     * fallback adds digit-group splits that no Hugging Face tokenizer has. */
    {"default gpt2 gpt-2 mpt olmo jais phi-2", 0, {RE_GPT2}},
    {"smollm starcoder refact command-r codeshell exaone minerva", 0, {DIGIT, RE_GPT2}},
    {"llama3 llama-v3 llama-bpe falcon3 pixtral", 1, {RE_LLAMA3}},
    {"dbrx smaug-bpe", 0, {RE_LLAMA3}},
    {"qwen2 deepseek-r1-qwen stablelm2 megrez", 0, {RE_QWEN2}},
};

static int name_in_list(const char *list, const char *name, size_t n)
{
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ' ');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && memcmp(p, name, n) == 0)
            return 1;
        p += l + (e != NULL);
    }
    return 0;
}

static sd_err compile_pre(tok *t, const char *name, size_t n)
{
    int k = -1;
    for (size_t i = 0; i < sizeof pre_defs / sizeof *pre_defs; i++)
        if (name_in_list(pre_defs[i].names, name, n))
            k = (int)i;
    if (k < 0) {
        char all[512] = "";
        for (size_t i = 0; i < sizeof pre_defs / sizeof *pre_defs; i++) {
            strncat(all, pre_defs[i].names, sizeof all - strlen(all) - 2);
            strncat(all, " ", sizeof all - strlen(all) - 1);
        }
        return sd_fail(SD_EUNSUPPORTED,
                       "tokenizer: tokenizer.ggml.pre '%.*s' is not supported (supported: %s)",
                       (int)(n > 64 ? 64 : n), name, all);
    }
    t->ignore_merges = pre_defs[k].ignore_merges;
    for (int i = 0; i < TOK_MAX_RE && pre_defs[k].re[i]; i++) {
        int err;
        PCRE2_SIZE off;
        /* MATCH_INVALID_UTF: invalid UTF-8 in the input matches nothing and so falls between
         * matches, into pieces of its own, instead of failing the match. */
        pcre2_code *re =
            pcre2_compile((PCRE2_SPTR)pre_defs[k].re[i], PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, NULL);
        if (!re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            return sd_fail(SD_EUNSUPPORTED, "tokenizer: pre-tokenizer regex %d of '%s': %s at %zu",
                           i, t->pre, (const char *)msg, (size_t)off);
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter works without it */
        t->re[t->n_re++] = re;
    }
    return SD_OK;
}

/* ---- merges ---- */

static uint32_t pair_hash(uint64_t key, uint32_t mask)
{
    return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static int32_t pair_get(const tok_pairmap *m, int32_t l, int32_t r, int32_t *result)
{
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    for (uint32_t i = pair_hash(key, m->mask);; i = (i + 1) & m->mask) {
        const tok_pair_slot *s = &m->slots[i];
        if (s->rank < 0)
            return -1;
        if (s->key == key) {
            *result = s->result;
            return s->rank;
        }
    }
}

static sd_err load_merges(tok *t, const gguf *g)
{
    gguf_vtype et;
    uint64_t n;
    const void *data;
    const char *key = "tokenizer.ggml.merges";
    sd_err e = gguf_get_arr(g, key, &et, &n, &data);
    if (e == SD_ENOTFOUND)
        return sd_fail(e, "tokenizer: missing key %s (required by the gpt2 model)", key);
    if (e != SD_OK)
        return sd_fail(e, "tokenizer: %s: %s", key, sd_errmsg());
    if (et != GGUF_VT_STRING)
        return sd_fail(SD_EPROTO, "tokenizer: %s is an array of type %d, not strings", key,
                       (int)et);
    if (n > (1u << 30))
        return sd_fail(SD_EPROTO, "tokenizer: %s has %llu entries", key, (unsigned long long)n);
    uint32_t cap = 16;
    while (cap < 2 * (uint32_t)n)
        cap <<= 1;
    t->merges.slots = malloc(cap * sizeof *t->merges.slots);
    if (!t->merges.slots)
        return sd_fail(SD_ENOMEM, "tokenizer: merge map of %u slots", cap);
    for (uint32_t i = 0; i < cap; i++)
        t->merges.slots[i].rank = -1;
    t->merges.mask = cap - 1;
    t->n_merges = (int32_t)n;

    char *cat = NULL;
    size_t cat_cap = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if ((e = gguf_get_arr_str(g, key, i, &s, &len)) != SD_OK) {
            e = sd_fail(e, "tokenizer: %s[%llu]: %s", key, (unsigned long long)i, sd_errmsg());
            break;
        }
        const char *sp = memchr(s, ' ', len);
        if (!sp || sp == s || sp == s + len - 1) {
            e = sd_fail(SD_EPROTO, "tokenizer: %s[%llu] = '%.*s' is not two tokens", key,
                        (unsigned long long)i, (int)(len > 80 ? 80 : len), s);
            break;
        }
        size_t la = (size_t)(sp - s), lb = len - la - 1;
        int32_t a = tok_strmap_get(t, s, la), b = tok_strmap_get(t, sp + 1, lb);
        if (la + lb > cat_cap) {
            free(cat);
            cat_cap = 2 * (la + lb);
            if (!(cat = malloc(cat_cap))) {
                e = sd_fail(SD_ENOMEM, "tokenizer: merges");
                break;
            }
        }
        memcpy(cat, s, la);
        memcpy(cat + la, sp + 1, lb);
        int32_t ab = tok_strmap_get(t, cat, la + lb);
        if (a < 0 || b < 0 || ab < 0) {
            e = sd_fail(SD_EPROTO, "tokenizer: %s[%llu] = '%.*s': '%.*s' is not in the vocabulary",
                        key, (unsigned long long)i, (int)(len > 80 ? 80 : len), s,
                        (int)(a < 0   ? la
                              : b < 0 ? lb
                                      : la + lb),
                        a < 0   ? s
                        : b < 0 ? sp + 1
                                : cat);
            break;
        }
        uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        uint32_t j = pair_hash(k, t->merges.mask);
        while (t->merges.slots[j].rank >= 0 && t->merges.slots[j].key != k)
            j = (j + 1) & t->merges.mask;
        /* a pair listed twice takes its last rank, as the Hugging Face BPE builder does */
        t->merges.slots[j] = (tok_pair_slot){k, (int32_t)i, ab};
    }
    free(cat);
    return e;
}

sd_err tok_bpe_init(tok *t, const gguf *g)
{
    const char *pre = "default";
    size_t pl = 7;
    sd_err e = gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pl);
    if (e == SD_ENOTFOUND) {
        pre = "default", pl = 7;
        sd_errclear();
    } else if (e != SD_OK) {
        return sd_fail(e, "tokenizer: tokenizer.ggml.pre: %s", sd_errmsg());
    }
    snprintf(t->pre, sizeof t->pre, "%.*s", (int)(pl < sizeof t->pre ? pl : sizeof t->pre - 1),
             pre);
    if ((e = compile_pre(t, pre, pl)) != SD_OK)
        return e;
    if ((e = load_merges(t, g)) != SD_OK)
        return e;
    int missing = 0;
    for (int b = 0; b < 256; b++) {
        char sp[4];
        int l = tok_utf8_put(tok_byte_to_cp((uint8_t)b), sp);
        t->byte_tok[b] = tok_strmap_get(t, sp, (size_t)l);
        missing += t->byte_tok[b] < 0;
    }
    if (missing)
        LOG_DEBUG("tok", "%d of 256 bytes have no token and are dropped when encoding", missing);
    return SD_OK;
}

void tok_bpe_free(tok *t)
{
    for (int i = 0; i < t->n_re; i++)
        pcre2_code_free(t->re[i]);
    t->n_re = 0;
    free(t->merges.slots);
    t->merges.slots = NULL;
}

/* ---- scratch ---- */

sd_err tok_scratch_reserve(tok_scratch *s, size_t n)
{
    if (n <= s->cap)
        return SD_OK;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n)
        cap *= 2;
    int32_t *sym = realloc(s->sym, cap * sizeof *sym);
    if (sym)
        s->sym = sym;
    int32_t *len = realloc(s->len, cap * sizeof *len);
    if (len)
        s->len = len;
    int32_t *prev = realloc(s->prev, cap * sizeof *prev);
    if (prev)
        s->prev = prev;
    int32_t *next = realloc(s->next, cap * sizeof *next);
    if (next)
        s->next = next;
    uint64_t *heap = realloc(s->heap, 3 * cap * sizeof *heap);
    if (heap)
        s->heap = heap;
    if (!sym || !len || !prev || !next || !heap)
        return sd_fail(SD_ENOMEM, "tokenizer: scratch for a %zu-byte piece", n);
    s->cap = cap;
    s->heap_cap = 3 * cap;
    return SD_OK;
}

sd_err tok_scratch_buf(tok_scratch *s, size_t n)
{
    if (n <= s->buf_cap)
        return SD_OK;
    size_t cap = s->buf_cap ? s->buf_cap : 256;
    while (cap < n)
        cap *= 2;
    char *b = realloc(s->buf, cap);
    if (!b)
        return sd_fail(SD_ENOMEM, "tokenizer: %zu-byte buffer", n);
    s->buf = b;
    s->buf_cap = cap;
    return SD_OK;
}

/* Min-heap of (key << 32 | pos): lowest key first, then leftmost position. */
void tok_heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

uint64_t tok_heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m)
            break;
        if (c + 1 < m && h[c + 1] < h[c])
            c++;
        if (v <= h[c])
            break;
        h[i] = h[c];
        i = c;
    }
    if (m)
        h[i] = v;
    return top;
}

/* ---- one piece ---- */

static sd_err bpe_piece(const tok *t, tok_scratch *s, const uint8_t *p, size_t n, tok_sink *sink)
{
    sd_err e;
    if (n == 1) {
        if (t->byte_tok[p[0]] >= 0)
            tok_emit(sink, t->byte_tok[p[0]]);
        return SD_OK;
    }
    if (t->ignore_merges) {
        if ((e = tok_scratch_buf(s, 2 * n)) != SD_OK)
            return e;
        size_t o = 0;
        for (size_t i = 0; i < n; i++)
            o += (size_t)tok_utf8_put(tok_byte_to_cp(p[i]), s->buf + o);
        int32_t id = tok_strmap_get(t, s->buf, o);
        if (id >= 0) {
            tok_emit(sink, id);
            return SD_OK;
        }
    }
    if ((e = tok_scratch_reserve(s, n)) != SD_OK)
        return e;
    /* Symbols start as the bytes' tokens; a byte without one is left out, so its neighbours
     * become adjacent (what the Hugging Face BPE does with no unknown token). */
    int32_t *sym = s->sym, *prev = s->prev, *next = s->next;
    int32_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (t->byte_tok[p[i]] >= 0)
            sym[m++] = t->byte_tok[p[i]];
    if (m == 0)
        return SD_OK;
    size_t hn = 0;
    for (int32_t i = 0; i < m; i++) {
        prev[i] = i - 1;
        next[i] = i + 1 < m ? i + 1 : -1;
        int32_t res, r = i + 1 < m ? pair_get(&t->merges, sym[i], sym[i + 1], &res) : -1;
        if (r >= 0)
            tok_heap_push(s->heap, &hn, ((uint64_t)r << 32) | (uint32_t)i);
    }
    while (hn) {
        uint64_t top = tok_heap_pop(s->heap, &hn);
        int32_t rank = (int32_t)(top >> 32), pos = (int32_t)(uint32_t)top;
        /* Stale entries: the left symbol was merged away (sym = -1), has no right neighbour any
         * more, or the pair there is no longer the one this rank names. */
        if (sym[pos] < 0 || next[pos] < 0)
            continue;
        int32_t nx = next[pos], res = -1;
        if (pair_get(&t->merges, sym[pos], sym[nx], &res) != rank)
            continue;
        sym[pos] = res;
        sym[nx] = -1;
        next[pos] = next[nx];
        if (next[nx] >= 0)
            prev[next[nx]] = pos;
        int32_t r, unused;
        if (prev[pos] >= 0 && (r = pair_get(&t->merges, sym[prev[pos]], res, &unused)) >= 0)
            tok_heap_push(s->heap, &hn, ((uint64_t)r << 32) | (uint32_t)prev[pos]);
        if (next[pos] >= 0 && (r = pair_get(&t->merges, res, sym[next[pos]], &unused)) >= 0)
            tok_heap_push(s->heap, &hn, ((uint64_t)r << 32) | (uint32_t)pos);
    }
    for (int32_t i = 0; i >= 0; i = next[i])
        tok_emit(sink, sym[i]);
    return SD_OK;
}

/* ---- pre-tokenization ---- */

typedef sd_err (*piece_cb)(const tok *t, tok_scratch *s, const char *p, size_t n, void *ctx);

static sd_err split(const tok *t, tok_scratch *s, int level, const char *p, size_t n, piece_cb cb,
                    void *ctx)
{
    if (level == t->n_re)
        return cb(t, s, p, n, ctx);
    sd_err e;
    size_t last = 0, off = 0;
    while (off < n) {
        int rc = pcre2_match(t->re[level], (PCRE2_SPTR)p, n, off, 0, s->md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its frames on the heap */
            rc = pcre2_match(t->re[level], (PCRE2_SPTR)p, n, off, PCRE2_NO_JIT, s->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return sd_fail(SD_EINVAL, "tokenizer: pre-tokenizer regex %d of '%s' failed: %s", level,
                           t->pre, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* an empty match splits nothing: step over one character */
            uint32_t cp;
            int l = tok_utf8_next((const uint8_t *)p + ms, n - ms, &cp);
            off = ms + (l ? (size_t)l : 1);
            continue;
        }
        if (ms > last && (e = split(t, s, level + 1, p + last, ms - last, cb, ctx)) != SD_OK)
            return e;
        if ((e = split(t, s, level + 1, p + ms, me - ms, cb, ctx)) != SD_OK)
            return e;
        last = off = me;
    }
    if (last < n)
        return split(t, s, level + 1, p + last, n - last, cb, ctx);
    return SD_OK;
}

static sd_err bpe_cb(const tok *t, tok_scratch *s, const char *p, size_t n, void *ctx)
{
    return bpe_piece(t, s, (const uint8_t *)p, n, ctx);
}

static sd_err ensure_md(tok_scratch *s)
{
    if (!s->md && !(s->md = pcre2_match_data_create(8, NULL)))
        return sd_fail(SD_ENOMEM, "tokenizer: match data");
    return SD_OK;
}

sd_err tok_bpe_encode_text(const tok *t, tok_scratch *s, const char *text, size_t len,
                           tok_sink *sink)
{
    sd_err e = ensure_md(s);
    if (e != SD_OK)
        return e;
    return split(t, s, 0, text, len, bpe_cb, sink);
}

typedef struct {
    tok_piece_fn fn;
    void *ctx;
} user_cb;

static sd_err user_piece(const tok *t, tok_scratch *s, const char *p, size_t n, void *ctx)
{
    user_cb *u = ctx;
    u->fn(u->ctx, p, n);
    return SD_OK;
}

sd_err tok_pretokenize(const tok *t, const char *text, size_t len, tok_piece_fn fn, void *ctx)
{
    if (t->model != TOK_MODEL_BPE)
        return sd_fail(SD_EINVAL, "tok_pretokenize: only the gpt2 model pre-tokenizes");
    tok_scratch s = {0};
    user_cb u = {fn, ctx};
    sd_err e = ensure_md(&s);
    if (e == SD_OK)
        e = split(t, &s, 0, text, len, user_piece, &u);
    tok_scratch_free(&s);
    return e;
}
