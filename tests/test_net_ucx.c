/* ucx: two contexts in one process on 127.0.0.1 (ephemeral ports) — eager and rendezvous
 * messages intact and in order in both directions, in both error modes; peers up and down; sends
 * to closed peers; oversized messages dropped; and the link emulator (delay lower bound,
 * bandwidth serialisation, reordering that changes order but never content, same seed → same
 * order), plus the pure timing model alone; back-pressure on a peer that stops reading; and
 * delivery on a polling thread. Every wait is bounded in count and time.
 * SD_TEST_LABELS: net */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/clock.h"
#include "../net/linkemu.h"
#include "../net/ucx.h"
#include "testutil.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- a sink that records what a context receives ---- */

typedef struct {
    unsigned id;
    size_t len;
    uint8_t *data;
    double t; /* arrival */
    ucx_peer *from;
    int polled; /* delivered on a thread in ucx_poll (test_poll) */
} rmsg;

typedef struct {
    pthread_mutex_t mu;
    rmsg *m;
    int n, cap;
    atomic_int ups, downs;
    ucx_peer *up_peer; /* first accepted peer, with a reference */
    char reason[128];
} sink;

static void sink_init(sink *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
}

static void sink_clear(sink *s)
{
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n; i++)
        free(s->m[i].data);
    s->n = 0;
    pthread_mutex_unlock(&s->mu);
}

static void sink_free(sink *s)
{
    sink_clear(s);
    free(s->m);
    if (s->up_peer)
        ucx_peer_unref(s->up_peer);
    pthread_mutex_destroy(&s->mu);
}

static _Thread_local int in_poller; /* this thread runs ucx_poll (test_poll) */

static void on_msg(void *ud, ucx_peer *from, unsigned id, const void *data, size_t len)
{
    sink *s = ud;
    double t = clock_now_s();
    pthread_mutex_lock(&s->mu);
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->m = realloc(s->m, sizeof *s->m * (size_t)s->cap);
    }
    rmsg *r = &s->m[s->n++];
    r->id = id;
    r->len = len;
    r->data = malloc(len ? len : 1);
    memcpy(r->data, data, len);
    r->t = t;
    r->from = from;
    r->polled = in_poller;
    pthread_mutex_unlock(&s->mu);
}

static void on_up(void *ud, ucx_peer *p)
{
    sink *s = ud;
    if (!s->up_peer) {
        ucx_peer_ref(p);
        s->up_peer = p;
    }
    atomic_fetch_add(&s->ups, 1);
}

static void on_down(void *ud, ucx_peer *p, const char *reason)
{
    sink *s = ud;
    snprintf(s->reason, sizeof s->reason, "%s", reason);
    atomic_fetch_add(&s->downs, 1);
}

static int sink_count(sink *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Wait until the sink holds at least n messages; at most max_ms. */
static int wait_count(sink *s, int n, int max_ms)
{
    double t0 = clock_now_s();
    while (sink_count(s) < n && (clock_now_s() - t0) * 1e3 < max_ms)
        sleep_ms(1);
    return sink_count(s);
}

static int wait_atomic(atomic_int *a, int n, int max_ms)
{
    double t0 = clock_now_s();
    while (atomic_load(a) < n && (clock_now_s() - t0) * 1e3 < max_ms)
        sleep_ms(1);
    return atomic_load(a);
}

/* ---- message contents: {u32 index, f64 send time, random bytes from (seed, index)} ---- */

#define HDR 12

static void fill(uint8_t *b, size_t n, uint64_t seed, uint32_t idx)
{
    uint64_t x = seed ^ ((uint64_t)idx * 0x9E3779B97F4A7C15ull) ^ n;
    for (size_t k = 0; k < n; k++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b[k] = (uint8_t)(x >> 24);
    }
    if (n >= HDR) {
        memcpy(b, &idx, 4);
        double t = clock_now_s();
        memcpy(b + 4, &t, 8);
    }
}

static int check_msg(const rmsg *r, uint64_t seed, uint32_t *idx_out)
{
    if (r->len < HDR)
        return 0;
    uint32_t idx;
    memcpy(&idx, r->data, 4);
    uint8_t *want = malloc(r->len);
    fill(want, r->len, seed, idx);
    int ok = memcmp(want + HDR, r->data + HDR, r->len - HDR) == 0;
    free(want);
    if (idx_out)
        *idx_out = idx;
    return ok;
}

static double sent_at(const rmsg *r)
{
    double t;
    memcpy(&t, r->data + 4, 8);
    return t;
}

/* ---- a pair of contexts: a listens, b connects ---- */

typedef struct {
    ucx_ctx *a, *b;
    sink sa, sb;
    ucx_peer *b2a; /* b's peer for a */
    ucx_peer *a2b; /* a's accepted peer for b */
} pair;

static void pair_open(pair *p, int peer_mode, const ucx_link *link_b, size_t a_max)
{
    memset(p, 0, sizeof *p);
    sink_init(&p->sa);
    sink_init(&p->sb);
    ucx_opts oa = {.listen_addr = "127.0.0.1:0",
                   .err_mode_peer = peer_mode,
                   .max_msg_bytes = a_max,
                   .on_msg = on_msg,
                   .on_peer_up = on_up,
                   .on_peer_down = on_down,
                   .ud = &p->sa};
    assert_int_equal(ucx_create(&p->a, &oa), SD_OK);
    int port = ucx_listen_port(p->a);
    assert_true(port > 0);
    ucx_opts ob = {.err_mode_peer = peer_mode,
                   .on_msg = on_msg,
                   .on_peer_up = on_up,
                   .on_peer_down = on_down,
                   .ud = &p->sb};
    if (link_b)
        ob.link = *link_b;
    assert_int_equal(ucx_create(&p->b, &ob), SD_OK);
    assert_int_equal(ucx_listen_port(p->b), 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    assert_int_equal(ucx_connect(p->b, addr, &p->b2a), SD_OK);
    assert_string_equal(ucx_peer_name(p->b2a), addr);
    /* A first message makes a accept the connection. */
    assert_int_equal(ucx_send(p->b2a, 1, "hello", 5), SD_OK);
    assert_int_equal(wait_count(&p->sa, 1, 10000), 1);
    assert_int_equal(atomic_load(&p->sa.ups), 1);
    p->a2b = p->sa.up_peer;
    assert_non_null(p->a2b);
    assert_true(p->sa.m[0].from == p->a2b);
    assert_int_equal(p->sa.m[0].id, 1);
    assert_memory_equal(p->sa.m[0].data, "hello", 5);
    /* The connecting side is up once the connection is wired up (bounded wait). */
    for (int i = 0; i < 10000 && !ucx_peer_is_up(p->b2a); i++)
        sleep_ms(1);
    assert_true(ucx_peer_is_up(p->b2a));
    assert_true(ucx_peer_is_up(p->a2b));
    fprintf(stderr, "a accepted %s\n", ucx_peer_name(p->a2b));
    sink_clear(&p->sa);
}

static void pair_close(pair *p)
{
    ucx_free(p->b);
    ucx_free(p->a);
    if (p->b2a) {
        assert_int_equal(ucx_send(p->b2a, 1, "x", 1), SD_ECANCELED); /* a closed shell */
        ucx_peer_unref(p->b2a);
    }
    sink_free(&p->sa);
    sink_free(&p->sb);
}

/* Send n messages, every third one large (rendezvous), the rest small (eager); the receiver
 * must see them all, in order, intact. */
static void exchange(ucx_peer *to, sink *at, int n, uint64_t seed, unsigned id)
{
    tu_rng r;
    tu_rng_init(&r, seed);
    int large = 0;
    for (int i = 0; i < n; i++) {
        size_t len = i % 3 == 2 ? (1u << 20) - tu_below(&r, 1000) : HDR + tu_below(&r, 3000);
        large += i % 3 == 2;
        uint8_t *b = malloc(len);
        fill(b, len, seed, (uint32_t)i);
        assert_int_equal(ucx_send(to, id, b, len), SD_OK);
        free(b);
    }
    assert_int_equal(wait_count(at, n, 20000), n);
    pthread_mutex_lock(&at->mu);
    for (int i = 0; i < n; i++) {
        uint32_t idx;
        assert_true(check_msg(&at->m[i], seed, &idx));
        assert_int_equal(idx, (uint32_t)i);
        assert_int_equal(at->m[i].id, id);
    }
    pthread_mutex_unlock(&at->mu);
    (void)large;
}

static void run_both_directions(int peer_mode)
{
    uint64_t seed = tu_seed();
    pair p;
    pair_open(&p, peer_mode, NULL, 0);
    int n = 30;
    exchange(p.b2a, &p.sa, n, seed, 9);
    exchange(p.a2b, &p.sb, n, seed + 1, 200);
    for (int i = 0; i < n; i++)
        assert_true(p.sb.m[i].from == p.b2a);
    ucx_stats sa, sb;
    ucx_get_stats(p.a, &sa);
    ucx_get_stats(p.b, &sb);
    assert_int_equal(sa.received, (uint64_t)n + 1); /* + the hello of pair_open */
    assert_int_equal(sa.rndv_received, (uint64_t)(n / 3));
    assert_int_equal(sb.rndv_received, (uint64_t)(n / 3));
    assert_int_equal(sa.dropped, 0);
    /* Both directions at once. */
    sink_clear(&p.sa);
    sink_clear(&p.sb);
    assert_int_equal(ucx_send(p.a2b, 3, "ping", 4), SD_OK);
    assert_int_equal(ucx_send(p.b2a, 4, "pong", 4), SD_OK);
    assert_int_equal(wait_count(&p.sa, 1, 10000), 1);
    assert_int_equal(wait_count(&p.sb, 1, 10000), 1);
    assert_int_equal(atomic_load(&p.sa.downs), 0);
    pair_close(&p);
}

static void test_both_directions_peer(void **state)
{
    run_both_directions(1);
}

static void test_both_directions_none(void **state)
{
    run_both_directions(0);
}

static void test_peer_down(void **state)
{
    pair p;
    pair_open(&p, 1, NULL, 0);
    /* b goes away: a hears of it once, and sends to it fail. */
    ucx_free(p.b);
    p.b = NULL;
    assert_int_equal(wait_atomic(&p.sa.downs, 1, 10000), 1);
    fprintf(stderr, "peer down: %s\n", p.sa.reason);
    assert_false(ucx_peer_is_up(p.a2b));
    assert_int_equal(ucx_send(p.a2b, 1, "x", 1), SD_ECANCELED);
    sleep_ms(50);
    assert_int_equal(atomic_load(&p.sa.downs), 1);
    ucx_free(p.a);
    ucx_peer_unref(p.b2a);
    sink_free(&p.sa);
    sink_free(&p.sb);

    /* Nobody listening: the connect fails through on_peer_down (mode PEER), bounded. */
    sink s;
    sink_init(&s);
    ucx_opts o = {.err_mode_peer = 1, .on_msg = on_msg, .on_peer_down = on_down, .ud = &s};
    ucx_ctx *c;
    assert_int_equal(ucx_create(&c, &o), SD_OK);
    ucx_opts ol = {.listen_addr = "127.0.0.1:0"};
    ucx_ctx *tmp;
    assert_int_equal(ucx_create(&tmp, &ol), SD_OK);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ucx_listen_port(tmp));
    ucx_free(tmp);
    ucx_peer *x;
    assert_int_equal(ucx_connect(c, addr, &x), SD_OK);
    ucx_send(x, 1, "lost", 4); /* queued while connecting; dropped when it fails */
    assert_int_equal(wait_atomic(&s.downs, 1, 15000), 1);
    fprintf(stderr, "connect failure: %s\n", s.reason);
    assert_int_equal(ucx_send(x, 1, "x", 1), SD_ECANCELED);
    ucx_peer_unref(x);
    ucx_free(c);
    sink_free(&s);

    /* Bad addresses are refused at once. */
    assert_int_equal(ucx_create(&c, &o), SD_OK);
    assert_int_equal(ucx_connect(c, "no-port", &x), SD_EINVAL);
    assert_int_equal(ucx_connect(c, "127.0.0.1:99999", &x), SD_EINVAL);
    ucx_free(c);
}

/* ucx_poll from another thread while the progress thread sleeps: messages are delivered on
 * the polling thread too, in order and intact, and a peer that goes away is still reported
 * (the poller consumes the events and must wake the progress thread for that). */
typedef struct {
    ucx_ctx *c;
    atomic_int stop, delivered;
} poller;

static void *poll_main(void *arg)
{
    poller *q = arg;
    in_poller = 1;
    while (!atomic_load(&q->stop))
        if (ucx_poll(q->c))
            atomic_fetch_add(&q->delivered, 1);
    return NULL;
}

static void test_poll(void **state)
{
    uint64_t seed = tu_seed();
    pair p;
    pair_open(&p, 1, NULL, 0);
    poller q = {.c = p.a};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, poll_main, &q), 0);
    /* One at a time with gaps, so that the progress thread is asleep when most arrive. */
    int n = 40, polled = 0;
    for (int i = 0; i < n; i++) {
        size_t len = HDR + (size_t)(i * 37 % 500);
        if (i == 20)
            len = 1u << 20; /* rendezvous: completed by whichever thread progresses */
        uint8_t *b = malloc(len);
        fill(b, len, seed, (uint32_t)i);
        assert_int_equal(ucx_send(p.b2a, 5, b, len), SD_OK);
        free(b);
        assert_int_equal(wait_count(&p.sa, i + 1, 10000), i + 1);
        sleep_ms(2);
    }
    pthread_mutex_lock(&p.sa.mu);
    for (int i = 0; i < n; i++) {
        uint32_t idx;
        assert_true(check_msg(&p.sa.m[i], seed, &idx));
        assert_int_equal(idx, (uint32_t)i);
        polled += p.sa.m[i].polled;
    }
    pthread_mutex_unlock(&p.sa.mu);
    fprintf(stderr, "%d of %d messages delivered on the polling thread\n", polled, n);
    assert_true(polled > 0);
    assert_true(atomic_load(&q.delivered) > 0);
    /* b goes away while a is being polled: reported once, bounded. */
    ucx_free(p.b);
    p.b = NULL;
    assert_int_equal(wait_atomic(&p.sa.downs, 1, 10000), 1);
    assert_int_equal(ucx_send(p.a2b, 1, "x", 1), SD_ECANCELED);
    atomic_store(&q.stop, 1);
    pthread_join(th, NULL);
    ucx_free(p.a);
    ucx_peer_unref(p.b2a);
    sink_free(&p.sa);
    sink_free(&p.sb);
}

/* The other side dies without closing anything (SIGKILL): in mode PEER the transport notices
 * and on_peer_down fires once. The other side is this test binary started again as a child. */
static const char *self_exe;

static int child_main(const char *addr)
{
    ucx_opts o = {.err_mode_peer = 1};
    ucx_ctx *c;
    ucx_peer *p;
    if (ucx_create(&c, &o) != SD_OK || ucx_connect(c, addr, &p) != SD_OK)
        return 2;
    ucx_send(p, 1, "child", 5);
    sleep(30); /* killed long before */
    return 0;
}

static void test_peer_killed(void **state)
{
    sink s;
    sink_init(&s);
    ucx_opts o = {.listen_addr = "127.0.0.1:0",
                  .err_mode_peer = 1,
                  .on_msg = on_msg,
                  .on_peer_up = on_up,
                  .on_peer_down = on_down,
                  .ud = &s};
    ucx_ctx *c;
    assert_int_equal(ucx_create(&c, &o), SD_OK);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ucx_listen_port(c));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl("/proc/self/exe", self_exe, "--peer-child", addr, (char *)NULL);
        _exit(127);
    }
    assert_int_equal(wait_count(&s, 1, 15000), 1);
    assert_memory_equal(s.m[0].data, "child", 5);
    assert_int_equal(atomic_load(&s.ups), 1);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    double t0 = clock_now_s();
    assert_int_equal(wait_atomic(&s.downs, 1, 15000), 1);
    fprintf(stderr, "killed peer: \"%s\" after %.0f ms\n", s.reason, (clock_now_s() - t0) * 1e3);
    assert_int_equal(ucx_send(s.up_peer, 1, "x", 1), SD_ECANCELED);
    sleep_ms(50);
    assert_int_equal(atomic_load(&s.downs), 1);
    ucx_free(c);
    sink_free(&s);
}

static void run_close(int peer_mode)
{
    pair p;
    pair_open(&p, peer_mode, NULL, 0);
    /* Queued sends are flushed before the close. */
    for (int i = 0; i < 10; i++) {
        uint8_t b[64];
        fill(b, sizeof b, 5, (uint32_t)i);
        assert_int_equal(ucx_send(p.b2a, 2, b, sizeof b), SD_OK);
    }
    ucx_peer_close(p.b2a);
    assert_int_equal(ucx_send(p.b2a, 2, "late", 4), SD_ECANCELED);
    assert_false(ucx_peer_is_up(p.b2a));
    assert_int_equal(wait_count(&p.sa, 10, 10000), 10);
    for (int i = 0; i < 10; i++) {
        uint32_t idx;
        assert_true(check_msg(&p.sa.m[i], 5, &idx));
        assert_int_equal(idx, (uint32_t)i);
    }
    ucx_peer_close(p.b2a); /* twice is harmless */
    /* The other side learns of the close (in both modes: it is a handshake). */
    assert_int_equal(wait_atomic(&p.sa.downs, 1, 10000), 1);
    fprintf(stderr, "remote close: %s\n", p.sa.reason);
    assert_int_equal(ucx_send(p.a2b, 1, "x", 1), SD_ECANCELED);
    assert_int_equal(atomic_load(&p.sb.downs), 0); /* a local close is not reported */
    pair_close(&p);
}

static void test_close_peer(void **state)
{
    run_close(1);
}

static void test_close_none(void **state)
{
    run_close(0);
}

static void test_oversized(void **state)
{
    pair p;
    pair_open(&p, 1, NULL, 1000);
    size_t sizes[] = {500, 5000, 200 << 10, 600, 1000, 1001};
    int ok[] = {1, 0, 0, 1, 1, 0};
    for (size_t i = 0; i < 6; i++) {
        uint8_t *b = malloc(sizes[i]);
        fill(b, sizes[i], 77, (uint32_t)i);
        assert_int_equal(ucx_send(p.b2a, 5, b, sizes[i]), SD_OK);
        free(b);
    }
    assert_int_equal(ucx_send(p.b2a, 5, "last-one-here", 13), SD_OK);
    assert_int_equal(wait_count(&p.sa, 4, 10000), 4);
    int k = 0;
    for (size_t i = 0; i < 6; i++) {
        if (!ok[i])
            continue;
        uint32_t idx;
        assert_true(check_msg(&p.sa.m[k], 77, &idx));
        assert_int_equal(idx, (uint32_t)i);
        k++;
    }
    assert_int_equal(p.sa.m[3].len, 13);
    ucx_stats st;
    ucx_get_stats(p.a, &st);
    assert_int_equal(st.dropped, 3);
    assert_int_equal(atomic_load(&p.sa.downs), 0);
    assert_int_equal(ucx_send(p.b2a, 9, NULL, 0), SD_OK); /* empty messages are fine */
    assert_int_equal(wait_count(&p.sa, 5, 10000), 5);
    assert_int_equal(p.sa.m[4].len, 0);
    assert_int_equal(ucx_send(p.b2a, 256, "x", 1), SD_EINVAL);
    pair_close(&p);
}

/* ---- back-pressure: a receiver that stops reading ---- */

static atomic_int stall_on, stalled; /* test_stalled_peer: the receiver blocks in on_msg */

static void on_msg_stall(void *ud, ucx_peer *from, unsigned id, const void *data, size_t len)
{
    double t0 = clock_now_s();
    while (atomic_load(&stall_on) && clock_now_s() - t0 < 30) { /* a stuck process, bounded */
        atomic_store(&stalled, 1);
        sleep_ms(1);
    }
    on_msg(ud, from, id, data, len);
}

static ucx_ctx *ctx_open(sink *s, int listen, size_t max_unsent, int stall)
{
    ucx_opts o = {.listen_addr = listen ? "127.0.0.1:0" : NULL,
                  .err_mode_peer = 1,
                  .max_unsent_bytes = max_unsent,
                  .on_msg = stall ? on_msg_stall : on_msg,
                  .on_peer_up = on_up,
                  .on_peer_down = on_down,
                  .ud = s};
    ucx_ctx *c;
    sink_init(s);
    assert_int_equal(ucx_create(&c, &o), SD_OK);
    return c;
}

static ucx_peer *connect_to(ucx_ctx *from, ucx_ctx *to, sink *at)
{
    char addr[64];
    ucx_peer *p;
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ucx_listen_port(to));
    assert_int_equal(ucx_connect(from, addr, &p), SD_OK);
    assert_int_equal(ucx_send(p, 1, "hello", 5), SD_OK);
    assert_int_equal(wait_count(at, 1, 10000), 1);
    sink_clear(at);
    return p;
}

/* A sender whose peer stops reading: sends are accepted until max_unsent_bytes are waiting on
 * the sender's side, then refused, and the peer goes down with the reason (memory stays
 * bounded); what the stalled peer does get is an intact prefix in order; the sender's other
 * peer is untouched. */
static void test_stalled_peer(void **state)
{
    (void)state;
    uint64_t seed = tu_seed();
    const size_t cap = 1u << 20, len = 4u << 10; /* eager: the socket buffers fill first */
    sink sa, sb, sc;
    ucx_ctx *a = ctx_open(&sa, 1, 0, 1), *c = ctx_open(&sc, 1, 0, 0), *b = ctx_open(&sb, 0, cap, 0);
    ucx_peer *b2a = connect_to(b, a, &sa), *b2c = connect_to(b, c, &sc);
    atomic_store(&stall_on, 1);
    uint8_t *m = malloc(len);
    int k = 0;
    sd_err e = SD_OK;
    for (; k < 65536; k++) { /* 256 MiB at most: far more than any socket buffers */
        fill(m, len, seed, (uint32_t)k);
        if ((e = ucx_send(b2a, 2, m, len)) != SD_OK)
            break;
        if (k == 0) /* the receiver is inside on_msg, stuck, before the flood */
            for (int i = 0; i < 10000 && !atomic_load(&stalled); i++)
                sleep_ms(1);
    }
    fprintf(stderr, "stalled peer: %d sends of %zu bytes accepted, then: %s\n", k, len,
            sd_errmsg());
    assert_true(atomic_load(&stalled));
    assert_int_equal(e, SD_ECANCELED);
    assert_non_null(strstr(sd_errmsg(), "not keeping up"));
    assert_true(k > (int)(cap / len) / 2); /* up to the cap, not refused early */
    assert_int_equal(wait_atomic(&sb.downs, 1, 10000), 1);
    assert_non_null(strstr(sb.reason, "not keeping up"));
    assert_int_equal(ucx_send(b2a, 2, "x", 1), SD_ECANCELED);
    /* The sender's other peer is unaffected (small messages: the cap is per peer, and a burst
     * of large ones would pass it even to a healthy peer). */
    for (int i = 0; i < 50; i++) {
        fill(m, HDR + 100, seed + 1, (uint32_t)i);
        assert_int_equal(ucx_send(b2c, 7, m, HDR + 100), SD_OK);
    }
    assert_int_equal(wait_count(&sc, 50, 10000), 50);
    for (int i = 0; i < 50; i++) {
        uint32_t idx;
        assert_true(check_msg(&sc.m[i], seed + 1, &idx));
        assert_int_equal(idx, (uint32_t)i);
    }
    assert_int_equal(atomic_load(&sc.downs), 0);
    /* The stalled peer resumes: it sees an intact, in-order prefix of what was accepted. */
    atomic_store(&stall_on, 0);
    assert_int_equal(wait_atomic(&sa.downs, 1, 15000), 1);
    int got = sink_count(&sa);
    fprintf(stderr, "the stalled peer got %d of them before the sender dropped it\n", got);
    assert_true(got >= 1 && got <= k);
    for (int i = 0; i < got; i++) {
        uint32_t idx;
        assert_true(check_msg(&sa.m[i], seed, &idx));
        assert_int_equal(idx, (uint32_t)i);
    }
    free(m);
    ucx_free(b);
    ucx_free(a);
    ucx_free(c);
    ucx_peer_unref(b2a);
    ucx_peer_unref(b2c);
    sink_free(&sa);
    sink_free(&sb);
    sink_free(&sc);
}

/* ---- the link emulator ---- */

static void test_linkemu_model(void **state)
{
    uint64_t seed = tu_seed();
    ucx_link bad[] = {
        {.delay_ms = -1}, {.jitter_ms = NAN}, {.reorder_prob = 1.5}, {.bandwidth_mbps = -3}};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(linkemu_check(&bad[i]), SD_EINVAL);
    ucx_link none = {0};
    assert_false(ucx_link_active(&none));

    /* Delay + jitter: within [delay, delay + jitter), never reordering by themselves. */
    ucx_link l = {.delay_ms = 5, .jitter_ms = 3, .seed = seed};
    assert_true(ucx_link_active(&l));
    linkemu e;
    linkemu_init(&e, &l);
    double prev = 0;
    for (int i = 0; i < 1000; i++) {
        double now = i * 1e-4, t = linkemu_release(&e, now, 100, NULL);
        assert_true(t >= now + 5e-3);
        assert_true(t >= prev);
        prev = t;
    }
    /* Bandwidth: back-to-back messages are serialised. 8 Mbit/s = 1 byte/us. */
    ucx_link bw = {.bandwidth_mbps = 8, .delay_ms = 1};
    linkemu_init(&e, &bw);
    for (int i = 0; i < 10; i++) {
        double t = linkemu_release(&e, 0, 1000, NULL);
        assert_true(fabs(t - ((i + 1) * 1e-3 + 1e-3)) < 1e-9);
    }
    /* After an idle gap the link is free again. */
    double t = linkemu_release(&e, 1.0, 1000, NULL);
    assert_true(fabs(t - (1.0 + 2e-3)) < 1e-9);

    /* Reordering: about reorder_prob of the messages, a pure function of the seed. */
    ucx_link ro = {.reorder_prob = 0.5, .reorder_ms = 10, .seed = seed};
    linkemu a, b;
    linkemu_init(&a, &ro);
    linkemu_init(&b, &ro);
    int n_ro = 0;
    for (int i = 0; i < 4000; i++) {
        int ra, rb;
        double ta = linkemu_release(&a, i * 1e-3, 10, &ra);
        double tb = linkemu_release(&b, i * 1e-3, 10, &rb);
        assert_true(ta == tb && ra == rb);
        n_ro += ra;
        assert_true(ta >= i * 1e-3);
    }
    assert_true(n_ro > 1800 && n_ro < 2200); /* 4000 * 0.5 ± ~6.3 sigma */
}

static void test_link_delay(void **state)
{
    ucx_link l = {.delay_ms = 30, .jitter_ms = 10, .seed = tu_seed()};
    pair p;
    pair_open(&p, 1, &l, 0);
    int n = 40;
    for (int i = 0; i < n; i++) {
        uint8_t b[100];
        fill(b, sizeof b, 3, (uint32_t)i);
        assert_int_equal(ucx_send(p.b2a, 1, b, sizeof b), SD_OK);
        if (i % 8 == 0)
            sleep_ms(2);
    }
    assert_int_equal(wait_count(&p.sa, n, 10000), n);
    double min_dt = 1e9;
    for (int i = 0; i < n; i++) {
        uint32_t idx;
        assert_true(check_msg(&p.sa.m[i], 3, &idx));
        assert_int_equal(idx, (uint32_t)i); /* jitter alone does not reorder */
        double dt = p.sa.m[i].t - sent_at(&p.sa.m[i]);
        assert_true(dt >= 30e-3); /* the lower bound is a correctness property */
        if (dt < min_dt)
            min_dt = dt;
    }
    fprintf(stderr, "delay 30 ms + jitter 10: smallest one-way %.2f ms\n", min_dt * 1e3);
    /* The accepting side's sends are not delayed unless it asks: a per-peer override. */
    ucx_link l2 = {.delay_ms = 20};
    ucx_peer_set_link(p.a2b, &l2);
    uint8_t b[100];
    fill(b, sizeof b, 4, 0);
    assert_int_equal(ucx_send(p.a2b, 1, b, sizeof b), SD_OK);
    assert_int_equal(wait_count(&p.sb, 1, 10000), 1);
    assert_true(p.sb.m[0].t - sent_at(&p.sb.m[0]) >= 20e-3);
    /* ...and a per-peer override back to none. */
    ucx_link off = {0};
    ucx_peer_set_link(p.b2a, &off);
    fill(b, sizeof b, 4, 1);
    assert_int_equal(ucx_send(p.b2a, 1, b, sizeof b), SD_OK);
    assert_int_equal(wait_count(&p.sa, n + 1, 10000), n + 1);
    pair_close(&p);
}

static void test_link_bandwidth(void **state)
{
    /* 8 Mbit/s: a 10000-byte message occupies the link for 10 ms. */
    ucx_link l = {.bandwidth_mbps = 8, .seed = 1};
    pair p;
    pair_open(&p, 1, &l, 0);
    int n = 12;
    double t0 = clock_now_s();
    for (int i = 0; i < n; i++) {
        uint8_t b[10000];
        fill(b, sizeof b, 8, (uint32_t)i);
        assert_int_equal(ucx_send(p.b2a, 1, b, sizeof b), SD_OK);
    }
    assert_int_equal(wait_count(&p.sa, n, 10000), n);
    for (int i = 0; i < n; i++) {
        uint32_t idx;
        assert_true(check_msg(&p.sa.m[i], 8, &idx));
        assert_int_equal(idx, (uint32_t)i);
        /* message i cannot arrive before i + 1 transmissions of 10 ms from the first send */
        assert_true(p.sa.m[i].t - t0 >= (i + 1) * 10e-3);
    }
    fprintf(stderr, "bandwidth 8 Mbit/s: %d x 10 kB in %.1f ms (>= %d ms)\n", n,
            (p.sa.m[n - 1].t - t0) * 1e3, n * 10);
    pair_close(&p);
}

/* Send n messages through a reordering link; returns the arrival order of their indices. */
static void reorder_run(uint64_t seed, int peer_mode, int n, uint32_t *order)
{
    ucx_link l = {.reorder_prob = 0.5, .reorder_ms = 250, .delay_ms = 1, .seed = seed};
    pair p;
    pair_open(&p, peer_mode, &l, 0);
    for (int i = 0; i < n; i++) {
        size_t len = HDR + (size_t)(i * 37 % 500);
        uint8_t *b = malloc(len);
        fill(b, len, seed, (uint32_t)i);
        assert_int_equal(ucx_send(p.b2a, 6, b, len), SD_OK);
        free(b);
    }
    assert_int_equal(wait_count(&p.sa, n, 10000), n);
    for (int i = 0; i < n; i++) {
        assert_true(check_msg(&p.sa.m[i], seed, &order[i])); /* content unchanged */
        assert_int_equal(p.sa.m[i].len, HDR + (size_t)(order[i] * 37 % 500));
    }
    pair_close(&p);
}

static void test_link_reorder(void **state)
{
    enum { N = 64 };
    uint64_t seed = tu_seed();
    uint32_t o1[N], o2[N];
    reorder_run(seed, 1, N, o1);
    int inversions = 0, seen[N] = {0};
    for (int i = 0; i < N; i++) {
        assert_true(o1[i] < N);
        seen[o1[i]]++;
        for (int j = i + 1; j < N; j++)
            inversions += o1[j] < o1[i];
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(seen[i], 1); /* every message exactly once */
    fprintf(stderr, "reorder p=0.5: %d inverted pairs in %d messages\n", inversions, N);
    assert_true(inversions > 0);
    reorder_run(seed, 0, N, o2); /* same seed, other error mode: same order */
    assert_memory_equal(o1, o2, sizeof o1);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--peer-child") == 0)
        return child_main(argv[2]);
    self_exe = argv[0];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linkemu_model),        cmocka_unit_test(test_both_directions_peer),
        cmocka_unit_test(test_both_directions_none), cmocka_unit_test(test_peer_down),
        cmocka_unit_test(test_peer_killed),          cmocka_unit_test(test_close_peer),
        cmocka_unit_test(test_close_none),           cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_link_delay),           cmocka_unit_test(test_link_bandwidth),
        cmocka_unit_test(test_link_reorder),         cmocka_unit_test(test_poll),
        cmocka_unit_test(test_stalled_peer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
