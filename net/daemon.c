#include "daemon.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../common/cfg.h"
#include "../common/log.h"

sd_err daemon_common_apply(const daemon_common *c, const char *role, ucx_opts *uo)
{
    int lvl = log_level_parse(c->log_level);
    if (lvl < 0)
        return sd_fail(SD_EINVAL, "log-level: '%s' is not error, warn, info or debug",
                       c->log_level);
    log_set_role(role);
    log_set_level((log_level)lvl);
    if (!strcmp(c->ucx_err_mode, "peer"))
        uo->err_mode_peer = 1;
    else if (!strcmp(c->ucx_err_mode, "none"))
        uo->err_mode_peer = 0;
    else
        return sd_fail(SD_EINVAL, "ucx-err-mode: '%s' is not peer or none", c->ucx_err_mode);
    uo->link = (ucx_link){.delay_ms = c->link_delay_ms,
                          .jitter_ms = c->link_jitter_ms,
                          .bandwidth_mbps = c->link_bandwidth_mbps,
                          .reorder_prob = c->link_reorder_prob,
                          .reorder_ms = c->link_reorder_ms,
                          .seed = c->link_seed};
    if (ucx_link_active(&uo->link))
        LOG_WARN(role,
                 "link emulator ON: delay %.1f ms + jitter %.1f ms, bandwidth %.0f Mbit/s, "
                 "reorder p=%.2f (+%.1f ms) — timings are emulated",
                 c->link_delay_ms, c->link_jitter_ms, c->link_bandwidth_mbps,
                 c->link_reorder_prob, c->link_reorder_ms);
    return SD_OK;
}

int daemon_load_config(const char *prog, const opt_def *defs, size_t n, void *target, int argc,
                       char **argv, cfg_file **keep)
{
    cfg_file *f = NULL;
    sd_err e = cfg_load(defs, n, target, argc, argv, &f);
    if (e == SD_ECANCELED) {
        cfg_usage(stdout, prog, defs, n);
        cfg_file_free(f);
        return 0;
    }
    if (e) {
        fprintf(stderr, "%s: %s\n", prog, sd_errmsg());
        cfg_file_free(f);
        return 2;
    }
    *keep = f;
    return -1;
}

void daemon_signals_block(void)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int daemon_wait_signal(int timeout_ms)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    int sig = sigtimedwait(&s, NULL, &ts);
    return sig > 0 ? sig : 0;
}
