/* rpc: the gRPC wrapper on loopback — unary round trips, status codes and messages, deadlines,
 * wait-for-ready, server streams (order, concurrency, client cancellation), the message size
 * limit, and shutdown with streams in flight. Every wait is bounded in count and time.
 * SD_TEST_LABELS: net */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/clock.h"
#include "../net/rpc.h"
#include "testutil.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Poll until *flag is nonzero, at most max_ms. Returns the flag. */
static int wait_flag(atomic_int *flag, int max_ms)
{
    for (int i = 0; i < max_ms && !atomic_load(flag); i++)
        sleep_ms(1);
    return atomic_load(flag);
}

/* ---- handlers ---- */

/* Echo reversed, so that a reply cannot be the request by accident. */
static rpc_code h_reverse(void *ud, const uint8_t *req, size_t len, rpc_buf *resp, rpc_status *st)
{
    resp->data = malloc(len ? len : 1);
    resp->len = len;
    for (size_t i = 0; i < len; i++)
        resp->data[i] = req[len - 1 - i];
    return RPC_OK;
}

static rpc_code h_fail(void *ud, const uint8_t *req, size_t len, rpc_buf *resp, rpc_status *st)
{
    /* The request names the code to answer with. */
    rpc_code c = len ? (rpc_code)req[0] : RPC_INTERNAL;
    snprintf(st->msg, sizeof st->msg, "refused with %s (%zu bytes)", rpc_code_name(c), len);
    return c;
}

static rpc_code h_slow(void *ud, const uint8_t *req, size_t len, rpc_buf *resp, rpc_status *st)
{
    sleep_ms(300);
    resp->data = malloc(1);
    resp->len = 0;
    return RPC_OK;
}

/* A stream whose request is {uint32 count, uint32 seed}: a producer thread sends count messages
 * of pseudo-random bytes (message i of length derived from seed and i), then finishes OK. An
 * "endless" stream (count 0) produces until the client goes away. */
typedef struct {
    atomic_int streams_started, cancels, producers_done, send_ecanceled;
    atomic_int live_producers;
} srv_state;

typedef struct {
    rpc_stream *s;
    uint32_t count, seed;
    srv_state *ss;
} producer;

static size_t msg_len(uint32_t seed, uint32_t i)
{
    uint64_t x = (uint64_t)seed * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull;
    x ^= x >> 31;
    return (size_t)(x % 2000);
}

static void msg_fill(uint8_t *b, size_t n, uint32_t seed, uint32_t i)
{
    uint64_t x = ((uint64_t)seed << 32 | i) + 1;
    for (size_t k = 0; k < n; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b[k] = (uint8_t)x;
    }
    if (n >= 4)
        memcpy(b, &i, 4); /* the index first: order is checked from it */
}

static void *producer_main(void *arg)
{
    producer *p = arg;
    uint8_t buf[2000];
    uint32_t i = 0;
    for (; p->count == 0 || i < p->count; i++) {
        size_t n = msg_len(p->seed, i);
        if (n < 4)
            n = 4;
        msg_fill(buf, n, p->seed, i);
        sd_err e;
        int tries = 0;
        /* The queue bound is real back-pressure: back off and retry (bounded). */
        while ((e = rpc_stream_send(p->s, buf, n)) == SD_ENOMEM && tries++ < 20000)
            sleep_ms(1);
        if (e == SD_ECANCELED) {
            atomic_fetch_add(&p->ss->send_ecanceled, 1);
            break;
        }
        if (e != SD_OK)
            break;
        if (p->count == 0 && i > 200000) /* bound for an endless stream nobody cancels */
            break;
        if (p->count == 0)
            sleep_ms(i % 16 == 0); /* slow enough for a client to cancel mid-stream */
    }
    /* A finish after cancellation must be safe too. */
    rpc_stream_finish(p->s, RPC_OK, "done");
    atomic_fetch_add(&p->ss->producers_done, 1);
    atomic_fetch_sub(&p->ss->live_producers, 1);
    free(p);
    return NULL;
}

static rpc_code h_stream(void *ud, const uint8_t *req, size_t len, rpc_stream *s, rpc_status *st)
{
    srv_state *ss = ud;
    if (len != 8) {
        snprintf(st->msg, sizeof st->msg, "want 8 request bytes, got %zu", len);
        return RPC_INVALID_ARGUMENT;
    }
    producer *p = calloc(1, sizeof *p);
    p->s = s;
    memcpy(&p->count, req, 4);
    memcpy(&p->seed, req + 4, 4);
    p->ss = ss;
    rpc_stream_set_ud(s, p);
    atomic_fetch_add(&ss->streams_started, 1);
    atomic_fetch_add(&ss->live_producers, 1);
    pthread_t th;
    pthread_create(&th, NULL, producer_main, p);
    pthread_detach(th);
    return RPC_OK;
}

static void h_cancel(void *ud, rpc_stream *s)
{
    srv_state *ss = ud;
    atomic_fetch_add(&ss->cancels, 1);
}

/* A stream finished at once from inside its handler with no message. */
static rpc_code h_stream_empty(void *ud, const uint8_t *req, size_t len, rpc_stream *s,
                               rpc_status *st)
{
    rpc_stream_finish(s, RPC_NOT_FOUND, "no such session");
    return RPC_OK;
}

/* ---- fixture ---- */

typedef struct {
    rpc_server *srv;
    rpc_client *cli;
    int port;
    srv_state ss;
    char target[64];
} fx;

static fx *fx_start(size_t srv_max, size_t cli_max)
{
    fx *f = calloc(1, sizeof *f);
    rpc_server_opts o = {"127.0.0.1:0", srv_max};
    assert_int_equal(rpc_server_create(&f->srv, &o), SD_OK);
    assert_int_equal(rpc_server_add_unary(f->srv, "/t.T/Reverse", h_reverse, NULL), SD_OK);
    assert_int_equal(rpc_server_add_unary(f->srv, "/t.T/Fail", h_fail, NULL), SD_OK);
    assert_int_equal(rpc_server_add_unary(f->srv, "/t.T/Slow", h_slow, NULL), SD_OK);
    assert_int_equal(rpc_server_add_stream(f->srv, "/t.T/Stream", h_stream, &f->ss, h_cancel),
                     SD_OK);
    assert_int_equal(rpc_server_add_stream(f->srv, "/t.T/Empty", h_stream_empty, NULL, NULL),
                     SD_OK);
    assert_int_equal(rpc_server_add_unary(f->srv, "/t.T/Reverse", h_reverse, NULL), SD_EINVAL);
    assert_int_equal(rpc_server_add_unary(f->srv, "NoSlash", h_reverse, NULL), SD_EINVAL);
    assert_int_equal(rpc_server_start(f->srv, &f->port), SD_OK);
    assert_true(f->port > 0);
    snprintf(f->target, sizeof f->target, "127.0.0.1:%d", f->port);
    assert_int_equal(rpc_client_create(&f->cli, f->target, cli_max), SD_OK);
    return f;
}

static void fx_stop(fx *f)
{
    rpc_client_free(f->cli);
    rpc_server_free(f->srv);
    /* Producers finish on their own once the server is gone (sends fail): bounded wait. */
    for (int i = 0; i < 10000 && atomic_load(&f->ss.live_producers) > 0; i++)
        sleep_ms(1);
    assert_int_equal(atomic_load(&f->ss.live_producers), 0);
    free(f);
}

/* ---- tests ---- */

static void test_unary(void **state)
{
    fx *f = fx_start(0, 0);
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    size_t sizes[] = {0, 1, 7, 1000, 65536, 3u << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        uint8_t *b = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            b[i] = (uint8_t)tu_next(&r);
        rpc_buf resp;
        rpc_status st;
        assert_int_equal(rpc_call_unary(f->cli, "/t.T/Reverse", b, n, 5000, 0, &resp, &st), SD_OK);
        assert_int_equal(st.code, RPC_OK);
        assert_int_equal(resp.len, n);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(resp.data[i], b[n - 1 - i]);
        rpc_buf_free(&resp);
        free(b);
    }
    fx_stop(f);
}

static void test_status_codes(void **state)
{
    fx *f = fx_start(0, 0);
    rpc_buf resp;
    rpc_status st;
    assert_int_equal(rpc_call_unary(f->cli, "/t.T/Nope", "x", 1, 5000, 0, &resp, &st), SD_OK);
    assert_int_equal(st.code, RPC_UNIMPLEMENTED);
    assert_non_null(strstr(st.msg, "/t.T/Nope"));
    assert_null(resp.data);

    rpc_code codes[] = {RPC_INVALID_ARGUMENT,
                        RPC_NOT_FOUND,
                        RPC_FAILED_PRECONDITION,
                        RPC_RESOURCE_EXHAUSTED,
                        RPC_INTERNAL,
                        RPC_UNAVAILABLE,
                        RPC_ABORTED};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        uint8_t req[3] = {(uint8_t)codes[i], 1, 2};
        assert_int_equal(rpc_call_unary(f->cli, "/t.T/Fail", req, 3, 5000, 0, &resp, &st), SD_OK);
        assert_int_equal(st.code, codes[i]);
        char want[128];
        snprintf(want, sizeof want, "refused with %s (3 bytes)", rpc_code_name(codes[i]));
        assert_string_equal(st.msg, want);
        assert_null(resp.data);
    }
    /* A stream handler that finishes at once. */
    rpc_call *call;
    assert_int_equal(rpc_call_stream(f->cli, "/t.T/Empty", "", 0, 5000, 0, &call), SD_OK);
    rpc_buf m;
    assert_int_equal(rpc_call_next(call, &m, &st), 0);
    assert_int_equal(st.code, RPC_NOT_FOUND);
    assert_string_equal(st.msg, "no such session");
    assert_int_equal(rpc_call_next(call, &m, &st), 0); /* sticky */
    rpc_call_free(call);
    /* A stream handler refusing the request. */
    assert_int_equal(rpc_call_stream(f->cli, "/t.T/Stream", "abc", 3, 5000, 0, &call), SD_OK);
    assert_int_equal(rpc_call_next(call, &m, &st), 0);
    assert_int_equal(st.code, RPC_INVALID_ARGUMENT);
    assert_non_null(strstr(st.msg, "got 3"));
    rpc_call_free(call);
    fx_stop(f);
}

static void test_deadlines(void **state)
{
    fx *f = fx_start(0, 0);
    rpc_buf resp;
    rpc_status st;
    assert_int_equal(rpc_call_unary(f->cli, "/t.T/Slow", "", 0, 50, 0, &resp, &st), SD_OK);
    assert_int_equal(st.code, RPC_DEADLINE_EXCEEDED);
    /* The server is still fine afterwards. */
    assert_int_equal(rpc_call_unary(f->cli, "/t.T/Reverse", "ab", 2, 5000, 0, &resp, &st), SD_OK);
    assert_int_equal(st.code, RPC_OK);
    rpc_buf_free(&resp);
    fx_stop(f);

    /* No server at all: a port that was just free. */
    rpc_server *tmp;
    rpc_server_opts o = {"127.0.0.1:0", 0};
    int port;
    assert_int_equal(rpc_server_create(&tmp, &o), SD_OK);
    assert_int_equal(rpc_server_start(tmp, &port), SD_OK);
    rpc_server_free(tmp);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    rpc_client *c;
    assert_int_equal(rpc_client_create(&c, target, 0), SD_OK);
    assert_int_equal(rpc_call_unary(c, "/t.T/Reverse", "a", 1, 2000, 0, &resp, &st), SD_OK);
    assert_int_equal(st.code, RPC_UNAVAILABLE);
    assert_int_equal(rpc_call_unary(c, "/t.T/Reverse", "a", 1, 200, 1, &resp, &st), SD_OK);
    assert_int_equal(st.code, RPC_DEADLINE_EXCEEDED);
    rpc_call *call;
    assert_int_equal(rpc_call_stream(c, "/t.T/Stream", "12345678", 8, 200, 1, &call), SD_OK);
    rpc_buf m;
    assert_int_equal(rpc_call_next(call, &m, &st), 0);
    assert_int_equal(st.code, RPC_DEADLINE_EXCEEDED);
    rpc_call_free(call);
    rpc_client_free(c);
}

typedef struct {
    int port;
    int delay_ms;
    rpc_server *srv;
    atomic_int up;
} late_server;

static void *late_main(void *arg)
{
    late_server *l = arg;
    sleep_ms(l->delay_ms);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", l->port);
    rpc_server_opts o = {addr, 0};
    if (rpc_server_create(&l->srv, &o) == SD_OK &&
        rpc_server_add_unary(l->srv, "/t.T/Reverse", h_reverse, NULL) == SD_OK &&
        rpc_server_start(l->srv, NULL) == SD_OK)
        atomic_store(&l->up, 1);
    else
        atomic_store(&l->up, -1);
    return NULL;
}

static void test_wait_for_ready(void **state)
{
    rpc_server *tmp;
    rpc_server_opts o = {"127.0.0.1:0", 0};
    int port;
    assert_int_equal(rpc_server_create(&tmp, &o), SD_OK);
    assert_int_equal(rpc_server_start(tmp, &port), SD_OK);
    rpc_server_free(tmp);

    late_server l = {.port = port, .delay_ms = 300};
    pthread_t th;
    pthread_create(&th, NULL, late_main, &l);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    rpc_client *c;
    assert_int_equal(rpc_client_create(&c, target, 0), SD_OK);
    rpc_buf resp;
    rpc_status st;
    /* Bounded: 15 s deadline; the server comes up after ~0.3 s. */
    assert_int_equal(rpc_call_unary(c, "/t.T/Reverse", "xy", 2, 15000, 1, &resp, &st), SD_OK);
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&l.up), 1);
    assert_int_equal(st.code, RPC_OK);
    assert_int_equal(resp.len, 2);
    assert_memory_equal(resp.data, "yx", 2);
    rpc_buf_free(&resp);
    rpc_client_free(c);
    rpc_server_free(l.srv);
}

/* Read a whole stream of count messages and check every one. Returns the number read. */
static uint32_t read_stream(rpc_client *c, uint32_t count, uint32_t seed, rpc_status *st)
{
    uint8_t req[8];
    memcpy(req, &count, 4);
    memcpy(req + 4, &seed, 4);
    rpc_call *call;
    if (rpc_call_stream(c, "/t.T/Stream", req, 8, 20000, 0, &call) != SD_OK)
        return 0;
    uint8_t want[2000];
    uint32_t i = 0;
    rpc_buf m;
    int r;
    while ((r = rpc_call_next(call, &m, st)) == 1) {
        size_t n = msg_len(seed, i);
        if (n < 4)
            n = 4;
        msg_fill(want, n, seed, i);
        if (m.len != n || memcmp(m.data, want, n) != 0) {
            fprintf(stderr, "stream %u: message %u differs (len %zu, want %zu)\n", seed, i, m.len,
                    n);
            rpc_buf_free(&m);
            break;
        }
        rpc_buf_free(&m);
        i++;
    }
    if (r == 1) {                /* stopped on a mismatch */
        st->code = (rpc_code)99; /* a mismatch, not a gRPC status */
    }
    rpc_call_free(call);
    return i;
}

static void test_stream_in_order(void **state)
{
    fx *f = fx_start(0, 0);
    tu_rng r;
    tu_rng_init(&r, tu_seed() + 1);
    uint32_t n = 3000 + tu_below(&r, 2000), seed = (uint32_t)tu_next(&r);
    rpc_status st;
    assert_int_equal(read_stream(f->cli, n, seed, &st), n);
    assert_int_equal(st.code, RPC_OK);
    assert_string_equal(st.msg, "done");
    fx_stop(f);
}

typedef struct {
    rpc_client *c;
    uint32_t count, seed, got;
    rpc_status st;
} reader;

static void *reader_main(void *arg)
{
    reader *rd = arg;
    rd->got = read_stream(rd->c, rd->count, rd->seed, &rd->st);
    return NULL;
}

static void test_concurrent_streams(void **state)
{
    enum { K = 8 };
    fx *f = fx_start(0, 0);
    tu_rng r;
    tu_rng_init(&r, tu_seed() + 2);
    reader rd[K];
    pthread_t th[K];
    rpc_client *extra = NULL; /* half the readers on a second channel */
    assert_int_equal(rpc_client_create(&extra, f->target, 0), SD_OK);
    for (int i = 0; i < K; i++) {
        rd[i] = (reader){.c = i % 2 ? extra : f->cli,
                         .count = 500 + tu_below(&r, 1000),
                         .seed = (uint32_t)tu_next(&r)};
        pthread_create(&th[i], NULL, reader_main, &rd[i]);
    }
    for (int i = 0; i < K; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(rd[i].got, rd[i].count);
        assert_int_equal(rd[i].st.code, RPC_OK);
    }
    assert_int_equal(atomic_load(&f->ss.streams_started), K);
    assert_int_equal(atomic_load(&f->ss.cancels), 0);
    rpc_client_free(extra);
    fx_stop(f);
}

static void test_client_cancel(void **state)
{
    fx *f = fx_start(0, 0);
    uint8_t req[8] = {0}; /* count 0: endless */
    rpc_call *call;
    assert_int_equal(rpc_call_stream(f->cli, "/t.T/Stream", req, 8, 20000, 0, &call), SD_OK);
    rpc_buf m;
    rpc_status st;
    for (int i = 0; i < 10; i++) {
        assert_int_equal(rpc_call_next(call, &m, &st), 1);
        uint32_t idx;
        memcpy(&idx, m.data, 4);
        assert_int_equal(idx, (uint32_t)i);
        rpc_buf_free(&m);
    }
    rpc_call_cancel(call);
    /* Messages already in flight may still arrive; the end comes with CANCELLED. */
    int r, k = 0;
    while ((r = rpc_call_next(call, &m, &st)) == 1 && k++ < 100000)
        rpc_buf_free(&m);
    assert_int_equal(r, 0);
    assert_int_equal(st.code, RPC_CANCELLED);
    rpc_call_free(call);
    assert_true(wait_flag(&f->ss.cancels, 10000));
    assert_true(wait_flag(&f->ss.send_ecanceled, 10000));
    assert_true(wait_flag(&f->ss.producers_done, 10000));
    assert_int_equal(atomic_load(&f->ss.cancels), 1);
    /* The server keeps serving. */
    assert_int_equal(read_stream(f->cli, 50, 7, &st), 50);
    assert_int_equal(st.code, RPC_OK);
    assert_int_equal(atomic_load(&f->ss.cancels), 1);
    fx_stop(f);
}

static void test_max_message(void **state)
{
    /* Server accepts 64 KiB; the client could send 1 MiB. */
    fx *f = fx_start(64 << 10, 1 << 20);
    size_t n = 100 << 10;
    uint8_t *b = calloc(1, n);
    rpc_buf resp;
    rpc_status st;
    assert_int_equal(rpc_call_unary(f->cli, "/t.T/Reverse", b, n, 5000, 0, &resp, &st), SD_OK);
    assert_int_equal(st.code, RPC_RESOURCE_EXHAUSTED);
    assert_null(resp.data);
    /* A reply over the server's limit is refused by the server itself. */
    assert_int_equal(rpc_call_unary(f->cli, "/t.T/Reverse", b, 60 << 10, 5000, 0, &resp, &st),
                     SD_OK);
    assert_int_equal(st.code, RPC_OK);
    rpc_buf_free(&resp);
    /* The client's own receive limit: a 64 KiB-limited client cannot send 100 KiB either. */
    rpc_client *small;
    assert_int_equal(rpc_client_create(&small, f->target, 64 << 10), SD_OK);
    assert_int_equal(rpc_call_unary(small, "/t.T/Reverse", b, n, 5000, 0, &resp, &st), SD_OK);
    assert_int_equal(st.code, RPC_RESOURCE_EXHAUSTED);
    rpc_client_free(small);
    free(b);
    assert_int_equal(rpc_call_unary(f->cli, "/t.T/Reverse", "ok", 2, 5000, 0, &resp, &st), SD_OK);
    assert_int_equal(st.code, RPC_OK);
    rpc_buf_free(&resp);
    fx_stop(f);
}

static void test_shutdown_in_flight(void **state)
{
    enum { K = 4 };
    fx *f = fx_start(0, 0);
    rpc_call *calls[K];
    uint8_t req[8] = {0};
    rpc_buf m;
    rpc_status st;
    for (int i = 0; i < K; i++) {
        assert_int_equal(rpc_call_stream(f->cli, "/t.T/Stream", req, 8, 20000, 0, &calls[i]),
                         SD_OK);
        assert_int_equal(rpc_call_next(calls[i], &m, &st), 1);
        rpc_buf_free(&m);
    }
    /* One stream whose client already left, not yet finished by its producer? The producers
     * notice on their next send; shutdown must not wait for them either way. */
    double t0 = clock_now_s();
    rpc_server_shutdown(f->srv);
    fprintf(stderr, "shutdown with %d streams took %.1f ms\n", K, (clock_now_s() - t0) * 1e3);
    assert_int_equal(atomic_load(&f->ss.cancels), K);
    for (int i = 0; i < K; i++) {
        int r, k = 0;
        while ((r = rpc_call_next(calls[i], &m, &st)) == 1 && k++ < 1000000)
            rpc_buf_free(&m);
        assert_int_equal(r, 0);
        assert_int_not_equal(st.code, RPC_OK);
        rpc_call_free(calls[i]);
    }
    /* Calls after shutdown fail cleanly. */
    rpc_buf resp;
    assert_int_equal(rpc_call_unary(f->cli, "/t.T/Reverse", "a", 1, 1000, 0, &resp, &st), SD_OK);
    assert_int_not_equal(st.code, RPC_OK);
    fx_stop(f);
}

int main(void)
{
    rpc_global_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unary),
        cmocka_unit_test(test_status_codes),
        cmocka_unit_test(test_deadlines),
        cmocka_unit_test(test_wait_for_ready),
        cmocka_unit_test(test_stream_in_order),
        cmocka_unit_test(test_concurrent_streams),
        cmocka_unit_test(test_client_cancel),
        cmocka_unit_test(test_max_message),
        cmocka_unit_test(test_shutdown_in_flight),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    rpc_global_shutdown();
    return r;
}
