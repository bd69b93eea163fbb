/* specd CLI: subcommands share this header. */
#ifndef SD_SPECD_CLI_H
#define SD_SPECD_CLI_H

/* Default model location (the set-up step's cache), filled from $SPECD_MODEL_DIR or ~/.cache. */
const char *cli_default_model(void);

int cmd_generate(int argc, char **argv);

#endif
