/* adversary: a test drafter that proposes random trees of random tokens (valid shape, garbage
 * content) — speculation must stay lossless whatever a drafter sends. */
#ifndef SD_ADVERSARY_H
#define SD_ADVERSARY_H

#include <stdint.h>

#include "engine/draft.h"

/* `plant` > 0: with that percentage, a node copies the token of an earlier history position so
 * that some proposals are accepted and the commit paths get exercised. */
sd_err adversary_open(draft **out, int n_vocab, int max_ctx, uint64_t seed, int plant);

#endif
