/* bench/spec: speculative vs target-only decoding on a model, measured in the same run, for
 * each drafter x tree shape x prompt kind x temperature (target-only: best of 3 runs; each
 * speculative configuration: best of 2, a fresh drafter each). Prints a table of tokens/s,
 * speedup and mean accepted length, checks every output is identical to target-only, and writes
 * CSV.
 *
 *   bench_spec --model PATH [-n TOKENS] [--threads N] [--csv FILE] [--quick]   (--help) */
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

static const char *drafters[] = {"ngram:3", "ngram:2", "ngram:3:2", "layerskip:0-27,29"};
static const char *shapes[] = {"chain:2",    "chain:4",    "chain:8",   "topk:2,2,1",
                               "topk:4,2,1", "dynamic:16", "dynamic:32"};

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
    const char *model, *csv;
    int n_gen, threads, quick;
} bench_opts;

#define F(x) offsetof(bench_opts, x)
static const opt_def bench_defs[] = {
    {"model", 'm', OPT_STR, F(model), OPT_NOBOUNDS, NULL, "PATH", "GGUF model (required)"},
    {"n-predict", 'n', OPT_INT, F(n_gen), 8, 2048, "96", "N", "tokens generated per run"},
    {"threads", 't', OPT_INT, F(threads), 0, 1024, "0", "N", "compute threads; 0 = all cores"},
    {"csv", 0, OPT_STR, F(csv), OPT_NOBOUNDS, "bench/out/spec.csv", "FILE", "CSV output"},
    {"quick", 0, OPT_FLAG, F(quick), OPT_NOBOUNDS, NULL, NULL, "2 drafters x 3 trees only"},
};
#undef F

int main(int argc, char **argv)
{
    bench_opts bo = {0};
    opt_defaults(bench_defs, 5, &bo);
    sd_err e = opt_parse(bench_defs, 5, &bo, argc - 1, argv + 1);
    if (e || !bo.model) {
        if (e != SD_ECANCELED)
            fprintf(stderr, "bench_spec: %s\n", e ? sd_errmsg() : "--model is required");
        printf("usage: bench_spec --model PATH [options]\n");
        opt_usage(stdout, bench_defs, 5);
        return e == SD_ECANCELED ? 0 : 2;
    }
    const char *path = bo.model, *csv = bo.csv;
    int n_gen = bo.n_gen, threads = bo.threads, quick = bo.quick;
    model_opts mo = {.n_threads = threads};
    model *m;
    tok *tk;
    if (model_open(&m, path, &mo) || tok_load(&tk, model_gguf(m))) {
        fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
        return 1;
    }
    FILE *f = fopen(csv, "w");
    if (!f)
        fprintf(stderr, "bench_spec: cannot write %s (create the folder?)\n", csv);
    else
        fprintf(f, "temp,prompt,drafter,tree,tok_s,target_tok_s,speedup,mean_accepted,"
                   "accept_rate,steps,identical\n");
    int32_t eog[2] = {tok_eos(tk), tok_eot(tk)};
    int32_t *want = malloc(sizeof(int32_t) * (size_t)n_gen),
            *got = malloc(sizeof(int32_t) * (size_t)n_gen);
    size_t nd = quick ? 2 : sizeof drafters / sizeof drafters[0];
    size_t ns = quick ? 3 : sizeof shapes / sizeof shapes[0];
    double best = 0;
    char best_cfg[128] = "";
    int mismatches = 0;
    printf("%-5s %-8s %-22s %-11s %8s %8s %6s\n", "temp", "prompt", "drafter", "tree", "tok/s",
           "speedup", "acc.len");
    for (int ti = 0; ti < 2; ti++) {
        sample_params sp = {ti ? 0.8f : 0.0f, 0, ti ? 0.95f : 1.0f, 1234};
        double sum_speedup[16][16] = {{0}};
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
                             .eog = eog,
                             .n_eog = 0,
                             .on_token = put};
            tree_shape_parse(&c.shape, "chain:1", 64);
            sink base = {want, 0, n_gen};
            c.ud = &base;
            /* the baseline is the best of 3 runs: noise can only make speedups smaller */
            double btps = 0;
            for (int rep = 0; rep < 3; rep++) {
                spec_stats bst;
                base.n = 0;
                if (spec_generate(&c, ids, (int)n, &bst)) {
                    fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
                    return 1;
                }
                btps = gen_tps(&bst) > btps ? gen_tps(&bst) : btps;
            }
            printf("%-5.1f %-8s %-22s %-11s %8.1f %8s %6s\n", sp.temp, prompts[p].name, "(target)",
                   "-", btps, "1.00x", "-");
            for (size_t d = 0; d < nd; d++)
                for (size_t s = 0; s < ns; s++) {
                    draft_opts o = {
                        .max_ctx = 2048, .max_nodes = 64, .temp = sp.temp, .seed = sp.seed};
                    if (tree_shape_parse(&c.shape, shapes[s], 64)) {
                        fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
                        return 1;
                    }
                    sink out = {got, 0, n_gen};
                    c.ud = &out;
                    /* best of 2 runs, each with a fresh drafter (the baseline's best of 3 still
                     * favours target-only); both runs' outputs are checked */
                    spec_stats st;
                    memset(&st, 0, sizeof st);
                    double tps = 0;
                    int same = 1;
                    for (int rep = 0; rep < 2; rep++) {
                        draft *dr;
                        spec_stats r1;
                        if (draft_open(&dr, drafters[d], m, &o)) {
                            fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
                            return 1;
                        }
                        c.drafter = dr;
                        out.n = 0;
                        sd_err e = spec_generate(&c, ids, (int)n, &r1);
                        c.drafter = NULL;
                        draft_free(dr);
                        if (e) {
                            fprintf(stderr, "bench_spec: %s\n", sd_errmsg());
                            return 1;
                        }
                        same &=
                            out.n == base.n && !memcmp(got, want, sizeof(int32_t) * (size_t)out.n);
                        if (gen_tps(&r1) > tps) {
                            tps = gen_tps(&r1);
                            st = r1;
                        }
                    }
                    mismatches += !same;
                    double sp_up = tps / btps;
                    double acc = st.n_steps ? (double)st.accepted / st.n_steps : 0;
                    sum_speedup[d][s] += sp_up;
                    printf("%-5.1f %-8s %-22s %-11s %8.1f %7.2fx %6.2f%s\n", sp.temp,
                           prompts[p].name, drafters[d], shapes[s], tps, sp_up, acc,
                           same ? "" : "  OUTPUT DIFFERS");
                    fflush(stdout);
                    if (f)
                        fprintf(f, "%.1f,%s,\"%s\",\"%s\",%.2f,%.2f,%.3f,%.3f,%.3f,%d,%d\n",
                                sp.temp, prompts[p].name, drafters[d], shapes[s], tps, btps, sp_up,
                                acc, st.proposed ? (double)st.accepted / st.proposed : 0.0,
                                st.n_steps, same);
                }
        }
        for (size_t d = 0; d < nd; d++)
            for (size_t s = 0; s < ns; s++) {
                double mean = sum_speedup[d][s] / (double)(sizeof prompts / sizeof prompts[0]);
                if (ti == 0 && mean > best) {
                    best = mean;
                    snprintf(best_cfg, sizeof best_cfg, "--draft %s --tree %s", drafters[d],
                             shapes[s]);
                }
            }
    }
    printf("\nbest at temperature 0 (mean speedup over the prompts): %s  %.2fx\n", best_cfg, best);
    printf("outputs identical to target-only: %s\n", mismatches ? "NO" : "all");
    if (f) {
        fclose(f);
        fprintf(stderr, "bench_spec: wrote %s\n", csv);
    }
    free(want);
    free(got);
    tok_free(tk);
    model_free(m);
    return mismatches ? 1 : 0;
}
