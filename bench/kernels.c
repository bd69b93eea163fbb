/* bench_kernels: CPU matmul microbenchmark on the default model's shapes.
 *
 *   bench_kernels [--threads N] [--reps R] [--cpu-level portable|avx2|avx512] [--f32-act]
 *                 [--no-pack] [--csv FILE]
 *
 * Prints, for T = 1, 2, 4, ..., 64:
 *   - per weight shape (hot in cache, same matrix repeated): time and the ratio to T=1;
 *   - a whole decode sweep (30 layers x 7 Q4_1 matrices + the Q8_0 49152x576 head, each matrix
 *     its own memory, ~96 MB, so the weights stream from L3/DRAM as in a real forward pass):
 *     time per sweep, the ratio to T=1, and for T=1 the weight bytes per second;
 *   - the read bandwidth of the same threads streaming a buffer of the sweep's size, measured
 *     between the T=1 sweeps, so the sweep can be put against the memory-bandwidth bound.
 * Every time is the minimum over --reps runs (the machine is shared). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "kernels/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static uint64_t rs = 88172645463325252ull;
static uint64_t rnd(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}

static void *rand_matrix(sd_dtype t, int N, int K)
{
    size_t rb = dtype_row_bytes(t, (size_t)K), n = rb * (size_t)N;
    uint8_t *w = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (!w)
        return NULL;
    for (size_t i = 0; i < n; i++)
        w[i] = (uint8_t)rnd();
    size_t bb = dtype_block_bytes(t);
    uint16_t h = dtype_f32_to_f16(0.01f), m = dtype_f32_to_f16(-0.05f);
    for (size_t o = 0; o + bb <= n; o += bb) {
        if (t == SD_DTYPE_Q6_K) {
            memcpy(w + o + 208, &h, 2);
        } else {
            memcpy(w + o, &h, 2);
            if (t == SD_DTYPE_Q4_1 || t == SD_DTYPE_Q4_K)
                memcpy(w + o + 2, &m, 2);
        }
    }
    return w;
}

/* A random matrix as the engine hands it to the backend: with the backend's packed copy when
 * it has a layout of its own (unless packing is off). */
static kern_mat mat_new(kern_backend *b, sd_dtype t, int N, int K, int pack)
{
    kern_mat m = {rand_matrix(t, N, K), t, NULL};
    size_t n = pack && m.data && b->pack_bytes ? b->pack_bytes(b->ctx, t, N, K) : 0;
    void *p = n ? aligned_alloc(64, (n + 63) & ~(size_t)63) : NULL;
    if (p) {
        b->pack(b->ctx, p, m.data, t, N, K);
        m.packed = p;
    }
    return m;
}

static void mat_free(kern_mat *m)
{
    free((void *)m->data);
    free((void *)m->packed);
}

/* ---- bandwidth probe ---- */

typedef struct {
    const uint8_t *p;
    size_t n;
    uint64_t sink;
} bw_arg;

#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t read_avx2(const uint8_t *p, size_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    return (uint64_t)_mm256_extract_epi64(a0, 0) ^ (uint64_t)_mm256_extract_epi64(a0, 3);
}
#endif

static void *bw_thread(void *v)
{
    bw_arg *a = v;
    uint64_t s = 0;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        a->sink = read_avx2(a->p, a->n);
        return NULL;
    }
#endif
    const uint64_t *q = (const uint64_t *)a->p;
    for (size_t i = 0; i < a->n / 8; i++)
        s ^= q[i];
    a->sink = s;
    return NULL;
}

static double bandwidth(const uint8_t *buf, size_t n, int nt, int reps)
{
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        pthread_t th[64];
        bw_arg a[64];
        size_t per = (n / (size_t)nt) & ~(size_t)127;
        double t0 = clock_now_s();
        for (int i = 0; i < nt; i++) {
            a[i] = (bw_arg){buf + per * i, per, 0};
            pthread_create(&th[i], NULL, bw_thread, &a[i]);
        }
        for (int i = 0; i < nt; i++)
            pthread_join(th[i], NULL);
        double dt = clock_now_s() - t0;
        best = dt < best ? dt : best;
    }
    return (double)n / best;
}

/* ---- matmul timing ---- */

typedef struct {
    const char *name;
    sd_dtype t;
    int N, K;
} shape;

static const shape shapes[] = {
    {"attn_q/o 576x576", SD_DTYPE_Q4_1, 576, 576},
    {"attn_k/v 192x576", SD_DTYPE_Q4_1, 192, 576},
    {"ffn_gate/up 1536x576", SD_DTYPE_Q4_1, 1536, 576},
    {"ffn_down 576x1536", SD_DTYPE_Q4_1, 576, 1536},
    {"output 49152x576", SD_DTYPE_Q8_0, 49152, 576},
    {"q4_0 1536x576", SD_DTYPE_Q4_0, 1536, 576},
    {"q4_k 1536x768", SD_DTYPE_Q4_K, 1536, 768},
    {"q6_k 1536x768", SD_DTYPE_Q6_K, 1536, 768},
    {"f16 576x576", SD_DTYPE_F16, 576, 576},
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])
static const int Ts[] = {1, 2, 4, 8, 16, 32, 64};
#define N_TS (sizeof Ts / sizeof Ts[0])

int main(int argc, char **argv)
{
    int nt = 2, reps = 7, pack = 1;
    unsigned flags = 0;
    const char *csv = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            nt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--csv") && i + 1 < argc)
            csv = argv[++i];
        else if (!strcmp(argv[i], "--no-pack"))
            pack = 0;
        else if (!strcmp(argv[i], "--f32-act"))
            flags |= KERN_CPU_F32_ACT;
        else if (!strcmp(argv[i], "--cpu-level") && i + 1 < argc) {
            kern_cpu_level l;
            if (kern_cpu_level_parse(argv[++i], &l) != SD_OK) {
                fprintf(stderr, "%s: --cpu-level: %s\n", argv[0], sd_errmsg());
                return 2;
            }
            flags |= KERN_CPU_LEVEL(l);
        } else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--reps R] [--cpu-level portable|avx2|avx512] "
                    "[--f32-act] [--no-pack] [--csv FILE]\n",
                    argv[0]);
            return 2;
        }
    }
    if (reps < 1)
        reps = 1;
    kern_backend *b = NULL;
    if (kern_cpu_create(&b, nt, flags) != SD_OK) {
        fprintf(stderr, "kern_cpu_create: %s\n", sd_errmsg());
        return 1;
    }
    FILE *cf = csv ? fopen(csv, "w") : NULL;
    if (cf)
        fprintf(cf, "what,dtype,N,K,T,seconds,ratio_to_T1,weight_GBps\n");
    printf("backend %s, %d threads, features: %s, weights %s\n", b->name, nt, kern_cpu_features(),
           pack ? "packed where the backend has a layout" : "as stored");

    float *x = aligned_alloc(64, sizeof(float) * 64 * 1536);
    float *out = aligned_alloc(64, sizeof(float) * 64 * 49152);
    for (int i = 0; i < 64 * 1536; i++)
        x[i] = (float)((int)(rnd() % 2001) - 1000) / 500.0f;

    /* per shape, hot */
    printf("\n%-22s %6s", "shape (hot)", "dtype");
    for (size_t k = 0; k < N_TS; k++)
        printf("  T=%-2d us (xT1)  ", Ts[k]);
    printf("\n");
    for (size_t s = 0; s < N_SHAPES; s++) {
        const shape *sh = &shapes[s];
        kern_mat w = mat_new(b, sh->t, sh->N, sh->K, pack);
        if (!w.data)
            return 1;
        double t1 = 0;
        printf("%-22s %6s", sh->name, dtype_name(sh->t));
        for (size_t k = 0; k < N_TS; k++) {
            int T = Ts[k];
            int inner = sh->N > 10000 ? 2 : 20;
            double best = 1e30;
            b->matmul(b->ctx, out, x, &w, T, sh->N, sh->K);
            for (int r = 0; r < reps; r++) {
                double t0 = clock_now_s();
                for (int i = 0; i < inner; i++)
                    b->matmul(b->ctx, out, x, &w, T, sh->N, sh->K);
                double dt = (clock_now_s() - t0) / inner;
                best = dt < best ? dt : best;
            }
            if (T == 1)
                t1 = best;
            printf("  %8.1f (%4.2f)", best * 1e6, best / t1);
            fflush(stdout);
            if (cf)
                fprintf(cf, "hot,%s,%d,%d,%d,%.9f,%.4f,%.3f\n", dtype_name(sh->t), sh->N, sh->K, T,
                        best, best / t1,
                        (double)dtype_row_bytes(sh->t, sh->K) * sh->N / best / 1e9);
        }
        printf("\n");
        mat_free(&w);
    }

    /* whole decode sweep, weights streamed */
    enum { L = 30 };
    static const struct {
        int N, K;
    } lay[7] = {{576, 576},  {192, 576},  {192, 576}, {576, 576},
                {1536, 576}, {1536, 576}, {576, 1536}};
    kern_mat lw[L][7];
    size_t bytes = 0;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < 7; i++) {
            lw[l][i] = mat_new(b, SD_DTYPE_Q4_1, lay[i].N, lay[i].K, pack);
            if (!lw[l][i].data)
                return 1;
            bytes += dtype_row_bytes(SD_DTYPE_Q4_1, (size_t)lay[i].K) * (size_t)lay[i].N;
        }
    kern_mat head = mat_new(b, SD_DTYPE_Q8_0, 49152, 576, pack);
    if (!head.data)
        return 1;
    bytes += dtype_row_bytes(SD_DTYPE_Q8_0, 576) * 49152;
    printf("\ndecode sweep: %d layers x 7 Q4_1 + Q8_0 head = %.1f MB of weights per token\n", L,
           bytes / 1e6);
    /* The bandwidth probe runs between sweeps of the same reps, so both see the same
     * machine load; each keeps its minimum. */
    size_t bwn = bytes & ~(size_t)4095;
    uint8_t *buf = aligned_alloc(64, bwn);
    if (!buf)
        return 1;
    memset(buf, 1, bwn);
    double s1 = 0, bw96 = 0;
    for (size_t k = 0; k < N_TS; k++) {
        int T = Ts[k];
        double best = 1e30;
        for (int r = 0; r < reps; r++) {
            double t0 = clock_now_s();
            for (int l = 0; l < L; l++)
                for (int i = 0; i < 7; i++)
                    b->matmul(b->ctx, out, x, &lw[l][i], T, lay[i].N, lay[i].K);
            b->matmul(b->ctx, out, x, &head, T, 49152, 576);
            double dt = clock_now_s() - t0;
            best = dt < best ? dt : best;
            if (T == 1) {
                double bw = bandwidth(buf, bwn, nt, 1);
                bw96 = bw > bw96 ? bw : bw96;
            }
        }
        if (T == 1)
            s1 = best;
        printf("  T=%-2d  %8.3f ms/sweep  x%.2f of T=1  %6.2f GB/s weights  %8.3f ms/token\n", T,
               best * 1e3, best / s1, bytes / best / 1e9, best * 1e3 / T);
        if (cf)
            fprintf(cf, "sweep,mixed,0,0,%d,%.9f,%.4f,%.3f\n", T, best, best / s1,
                    bytes / best / 1e9);
    }
    printf("\nread bandwidth, %d threads, %.0f MB buffer (interleaved with the T=1 sweeps): "
           "%.2f GB/s\n",
           nt, bwn / 1e6, bw96 / 1e9);
    printf("T=1 sweep reaches %.0f%% of that bandwidth bound\n", 100.0 * (bytes / s1) / bw96);
    if (cf)
        fprintf(cf, "bandwidth,,0,0,0,0,0,%.3f\n", bw96 / 1e9);
    free(buf);
    for (int l = 0; l < L; l++)
        for (int i = 0; i < 7; i++)
            mat_free(&lw[l][i]);
    mat_free(&head);
    free(x);
    free(out);
    if (cf)
        fclose(cf);
    kern_free(b);
    return 0;
}
