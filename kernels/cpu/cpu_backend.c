/* cpu_backend: the CPU kern_backend — dispatch by CPUID, the thread pool, the matmul driver and
 * the small ops (rmsnorm, rope, attention, silu_mul, add, add_bias).
 *
 * Dimension letters as in kernels.h. Every op here computes an output element from its own
 * position's inputs with a fixed operation order (batch invariance, kernels.h); threads only
 * decide who computes which element. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels.h"
#include "cpu_impl.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

typedef struct {
    kcpu_pool *pool;
    int nt;
    int level;
    unsigned flags;
    kcpu_mm_kernel mm[KCPU_DTYPE_SLOTS][2];
    kcpu_attn_ops attn;
    kcpu_ew_ops ew;
    uint8_t *act; /* prepared activations, grown on demand */
    size_t act_cap;
    uint8_t **scr; /* per-thread scratch */
    size_t scr_cap;
    /* rope cos/sin of the last call's positions: T rows of cos[half] then sin[half] (every
     * layer rotates q and k at the same positions) */
    float *rope_tab;
    int *rope_pos;
    size_t rope_cap; /* floats in rope_tab; ints in rope_pos: rope_cap / 2 */
    int rope_T, rope_half;
    float rope_base;
} cpu_ctx;

/* ---- CPU features ---- */

typedef struct {
    int avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16, avxvnni;
    int amx_tile, amx_int8, amx_bf16;
} cpu_feat;

static cpu_feat cpu_detect(void)
{
    cpu_feat f;
    memset(&f, 0, sizeof f);
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return f;
    int osxsave = (c >> 27) & 1;
    f.fma = (c >> 12) & 1;
    f.f16c = (c >> 29) & 1;
    int avx = (c >> 28) & 1;
    unsigned long long xcr0 = 0;
    if (osxsave) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        xcr0 = ((unsigned long long)hi << 32) | lo;
    }
    int ymm_os = avx && (xcr0 & 6) == 6;
    int zmm_os = ymm_os && (xcr0 & 0xe0) == 0xe0;
    int amx_os = (xcr0 & (3ull << 17)) == (3ull << 17);
    if (!ymm_os) {
        f.fma = f.f16c = 0;
        return f;
    }
    if (__get_cpuid_max(0, NULL) < 7)
        return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b >> 5) & 1;
    if (zmm_os) {
        f.avx512f = (b >> 16) & 1;
        f.avx512dq = (b >> 17) & 1;
        f.avx512bw = (b >> 30) & 1;
        f.avx512vl = (b >> 31) & 1;
        f.avx512vnni = (c >> 11) & 1;
    }
    if (amx_os) {
        f.amx_bf16 = (d >> 22) & 1;
        f.amx_tile = (d >> 24) & 1;
        f.amx_int8 = (d >> 25) & 1;
    }
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    f.avxvnni = (a1 >> 4) & 1;
    if (zmm_os)
        f.avx512bf16 = (a1 >> 5) & 1;
    (void)b1;
    (void)c1;
    (void)d1;
#endif
    return f;
}

static char cpu_feat_buf[256];

static void cpu_feat_fill(void)
{
    cpu_feat f = cpu_detect();
    struct {
        int on;
        const char *name;
    } l[] = {{f.amx_int8, "amx-int8"},
             {f.amx_bf16, "amx-bf16"},
             {f.amx_tile, "amx-tile"},
             {f.avx512bf16, "avx512bf16"},
             {f.avx512vnni, "avx512vnni"},
             {f.avx512bw, "avx512bw"},
             {f.avx512dq, "avx512dq"},
             {f.avx512vl, "avx512vl"},
             {f.avx512f, "avx512f"},
             {f.avxvnni, "avxvnni"},
             {f.avx2, "avx2"},
             {f.fma, "fma"},
             {f.f16c, "f16c"}};
    size_t n = 0;
    for (size_t i = 0; i < sizeof l / sizeof l[0]; i++)
        if (l[i].on && n < sizeof cpu_feat_buf)
            n += (size_t)snprintf(cpu_feat_buf + n, sizeof cpu_feat_buf - n, "%s%s", n ? " " : "",
                                  l[i].name);
}

const char *kern_cpu_features(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, cpu_feat_fill);
    return cpu_feat_buf;
}

static int cpu_best_level(void);

sd_err kern_cpu_level_parse(const char *s, kern_cpu_level *out)
{
    static const struct {
        const char *name;
        kern_cpu_level l;
    } t[] = {{"best", KERN_CPU_LEVEL_BEST},
             {"portable", KERN_CPU_LEVEL_PORTABLE},
             {"avx2", KERN_CPU_LEVEL_AVX2},
             {"avx512", KERN_CPU_LEVEL_AVX512}};
    for (size_t i = 0; s && i < sizeof t / sizeof t[0]; i++)
        if (strcmp(s, t[i].name) == 0) {
            *out = t[i].l;
            return SD_OK;
        }
    return sd_fail(SD_EINVAL, "unknown CPU level '%s' (expected portable, avx2, avx512 or best)",
                   s ? s : "");
}

const char *kern_cpu_level_name(kern_cpu_level l)
{
    switch (l) {
    case KERN_CPU_LEVEL_BEST:
        return "best";
    case KERN_CPU_LEVEL_PORTABLE:
        return "portable";
    case KERN_CPU_LEVEL_AVX2:
        return "avx2";
    case KERN_CPU_LEVEL_AVX512:
        return "avx512";
    }
    return "unknown";
}

int kern_cpu_level_available(kern_cpu_level l)
{
    if (l == KERN_CPU_LEVEL_BEST || l == KERN_CPU_LEVEL_PORTABLE)
        return 1;
    if (l != KERN_CPU_LEVEL_AVX2 && l != KERN_CPU_LEVEL_AVX512)
        return 0;
    return cpu_best_level() >= (int)l - 1;
}

static int cpu_best_level(void)
{
    cpu_feat f = cpu_detect();
    if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx512vnni && f.fma && f.f16c &&
        f.avx2)
        return KCPU_LEVEL_AVX512;
    if (f.avx2 && f.fma && f.f16c)
        return KCPU_LEVEL_AVX2;
    return KCPU_LEVEL_PORTABLE;
}

/* ---- scratch ---- */

static int ensure_buf(uint8_t **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = need + need / 2 + 4096;
    n = (n + 63) & ~(size_t)63;
    void *q = aligned_alloc(64, n);
    if (!q)
        return -1;
    free(*p);
    *p = q;
    *cap = n;
    return 0;
}

static int ensure_scratch(cpu_ctx *c, size_t need)
{
    if (need <= c->scr_cap)
        return 0;
    size_t n = (need + need / 2 + 4096 + 63) & ~(size_t)63;
    for (int i = 0; i < c->nt; i++) {
        void *q = aligned_alloc(64, n);
        if (!q)
            return -1;
        free(c->scr[i]);
        c->scr[i] = q;
    }
    c->scr_cap = n;
    return 0;
}

/* room for `need` floats of rope table and need / 2 positions (need >= 2 * T) */
static int ensure_rope(cpu_ctx *c, size_t need)
{
    need += need / 2;
    float *t = malloc(sizeof(float) * need);
    int *p = malloc(sizeof(int) * (need / 2));
    if (!t || !p) {
        free(t);
        free(p);
        return -1;
    }
    free(c->rope_tab);
    free(c->rope_pos);
    c->rope_tab = t;
    c->rope_pos = p;
    c->rope_cap = need;
    c->rope_T = 0;
    return 0;
}

static void fill_nan(float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = NAN;
}

/* ---- matmul ---- */

typedef struct {
    cpu_ctx *c;
    const kcpu_mm_kernel *k;
    kcpu_rows_fn rows;
    float *out;
    const float *x;
    const uint8_t *w;
    size_t w_stride, act_stride;
    const uint8_t *act;
    int T, N, K, chunk, t_per_task;
} mm_job;

static void mm_prep_task(void *arg, int task, int tid)
{
    mm_job *j = arg;
    int t0 = task * j->t_per_task, t1 = t0 + j->t_per_task;
    if (t1 > j->T)
        t1 = j->T;
    for (int t = t0; t < t1; t++)
        j->k->prep(j->c->act + (size_t)t * j->act_stride, j->x + (size_t)t * j->K, j->K);
}

static void mm_rows_task(void *arg, int task, int tid)
{
    mm_job *j = arg;
    int n0 = task * j->chunk, n1 = n0 + j->chunk;
    if (n1 > j->N)
        n1 = j->N;
    j->rows(j->out, j->N, j->act, j->act_stride, j->T, j->w, j->w_stride, n0, n1, j->K,
            j->c->scr[tid]);
}

/* The kernel entry and weight bytes for w: its packed copy when this level has the layout. */
static kcpu_rows_fn mm_source(const kcpu_mm_kernel *k, const kern_mat *w, const uint8_t **bytes)
{
    if (w->packed && k->rows_packed) {
        *bytes = w->packed;
        return k->rows_packed;
    }
    *bytes = w->data;
    return k->rows;
}

/* Rows per task: multiples of the kernel's row tile, claimed dynamically (a thread that is not
 * running leaves its chunks to the others). Up to T = 8 the weight stream dominates: one
 * contiguous range per thread keeps each stream long and its prefetching ahead (measured
 * faster: T = 4 5.4 vs 6.5 ms a forward). Larger T is compute: up to 16 tasks per thread, so
 * the wait for the last one is short, but none under ~64K multiply-adds (a task claim costs a
 * contended atomic). */
static int mm_chunk(const cpu_ctx *c, int rows, int tile, int T, int K)
{
    if (tile < 1)
        tile = 1;
    int stream = T <= 8;
    long chunk = stream ? (rows + c->nt - 1) / c->nt : (rows + 16L * c->nt - 1) / (16L * c->nt);
    long min_rows = stream ? 1 : 65536L / ((long)T * K) + 1;
    if (chunk < min_rows)
        chunk = min_rows;
    chunk = (chunk + tile - 1) / tile * tile;
    return (int)(chunk < rows ? chunk : (rows + tile - 1) / tile * tile);
}

static void cpu_matmul(void *vctx, float *out, const float *x, const kern_mat *w, int T, int N,
                       int K)
{
    cpu_ctx *c = vctx;
    if (T <= 0 || N <= 0)
        return;
    sd_dtype wt = w->type;
    size_t be = dtype_block_elems(wt);
    int qact = !(c->flags & KERN_CPU_F32_ACT);
    if ((unsigned)wt >= KCPU_DTYPE_SLOTS || !be || K <= 0 || K % (int)be || K % 32 ||
        !c->mm[wt][qact].rows) {
        /* shapes are validated at model load; a bad call here is a program bug: make it loud */
        fill_nan(out, (size_t)T * (size_t)N);
        return;
    }
    mm_job j;
    memset(&j, 0, sizeof j);
    j.c = c;
    j.k = &c->mm[wt][qact];
    j.out = out;
    j.x = x;
    j.rows = mm_source(j.k, w, &j.w);
    j.w_stride = dtype_row_bytes(wt, (size_t)K);
    j.T = T;
    j.N = N;
    j.K = K;
    if (ensure_scratch(c, j.k->scratch_per_k * (size_t)K + 16384) != 0) {
        fill_nan(out, (size_t)T * (size_t)N);
        return;
    }
    if (j.k->quantized_act) {
        j.act_stride = j.k->prep_stride(K);
        if (ensure_buf(&c->act, &c->act_cap, j.act_stride * (size_t)T) != 0) {
            fill_nan(out, (size_t)T * (size_t)N);
            return;
        }
        j.act = c->act;
        /* quantizing is O(T*K): split over rows only when there is enough of it */
        int per = (int)(16384 / K) + 1;
        j.t_per_task = per;
        kcpu_pool_run(c->pool, mm_prep_task, &j, (T + per - 1) / per);
    } else {
        j.act = (const uint8_t *)x;
        j.act_stride = (size_t)K * 4;
    }
    j.chunk = mm_chunk(c, N, j.k->row_tile, T, K);
    kcpu_pool_run(c->pool, mm_rows_task, &j, (N + j.chunk - 1) / j.chunk);
}

/* ---- fused matmuls sharing one input ----
 *
 * n matrices over the same x: each distinct activation prep runs once, then the rows of all
 * matrices, concatenated into one index space, are split over the pool in a single dispatch.
 * Each (matrix, row range) goes to the same rows() kernel with the same activation record as a
 * lone cpu_matmul would use, so every output element is bitwise the separate call's. */

enum { MM_MULTI_MAX = 8 };

typedef struct {
    cpu_ctx *c;
    int n, T, K, R, chunk, t_per_task, n_prep;
    const float *x;
    float *const *outs;
    const kcpu_mm_kernel *k[MM_MULTI_MAX];
    kcpu_rows_fn rows[MM_MULTI_MAX];
    const uint8_t *w[MM_MULTI_MAX];
    size_t w_stride[MM_MULTI_MAX];
    const uint8_t *act[MM_MULTI_MAX]; /* per matrix: its prepared activations */
    size_t act_stride[MM_MULTI_MAX];
    int N[MM_MULTI_MAX], off[MM_MULTI_MAX + 1]; /* off: first global row of each matrix */
    int prep_of[MM_MULTI_MAX];                  /* per prep group: its first matrix */
} mm_multi_job;

static void mm_multi_prep_task(void *arg, int task, int tid)
{
    (void)tid;
    mm_multi_job *j = arg;
    int n_tc = (j->T + j->t_per_task - 1) / j->t_per_task;
    int g = task / n_tc, tc = task % n_tc, i = j->prep_of[g];
    int t0 = tc * j->t_per_task, t1 = t0 + j->t_per_task;
    if (t1 > j->T)
        t1 = j->T;
    for (int t = t0; t < t1; t++)
        j->k[i]->prep((uint8_t *)j->act[i] + (size_t)t * j->act_stride[i], j->x + (size_t)t * j->K,
                      j->K);
}

static void mm_multi_rows_task(void *arg, int task, int tid)
{
    mm_multi_job *j = arg;
    int g0 = task * j->chunk, g1 = g0 + j->chunk;
    if (g1 > j->R)
        g1 = j->R;
    for (int i = 0; i < j->n; i++) {
        int a = g0 > j->off[i] ? g0 : j->off[i], b = g1 < j->off[i + 1] ? g1 : j->off[i + 1];
        if (a < b)
            j->rows[i](j->outs[i], j->N[i], j->act[i], j->act_stride[i], j->T, j->w[i],
                       j->w_stride[i], a - j->off[i], b - j->off[i], j->K, j->c->scr[tid]);
    }
}

static void cpu_matmul_multi(void *vctx, int n, float *const *outs, const float *x,
                             const kern_mat *const *ws, const int *Ns, int T, int K)
{
    cpu_ctx *c = vctx;
    int qact = !(c->flags & KERN_CPU_F32_ACT);
    int ok = n >= 1 && n <= MM_MULTI_MAX && T > 0 && K > 0 && K % 32 == 0;
    for (int i = 0; ok && i < n; i++) {
        sd_dtype wt = ws[i]->type;
        size_t be = dtype_block_elems(wt);
        ok = (unsigned)wt < KCPU_DTYPE_SLOTS && be && K % (int)be == 0 && Ns[i] > 0 &&
             c->mm[wt][qact].rows;
    }
    if (!ok) { /* the lone path handles (and flags) anything unusual */
        for (int i = 0; i < n; i++)
            cpu_matmul(vctx, outs[i], x, ws[i], T, Ns[i], K);
        return;
    }
    mm_multi_job j;
    memset(&j, 0, sizeof j);
    j.c = c;
    j.n = n;
    j.T = T;
    j.K = K;
    j.x = x;
    j.outs = outs;
    size_t scr = 0, act_bytes = 0;
    size_t act_off[MM_MULTI_MAX];
    int tile = 1;
    for (int i = 0; i < n; i++) {
        const kcpu_mm_kernel *k = &c->mm[ws[i]->type][qact];
        j.k[i] = k;
        j.rows[i] = mm_source(k, ws[i], &j.w[i]);
        j.w_stride[i] = dtype_row_bytes(ws[i]->type, (size_t)K);
        j.N[i] = Ns[i];
        j.off[i + 1] = j.off[i] + Ns[i];
        if (k->scratch_per_k * (size_t)K > scr)
            scr = k->scratch_per_k * (size_t)K;
        if (k->row_tile > tile)
            tile = k->row_tile;
        act_off[i] = SIZE_MAX;
        if (!k->quantized_act) {
            j.act[i] = (const uint8_t *)x;
            j.act_stride[i] = (size_t)K * 4;
            continue;
        }
        for (int p = 0; p < i; p++) /* same prep as an earlier matrix: share its records */
            if (j.k[p]->quantized_act && j.k[p]->prep == k->prep &&
                j.k[p]->prep_stride == k->prep_stride) {
                act_off[i] = act_off[p];
                j.act_stride[i] = j.act_stride[p];
                break;
            }
        if (act_off[i] == SIZE_MAX) {
            j.act_stride[i] = k->prep_stride(K);
            act_off[i] = act_bytes;
            act_bytes += j.act_stride[i] * (size_t)T;
            j.prep_of[j.n_prep++] = i;
        }
    }
    j.R = j.off[n];
    if (ensure_scratch(c, scr + 16384) != 0 ||
        (act_bytes && ensure_buf(&c->act, &c->act_cap, act_bytes) != 0)) {
        for (int i = 0; i < n; i++)
            fill_nan(outs[i], (size_t)T * (size_t)Ns[i]);
        return;
    }
    for (int i = 0; i < n; i++)
        if (j.k[i]->quantized_act)
            j.act[i] = c->act + act_off[i];
    if (j.n_prep) {
        int per = (int)(16384 / K) + 1;
        j.t_per_task = per;
        kcpu_pool_run(c->pool, mm_multi_prep_task, &j, j.n_prep * ((T + per - 1) / per));
    }
    j.chunk = mm_chunk(c, j.R, tile, T, K);
    kcpu_pool_run(c->pool, mm_multi_rows_task, &j, (j.R + j.chunk - 1) / j.chunk);
}

/* ---- weight packing ---- */

static const kcpu_mm_kernel *pack_kernel(const cpu_ctx *c, sd_dtype wt, int N, int K)
{
    size_t be = dtype_block_elems(wt);
    if ((unsigned)wt >= KCPU_DTYPE_SLOTS || !be || N <= 0 || K <= 0 || K % (int)be || K % 32)
        return NULL;
    const kcpu_mm_kernel *k = &c->mm[wt][!(c->flags & KERN_CPU_F32_ACT)];
    return k->pack && k->rows_packed && k->packed_bytes ? k : NULL;
}

static size_t cpu_pack_bytes(void *vctx, sd_dtype wt, int N, int K)
{
    const kcpu_mm_kernel *k = pack_kernel(vctx, wt, N, K);
    return k ? k->packed_bytes(wt, N, K) : 0;
}

typedef struct {
    const kcpu_mm_kernel *k;
    uint8_t *dst;
    const uint8_t *src;
    size_t rb;
    int N, K, per;
} pack_job;

static void pack_task(void *arg, int task, int tid)
{
    (void)tid;
    pack_job *j = arg;
    int n0 = task * j->per, n = j->N - n0 < j->per ? j->N - n0 : j->per;
    j->k->pack(j->dst + (size_t)n0 * j->rb, j->src + (size_t)n0 * j->rb, n, j->K);
}

static void cpu_pack(void *vctx, void *dst, const void *w, sd_dtype wt, int N, int K)
{
    cpu_ctx *c = vctx;
    pack_job j = {pack_kernel(c, wt, N, K), dst, w, dtype_row_bytes(wt, (size_t)K), N, K, 256};
    if (j.k)
        kcpu_pool_run(c->pool, pack_task, &j, (N + j.per - 1) / j.per);
}

/* ---- rmsnorm ---- */

/* The canonical row (docs/numerics.md): LANE16 sum of squares by fma (zero-padded), the R16
 * tree, then (x*r)*w. */
KCPU_FMA_CLONES static void rmsnorm_row(float *o, const float *x, const float *w, int D, float eps)
{
    float a[16] = {0};
    for (int i = 0; i < (D + 15) / 16 * 16; i++) {
        float v = i < D ? x[i] : 0.0f;
        a[i & 15] = fmaf(v, v, a[i & 15]);
    }
    float ss = kcpu_r16(a);
    float r = 1.0f / sqrtf(ss / (float)D + eps);
    for (int i = 0; i < D; i++)
        o[i] = (x[i] * r) * w[i];
}

typedef struct {
    cpu_ctx *c;
    float *out;
    const float *x, *w;
    int D, per, T;
    float eps;
} rms_job;

static void rms_task(void *arg, int task, int tid)
{
    rms_job *j = arg;
    for (int t = task * j->per; t < j->T && t < (task + 1) * j->per; t++)
        j->c->ew.rms_row(j->out + (size_t)t * j->D, j->x + (size_t)t * j->D, j->w, j->D, j->eps);
}

static void cpu_rmsnorm(void *vctx, float *out, const float *x, const float *w, int T, int D,
                        float eps)
{
    cpu_ctx *c = vctx;
    rms_job j = {c, out, x, w, D, 8, T, eps};
    kcpu_pool_run(c->pool, rms_task, &j, (T + 7) / 8);
}

/* ---- rope ---- */

/* The angle pos * base^(-2i/n_rot) and its cos/sin are computed in double and rounded once,
 * so they depend on (pos, i) alone; the rotation itself is two float products and a sum,
 * each rounded (no FMA). */

typedef struct {
    cpu_ctx *c;
    float *x;
    const int *pos;
    int T, H, Dh, n_rot, neox;
    float base;
    float *tab; /* T rows of cos[half], sin[half]; NULL: compute per call */
} rope_job;

static void rope_angles(float *cs, float *sn, int pos, int i0, int n, int n_rot, float base)
{
    for (int i = 0; i < n; i++) {
        double theta = (double)pos * pow((double)base, -2.0 * (i0 + i) / (double)n_rot);
        cs[i] = (float)cos(theta);
        sn[i] = (float)sin(theta);
    }
}

static void rope_ref(float *xh, const float *cs, const float *sn, int k0, int n, int half, int neox)
{
    for (int i = 0; i < n; i++) {
        int k = k0 + i;
        int a = neox ? k : 2 * k, b = neox ? k + half : 2 * k + 1;
        float x0 = xh[a], x1 = xh[b];
        xh[a] = x0 * cs[i] - x1 * sn[i];
        xh[b] = x0 * sn[i] + x1 * cs[i];
    }
}

static void rope_rotate(const rope_job *j, int t, int i0, int n, const float *cs, const float *sn)
{
    for (int h = 0; h < j->H; h++)
        j->c->ew.rope(j->x + ((size_t)t * j->H + h) * j->Dh, cs, sn, i0, n, j->n_rot / 2, j->neox);
}

static void rope_tab_task(void *arg, int task, int tid)
{
    rope_job *j = arg;
    int half = j->n_rot / 2;
    float *row = j->tab + (size_t)task * 2 * half;
    rope_angles(row, row + half, j->pos[task], 0, half, j->n_rot, j->base);
}

/* cos/sin depend on (pos, i) only: from the table, or computed once per position for all
 * heads. */
static void rope_task(void *arg, int task, int tid)
{
    rope_job *j = arg;
    int t = task, half = j->n_rot / 2;
    if (j->tab) {
        const float *row = j->tab + (size_t)t * 2 * half;
        rope_rotate(j, t, 0, half, row, row + half);
        return;
    }
    float cs[512], sn[512];
    for (int i0 = 0; i0 < half; i0 += 512) {
        int n = half - i0 < 512 ? half - i0 : 512;
        rope_angles(cs, sn, j->pos[t], i0, n, j->n_rot, j->base);
        rope_rotate(j, t, i0, n, cs, sn);
    }
}

static void rope_for(cpu_ctx *c, kcpu_task_fn fn, rope_job *j)
{
    if (j->T < 4 || c->nt == 1) {
        for (int t = 0; t < j->T; t++)
            fn(j, t, 0);
        return;
    }
    kcpu_pool_run(c->pool, fn, j, j->T);
}

static void cpu_rope(void *vctx, float *x, const int *pos, int T, int H, int Dh, int n_rot,
                     float freq_base, int neox)
{
    cpu_ctx *c = vctx;
    if (T <= 0)
        return;
    if (n_rot > Dh)
        n_rot = Dh;
    rope_job j = {c, x, pos, T, H, Dh, n_rot & ~1, neox, freq_base, NULL};
    int half = j.n_rot / 2;
    size_t need = (size_t)T * 2 * (size_t)(half > 0 ? half : 1);
    if (c->rope_T == T && c->rope_half == half && c->rope_base == freq_base &&
        memcmp(c->rope_pos, pos, sizeof(int) * (size_t)T) == 0) {
        j.tab = c->rope_tab;
    } else if (need <= c->rope_cap || ensure_rope(c, need) == 0) {
        c->rope_T = 0; /* invalid while it is rewritten */
        j.tab = c->rope_tab;
        rope_for(c, rope_tab_task, &j);
        memcpy(c->rope_pos, pos, sizeof(int) * (size_t)T);
        c->rope_T = T;
        c->rope_half = half;
        c->rope_base = freq_base;
    }
    rope_for(c, rope_task, &j);
}

/* ---- attention ---- */

typedef struct {
    cpu_ctx *c;
    float *out;
    const float *q, *kc, *vc;
    size_t ld_slot, ld_head;
    const int *anc, *anc_off;
    int n_prefix, T, H, Hkv, Dh, group, nb, hb; /* per task: nb nodes x hb query heads */
    float scale;
} attn_job;

/* LANE16 fma over the zero-padded vectors, R16 tree (docs/numerics.md) */
KCPU_FMA_CLONES static float dot_dh(const float *a, const float *b, int n)
{
    float s[16] = {0};
    for (int i = 0; i < (n + 15) / 16 * 16; i++)
        s[i & 15] = i < n ? fmaf(a[i], b[i], s[i & 15]) : fmaf(0.0f, 0.0f, s[i & 15]);
    return kcpu_r16(s);
}

static void dot4_dh(float *s, const float *q, const float *k0, const float *k1, const float *k2,
                    const float *k3, int n)
{
    s[0] = dot_dh(q, k0, n);
    s[1] = dot_dh(q, k1, n);
    s[2] = dot_dh(q, k2, n);
    s[3] = dot_dh(q, k3, n);
}

/* scale, max, EXP, then the LANE16 sum in key order and the R16 tree */
KCPU_FMA_CLONES static float softmax_ref(float *s, int n, float scale)
{
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        float v = s[i] * scale;
        s[i] = v;
        mx = v > mx ? v : mx;
    }
    float a[16] = {0};
    for (int i = 0; i < n; i++) {
        float e = kcpu_exp1(s[i] - mx);
        s[i] = e;
        a[i & 15] = a[i & 15] + e;
    }
    return kcpu_r16(a);
}

static void wsum_ref(float *o, const float *p, const float *v, size_t row, int np, const int *anc,
                     int n, int Dh, float inv)
{
    for (int d = 0; d < Dh; d++)
        o[d] = 0.0f;
    for (int i = 0; i < n; i++) {
        const float *vi = v + (size_t)(i < np ? i : anc[i - np]) * row;
        for (int d = 0; d < Dh; d++)
            o[d] = o[d] + p[i] * vi[d];
    }
    for (int d = 0; d < Dh; d++)
        o[d] *= inv;
}

/* Up to 4 query heads h0 .. h0+m-1 of node t, all reading KV head kvh: scores in key order,
 * scaled, max subtracted, exp, summed (softmax); out is the p-weighted sum of the values in key
 * order, divided by the sum at the end (wsum). Each score and output is bitwise what the
 * level's dot / wsum give for the query alone (dot16 and wsum_m only share work between keys
 * and queries). sc: m x nk floats. */
static void attn_queries(const attn_job *j, int t, int h0, int m, float *sc)
{
    int kvh = h0 / j->group, Dh = j->Dh;
    size_t row = j->ld_slot;
    int a0 = j->anc_off[t], a1 = j->anc_off[t + 1];
    int np = j->n_prefix, nk = np + (a1 - a0);
    const int *anc = j->anc + a0;
    const kcpu_attn_ops *ops = &j->c->attn;
    const float *kb = j->kc + (size_t)kvh * j->ld_head, *vb = j->vc + (size_t)kvh * j->ld_head;
    const float *q[4];
    float *o[4], inv[4];
    for (int u = 0; u < m; u++) {
        q[u] = j->q + ((size_t)t * j->H + h0 + u) * Dh;
        o[u] = j->out + ((size_t)t * j->H + h0 + u) * Dh;
    }
    int i = 0;
    if (ops->dot16) /* 16 keys per call, prefix slots and ancestors alike */
        for (; i < nk; i += 16) {
            const float *k16[16];
            int n16 = nk - i < 16 ? nk - i : 16;
            for (int u = 0; u < n16; u++)
                k16[u] = kb + (size_t)(i + u < np ? i + u : anc[i + u - np]) * row;
            for (int u = 0; u < m; u++)
                ops->dot16(sc + (size_t)u * nk + i, q[u], k16, n16, Dh);
        }
    /* four keys per call (each dot as if alone) */
    for (; i + 4 <= nk; i += 4) {
        const float *k4[4];
        for (int u = 0; u < 4; u++)
            k4[u] = kb + (size_t)(i + u < np ? i + u : anc[i + u - np]) * row;
        for (int u = 0; u < m; u++)
            ops->dot4(sc + (size_t)u * nk + i, q[u], k4[0], k4[1], k4[2], k4[3], Dh);
    }
    for (; i < nk; i++)
        for (int u = 0; u < m; u++)
            sc[(size_t)u * nk + i] =
                ops->dot(q[u], kb + (size_t)(i < np ? i : anc[i - np]) * row, Dh);
    for (int u = 0; u < m; u++) {
        float sum = ops->softmax(sc + (size_t)u * nk, nk, j->scale);
        inv[u] = nk > 0 ? 1.0f / sum : 0.0f;
    }
    if (ops->wsum_m)
        ops->wsum_m(o, sc, (size_t)nk, m, vb, row, np, anc, nk, Dh, inv);
    else
        for (int u = 0; u < m; u++)
            ops->wsum(o[u], sc + (size_t)u * nk, vb, row, np, anc, nk, Dh, inv[u]);
}

/* A task is one KV head, a block of nodes and a block of the query heads that read that KV
 * head (all of them unless that leaves too few tasks), up to 4 queries at a time: the keys and
 * values are read from memory once per task and then from this core's cache. */
static void attn_task(void *arg, int task, int tid)
{
    attn_job *j = arg;
    int nblk = (j->T + j->nb - 1) / j->nb, nhb = (j->group + j->hb - 1) / j->hb;
    int hbi = task % nhb, blk = task / nhb % nblk, g = task / nhb / nblk;
    int t0 = blk * j->nb, t1 = t0 + j->nb < j->T ? t0 + j->nb : j->T;
    int h0 = g * j->group + hbi * j->hb, h1 = h0 + j->hb;
    if (h1 > (g + 1) * j->group)
        h1 = (g + 1) * j->group;
    for (int t = t0; t < t1; t++)
        for (int h = h0; h < h1; h += 4)
            attn_queries(j, t, h, h1 - h < 4 ? h1 - h : 4, (float *)j->c->scr[tid]);
}

static void cpu_attention(void *vctx, float *out, const float *q, const float *kc, const float *vc,
                          size_t ld_slot, size_t ld_head, int n_prefix, const int *anc,
                          const int *anc_off, int T, int H, int Hkv, int Dh, float scale)
{
    cpu_ctx *c = vctx;
    if (T <= 0)
        return;
    int maxk = 0;
    for (int t = 0; t < T; t++) {
        int n = n_prefix + anc_off[t + 1] - anc_off[t];
        maxk = n > maxk ? n : maxk;
    }
    if (Hkv <= 0 || H % Hkv || ensure_scratch(c, (size_t)maxk * 16 + 64) != 0) {
        fill_nan(out, (size_t)T * (size_t)H * (size_t)Dh);
        return;
    }
    /* about 4 tasks per thread: blocks of nodes per KV head, or, when there are too few nodes
     * for that, blocks of the KV head's query heads */
    int want = 4 * c->nt, group = H / Hkv;
    int nb = (T * Hkv + want - 1) / want, hb = group;
    if (T * Hkv < want) {
        nb = 1;
        hb = (T * H + want - 1) / want;
        hb = hb < group ? hb : group;
    }
    attn_job j = {c,        out, q, kc,  vc, ld_slot, ld_head, anc, anc_off,
                  n_prefix, T,   H, Hkv, Dh, group,   nb,      hb,  scale};
    int n_tasks = Hkv * ((T + nb - 1) / nb) * ((group + hb - 1) / hb);
    kcpu_pool_run(c->pool, attn_task, &j, n_tasks);
}

/* ---- elementwise ---- */

KCPU_FMA_CLONES static void silu_mul_ref(float *g, const float *u, int n)
{
    for (int i = 0; i < n; i++)
        g[i] = (g[i] / (1.0f + kcpu_exp1(0.0f - g[i]))) * u[i];
}

static void add_ref(float *x, const float *y, int n)
{
    for (int i = 0; i < n; i++)
        x[i] += y[i];
}

KCPU_FMA_CLONES static void exp_ref(float *y, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = kcpu_exp1(x[i]);
}

typedef struct {
    cpu_ctx *c;
    float *a;
    const float *b;
    int n, per, op;
} ew_job;

static void ew_task(void *arg, int task, int tid)
{
    ew_job *j = arg;
    int i0 = task * j->per, i1 = i0 + j->per;
    if (i1 > j->n)
        i1 = j->n;
    if (j->op == 0)
        j->c->ew.silu_mul(j->a + i0, j->b + i0, i1 - i0);
    else
        j->c->ew.add(j->a + i0, j->b + i0, i1 - i0);
}

/* silu_mul: one chunk per thread (a multiple of 16 elements) once there are 4096 elements or
 * more (T*F = 16*1536 as 2 halves rather than 3 chunks on 2 threads); add is too cheap to be
 * worth a dispatch below 32768. Results do not depend on the split (kcpu_ew_ops). */
static void ew_run(cpu_ctx *c, float *a, const float *b, int n, int op)
{
    int per = 32768;
    if (op == 0)
        per = n < 4096 ? 4096 : ((n + c->nt - 1) / c->nt + 15) & ~15;
    ew_job j = {c, a, b, n, per, op};
    kcpu_pool_run(c->pool, ew_task, &j, (n + per - 1) / per);
}

static void cpu_silu_mul(void *vctx, float *gate, const float *up, int n)
{
    ew_run(vctx, gate, up, n, 0);
}

static void cpu_add(void *vctx, float *x, const float *y, int n)
{
    ew_run(vctx, x, y, n, 1);
}

static void cpu_add_bias(void *vctx, float *out, const float *bias, int T, int N)
{
    cpu_ctx *c = vctx;
    for (int t = 0; t < T; t++)
        c->ew.add(out + (size_t)t * N, bias, N);
}

int kcpu_ops_for_level(int level, kcpu_attn_ops *a, kcpu_ew_ops *e)
{
    if (level < KCPU_LEVEL_PORTABLE || level >= KCPU_LEVEL_N || level > cpu_best_level())
        return -1;
    *a = (kcpu_attn_ops){.dot = dot_dh, .dot4 = dot4_dh, .softmax = softmax_ref, .wsum = wsum_ref};
    *e = (kcpu_ew_ops){silu_mul_ref, add_ref, rmsnorm_row, exp_ref, rope_ref};
    if (level >= KCPU_LEVEL_AVX2) {
        kcpu_attn_avx2(a);
        kcpu_ops_avx2(a, e);
    }
    if (level >= KCPU_LEVEL_AVX512) {
        kcpu_attn_avx512(a);
        kcpu_ops_avx512(a, e);
    }
    return 0;
}

/* ---- backend memory: host memory, nothing to queue ---- */

static void *cpu_buf_alloc(void *vctx, size_t bytes)
{
    (void)vctx;
    return aligned_alloc(256, (bytes + 255) & ~(size_t)255);
}

static void cpu_buf_free(void *vctx, void *p)
{
    (void)vctx;
    free(p);
}

static void cpu_upload(void *vctx, void *dst, const void *src, size_t bytes)
{
    (void)vctx;
    if (bytes)
        memmove(dst, src, bytes);
}

static sd_err cpu_download(void *vctx, void *dst, const void *src, size_t bytes)
{
    cpu_upload(vctx, dst, src, bytes);
    return SD_OK;
}

static void cpu_copy2d(void *vctx, void *dst, size_t dpitch, const void *src, size_t spitch,
                       size_t width, size_t rows)
{
    (void)vctx;
    for (size_t r = 0; r < rows; r++)
        memcpy((uint8_t *)dst + r * dpitch, (const uint8_t *)src + r * spitch, width);
}

static sd_err cpu_sync(void *vctx)
{
    (void)vctx;
    return SD_OK;
}

/* sample_argmax's rule (engine/sample.c), repeated here: the kernels do not link the engine */
static sd_err cpu_argmax(void *vctx, int *idx, const float *logits, int rows, int V, size_t ld)
{
    (void)vctx;
    for (int r = 0; r < rows; r++) {
        const float *l = logits + (size_t)r * ld;
        int best = 0;
        for (int i = 1; i < V; i++)
            if (l[i] > l[best] || (l[best] != l[best] && l[i] == l[i]))
                best = i;
        idx[r] = best;
    }
    return SD_OK;
}

/* ---- create / free ---- */

static void cpu_free(kern_backend *b)
{
    if (!b)
        return;
    cpu_ctx *c = b->ctx;
    if (c) {
        kcpu_pool_free(c->pool);
        if (c->scr)
            for (int i = 0; i < c->nt; i++)
                free(c->scr[i]);
        free(c->scr);
        free(c->act);
        free(c->rope_tab);
        free(c->rope_pos);
        free(c);
    }
    free(b);
}

sd_err kern_cpu_create(kern_backend **out, int n_threads, unsigned flags)
{
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 1024)
        return sd_fail(SD_EINVAL, "kern_cpu_create: n_threads %d out of range", n_threads);
    unsigned cap = (flags >> 8) & 0xfu;
    if (cap > KERN_CPU_LEVEL_AVX512)
        return sd_fail(SD_EINVAL, "kern_cpu_create: unknown CPU level %u", cap);
    int level = cpu_best_level();
    if (cap != KERN_CPU_LEVEL_BEST) {
        if (!kern_cpu_level_available((kern_cpu_level)cap))
            return sd_fail(SD_EUNSUPPORTED,
                           "kern_cpu_create: CPU level %s requested but this CPU lacks it "
                           "(features: %s)",
                           kern_cpu_level_name((kern_cpu_level)cap), kern_cpu_features());
        level = (int)cap - 1; /* KERN_CPU_LEVEL_x - 1 == KCPU_LEVEL_x */
    }
    kcpu_f16_init();
    kern_backend *b = calloc(1, sizeof *b);
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!b || !c) {
        free(b);
        free(c);
        return sd_fail(SD_ENOMEM, "kern_cpu_create: out of memory");
    }
    b->ctx = c;
    b->free = cpu_free;
    c->nt = n_threads;
    c->flags = flags;
    c->scr = calloc((size_t)n_threads, sizeof *c->scr);
    if (!c->scr || kcpu_pool_create(&c->pool, n_threads) != 0) {
        cpu_free(b);
        return sd_fail(SD_ENOMEM, "kern_cpu_create: cannot start %d threads", n_threads);
    }
    c->level = level;
    kcpu_mm_portable(c->mm);
    kcpu_ops_for_level(level, &c->attn, &c->ew);
    if (level >= KCPU_LEVEL_AVX2)
        kcpu_mm_avx2(c->mm);
    if (level >= KCPU_LEVEL_AVX512) {
        kcpu_mm_avx512(c->mm);
        kcpu_mm_avx512_r16(c->mm);
    }
    static const char *names[KCPU_LEVEL_N] = {"cpu-portable", "cpu-avx2", "cpu-avx512vnni"};
    b->name = names[level];
    /* the levels agree bit for bit (docs/numerics.md): the fingerprint names no level */
    b->numerics = (flags & KERN_CPU_F32_ACT) ? "cpu-canon1-f32" : "cpu-canon1-act8";
    b->matmul = cpu_matmul;
    b->matmul_multi = cpu_matmul_multi;
    b->pack_bytes = cpu_pack_bytes;
    b->pack = cpu_pack;
    b->rmsnorm = cpu_rmsnorm;
    b->rope = cpu_rope;
    b->attention = cpu_attention;
    b->silu_mul = cpu_silu_mul;
    b->add = cpu_add;
    b->add_bias = cpu_add_bias;
    b->buf_alloc = cpu_buf_alloc;
    b->buf_free = cpu_buf_free;
    b->upload = cpu_upload;
    b->download = cpu_download;
    b->copy = cpu_upload;
    b->copy2d = cpu_copy2d;
    b->sync = cpu_sync;
    b->argmax = cpu_argmax;
    *out = b;
    return SD_OK;
}
