/* bench/spec: speculative vs target-only decoding on a model, measured in the same run, for
 * each drafter x tree shape x prompt kind x temperature, with the adaptive controller (adapt.h)
 * on and off (target-only: best of 3 runs; each speculative configuration and mode: best of 2,
 * a fresh drafter each, the two modes interleaved). Prints a table of tokens/s, speedup and mean
 * accepted length, checks every output is identical to target-only, and writes CSV.
 *
 * Then the do-no-harm check: with a drafter that is never right (random:SEED) and with the
 * default n-gram drafter, on the ChatML prompts, R rounds each running target-only, adaptive and
 * fixed-tree speculation back to back in a rotating order; adaptive must keep >= 95 % of
 * target-only decode tokens per CPU second (median of the within-round ratios). Wall-clock
 * ratios are printed too: on a machine shared with other jobs they move by 2x between 1-second
 * runs, CPU time does not count the waiting.
 *
 *   bench_spec --model PATH [-n TOKENS] [--threads N] [--csv FILE] [--quick] [--harm-only]
 *              [--rounds R]   (--help)
 *   bench_spec --print-prompt NAME   (the prompt's text on stdout: bench/dsi.sh uses the same) */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/opt.h"
#include "../engine/spec.h"
#include "../engine/tok.h"

typedef struct {
    const char *name, *text;
} bench_prompt;

static const bench_prompt prompts[] = {
    {"chat", "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
             "Face<|im_end|>\n<|im_start|>user\nWhat are the main causes of climate change? "
             "Answer in a short paragraph.<|im_end|>\n<|im_start|>assistant\n"},
    /* code completion in an editor, the cursor after a method's colon: a class whose methods
     * follow a pattern */
    {"code", "class Vector:\n    \"\"\"A 2-D vector.\"\"\"\n\n    def __init__(self, x, y):\n"
             "        self.x = x\n        self.y = y\n\n    def __add__(self, other):\n        "
             "return Vector(self.x + other.x, self.y + other.y)\n\n    def __sub__(self, other):"},
    {"summary",
     "<|im_start|>user\nSummarize the following passage in two sentences.\n\nThe Great Barrier "
     "Reef is the world's largest coral reef system, composed of over 2,900 individual reefs and "
     "900 islands stretching for over 2,300 kilometres over an area of approximately 344,400 "
     "square kilometres. The reef is located in the Coral Sea, off the coast of Queensland, "
     "Australia. The Great Barrier Reef can be seen from outer space and is the world's biggest "
     "single structure made by living organisms. This reef structure is composed of and built by "
     "billions of tiny organisms, known as coral polyps. It supports a wide diversity of life and "
     "was selected as a World Heritage Site in 1981.<|im_end|>\n<|im_start|>assistant\n"},
};

/* --quick takes the first 2 drafters and the first 3 shapes: the default of specd generate
 * first */
static const char *drafters[] = {"ngram:3:2", "ngram:3", "ngram:2", "layerskip:0-27,29"};
static const char *shapes[] = {"chain:4",    "chain:8",    "dynamic:16", "chain:2",
                               "topk:2,2,1", "topk:4,2,1", "dynamic:32"};

typedef struct {
    int32_t *ids;
    int n, cap;
} sink;

static int put(void *ud, int32_t t)
{
    sink *s = ud;
    if (s->n < s->cap)
        s->ids[s->n++] = t;
    return 0;
}

static double gen_tps(const spec_stats *st)
{
    double t = st->t_total - st->t_prefill;
    return t > 0 ? st->n_gen / t : 0;
}

typedef struct {
    const char *model, *csv, *harm_csv, *backend, *print_prompt;
    int n_gen, threads, quick, harm_only, rounds, device;
} bench_opts;

#define F(x) offsetof(bench_opts, x)
static const opt_def bench_defs[] = {
    {"model", 'm', OPT_STR, F(model), OPT_NOBOUNDS, NULL, "PATH", "GGUF model (required)"},
    {"n-predict", 'n', OPT_INT, F(n_gen), 8, 2048, "96", "N", "tokens generated per run"},
    {"threads", 't', OPT_INT, F(threads), 0, 1024, "0", "N", "compute threads; 0 = all cores"},
    {"csv", 0, OPT_STR, F(csv), OPT_NOBOUNDS, "bench/out/spec.csv", "FILE", "CSV output"},
    {"quick", 0, OPT_FLAG, F(quick), OPT_NOBOUNDS, NULL, NULL, "2 drafters x 3 trees only"},
    {"harm-only", 0, OPT_FLAG, F(harm_only), OPT_NOBOUNDS, NULL, NULL,
     "only the do-no-harm check (no table)"},
    {"rounds", 0, OPT_INT, F(rounds), 1, 100, "7", "R", "do-no-harm rounds"},
    {"harm-csv", 0, OPT_STR, F(harm_csv), OPT_NOBOUNDS, "bench/out/spec_harm.csv", "FILE",
     "do-no-harm CSV output"},
    {"backend", 0, OPT_STR, F(backend), OPT_NOBOUNDS, "cpu", "NAME",
     "cpu | cuda (CPU when there is no GPU) | cuda! (exit 2 without a GPU)"},
    {"device", 0, OPT_INT, F(device), 0, 1024, "0", "N", "CUDA device"},
    {"print-prompt", 0, OPT_STR, F(print_prompt), OPT_NOBOUNDS, NULL, "NAME",
     "print the text of prompt NAME (chat, code, summary) and exit"},
};
#undef F
#define N_BENCH_DEFS (sizeof bench_defs / sizeof bench_defs[0])

/* One generation with a fresh drafter (spec NULL: target-only); returns its decode tokens/s and
 * whether the output equals want[0..n_want) (when want is given). */
static int run_one(spec_config *c, const char *spec, const draft_opts *o, const int32_t *ids, int n,
                   sink *out, const int32_t *want, int n_want, spec_stats *st, double *tps)
{
    draft *dr = NULL;
    if (spec && draft_open(&dr, spec, c->target, o)) {
        fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
        return -1;
    }
    c->drafter = dr;
    c->ud = out;
    out->n = 0;
    sd_err e = spec_generate(c, ids, n, st);
    c->drafter = NULL;
    draft_free(dr);
    if (e) {
        fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
        return -1;
    }
    *tps = gen_tps(st);
    return !want || (out->n == n_want && !memcmp(out->ids, want, sizeof(int32_t) * (size_t)n_want));
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The do-no-harm check (see the top of the file). Returns the number of failed cells (< 0 on an
 * error); *mism counts outputs that differ from target-only. */
static int harm_check(model *m, tok *tk, const bench_opts *bo, int *mism)
{
    /* the never-right drafter with a chain and a big dynamic tree; the default drafter and tree
     * of specd generate */
    static const struct {
        const char *drafter, *tree;
    } cells[] = {{"random:1", "chain:4"}, {"random:1", "dynamic:16"}, {"ngram:3:2", "chain:4"}};
    FILE *f = fopen(bo->harm_csv, "w");
    if (!f)
        fprintf(stderr, "bench_spec: cannot write %s (create the folder?)\n", bo->harm_csv);
    else
        fprintf(f, "temp,prompt,drafter,tree,round,target_tok_s,adaptive_tok_s,fixed_tok_s,"
                   "adaptive_ratio,fixed_ratio,adaptive_cpu_ratio,fixed_cpu_ratio,identical\n");
    int R = bo->rounds, n_gen = bo->n_gen, failed = 0;
    int32_t *want = malloc(sizeof(int32_t) * (size_t)n_gen),
            *got = malloc(sizeof(int32_t) * (size_t)n_gen);
    double *ra = malloc(sizeof(double) * (size_t)R), *rf = malloc(sizeof(double) * (size_t)R);
    double *ca = malloc(sizeof(double) * (size_t)R), *cf = malloc(sizeof(double) * (size_t)R);
    printf("\ndo no harm: %d rounds, each running target-only, adaptive and fixed-tree speculation "
           "back to back\n(rotating order). wall best: best run of each over the best target-only "
           "run; wall / cpu median:\nmedian over rounds of the within-round ratio of wall-clock / "
           "CPU-time tokens per second\n(cpu median is the criterion). The machine is shared: all "
           "ratios are within this run.\n",
           R);
    printf("%-5s %-8s %-10s %-11s %7s %16s %16s %16s %6s\n", "", "", "", "", "target", "wall best",
           "wall median", "cpu median", "");
    printf("%-5s %-8s %-10s %-11s %7s %8s %7s %8s %7s %8s %7s %6s\n", "temp", "prompt", "drafter",
           "tree", "tok/s", "adapt", "fixed", "adapt", "fixed", "adapt", "fixed", "0-st.");
    for (int ti = 0; ti < 2; ti++) {
        sample_params sp = {ti ? 0.8f : 0.0f, 0, ti ? 0.95f : 1.0f, 1234};
        for (size_t p = 0; p < sizeof prompts / sizeof prompts[0]; p++) {
            if (strncmp(prompts[p].text, "<|im_start|>", 12))
                continue; /* the ChatML prompts */
            int32_t ids[1024];
            size_t n;
            if (tok_encode(tk, prompts[p].text, strlen(prompts[p].text), TOK_PARSE_SPECIAL, ids,
                           1024, &n)) {
                fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
                return -1;
            }
            spec_config c = {
                .target = m, .sp = sp, .n_predict = n_gen, .max_nodes = 64, .on_token = put};
            draft_opts o = {.max_ctx = 2048, .max_nodes = 64, .temp = sp.temp, .seed = sp.seed};
            sink ref = {want, 0, n_gen}, out = {got, 0, n_gen};
            spec_stats st;
            double t;
            tree_shape_parse(&c.shape, "chain:1", 64);
            if (run_one(&c, NULL, &o, ids, (int)n, &ref, NULL, 0, &st, &t) < 0) /* warm-up */
                return -1;
            int n_want = ref.n;
            for (size_t k = 0; k < sizeof cells / sizeof cells[0]; k++) {
                const char *dname = cells[k].drafter, *tname = cells[k].tree;
                tree_shape_parse(&c.shape, tname, 64);
                double sum_t = 0, zero = 0, bt = 0, ba = 0, bf = 0;
                int same = 1;
                for (int r = 0; r < R; r++) {
                    /* three runs per round, in an order that rotates so a drift of the machine's
                     * speed within a round favours none of them */
                    double tt = 0, ta = 0, tf = 0, ct = 0, cad = 0, cfx = 0;
                    for (int j = 0; j < 3; j++) {
                        int which = (j + r) % 3, ok;
                        c.adaptive = which == 1;
                        if (which == 0) {
                            ok = run_one(&c, NULL, &o, ids, (int)n, &out, want, n_want, &st, &tt);
                        } else {
                            ok = run_one(&c, dname, &o, ids, (int)n, &out, want, n_want, &st,
                                         which == 1 ? &ta : &tf);
                            if (which == 1)
                                zero += (double)st.zero_steps / (st.n_steps ? st.n_steps : 1) / R;
                        }
                        if (ok < 0)
                            return -1;
                        /* decode tokens per CPU second of the process */
                        double cps =
                            st.c_total > st.c_prefill ? st.n_gen / (st.c_total - st.c_prefill) : 0;
                        *(which == 0 ? &ct : which == 1 ? &cad : &cfx) = cps;
                        same &= ok;
                    }
                    ra[r] = ta / tt;
                    rf[r] = tf / tt;
                    ca[r] = ct > 0 ? cad / ct : 0;
                    cf[r] = ct > 0 ? cfx / ct : 0;
                    sum_t += tt;
                    bt = tt > bt ? tt : bt;
                    ba = ta > ba ? ta : ba;
                    bf = tf > bf ? tf : bf;
                    if (f)
                        fprintf(f,
                                "%.1f,%s,\"%s\",\"%s\",%d,%.2f,%.2f,%.2f,%.3f,%.3f,%.3f,%.3f,%d\n",
                                sp.temp, prompts[p].name, dname, tname, r, tt, ta, tf, ta / tt,
                                tf / tt, ca[r], cf[r], same);
                }
                double ma = median(ra, R), mf = median(rf, R);
                double mca = median(ca, R), mcf = median(cf, R);
                /* the criterion: decode tokens per CPU second, median of the within-round
                 * ratios. Wall-clock tokens/s is printed too, but on a machine whose other jobs
                 * take the cores for seconds at a time a ~1 s run's wall time moves by 2x;
                 * CPU time does not count the waiting. */
                int bad = mca < 0.95;
                failed += bad;
                *mism += !same;
                printf("%-5.1f %-8s %-10s %-11s %7.1f %7.2fx %7.2fx %7.2fx %7.2fx %7.2fx %7.2fx "
                       "%5.0f%% %s%s\n",
                       sp.temp, prompts[p].name, dname, tname, bt, ba / bt, bf / bt, ma, mf, mca,
                       mcf, 100 * zero, bad ? "BELOW 0.95" : "ok", same ? "" : "  OUTPUT DIFFERS");
                fflush(stdout);
            }
        }
    }
    if (f) {
        fclose(f);
        fprintf(stderr, "bench_spec: wrote %s\n", bo->harm_csv);
    }
    free(want);
    free(got);
    free(ra);
    free(rf);
    free(ca);
    free(cf);
    return failed;
}

int main(int argc, char **argv)
{
    bench_opts bo = {0};
    opt_defaults(bench_defs, N_BENCH_DEFS, &bo);
    sd_err e = opt_parse(bench_defs, N_BENCH_DEFS, &bo, argc - 1, argv + 1);
    if (!e && bo.print_prompt) {
        for (size_t p = 0; p < sizeof prompts / sizeof prompts[0]; p++)
            if (!strcmp(prompts[p].name, bo.print_prompt)) {
                fputs(prompts[p].text, stdout);
                return 0;
            }
        fprintf(stderr, "bench_spec: --print-prompt '%s': no such prompt\n", bo.print_prompt);
        return 2;
    }
    if (e || !bo.model) {
        if (e != SD_ECANCELED)
            fprintf(stderr, "bench_spec: %s\n", e ? sd_errmsg() : "--model is required");
        printf("usage: bench_spec --model PATH [options]\n");
        opt_usage(stdout, bench_defs, N_BENCH_DEFS);
        return e == SD_ECANCELED ? 0 : 2;
    }
    const char *path = bo.model, *csv = bo.csv;
    int n_gen = bo.n_gen, threads = bo.threads, quick = bo.quick;
    kern_backend *be;
    if ((e = kern_backend_open(&be, bo.backend, bo.device, threads, 0))) {
        fprintf(stderr, "bench_spec: --backend %s: %s\n", bo.backend, sd_errmsg());
        return 2;
    }
    model_opts mo = {.n_threads = threads, .backend = be};
    model *m;
    tok *tk;
    if (model_open(&m, path, &mo) || tok_load(&tk, model_gguf(m))) {
        fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
        return 1;
    }
    printf("(the machine may be shared with other jobs: every ratio below is taken within this "
           "run)\n");
    int mismatches = 0;
    if (bo.harm_only)
        goto harm;
    FILE *f = fopen(csv, "w");
    if (!f)
        fprintf(stderr, "bench_spec: cannot write %s (create the folder?)\n", csv);
    else
        fprintf(f, "temp,prompt,drafter,tree,adaptive,tok_s,target_tok_s,speedup,mean_accepted,"
                   "accept_rate,steps,zero_share,identical\n");
    int32_t *want = malloc(sizeof(int32_t) * (size_t)n_gen),
            *got = malloc(sizeof(int32_t) * (size_t)n_gen);
    size_t nd = quick ? 2 : sizeof drafters / sizeof drafters[0];
    size_t ns = quick ? 3 : sizeof shapes / sizeof shapes[0];
    double best = 0;
    char best_cfg[160] = "";
    printf("%-5s %-8s %-22s %-11s %-5s %8s %8s %6s %7s\n", "temp", "prompt", "drafter", "tree",
           "adapt", "tok/s", "speedup", "acc.len", "0-steps");
    for (int ti = 0; ti < 2; ti++) {
        sample_params sp = {ti ? 0.8f : 0.0f, 0, ti ? 0.95f : 1.0f, 1234};
        double sum_speedup[16][16][2] = {{{0}}};
        for (size_t p = 0; p < sizeof prompts / sizeof prompts[0]; p++) {
            int32_t ids[1024];
            size_t n;
            if (tok_encode(tk, prompts[p].text, strlen(prompts[p].text), TOK_PARSE_SPECIAL, ids,
                           1024, &n)) {
                fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
                return 1;
            }
            spec_config c = {.target = m,
                             .sp = sp,
                             .n_predict = n_gen,
                             .max_nodes = 64,
                             .n_eog = 0,
                             .on_token = put};
            draft_opts o = {.max_ctx = 2048, .max_nodes = 64, .temp = sp.temp, .seed = sp.seed};
            tree_shape_parse(&c.shape, "chain:1", 64);
            sink base = {want, 0, n_gen}, out = {got, 0, n_gen};
            /* the baseline is the best of 3 runs: noise can only make speedups smaller */
            double btps = 0;
            for (int rep = 0; rep < 3; rep++) {
                spec_stats bst;
                double t;
                if (run_one(&c, NULL, &o, ids, (int)n, &base, NULL, 0, &bst, &t) < 0)
                    return 1;
                btps = t > btps ? t : btps;
            }
            int n_want = base.n;
            printf("%-5.1f %-8s %-22s %-11s %-5s %8.1f %8s %6s\n", sp.temp, prompts[p].name,
                   "(target)", "-", "-", btps, "1.00x", "-");
            for (size_t d = 0; d < nd; d++)
                for (size_t s = 0; s < ns; s++) {
                    if (tree_shape_parse(&c.shape, shapes[s], 64)) {
                        fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
                        return 1;
                    }
                    /* per mode: best of 2 runs, each with a fresh drafter, the modes interleaved
                     * (off, on, off, on) so drift hits both alike; every output is checked */
                    spec_stats st[2];
                    double tps[2] = {0, 0};
                    int same = 1;
                    memset(st, 0, sizeof st);
                    for (int rep = 0; rep < 2; rep++)
                        for (int ad = 0; ad < 2; ad++) {
                            spec_stats r1;
                            double t;
                            c.adaptive = ad;
                            int ok = run_one(&c, drafters[d], &o, ids, (int)n, &out, want, n_want,
                                             &r1, &t);
                            if (ok < 0)
                                return 1;
                            same &= ok;
                            if (t > tps[ad]) {
                                tps[ad] = t;
                                st[ad] = r1;
                            }
                        }
                    mismatches += !same;
                    for (int ad = 0; ad < 2; ad++) {
                        double up = tps[ad] / btps;
                        double acc = st[ad].n_steps ? (double)st[ad].accepted / st[ad].n_steps : 0;
                        double zero =
                            st[ad].n_steps ? (double)st[ad].zero_steps / st[ad].n_steps : 0;
                        sum_speedup[d][s][ad] += up;
                        printf("%-5.1f %-8s %-22s %-11s %-5s %8.1f %7.2fx %6.2f %6.0f%%%s\n",
                               sp.temp, prompts[p].name, drafters[d], shapes[s], ad ? "on" : "off",
                               tps[ad], up, acc, 100 * zero, same ? "" : "  OUTPUT DIFFERS");
                        if (f)
                            fprintf(f,
                                    "%.1f,%s,\"%s\",\"%s\",%d,%.2f,%.2f,%.3f,%.3f,%.3f,%d,%.3f,"
                                    "%d\n",
                                    sp.temp, prompts[p].name, drafters[d], shapes[s], ad, tps[ad],
                                    btps, up, acc,
                                    st[ad].proposed ? (double)st[ad].accepted / st[ad].proposed
                                                    : 0.0,
                                    st[ad].n_steps, zero, same);
                    }
                    fflush(stdout);
                }
        }
        for (size_t d = 0; d < nd; d++)
            for (size_t s = 0; s < ns; s++)
                for (int ad = 0; ad < 2; ad++) {
                    double mean =
                        sum_speedup[d][s][ad] / (double)(sizeof prompts / sizeof prompts[0]);
                    if (ti == 0 && mean > best) {
                        best = mean;
                        snprintf(best_cfg, sizeof best_cfg, "--draft %s --tree %s%s", drafters[d],
                                 shapes[s], ad ? "" : " --no-adapt");
                    }
                }
    }
    printf("\nbest at temperature 0 (mean speedup over the prompts): %s  %.2fx\n", best_cfg, best);
    if (f) {
        fclose(f);
        fprintf(stderr, "bench_spec: wrote %s\n", csv);
    }
    free(want);
    free(got);
harm:;
    int harm = harm_check(m, tk, &bo, &mismatches);
    if (harm < 0)
        return 1;
    printf("\ndo no harm (adaptive >= 0.95x target-only decode tokens per CPU second, median, in "
           "every cell): %s\n",
           harm ? "FAILED" : "met");
    printf("outputs identical to target-only: %s\n", mismatches ? "NO" : "all");
    tok_free(tk);
    model_free(m);
    kern_free(be);
    return mismatches || harm ? 1 : 0;
}
