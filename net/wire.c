#include "wire.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

sd_err wire_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return SD_ENOMEM;
    *len = protobuf_c_message_pack(m, b);
    *out = b;
    return SD_OK;
}

sd_err wire_unpack(const ProtobufCMessageDescriptor *d, const void *data, size_t len,
                   ProtobufCMessage **out)
{
    static const uint8_t empty[1];
    *out = protobuf_c_message_unpack(d, NULL, len, data ? data : empty);
    if (!*out)
        return sd_fail(SD_EPROTO, "%s: malformed message (%zu bytes)", d->short_name, len);
    /* protobuf-c keeps fields numbered 0 as unknown fields, which no encoder may write (and its
     * own decoder rejects once re-packed): malformed */
    for (unsigned i = 0; i < (*out)->n_unknown_fields; i++)
        if ((*out)->unknown_fields[i].tag == 0) {
            protobuf_c_message_free_unpacked(*out, NULL);
            *out = NULL;
            return sd_fail(SD_EPROTO, "%s: a field numbered 0", d->short_name);
        }
    return SD_OK;
}

sd_err wire_call(rpc_client *c, const char *method, const ProtobufCMessage *req, int timeout_ms,
                 int wait_for_ready, const ProtobufCMessageDescriptor *reply_desc,
                 ProtobufCMessage **reply, rpc_status *st)
{
    if (reply)
        *reply = NULL;
    memset(st, 0, sizeof *st);
    uint8_t *b;
    size_t len;
    if (wire_pack(req, &b, &len))
        return sd_fail(SD_ENOMEM, "out of memory for a %s", req->descriptor->short_name);
    rpc_buf resp = {0};
    sd_err e = rpc_call_unary(c, method, b, len, timeout_ms, wait_for_ready, &resp, st);
    free(b);
    if (!e && st->code == RPC_OK && reply_desc)
        e = wire_unpack(reply_desc, resp.data, resp.len, reply);
    rpc_buf_free(&resp);
    return e;
}

static const struct {
    unsigned id;
    const char *name;
    const ProtobufCMessageDescriptor *desc;
} data_msgs[] = {
    {SPECD__DATA_MSG_ID__DATA_MSG_PROMPT, "Prompt", &specd__prompt__descriptor},
    {SPECD__DATA_MSG_ID__DATA_MSG_TREE_EXTEND, "TreeExtend", &specd__tree_extend__descriptor},
    {SPECD__DATA_MSG_ID__DATA_MSG_CHUNK, "Chunk", &specd__chunk__descriptor},
    {SPECD__DATA_MSG_ID__DATA_MSG_VERDICT, "Verdict", &specd__verdict__descriptor},
    {SPECD__DATA_MSG_ID__DATA_MSG_COMMIT, "Commit", &specd__commit__descriptor},
    {SPECD__DATA_MSG_ID__DATA_MSG_CANCEL, "Cancel", &specd__cancel__descriptor},
    {SPECD__DATA_MSG_ID__DATA_MSG_HELLO, "Hello", &specd__hello__descriptor},
};

const ProtobufCMessageDescriptor *wire_data_desc(unsigned id)
{
    for (size_t i = 0; i < sizeof data_msgs / sizeof data_msgs[0]; i++)
        if (data_msgs[i].id == id)
            return data_msgs[i].desc;
    return NULL;
}

const char *wire_data_name(unsigned id)
{
    for (size_t i = 0; i < sizeof data_msgs / sizeof data_msgs[0]; i++)
        if (data_msgs[i].id == id)
            return data_msgs[i].name;
    return "unknown";
}

sd_err wire_check_tokens(const int32_t *tok, size_t n, int n_vocab, size_t max, const char *what)
{
    if (n > max)
        return sd_fail(SD_ERANGE, "%s: %zu tokens, at most %zu", what, n, max);
    for (size_t i = 0; i < n; i++)
        if (tok[i] < 0 || tok[i] >= n_vocab)
            return sd_fail(SD_ERANGE, "%s[%zu]: token id %d outside 0..%d", what, i, tok[i],
                           n_vocab - 1);
    return SD_OK;
}

sd_err wire_check_nodes(const int32_t *parent, size_t n_parent, const int32_t *tok, size_t n_tok,
                        uint32_t first_id, int n_vocab, int max_nodes, const char *what)
{
    if (n_parent != n_tok)
        return sd_fail(SD_EPROTO, "%s: %zu parents for %zu tokens", what, n_parent, n_tok);
    if ((uint64_t)first_id + n_tok > (uint64_t)max_nodes)
        return sd_fail(SD_ERANGE, "%s: nodes %u..%zu exceed the tree limit %d", what, first_id,
                       first_id + n_tok, max_nodes);
    sd_err e = wire_check_tokens(tok, n_tok, n_vocab, WIRE_MAX_NODES, what);
    if (e)
        return e;
    for (size_t i = 0; i < n_parent; i++)
        if (parent[i] < -1 || (int64_t)parent[i] >= (int64_t)first_id + (int64_t)i)
            return sd_fail(SD_EPROTO, "%s: node %zu has parent %d (must be -1..%lld)", what,
                           first_id + i, parent[i], (long long)first_id + (long long)i - 1);
    return SD_OK;
}

sd_err wire_check_prompt(const Specd__Prompt *m, int n_vocab)
{
    if (m->n_tokens == 0)
        return sd_fail(SD_EINVAL, "Prompt: no tokens");
    return wire_check_tokens(m->tokens, m->n_tokens, n_vocab, WIRE_MAX_TOKENS, "Prompt.tokens");
}

sd_err wire_check_tree_extend(const Specd__TreeExtend *m, int n_vocab, int max_nodes)
{
    if (m->n_logp && m->n_logp != m->n_token)
        return sd_fail(SD_EPROTO, "TreeExtend: %zu logp for %zu tokens", m->n_logp, m->n_token);
    for (size_t i = 0; i < m->n_logp; i++)
        if (!(m->logp[i] <= 0) || isinf(m->logp[i]))
            return sd_fail(SD_ERANGE, "TreeExtend.logp[%zu] = %g is not a finite log-probability",
                           i, m->logp[i]);
    return wire_check_nodes(m->parent, m->n_parent, m->token, m->n_token, m->first_id, n_vocab,
                            max_nodes, "TreeExtend");
}

sd_err wire_check_chunk(const Specd__Chunk *m, int n_vocab, int max_nodes)
{
    if (m->n_base_tokens == 0)
        return sd_fail(SD_EINVAL, "Chunk %llu: no base tokens (the root token is required)",
                       (unsigned long long)m->chunk_id);
    sd_err e = wire_check_tokens(m->base_tokens, m->n_base_tokens, n_vocab, WIRE_MAX_TOKENS,
                                 "Chunk.base_tokens");
    if (!e)
        e = wire_check_nodes(m->parent, m->n_parent, m->token, m->n_token, 0, n_vocab, max_nodes,
                             "Chunk");
    return e;
}

sd_err wire_check_verdict(const Specd__Verdict *m, int n_vocab, int n_chunk_nodes)
{
    if (m->error && *m->error)
        return SD_OK; /* a rejection carries no tokens */
    if (m->next < 0 || m->next >= n_vocab)
        return sd_fail(SD_ERANGE, "Verdict.next: token id %d outside 0..%d", m->next, n_vocab - 1);
    if (m->n_path > (size_t)n_chunk_nodes)
        return sd_fail(SD_ERANGE, "Verdict: path of %zu nodes in a chunk of %d", m->n_path,
                       n_chunk_nodes);
    for (size_t i = 0; i < m->n_path; i++)
        if (m->path[i] < 0 || m->path[i] >= n_chunk_nodes ||
            (i > 0 && m->path[i] <= m->path[i - 1]))
            return sd_fail(SD_EPROTO, "Verdict.path[%zu] = %d is not a node after path[%zu]", i,
                           m->path[i], i ? i - 1 : 0);
    return SD_OK;
}

sd_err wire_check_commit(const Specd__Commit *m, int n_vocab)
{
    if (m->n_tokens == 0 || m->n_tokens > m->n_committed)
        return sd_fail(SD_EPROTO, "Commit: %zu new tokens for a committed length of %u",
                       m->n_tokens, m->n_committed);
    if (m->root_node < -1 || (m->root_node >= 0 && (uint32_t)m->root_node >= m->n_seen))
        return sd_fail(SD_EPROTO, "Commit: root node %d outside the %u nodes seen", m->root_node,
                       m->n_seen);
    return wire_check_tokens(m->tokens, m->n_tokens, n_vocab, WIRE_MAX_TOKENS, "Commit.tokens");
}

sd_err wire_decode_data(unsigned id, const void *data, size_t len, int n_vocab, int max_nodes,
                        ProtobufCMessage **out)
{
    *out = NULL;
    const ProtobufCMessageDescriptor *d = wire_data_desc(id);
    if (!d)
        return sd_fail(SD_EPROTO, "unknown data-plane message id %u (%zu bytes)", id, len);
    ProtobufCMessage *m;
    sd_err e = wire_unpack(d, data, len, &m);
    if (e)
        return e;
    switch (id) {
    case SPECD__DATA_MSG_ID__DATA_MSG_PROMPT:
        e = wire_check_prompt((Specd__Prompt *)m, n_vocab);
        break;
    case SPECD__DATA_MSG_ID__DATA_MSG_TREE_EXTEND:
        e = wire_check_tree_extend((Specd__TreeExtend *)m, n_vocab, max_nodes);
        break;
    case SPECD__DATA_MSG_ID__DATA_MSG_CHUNK:
        e = wire_check_chunk((Specd__Chunk *)m, n_vocab, max_nodes);
        break;
    case SPECD__DATA_MSG_ID__DATA_MSG_VERDICT:
        e = wire_check_verdict((Specd__Verdict *)m, n_vocab, max_nodes);
        break;
    case SPECD__DATA_MSG_ID__DATA_MSG_COMMIT:
        e = wire_check_commit((Specd__Commit *)m, n_vocab);
        break;
    default:
        break;
    }
    if (e) {
        protobuf_c_message_free_unpacked(m, NULL);
        return e;
    }
    *out = m;
    return SD_OK;
}
