/* cfg: daemon configuration from one declarative table (CONVENTIONS.md "Config"). The table is
 * an opt_def[] (opt.h): every entry is at once a key of the libconfig file (the name with '-'
 * replaced by '_': "max-sessions" -> max_sessions) and a command-line override
 * (--max-sessions N). Order of precedence: the table's defaults, then the file named by
 * --config FILE, then the command line.
 *
 * Validation is ours, not libconfig's: an unknown key, a value of the wrong type or outside its
 * bounds is an error that names "file:line: key: problem" (libconfig's own syntax errors are
 * reported as "file:line: problem"). Strings from the file are copied and live as long as the
 * cfg_file handle. */
#ifndef SD_CFG_H
#define SD_CFG_H

#include <stddef.h>
#include <stdio.h>

#include "opt.h"
#include "sd_err.h"

typedef struct cfg_file cfg_file;

/* Apply defaults, the --config file (if any) and the command line to target. argv[0..argc) are
 * the arguments after the program name, as for opt_parse ("--config FILE" / "--config=FILE"
 * may appear anywhere, once). On SD_ECANCELED the user asked for --help (print cfg_usage and
 * exit 0); any other error has its message in sd_errmsg() (print it and exit 2). *keep holds
 * the strings read from the file: free it with cfg_file_free when target is no longer used.
 * On error *keep is NULL and target is partly written (its string fields may point at freed
 * copies): do not use it.
 *
 * File values must have the key's type: an integer for int/u64, an integer or a float for
 * float, a string for string, true/false for a flag; groups, arrays and lists are never
 * accepted. A flag set in the file is cleared on the command line with --no-NAME. */
sd_err cfg_load(const opt_def *defs, size_t n, void *target, int argc, char **argv,
                cfg_file **keep);
void cfg_file_free(cfg_file *f);

/* --help text: "usage: PROG [--config FILE] [--key value ...]" and every key with its type,
 * bounds, default and help. */
void cfg_usage(FILE *f, const char *prog, const opt_def *defs, size_t n);

/* The table as a Markdown section (for docs/configuration.md): key, type, default, bounds,
 * help. */
void cfg_write_markdown(FILE *f, const char *title, const opt_def *defs, size_t n);

#endif
