/* linkemu: the timing model of the emulated link (see ucx.h), pure and single-threaded so that it
 * can be tested alone. For each message submitted at time `now` it returns the time at which the
 * message may leave:
 *
 *   tx_start = max(now, end of the previous message's transmission)      (bandwidth: serialised)
 *   tx_end   = tx_start + len * 8 / bandwidth
 *   release  = tx_end + delay + U[0, jitter)                             (+ reorder_ms with
 *                                                                          probability
 * reorder_prob)
 *
 * A message that is not chosen for reordering never overtakes an earlier non-reordered one
 * (release is raised to the previous one's), so jitter alone does not reorder: reordering happens
 * exactly where reorder_prob says. Every message draws the same number of random numbers, so a
 * seed fixes the jitter and reordering decisions of the n-th message. */
#ifndef SD_LINKEMU_H
#define SD_LINKEMU_H

#include <stddef.h>
#include <stdint.h>

#include "ucx.h"

typedef struct {
    ucx_link l;
    uint64_t rng;
    double tx_free; /* when the previous transmission ends (s) */
    double floor;   /* release time of the last non-reordered message (s) */
} linkemu;

void linkemu_init(linkemu *e, const ucx_link *l);
/* Release time (s, on the clock of `now`) of a len-byte message submitted at now; *reordered
 * (may be NULL) tells whether it was picked for reordering. */
double linkemu_release(linkemu *e, double now, size_t len, int *reordered);
/* Bad values (negative, NaN, probability > 1) → SD_EINVAL with the field named. */
sd_err linkemu_check(const ucx_link *l);

#endif
