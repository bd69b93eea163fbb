#include "linkemu.h"

#include <math.h>
#include <string.h>

int ucx_link_active(const ucx_link *l)
{
    return l && (l->delay_ms > 0 || l->jitter_ms > 0 || l->bandwidth_mbps > 0 ||
                 (l->reorder_prob > 0 && l->reorder_ms > 0));
}

sd_err linkemu_check(const ucx_link *l)
{
    const struct {
        const char *name;
        double v, max;
    } f[] = {
        {"delay_ms", l->delay_ms, 3.6e6},           {"jitter_ms", l->jitter_ms, 3.6e6},
        {"bandwidth_mbps", l->bandwidth_mbps, 1e9}, {"reorder_prob", l->reorder_prob, 1.0},
        {"reorder_ms", l->reorder_ms, 3.6e6},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (!(f[i].v >= 0 && f[i].v <= f[i].max)) /* also catches NaN */
            return sd_fail(SD_EINVAL, "link: %s = %g out of range [0, %g]", f[i].name, f[i].v,
                           f[i].max);
    return SD_OK;
}

/* splitmix64: a counter-based stream, fixed by the seed. */
static double next_u01(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

void linkemu_init(linkemu *e, const ucx_link *l)
{
    memset(e, 0, sizeof *e);
    e->l = *l;
    e->rng = l->seed;
}

double linkemu_release(linkemu *e, double now, size_t len, int *reordered)
{
    double uj = next_u01(&e->rng), ur = next_u01(&e->rng);
    double start = now > e->tx_free ? now : e->tx_free;
    double end = start;
    if (e->l.bandwidth_mbps > 0)
        end += (double)len * 8.0 / (e->l.bandwidth_mbps * 1e6);
    e->tx_free = end;
    double t = end + e->l.delay_ms * 1e-3 + uj * e->l.jitter_ms * 1e-3;
    int ro = e->l.reorder_prob > 0 && e->l.reorder_ms > 0 && ur < e->l.reorder_prob;
    if (ro) {
        t += e->l.reorder_ms * 1e-3;
    } else {
        if (t < e->floor)
            t = e->floor;
        e->floor = t;
    }
    if (reordered)
        *reordered = ro;
    return t;
}
