/* sample: next-token selection — greedy, temperature, top-k, top-p — driven by a counter-based
 * RNG keyed by (seed, position), so any node that holds the same logits draws the same token for
 * a position, whichever process, batch or order it is computed in (DESIGN.md §2–3). */
#ifndef SD_SAMPLE_H
#define SD_SAMPLE_H

#include <stdint.h>

#include "../common/sd_err.h"

typedef struct {
    float temp;  /* 0 = greedy */
    int top_k;   /* 0 = off */
    float top_p; /* 1 = off */
    uint64_t seed;
} sample_params;

/* Checks ranges (temp >= 0 finite, top_k >= 0, 0 < top_p <= 1). */
sd_err sample_params_check(const sample_params *p);

/* Counter-based RNG: a pure function of (seed, pos, stream). stream separates independent uses
 * of the same position (0 = token sampling). */
uint64_t sample_rng_u64(uint64_t seed, uint64_t pos, uint64_t stream);
/* Uniform double in [0, 1) with 53 random bits. */
double sample_rng_uniform(uint64_t seed, uint64_t pos, uint64_t stream);

/* Index of the largest logit (lowest index on ties; NaN never wins). */
int sample_argmax(const float *logits, int V);

/* Scratch for sample_token, sized for a vocabulary (allocated once, reused every step). */
typedef struct sample_work sample_work;
sd_err sample_work_init(sample_work **out, int V);
void sample_work_free(sample_work *w);

/* The token for position `pos` (the absolute position the token will occupy). Greedy when
 * temp == 0. Deterministic: depends only on logits, params and pos. */
int sample_token(sample_work *w, const float *logits, int V, const sample_params *p, uint64_t pos);

/* The filtered, normalised distribution sample_token draws from: fills ids[] and probs[] (best
 * first, ties by id, when top-k/top-p filter; id order when nothing filters) and returns how
 * many; ids/probs need room for V entries. Used by verification and tests. */
int sample_dist(sample_work *w, const float *logits, int V, const sample_params *p, int *ids,
                float *probs);

/* The k most likely tokens under softmax(logits / temp) (temp 0 counts as 1), best first, with
 * their probabilities under the FULL distribution (not renormalised). Returns min(k, V). */
int sample_top(sample_work *w, const float *logits, int V, float temp, int k, int32_t *ids,
               float *probs);

#endif
