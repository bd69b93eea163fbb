/* bench/cluster_wake: what it costs, on this machine and at this moment, to hand a message from
 * one sleeping thread to another — the step a chunk's trip through the cluster repeats (the
 * coordinator's UCX progress thread sleeps in poll() until the verdict arrives; the worker's
 * progress thread sleeps in poll() until the chunk arrives, then wakes the compute thread on a
 * condition variable, which wakes the progress thread again to send the verdict).
 * ucx_perftest busy-polls, so its latency never includes a wake-up; ours does. Two ping-pongs
 * between two threads, each side blocked until the other signals it:
 *   poll    eventfd written by one thread, poll()+read by the other (a UCX event fd's path)
 *   condvar pthread mutex + condition variable (the worker's queue to its compute thread)
 * Prints one line per kind: "wake KIND p50_us mean_us p99_us" (one handoff = half a round
 * trip). Run by bench/cluster.sh beside ucx_perftest.
 *
 * With --steal it is instead the other processes of a co-located cluster (coordinator,
 * drafter, client wake up briefly around every chunk): every PERIOD_US it wakes and keeps a
 * CPU busy for BURN_US, for SECONDS or until SIGTERM, then prints "steal BURSTS CPU_MS WALL_MS"
 * (bench/cluster.sh runs in-process generation beside it: what stolen CPU time costs a forward
 * that uses every core).
 *
 *   bench_cluster_wake [ROUND_TRIPS]   (default 2000)
 *   bench_cluster_wake --steal PERIOD_US BURN_US SECONDS */
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../common/clock.h"

static int n_rt = 2000;

/* ---- eventfd + poll ---- */
static int efd[2]; /* [0]: to the echo thread, [1]: back */

static void ev_wait(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    uint64_t v;
    while (poll(&p, 1, -1) != 1 || read(fd, &v, sizeof v) != sizeof v)
        ;
}

static void ev_post(int fd)
{
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) != sizeof one)
        ;
}

static void *ev_echo(void *arg)
{
    (void)arg;
    for (int i = 0; i < n_rt; i++) {
        ev_wait(efd[0]);
        ev_post(efd[1]);
    }
    return NULL;
}

/* ---- mutex + condition variable ---- */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int turn = 1; /* 0: the echo thread's, 1: the timer's */

static void *cv_echo(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < n_rt; i++) {
        while (turn != 0)
            pthread_cond_wait(&cv, &mu);
        turn = 1;
        pthread_cond_broadcast(&cv);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *kind, double *us)
{
    qsort(us, (size_t)n_rt, sizeof *us, cmp_d);
    double sum = 0;
    for (int i = 0; i < n_rt; i++)
        sum += us[i];
    printf("wake %s %.2f %.2f %.2f\n", kind, us[n_rt / 2], sum / n_rt, us[n_rt * 99 / 100]);
}

static volatile sig_atomic_t stop_steal;

static void on_term(int sig)
{
    (void)sig;
    stop_steal = 1;
}

static int steal(int period_us, int burn_us, double seconds)
{
    long bursts = 0;
    signal(SIGTERM, on_term);
    double t0 = clock_now_s(), end = t0 + seconds;
    struct timespec ts = {period_us / 1000000, (long)(period_us % 1000000) * 1000L};
    while (!stop_steal && clock_now_s() < end) {
        nanosleep(&ts, NULL);
        double until = clock_now_s() + burn_us * 1e-6;
        while (clock_now_s() < until)
            ;
        bursts++;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_ms = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
                    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
    printf("steal %ld %.1f %.1f\n", bursts, cpu_ms, (clock_now_s() - t0) * 1e3);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--steal")) {
        int period = argc == 5 ? atoi(argv[2]) : 0, burn = argc == 5 ? atoi(argv[3]) : -1;
        double secs = argc == 5 ? atof(argv[4]) : 0;
        if (period < 100 || period > 10000000 || burn < 0 || burn > period || secs <= 0 ||
            secs > 3600) {
            fprintf(stderr, "usage: bench_cluster_wake --steal PERIOD_US (100..1e7) BURN_US "
                            "(0..PERIOD_US) SECONDS (0..3600]\n");
            return 2;
        }
        return steal(period, burn, secs);
    }
    if (argc > 1) {
        n_rt = atoi(argv[1]);
        if (n_rt < 10 || n_rt > 10000000) {
            fprintf(stderr, "usage: bench_cluster_wake [ROUND_TRIPS (10..1e7)]\n");
            return 2;
        }
    }
    double *us = malloc(sizeof *us * (size_t)n_rt);
    efd[0] = eventfd(0, 0);
    efd[1] = eventfd(0, 0);
    if (!us || efd[0] < 0 || efd[1] < 0) {
        fprintf(stderr, "bench_cluster_wake: out of resources\n");
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, ev_echo, NULL);
    for (int i = 0; i < n_rt; i++) {
        double t = clock_now_s();
        ev_post(efd[0]);
        ev_wait(efd[1]);
        us[i] = (clock_now_s() - t) * 1e6 / 2;
    }
    pthread_join(th, NULL);
    report("poll", us);

    pthread_create(&th, NULL, cv_echo, NULL);
    pthread_mutex_lock(&mu);
    for (int i = 0; i < n_rt; i++) {
        double t = clock_now_s();
        turn = 0;
        pthread_cond_broadcast(&cv);
        while (turn != 1)
            pthread_cond_wait(&cv, &mu);
        us[i] = (clock_now_s() - t) * 1e6 / 2;
    }
    pthread_mutex_unlock(&mu);
    pthread_join(th, NULL);
    report("condvar", us);
    close(efd[0]);
    close(efd[1]);
    free(us);
    return 0;
}
