/* fuzz_wire: libFuzzer target for the data plane's decode + validation — what every daemon runs
 * on every incoming UCX message before use (net/wire.c) — and, for messages that pass, the
 * coordinator's sequencer fed with them (coordinator/seq.c re-checks trees and verdict paths).
 * Input: one byte of message id, then the protobuf payload. Nothing may crash, leak or trip a
 * sanitizer; an accepted message, packed again, must be accepted again. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/seq.h"
#include "net/wire.h"

#define V 49152
#define MAX_NODES 64

static void nop_chunk(void *ud, const seq_chunk *c) { (void)ud, (void)c; }
static void nop_cancel(void *ud, int w, uint64_t id) { (void)ud, (void)w, (void)id; }
static void nop_commit(void *ud, const seq_commit *c) { (void)ud, (void)c; }
static void nop_emit(void *ud, const int32_t *t, int n) { (void)ud, (void)t, (void)n; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (len < 1)
        return 0;
    unsigned id = data[0] % 9;
    ProtobufCMessage *m;
    if (wire_decode_data(id, data + 1, len - 1, V, MAX_NODES, &m))
        return 0;
    uint8_t *b;
    size_t n;
    if (wire_pack(m, &b, &n) == SD_OK) { /* what we would forward, a peer accepts */
        ProtobufCMessage *m2;
        if (wire_decode_data(id, b, n, V, MAX_NODES, &m2))
            __builtin_trap();
        protobuf_c_message_free_unpacked(m2, NULL);
        free(b);
    }
    int32_t prompt[3] = {1, 2, 3};
    seq_config c = {.mode = SEQ_ASYNC, .n_workers = 1, .max_inflight = 1, .max_nodes = 16,
                    .max_tree = MAX_NODES, .n_predict = 64, .max_ctx = 256, .draft_wait_ms = 0};
    seq_io io = {nop_chunk, nop_cancel, nop_commit, nop_emit, NULL};
    seq *s;
    if (seq_init(&s, &c, &io, prompt, 3) == SD_OK) {
        seq_pump(s, 1); /* one chunk in flight (id 1) */
        if (id == SPECD__DATA_MSG_ID__DATA_MSG_TREE_EXTEND) {
            Specd__TreeExtend *x = (Specd__TreeExtend *)m;
            seq_tree_extend(s, x->epoch, x->first_id, x->parent, x->token,
                            x->n_logp ? x->logp : NULL, (int)x->n_token, 2);
        } else if (id == SPECD__DATA_MSG_ID__DATA_MSG_VERDICT) {
            Specd__Verdict *v = (Specd__Verdict *)m;
            seq_verdict(s, v->chunk_id, 0, v->path, (int)v->n_path, v->next, 2);
        }
        seq_free(s);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
