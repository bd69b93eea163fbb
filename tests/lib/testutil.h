/* testutil: shared support for the cmocka tests — seeded randomness with the seed printed,
 * the default model's path, and small helpers. */
#ifndef SD_TESTUTIL_H
#define SD_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* cmocka needs the headers above first */
#include <cmocka.h>

/* Seed from $SD_SEED or the clock; printed once so a failure can be replayed. */
uint64_t tu_seed(void);
/* xorshift-based generator state, seeded from tu_seed() unless given. */
typedef struct {
    uint64_t s;
} tu_rng;
void tu_rng_init(tu_rng *r, uint64_t seed);
uint64_t tu_next(tu_rng *r);
uint32_t tu_below(tu_rng *r, uint32_t n); /* uniform in [0, n) */
float tu_uniform(tu_rng *r);              /* [0, 1) */
float tu_normal(tu_rng *r);
/* Path of the default model ($SPECD_MODEL). Fails the calling test if it is missing. */
const char *tu_model_path(void);
/* $SPECD_SRC (source tree) joined with rel, into a static buffer. */
const char *tu_src_path(const char *rel);
/* Read a whole file; returns malloc'd buffer (caller frees) or NULL. */
void *tu_read_file(const char *path, size_t *len);

#endif
