/* bench/batch: what continuous batching buys a target worker. N sessions (N = 1, 4, 16), each
 * with a 64-token prompt, run a worker-like loop: every step each session brings a 4-node draft
 * chain (its last 4 committed tokens repeated: a cheap n-gram guess, as in the default drafter)
 * and gets its verdict. Batched: one verify_batch over all N sessions per step (one forward,
 * every weight matrix streamed once for all). Separate: one verify_tree per session per step.
 * Both runs start from the same prefilled caches and must commit identical tokens (checked:
 * the batched forward is bitwise the separate ones). Prints verified (committed) tokens/s and
 * forward positions/s of both and their ratio; writes CSV.
 *
 *   bench_batch [--model PATH] [--threads N] [--steps S] [--reps R] [--csv FILE]   (--help) */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/clock.h"
#include "../common/opt.h"
#include "../engine/verify.h"

#define PROMPT 64
#define CHAIN 4
#define MAX_SEQ 16

typedef struct {
    const char *model, *csv, *backend;
    int threads, steps, reps, device;
} bench_opts;

#define F(x) offsetof(bench_opts, x)
static const opt_def bench_defs[] = {
    {"model", 'm', OPT_STR, F(model), OPT_NOBOUNDS, NULL, "PATH",
     "GGUF model (default: $SPECD_MODEL, else the default model in ~/.cache/specd/models)"},
    {"threads", 't', OPT_INT, F(threads), 0, 1024, "0", "N", "compute threads; 0 = all cores"},
    {"steps", 0, OPT_INT, F(steps), 1, 1000, "16", "S", "verification steps per run"},
    {"reps", 0, OPT_INT, F(reps), 1, 100, "3", "R", "runs of each mode (median reported)"},
    {"csv", 0, OPT_STR, F(csv), OPT_NOBOUNDS, "bench/out/batch.csv", "FILE", "CSV output"},
    {"backend", 0, OPT_STR, F(backend), OPT_NOBOUNDS, "cpu", "NAME",
     "cpu | cuda (CPU when there is no GPU) | cuda! (exit 2 without a GPU)"},
    {"device", 0, OPT_INT, F(device), 0, 1024, "0", "N", "CUDA device"},
};
#undef F
#define N_DEFS (sizeof bench_defs / sizeof bench_defs[0])

static void die(const char *what, sd_err e)
{
    fprintf(stderr, "bench_batch: %s: %s: %s\n", what, sd_strerror(e), sd_errmsg());
    exit(1);
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

static void cpu_name(char *buf, size_t n)
{
    snprintf(buf, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *p = strchr(line, ':');
            if (p) {
                p += 1 + (p[1] == ' ');
                p[strcspn(p, "\n")] = 0;
                snprintf(buf, n, "%s", p);
            }
            break;
        }
    fclose(f);
}

typedef struct {
    kv_cache *kv;
    verify_work *w;
    verify_result *res;
    tree t;
    int32_t seq[PROMPT + 1024]; /* committed tokens; the newest is not in kv yet */
    int n;
} session;

/* Back to the prompt: its first PROMPT - 1 tokens in the cache, the last one to be verified
 * with the first draft. */
static void rewind_session(session *s)
{
    kv_truncate(s->kv, PROMPT - 1);
    s->n = PROMPT;
}

/* One worker-like run of `steps` steps over sessions S[0..n); returns seconds, adds the
 * committed tokens and forward positions. */
static double run(model *m, model_run *r, session *S, int n, int steps, int batched, long *tokens,
                  long *positions)
{
    static const sample_params greedy = {0, 0, 1, 0};
    verify_job jobs[MAX_SEQ];
    double t0 = clock_now_s();
    for (int step = 0; step < steps; step++) {
        for (int i = 0; i < n; i++) {
            session *s = &S[i];
            tree_clear(&s->t);
            for (int k = 0; k < CHAIN; k++)
                tree_add(&s->t, k - 1, s->seq[s->n - CHAIN + k], 0);
            jobs[i] = (verify_job){.kv = s->kv,
                                   .w = s->w,
                                   .pre = &s->seq[s->n - 1],
                                   .n_pre = 1,
                                   .t = &s->t,
                                   .mode = VERIFY_SAMPLE,
                                   .sp = &greedy,
                                   .res = s->res};
        }
        if (batched) {
            sd_err e = verify_batch(m, r, jobs, n);
            for (int i = 0; i < n && !e; i++)
                if (jobs[i].err)
                    die("verify_batch job", sd_fail(jobs[i].err, "%s", jobs[i].errmsg));
            if (e)
                die("verify_batch", e);
        } else {
            for (int i = 0; i < n; i++) {
                session *s = &S[i];
                sd_err e = verify_tree(m, r, s->kv, s->w, s->seq[s->n - 1], &s->t, VERIFY_SAMPLE,
                                       &greedy, s->res);
                if (e)
                    die("verify_tree", e);
            }
        }
        for (int i = 0; i < n; i++) {
            session *s = &S[i];
            for (int k = 0; k < s->res->n_accept; k++)
                s->seq[s->n++] = s->t.tok[s->res->path[k]];
            s->seq[s->n++] = s->res->next;
            *tokens += s->res->n_accept + 1;
            *positions += CHAIN + 1;
        }
    }
    return clock_now_s() - t0;
}

int main(int argc, char **argv)
{
    bench_opts bo = {0};
    opt_defaults(bench_defs, N_DEFS, &bo);
    sd_err e = opt_parse(bench_defs, N_DEFS, &bo, argc - 1, argv + 1);
    if (e) {
        if (e != SD_ECANCELED)
            fprintf(stderr, "bench_batch: %s\n", sd_errmsg());
        printf("usage: bench_batch [options]\n");
        opt_usage(stdout, bench_defs, N_DEFS);
        return e == SD_ECANCELED ? 0 : 2;
    }
    char dflt[1024];
    if (!bo.model)
        bo.model = getenv("SPECD_MODEL");
    if (!bo.model) {
        snprintf(dflt, sizeof dflt, "%s/.cache/specd/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : ".");
        bo.model = dflt;
    }
    kern_backend *be;
    if ((e = kern_backend_open(&be, bo.backend, bo.device, bo.threads, 0))) {
        fprintf(stderr, "bench_batch: --backend %s: %s\n", bo.backend, sd_errmsg());
        return 2;
    }
    model_opts mo = {.n_threads = bo.threads, .backend = be};
    model *m;
    if ((e = model_open(&m, bo.model, &mo)))
        die("loading model", e);
    int threads = bo.threads > 0 ? bo.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    int V = model_cfg(m)->n_vocab, steps = bo.steps;
    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    printf("bench_batch: %s\n  CPU %s, backend %s, %d threads, features: %s\n", bo.model, cpu,
           model_backend(m)->name, threads, kern_cpu_features());
    printf("  (timings on a machine shared with other jobs: compare the ratios, measured "
           "interleaved in this run)\n");

    model_run *r;
    if ((e = model_run_init(&r, m, MAX_SEQ * (CHAIN + 1))))
        die("allocating", e);
    session *S = calloc(MAX_SEQ, sizeof *S);
    if (!S)
        die("allocating", SD_ENOMEM);
    uint64_t rs = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < MAX_SEQ; i++) {
        session *s = &S[i];
        if ((e = model_kv_init(m, &s->kv, PROMPT + (CHAIN + 1) * steps + 8)) ||
            (e = verify_work_init(&s->w, m, CHAIN)) || (e = tree_init(&s->t, CHAIN, 0)))
            die("allocating", e);
        s->res = malloc(sizeof *s->res);
        for (int k = 0; k < PROMPT; k++) { /* a different random prompt per session */
            rs = rs * 6364136223846793005ull + 1442695040888963407ull;
            s->seq[k] = (int32_t)((rs >> 33) % (uint64_t)V);
        }
        /* prefill (untimed), all sessions in one batch of prefill-only jobs below */
    }
    {
        verify_job pj[MAX_SEQ];
        for (int i = 0; i < MAX_SEQ; i++)
            pj[i] = (verify_job){.kv = S[i].kv, .w = S[i].w, .pre = S[i].seq, .n_pre = PROMPT - 1};
        model_run *rp;
        if ((e = model_run_init(&rp, m, 256)) || (e = verify_batch(m, rp, pj, MAX_SEQ)))
            die("prefill", e);
        model_run_free(rp);
    }

    static const int Ns[] = {1, 4, 16};
    FILE *csv = fopen(bo.csv, "w");
    if (!csv)
        fprintf(stderr, "bench_batch: cannot write %s (create the folder?)\n", bo.csv);
    else
        fprintf(csv, "n_seq,mode,steps,seconds,tokens,tokens_per_s,positions_per_s,"
                     "ratio_vs_separate,threads,cpu\n");
    printf("\n  %5s  %-9s  %9s  %8s  %12s  %12s  %7s\n", "n_seq", "mode", "seconds", "tokens",
           "tokens/s", "positions/s", "ratio");
    int32_t *ref = malloc(sizeof(int32_t) * MAX_SEQ * (size_t)(PROMPT + 1024));
    for (size_t k = 0; k < sizeof Ns / sizeof Ns[0]; k++) {
        int n = Ns[k];
        double tm[2][100];
        long tok[2] = {0, 0}, pos[2] = {0, 0};
        for (int rep = 0; rep < bo.reps; rep++)
            for (int batched = 0; batched < 2; batched++) { /* interleaved: same load on both */
                long t = 0, p = 0;
                for (int i = 0; i < n; i++)
                    rewind_session(&S[i]);
                tm[batched][rep] = run(m, r, S, n, steps, batched, &t, &p);
                tok[batched] = t;
                pos[batched] = p;
                /* every run commits the same tokens: the batched forward is bitwise exact */
                for (int i = 0; i < n; i++) {
                    int32_t *want = ref + (size_t)i * (PROMPT + 1024);
                    if (rep == 0 && !batched)
                        memcpy(want, S[i].seq, sizeof(int32_t) * (size_t)S[i].n);
                    else if (memcmp(want, S[i].seq, sizeof(int32_t) * (size_t)S[i].n)) {
                        fprintf(stderr,
                                "bench_batch: session %d: batched and separate tokens "
                                "differ\n",
                                i);
                        return 1;
                    }
                }
            }
        double sec[2] = {median(tm[0], bo.reps), median(tm[1], bo.reps)};
        double ratio = sec[0] / sec[1];
        for (int batched = 1; batched >= 0; batched--) {
            const char *mode = batched ? "batched" : "separate";
            double tps = tok[batched] / sec[batched], pps = pos[batched] / sec[batched];
            printf("  %5d  %-9s  %9.3f  %8ld  %12.1f  %12.1f  %7.2f\n", n, mode, sec[batched],
                   tok[batched], tps, pps, batched ? ratio : 1.0);
            if (csv)
                fprintf(csv, "%d,%s,%d,%.6f,%ld,%.2f,%.2f,%.4f,%d,\"%s\"\n", n, mode, steps,
                        sec[batched], tok[batched], tps, pps, batched ? ratio : 1.0, threads, cpu);
        }
    }
    printf("\n  ratio = separate time / batched time for the same tokens (> 1: batching wins)\n");
    if (csv) {
        fclose(csv);
        fprintf(stderr, "bench_batch: wrote %s\n", bo.csv);
    }
    free(ref);
    for (int i = 0; i < MAX_SEQ; i++) {
        kv_free(S[i].kv);
        verify_work_free(S[i].w);
        tree_free(&S[i].t);
        free(S[i].res);
    }
    free(S);
    model_run_free(r);
    model_free(m);
    kern_free(be);
    return 0;
}
