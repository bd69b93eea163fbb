/* cpu_pool: a persistent thread pool with a parallel-for.
 *
 * A forward pass issues ~200 matmuls per token, each a few microseconds of work, so dispatch
 * latency matters more than anything else here. A dispatch bumps a generation counter; workers
 * spin on it for a while (KCPU_SPIN pause loops, a few hundred microseconds: long enough to
 * cover the gap between the kernels of one token) and only then sleep on a condition variable.
 * The caller works on tasks too and spins until the workers report done. Tasks are claimed
 * through an atomic counter, so a worker that the OS descheduled (the machine is shared) does
 * not hold a fixed slice of the work hostage. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
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

struct kcpu_pool {
    int n; /* threads including the caller */
    kcpu_worker *w;

    _Alignas(64) atomic_uint gen;
    kcpu_task_fn fn;
    void *arg;
    int n_tasks;
    atomic_int stop;

    _Alignas(64) atomic_int next; /* next task to claim */
    _Alignas(64) atomic_int done; /* workers finished with the current generation */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers; /* under mu */
};

static void pool_work(kcpu_pool *p, int tid)
{
    int n_tasks = p->n_tasks;
    kcpu_task_fn fn = p->fn;
    void *arg = p->arg;
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= n_tasks)
            break;
        fn(arg, i, tid);
    }
}

static void *pool_main(void *vw)
{
    kcpu_worker *w = vw;
    kcpu_pool *p = w->pool;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        for (int s = 0; g == seen && s < KCPU_SPIN; s++) {
            KCPU_PAUSE();
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
                   !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            break;
        seen = g;
        pool_work(p, w->tid);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
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
    atomic_init(&p->gen, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->next, 0);
    atomic_init(&p->done, 0);
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
        atomic_fetch_add(&p->gen, 1);
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
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    /* A worker checks gen under mu before waiting, so taking mu here cannot lose a wake-up. */
    pthread_mutex_lock(&p->mu);
    if (p->sleepers)
        pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    pool_work(p, 0);

    int want = p->n - 1;
    for (unsigned s = 0; atomic_load_explicit(&p->done, memory_order_acquire) != want; s++) {
        if (s < KCPU_SPIN)
            KCPU_PAUSE();
        else
            sched_yield(); /* a worker was descheduled: give it the core */
    }
}
