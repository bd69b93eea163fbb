/* opt: declarative option tables. One table (name, type, bounds, default, target field, help)
 * drives command-line parsing, defaults and --help for each program, so a flag is described in
 * exactly one place (CONVENTIONS.md "Config"). */
#ifndef SD_OPT_H
#define SD_OPT_H

#include <stddef.h>
#include <stdio.h>

#include "sd_err.h"

typedef enum {
    OPT_INT,   /* int */
    OPT_U64,   /* unsigned long long */
    OPT_FLOAT, /* float */
    OPT_STR,   /* const char * (points into argv or the default) */
    OPT_FLAG,  /* int set to 1 when present */
} opt_type;

typedef struct {
    const char *name; /* long name without dashes: "temp" -> --temp */
    char short_name;  /* 'n' -> -n, or 0 */
    opt_type type;
    size_t offset;       /* offsetof(target struct, field) */
    double min, max;     /* inclusive bounds for numbers (ignored when min > max) */
    const char *dflt;    /* default as text, NULL = leave the field as initialised */
    const char *metavar; /* "N", "PATH", ... */
    const char *help;
} opt_def;

#define OPT_NOBOUNDS 1, 0

/* Set every field that has a default. */
sd_err opt_defaults(const opt_def *defs, size_t n, void *target);
/* Parse argv[0..argc) ("--name value", "--name=value", "-x value"). "--help"/"-h" returns
 * SD_ECANCELED so the caller prints usage. Errors name the option and the offending text. */
sd_err opt_parse(const opt_def *defs, size_t n, void *target, int argc, char **argv);
void opt_usage(FILE *f, const opt_def *defs, size_t n);

#endif
