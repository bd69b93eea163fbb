/* clock: the monotonic clock every timing in specd reads (stats, benchmarks). */
#ifndef SD_CLOCK_H
#define SD_CLOCK_H

/* Seconds on CLOCK_MONOTONIC (arbitrary origin; differences only). */
double clock_now_s(void);
/* Sleep ms milliseconds (fractions allowed), resuming after signals. */
void clock_sleep_ms(double ms);

#endif
