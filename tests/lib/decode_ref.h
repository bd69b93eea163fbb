/* decode_ref: target-only decoding written the plain way (model_forward one token at a time +
 * sample_token at the token's position), independent of the speculation code it checks. */
#ifndef SD_DECODE_REF_H
#define SD_DECODE_REF_H

#include <stdint.h>

#include "engine/model.h"
#include "engine/sample.h"

/* Fills out[0..n_gen). Fails the calling test on error. */
void decode_ref(model *m, const int32_t *prompt, int n, const sample_params *sp, int n_gen,
                int32_t *out);

/* A token sink for spec_config.on_token: appends to ids[0..cap). */
typedef struct {
    int32_t *ids;
    int n, cap;
} tok_sink;
int tok_sink_put(void *ud, int32_t t);

#endif
