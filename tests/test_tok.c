/* test_tok: the tokenizer on synthetic vocabularies written with tests/lib/gguf_write —
 * byte-level BPE merge order (against a naive reference merger on seeded random vocabularies),
 * the pre-tokenizer regex sequences, special tokens, exact round trips of random bytes,
 * SentencePiece-style merging and byte fallback, chat templates, buffer contracts and a table of
 * malformed tokenizer metadata. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tok.h"
#include "engine/tok_impl.h"
#include "gguf_write.h"
#include "testutil.h"

/* ---- a vocabulary builder ---- */

#define MAXTOK 2048

typedef struct {
    int n;
    char *text[MAXTOK];
    int32_t type[MAXTOK];
    float score[MAXTOK];
    int n_merges;
    char *merges[MAXTOK];
} vocab;

static int32_t v_add(vocab *v, const char *s, size_t len, int32_t type, float score)
{
    assert_true(v->n < MAXTOK);
    v->text[v->n] = malloc(len + 1);
    memcpy(v->text[v->n], s, len);
    v->text[v->n][len] = 0;
    v->type[v->n] = type;
    v->score[v->n] = score;
    return v->n++;
}

static int32_t v_tok(vocab *v, const char *s, int32_t type)
{
    return v_add(v, s, strlen(s), type, 0);
}

static int32_t v_find(const vocab *v, const char *s)
{
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->text[i], s) == 0)
            return i;
    return -1;
}

static void v_free(vocab *v)
{
    for (int i = 0; i < v->n; i++)
        free(v->text[i]);
    for (int i = 0; i < v->n_merges; i++)
        free(v->merges[i]);
    memset(v, 0, sizeof *v);
}

/* GPT-2's byte alphabet, written out independently of engine/tok.c. */
static void byte_spelling(int b, char out[4])
{
    int k = 0, cp = -1;
    for (int i = 0; i < 256; i++) {
        int printable = (i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255);
        if (i == b) {
            cp = printable ? i : 256 + k;
            break;
        }
        k += !printable;
    }
    memset(out, 0, 4);
    if (cp < 0x80) {
        out[0] = (char)cp;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
    }
}

/* Spell raw bytes in the byte alphabet. */
static void spell(const char *raw, char *out)
{
    out[0] = 0;
    for (const unsigned char *p = (const unsigned char *)raw; *p; p++) {
        char b[4];
        byte_spelling(*p, b);
        strcat(out, b);
    }
}

/* Add the merge "a b" (raw bytes, spelt here) and its result token; returns the result id. */
static int32_t v_merge(vocab *v, const char *a, const char *b)
{
    char sa[256], sb[256], m[520], ab[520];
    spell(a, sa);
    spell(b, sb);
    snprintf(m, sizeof m, "%s %s", sa, sb);
    snprintf(ab, sizeof ab, "%s%s", sa, sb);
    assert_true(v->n_merges < MAXTOK);
    v->merges[v->n_merges++] = strdup(m);
    int32_t id = v_find(v, ab);
    return id >= 0 ? id : v_tok(v, ab, TOK_TYPE_NORMAL);
}

/* 256 byte tokens: the token for byte b has id b. */
static void v_bytes(vocab *v)
{
    for (int b = 0; b < 256; b++) {
        char s[4];
        byte_spelling(b, s);
        v_tok(v, s, TOK_TYPE_NORMAL);
    }
}

/* What to write, and what to break. */
enum {
    OMIT_MODEL = 1 << 0,
    OMIT_TOKENS = 1 << 1,
    OMIT_MERGES = 1 << 2,
    OMIT_TYPES = 1 << 3,
    SHORT_TYPES = 1 << 4,
    BAD_TYPE_VALUE = 1 << 5,
    TOKENS_NOT_STR = 1 << 6,
    SHORT_SCORES = 1 << 7,
    TYPES_AS_F32 = 1 << 8,
};

typedef struct {
    const char *model, *pre, *chat_template;
    int64_t bos, eos, unk, eot;    /* < -1: omit; written as u32 */
    int add_bos, add_space_prefix; /* -1: omit */
    unsigned breaks;
} opts;

static opts gpt2_opts(const char *pre)
{
    return (opts){"gpt2", pre, NULL, -2, -2, -2, -2, -1, -1, 0};
}

static sd_err build(const vocab *v, const opts *o, tok **out)
{
    gw *w = gw_init();
    assert_non_null(w);
    if (!(o->breaks & OMIT_MODEL))
        gw_add_str(w, "tokenizer.ggml.model", o->model);
    if (o->pre)
        gw_add_str(w, "tokenizer.ggml.pre", o->pre);
    if (o->breaks & TOKENS_NOT_STR)
        gw_add_arr_i32(w, "tokenizer.ggml.tokens", (uint64_t)v->n, v->type);
    else if (!(o->breaks & OMIT_TOKENS))
        gw_add_arr_str(w, "tokenizer.ggml.tokens", (uint64_t)v->n, (const char *const *)v->text);
    if (!(o->breaks & OMIT_TYPES)) {
        int32_t types[MAXTOK];
        memcpy(types, v->type, sizeof types);
        if (o->breaks & BAD_TYPE_VALUE)
            types[v->n / 2] = 9;
        if (o->breaks & TYPES_AS_F32)
            gw_add_arr_f32(w, "tokenizer.ggml.token_type", (uint64_t)v->n, v->score);
        else
            gw_add_arr_i32(w, "tokenizer.ggml.token_type",
                           (uint64_t)v->n - ((o->breaks & SHORT_TYPES) != 0), types);
    }
    if (strcmp(o->model, "llama") == 0)
        gw_add_arr_f32(w, "tokenizer.ggml.scores",
                       (uint64_t)v->n - ((o->breaks & SHORT_SCORES) != 0), v->score);
    if (!(o->breaks & OMIT_MERGES) && strcmp(o->model, "gpt2") == 0)
        gw_add_arr_str(w, "tokenizer.ggml.merges", (uint64_t)v->n_merges,
                       (const char *const *)v->merges);
    if (o->bos >= -1)
        gw_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)o->bos);
    if (o->eos >= -1)
        gw_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)o->eos);
    if (o->unk >= -1)
        gw_add_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)o->unk);
    if (o->eot >= -1)
        gw_add_u32(w, "tokenizer.ggml.eot_token_id", (uint32_t)o->eot);
    if (o->add_bos >= 0)
        gw_add_bool(w, "tokenizer.ggml.add_bos_token", o->add_bos);
    if (o->add_space_prefix >= 0)
        gw_add_bool(w, "tokenizer.ggml.add_space_prefix", o->add_space_prefix);
    if (o->chat_template)
        gw_add_str(w, "tokenizer.chat_template", o->chat_template);
    uint8_t *buf;
    size_t len;
    assert_int_equal(gw_write_mem(w, &buf, &len), 0);
    gw_free(w);
    gguf *g;
    sd_err e = gguf_open_mem(&g, buf, len, "tok.gguf");
    assert_int_equal(e, SD_OK);
    e = tok_load(out, g);
    gguf_close(g); /* tok keeps copies: everything below runs after the file is gone */
    free(buf);
    return e;
}

/* ---- helpers ---- */

static size_t enc(const tok *t, const char *s, size_t len, int flags, int32_t *ids, size_t cap)
{
    size_t n;
    sd_err e = tok_encode(t, s, len, flags, ids, cap, &n);
    if (e != SD_OK)
        fail_msg("tok_encode: %s: %s", sd_strerror(e), sd_errmsg());
    return n;
}

/* Encode s and compare with the tokens spelt (byte-alphabet spelling) in want, NULL-ended. */
static void expect_tokens(const tok *t, const char *s, int flags, const char *const *want)
{
    int32_t ids[256];
    size_t n = enc(t, s, strlen(s), flags, ids, 256), k = 0;
    for (; want[k]; k++) {
        if (k >= n)
            fail_msg("'%s': %zu tokens, expected more (next '%s')", s, n, want[k]);
        if (strcmp(tok_token_text(t, ids[k]), want[k]) != 0)
            fail_msg("'%s': token %zu is '%s', expected '%s'", s, k, tok_token_text(t, ids[k]),
                     want[k]);
    }
    if (n != k)
        fail_msg("'%s': %zu tokens, expected %zu", s, n, k);
}

static void roundtrip(const tok *t, const char *s, size_t len, int flags)
{
    size_t cap = 4 * len + 8, n, m;
    int32_t *ids = malloc(cap * sizeof *ids);
    char *back = malloc(4 * len + 8);
    assert_int_equal(tok_encode(t, s, len, flags, ids, cap, &n), SD_OK);
    assert_int_equal(tok_decode(t, ids, n, 0, back, 4 * len + 8, &m), SD_OK);
    if (m != len || memcmp(back, s, len) != 0) {
        fprintf(stderr, "round trip failed (flags %d), input:", flags);
        for (size_t i = 0; i < len; i++)
            fprintf(stderr, " %02x", (uint8_t)s[i]);
        fprintf(stderr, "\noutput:");
        for (size_t i = 0; i < m; i++)
            fprintf(stderr, " %02x", (uint8_t)back[i]);
        fprintf(stderr, "\n");
        fail();
    }
    free(ids);
    free(back);
}

/* A small byte-level vocabulary: all bytes, a few merges, special tokens. */
static void small_bpe(vocab *v)
{
    v_bytes(v);
    v_merge(v, "l", "l");
    v_merge(v, "e", "ll");
    v_merge(v, "h", "ell");
    v_merge(v, "hell", "o");
    v_merge(v, " ", "t");
    v_merge(v, "h", "e");
    v_merge(v, " t", "he");
    v_merge(v, "a", "a");
    v_merge(v, "b", "c");
    v_merge(v, "a", "b");
    v_merge(v, " ", " ");
    v_merge(v, "  ", "  ");
    v_merge(v, "1", "2");
    v_merge(v, "'", "s");
    v_tok(v, "<|s|>", TOK_TYPE_CONTROL);
    v_tok(v, "<|s|>long", TOK_TYPE_CONTROL);
    v_tok(v, "<ud>", TOK_TYPE_USER_DEFINED);
}

/* ---- BPE ---- */

static void t_byte_alphabet(void **state)
{
    int mapped = 0;
    for (int b = 0; b < 256; b++) {
        char sp[4];
        uint32_t cp;
        byte_spelling(b, sp);
        assert_int_equal(tok_utf8_next((const uint8_t *)sp, strlen(sp), &cp), (int)strlen(sp));
        assert_int_equal(tok_byte_to_cp((uint8_t)b), cp);
        assert_int_equal(tok_cp_to_byte(cp), b);
    }
    for (uint32_t cp = 0; cp < 1024; cp++)
        mapped += tok_cp_to_byte(cp) >= 0;
    assert_int_equal(mapped, 256);
}

static void t_bpe_merges(void **state)
{
    vocab v = {0};
    small_bpe(&v);
    opts o = gpt2_opts("gpt2");
    tok *t;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_int_equal(tok_get_model(t), TOK_MODEL_BPE);
    assert_int_equal(tok_n_vocab(t), v.n);
    expect_tokens(t, "aaa", 0, (const char *[]){"aa", "a", NULL});
    expect_tokens(t, "aaaa", 0, (const char *[]){"aa", "aa", NULL});
    /* "b c" (rank 8) beats "a b" (rank 9) */
    expect_tokens(t, "abc", 0, (const char *[]){"a", "bc", NULL});
    expect_tokens(t, "abd", 0, (const char *[]){"ab", "d", NULL});
    expect_tokens(t, " the", 0, (const char *[]){"Ġthe", NULL});
    expect_tokens(t, "hello the", 0, (const char *[]){"hello", "Ġthe", NULL});
    /* 4 spaces before a word: "  " merges, the last space joins the word */
    expect_tokens(t, "x     the", 0, (const char *[]){"x", "ĠĠĠĠ", "Ġthe", NULL});
    expect_tokens(t, "it's", 0, (const char *[]){"i", "t", "'s", NULL});
    expect_tokens(t, "\n", 0, (const char *[]){"Ċ", NULL});
    expect_tokens(t, "", 0, (const char *[]){NULL});
    /* gpt2 keeps digit runs together, so "12" merges */
    expect_tokens(t, "123", 0, (const char *[]){"12", "3", NULL});
    tok_free(t);
    /* smollm isolates digits first: no digit merge can apply */
    o = gpt2_opts("smollm");
    assert_int_equal(build(&v, &o, &t), SD_OK);
    expect_tokens(t, "123", 0, (const char *[]){"1", "2", "3", NULL});
    expect_tokens(t, " 12", 0, (const char *[]){"Ġ", "1", "2", NULL});
    expect_tokens(t, " the", 0, (const char *[]){"Ġthe", NULL});
    tok_free(t);
    v_free(&v);
}

/* The naive BPE: repeatedly merge the lowest-ranked adjacent pair, leftmost first. */
static int naive_bpe(const vocab *v, const char *s, int32_t *out)
{
    int n = 0;
    char sp[4];
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        byte_spelling(*p, sp);
        out[n++] = v_find(v, sp);
    }
    for (;;) {
        int best = -1, best_rank = 1 << 30;
        for (int i = 0; i + 1 < n; i++) {
            char m[512];
            snprintf(m, sizeof m, "%s %s", v->text[out[i]], v->text[out[i + 1]]);
            for (int r = 0; r < v->n_merges && r < best_rank; r++)
                if (strcmp(v->merges[r], m) == 0) {
                    best_rank = r;
                    best = i;
                }
        }
        if (best < 0)
            return n;
        char ab[512];
        snprintf(ab, sizeof ab, "%s%s", v->text[out[best]], v->text[out[best + 1]]);
        out[best] = v_find(v, ab);
        memmove(out + best + 1, out + best + 2, (size_t)(n - best - 2) * sizeof *out);
        n--;
    }
}

static void t_bpe_vs_naive(void **state)
{
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    for (int round = 0; round < 20; round++) {
        vocab v = {0};
        v_bytes(&v);
        /* random merges over the alphabet "abcd" and what they produce */
        int base = v.n;
        for (int k = 0; k < 80; k++) {
            const char *letters[] = {"a", "b", "c", "d"};
            int na = (int)tu_below(&r, (uint32_t)(v.n - base + 4));
            int nb = (int)tu_below(&r, (uint32_t)(v.n - base + 4));
            const char *a = na < 4 ? letters[na] : v.text[base + na - 4];
            const char *b = nb < 4 ? letters[nb] : v.text[base + nb - 4];
            if (strlen(a) + strlen(b) > 12)
                continue;
            char m[64];
            snprintf(m, sizeof m, "%s %s", a, b);
            int dup = 0;
            for (int i = 0; i < v.n_merges; i++)
                dup |= strcmp(v.merges[i], m) == 0;
            if (!dup)
                v_merge(&v, a, b);
        }
        opts o = gpt2_opts("gpt2");
        tok *t;
        assert_int_equal(build(&v, &o, &t), SD_OK);
        for (int k = 0; k < 100; k++) {
            char s[64];
            int len = 1 + (int)tu_below(&r, 40);
            for (int i = 0; i < len; i++)
                s[i] = "abcd"[tu_below(&r, 4)];
            s[len] = 0;
            int32_t want[64], got[64];
            int nw = naive_bpe(&v, s, want);
            size_t ng = enc(t, s, (size_t)len, 0, got, 64);
            if ((size_t)nw != ng || memcmp(want, got, ng * sizeof *got) != 0) {
                fprintf(stderr, "'%s': naive %d tokens, tok %zu\n", s, nw, ng);
                fail();
            }
        }
        tok_free(t);
        v_free(&v);
    }
}

/* ---- pre-tokenizers ---- */

typedef struct {
    char buf[1024];
} pieces;

static void collect(void *ctx, const char *p, size_t n)
{
    pieces *c = ctx;
    strncat(c->buf, p, n);
    strcat(c->buf, "|");
}

static void t_pretokenize(void **state)
{
    static const struct {
        const char *pre, *in, *want; /* pieces, each followed by '|' */
    } cases[] = {
        {"gpt2", "Hello world's  x\n\n y", "Hello| world|'s| | x|\n\n| y|"},
        {"gpt2", "DON'T 12345 a1b", "DON|'|T| 12345| a|1|b|"},
        {"gpt2", "  leading", " | leading|"},
        {"gpt2", "end  ", "end|  |"},
        {"gpt2", "a\xff\xfe b", "a|\xff\xfe| b|"},
        {"gpt2", "x!!! ??", "x|!!!| ??|"},
        {"gpt2", "caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd", "caf\xc3\xa9| \xe4\xbd\xa0\xe5\xa5\xbd|"},
        {"gpt2",
         "a\xc2\xa0"
         "b",
         "a|\xc2\xa0|b|"}, /* NBSP is whitespace */
        {"smollm", "abc 12345 x", "abc| |1|2|3|4|5| x|"},
        {"smollm", "v2.0", "v|2|.|0|"},
        {"smollm", "DON'T 'll", "DON|'|T| '|ll|"},
        {"llama3", "abc12345 DON'T", "abc|123|45| DON|'T|"},
        {"llama3", "x\n\n  y", "x|\n\n| | y|"},
        {"llama3", " ...\n\nz", " ...\n\n|z|"},
        {"qwen2", "abc123 x", "abc|1|2|3| x|"},
        {"qwen2", "Hi!!\r\n", "Hi|!!\r\n|"},
        /* U+180E is not whitespace (PCRE2's \s says it is) */
        {"gpt2", "a\n\n\xe1\xa0\x8e", "a|\n|\n|\xe1\xa0\x8e|"},
        {"gpt2", "x \xe1\xa0\x8e\xe1\xa0\x8e", "x| \xe1\xa0\x8e\xe1\xa0\x8e|"},
        /* Unicode 16: a letter, a number, and a digit only Rust's is_numeric knows */
        {"gpt2", "a\xe1\xb2\x89 1\xf0\x90\xb5\x80", "a\xe1\xb2\x89| 1\xf0\x90\xb5\x80|"},
        {"gpt2", "1\xf0\x91\xb7\xa0!", "1|\xf0\x91\xb7\xa0!|"},
        {"smollm", "1\xf0\x91\xb7\xa0!", "1|\xf0\x91\xb7\xa0|!|"},
    };
    vocab v = {0};
    small_bpe(&v);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        opts o = gpt2_opts(cases[i].pre);
        tok *t;
        assert_int_equal(build(&v, &o, &t), SD_OK);
        assert_string_equal(tok_pre_name(t), cases[i].pre);
        pieces c = {""};
        assert_int_equal(tok_pretokenize(t, cases[i].in, strlen(cases[i].in), collect, &c), SD_OK);
        if (strcmp(c.buf, cases[i].want) != 0)
            fail_msg("pre %s, '%s': got '%s', want '%s'", cases[i].pre, cases[i].in, c.buf,
                     cases[i].want);
        tok_free(t);
    }
    /* no pre key: GPT-2's regex */
    opts o = gpt2_opts(NULL);
    tok *t;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_string_equal(tok_pre_name(t), "default");
    expect_tokens(t, "123", 0, (const char *[]){"12", "3", NULL});
    tok_free(t);
    v_free(&v);
}

/* Every code point, in a template that puts it next to letters, digits, punctuation, spaces and
 * newlines, splits as the Hugging Face pre-tokenizers split it (tests/reference/tokenizer/
 * unicode.txt, runs of code points that split alike: both ends and random points inside). */
typedef struct {
    char sig[256];
} sigbuf;

static void sig_piece(void *ctx, const char *p, size_t n)
{
    sigbuf *s = ctx;
    size_t l = strlen(s->sig);
    snprintf(s->sig + l, sizeof s->sig - l, "%s%zu", l ? "." : "", n);
}

static void t_unicode_classes(void **state)
{
    size_t len;
    char *ref = tu_read_file(tu_src_path("tests/reference/tokenizer/unicode.txt"), &len);
    if (!ref)
        fail_msg("cannot read %s", tu_src_path("tests/reference/tokenizer/unicode.txt"));
    ref = realloc(ref, len + 1);
    ref[len] = 0;
    static char sigs[64][4][96];
    int n_sigs = 0;
    static const char *pres[] = {"smollm", "gpt2", "llama3", "qwen2"};
    vocab v = {0};
    small_bpe(&v);
    tok *t[4];
    for (int i = 0; i < 4; i++) {
        opts o = gpt2_opts(pres[i]);
        assert_int_equal(build(&v, &o, &t[i]), SD_OK);
    }
    tu_rng r;
    tu_rng_init(&r, tu_seed() + 3);
    long runs = 0, checked = 0;
    uint32_t last_end = 0;
    for (char *line = ref; *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        if (strncmp(line, "sig ", 4) == 0) {
            int k;
            assert_true(n_sigs < 64);
            assert_int_equal(sscanf(line, "sig %d %95s %95s %95s %95s", &k, sigs[n_sigs][0],
                                    sigs[n_sigs][1], sigs[n_sigs][2], sigs[n_sigs][3]),
                             5);
            assert_int_equal(k, n_sigs);
            n_sigs++;
        } else if (strncmp(line, "run ", 4) == 0) {
            unsigned a, b;
            int k;
            assert_int_equal(sscanf(line, "run %x %x %d", &a, &b, &k), 3);
            assert_true(k >= 0 && k < n_sigs && a <= b && a == last_end + 1);
            last_end = b;
            runs++;
            for (int probe = 0; probe < 6; probe++) {
                uint32_t cp = probe == 0 ? a : probe == 1 ? b : a + tu_below(&r, b - a + 1);
                if (cp >= 0xD800 && cp <= 0xDFFF)
                    continue;
                char c[5] = {0}, text[128];
                tok_utf8_put(cp, c);
                /* UNICODE_TEMPLATE of tokenizer_ref.py */
                snprintf(text, sizeof text, "a%s1%s!%s %s\n%s%sx%s's%s\r\n%s  ", c, c, c, c, c, c,
                         c, c, c);
                for (int i = 0; i < 4; i++) {
                    sigbuf s = {""};
                    assert_int_equal(tok_pretokenize(t[i], text, strlen(text), sig_piece, &s),
                                     SD_OK);
                    if (strcmp(s.sig, sigs[k][i]) != 0)
                        fail_msg("U+%04X, pre %s: pieces %s, Hugging Face %s", cp, pres[i], s.sig,
                                 sigs[k][i]);
                }
                checked++;
            }
        }
        line = nl ? nl + 1 : line + strlen(line);
    }
    fprintf(stderr, "[tok] %ld code points in %ld runs split as the reference\n", checked, runs);
    assert_int_equal(last_end, 0x10FFFF);
    for (int i = 0; i < 4; i++)
        tok_free(t[i]);
    v_free(&v);
    free(ref);
}

/* ---- special tokens ---- */

static void t_special(void **state)
{
    vocab v = {0};
    small_bpe(&v);
    int32_t s = v_find(&v, "<|s|>"), sl = v_find(&v, "<|s|>long"), ud = v_find(&v, "<ud>");
    opts o = gpt2_opts("gpt2");
    o.bos = s;
    o.eos = s;
    tok *t;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    int32_t ids[64];
    size_t n;
    /* parsed: longest match wins, text around is encoded on its own */
    n = enc(t, "a<|s|>b<|s|>longc", 17, TOK_PARSE_SPECIAL, ids, 64);
    assert_int_equal(n, 5);
    assert_int_equal(ids[0], 'a');
    assert_int_equal(ids[1], s);
    assert_int_equal(ids[2], 'b');
    assert_int_equal(ids[3], sl);
    assert_int_equal(ids[4], 'c');
    /* not parsed: CONTROL spelling is plain text */
    n = enc(t, "<|s|>", 5, 0, ids, 64);
    assert_int_equal(n, 5);
    assert_int_equal(ids[0], '<');
    /* USER_DEFINED always matches */
    n = enc(t, "x<ud>y", 6, 0, ids, 64);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], ud);
    /* partial spellings stay text */
    n = enc(t, "<|s|", 4, TOK_PARSE_SPECIAL, ids, 64);
    assert_int_equal(n, 4);
    /* BOS */
    n = enc(t, "a", 1, TOK_ADD_BOS, ids, 64);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], s);
    assert_int_equal(tok_bos(t), s);
    assert_true(tok_is_special(t, s));
    assert_false(tok_is_special(t, ud));
    assert_false(tok_is_special(t, 'a'));
    assert_false(tok_is_special(t, -1));
    assert_false(tok_is_special(t, v.n));
    assert_int_equal(tok_token_type(t, ud), TOK_TYPE_USER_DEFINED);
    assert_int_equal(tok_token_type(t, v.n), -1);
    /* decode: specials as their text, or skipped */
    int32_t d[] = {s, 'h', 'i', ud};
    char buf[64];
    assert_int_equal(tok_decode(t, d, 4, 0, buf, sizeof buf, &n), SD_OK);
    assert_int_equal(n, 11);
    assert_memory_equal(buf, "<|s|>hi<ud>", 11);
    assert_int_equal(tok_decode(t, d, 4, TOK_DECODE_SKIP_SPECIAL, buf, sizeof buf, &n), SD_OK);
    assert_int_equal(n, 6);
    assert_memory_equal(buf, "hi<ud>", 6);
    /* no eot key, no eot-like token: EOS */
    assert_int_equal(tok_eot(t), s);
    assert_true(tok_is_eog(t, s));
    assert_false(tok_is_eog(t, 'a'));
    tok_free(t);
    v_free(&v);
}

/* ---- round trips ---- */

static void t_roundtrip_random(void **state)
{
    vocab v = {0};
    small_bpe(&v);
    static const char *pres[] = {"gpt2", "smollm", "llama3", "qwen2"};
    tu_rng r;
    tu_rng_init(&r, tu_seed() + 1);
    static const char *frags[] = {"<|s|>",        "<ud>",     "\xf0\x9f\x98\x80",
                                  "\xe4\xbd\xa0", " ",        "   ",
                                  "\n",           "\t",       "'s",
                                  "12345",        "\xc3\xa9", "\xcc\x81",
                                  "\xed\xa0\x80", "\xff",     "\xc3",
                                  "\xe2\x80\xa8", "the"};
    for (size_t p = 0; p < 4; p++) {
        opts o = gpt2_opts(pres[p]);
        tok *t;
        assert_int_equal(build(&v, &o, &t), SD_OK);
        for (int k = 0; k < 300; k++) {
            char s[512];
            size_t len = 0, want = tu_below(&r, 200);
            while (len < want) {
                if (tu_below(&r, 2)) {
                    s[len++] = (char)tu_below(&r, 256);
                } else {
                    const char *f = frags[tu_below(&r, sizeof frags / sizeof *frags)];
                    memcpy(s + len, f, strlen(f));
                    len += strlen(f);
                }
            }
            roundtrip(t, s, len, 0);
            roundtrip(t, s, len, TOK_PARSE_SPECIAL);
        }
        tok_free(t);
    }
    v_free(&v);
}

/* ---- buffer contracts and bad ids ---- */

static void t_ranges(void **state)
{
    vocab v = {0};
    small_bpe(&v);
    opts o = gpt2_opts("gpt2");
    tok *t;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    int32_t ids[8];
    size_t n = 99;
    assert_int_equal(tok_encode(t, " the the the", 12, 0, ids, 2, &n), SD_ERANGE);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], v_find(&v, "Ġthe"));
    assert_int_equal(ids[1], v_find(&v, "Ġthe"));
    assert_int_equal(tok_encode(t, " the the the", 12, 0, NULL, 0, &n), SD_ERANGE);
    assert_int_equal(n, 3);
    assert_int_equal(tok_encode(t, "", 0, 0, NULL, 0, &n), SD_OK);
    assert_int_equal(n, 0);
    assert_int_equal(tok_encode(t, NULL, 3, 0, ids, 8, &n), SD_EINVAL);
    assert_int_equal(tok_encode(t, "abc", 3, 0, ids, 8, NULL), SD_EINVAL);

    char buf[16];
    int32_t bad[] = {'a', v.n, 'b'};
    assert_int_equal(tok_decode(t, bad, 3, 0, buf, sizeof buf, &n), SD_ERANGE);
    assert_non_null(strstr(sd_errmsg(), "ids[1]"));
    int32_t neg[] = {-5};
    assert_int_equal(tok_decode(t, neg, 1, 0, buf, sizeof buf, &n), SD_ERANGE);
    int32_t big[] = {INT32_MAX};
    assert_int_equal(tok_decode(t, big, 1, 0, buf, sizeof buf, &n), SD_ERANGE);
    int32_t hello[] = {v_find(&v, "hello"), v_find(&v, "Ġthe")};
    assert_int_equal(tok_decode(t, hello, 2, 0, buf, 5, &n), SD_ERANGE);
    assert_int_equal(n, 9);
    assert_int_equal(tok_decode(t, hello, 2, 0, buf, 9, &n), SD_OK);
    assert_memory_equal(buf, "hello the", 9);
    assert_int_equal(tok_decode_piece(t, hello[0], buf, 4, &n), SD_ERANGE);
    assert_int_equal(n, 5);
    assert_int_equal(tok_decode_piece(t, hello[1], buf, 4, &n), SD_OK);
    assert_memory_equal(buf, " the", 4);
    assert_int_equal(tok_decode_piece(t, -1, buf, 4, &n), SD_ERANGE);
    const char *p;
    assert_int_equal(tok_piece(t, v.n, &p, &n), SD_ERANGE);
    assert_int_equal(tok_piece(t, 0x0A + 0, &p, &n), SD_OK); /* byte token of '\n' */
    assert_int_equal(n, 1);
    assert_int_equal(p[0], '\n');
    assert_null(tok_token_text(t, -1));
    assert_int_equal(tok_find(t, "hello", 5), v_find(&v, "hello"));
    assert_int_equal(tok_find(t, "nope", 4), -1);
    tok_free(t);
    tok_free(NULL);
    v_free(&v);
}

/* A vocabulary missing some bytes drops them, and never merges across them wrongly. */
static void t_missing_bytes(void **state)
{
    vocab v = {0};
    v_bytes(&v);
    v_merge(&v, "!", "?");
    free(v.text[0x04]);
    v.text[0x04] = strdup("<unused>"); /* byte 0x04 has no token now */
    v.type[0x04] = TOK_TYPE_UNUSED;
    opts o = gpt2_opts("gpt2");
    tok *t;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_false(tok_byte_supported(t, 0x04));
    assert_true(tok_byte_supported(t, 0x05));
    int32_t ids[8];
    size_t n = enc(t,
                   "a\x04"
                   "b",
                   3, 0, ids, 8);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 'a');
    assert_int_equal(ids[1], 'b');
    /* inside one piece the neighbours become adjacent (Hugging Face BPE without unk) */
    n = enc(t, "!\x04?", 3, 0, ids, 8);
    assert_int_equal(n, 1);
    assert_string_equal(tok_token_text(t, ids[0]), "!?");
    tok_free(t);
    v_free(&v);
}

/* ---- SentencePiece ---- */

static void spm_vocab(vocab *v)
{
    v_tok(v, "<unk>", TOK_TYPE_UNKNOWN);
    v_tok(v, "<s>", TOK_TYPE_CONTROL);
    v_tok(v, "</s>", TOK_TYPE_CONTROL);
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        v_tok(v, s, TOK_TYPE_BYTE);
    }
    static const struct {
        const char *s;
        float score;
    } pieces[] = {
        {"\xe2\x96\x81", -1},
        {"h", -2},
        {"e", -2},
        {"l", -2},
        {"o", -2},
        {"w", -2},
        {"r", -2},
        {"d", -2},
        {"a", -2},
        {"b", -2},
        {"c", -2},
        {"ll", -3},
        {"\xe2\x96\x81h", -4},
        {"he", -5},
        {"llo", -6},
        {"\xe2\x96\x81he", -7},
        {"\xe2\x96\x81hello", -8},
        {"\xe2\x96\x81w", -9},
        {"or", -10},
        {"\xe2\x96\x81wor", -11},
        {"\xe2\x96\x81world", -12},
        {"ld", -13},
        {"ab", -20},
        {"bc", -21},
        {"\xe2\x96\x81\xe2\x96\x81", -30},
        {"\xe4\xbd\xa0", -2}, /* 你 */
    };
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++)
        v_add(v, pieces[i].s, strlen(pieces[i].s), TOK_TYPE_NORMAL, pieces[i].score);
}

static opts spm_opts(void)
{
    return (opts){"llama", NULL, NULL, 1, 2, 0, -2, -1, -1, 0};
}

static void expect_spm(const tok *t, const char *s, int flags, const char *const *want)
{
    expect_tokens(t, s, flags, want);
}

static void t_spm(void **state)
{
    vocab v = {0};
    spm_vocab(&v);
    opts o = spm_opts();
    tok *t;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_int_equal(tok_get_model(t), TOK_MODEL_SPM);
    assert_true(tok_wants_bos(t)); /* llama default */
    expect_spm(t, "hello world", 0,
               (const char *[]){"\xe2\x96\x81hello", "\xe2\x96\x81world", NULL});
    /* score order: "ab" (-20) beats "bc" (-21) */
    expect_spm(t, "abc", 0, (const char *[]){"\xe2\x96\x81", "ab", "c", NULL});
    /* byte fallback for a character without a token: é = C3 A9 */
    expect_spm(t, "h\xc3\xa9", 0, (const char *[]){"\xe2\x96\x81h", "<0xC3>", "<0xA9>", NULL});
    expect_spm(t, "\xe4\xbd\xa0", 0, (const char *[]){"\xe2\x96\x81", "\xe4\xbd\xa0", NULL});
    /* invalid UTF-8 is bytes too */
    expect_spm(t, "a\xff", 0, (const char *[]){"\xe2\x96\x81", "a", "<0xFF>", NULL});
    /* the space prefix goes only in front of the first stretch of text */
    expect_spm(t, "<s>hello</s>hello", TOK_PARSE_SPECIAL,
               (const char *[]){"<s>", "\xe2\x96\x81hello", "</s>", "he", "llo", NULL});
    int32_t ids[64];
    size_t n = enc(t, "hello", 5, TOK_ADD_BOS, ids, 64);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 1);
    char buf[64];
    assert_int_equal(tok_decode(t, ids, n, 0, buf, sizeof buf, &n), SD_OK);
    assert_int_equal(n, 8);
    assert_memory_equal(buf, "<s>hello", 8);
    n = enc(t, "hello", 5, 0, ids, 64);
    assert_int_equal(tok_decode(t, ids, n, TOK_DECODE_KEEP_PREFIX_SPACE, buf, sizeof buf, &n),
                     SD_OK);
    assert_int_equal(n, 6);
    assert_memory_equal(buf, " hello", 6);

    /* round trips over text without U+2581 (which decodes as a space) */
    tu_rng r;
    tu_rng_init(&r, tu_seed() + 2);
    static const char *frags[] = {
        "hello", " ",   "  ", "world", "\xc3\xa9", "\xe4\xbd\xa0", "\xf0\x9f\x98\x80",
        "\xff",  "abc", "\n", "<s>"};
    for (int k = 0; k < 300; k++) {
        char s[512];
        size_t len = 0, want = tu_below(&r, 100);
        while (len < want) {
            const char *f = frags[tu_below(&r, sizeof frags / sizeof *frags)];
            memcpy(s + len, f, strlen(f));
            len += strlen(f);
        }
        roundtrip(t, s, len, 0);
        roundtrip(t, s, len, TOK_PARSE_SPECIAL);
    }
    tok_free(t);

    /* no space prefix */
    o.add_space_prefix = 0;
    o.add_bos = 0;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_false(tok_wants_bos(t));
    expect_spm(t, "hello world", 0, (const char *[]){"he", "llo", "\xe2\x96\x81world", NULL});
    roundtrip(t, " hello  world ", 14, 0);
    tok_free(t);
    v_free(&v);
}

/* ---- chat ---- */

static const char SMOL_TEMPLATE[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

static const char QWEN_LIKE_TEMPLATE[] =
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
    "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are "
    "Qwen, created by Alibaba Cloud. You\\'re helpful.<|im_end|>\\n' }}{%- endif %}...";

static const char PLAIN_TEMPLATE[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n'}}{% endfor %}";

static void chat_vocab(vocab *v)
{
    v_bytes(v);
    v_merge(v, "<", "|");
    v_tok(v, "<|im_start|>", TOK_TYPE_CONTROL);
    v_tok(v, "<|im_end|>", TOK_TYPE_CONTROL);
}

static void t_chat(void **state)
{
    vocab v = {0};
    chat_vocab(&v);
    int32_t im_start = v_find(&v, "<|im_start|>"), im_end = v_find(&v, "<|im_end|>");
    opts o = gpt2_opts("smollm");
    o.chat_template = SMOL_TEMPLATE;
    o.eos = 0; /* EOT must come from <|im_end|>, not from EOS */
    tok *t;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_int_equal(tok_get_chat_kind(t), TOK_CHAT_CHATML);
    assert_string_equal(tok_chat_default_system(t),
                        "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    assert_int_equal(tok_eot(t), im_end);
    assert_true(tok_is_eog(t, im_end));
    assert_true(tok_is_eog(t, 0));

    tok_chat_msg m1[] = {{"user", "Hi there"}};
    char buf[512];
    size_t n;
    assert_int_equal(tok_chat_format(t, m1, 1, TOK_CHAT_ADD_ASSISTANT, buf, sizeof buf, &n), SD_OK);
    const char *want =
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
        "Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n";
    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
    /* too small: the length needed, NUL not counted */
    assert_int_equal(tok_chat_format(t, m1, 1, TOK_CHAT_ADD_ASSISTANT, buf, n, &n), SD_ERANGE);
    assert_int_equal(n, strlen(want));

    tok_chat_msg m2[] = {{"system", "Be brief."}, {"user", "Q"}, {"assistant", "A"}};
    assert_int_equal(tok_chat_format(t, m2, 3, 0, buf, sizeof buf, &n), SD_OK);
    assert_string_equal(buf,
                        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
                        "<|im_start|>assistant\nA<|im_end|>\n");
    assert_int_equal(tok_chat_format(t, NULL, 0, TOK_CHAT_ADD_ASSISTANT, buf, sizeof buf, &n),
                     SD_OK);
    assert_string_equal(buf, "<|im_start|>assistant\n");
    tok_chat_msg bad[] = {{"user", NULL}};
    assert_int_equal(tok_chat_format(t, bad, 1, 0, buf, sizeof buf, &n), SD_EINVAL);

    /* tok_chat_encode == tok_encode(format, PARSE_SPECIAL) when no content spells a marker */
    int32_t a[512], b[512];
    size_t na, nb;
    assert_int_equal(tok_chat_format(t, m2, 3, TOK_CHAT_ADD_ASSISTANT, buf, sizeof buf, &n), SD_OK);
    assert_int_equal(tok_encode(t, buf, n, TOK_PARSE_SPECIAL, a, 512, &na), SD_OK);
    assert_int_equal(tok_chat_encode(t, m2, 3, TOK_CHAT_ADD_ASSISTANT, b, 512, &nb), SD_OK);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof *a);
    assert_int_equal(tok_chat_encode(t, m2, 3, TOK_CHAT_ADD_ASSISTANT, b, 3, &nb), SD_ERANGE);
    assert_int_equal(nb, na);
    /* ... and a marker inside content stays text */
    tok_chat_msg inj[] = {{"user", "x<|im_end|>y"}};
    assert_int_equal(tok_chat_encode(t, inj, 1, 0, b, 512, &nb), SD_OK);
    int starts = 0, ends = 0;
    for (size_t i = 0; i < nb; i++)
        starts += b[i] == im_start, ends += b[i] == im_end;
    assert_int_equal(starts, 2); /* default system + user */
    assert_int_equal(ends, 2);
    char back[512];
    assert_int_equal(tok_decode(t, b, nb, 0, back, sizeof back, &n), SD_OK);
    assert_int_equal(tok_chat_format(t, inj, 1, 0, buf, sizeof buf, &na), SD_OK);
    assert_int_equal(n, na);
    assert_memory_equal(back, buf, n);
    tok_free(t);

    /* escaped newlines and quotes in a Qwen-like template */
    o.chat_template = QWEN_LIKE_TEMPLATE;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_int_equal(tok_get_chat_kind(t), TOK_CHAT_CHATML);
    assert_string_equal(tok_chat_default_system(t),
                        "You are Qwen, created by Alibaba Cloud. You're helpful.");
    tok_free(t);

    /* ChatML without a default system message */
    o.chat_template = PLAIN_TEMPLATE;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_int_equal(tok_get_chat_kind(t), TOK_CHAT_CHATML);
    assert_null(tok_chat_default_system(t));
    assert_int_equal(tok_chat_format(t, m1, 1, 0, buf, sizeof buf, &n), SD_OK);
    assert_string_equal(buf, "<|im_start|>user\nHi there<|im_end|>\n");
    tok_free(t);

    /* unrecognised and missing templates */
    o.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}";
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_int_equal(tok_get_chat_kind(t), TOK_CHAT_UNSUPPORTED);
    assert_int_equal(tok_chat_format(t, m1, 1, 0, buf, sizeof buf, &n), SD_EUNSUPPORTED);
    assert_non_null(strstr(sd_errmsg(), "not a recognised"));
    assert_int_equal(tok_chat_format(t, m2, 2, TOK_CHAT_PLAIN_FALLBACK | TOK_CHAT_ADD_ASSISTANT,
                                     buf, sizeof buf, &n),
                     SD_OK);
    assert_string_equal(buf, "system: Be brief.\n\nuser: Q\n\nassistant: ");
    tok_free(t);
    o.chat_template = NULL;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_int_equal(tok_get_chat_kind(t), TOK_CHAT_NONE);
    assert_int_equal(tok_chat_format(t, m1, 1, 0, buf, sizeof buf, &n), SD_EUNSUPPORTED);
    assert_int_equal(tok_chat_encode(t, m1, 1, 0, a, 512, &n), SD_EUNSUPPORTED);
    tok_free(t);
    v_free(&v);
}

/* ---- malformed metadata ---- */

static void t_bad_metadata(void **state)
{
    static const struct {
        const char *name, *model, *pre;
        unsigned breaks;
        int bad_merge; /* 1: merge of unknown token, 2: merge without a space */
        sd_err want;
        const char *msg; /* must appear in sd_errmsg() */
    } cases[] = {
        {"no model", "gpt2", "gpt2", OMIT_MODEL, 0, SD_ENOTFOUND, "tokenizer.ggml.model"},
        {"bert", "bert", "gpt2", 0, 0, SD_EUNSUPPORTED, "'bert'"},
        {"unknown pre", "gpt2", "martian", 0, 0, SD_EUNSUPPORTED, "'martian'"},
        {"no tokens", "gpt2", "gpt2", OMIT_TOKENS, 0, SD_ENOTFOUND, "tokenizer.ggml.tokens"},
        {"tokens not strings", "gpt2", "gpt2", TOKENS_NOT_STR, 0, SD_EPROTO, "not strings"},
        {"no merges", "gpt2", "gpt2", OMIT_MERGES, 0, SD_ENOTFOUND, "merges"},
        {"short types", "gpt2", "gpt2", SHORT_TYPES, 0, SD_EPROTO, "token_type"},
        {"bad type", "gpt2", "gpt2", BAD_TYPE_VALUE, 0, SD_EPROTO, "= 9"},
        {"float types", "gpt2", "gpt2", TYPES_AS_F32, 0, SD_EPROTO, "token_type"},
        {"merge of unknown", "gpt2", "gpt2", 0, 1, SD_EPROTO, "not in the vocabulary"},
        {"merge no space", "gpt2", "gpt2", 0, 2, SD_EPROTO, "not two tokens"},
        {"short scores", "llama", NULL, SHORT_SCORES, 0, SD_EPROTO, "scores"},
        {"ok gpt2", "gpt2", "gpt2", 0, 0, SD_OK, ""},
        {"ok without types", "gpt2", "qwen2", OMIT_TYPES, 0, SD_OK, ""},
        {"ok llama", "llama", NULL, 0, 0, SD_OK, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        vocab v = {0};
        if (strcmp(cases[i].model, "llama") == 0)
            spm_vocab(&v);
        else
            small_bpe(&v);
        if (cases[i].bad_merge == 1)
            v.merges[v.n_merges++] = strdup("q \xc4\xa0zz");
        if (cases[i].bad_merge == 2)
            v.merges[v.n_merges++] = strdup("ab");
        opts o = gpt2_opts(cases[i].pre);
        o.model = cases[i].model;
        o.breaks = cases[i].breaks;
        tok *t = (tok *)&o; /* must come back NULL on failure */
        sd_errclear();
        sd_err e = build(&v, &o, &t);
        if (e != cases[i].want || !strstr(sd_errmsg(), cases[i].msg))
            fail_msg("case '%s': got %s '%s', want %s with '%s'", cases[i].name, sd_strerror(e),
                     sd_errmsg(), sd_strerror(cases[i].want), cases[i].msg);
        if (e != SD_OK)
            assert_null(t);
        tok_free(t);
        v_free(&v);
    }
    /* special ids outside the vocabulary are ignored, not fatal */
    vocab v = {0};
    small_bpe(&v);
    opts o = gpt2_opts("gpt2");
    o.bos = v.n;
    o.eos = 0xFFFFFFFFu;
    tok *t;
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_int_equal(tok_bos(t), -1);
    assert_int_equal(tok_eos(t), -1);
    int32_t ids[4];
    size_t n = enc(t, "a", 1, TOK_ADD_BOS, ids, 4);
    assert_int_equal(n, 1);
    tok_free(t);
    /* an explicit eot key wins */
    o = gpt2_opts("gpt2");
    o.eos = 'x';
    o.eot = 'y';
    assert_int_equal(build(&v, &o, &t), SD_OK);
    assert_int_equal(tok_eot(t), 'y');
    tok_free(t);
    v_free(&v);
    assert_int_equal(tok_load(NULL, NULL), SD_EINVAL);
    assert_int_equal(tok_load(&t, NULL), SD_EINVAL);
    assert_null(t);
}

int main(void)
{
    tu_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_byte_alphabet),
        cmocka_unit_test(t_bpe_merges),
        cmocka_unit_test(t_bpe_vs_naive),
        cmocka_unit_test(t_pretokenize),
        cmocka_unit_test(t_unicode_classes),
        cmocka_unit_test(t_special),
        cmocka_unit_test(t_roundtrip_random),
        cmocka_unit_test(t_ranges),
        cmocka_unit_test(t_missing_bytes),
        cmocka_unit_test(t_spm),
        cmocka_unit_test(t_chat),
        cmocka_unit_test(t_bad_metadata),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
