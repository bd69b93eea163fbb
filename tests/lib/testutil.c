#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

uint64_t tu_seed(void)
{
    static uint64_t seed;
    static int have;
    if (!have) {
        const char *e = getenv("SD_SEED");
        if (e && *e) {
            seed = strtoull(e, NULL, 0);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            seed = (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec;
        }
        have = 1;
        fprintf(stderr, "[seed] SD_SEED=%llu\n", (unsigned long long)seed);
    }
    return seed;
}

void tu_rng_init(tu_rng *r, uint64_t seed)
{
    r->s = seed * 0x9E3779B97F4A7C15ull + 1;
}

uint64_t tu_next(tu_rng *r)
{
    /* splitmix64 */
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint32_t tu_below(tu_rng *r, uint32_t n)
{
    return n ? (uint32_t)(tu_next(r) % n) : 0;
}

float tu_uniform(tu_rng *r)
{
    return (float)(tu_next(r) >> 40) / (float)(1u << 24);
}

float tu_normal(tu_rng *r)
{
    float u1 = tu_uniform(r), u2 = tu_uniform(r);
    if (u1 < 1e-7f)
        u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

const char *tu_model_path(void)
{
    const char *p = getenv("SPECD_MODEL");
    FILE *f = p ? fopen(p, "rb") : NULL;
    if (!f) {
        fprintf(stderr,
                "default model not found at '%s' (run scripts/setup.sh or set SPECD_MODEL)\n",
                p ? p : "(unset)");
        fail();
    }
    fclose(f);
    return p;
}

const char *tu_src_path(const char *rel)
{
    static char buf[4096];
    const char *s = getenv("SPECD_SRC");
    snprintf(buf, sizeof buf, "%s/%s", s ? s : ".", rel);
    return buf;
}

void *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf && len)
        *len = (size_t)n;
    return buf;
}
