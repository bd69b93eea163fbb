#include "spec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/clock.h"
#include "../common/log.h"

static double cpu_now_s(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts))
        return 0;
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int is_eog(const spec_config *c, int32_t t)
{
    for (int i = 0; i < c->n_eog; i++)
        if (c->eog[i] == t)
            return 1;
    return 0;
}

sd_err spec_generate(const spec_config *c, const int32_t *prompt, int n, spec_stats *st)
{
    memset(st, 0, sizeof *st);
    st->n_prompt = n;
    if (n <= 0)
        return sd_fail(SD_EINVAL, "empty prompt");
    if (c->n_predict <= 0)
        return SD_OK;
    int max_nodes = c->drafter ? c->max_nodes : 0;
    int ctx = c->n_ctx ? c->n_ctx : n + c->n_predict + max_nodes + 1;
    if (n >= ctx)
        return sd_fail(SD_ERANGE, "the prompt is %d tokens; the context is %d", n, ctx);
    kv_cache *kv = NULL;
    model_run *run = NULL;
    verify_work *vw = NULL;
    tree t = {0};
    int32_t *commit = malloc(sizeof(int32_t) * (VERIFY_MAX_NODES + 1));
    verify_result *res = malloc(sizeof *res);
    sd_err e = commit && res ? SD_OK : SD_ENOMEM;
    if (!e)
        e = model_kv_init(c->target, &kv, ctx);
    if (!e)
        e = model_run_init(&run, c->target, 128);
    if (!e)
        e = verify_work_init(&vw, c->target, max_nodes > 0 ? max_nodes : 1);
    if (!e)
        e = tree_init(&t, max_nodes > 0 ? max_nodes : 1, (max_nodes + 1) * DRAFT_Q_TOP);
    /* the controller: one per run, i.e. per session */
    adapt *ad = NULL;
    if (!e && c->drafter && c->adaptive && max_nodes > 0) {
        adapt_config ac;
        adapt_config_defaults(&ac, max_nodes);
        adapt_config_shape(&ac, &c->shape, max_nodes);
        ad = malloc(sizeof *ad);
        e = ad ? adapt_init(ad, &ac) : SD_ENOMEM;
    }
    double t0 = clock_now_s(), c0 = cpu_now_s();
    if (!e && n > 1) {
        e = model_forward(c->target, run, kv, prompt, NULL, n - 1, NULL, 0, NULL);
        if (!e)
            e = kv_commit_all(kv);
    }
    if (!e && c->drafter)
        e = draft_advance(c->drafter, prompt, n);
    st->t_prefill = clock_now_s() - t0;
    st->c_prefill = cpu_now_s() - c0;
    int32_t last = prompt[n - 1];
    int done = 0;
    while (!e && !done) {
        double t1 = clock_now_s();
        tree_clear(&t);
        int budget = c->drafter ? max_nodes : 0, exploring = 0;
        if (ad) {
            budget = adapt_nodes(ad);
            st->budget_sum += budget;
            st->zero_steps += budget == 0;
            exploring = ad->last_explore;
            st->explore_steps += exploring;
        }
        if (c->drafter && budget > 0) {
            /* the drafter grows only what the budget keeps: a model drafter's cost falls with it */
            tree_shape sh = tree_shape_cut(&c->shape, budget);
            e = draft_propose(c->drafter, &sh, &t);
            if (e)
                break;
            /* a prefix in topological order keeps every parent before its children */
            if (t.n > budget)
                t.n = budget;
        }
        double t2 = clock_now_s();
        /* never let the tree run past the context */
        while (t.n > 0 && kv->n_committed + t.n + 1 > ctx)
            t.n--;
        e = verify_tree(c->target, run, kv, vw, last, &t, c->vmode, &c->sp, res);
        if (e)
            break;
        double t3 = clock_now_s();
        st->t_draft += t2 - t1;
        st->t_verify += t3 - t2;
        st->n_steps++;
        st->proposed += t.n;
        st->accepted += res->n_accept;
        int n_tried = 0;
        for (int d = 0, node = -1; d <= res->n_accept; d++) {
            int kid;
            if (tree_children(&t, node, &kid, 1) == 0)
                break;
            n_tried++;
            if (d < TREE_MAX_DEPTH)
                st->tried[d]++;
            if (d == res->n_accept)
                break;
            if (d < TREE_MAX_DEPTH)
                st->took[d]++;
            node = res->path[d];
        }
        if (ad) {
            int levels = 0;
            for (int i = 0; i < t.n; i++)
                levels = t.depth[i] + 1 > levels ? t.depth[i] + 1 : levels;
            adapt_step as = {.budget = budget,
                             .n_nodes = t.n,
                             .n_levels = levels,
                             .n_tried = n_tried,
                             .n_took = res->n_accept,
                             .t_draft = budget > 0 ? t2 - t1 : -1,
                             .t_verify = t3 - t2};
            adapt_observe(ad, &as);
            LOG_DEBUG("spec",
                      "step %d: budget %d%s, %d nodes, %d accepted | draft %.3f ms, verify "
                      "%.3f ms | model: P(accept depth 1) %.3f, c(1) %.3f ms, c(2) %.3f ms",
                      st->n_steps, budget, exploring ? " (exploring)" : "", t.n, res->n_accept,
                      (t2 - t1) * 1e3, (t3 - t2) * 1e3, adapt_accept(ad, 0),
                      adapt_verify_cost(ad, 1) * 1e3, adapt_verify_cost(ad, 2) * 1e3);
        }
        int nc = 0;
        for (int i = 0; i < res->n_accept; i++)
            commit[nc++] = t.tok[res->path[i]];
        commit[nc++] = res->next;
        for (int i = 0; i < nc && !done; i++) {
            if (is_eog(c, commit[i])) {
                done = 1;
                break;
            }
            st->n_gen++;
            if ((c->on_token && c->on_token(c->ud, commit[i])) || st->n_gen >= c->n_predict)
                done = 1;
        }
        if (!done && c->drafter)
            e = draft_advance(c->drafter, commit, nc);
        last = res->next;
        if (!done && kv->n_committed + 1 >= ctx)
            done = 1; /* `last` takes the final slot: a token after it would not fit */
    }
    st->t_total = clock_now_s() - t0;
    st->c_total = cpu_now_s() - c0;
    free(ad);
    free(commit);
    free(res);
    tree_free(&t);
    verify_work_free(vw);
    model_run_free(run);
    kv_free(kv);
    return e;
}

void spec_stats_print(const spec_stats *st, const char *label)
{
    double gen_t = st->t_total - st->t_prefill;
    fprintf(stderr, "[%s] prompt %d tokens", label, st->n_prompt);
    if (st->n_prompt > 1 && st->t_prefill > 0)
        fprintf(stderr, " (%.1f tok/s prefill)", (st->n_prompt - 1) / st->t_prefill);
    fprintf(stderr, " | generated %d tokens in %d steps, %.1f tok/s\n", st->n_gen, st->n_steps,
            gen_t > 0 ? st->n_gen / gen_t : 0.0);
    if (st->budget_sum || st->zero_steps)
        fprintf(stderr,
                "[%s] adaptive: budget 0 (plain decode) on %.0f%% of steps, %ld exploration steps, "
                "mean budget %.1f nodes\n",
                label, 100.0 * st->zero_steps / st->n_steps, st->explore_steps,
                (double)st->budget_sum / st->n_steps);
    if (st->proposed == 0)
        return;
    fprintf(stderr,
            "[%s] mean accepted length %.2f (+1 target token per step) | %.1f%% of %ld "
            "proposed nodes accepted | draft %.0f ms, verify %.0f ms\n",
            label, (double)st->accepted / st->n_steps, 100.0 * st->accepted / st->proposed,
            st->proposed, st->t_draft * 1e3, st->t_verify * 1e3);
    fprintf(stderr, "[%s] acceptance by depth:", label);
    for (int d = 0; d < TREE_MAX_DEPTH && st->tried[d]; d++)
        fprintf(stderr, " %d:%.0f%%", d + 1, 100.0 * st->took[d] / st->tried[d]);
    fprintf(stderr, "\n");
}
