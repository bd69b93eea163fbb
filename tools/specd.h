/* specd CLI: subcommands share this header. */
#ifndef SD_SPECD_CLI_H
#define SD_SPECD_CLI_H

#include <stdint.h>
#include <stdio.h>

/* Default model location (the set-up step's cache), filled from $SPECD_MODEL_DIR or ~/.cache. */
const char *cli_default_model(void);

int cmd_generate(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_local(int argc, char **argv);

/* The options of `specd generate` (tools/cmd_generate.c's table). */
typedef struct {
    const char *model, *prompt, *system, *log_level, *draft, *tree, *verify, *coordinator, *mode,
        *timing, *tokens_out, *cpu_level, *backend;
    int n_predict, threads, ctx, chat, f32_act, no_pack, ignore_eos, top_k, compare, max_nodes,
        timeout_s, max_inflight, no_adapt, device;
    float temp, top_p;
    unsigned long long seed;
} gen_opts;

/* Generate through a coordinator (tools/net_client.c): streams the text to stdout (or hands each
 * token to on_token when set), prints the session summary to stderr. Returns the exit status. */
int cli_remote_generate(const gen_opts *o, int (*on_token)(void *ud, int32_t tok), void *ud);

/* Create the --timing file with its header line; NULL (message printed) when it cannot. */
FILE *timing_open(const char *path);

/* --tokens-out: the generated token ids, one line, space-separated. Returns 0 or prints why. */
int cli_write_tokens(const char *path, const int32_t *ids, int n);

#endif
