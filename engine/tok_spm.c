/* tok_spm: SentencePiece-style encoding ("llama" model): spaces become U+2581, the text starts as
 * one symbol per UTF-8 character, and adjacent symbols whose concatenation is a token merge,
 * highest token score first (leftmost on ties). Symbols that end up without a token fall back to
 * <0xAB> byte tokens, or to the unknown token when the vocabulary has no byte tokens. */
#include "tok_impl.h"

#include <string.h>

/* Tokens a merge may produce and a symbol may become. */
static int32_t spm_lookup(const tok *t, const char *s, size_t n)
{
    int32_t id = tok_strmap_get(t, s, n);
    if (id < 0)
        return -1;
    int ty = t->type[id];
    return ty == TOK_TYPE_NORMAL || ty == TOK_TYPE_UNDEFINED || ty == TOK_TYPE_USER_DEFINED ? id
                                                                                            : -1;
}

/* A heap key that orders higher scores first. */
static uint32_t score_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* monotonic in f */
    return ~u;
}

static void try_pair(const tok *t, tok_scratch *s, size_t *hn, int32_t l)
{
    if (l < 0 || s->next[l] < 0)
        return;
    int32_t r = s->next[l];
    int32_t id = spm_lookup(t, s->buf + s->sym[l], (size_t)(s->len[l] + s->len[r]));
    if (id >= 0)
        tok_heap_push(s->heap, hn, ((uint64_t)score_key(t->score[id]) << 32) | (uint32_t)l);
}

sd_err tok_spm_encode_text(const tok *t, tok_scratch *s, const char *text, size_t len,
                           int add_prefix, tok_sink *sink)
{
    sd_err e;
    size_t need = 3 * len + 3;
    if ((e = tok_scratch_buf(s, need)) != SD_OK || (e = tok_scratch_reserve(s, len + 1)) != SD_OK)
        return e;
    char *b = s->buf;
    size_t n = 0;
    if (add_prefix)
        memcpy(b, "\xE2\x96\x81", 3), n = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ')
            memcpy(b + n, "\xE2\x96\x81", 3), n += 3;
        else
            b[n++] = text[i];
    }
    /* symbols: one per character; a byte that starts no valid character is a symbol alone */
    int32_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int l = tok_utf8_next((const uint8_t *)b + i, n - i, &cp);
        if (!l)
            l = 1;
        s->sym[m] = (int32_t)i;
        s->len[m] = l;
        s->prev[m] = m - 1;
        s->next[m] = -1;
        if (m)
            s->next[m - 1] = m;
        m++;
        i += (size_t)l;
    }
    if (m == 0)
        return SD_OK;
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < m; i++)
        try_pair(t, s, &hn, i);
    while (hn) {
        uint64_t top = tok_heap_pop(s->heap, &hn);
        int32_t l = (int32_t)(uint32_t)top, r;
        uint32_t key = (uint32_t)(top >> 32);
        /* Stale entries: l was merged away (len 0), lost its neighbour, or no longer forms the
         * token this entry was scored for. An entry that still forms a token of the same score
         * is as good as the fresh one pushed for it. */
        if (s->len[l] == 0 || (r = s->next[l]) < 0)
            continue;
        int32_t id = spm_lookup(t, b + s->sym[l], (size_t)(s->len[l] + s->len[r]));
        if (id < 0 || score_key(t->score[id]) != key)
            continue;
        s->len[l] += s->len[r];
        s->len[r] = 0;
        s->next[l] = s->next[r];
        if (s->next[r] >= 0)
            s->prev[s->next[r]] = l;
        try_pair(t, s, &hn, s->prev[l]);
        try_pair(t, s, &hn, l);
    }
    for (int32_t i = 0; i >= 0; i = s->next[i]) {
        int32_t id = spm_lookup(t, b + s->sym[i], (size_t)s->len[i]);
        if (id >= 0) {
            tok_emit(sink, id);
            continue;
        }
        int bytes_ok = 1;
        for (int32_t k = 0; k < s->len[i]; k++)
            bytes_ok &= t->byte_tok[(uint8_t)b[s->sym[i] + k]] >= 0;
        if (bytes_ok) {
            for (int32_t k = 0; k < s->len[i]; k++)
                tok_emit(sink, t->byte_tok[(uint8_t)b[s->sym[i] + k]]);
        } else if (t->unk >= 0) { /* one unknown token per character, as SentencePiece */
            tok_emit(sink, t->unk);
        }
    }
    return SD_OK;
}
