/* clock: the monotonic clock every timing in specd reads (stats, benchmarks). */
#ifndef SD_CLOCK_H
#define SD_CLOCK_H

/* Seconds on CLOCK_MONOTONIC (arbitrary origin; differences only). */
double clock_now_s(void);

#endif
