#include "sample.h"

#include <math.h>
#include <stdlib.h>

struct sample_work {
    int V;
    int *idx;    /* candidate ids */
    float *prob; /* unnormalised probabilities, by id */
};

sd_err sample_params_check(const sample_params *p)
{
    if (!(p->temp >= 0.0f) || !isfinite(p->temp))
        return sd_fail(SD_EINVAL, "temperature %g: must be a finite number >= 0", p->temp);
    if (p->top_k < 0)
        return sd_fail(SD_EINVAL, "top-k %d: must be >= 0 (0 = off)", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return sd_fail(SD_EINVAL, "top-p %g: must be in (0, 1]", p->top_p);
    return SD_OK;
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t sample_rng_u64(uint64_t seed, uint64_t pos, uint64_t stream)
{
    /* Three rounds of splitmix finalisation over the key words: a stateless hash, so the draw
     * for a position needs no history. */
    uint64_t h = mix64(seed + 0x9E3779B97F4A7C15ull);
    h = mix64(h ^ (pos + 0x632BE59BD9B4E019ull));
    return mix64(h ^ (stream * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull));
}

double sample_rng_uniform(uint64_t seed, uint64_t pos, uint64_t stream)
{
    return (double)(sample_rng_u64(seed, pos, stream) >> 11) * (1.0 / 9007199254740992.0);
}

int sample_argmax(const float *logits, int V)
{
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best] || (logits[best] != logits[best] && logits[i] == logits[i]))
            best = i;
    return best;
}

sd_err sample_work_init(sample_work **out, int V)
{
    *out = NULL;
    if (V <= 0)
        return sd_fail(SD_EINVAL, "vocabulary size %d", V);
    sample_work *w = calloc(1, sizeof *w);
    if (!w)
        return SD_ENOMEM;
    w->V = V;
    w->idx = malloc(sizeof(int) * (size_t)V);
    w->prob = malloc(sizeof(float) * (size_t)V);
    if (!w->idx || !w->prob) {
        sample_work_free(w);
        return SD_ENOMEM;
    }
    *out = w;
    return SD_OK;
}

void sample_work_free(sample_work *w)
{
    if (!w)
        return;
    free(w->idx);
    free(w->prob);
    free(w);
}

/* Total order: higher probability first, then lower id. Keeps every step deterministic. */
static int before(const float *prob, int a, int b)
{
    return prob[a] > prob[b] || (prob[a] == prob[b] && a < b);
}

/* Keep the m best ids of the vocabulary in w->idx[0..m), best first: a min-heap of size m over
 * one pass (O(V log m)), then heap-sort. Ties resolve by id, so the result is a pure function of
 * the probabilities. */
static void heap_down(int *h, int n, int i, const float *prob)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, s = i;
        if (l < n && before(prob, h[s], h[l]))
            s = l;
        if (r < n && before(prob, h[s], h[r]))
            s = r;
        if (s == i)
            return;
        int t = h[i];
        h[i] = h[s];
        h[s] = t;
        i = s;
    }
}

static void top_m(sample_work *w, int V, int m)
{
    int *h = w->idx; /* h[0] is the worst of the kept set */
    for (int i = 0; i < m; i++)
        h[i] = i;
    for (int i = m / 2 - 1; i >= 0; i--)
        heap_down(h, m, i, w->prob);
    for (int i = m; i < V; i++)
        if (before(w->prob, i, h[0])) {
            h[0] = i;
            heap_down(h, m, 0, w->prob);
        }
    for (int n = m - 1; n > 0; n--) { /* worst goes to the end: best-first order */
        int t = h[0];
        h[0] = h[n];
        h[n] = t;
        heap_down(h, n, 0, w->prob);
    }
}

/* Scan the sorted head for the shortest prefix whose mass reaches `need`. */
static int cut(const sample_work *w, int m, double need, double *mass)
{
    double acc = 0;
    for (int k = 0; k < m; k++) {
        acc += w->prob[w->idx[k]];
        if (acc >= need) {
            *mass = acc;
            return k + 1;
        }
    }
    *mass = acc;
    return -1;
}

/* Fills w->idx[0..n) with the kept candidates (best first when filtered, id order when nothing
 * filters) and returns n; *sum is their total unnormalised mass. */
static int filter(sample_work *w, const float *logits, int V, const sample_params *p, double *sum,
                  double *all)
{
    float mx = logits[sample_argmax(logits, V)];
    float inv_t = 1.0f / p->temp;
    double total = 0;
    for (int i = 0; i < V; i++) {
        float e = logits[i] == logits[i] ? expf((logits[i] - mx) * inv_t) : 0.0f;
        w->prob[i] = e;
        w->idx[i] = i;
        total += e;
    }
    if (all)
        *all = total;
    int topk = p->top_k > 0 && p->top_k < V;
    if (!topk && p->top_p >= 1.0f) {
        *sum = total;
        return V;
    }
    if (topk) {
        top_m(w, V, p->top_k);
        double mass;
        cut(w, p->top_k, INFINITY, &mass);
        if (p->top_p >= 1.0f) {
            *sum = mass;
            return p->top_k;
        }
        int k = cut(w, p->top_k, (double)p->top_p * mass, sum);
        return k > 0 ? k : p->top_k;
    }
    /* top-p alone: grow the sorted head until it covers the mass (usually a few dozen ids). */
    double need = (double)p->top_p * total;
    for (int m = V < 64 ? V : 64;; m = m * 4 < V ? m * 4 : V) {
        top_m(w, V, m);
        int k = cut(w, m, need, sum);
        if (k > 0)
            return k;
        if (m == V)
            return V;
    }
}

int sample_dist(sample_work *w, const float *logits, int V, const sample_params *p, int *ids,
                float *probs)
{
    if (p->temp == 0.0f) {
        ids[0] = sample_argmax(logits, V);
        probs[0] = 1.0f;
        return 1;
    }
    double sum;
    int n = filter(w, logits, V, p, &sum, NULL);
    for (int i = 0; i < n; i++) {
        ids[i] = w->idx[i];
        probs[i] = (float)(w->prob[w->idx[i]] / sum);
    }
    return n;
}

int sample_token(sample_work *w, const float *logits, int V, const sample_params *p, uint64_t pos)
{
    if (p->temp == 0.0f)
        return sample_argmax(logits, V);
    double sum;
    int n = filter(w, logits, V, p, &sum, NULL);
    double u = sample_rng_uniform(p->seed, pos, 0) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += w->prob[w->idx[i]];
        if (u < acc)
            return w->idx[i];
    }
    return w->idx[n - 1];
}

int sample_top(sample_work *w, const float *logits, int V, float temp, int k, int32_t *ids,
               float *probs)
{
    sample_params p = {temp > 0 ? temp : 1.0f, k < V ? k : 0, 1.0f, 0};
    double sum, total;
    int n = filter(w, logits, V, &p, &sum, &total);
    if (n == V) /* nothing filtered: id order, so order the head explicitly */
        top_m(w, V, n);
    for (int i = 0; i < n; i++) {
        ids[i] = w->idx[i];
        probs[i] = (float)(w->prob[w->idx[i]] / total);
    }
    return n;
}
