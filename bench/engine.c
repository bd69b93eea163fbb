/* bench/engine: prefill and decode speed of the engine on a model, against the memory-bandwidth
 * bound measured in the same run, and the cost of one forward over T = 1..64 tree nodes relative
 * to T = 1 (what makes wide verification pay), over a short prefix and over a long one. Prints a
 * table and writes CSV.
 *
 *   bench_engine --model PATH [--threads N] [--reps R] [--csv FILE] [--f32-act]
 *                [--cpu-level portable|avx2|avx512]
 *                [--long-ctx N] [--backend cpu|cuda|cuda!] [--device N]
 *                (bench_engine --help lists them) */
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

/* One pass of nthr threads reading buf (n words): GB/s. The buffer is as large as the weights
 * one token reads, so the probe sees the caches and memory the decode sees. */
static double bandwidth_pass(const uint64_t *buf, size_t n, int nthr)
{
    pthread_t th[64];
    bw_job jobs[64];
    if (nthr > 64)
        nthr = 64;
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
    double dt = clock_now_s() - t0;
    return s == 1 ? 0 : (double)n * 8 / dt / 1e9;
}

/* Peak rate of the int8 dot-product instruction the kernels are built on (VPDPBUSD, 64
 * multiply-adds), all threads at once: independent accumulators, no memory. 0 without VNNI. */
typedef struct {
    double rate;
} vnni_job;

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void *vnni_run(void *arg)
{
    vnni_job *j = arg;
    __m512i a[12];
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_epi32(i);
    __m512i w = _mm512_set1_epi8(3), x = _mm512_set1_epi8(5);
    const long n = 10000000;
    double t0 = clock_now_s();
    for (long k = 0; k < n; k++) {
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] =
            _mm512_dpbusd_epi32(a[i], w, x);
        __asm__ volatile("" : "+v"(w));
    }
    double dt = clock_now_s() - t0;
    __m512i s = a[0];
    for (int i = 1; i < 12; i++)
        s = _mm512_add_epi32(s, a[i]);
    j->rate = _mm512_reduce_add_epi32(s) == 1 ? 0 : (double)n * 12 / dt;
    return NULL;
}

static double vnni_peak(int nthr)
{
    if (!__builtin_cpu_supports("avx512vnni"))
        return 0;
    pthread_t th[64];
    vnni_job jobs[64];
    if (nthr > 64)
        nthr = 64;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double sum = 0;
        for (int t = 0; t < nthr; t++)
            pthread_create(&th[t], NULL, vnni_run, &jobs[t]);
        for (int t = 0; t < nthr; t++) {
            pthread_join(th[t], NULL);
            sum += jobs[t].rate;
        }
        best = sum > best ? sum : best;
    }
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
    const char *model, *csv, *cpu_level, *backend;
    int threads, reps, f32_act, long_ctx, device;
} bench_opts;

#define F(x) offsetof(bench_opts, x)
static const opt_def bench_defs[] = {
    {"model", 'm', OPT_STR, F(model), OPT_NOBOUNDS, NULL, "PATH", "GGUF model (required)"},
    {"threads", 't', OPT_INT, F(threads), 0, 1024, "0", "N", "compute threads; 0 = all cores"},
    {"reps", 0, OPT_INT, F(reps), 3, 100000, "20", "R", "repetitions per measurement"},
    {"csv", 0, OPT_STR, F(csv), OPT_NOBOUNDS, "bench/out/engine.csv", "FILE", "CSV output"},
    {"f32-act", 0, OPT_FLAG, F(f32_act), OPT_NOBOUNDS, NULL, NULL, "f32 activations"},
    {"cpu-level", 0, OPT_STR, F(cpu_level), OPT_NOBOUNDS, "best", "LEVEL",
     "cap the CPU kernels: portable | avx2 | avx512 | best"},
    {"long-ctx", 0, OPT_INT, F(long_ctx), 0, 8192, "1024", "N",
     "also tree costs over an N-token prefix (0 = skip)"},
    {"backend", 0, OPT_STR, F(backend), OPT_NOBOUNDS, "cpu", "NAME",
     "cpu | cuda (CPU when there is no GPU) | cuda! (exit 2 without a GPU)"},
    {"device", 0, OPT_INT, F(device), 0, 1024, "0", "N", "CUDA device"},
};
#undef F

/* Median time of a forward over Ts[k] nodes of a random tree (the logits of every node, what
 * verification needs) on top of the first `prefix` committed positions of kv, for each k. The
 * T values take turns within every repetition, so the load other tenants put on the machine
 * weighs on all of them alike; each timed run follows an untimed run of the same T (a 1-node
 * forward right after a 64-node one runs ~35% slower here, which would flatter the ratios). */
static void tree_costs(model *m, model_run *r, kv_cache *kv, int prefix, const int32_t *toks,
                       const int *Ts, int nT, int reps, float *logits, double *cost)
{
    int parents[64], out[64];
    for (int i = 0; i < 64; i++) {
        parents[i] = i == 0 ? -1 : (int)(((uint64_t)i * 2654435761u) % (uint64_t)i);
        out[i] = i;
    }
    double *tt = malloc(sizeof(double) * (size_t)reps * (size_t)nT);
    if (!tt)
        die("allocating", SD_ENOMEM);
    kv_truncate(kv, prefix);
    for (int i = 0; i < reps; i++)
        for (int k = 0; k < nT; k++)
            for (int timed = 0; timed < 2; timed++) {
                double t0 = clock_now_s();
                sd_err e = model_forward(m, r, kv, toks, parents, Ts[k], out, Ts[k], logits);
                if (e)
                    die("tree forward", e);
                if (timed)
                    tt[k * reps + i] = clock_now_s() - t0;
                kv_clear_pending(kv);
            }
    for (int k = 0; k < nT; k++)
        cost[k] = median(tt + k * reps, reps);
    free(tt);
}

/* The CPU's name as /proc/cpuinfo gives it (figures are meaningless without it). */
static const char *cpu_model_name(void)
{
    static char name[128] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            const char *v = strchr(line, ':');
            if (v) {
                snprintf(name, sizeof name, "%s", v + 1 + (v[1] == ' '));
                name[strcspn(name, "\n")] = 0;
            }
            break;
        }
    if (f)
        fclose(f);
    for (char *p = name; *p; p++)
        if (*p == ',')
            *p = ' '; /* the CSV has two columns */
    return name;
}

int main(int argc, char **argv)
{
    bench_opts bo = {0};
    opt_defaults(bench_defs, 9, &bo);
    sd_err e = opt_parse(bench_defs, 9, &bo, argc - 1, argv + 1);
    if (e || !bo.model) {
        if (e != SD_ECANCELED)
            fprintf(stderr, "bench_engine: %s\n", e ? sd_errmsg() : "--model is required");
        printf("usage: bench_engine --model PATH [options]\n");
        opt_usage(stdout, bench_defs, 9);
        return e == SD_ECANCELED ? 0 : 2;
    }
    const char *path = bo.model, *csv = bo.csv;
    int threads = bo.threads, reps = bo.reps;
    kern_cpu_level lvl;
    if ((e = kern_cpu_level_parse(bo.cpu_level, &lvl)))
        die("--cpu-level", e);
    unsigned flags = (bo.f32_act ? KERN_CPU_F32_ACT : 0u) | KERN_CPU_LEVEL(lvl);
    kern_backend *be;
    if ((e = kern_backend_open(&be, bo.backend, bo.device, threads, flags))) {
        fprintf(stderr, "bench_engine: --backend %s: %s\n", bo.backend, sd_errmsg());
        return 2;
    }
    model_opts mo = {.n_threads = threads, .kern_flags = flags, .backend = be};
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
    if ((e = model_kv_init(m, &kv, bo.long_ctx + 1024)) || (e = model_run_init(&r, m, 128)))
        die("allocating", e);
    float *logits = malloc(sizeof(float) * (size_t)V * 64);
    int32_t toks[256];
    uint64_t rs = 12345;
    for (int i = 0; i < 256; i++) {
        rs = rs * 6364136223846793005ull + 1442695040888963407ull;
        toks[i] = (int32_t)((rs >> 33) % (uint64_t)V);
    }
    int32_t *big = malloc(sizeof(int32_t) * (size_t)(bo.long_ctx + 64));
    if (!big)
        die("allocating", SD_ENOMEM);
    for (int i = 0; i < bo.long_ctx + 64; i++) {
        rs = rs * 6364136223846793005ull + 1442695040888963407ull;
        big[i] = (int32_t)((rs >> 33) % (uint64_t)V);
    }
    fprintf(stderr, "bench_engine: %s, backend %s (numerics %s), %d threads, features: %s\n", path,
            model_backend(m)->name, model_backend(m)->numerics, threads, kern_cpu_features());

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

    /* decode: after a 32-token prompt, reps*4 single-token steps, a bandwidth pass over a
     * buffer of the weights' size after every 4th step (both see the same machine load);
     * tokens/s of the median step against the median pass */
    double wbytes = (double)model_weight_bytes(m);
    size_t bw_n = (size_t)wbytes / 8;
    uint64_t *bw_buf = malloc(bw_n * 8);
    if (!bw_buf)
        die("allocating", SD_ENOMEM);
    for (size_t i = 0; i < bw_n; i++)
        bw_buf[i] = i * 2654435761u;
    kv_truncate(kv, 0);
    model_forward(m, r, kv, toks, NULL, 32, NULL, 1, logits);
    kv_commit_all(kv);
    int ND = reps * 4, NB = 0;
    double *td = malloc(sizeof(double) * (size_t)ND), *tb = malloc(sizeof(double) * (size_t)ND);
    /* a device backend: its memory's bandwidth, a copy of a buffer of the weights' size inside
     * it (each byte read once and written once) */
    uint8_t *dbuf = be->device ? be->buf_alloc(be->ctx, 2 * bw_n * 8) : NULL;
    if (be->device && !dbuf)
        die("allocating device memory", SD_ENOMEM);
    for (int i = 0; i < ND; i++) {
        int32_t t = sample_argmax(logits, V);
        double t0 = clock_now_s();
        if ((e = model_forward(m, r, kv, &t, NULL, 1, NULL, 1, logits)))
            die("decode", e);
        td[i] = clock_now_s() - t0;
        kv_commit_all(kv);
        if (i % 4 == 3 && dbuf) {
            double b0 = clock_now_s();
            be->copy(be->ctx, dbuf + bw_n * 8, dbuf, bw_n * 8);
            if ((e = be->sync(be->ctx)))
                die("bandwidth pass", e);
            tb[NB++] = 2.0 * (double)bw_n * 8 / (clock_now_s() - b0) / 1e9;
        } else if (i % 4 == 3) {
            tb[NB++] = bandwidth_pass(bw_buf, bw_n, threads);
        }
    }
    if (dbuf)
        be->buf_free(be->ctx, dbuf);
    free(bw_buf);
    double bw_best = 0;
    for (int i = 0; i < NB; i++)
        bw_best = tb[i] > bw_best ? tb[i] : bw_best;
    double step_best = td[0];
    for (int i = 1; i < ND; i++)
        step_best = td[i] < step_best ? td[i] : step_best;
    double bw = median(tb, NB);
    double step = median(td, ND);
    double decode_tps = 1.0 / step;
    double bound_tps = bw * 1e9 / wbytes;

    /* tree forward cost over the 32-token prefix decoded above, and over a long prompt */
    static const int Ts[] = {1, 2, 4, 8, 16, 32, 64}, TsL[] = {1, 4, 16};
    enum { NT = sizeof Ts / sizeof Ts[0], NTL = sizeof TsL / sizeof TsL[0] };
    double cost[NT], costL[NTL];
    tree_costs(m, r, kv, 32, toks + 32, Ts, NT, reps, logits, cost);
    int LC = bo.long_ctx;
    if (LC > 0) {
        kv_truncate(kv, 0);
        for (int c0 = 0; c0 < LC; c0 += 128) {
            int n = LC - c0 < 128 ? LC - c0 : 128;
            if ((e = model_forward(m, r, kv, big + c0, NULL, n, NULL, 0, NULL)))
                die("long prefill", e);
            kv_commit_all(kv);
        }
        tree_costs(m, r, kv, LC, big + LC, TsL, NTL, reps < 10 ? reps : 10, logits, costL);
    }

    /* what a T-node forward cannot beat on this CPU: its multiply-adds at the peak rate of the
     * int8 dot-product instruction (all threads), next to the 1-node forward measured above */
    int D = c->n_embd, Qd = c->n_head * c->head_dim, KVd = c->n_head_kv * c->head_dim;
    double macs =
        (double)c->n_layer * ((double)D * Qd * 2 + (double)D * KVd * 2 + (double)D * c->n_ff * 3) +
        (double)D * V;
    double peak = be->device ? 0.0 : vnni_peak(threads); /* a CPU floor: not for a GPU */

    printf("model            %s (%s, %d layers, D=%d, V=%d)\n", path, c->arch, c->n_layer,
           c->n_embd, V);
    printf("cpu              %s (%s)\n", cpu_model_name(), kern_cpu_features());
    printf("backend          %s, %d threads%s, numerics %s\n", model_backend(m)->name, threads,
           flags & KERN_CPU_F32_ACT ? ", f32 activations" : "", model_backend(m)->numerics);
    printf("weights/token    %.1f MB\n", wbytes / 1e6);
    printf("%s %.1f GB/s median, %.1f best (%d passes over %.0f MB between the "
           "decode steps)\n",
           be->device ? "device bandwidth" : "read bandwidth  ", bw, bw_best, NB, wbytes / 1e6);
    printf("decode bound     %.1f tok/s (median bandwidth)\n", bound_tps);
    printf("decode           %.1f tok/s  = %.0f%% of bound (median step %.2f ms; best step "
           "%.2f ms = %.0f%% of the best pass)\n",
           decode_tps, 100.0 * decode_tps / bound_tps, step * 1e3, step_best * 1e3,
           100.0 * (wbytes / (bw_best * 1e9)) / step_best);
    printf("prefill (%d)     %.1f tok/s\n", NP, prefill_tps);
    printf("tree forward cost relative to T=1 (%.2f ms), median of %d interleaved runs:\n",
           cost[0] * 1e3, reps);
    for (int k = 0; k < NT; k++) {
        printf("  T=%-3d %7.2f ms  %5.2fx", Ts[k], cost[k] * 1e3, cost[k] / cost[0]);
        if (peak > 0)
            printf("   (int8 dot-product floor %6.2f ms = %4.2fx)", Ts[k] * macs / 64 / peak * 1e3,
                   Ts[k] * macs / 64 / peak / cost[0]);
        printf("\n");
    }
    if (peak > 0)
        printf("int8 dot products: %.2f G VPDPBUSD/s peak with %d threads (measured now); "
               "%.1f M per node\n",
               peak / 1e9, threads, macs / 64 / 1e6);
    if (LC > 0) {
        printf("over a %d-token prefix (attention reads the whole prefix per node), relative to "
               "its T=1 (%.2f ms):\n",
               LC, costL[0] * 1e3);
        for (int k = 0; k < NTL; k++)
            printf("  T=%-3d %7.2f ms  %5.2fx\n", TsL[k], costL[k] * 1e3, costL[k] / costL[0]);
    }

    FILE *f = fopen(csv, "w");
    if (f) {
        fprintf(f, "metric,value\n");
        fprintf(f, "cpu,%s\nthreads,%d\nbackend,%s\nbandwidth_gbs,%.2f\nweight_mb,%.2f\n",
                cpu_model_name(), threads, model_backend(m)->name, bw, wbytes / 1e6);
        fprintf(f, "decode_bound_tps,%.2f\ndecode_tps,%.2f\ndecode_fraction,%.3f\n", bound_tps,
                decode_tps, decode_tps / bound_tps);
        fprintf(f, "prefill_tps,%.2f\n", prefill_tps);
        for (int k = 0; k < NT; k++)
            fprintf(f, "tree_cost_T%d,%.4f\n", Ts[k], cost[k] / cost[0]);
        fprintf(f, "tree_T1_ms,%.4f\nvnni_peak_gops,%.3f\n", cost[0] * 1e3, peak / 1e9);
        for (int k = 0; k < NT && peak > 0; k++)
            fprintf(f, "tree_floor_T%d,%.4f\n", Ts[k], Ts[k] * macs / 64 / peak / cost[0]);
        if (LC > 0) {
            fprintf(f, "long_ctx,%d\nlong_T1_ms,%.4f\n", LC, costL[0] * 1e3);
            for (int k = 0; k < NTL; k++)
                fprintf(f, "long_cost_T%d,%.4f\n", TsL[k], costL[k] / costL[0]);
        }
        fclose(f);
        fprintf(stderr, "bench_engine: wrote %s\n", csv);
    } else {
        fprintf(stderr, "bench_engine: cannot write %s (create the folder?)\n", csv);
    }
    free(td);
    free(tb);
    free(big);
    free(logits);
    model_run_free(r);
    kv_free(kv);
    model_free(m);
    kern_free(be);
    return 0;
}
