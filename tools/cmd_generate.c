/* specd generate: tokenize a prompt (optionally through the model's chat template) and generate,
 * target-only or speculatively (--draft), streaming text to stdout; statistics go to stderr.
 * --compare also runs target-only on the same prompt, checks the texts are identical and prints
 * the measured speedup. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "../common/log.h"
#include "../common/opt.h"
#include "../engine/model.h"
#include "../engine/sample.h"
#include "../engine/spec.h"
#include "../engine/tok.h"
#include "specd.h"

#define F(x) offsetof(gen_opts, x)
static const opt_def gen_defs[] = {
    {"model", 'm', OPT_STR, F(model), OPT_NOBOUNDS, NULL, "PATH",
     "GGUF model file (default: the cached SmolLM2-135M-Instruct)"},
    {"prompt", 'p', OPT_STR, F(prompt), OPT_NOBOUNDS, NULL, "TEXT", "prompt text (required)"},
    {"n-predict", 'n', OPT_INT, F(n_predict), 1, 1 << 20, "128", "N", "tokens to generate"},
    {"temp", 0, OPT_FLOAT, F(temp), 0, 100, "0", "T", "sampling temperature; 0 = greedy"},
    {"top-k", 0, OPT_INT, F(top_k), 0, 1 << 24, "0", "K", "keep the K most likely tokens; 0 = off"},
    {"top-p", 0, OPT_FLOAT, F(top_p), 1e-6, 1, "1", "P", "nucleus sampling mass; 1 = off"},
    {"seed", 's', OPT_U64, F(seed), OPT_NOBOUNDS, "0", "S",
     "sampling seed: (seed, position) fixes every draw"},
    {"chat", 0, OPT_FLAG, F(chat), OPT_NOBOUNDS, NULL, NULL,
     "wrap the prompt as a user turn in the model's chat template"},
    {"system", 0, OPT_STR, F(system), OPT_NOBOUNDS, NULL, "TEXT",
     "system message for --chat (default: the template's)"},
    {"ctx", 'c', OPT_INT, F(ctx), 0, 1 << 20, "0", "N",
     "context length in tokens; 0 = the model's, at most 4096"},
    {"threads", 't', OPT_INT, F(threads), 0, 1024, "0", "N", "compute threads; 0 = all cores"},
    {"draft", 'd', OPT_STR, F(draft), OPT_NOBOUNDS, "ngram:3:2", "SPEC",
     "drafter: ngram[:N[:M]] | layerskip:LAYERS (e.g. 0-27,29) | model:PATH | none (target only)"},
    {"tree", 0, OPT_STR, F(tree), OPT_NOBOUNDS, "chain:4", "SHAPE",
     "draft tree: chain:K | topk:B1,B2,... | dynamic:NODES"},
    {"verify", 0, OPT_STR, F(verify), OPT_NOBOUNDS, "sample", "MODE",
     "greedy | sample (lossless tree sampling) | specinfer (needs a model drafter)"},
    {"max-nodes", 0, OPT_INT, F(max_nodes), 1, VERIFY_MAX_NODES, "64", "N",
     "largest tree accepted"},
    {"no-adapt", 0, OPT_FLAG, F(no_adapt), OPT_NOBOUNDS, NULL, NULL,
     "speculate the full --tree every step (default: the node budget, and with --mode dsi the "
     "chunks in flight, adapt to measured acceptance and costs, down to plain decoding; same "
     "output)"},
    {"compare", 0, OPT_FLAG, F(compare), OPT_NOBOUNDS, NULL, NULL,
     "also run target-only, check identical output, print the speedup"},
    {"ignore-eos", 0, OPT_FLAG, F(ignore_eos), OPT_NOBOUNDS, NULL, NULL,
     "keep generating past end-of-generation tokens"},
    {"f32-act", 0, OPT_FLAG, F(f32_act), OPT_NOBOUNDS, NULL, NULL,
     "f32 activations in matmuls (exact path; default rounds activations to 8 bits)"},
    {"backend", 0, OPT_STR, F(backend), OPT_NOBOUNDS, "cpu", "NAME",
     "cpu | cuda (the GPU, or the CPU with one log line when there is none) | cuda! (exit 2 "
     "without a GPU)"},
    {"device", 0, OPT_INT, F(device), 0, 1024, "0", "N", "CUDA device for --backend cuda"},
    {"cpu-level", 0, OPT_STR, F(cpu_level), OPT_NOBOUNDS, "best", "LEVEL",
     "cap the CPU kernels: portable | avx2 | avx512 | best (every level gives the same bits)"},
    {"no-pack", 0, OPT_FLAG, F(no_pack), OPT_NOBOUNDS, NULL, NULL,
     "read weights as stored (default: the backend repacks them at load; same output)"},
    {"log-level", 0, OPT_STR, F(log_level), OPT_NOBOUNDS, "warn", "LEVEL",
     "error, warn, info or debug"},
    {"coordinator", 0, OPT_STR, F(coordinator), OPT_NOBOUNDS, NULL, "HOST:PORT",
     "generate through a specd cluster (no local model needed unless --compare)"},
    {"mode", 0, OPT_STR, F(mode), OPT_NOBOUNDS, "si", "MODE",
     "with --coordinator: ar (target only), si, async or dsi"},
    {"timeout", 0, OPT_INT, F(timeout_s), 1, 86400, "600", "S",
     "with --coordinator: give up after S seconds"},
    {"timing", 0, OPT_STR, F(timing), OPT_NOBOUNDS, NULL, "FILE",
     "write when each token arrived (ms) and a summary line to FILE (bench/cluster.sh)"},
    {"tokens-out", 0, OPT_STR, F(tokens_out), OPT_NOBOUNDS, NULL, "FILE",
     "also write the generated token ids to FILE (one line)"},
    {"max-inflight", 0, OPT_INT, F(max_inflight), 0, 16, "0", "N",
     "with --mode dsi: chunks in flight on different workers (0 = the coordinator's default)"},
};
#undef F
#define N_DEFS (sizeof gen_defs / sizeof gen_defs[0])

/* Where generated tokens go: printed as text (tk set) and/or kept (keep set, for --compare);
 * with timing set, each token's arrival in ms since t0 (in-process generation; the cluster
 * client times whole token events itself, tools/net_client.c). */
typedef struct {
    const tok *tk;
    FILE *timing;
    double t0;
    int keep;
    int32_t *ids;
    int n, cap;
} gen_sink;

static int sink_token(void *ud, int32_t t)
{
    gen_sink *s = ud;
    const char *bytes;
    size_t len;
    if (s->timing) /* before the text is written: the arrival, not the arrival plus printing */
        fprintf(s->timing, "%.3f 1\n", (clock_now_s() - s->t0) * 1e3);
    if (s->tk && !tok_is_special(s->tk, t) && tok_piece(s->tk, t, &bytes, &len) == SD_OK) {
        fwrite(bytes, 1, len, stdout); /* control tokens are not printed */
        fflush(stdout);
    }
    if (!s->keep)
        return 0;
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 256;
        int32_t *p = realloc(s->ids, sizeof(int32_t) * (size_t)cap);
        if (!p)
            return 1;
        s->ids = p;
        s->cap = cap;
    }
    s->ids[s->n++] = t;
    return 0;
}

static int fail(const char *what, sd_err e)
{
    fprintf(stderr, "specd generate: %s: %s\n", what, *sd_errmsg() ? sd_errmsg() : sd_strerror(e));
    return 1;
}

FILE *timing_open(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "specd generate: --timing %s: %s\n", path, strerror(errno));
        return NULL;
    }
    fprintf(f, "# specd generate --timing: one line per token arrival (in-process) or per token "
               "event (cluster): ms since generation began (in-process) or since the request was "
               "sent (cluster), tokens\n");
    return f;
}

int cmd_generate(int argc, char **argv)
{
    gen_opts o = {0};
    opt_defaults(gen_defs, N_DEFS, &o);
    sd_err e = opt_parse(gen_defs, N_DEFS, &o, argc, argv);
    if (e == SD_ECANCELED) {
        printf("usage: specd generate --prompt TEXT [options]\n\n");
        opt_usage(stdout, gen_defs, N_DEFS);
        return 0;
    }
    if (e) {
        fprintf(stderr, "specd generate: %s\n(see specd generate --help)\n", sd_errmsg());
        return 2;
    }
    if (!o.prompt) {
        fprintf(stderr, "specd generate: --prompt is required (see specd generate --help)\n");
        return 2;
    }
    int lvl = log_level_parse(o.log_level);
    if (lvl < 0) {
        fprintf(stderr, "specd generate: --log-level '%s': use error, warn, info or debug\n",
                o.log_level);
        return 2;
    }
    log_set_role("generate");
    log_set_level((log_level)lvl);
    if (o.coordinator && !o.compare)
        return cli_remote_generate(&o, NULL, NULL);
    if (!o.model)
        o.model = cli_default_model();

    kern_cpu_level cpu_level;
    if (kern_cpu_level_parse(o.cpu_level, &cpu_level) != SD_OK) {
        fprintf(stderr, "specd generate: --cpu-level: %s\n", sd_errmsg());
        return 2;
    }
    unsigned kflags = (o.f32_act ? KERN_CPU_F32_ACT : 0u) | KERN_CPU_LEVEL(cpu_level);
    kern_backend *be = NULL;
    if ((e = kern_backend_open(&be, o.backend, o.device, o.threads, kflags))) {
        fprintf(stderr, "specd generate: --backend %s: %s\n", o.backend, sd_errmsg());
        return e == SD_EUNSUPPORTED || e == SD_EINVAL ? 2 : 1;
    }
    model_opts mo = {
        .n_threads = o.threads, .kern_flags = kflags, .backend = be, .no_pack = o.no_pack};
    model *m = NULL;
    tok *tk = NULL;
    draft *dr = NULL;
    int32_t *ids = NULL;
    gen_sink out_sink = {0}; /* before any goto out: its buffer is freed there */
    int rc = 1;
    if ((e = model_open(&m, o.model, &mo))) {
        fprintf(stderr, "specd generate: cannot load model '%s': %s\n", o.model, sd_errmsg());
        if (!o.model || !strcmp(o.model, cli_default_model()))
            fprintf(stderr, "(fetch the default model with scripts/fetch-model.sh, or pass "
                            "--model PATH)\n");
        kern_free(be);
        return 1;
    }
    const model_config *c = model_cfg(m);
    int V = c->n_vocab;
    LOG_INFO("generate", "backend %s, numerics %s", model_backend(m)->name,
             model_backend(m)->numerics);
    int ctx = o.ctx ? o.ctx : (c->n_ctx_train < 4096 ? c->n_ctx_train : 4096);
    sample_params sp = {o.temp, o.top_k, o.top_p, (uint64_t)o.seed};
    size_t n_prompt = 0;
    if ((e = sample_params_check(&sp))) {
        rc = fail("sampling", e);
        goto out;
    }
    if ((e = tok_load(&tk, model_gguf(m)))) {
        rc = fail("tokenizer", e);
        goto out;
    }
    int32_t eog[2] = {tok_eos(tk), tok_eot(tk)};
    if (tok_n_vocab(tk) != V) {
        fprintf(stderr, "specd generate: tokenizer has %d tokens, model %d\n", tok_n_vocab(tk), V);
        goto out;
    }
    if ((e = tok_encode_prompt(tk, o.prompt, o.system, o.chat, &ids, &n_prompt))) {
        rc = fail("prompt", e);
        goto out;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "specd generate: the prompt encodes to no tokens\n");
        goto out;
    }
    if (n_prompt >= (size_t)ctx) {
        fprintf(stderr, "specd generate: the prompt is %zu tokens; the context is %d (--ctx)\n",
                n_prompt, ctx);
        goto out;
    }
    int n_gen = o.n_predict;
    if ((size_t)n_gen > (size_t)ctx - n_prompt) {
        n_gen = ctx - (int)n_prompt;
        LOG_WARN("generate", "only %d tokens fit after the prompt in a context of %d", n_gen, ctx);
    }
    verify_mode vm = VERIFY_SAMPLE;
    if (!strcmp(o.verify, "greedy")) {
        if (o.temp != 0) {
            fprintf(stderr, "specd generate: --verify greedy needs --temp 0\n");
            goto out;
        }
    } else if (!strcmp(o.verify, "specinfer")) {
        vm = VERIFY_SPECINFER;
    } else if (strcmp(o.verify, "sample")) {
        fprintf(stderr, "specd generate: --verify '%s': use greedy, sample or specinfer\n",
                o.verify);
        goto out;
    }
    out_sink.tk = tk;
    out_sink.keep = o.compare || o.tokens_out;
    spec_config sc = {.target = m,
                      .vmode = vm,
                      .sp = sp,
                      .n_predict = n_gen,
                      .max_nodes = o.max_nodes,
                      .adaptive = !o.no_adapt,
                      .n_ctx = ctx,
                      .eog = eog,
                      .on_token = sink_token,
                      .ud = &out_sink};
    if (o.ignore_eos)
        sc.n_eog = 0;
    else
        sc.n_eog = eog[1] >= 0 && eog[1] != eog[0] ? 2 : 1;
    if ((e = tree_shape_parse(&sc.shape, o.tree, o.max_nodes))) {
        rc = fail("--tree", e);
        goto out;
    }
    if (strcmp(o.draft, "none") && !o.coordinator) {
        draft_opts dop = {.max_ctx = ctx,
                          .max_nodes = o.max_nodes,
                          .sample_children = vm == VERIFY_SPECINFER && o.temp > 0,
                          .temp = o.temp,
                          .seed = o.seed};
        if ((e = draft_open(&dr, o.draft, m, &dop))) {
            rc = fail("--draft", e);
            goto out;
        }
        sc.drafter = dr;
    }
    spec_stats st, base;
    if (o.coordinator) { /* --compare: the cluster's output against local target-only */
        if (cli_remote_generate(&o, sink_token, &out_sink))
            goto out;
        memset(&st, 0, sizeof st);
    } else {
        if (o.timing && !(out_sink.timing = timing_open(o.timing)))
            goto out;
        out_sink.t0 = clock_now_s();
        if ((e = spec_generate(&sc, ids, (int)n_prompt, &st))) {
            rc = fail("generation", e);
            goto out;
        }
        printf("\n");
        fflush(stdout);
        spec_stats_print(&st, dr ? dr->kind : "target");
        if (out_sink.timing) {
            fprintf(out_sink.timing,
                    "# summary where=local n_prompt=%d n_gen=%d steps=%d prefill_ms=%.3f "
                    "total_ms=%.3f draft_ms=%.3f verify_ms=%.3f proposed=%ld accepted=%ld\n",
                    st.n_prompt, st.n_gen, st.n_steps, st.t_prefill * 1e3, st.t_total * 1e3,
                    st.t_draft * 1e3, st.t_verify * 1e3, st.proposed, st.accepted);
            int bad = fclose(out_sink.timing) != 0;
            out_sink.timing = NULL;
            if (bad) {
                fprintf(stderr, "specd generate: --timing %s: write failed\n", o.timing);
                goto out;
            }
        }
    }
    if (o.compare) {
        gen_sink ref = {.keep = 1};
        sc.drafter = NULL;
        sc.ud = &ref;
        if ((e = spec_generate(&sc, ids, (int)n_prompt, &base))) {
            rc = fail("target-only run", e);
            free(ref.ids);
            goto out;
        }
        spec_stats_print(&base, "target");
        int same =
            out_sink.n == ref.n && !memcmp(out_sink.ids, ref.ids, sizeof(int32_t) * (size_t)ref.n);
        double a = st.n_gen / (st.t_total - st.t_prefill),
               b = base.n_gen / (base.t_total - base.t_prefill);
        if (o.coordinator)
            fprintf(stderr, "[compare] cluster output %s local target-only (%d vs %d tokens)\n",
                    same ? "identical to" : "DIFFERS from", out_sink.n, ref.n);
        else
            fprintf(stderr,
                    "[compare] output %s target-only (%d vs %d tokens); speedup %.2fx "
                    "(%.1f vs %.1f tok/s)\n",
                    same ? "identical to" : "DIFFERS from", out_sink.n, ref.n, a / b, a, b);
        free(ref.ids);
        if (!same)
            goto out;
    }
    rc = o.tokens_out ? cli_write_tokens(o.tokens_out, out_sink.ids, out_sink.n) : 0;
out:
    if (out_sink.timing)
        fclose(out_sink.timing);
    free(ids);
    free(out_sink.ids);
    draft_free(dr);
    tok_free(tk);
    model_free(m);
    kern_free(be);
    return rc;
}

int cli_write_tokens(const char *path, const int32_t *ids, int n)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "specd generate: --tokens-out %s: cannot write\n", path);
        return 1;
    }
    for (int i = 0; i < n; i++)
        fprintf(f, i ? " %d" : "%d", ids[i]);
    fprintf(f, "\n");
    return fclose(f) ? 1 : 0;
}

#ifndef SPECD_NET
int cli_remote_generate(const gen_opts *o, int (*on_token)(void *ud, int32_t tok), void *ud)
{
    fprintf(stderr, "specd generate: --coordinator: this build has no distributed runtime (gRPC, "
                    "protobuf-c and UCX were not found at build time)\n");
    return 2;
}
#endif
