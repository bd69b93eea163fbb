/* specd generate: tokenize a prompt (optionally through the model's chat template), prefill it,
 * then decode token by token, streaming text to stdout; statistics go to stderr. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/log.h"
#include "../common/opt.h"
#include "../engine/model.h"
#include "../engine/sample.h"
#include "../engine/tok.h"
#include "specd.h"

typedef struct {
    const char *model, *prompt, *system, *log_level;
    int n_predict, threads, ctx, chat, f32_act, portable, ignore_eos, top_k;
    float temp, top_p;
    unsigned long long seed;
} gen_opts;

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
    {"ignore-eos", 0, OPT_FLAG, F(ignore_eos), OPT_NOBOUNDS, NULL, NULL,
     "keep generating past end-of-generation tokens"},
    {"f32-act", 0, OPT_FLAG, F(f32_act), OPT_NOBOUNDS, NULL, NULL,
     "f32 activations in matmuls (exact path; default rounds activations to 8 bits)"},
    {"portable", 0, OPT_FLAG, F(portable), OPT_NOBOUNDS, NULL, NULL,
     "plain-C kernels only, whatever the CPU supports"},
    {"log-level", 0, OPT_STR, F(log_level), OPT_NOBOUNDS, "warn", "LEVEL",
     "error, warn, info or debug"},
};
#undef F
#define N_DEFS (sizeof gen_defs / sizeof gen_defs[0])

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int fail(const char *what, sd_err e)
{
    fprintf(stderr, "specd generate: %s: %s\n", what, *sd_errmsg() ? sd_errmsg() : sd_strerror(e));
    return 1;
}

/* Tokenize the prompt (raw, or as a chat turn). *ids is malloc'd. */
static sd_err encode_prompt(const tok *tk, const gen_opts *o, int32_t **ids, size_t *n)
{
    size_t cap = strlen(o->prompt) + (o->system ? strlen(o->system) : 0) + 256;
    *ids = malloc(sizeof(int32_t) * cap);
    if (!*ids)
        return SD_ENOMEM;
    sd_err e;
    if (o->chat) {
        tok_chat_msg msgs[2];
        size_t nm = 0;
        if (o->system)
            msgs[nm++] = (tok_chat_msg){"system", o->system};
        msgs[nm++] = (tok_chat_msg){"user", o->prompt};
        e = tok_chat_encode(tk, msgs, nm, TOK_CHAT_ADD_ASSISTANT, *ids, cap, n);
    } else {
        e = tok_encode(tk, o->prompt, strlen(o->prompt),
                       TOK_PARSE_SPECIAL | (tok_wants_bos(tk) ? TOK_ADD_BOS : 0), *ids, cap, n);
    }
    return e;
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
    if (!o.model)
        o.model = cli_default_model();

    model_opts mo = {.n_threads = o.threads,
                     .kern_flags = (o.f32_act ? KERN_CPU_F32_ACT : 0u) |
                                   (o.portable ? KERN_CPU_PORTABLE : 0u)};
    model *m = NULL;
    tok *tk = NULL;
    kv_cache *kv = NULL;
    model_run *run = NULL;
    sample_work *sw = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    int rc = 1;
    if ((e = model_open(&m, o.model, &mo))) {
        fprintf(stderr, "specd generate: cannot load model '%s': %s\n", o.model, sd_errmsg());
        if (!o.model || !strcmp(o.model, cli_default_model()))
            fprintf(stderr, "(fetch the default model with scripts/fetch-model.sh, or pass "
                            "--model PATH)\n");
        return 1;
    }
    const model_config *c = model_cfg(m);
    int V = c->n_vocab;
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
    if (tok_n_vocab(tk) != V) {
        fprintf(stderr, "specd generate: tokenizer has %d tokens, model %d\n", tok_n_vocab(tk), V);
        goto out;
    }
    if ((e = encode_prompt(tk, &o, &ids, &n_prompt))) {
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
    logits = malloc(sizeof(float) * (size_t)V);
    if (!logits || (e = model_kv_init(m, &kv, ctx)) || (e = model_run_init(&run, m, 256)) ||
        (e = sample_work_init(&sw, V))) {
        rc = fail("allocating", e ? e : SD_ENOMEM);
        goto out;
    }

    double t0 = now();
    if ((e = model_forward(m, run, kv, ids, NULL, (int)n_prompt, NULL, 1, logits)) ||
        (e = kv_commit_all(kv))) {
        rc = fail("prefill", e);
        goto out;
    }
    double t_prefill = now() - t0, t1 = now();
    int produced = 0; /* the first token comes from the prefill's logits */
    for (;;) {
        int32_t t = sample_token(sw, logits, V, &sp, (uint64_t)kv->n_committed);
        if (!o.ignore_eos && tok_is_eog(tk, t))
            break;
        const char *bytes;
        size_t len;
        if (!tok_is_special(tk, t) && tok_piece(tk, t, &bytes, &len) == SD_OK) {
            fwrite(bytes, 1, len, stdout);
            fflush(stdout);
        }
        if (++produced == n_gen)
            break;
        if ((e = model_forward(m, run, kv, &t, NULL, 1, NULL, 1, logits)) ||
            (e = kv_commit_all(kv))) {
            rc = fail("decode", e);
            goto out;
        }
    }
    double t_decode = now() - t1;
    printf("\n");
    fprintf(stderr,
            "\nprompt: %zu tokens, %.1f tok/s prefill | generated: %d tokens, %.1f tok/s decode | "
            "%s, %s\n",
            n_prompt, (double)n_prompt / t_prefill, produced,
            produced > 1 ? (double)(produced - 1) / t_decode : 0.0, c->arch,
            model_backend(m)->name);
    rc = 0;
out:
    free(ids);
    free(logits);
    sample_work_free(sw);
    model_run_free(run);
    kv_free(kv);
    tok_free(tk);
    model_free(m);
    return rc;
}
