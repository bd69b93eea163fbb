/* cpu_pool: a persistent thread pool with a parallel-for.
 *
 * A forward pass issues ~200 matmuls per token, each a few microseconds of work, so dispatch
 * latency matters more than anything else here. A job is published by bumping the generation
 * in `state` (generation << 32 | next task); workers spin on it for a while (KCPU_SPIN pause
 * loops, long enough to cover the gap between the kernels of one token) and only then sleep on
 * a condition variable. Everyone, the caller included, claims tasks with a compare-and-swap
 * that also checks the generation, and the caller waits only for the tasks that were claimed:
 * a worker that is asleep or descheduled (the machine may be shared) never holds a job up — the
 * caller simply does more of the tasks itself.
 *
 * Job descriptions alternate between two slots: a worker that read generation g late can only
 * claim a task of g while g is unfinished, and slot g & 1 is not rewritten before g finishes. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "cpu_impl.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KCPU_PAUSE() _mm_pause()
#else
#define KCPU_PAUSE() ((void)0)
#endif

#define KCPU_SPIN 4096

typedef struct {
    kcpu_pool *pool;
    int tid;
    pthread_t th;
} kcpu_worker;

typedef struct {
    kcpu_task_fn fn;
    void *arg;
    atomic_int n_tasks;
} kcpu_job;

struct kcpu_pool {
    int n; /* threads including the caller */
    kcpu_worker *w;
    kcpu_job job[2];
    atomic_int stop;

    _Alignas(64) _Atomic uint64_t state; /* generation << 32 | next task to claim */
    _Alignas(64) atomic_int done;        /* tasks of the current generation finished */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers; /* under mu */
};

static uint32_t state_gen(uint64_t s)
{
    return (uint32_t)(s >> 32);
}

/* Claim and run tasks of generation g until none is left (or g is over). */
static void pool_work(kcpu_pool *p, uint32_t g, int tid)
{
    kcpu_job *jb = &p->job[g & 1];
    uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
    for (;;) {
        if (state_gen(s) != g)
            return;
        uint32_t i = (uint32_t)s;
        if ((int)i >= atomic_load_explicit(&jb->n_tasks, memory_order_relaxed))
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* s was reloaded */
        jb->fn(jb->arg, (int)i, tid);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        s = atomic_load_explicit(&p->state, memory_order_acquire);
    }
}

static void *pool_main(void *vw)
{
    kcpu_worker *w = vw;
    kcpu_pool *p = w->pool;
    uint32_t seen = 0;
    for (;;) {
        uint32_t g = state_gen(atomic_load_explicit(&p->state, memory_order_acquire));
        for (int s = 0; g == seen && s < KCPU_SPIN; s++) {
            KCPU_PAUSE();
            g = state_gen(atomic_load_explicit(&p->state, memory_order_acquire));
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while ((g = state_gen(atomic_load_explicit(&p->state, memory_order_acquire))) == seen &&
                   !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            break;
        seen = g;
        pool_work(p, g, w->tid);
    }
    return NULL;
}

int kcpu_pool_create(kcpu_pool **out, int n_threads)
{
    *out = NULL;
    if (n_threads < 1)
        n_threads = 1;
    kcpu_pool *p = calloc(1, sizeof *p);
    if (!p)
        return -1;
    p->n = n_threads;
    atomic_init(&p->state, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->job[0].n_tasks, 0);
    atomic_init(&p->job[1].n_tasks, 0);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (n_threads > 1) {
        p->w = calloc((size_t)n_threads, sizeof *p->w);
        if (!p->w) {
            kcpu_pool_free(p);
            return -1;
        }
        for (int i = 1; i < n_threads; i++) {
            p->w[i].pool = p;
            p->w[i].tid = i;
            if (pthread_create(&p->w[i].th, NULL, pool_main, &p->w[i]) != 0) {
                p->n = i; /* join the ones started */
                kcpu_pool_free(p);
                return -1;
            }
        }
    }
    *out = p;
    return 0;
}

void kcpu_pool_free(kcpu_pool *p)
{
    if (!p)
        return;
    if (p->w) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->stop, 1);
        uint64_t s = atomic_load(&p->state);
        atomic_store(&p->state, (uint64_t)(state_gen(s) + 1) << 32);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 1; i < p->n; i++)
            pthread_join(p->w[i].th, NULL);
        free(p->w);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

int kcpu_pool_threads(const kcpu_pool *p)
{
    return p->n;
}

void kcpu_pool_run(kcpu_pool *p, kcpu_task_fn fn, void *arg, int n_tasks)
{
    if (n_tasks <= 0)
        return;
    if (p->n == 1 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++)
            fn(arg, i, 0);
        return;
    }
    uint32_t g = state_gen(atomic_load_explicit(&p->state, memory_order_relaxed)) + 1;
    kcpu_job *jb = &p->job[g & 1];
    jb->fn = fn;
    jb->arg = arg;
    atomic_store_explicit(&jb->n_tasks, n_tasks, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->state, (uint64_t)g << 32, memory_order_release);
    /* A worker checks the generation under mu before waiting: no lost wake-up. */
    pthread_mutex_lock(&p->mu);
    if (p->sleepers)
        pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    pool_work(p, g, 0);

    for (unsigned s = 0; atomic_load_explicit(&p->done, memory_order_acquire) != n_tasks; s++) {
        if (s < KCPU_SPIN)
            KCPU_PAUSE();
        else
            sched_yield(); /* a worker holding a task was descheduled: give it the core */
    }
}
