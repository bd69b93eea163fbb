/* specd: the command-line tool. `specd generate` runs a model locally; later subcommands start
 * and talk to the distributed runtime. */
#include "specd.h"

#include "../common/paths.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} cli_cmds[] = {
    {"generate", cmd_generate, "generate text from a prompt (a local model or a cluster)"},
#ifdef SPECD_NET
    {"status", cmd_status, "nodes, sessions and their statistics of a running cluster"},
    {"local", cmd_local, "start a coordinator, a drafter and workers on this machine"},
#endif
};

const char *cli_default_model(void)
{
    return paths_default_model();
}

static void usage(FILE *f)
{
    fprintf(f, "usage: specd COMMAND [options]   (specd COMMAND --help for its options)\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof cli_cmds / sizeof cli_cmds[0]; i++)
        fprintf(f, "  %-12s %s\n", cli_cmds[i].name, cli_cmds[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof cli_cmds / sizeof cli_cmds[0]; i++)
        if (!strcmp(argv[1], cli_cmds[i].name))
            return cli_cmds[i].run(argc - 2, argv + 2);
    fprintf(stderr, "specd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
