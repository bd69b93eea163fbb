/* The CLI's cluster client: `specd generate --coordinator` (a Generate stream) and `specd
 * status`. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "../common/opt.h"
#include "../net/rpc.h"
#include "../net/wire.h"
#include "specd.h"

static int mode_of(const char *s)
{
    static const struct {
        const char *name;
        int mode;
    } modes[] = {{"ar", SPECD__MODE__MODE_AR},
                 {"si", SPECD__MODE__MODE_SI},
                 {"async", SPECD__MODE__MODE_ASYNC},
                 {"dsi", SPECD__MODE__MODE_DSI}};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (!strcmp(s, modes[i].name))
            return modes[i].mode;
    return -1;
}

static const char *mode_name(int m)
{
    static const char *names[] = {"default", "ar", "si", "async", "dsi"};
    return m >= 0 && m <= 4 ? names[m] : "?";
}

static void print_summary(const Specd__SessionSummary *s)
{
    fprintf(stderr,
            "[cluster %s] prompt %d tokens | generated %d tokens in %d steps, %.1f tok/s | first "
            "token %.1f ms | total %.1f ms | stop: %s\n",
            mode_name(s->mode), s->n_prompt, s->n_gen, s->steps, s->tokens_per_s, s->ttft_ms,
            s->total_ms, s->stop_reason ? s->stop_reason : "?");
    if (s->proposed)
        fprintf(stderr,
                "[cluster %s] mean accepted length %.2f | %.1f%% of %lld proposed nodes accepted "
                "| %lld chunks (%lld cancelled), %lld tree hits | chunk round trip %.2f ms\n",
                mode_name(s->mode), s->steps ? (double)s->accepted / s->steps : 0,
                100.0 * (double)s->accepted / (double)s->proposed, (long long)s->proposed,
                (long long)s->chunks, (long long)s->cancelled_chunks, (long long)s->tree_hits,
                s->chunk_rtt_ms_mean);
    else
        fprintf(stderr, "[cluster %s] %lld chunks | chunk round trip %.2f ms\n",
                mode_name(s->mode), (long long)s->chunks, s->chunk_rtt_ms_mean);
    if (s->extends || s->held_commits || s->lookup_misses)
        fprintf(stderr,
                "[cluster %s] drafter: %lld tree extensions (%lld stale, %lld while held) | "
                "held for %lld of %d steps (plain decodes) | not asked on %lld (no n-gram "
                "match)\n",
                mode_name(s->mode), (long long)s->extends, (long long)s->stale_extends,
                (long long)s->held_extends, (long long)s->held_commits, s->steps,
                (long long)s->lookup_misses);
    if (s->worker && *s->worker)
        fprintf(stderr, "[cluster %s] worker(s) %s, drafter %s, numerics %s\n", mode_name(s->mode),
                s->worker, s->drafter && *s->drafter ? s->drafter : "-",
                s->numerics ? s->numerics : "?");
    if (s->chunks)
        fprintf(stderr,
                "[cluster %s] worker compute %.2f ms per chunk; the rest of the round trip %.1f us "
                "(network, queues, waits behind the prompt's prefill); waiting for the drafter "
                "%.1f us per step\n",
                mode_name(s->mode), s->compute_ms_mean,
                (s->chunk_rtt_ms_mean - s->compute_ms_mean) * 1e3, s->draft_wait_ms_mean * 1e3);
    for (size_t i = 0; i < s->n_events; i++)
        fprintf(stderr, "[cluster] event: %s\n", s->events[i]);
}

int cli_remote_generate(const gen_opts *o, int (*on_token)(void *ud, int32_t tok), void *ud)
{
    int mode = mode_of(o->mode);
    if (mode < 0) {
        fprintf(stderr, "specd generate: --mode '%s': use ar, si, async or dsi\n", o->mode);
        return 2;
    }
    Specd__GenerateRequest q = SPECD__GENERATE_REQUEST__INIT;
    Specd__SamplingParams sp = SPECD__SAMPLING_PARAMS__INIT;
    sp.temp = o->temp;
    sp.top_k = o->top_k;
    sp.top_p = o->top_p;
    sp.seed = o->seed;
    q.prompt = (char *)o->prompt;
    q.chat = o->chat;
    q.system = (char *)(o->system ? o->system : "");
    q.n_predict = o->n_predict;
    q.sampling = &sp;
    q.mode = mode;
    q.draft = (char *)o->draft;
    q.tree = (char *)o->tree;
    q.max_nodes = o->max_nodes;
    q.ignore_eos = o->ignore_eos;
    q.max_inflight = o->max_inflight;
    q.no_adapt = o->no_adapt;
    uint8_t *b;
    size_t len;
    FILE *timing = NULL;
    if (wire_pack(&q.base, &b, &len))
        return 1;
    if (o->timing && !(timing = timing_open(o->timing))) {
        free(b);
        return 1;
    }
    double t0 = clock_now_s();
    rpc_global_init();
    rpc_client *c = NULL;
    rpc_call *call = NULL;
    int rc = 1, got_summary = 0, n_ids = 0, cap_ids = 0;
    int32_t *ids = NULL; /* --tokens-out without a sink of the caller's */
    if (rpc_client_create(&c, o->coordinator, 0) ||
        rpc_call_stream(c, "/specd.Coordinator/Generate", b, len, o->timeout_s * 1000, 1,
                        &call)) {
        fprintf(stderr, "specd generate: %s: %s\n", o->coordinator, sd_errmsg());
        goto out;
    }
    rpc_buf msg = {0};
    rpc_status st = {0};
    int k;
    while ((k = rpc_call_next(call, &msg, &st)) == 1) {
        ProtobufCMessage *m;
        if (wire_unpack(&specd__generate_event__descriptor, msg.data, msg.len, &m)) {
            fprintf(stderr, "specd generate: bad event from the coordinator: %s\n", sd_errmsg());
            rpc_buf_free(&msg);
            goto out;
        }
        rpc_buf_free(&msg);
        Specd__GenerateEvent *ev = (Specd__GenerateEvent *)m;
        if (ev->ev_case == SPECD__GENERATE_EVENT__EV_TOKENS) {
            if (timing) /* the event's arrival, before anything is printed */
                fprintf(timing, "%.3f %zu\n", (clock_now_s() - t0) * 1e3, ev->tokens->n_tokens);
            if (on_token) {
                for (size_t i = 0; i < ev->tokens->n_tokens; i++)
                    on_token(ud, ev->tokens->tokens[i]);
            } else if (ev->tokens->text) {
                fputs(ev->tokens->text, stdout);
                fflush(stdout);
            }
            for (size_t i = 0; !on_token && o->tokens_out && i < ev->tokens->n_tokens; i++) {
                if (n_ids == cap_ids) {
                    cap_ids = cap_ids ? 2 * cap_ids : 256;
                    int32_t *p = realloc(ids, sizeof(int32_t) * (size_t)cap_ids);
                    if (!p)
                        break;
                    ids = p;
                }
                ids[n_ids++] = ev->tokens->tokens[i];
            }
        } else if (ev->ev_case == SPECD__GENERATE_EVENT__EV_SUMMARY) {
            printf("\n");
            fflush(stdout);
            print_summary(ev->summary);
            got_summary = 1;
            const Specd__SessionSummary *sm = ev->summary;
            if (timing)
                fprintf(timing,
                        "# summary where=cluster mode=%s n_prompt=%d n_gen=%d steps=%d "
                        "ttft_ms=%.3f total_ms=%.3f tokens_per_s=%.3f chunks=%lld "
                        "chunk_rtt_ms_mean=%.4f compute_ms_mean=%.4f draft_wait_ms_mean=%.4f "
                        "proposed=%lld accepted=%lld\n",
                        mode_name(sm->mode), sm->n_prompt, sm->n_gen, sm->steps, sm->ttft_ms,
                        sm->total_ms, sm->tokens_per_s, (long long)sm->chunks,
                        sm->chunk_rtt_ms_mean, sm->compute_ms_mean, sm->draft_wait_ms_mean,
                        (long long)sm->proposed, (long long)sm->accepted);
        }
        protobuf_c_message_free_unpacked(m, NULL);
    }
    if (k < 0) {
        fprintf(stderr, "specd generate: %s\n", sd_errmsg());
    } else if (st.code != RPC_OK) {
        fprintf(stderr, "\nspecd generate: the coordinator ended the request: %s: %s\n",
                rpc_code_name(st.code), st.msg);
        rc = st.code == RPC_INVALID_ARGUMENT || st.code == RPC_OUT_OF_RANGE ? 2 : 1;
    } else {
        rc = got_summary ? 0 : 1;
        if (!rc && !on_token && o->tokens_out)
            rc = cli_write_tokens(o->tokens_out, ids, n_ids);
    }
out:
    if (timing && fclose(timing) != 0) {
        fprintf(stderr, "specd generate: --timing %s: write failed\n", o->timing);
        rc = 1;
    }
    free(ids);
    free(b);
    rpc_call_free(call);
    rpc_client_free(c);
    rpc_global_shutdown();
    return rc;
}

typedef struct {
    const char *coordinator;
    int timeout_s;
} status_opts;

#define F(x) offsetof(status_opts, x)
static const opt_def status_defs[] = {
    {"coordinator", 0, OPT_STR, F(coordinator), OPT_NOBOUNDS, "127.0.0.1:7700", "HOST:PORT",
     "the coordinator to ask"},
    {"timeout", 0, OPT_INT, F(timeout_s), 1, 3600, "5", "S", "give up after S seconds"},
};
#undef F

int cmd_status(int argc, char **argv)
{
    status_opts o = {0};
    size_t nd = sizeof status_defs / sizeof status_defs[0];
    opt_defaults(status_defs, nd, &o);
    sd_err e = opt_parse(status_defs, nd, &o, argc, argv);
    if (e == SD_ECANCELED) {
        printf("usage: specd status [--coordinator HOST:PORT]\n\n");
        opt_usage(stdout, status_defs, nd);
        return 0;
    }
    if (e) {
        fprintf(stderr, "specd status: %s\n", sd_errmsg());
        return 2;
    }
    rpc_global_init();
    rpc_client *c = NULL;
    rpc_buf resp = {0};
    rpc_status st = {0};
    int rc = 1;
    if (rpc_client_create(&c, o.coordinator, 0) ||
        rpc_call_unary(c, "/specd.Coordinator/Status", NULL, 0, o.timeout_s * 1000, 0, &resp,
                       &st)) {
        fprintf(stderr, "specd status: %s: %s\n", o.coordinator, sd_errmsg());
        goto out;
    }
    if (st.code != RPC_OK) {
        fprintf(stderr, "specd status: %s: %s: %s\n", o.coordinator, rpc_code_name(st.code),
                st.msg);
        goto out;
    }
    ProtobufCMessage *m;
    if (wire_unpack(&specd__status_reply__descriptor, resp.data, resp.len, &m)) {
        fprintf(stderr, "specd status: %s\n", sd_errmsg());
        goto out;
    }
    Specd__StatusReply *r = (Specd__StatusReply *)m;
    printf("coordinator %s (%s), model %s\n", o.coordinator, r->version, r->model);
    printf("sessions: %zu running, %lld done, %lld failed\n", r->n_sessions,
           (long long)r->sessions_done, (long long)r->sessions_failed);
    printf("\n%-8s %-28s %-22s %-9s %-8s %-9s %-9s %s\n", "kind", "id", "address", "sessions",
           "seen ms", "forwards", "batched", "numerics / mean batch / verified tokens");
    for (size_t i = 0; i < r->n_nodes; i++) {
        Specd__NodeStatus *n = r->nodes[i];
        int w = n->kind == SPECD__NODE_KIND__NODE_WORKER;
        printf("%-8s %-28s %-22s %4d/%-4d %-8.0f %-9lld %-9lld %s", w ? "worker" : "drafter",
               n->id, n->addr, n->sessions, n->max_sessions, n->last_seen_ms,
               (long long)n->forwards, (long long)n->batched_forwards, w ? n->numerics : "-");
        if (w)
            printf(" / %.2f / %lld", n->mean_batch_seqs, (long long)n->verified_tokens);
        printf("\n");
    }
    if (r->n_sessions)
        printf("\n%-20s %-6s %-7s %-11s %-9s %-10s %s\n", "session", "mode", "tokens",
               "acceptance", "tok/s", "rtt ms", "worker / drafter");
    for (size_t i = 0; i < r->n_sessions; i++) {
        Specd__SessionStatus *s = r->sessions[i];
        printf("%-20llu %-6s %-7d %-11.2f %-9.1f %-10.2f %s / %s\n", (unsigned long long)s->id,
               mode_name(s->mode), s->n_gen, s->acceptance, s->tokens_per_s,
               s->chunk_rtt_ms_mean, s->worker, *s->drafter ? s->drafter : "-");
    }
    protobuf_c_message_free_unpacked(m, NULL);
    rc = 0;
out:
    rpc_buf_free(&resp);
    rpc_client_free(c);
    rpc_global_shutdown();
    return rc;
}
