/* rpc: a small wrapper over the gRPC core C API (grpc 1.51, <grpc/grpc.h>) for the control plane.
 * Payloads are opaque bytes (protobuf-c messages packed by the caller); methods are full gRPC
 * paths ("/specd.Coordinator/Register").
 *
 * Server: one completion-queue thread. Unary handlers run on it synchronously and must be quick
 * (no blocking on other nodes). A server-streaming call is handed to its handler as an
 * rpc_stream the application owns until rpc_stream_finish: messages queued with rpc_stream_send
 * from any thread go out one at a time (one outstanding SEND_MESSAGE per call); a client that goes
 * away (cancel, deadline, broken connection) is reported once through on_cancel and makes later
 * sends fail with SD_ECANCELED.
 *
 * Client: blocking calls with a deadline and optional wait-for-ready (without it a server that is
 * not up yet fails at once with RPC_UNAVAILABLE). */
#ifndef SD_RPC_H
#define SD_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "../common/sd_err.h"

/* gRPC status codes (same numbers as grpc_status_code). */
typedef enum {
    RPC_OK = 0,
    RPC_CANCELLED = 1,
    RPC_UNKNOWN = 2,
    RPC_INVALID_ARGUMENT = 3,
    RPC_DEADLINE_EXCEEDED = 4,
    RPC_NOT_FOUND = 5,
    RPC_ALREADY_EXISTS = 6,
    RPC_PERMISSION_DENIED = 7,
    RPC_RESOURCE_EXHAUSTED = 8,
    RPC_FAILED_PRECONDITION = 9,
    RPC_ABORTED = 10,
    RPC_OUT_OF_RANGE = 11,
    RPC_UNIMPLEMENTED = 12,
    RPC_INTERNAL = 13,
    RPC_UNAVAILABLE = 14,
} rpc_code;

const char *rpc_code_name(rpc_code c); /* "UNAVAILABLE", ... */

/* A reply or a final status: code + human-readable message (NUL-terminated, truncated). */
typedef struct {
    rpc_code code;
    char msg[256];
} rpc_status;

/* Bytes owned by whoever receives them; free with rpc_buf_free. */
typedef struct {
    uint8_t *data;
    size_t len;
} rpc_buf;

void rpc_buf_free(rpc_buf *b); /* frees data, zeroes the struct; NULL is a no-op */

/* Process-wide init/shutdown of gRPC (reference counted; call once per user). */
void rpc_global_init(void);
void rpc_global_shutdown(void);

/* ---- server ---- */

typedef struct rpc_server rpc_server;
typedef struct rpc_stream rpc_stream;

/* Unary handler: fill *resp (malloc'd bytes, taken over by the server) and return RPC_OK, or
 * return another code with st->msg set; resp is ignored then. Runs on the server thread. */
typedef rpc_code (*rpc_unary_fn)(void *ud, const uint8_t *req, size_t len, rpc_buf *resp,
                                 rpc_status *st);
/* Server-streaming handler: takes ownership of s (must eventually call rpc_stream_finish,
 * from any thread). Returning a code other than RPC_OK finishes the call at once with that
 * status and st->msg (s must not be used then). */
typedef rpc_code (*rpc_stream_fn)(void *ud, const uint8_t *req, size_t len, rpc_stream *s,
                                  rpc_status *st);

typedef struct {
    const char *addr;       /* "127.0.0.1:0" (0 = ephemeral), "0.0.0.0:7000", "[::]:7000" */
    size_t max_msg_bytes;   /* receive limit per message (0 = 4 MiB); also a DoS bound */
} rpc_server_opts;

sd_err rpc_server_create(rpc_server **out, const rpc_server_opts *o);
/* Register methods before rpc_server_start. */
sd_err rpc_server_add_unary(rpc_server *s, const char *method, rpc_unary_fn fn, void *ud);
sd_err rpc_server_add_stream(rpc_server *s, const char *method, rpc_stream_fn fn, void *ud,
                             void (*on_cancel)(void *ud, rpc_stream *s));
/* Bind and start the server thread; *port gets the bound port (may be NULL). */
sd_err rpc_server_start(rpc_server *s, int *port);
/* Stop accepting, cancel calls in flight (their on_cancel fires), wait for the server thread.
 * Streams the application still owns stay valid until it finishes them. */
void rpc_server_shutdown(rpc_server *s);
void rpc_server_free(rpc_server *s); /* shuts down first if needed; NULL is a no-op */

/* Application data attached to a stream (e.g. its session). */
void rpc_stream_set_ud(rpc_stream *s, void *ud);
void *rpc_stream_ud(const rpc_stream *s);
/* Queue one message (copied). SD_ECANCELED once the client is gone; SD_ENOMEM when more than
 * the queue bound (1024 messages) is pending. */
sd_err rpc_stream_send(rpc_stream *s, const void *data, size_t len);
/* Nonzero once the client has gone away. */
int rpc_stream_cancelled(const rpc_stream *s);
/* Send the queued messages, then the final status; releases the application's reference (s
 * must not be used afterwards). Safe after cancellation. */
void rpc_stream_finish(rpc_stream *s, rpc_code code, const char *msg);

/* ---- client ---- */

typedef struct rpc_client rpc_client;
typedef struct rpc_call rpc_call;

/* target: "host:port". max_msg_bytes as for the server (0 = 4 MiB). */
sd_err rpc_client_create(rpc_client **out, const char *target, size_t max_msg_bytes);
void rpc_client_free(rpc_client *c);

/* Blocking unary call. Returns SD_OK when the call completed (whatever its status: read
 * st->code), SD_EIO when it could not be made. resp gets the reply bytes when st->code == OK.
 * timeout_ms bounds the whole call; wait_for_ready waits for the server within it. */
sd_err rpc_call_unary(rpc_client *c, const char *method, const void *req, size_t len,
                      int timeout_ms, int wait_for_ready, rpc_buf *resp, rpc_status *st);

/* Server-streaming call: send req, then read messages with rpc_call_next. */
sd_err rpc_call_stream(rpc_client *c, const char *method, const void *req, size_t len,
                       int timeout_ms, int wait_for_ready, rpc_call **out);
/* Next message into *msg: returns 1 with a message, 0 at the end of the stream (st holds the
 * final status), or -1 on a local failure. */
int rpc_call_next(rpc_call *call, rpc_buf *msg, rpc_status *st);
/* Cancel the call (the server sees the client go away). */
void rpc_call_cancel(rpc_call *call);
void rpc_call_free(rpc_call *call); /* cancels if not finished; NULL is a no-op */

#endif
