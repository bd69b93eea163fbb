/* wire: protobuf-c messages to and from bytes, and the validation every incoming data-plane
 * message passes before use (CONVENTIONS.md: ranges, sizes, tree parents topological, token ids
 * below the vocabulary). Errors name the offending field. */
#ifndef SD_WIRE_H
#define SD_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "../common/sd_err.h"
#include "proto/specd.pb-c.h"
#include "rpc.h"

#define WIRE_PROTOCOL_VERSION SPECD__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT

/* Limits on what a data-plane message may carry (also what the fuzzer checks). */
#define WIRE_MAX_TOKENS 65536 /* prompt / base / commit tokens */
#define WIRE_MAX_NODES 1024   /* nodes in one chunk or tree extension */

/* Pack m into malloc'd bytes (*out, *len); free(*out). */
sd_err wire_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len);

/* Unpack bytes as descriptor d; NULL data with len 0 is an empty message. The result is freed
 * with protobuf_c_message_free_unpacked(m, NULL). Malformed bytes are SD_EPROTO. */
sd_err wire_unpack(const ProtobufCMessageDescriptor *d, const void *data, size_t len,
                   ProtobufCMessage **out);

/* A unary gRPC call with protobuf messages: pack req, call method, and when the call succeeded
 * (st->code == RPC_OK) and reply_desc is set, unpack the reply into *reply (free it with
 * protobuf_c_message_free_unpacked). SD_OK when the call completed (read st->code; *reply is
 * set only then and only for OK), SD_ENOMEM when req cannot be packed, SD_EIO when the call
 * could not be made, SD_EPROTO for a malformed reply. */
sd_err wire_call(rpc_client *c, const char *method, const ProtobufCMessage *req, int timeout_ms,
                 int wait_for_ready, const ProtobufCMessageDescriptor *reply_desc,
                 ProtobufCMessage **reply, rpc_status *st);

/* The descriptor of data-plane message id (DATA_MSG_*), NULL for an unknown id. */
const ProtobufCMessageDescriptor *wire_data_desc(unsigned id);
const char *wire_data_name(unsigned id);

/* Checks of decoded data-plane messages. n_vocab bounds token ids; max_nodes bounds trees. */
sd_err wire_check_tokens(const int32_t *tok, size_t n, int n_vocab, size_t max, const char *what);
/* parent[i] in -1 .. first_id + i - 1 (nodes of the message and earlier ones), same counts. */
sd_err wire_check_nodes(const int32_t *parent, size_t n_parent, const int32_t *tok, size_t n_tok,
                        uint32_t first_id, int n_vocab, int max_nodes, const char *what);
sd_err wire_check_prompt(const Specd__Prompt *m, int n_vocab);
sd_err wire_check_tree_extend(const Specd__TreeExtend *m, int n_vocab, int max_nodes);
sd_err wire_check_chunk(const Specd__Chunk *m, int n_vocab, int max_nodes);
sd_err wire_check_verdict(const Specd__Verdict *m, int n_vocab, int n_chunk_nodes);
sd_err wire_check_commit(const Specd__Commit *m, int n_vocab);

/* Decode + check one data-plane message as a receiver would (the fuzz target's entry point):
 * returns the unpacked message or an error with the reason. n_vocab / max_nodes as above. */
sd_err wire_decode_data(unsigned id, const void *data, size_t len, int n_vocab, int max_nodes,
                        ProtobufCMessage **out);

#endif
