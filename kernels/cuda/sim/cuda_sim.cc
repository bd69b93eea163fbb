/* cuda_sim runtime: fibers, the per-block scheduler, barriers, warp exchange, launches over a
 * pool of OS threads, and host-memory versions of the runtime calls (cuda_sim.h says what it
 * models). Compiled with g++ as part of every simulator test build. */
#include "cuda_sim.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define CUSIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUSIM_ASAN 1
#endif
#endif
#ifdef CUSIM_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

__thread cusim_fiber *cusim_cur;
__thread cusim_block_ctx *cusim_blk;

namespace
{

enum { ST_RUN = 0, ST_BAR, ST_WARP, ST_DONE };
enum { MAX_THREADS = 1024, MAX_SMEM = 227 * 1024 };
#ifdef CUSIM_ASAN
const size_t STACK = 512 * 1024;
#else
const size_t STACK = 128 * 1024;
#endif

/* ---- context switch ---- */

#if defined(__x86_64__)
/* cusim_swap(save, to): pushes the callee-saved registers and the FP control words, stores the
 * stack pointer in *save, loads `to` and pops the same frame from there. */
extern "C" void cusim_swap(void **save, void *to);
__asm__(".text\n"
        ".globl cusim_swap\n"
        ".type cusim_swap,@function\n"
        "cusim_swap:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  stmxcsr (%rsp)\n"
        "  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n"
        "  fldcw 4(%rsp)\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size cusim_swap, .-cusim_swap\n");
#endif

struct Launch;

/* A worker: one OS thread's scheduler, its fibers and their stacks. */
struct Worker {
    void *sched_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t sched_uc;
    std::vector<ucontext_t> ucs;
#endif
    char *stacks = nullptr;
    size_t n_stacks = 0;
    std::vector<cusim_fiber> f;
    std::vector<int> order;
    unsigned char *smem = nullptr;
    cusim_block_ctx blk;
    Launch *L = nullptr;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int nthreads = 0, nwarps = 0;
    /* per warp: lanes arrived at the current warp op, and its kind/width/mask */
    std::vector<int> w_arrived, w_op, w_width;
    std::vector<unsigned> w_mask;
    int bar_arrived = 0, bar_kind = -1;
    int failed = 0;
    int dirty = 1; /* fiber stacks may hold poisoned frames of abandoned fibers (ASan) */
    const void *args = nullptr; /* this worker's copy of the launch arguments */
#ifdef CUSIM_ASAN
    const void *sched_stack_bottom = nullptr;
    size_t sched_stack_size = 0;
#endif
};

thread_local Worker *tw;

struct Launch {
    dim3 grid, block;
    size_t smem;
    cusim_thunk fn;
    const void *args;
    void (*copy)(void **, const void *);
    void (*destroy)(void *);
    std::atomic<unsigned long> next{0};
    unsigned long n_blocks = 0;
    std::atomic<int> failed{0};
    std::mutex mu;
    char msg[512] = "";
};

std::mutex g_mu;
char g_msg[512];
cudaError_t g_last = cudaSuccess;
std::atomic<int> g_order{-1};
std::atomic<unsigned long> g_launches{0};
std::atomic<uint64_t> g_seed{0};

int env_order()
{
    const char *e = getenv("CUSIM_ORDER");
    if (!e || !*e || !strcmp(e, "fwd"))
        return 0;
    if (!strcmp(e, "rev"))
        return 1;
    if (!strcmp(e, "rand"))
        return 2;
    fprintf(stderr, "cuda_sim: CUSIM_ORDER=%s is not fwd|rev|rand; using fwd\n", e);
    return 0;
}

int order_now()
{
    int o = g_order.load();
    if (o < 0) {
        int e = env_order();
        g_order.compare_exchange_strong(o, e);
        o = g_order.load();
    }
    return o;
}

void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fail(const char *fmt, ...)
{
    Worker *w = tw;
    Launch *L = w->L;
    w->failed = 1;
    std::lock_guard<std::mutex> g(L->mu);
    if (L->failed.exchange(1))
        return; /* the first report wins */
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(L->msg, sizeof L->msg, "block (%u,%u,%u): ", w->blk.bidx.x, w->blk.bidx.y,
                     w->blk.bidx.z);
    vsnprintf(L->msg + n, sizeof L->msg - (size_t)n, fmt, ap);
    va_end(ap);
}

/* ---- fibers ---- */

void to_sched(cusim_fiber *f, int dying);

void fiber_main()
{
    Worker *w = tw;
    cusim_fiber *f = cusim_cur;
#ifdef CUSIM_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &w->sched_stack_bottom, &w->sched_stack_size);
#endif
    w->L->fn(w->args);
    f->state = ST_DONE;
    to_sched(f, 1);
    abort(); /* a finished fiber is never resumed */
}

#if defined(__x86_64__)
extern "C" void cusim_fiber_entry();
__asm__(".text\n"
        ".globl cusim_fiber_entry\n"
        ".type cusim_fiber_entry,@function\n"
        "cusim_fiber_entry:\n"
        "  call cusim_fiber_main_c\n"
        "  ud2\n"
        ".size cusim_fiber_entry, .-cusim_fiber_entry\n");
#endif

} // namespace

extern "C" void cusim_fiber_main_c()
{
    fiber_main();
}

namespace
{

void fiber_init(Worker *w, cusim_fiber *f)
{
#ifdef CUSIM_ASAN
    /* A fiber that ran to its end returned from every kernel frame (unpoisoned), leaving only
     * the entry frames at the top, which the new fiber rebuilds in place: unpoison those (after a
     * failed block run_block unpoisons every stack whole: fibers were abandoned mid-kernel). */
    size_t hot = f->stack_size < 16384 ? f->stack_size : 16384;
    __asan_unpoison_memory_region(f->stack + f->stack_size - hot, hot);
#endif
#if defined(__x86_64__)
    /* frame popped by cusim_swap: control words, r15..rbp, then `ret` into the entry stub with
     * the stack 16-byte aligned at its call (the ret slot at a 16-byte boundary) */
    /* frame popped by cusim_swap: sp[0] control words, sp[1..6] r15..rbp, sp[7] the return
     * address (the entry stub); after `ret` the stack pointer is &sp[8], 16-byte aligned, so the
     * stub's call enters cusim_fiber_main_c with the alignment the ABI wants */
    uintptr_t top = ((uintptr_t)(f->stack + f->stack_size) & ~(uintptr_t)15) - 64;
    uint64_t *sp = (uint64_t *)top - 8;
    memset(sp, 0, 8 * sizeof *sp);
    sp[7] = (uint64_t)(uintptr_t)cusim_fiber_entry;
    uint32_t mx;
    uint16_t cw;
    __asm__ volatile("stmxcsr %0" : "=m"(mx));
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    memcpy(sp, &mx, 4);
    memcpy((char *)sp + 4, &cw, 2);
    f->sp = sp;
#else
    ucontext_t *uc = &w->ucs[(size_t)f->lin];
    getcontext(uc);
    uc->uc_stack.ss_sp = f->stack;
    uc->uc_stack.ss_size = f->stack_size;
    uc->uc_link = nullptr;
    makecontext(uc, (void (*)())cusim_fiber_main_c, 0);
    f->ucx = uc;
#endif
}

void switch_to_fiber(Worker *w, cusim_fiber *f)
{
    cusim_cur = f;
#ifdef CUSIM_ASAN
    void *fs = nullptr;
    __sanitizer_start_switch_fiber(&fs, f->stack, f->stack_size);
#endif
#if defined(__x86_64__)
    cusim_swap(&w->sched_sp, f->sp);
#else
    swapcontext(&w->sched_uc, (ucontext_t *)f->ucx);
#endif
#ifdef CUSIM_ASAN
    __sanitizer_finish_switch_fiber(fs, nullptr, nullptr);
#endif
    cusim_cur = nullptr;
}

void to_sched(cusim_fiber *f, int dying)
{
    Worker *w = tw;
#ifdef CUSIM_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &f->fake_stack, w->sched_stack_bottom,
                                   w->sched_stack_size);
#endif
#if defined(__x86_64__)
    cusim_swap(&f->sp, w->sched_sp);
#else
    swapcontext((ucontext_t *)f->ucx, &w->sched_uc);
#endif
#ifdef CUSIM_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, &w->sched_stack_bottom, &w->sched_stack_size);
#endif
    (void)dying;
}

/* Park the current fiber until the scheduler or a peer makes it runnable again. */
void park(cusim_fiber *f)
{
    to_sched(f, 0);
}

int ensure_stacks(Worker *w, int n)
{
    if ((size_t)n <= w->n_stacks)
        return 0;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t per = STACK + page;
    if (w->stacks)
        munmap(w->stacks, per * w->n_stacks);
    w->stacks = nullptr;
    w->n_stacks = 0;
    void *p = mmap(nullptr, per * (size_t)n, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    w->stacks = (char *)p;
    w->n_stacks = (size_t)n;
    w->dirty = 1; /* the shadow of a reused address range may still say poisoned */
    /* a guard page below each stack: an overflow faults instead of corrupting a neighbour */
    for (int i = 0; i < n; i++)
        mprotect(w->stacks + per * (size_t)i, page, PROT_NONE);
    return 0;
}

uint64_t rng_next(Worker *w)
{
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* Runs one block to completion (or to a reported hazard). */
void run_block(Worker *w, uint3 bidx)
{
    Launch *L = w->L;
    int nt = (int)(L->block.x * L->block.y * L->block.z);
    w->blk.bidx = bidx;
    w->blk.bdim = L->block;
    w->blk.gdim = L->grid;
    w->blk.smem = w->smem;
    w->blk.smem_bytes = L->smem;
    w->blk.bar_result = 0;
    if (L->smem)
        memset(w->smem, 0xff, L->smem); /* NaN in every float, half and double */
    cusim_blk = &w->blk;
    w->nthreads = nt;
    w->nwarps = nt / 32;
    w->bar_arrived = 0;
    w->bar_kind = -1;
    w->failed = 0;
    std::fill(w->w_arrived.begin(), w->w_arrived.end(), 0);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
#ifdef CUSIM_ASAN
    if (w->dirty) {
        for (size_t i = 0; i < w->n_stacks; i++)
            __asan_unpoison_memory_region(w->stacks + (STACK + page) * i + page, STACK);
        w->dirty = 0;
    }
#endif
    for (int i = 0; i < nt; i++) {
        cusim_fiber *f = &w->f[(size_t)i];
        memset(f, 0, sizeof *f);
        f->lin = i;
        f->tidx.x = (unsigned)i % L->block.x;
        f->tidx.y = (unsigned)i / L->block.x % L->block.y;
        f->tidx.z = (unsigned)i / (L->block.x * L->block.y);
        f->warp = i / 32;
        f->lane = i % 32;
        f->stack = w->stacks + (STACK + page) * (size_t)i + page;
        f->stack_size = STACK;
        f->state = ST_RUN;
        fiber_init(w, f);
    }
    int ord = order_now();
    for (int i = 0; i < nt; i++)
        w->order[(size_t)i] = ord == 1 ? nt - 1 - i : i;
    for (;;) {
        if (ord == 2)
            for (int i = nt - 1; i > 0; i--) {
                int j = (int)(rng_next(w) % (uint64_t)(i + 1));
                std::swap(w->order[(size_t)i], w->order[(size_t)j]);
            }
        int ran = 0;
        for (int k = 0; k < nt && !w->failed; k++) {
            cusim_fiber *f = &w->f[(size_t)w->order[(size_t)k]];
            if (f->state == ST_RUN) {
                switch_to_fiber(w, f);
                ran = 1;
            }
        }
        if (w->failed)
            break;
        if (ran)
            continue;
        int done = 0, bar = 0, warp = 0;
        for (int i = 0; i < nt; i++) {
            int s = w->f[(size_t)i].state;
            done += s == ST_DONE;
            bar += s == ST_BAR;
            warp += s == ST_WARP;
        }
        if (done == nt)
            break;
        if (bar == nt) {
            /* everyone arrived: release, with the count/and/or of the predicates */
            int cnt = 0;
            for (int i = 0; i < nt; i++)
                cnt += w->f[(size_t)i].pred;
            int k = w->bar_kind;
            w->blk.bar_result = k == 1 ? cnt : k == 2 ? cnt == nt : k == 3 ? cnt > 0 : 0;
            w->bar_arrived = 0;
            w->bar_kind = -1;
            for (int i = 0; i < nt; i++)
                w->f[(size_t)i].state = ST_RUN;
            continue;
        }
        if (bar && !warp) {
            int first = -1;
            for (int i = 0; i < nt && first < 0; i++)
                if (w->f[(size_t)i].state == ST_DONE)
                    first = i;
            fail("divergent __syncthreads: %d of %d threads wait at a barrier that %d exited "
                 "threads (first: thread %d) never reach",
                 bar, nt, done, first);
        } else {
            int wi = -1;
            for (int i = 0; i < w->nwarps && wi < 0; i++)
                if (w->w_arrived[(size_t)i])
                    wi = i;
            fail("deadlock: %d threads at __syncthreads, %d at a warp operation (warp %d: %d of "
                 "32 lanes arrived), %d exited",
                 bar, warp, wi, wi >= 0 ? w->w_arrived[(size_t)wi] : 0, done);
        }
        break;
    }
    if (w->failed)
        w->dirty = 1;
    cusim_blk = nullptr;
}

void run_worker(Worker *w, Launch *L)
{
    tw = w;
    w->L = L;
    int nt = (int)(L->block.x * L->block.y * L->block.z);
    void *copy = nullptr;
    L->copy(&copy, L->args);
    w->args = copy;
    if (w->f.size() < (size_t)nt) {
        w->f.resize((size_t)nt);
        w->order.resize((size_t)nt);
#if !defined(__x86_64__)
        w->ucs.resize((size_t)nt);
#endif
    }
    w->w_arrived.assign((size_t)nt / 32 + 1, 0);
    w->w_op.assign((size_t)nt / 32 + 1, 0);
    w->w_width.assign((size_t)nt / 32 + 1, 0);
    w->w_mask.assign((size_t)nt / 32 + 1, 0);
    if (!w->smem) {
        w->smem = (unsigned char *)aligned_alloc(128, MAX_SMEM);
        if (!w->smem)
            abort(); /* 227 KiB once per worker: the process is out of memory */
    }
    if (ensure_stacks(w, nt) != 0) {
        fail("cannot map %d fiber stacks", nt);
    } else {
        for (;;) {
            if (L->failed.load())
                break;
            unsigned long b = L->next.fetch_add(1);
            if (b >= L->n_blocks)
                break;
            uint3 bi;
            bi.x = (unsigned)(b % L->grid.x);
            bi.y = (unsigned)(b / L->grid.x % L->grid.y);
            bi.z = (unsigned)(b / ((unsigned long)L->grid.x * L->grid.y));
            run_block(w, bi);
        }
    }
    L->destroy(copy);
    w->args = nullptr;
    w->L = nullptr;
    tw = nullptr;
}

/* ---- the pool of OS threads running blocks ---- */

struct Pool {
    std::mutex mu;
    std::condition_variable cv, done_cv;
    std::vector<std::thread> th;
    std::vector<Worker *> workers; /* [0] is the launching thread's */
    Launch *cur = nullptr;
    unsigned long gen = 0;
    int busy = 0;
    bool stop = false;
};
Pool *g_pool;
std::once_flag g_pool_once;

void pool_thread(Pool *p, int idx)
{
    unsigned long seen = 0;
    std::unique_lock<std::mutex> lk(p->mu);
    for (;;) {
        p->cv.wait(lk, [&] { return p->stop || p->gen != seen; });
        if (p->stop)
            return;
        seen = p->gen;
        Launch *L = p->cur;
        lk.unlock();
        run_worker(p->workers[(size_t)idx], L);
        lk.lock();
        if (--p->busy == 0)
            p->done_cv.notify_all();
    }
}

void pool_init()
{
    const char *sd = getenv("CUSIM_SEED"); /* rand order: replayable sequences of orders */
    if (sd && *sd)
        g_seed.store(strtoull(sd, nullptr, 0));
    int n = 2;
    const char *e = getenv("CUSIM_THREADS");
    if (e && atoi(e) > 0)
        n = atoi(e);
    if (n > 64)
        n = 64;
    g_pool = new Pool;
    for (int i = 0; i < n; i++)
        g_pool->workers.push_back(new Worker);
    for (int i = 1; i < n; i++)
        g_pool->th.emplace_back(pool_thread, g_pool, i);
    /* leave the threads parked at exit (detached) rather than racing static destructors */
    for (auto &t : g_pool->th)
        t.detach();
}

std::mutex g_launch_mu; /* one launch at a time (launches are synchronous anyway) */

cudaError_t set_last(cudaError_t e)
{
    std::lock_guard<std::mutex> g(g_mu);
    if (e != cudaSuccess && g_last == cudaSuccess)
        g_last = e;
    return e;
}

cudaError_t config_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
cudaError_t config_error(const char *fmt, ...)
{
    {
        std::lock_guard<std::mutex> g(g_mu);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g_msg, sizeof g_msg, fmt, ap);
        va_end(ap);
    }
    fprintf(stderr, "cuda_sim: bad launch: %s\n", g_msg);
    return set_last(cudaErrorInvalidConfiguration);
}

/* ---- streams and graphs: a stream is an id; capturing records launches and copies ---- */

struct Op {
    int kind; /* 0 launch, 1 memcpy, 2 memset */
    dim3 g, b;
    size_t smem;
    cusim_thunk fn;
    void *args;
    void (*copy)(void **, const void *);
    void (*destroy)(void *);
    void *dst;
    const void *src;
    size_t n;
    int val;
};

} // namespace

struct cusim_stream {
    int capturing;
    std::vector<Op> *rec;
};
struct cusim_graph {
    std::vector<Op> ops;
};

static cudaError_t run_launch(dim3 grid, dim3 block, size_t smem, cusim_thunk fn, const void *args,
                              void (*copy)(void **, const void *), void (*destroy)(void *))
{
    std::call_once(g_pool_once, pool_init);
    unsigned long nt = (unsigned long)block.x * block.y * block.z;
    if (!block.x || !block.y || !block.z || nt > MAX_THREADS || block.z > 64)
        return config_error("block (%u,%u,%u): 1..1024 threads, z <= 64", block.x, block.y,
                            block.z);
    if (nt % 32)
        return config_error("block of %lu threads: the simulator runs full warps only (a "
                            "multiple of 32)",
                            nt);
    if (!grid.x || !grid.y || !grid.z || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu)
        return config_error("grid (%u,%u,%u) out of range", grid.x, grid.y, grid.z);
    if (smem > MAX_SMEM)
        return config_error("%zu bytes of dynamic shared memory (at most %d)", smem, MAX_SMEM);
    std::lock_guard<std::mutex> lg(g_launch_mu);
    g_launches++;
    Launch L;
    L.grid = grid;
    L.block = block;
    L.smem = smem;
    L.fn = fn;
    L.args = args;
    L.copy = copy;
    L.destroy = destroy;
    L.n_blocks = (unsigned long)grid.x * grid.y * grid.z;
    Pool *p = g_pool;
    /* waking the other OS threads costs more than a few small blocks take to run */
    int helpers = L.n_blocks * nt >= 4096 && p->workers.size() > 1;
    if (helpers) {
        {
            std::lock_guard<std::mutex> g(p->mu);
            p->cur = &L;
            p->busy = (int)p->workers.size() - 1;
            p->gen++;
        }
        p->cv.notify_all();
    }
    uint64_t s = g_seed.fetch_add(0x9e3779b97f4a7c15ull) ^ 0x243f6a8885a308d3ull;
    p->workers[0]->rng = s | 1;
    for (size_t i = 1; i < p->workers.size(); i++)
        p->workers[i]->rng = (s + 0x632be59bd9b4e019ull * i) | 1;
    run_worker(p->workers[0], &L);
    if (helpers) {
        std::unique_lock<std::mutex> lk(p->mu);
        p->done_cv.wait(lk, [&] { return p->busy == 0; });
        p->cur = nullptr;
    }
    if (L.failed.load()) {
        {
            std::lock_guard<std::mutex> g(g_mu);
            snprintf(g_msg, sizeof g_msg, "%s", L.msg);
        }
        fprintf(stderr, "cuda_sim: kernel failed: %s\n", L.msg);
        return set_last(cudaErrorLaunchFailure);
    }
    return cudaSuccess;
}

cudaError_t cusim_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t st, cusim_thunk fn,
                         const void *args, void (*copy)(void **dst, const void *src),
                         void (*destroy)(void *p))
{
    if (st && st->capturing) {
        Op o{};
        o.kind = 0;
        o.g = grid;
        o.b = block;
        o.smem = smem;
        o.fn = fn;
        copy(&o.args, args);
        o.copy = copy;
        o.destroy = destroy;
        st->rec->push_back(o);
        return cudaSuccess;
    }
    return run_launch(grid, block, smem, fn, args, copy, destroy);
}

/* ---- barriers and warp operations ---- */

int cusim_barrier(int pred, int kind)
{
    Worker *w = tw;
    cusim_fiber *f = cusim_cur;
    if (!w || !f) {
        fprintf(stderr, "cuda_sim: __syncthreads outside a kernel\n");
        abort();
    }
    if (w->bar_kind >= 0 && w->bar_kind != kind) {
        fail("threads meet at different barrier kinds (__syncthreads vs _count/_and/_or)");
    }
    w->bar_kind = kind;
    f->pred = pred;
    f->state = ST_BAR;
    park(f);
    return w->blk.bar_result;
}

static int seg_src(int op, int lane, int arg, int width)
{
    int base = lane & ~(width - 1);
    switch (op) {
    case CUSIM_OP_SHFL:
        return base + (arg & (width - 1));
    case CUSIM_OP_UP:
        return lane - arg >= base ? lane - arg : lane;
    case CUSIM_OP_DOWN:
        return lane + arg < base + width ? lane + arg : lane;
    case CUSIM_OP_XOR: {
        int s = lane ^ arg;
        return s < base + width ? s : lane;
    }
    }
    return lane;
}

uint64_t cusim_warp_op(int op, unsigned mask, uint64_t val, int arg, int width, int pred)
{
    Worker *w = tw;
    cusim_fiber *f = cusim_cur;
    if (!w || !f) {
        fprintf(stderr, "cuda_sim: warp operation outside a kernel\n");
        abort();
    }
    if (mask != 0xffffffffu) {
        fail("thread %d: warp operation with mask 0x%08x (the simulator checks full-warp code "
             "only)",
             f->lin, mask);
        f->state = ST_DONE;
        to_sched(f, 1);
    }
    if (width < 1 || width > 32 || (width & (width - 1))) {
        fail("thread %d: shuffle width %d is not a power of two <= 32", f->lin, width);
        f->state = ST_DONE;
        to_sched(f, 1);
    }
    size_t wi = (size_t)f->warp;
    int *arrived = &w->w_arrived[wi];
    if (*arrived == 0) {
        w->w_op[wi] = op;
        w->w_width[wi] = width;
        w->w_mask[wi] = mask;
    } else if (w->w_op[wi] != op || w->w_width[wi] != width) {
        fail("warp %d: lanes meet at different warp operations (divergent warp code)", f->warp);
        f->state = ST_DONE;
        to_sched(f, 1);
    }
    f->val = val;
    f->pred = pred;
    f->src = seg_src(op, f->lane, arg, width);
    if (++*arrived < 32) {
        f->state = ST_WARP;
        park(f);
        return f->res;
    }
    /* the last lane computes everyone's result and releases the warp */
    cusim_fiber *lanes = &w->f[wi * 32];
    uint64_t ballot = 0;
    for (int l = 0; l < 32; l++)
        ballot |= (uint64_t)(lanes[l].pred != 0) << l;
    for (int l = 0; l < 32; l++) {
        cusim_fiber *x = &lanes[l];
        switch (op) {
        case CUSIM_OP_BALLOT:
            x->res = ballot;
            break;
        case CUSIM_OP_ANY:
            x->res = ballot != 0;
            break;
        case CUSIM_OP_ALL:
            x->res = ballot == 0xffffffffull;
            break;
        case CUSIM_OP_SYNCWARP:
            x->res = 0;
            break;
        default:
            x->res = lanes[x->src].val;
        }
        x->state = ST_RUN;
    }
    *arrived = 0;
    return f->res;
}

/* ---- control ---- */

const char *cusim_last_message(void)
{
    return g_msg;
}

int cusim_set_order(int order)
{
    int old = order_now();
    g_order.store(order < 0 || order > 2 ? 0 : order);
    return old;
}

int cusim_get_order(void)
{
    return order_now();
}

unsigned long cusim_launch_count(void)
{
    return g_launches.load();
}

static std::atomic<unsigned long> g_graph_launches{0};
static std::atomic<int> g_capturing{0};

unsigned long cusim_graph_launch_count(void)
{
    return g_graph_launches.load();
}

/* ---- runtime API ---- */

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    case cudaErrorInsufficientDriver:
        return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice:
        return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
        return "invalid device ordinal";
    case cudaErrorLaunchFailure:
        return "unspecified launch failure";
    default:
        return "unknown error";
    }
}

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return "cudaSuccess";
    case cudaErrorInvalidValue:
        return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
        return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
        return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure:
        return "cudaErrorLaunchFailure";
    default:
        return "cudaErrorUnknown";
    }
}

cudaError_t cudaGetLastError(void)
{
    std::lock_guard<std::mutex> g(g_mu);
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void)
{
    std::lock_guard<std::mutex> g(g_mu);
    return g_last;
}

/* CUSIM_DEVICES=0 makes the simulated machine GPU-less (tests of the CPU fallback). */
cudaError_t cudaGetDeviceCount(int *n)
{
    const char *e = getenv("CUSIM_DEVICES");
    *n = e ? atoi(e) : 1;
    if (*n <= 0) {
        *n = 0;
        return cudaErrorNoDevice;
    }
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int d)
{
    int n = 0;
    cudaGetDeviceCount(&n);
    return d >= 0 && d < n ? cudaSuccess : cudaErrorInvalidDevice;
}

cudaError_t cudaGetDevice(int *d)
{
    *d = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cuda_sim (CPU simulator)");
    p->totalGlobalMem = (size_t)8 << 30;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 2;
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerBlockOptin = MAX_SMEM;
    (void)d;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, int attr, int d)
{
    *v = 0;
    (void)attr;
    (void)d;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t n)
{
    *p = aligned_alloc(256, (n + 255) & ~(size_t)255);
    if (!*p)
        return set_last(cudaErrorMemoryAllocation);
    /* device memory is not zeroed on a GPU either: make reads of unwritten memory visible */
    memset(*p, 0xff, n);
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t n)
{
    return cudaMalloc(p, n);
}

cudaError_t cudaFreeHost(void *p)
{
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k)
{
    (void)k;
    if (n)
        memmove(d, s, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t st)
{
    if (st && st->capturing) {
        Op o{};
        o.kind = 1;
        o.dst = d;
        o.src = s;
        o.n = n;
        st->rec->push_back(o);
        return cudaSuccess;
    }
    return cudaMemcpy(d, s, n, k);
}

cudaError_t cudaMemcpy2DAsync(void *d, size_t dp, const void *s, size_t sp, size_t w, size_t h,
                              cudaMemcpyKind k, cudaStream_t st)
{
    if (w > dp || w > sp)
        return set_last(cudaErrorInvalidValue);
    for (size_t r = 0; r < h; r++) {
        cudaError_t e = cudaMemcpyAsync((char *)d + r * dp, (const char *)s + r * sp, w, k, st);
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

cudaError_t cudaMemset(void *d, int v, size_t n)
{
    memset(d, v, n);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st)
{
    if (st && st->capturing) {
        Op o{};
        o.kind = 2;
        o.dst = d;
        o.n = n;
        o.val = v;
        st->rec->push_back(o);
        return cudaSuccess;
    }
    return cudaMemset(d, v, n);
}

cudaError_t cudaStreamCreate(cudaStream_t *s)
{
    *s = new (std::nothrow) cusim_stream{0, nullptr};
    return *s ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    (void)flags;
    return cudaStreamCreate(s);
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    if (s) {
        delete s->rec;
        delete s;
    }
    return cudaSuccess;
}

/* as on the GPU, waiting for a stream that is being captured is an error */
cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    if ((s && s->capturing) || (!s && g_capturing.load()))
        return set_last(cudaErrorStreamCaptureUnsupported);
    return cudaPeekAtLastError();
}

cudaError_t cudaDeviceSynchronize(void)
{
    if (g_capturing.load())
        return set_last(cudaErrorStreamCaptureUnsupported);
    return cudaPeekAtLastError();
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode m)
{
    (void)m;
    if (!s || s->capturing)
        return cudaErrorStreamCaptureUnsupported; /* the legacy stream cannot be captured */
    s->capturing = 1;
    s->rec = new std::vector<Op>;
    g_capturing++;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    if (!s || !s->capturing)
        return cudaErrorInvalidValue;
    cusim_graph *gr = new cusim_graph;
    gr->ops.swap(*s->rec);
    delete s->rec;
    s->rec = nullptr;
    s->capturing = 0;
    g_capturing--;
    *g = gr;
    return cudaSuccess;
}

static void graph_free_ops(cusim_graph *g)
{
    for (Op &o : g->ops)
        if (o.kind == 0)
            o.destroy(o.args);
    g->ops.clear();
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags)
{
    (void)flags;
    cusim_graph *x = new cusim_graph;
    for (const Op &o : g->ops) {
        Op c = o;
        if (o.kind == 0)
            o.copy(&c.args, o.args);
        x->ops.push_back(c);
    }
    *e = x;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s)
{
    (void)s;
    g_graph_launches++;
    for (const Op &o : e->ops) {
        cudaError_t r = cudaSuccess;
        if (o.kind == 0)
            r = run_launch(o.g, o.b, o.smem, o.fn, o.args, o.copy, o.destroy);
        else if (o.kind == 1)
            memmove(o.dst, o.src, o.n);
        else
            memset(o.dst, o.val, o.n);
        if (r != cudaSuccess)
            return r;
    }
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    if (g) {
        graph_free_ops(g);
        delete g;
    }
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e)
{
    return cudaGraphDestroy(e);
}
