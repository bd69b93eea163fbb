/* bench/engine: prefill and decode speed of the engine on a model, against the memory-bandwidth
 * bound measured in the same run, and the cost of one forward over T = 1..64 tree nodes relative
 * to T = 1 (what makes wide verification pay). Prints a table and writes CSV.
 *
 *   bench_engine --model PATH [--threads N] [--reps R] [--csv FILE] [--f32-act] [--portable]
 *   (bench_engine --help lists them) */
#include <immintrin.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/clock.h"
#include "../common/opt.h"
#include "../engine/model.h"
#include "../engine/sample.h"

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} bw_job;

/* Stream the buffer with the widest loads the CPU has, so the probe measures memory, not the
 * load pipeline (a scalar loop underestimates the bound and flatters the engine). */
__attribute__((target("avx2"))) static uint64_t read_avx2(const uint64_t *p, size_t n)
{
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i + 16 <= n; i += 16) {
        a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)(p + i)));
        b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        c = _mm256_add_epi64(c, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        d = _mm256_add_epi64(d, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, s);
    return out[0] + out[1] + out[2] + out[3];
}

static void *bw_read(void *arg)
{
    bw_job *j = arg;
    if (__builtin_cpu_supports("avx2")) {
        j->sum = read_avx2(j->p, j->n);
        return NULL;
    }
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= j->n; i += 4) {
        s0 += j->p[i];
        s1 += j->p[i + 1];
        s2 += j->p[i + 2];
        s3 += j->p[i + 3];
    }
    j->sum = s0 + s1 + s2 + s3;
    return NULL;
}

/* Read bandwidth (GB/s) of a 256 MiB buffer with n threads: best of several passes. */
static double measure_bandwidth(int nthr)
{
    size_t bytes = 256u << 20, n = bytes / 8;
    uint64_t *buf = malloc(bytes);
    if (!buf)
        return 0;
    for (size_t i = 0; i < n; i++)
        buf[i] = i * 2654435761u;
    double best = 0;
    pthread_t th[64];
    bw_job jobs[64];
    if (nthr > 64)
        nthr = 64;
    for (int rep = 0; rep < 8; rep++) {
        double t0 = clock_now_s();
        for (int t = 0; t < nthr; t++) {
            jobs[t] = (bw_job){buf + n / nthr * t, n / nthr, 0};
            pthread_create(&th[t], NULL, bw_read, &jobs[t]);
        }
        uint64_t s = 0;
        for (int t = 0; t < nthr; t++) {
            pthread_join(th[t], NULL);
            s += jobs[t].sum;
        }
        double gbs = (double)bytes / (clock_now_s() - t0) / 1e9;
        if (gbs > best && s != 1)
            best = gbs;
    }
    free(buf);
    return best;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return v[n / 2];
}

static void die(const char *what, sd_err e)
{
    fprintf(stderr, "bench_engine: %s: %s: %s\n", what, sd_strerror(e), sd_errmsg());
    exit(1);
}

typedef struct {
    const char *model, *csv;
    int threads, reps, f32_act, portable;
} bench_opts;

#define F(x) offsetof(bench_opts, x)
static const opt_def bench_defs[] = {
    {"model", 'm', OPT_STR, F(model), OPT_NOBOUNDS, NULL, "PATH", "GGUF model (required)"},
    {"threads", 't', OPT_INT, F(threads), 0, 1024, "0", "N", "compute threads; 0 = all cores"},
    {"reps", 0, OPT_INT, F(reps), 3, 100000, "20", "R", "repetitions per measurement"},
    {"csv", 0, OPT_STR, F(csv), OPT_NOBOUNDS, "bench/out/engine.csv", "FILE", "CSV output"},
    {"f32-act", 0, OPT_FLAG, F(f32_act), OPT_NOBOUNDS, NULL, NULL, "f32 activations"},
    {"portable", 0, OPT_FLAG, F(portable), OPT_NOBOUNDS, NULL, NULL, "plain-C kernels only"},
};
#undef F

int main(int argc, char **argv)
{
    bench_opts bo = {0};
    opt_defaults(bench_defs, 6, &bo);
    sd_err e = opt_parse(bench_defs, 6, &bo, argc - 1, argv + 1);
    if (e || !bo.model) {
        if (e != SD_ECANCELED)
            fprintf(stderr, "bench_engine: %s\n", e ? sd_errmsg() : "--model is required");
        printf("usage: bench_engine --model PATH [options]\n");
        opt_usage(stdout, bench_defs, 6);
        return e == SD_ECANCELED ? 0 : 2;
    }
    const char *path = bo.model, *csv = bo.csv;
    int threads = bo.threads, reps = bo.reps;
    unsigned flags = (bo.f32_act ? KERN_CPU_F32_ACT : 0u) | (bo.portable ? KERN_CPU_PORTABLE : 0u);
    model_opts mo = {.n_threads = threads, .kern_flags = flags};
    model *m;
    e = model_open(&m, path, &mo);
    if (e)
        die("loading model", e);
    const model_config *c = model_cfg(m);
    int V = c->n_vocab;
    if (threads <= 0)
        threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    kv_cache *kv;
    model_run *r;
    if ((e = model_kv_init(m, &kv, 1024)) || (e = model_run_init(&r, m, 128)))
        die("allocating", e);
    float *logits = malloc(sizeof(float) * (size_t)V * 64);
    int32_t toks[256];
    uint64_t rs = 12345;
    for (int i = 0; i < 256; i++) {
        rs = rs * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((rs >> 33) % (uint64_t)V);
    }
    fprintf(stderr, "bench_engine: %s, backend %s, %d threads, features: %s\n", path,
            model_backend(m)->name, threads, kern_cpu_features());

    /* prefill: 128 tokens, logits of the last */
    const int NP = 128;
    double tp[8];
    for (int i = 0; i < 5; i++) {
        kv_truncate(kv, 0);
        double t0 = clock_now_s();
        if ((e = model_forward(m, r, kv, toks, NULL, NP, NULL, 1, logits)))
            die("prefill", e);
        tp[i] = clock_now_s() - t0;
        kv_commit_all(kv);
    }
    double prefill_tps = NP / median(tp, 5);

    /* decode: after a 32-token prompt, reps*4 single-token steps; tokens/s of the median step */
    kv_truncate(kv, 0);
    model_forward(m, r, kv, toks, NULL, 32, NULL, 1, logits);
    kv_commit_all(kv);
    int ND = reps * 4;
    double *td = malloc(sizeof(double) * (size_t)ND);
    for (int i = 0; i < ND; i++) {
        int32_t t = sample_argmax(logits, V);
        double t0 = clock_now_s();
        if ((e = model_forward(m, r, kv, &t, NULL, 1, NULL, 1, logits)))
            die("decode", e);
        td[i] = clock_now_s() - t0;
        kv_commit_all(kv);
    }
    double step = median(td, ND);
    double decode_tps = 1.0 / step;

    double bw = measure_bandwidth(threads);
    double wbytes = (double)model_weight_bytes(m);
    double bound_tps = bw * 1e9 / wbytes;

    /* tree forward cost: T nodes of a random tree over a 32-token committed prefix, with the
     * logits of every node (what verification needs) */
    kv_truncate(kv, 32);
    static const int Ts[] = {1, 2, 4, 8, 16, 32, 64};
    double cost[7];
    int parents[64];
    for (int k = 0; k < 7; k++) {
        int T = Ts[k], out[64];
        for (int i = 0; i < T; i++) {
            parents[i] = i == 0 ? -1 : (int)(((uint64_t)i * 2654435761u) % (uint64_t)i);
            out[i] = i;
        }
        double *tt = malloc(sizeof(double) * (size_t)reps);
        for (int i = 0; i < reps; i++) {
            double t0 = clock_now_s();
            if ((e = model_forward(m, r, kv, toks + 32, parents, T, out, T, logits)))
                die("tree forward", e);
            tt[i] = clock_now_s() - t0;
            kv_clear_pending(kv);
        }
        cost[k] = median(tt, reps);
        free(tt);
    }

    printf("model            %s (%s, %d layers, D=%d, V=%d)\n", path, c->arch, c->n_layer,
           c->n_embd, V);
    printf("backend          %s, %d threads%s\n", model_backend(m)->name, threads,
           flags & KERN_CPU_F32_ACT ? ", f32 activations" : "");
    printf("weights/token    %.1f MB\n", wbytes / 1e6);
    printf("read bandwidth   %.1f GB/s (measured now)\n", bw);
    printf("decode bound     %.1f tok/s\n", bound_tps);
    printf("decode           %.1f tok/s  = %.0f%% of bound\n", decode_tps,
           100.0 * decode_tps / bound_tps);
    printf("prefill (%d)     %.1f tok/s\n", NP, prefill_tps);
    printf("tree forward cost relative to T=1 (%.2f ms):\n", cost[0] * 1e3);
    for (int k = 0; k < 7; k++)
        printf("  T=%-3d %7.2f ms  %5.2fx\n", Ts[k], cost[k] * 1e3, cost[k] / cost[0]);

    FILE *f = fopen(csv, "w");
    if (f) {
        fprintf(f, "metric,value\n");
        fprintf(f, "threads,%d\nbackend,%s\nbandwidth_gbs,%.2f\nweight_mb,%.2f\n", threads,
                model_backend(m)->name, bw, wbytes / 1e6);
        fprintf(f, "decode_bound_tps,%.2f\ndecode_tps,%.2f\ndecode_fraction,%.3f\n", bound_tps,
                decode_tps, decode_tps / bound_tps);
        fprintf(f, "prefill_tps,%.2f\n", prefill_tps);
        for (int k = 0; k < 7; k++)
            fprintf(f, "tree_cost_T%d,%.4f\n", Ts[k], cost[k] / cost[0]);
        fclose(f);
        fprintf(stderr, "bench_engine: wrote %s\n", csv);
    } else {
        fprintf(stderr, "bench_engine: cannot write %s (create the folder?)\n", csv);
    }
    free(td);
    free(logits);
    model_run_free(r);
    kv_free(kv);
    model_free(m);
    return 0;
}
