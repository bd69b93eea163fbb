/* clock: the monotonic clock every timing in specd reads (stats, benchmarks). */
#ifndef SD_CLOCK_H
#define SD_CLOCK_H

#include <pthread.h>
#include <time.h>

/* Seconds on CLOCK_MONOTONIC (arbitrary origin; differences only). */
double clock_now_s(void);
/* Sleep ms milliseconds (fractions allowed), resuming after signals. */
void clock_sleep_ms(double ms);

/* A condition variable whose timed waits run on CLOCK_MONOTONIC, and the deadline ms from now
 * on that clock, for pthread_cond_timedwait. */
void clock_cond_init(pthread_cond_t *cv);
struct timespec clock_deadline(double ms);

#endif
