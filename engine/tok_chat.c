/* tok_chat: recognising the chat template and rendering conversations.
 *
 * There is no Jinja interpreter here. A template is recognised by its markers: one that writes
 * <|im_start|> and <|im_end|> is ChatML. A system message the template writes as a literal
 * (SmolLM2: "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n
 * You are ...<|im_end|>\n' }}") becomes the default system message, inserted when the first
 * message is not a system message. Anything else is reported as unsupported. */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

static const char IM_START[] = "<|im_start|>", IM_END[] = "<|im_end|>";

static const char *find_n(const char *h, size_t hn, const char *needle)
{
    size_t nn = strlen(needle);
    for (size_t i = 0; i + nn <= hn; i++)
        if (memcmp(h + i, needle, nn) == 0)
            return h + i;
    return NULL;
}

/* The literal after "<|im_start|>system" + newline up to "<|im_end|>", with Jinja string escapes
 * undone, if the template has one that is plain text (no quote, no expression). */
static sd_err default_system(tok *t, const char *tp, size_t tn)
{
    static const char key[] = "<|im_start|>system";
    const char *end = tp + tn;
    for (const char *p = find_n(tp, tn, key); p; p = find_n(p + 1, (size_t)(end - p - 1), key)) {
        const char *q = p + sizeof key - 1;
        if (q < end && *q == '\n')
            q++;
        else if (q + 1 < end && q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        const char *e = find_n(q, (size_t)(end - q), IM_END);
        if (!e || e == q)
            continue;
        int plain = 1;
        for (const char *c = q; c < e; c++)
            if (*c == '\'' && c[-1] != '\\')
                plain = 0;
        if (!plain || find_n(q, (size_t)(e - q), "{{") || find_n(q, (size_t)(e - q), "{%") ||
            find_n(q, (size_t)(e - q), "\""))
            continue;
        char *d = malloc((size_t)(e - q) + 1);
        if (!d)
            return sd_fail(SD_ENOMEM, "tokenizer: chat template");
        size_t o = 0;
        for (const char *c = q; c < e; c++) {
            if (*c == '\\' && c + 1 < e) {
                c++;
                d[o++] = *c == 'n' ? '\n' : *c == 't' ? '\t' : *c;
            } else {
                d[o++] = *c;
            }
        }
        d[o] = 0;
        t->chat_default_system = d;
        return SD_OK;
    }
    return SD_OK;
}

sd_err tok_chat_init(tok *t, const gguf *g)
{
    const char *tp;
    size_t tn;
    sd_err e = gguf_get_str(g, "tokenizer.chat_template", &tp, &tn);
    if (e == SD_ENOTFOUND) {
        sd_errclear();
        t->chat_kind = TOK_CHAT_NONE;
        return SD_OK;
    }
    if (e != SD_OK)
        return sd_fail(e, "tokenizer: tokenizer.chat_template: %s", sd_errmsg());
    if (find_n(tp, tn, IM_START) && find_n(tp, tn, IM_END)) {
        t->chat_kind = TOK_CHAT_CHATML;
        return default_system(t, tp, tn);
    }
    t->chat_kind = TOK_CHAT_UNSUPPORTED;
    return SD_OK;
}

tok_chat_kind tok_get_chat_kind(const tok *t)
{
    return t->chat_kind;
}
const char *tok_chat_default_system(const tok *t)
{
    return t->chat_default_system;
}

/* Rendering goes through a callback that gets markup (a marker such as <|im_start|>) and text
 * apart, so the same walk both prints and encodes. */
typedef sd_err (*chat_out)(void *ctx, int markup, const char *s, size_t n);

static sd_err render(const tok *t, const tok_chat_msg *msgs, size_t n, int flags, chat_out out,
                     void *ctx)
{
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content)
            return sd_fail(SD_EINVAL, "chat message %zu has a NULL %s", i,
                           msgs[i].role ? "content" : "role");
    sd_err e;
#define OUT(m, s, len)                                                                             \
    do {                                                                                           \
        if ((e = out(ctx, (m), (s), (len))) != SD_OK)                                              \
            return e;                                                                              \
    } while (0)
#define OUTS(m, s) OUT(m, s, strlen(s))
    if (t->chat_kind == TOK_CHAT_CHATML) {
        if (n && t->chat_default_system && strcmp(msgs[0].role, "system") != 0) {
            OUTS(1, IM_START);
            OUTS(0, "system\n");
            OUTS(0, t->chat_default_system);
            OUTS(1, IM_END);
            OUTS(0, "\n");
        }
        for (size_t i = 0; i < n; i++) {
            OUTS(1, IM_START);
            OUTS(0, msgs[i].role);
            OUTS(0, "\n");
            OUTS(0, msgs[i].content);
            OUTS(1, IM_END);
            OUTS(0, "\n");
        }
        if (flags & TOK_CHAT_ADD_ASSISTANT) {
            OUTS(1, IM_START);
            OUTS(0, "assistant\n");
        }
        return SD_OK;
    }
    if (!(flags & TOK_CHAT_PLAIN_FALLBACK))
        return sd_fail(SD_EUNSUPPORTED,
                       "tokenizer: %s (ChatML is supported; pass "
                       "TOK_CHAT_PLAIN_FALLBACK for plain 'role: content' text)",
                       t->chat_kind == TOK_CHAT_NONE
                           ? "the model has no tokenizer.chat_template"
                           : "the model's tokenizer.chat_template is not a recognised format");
    for (size_t i = 0; i < n; i++) {
        OUTS(0, msgs[i].role);
        OUTS(0, ": ");
        OUTS(0, msgs[i].content);
        OUTS(0, "\n\n");
    }
    if (flags & TOK_CHAT_ADD_ASSISTANT)
        OUTS(0, "assistant: ");
    return SD_OK;
#undef OUTS
#undef OUT
}

typedef struct {
    char *buf;
    size_t cap, n;
} print_ctx;

static sd_err print_out(void *ctx, int markup, const char *s, size_t n)
{
    print_ctx *p = ctx;
    if (p->n + n < p->cap)
        memcpy(p->buf + p->n, s, n);
    p->n += n;
    return SD_OK;
}

sd_err tok_chat_format(const tok *t, const tok_chat_msg *msgs, size_t n_msgs, int flags, char *buf,
                       size_t cap, size_t *n_out)
{
    if (!t || !n_out || (!msgs && n_msgs) || (!buf && cap))
        return sd_fail(SD_EINVAL, "tok_chat_format: NULL argument");
    *n_out = 0;
    print_ctx p = {buf, cap, 0};
    sd_err e = render(t, msgs, n_msgs, flags, print_out, &p);
    if (e != SD_OK)
        return e;
    *n_out = p.n;
    if (p.n + 1 > cap)
        return sd_fail(SD_ERANGE, "tok_chat_format: %zu bytes (and a NUL) do not fit in %zu", p.n,
                       cap);
    buf[p.n] = 0;
    return SD_OK;
}

/* Encoding: text is gathered until the next marker, so a role, its newline and the content are
 * one stretch, as a tokenizer sees them between two special tokens. */
typedef struct {
    const tok *t;
    tok_scratch s;
    tok_sink sink;
    char *text;
    size_t n, cap;
    int first;
} enc_ctx;

static sd_err enc_flush(enc_ctx *c)
{
    sd_err e = SD_OK;
    if (c->n)
        e = tok_encode_into(c->t, &c->s, c->text, c->n, 0, &c->first, &c->sink);
    c->n = 0;
    return e;
}

static sd_err enc_out(void *ctx, int markup, const char *s, size_t n)
{
    enc_ctx *c = ctx;
    sd_err e;
    if (markup) {
        if ((e = enc_flush(c)) != SD_OK)
            return e;
        int32_t id = tok_strmap_get(c->t, s, n);
        if (id >= 0 && c->t->type[id] == TOK_TYPE_CONTROL) {
            tok_emit(&c->sink, id);
            return SD_OK;
        }
        return tok_encode_into(c->t, &c->s, s, n, 1, &c->first, &c->sink);
    }
    if (c->n + n > c->cap) {
        size_t cap = c->cap ? c->cap : 256;
        while (cap < c->n + n)
            cap *= 2;
        char *b = realloc(c->text, cap);
        if (!b)
            return sd_fail(SD_ENOMEM, "tok_chat_encode: %zu bytes", cap);
        c->text = b;
        c->cap = cap;
    }
    memcpy(c->text + c->n, s, n);
    c->n += n;
    return SD_OK;
}

sd_err tok_chat_encode(const tok *t, const tok_chat_msg *msgs, size_t n_msgs, int flags,
                       int32_t *out, size_t cap, size_t *n_out)
{
    if (!t || !n_out || (!msgs && n_msgs) || (!out && cap))
        return sd_fail(SD_EINVAL, "tok_chat_encode: NULL argument");
    *n_out = 0;
    enc_ctx c = {.t = t, .sink = {out, cap, 0}, .first = 1};
    sd_err e = render(t, msgs, n_msgs, flags, enc_out, &c);
    if (e == SD_OK)
        e = enc_flush(&c);
    tok_scratch_free(&c.s);
    free(c.text);
    if (e != SD_OK)
        return e;
    *n_out = c.sink.n;
    if (c.sink.n > cap)
        return sd_fail(SD_ERANGE, "tok_chat_encode: %zu ids do not fit in %zu", c.sink.n, cap);
    return SD_OK;
}

sd_err tok_encode_prompt(const tok *t, const char *prompt, const char *system, int chat,
                         int32_t **ids, size_t *n)
{
    size_t cap = strlen(prompt) + (system ? strlen(system) : 0) + 256;
    *n = 0;
    *ids = malloc(sizeof(int32_t) * cap);
    if (!*ids)
        return SD_ENOMEM;
    if (chat) {
        tok_chat_msg msgs[2];
        size_t nm = 0;
        if (system)
            msgs[nm++] = (tok_chat_msg){"system", system};
        msgs[nm++] = (tok_chat_msg){"user", prompt};
        return tok_chat_encode(t, msgs, nm, TOK_CHAT_ADD_ASSISTANT, *ids, cap, n);
    }
    return tok_encode(t, prompt, strlen(prompt),
                      TOK_PARSE_SPECIAL | (tok_wants_bos(t) ? TOK_ADD_BOS : 0), *ids, cap, n);
}
