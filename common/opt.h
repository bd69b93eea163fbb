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
    OPT_FLAG,  /* int: 1 when present, 0 with --no-NAME (and "true"/"false" in a config file) */
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
/* Parse argv[0..argc) ("--name value", "--name=value", "-x value", "--no-NAME" for a flag).
 * "--help"/"-h" returns SD_ECANCELED so the caller prints usage. Errors name the option and the
 * offending text. */
sd_err opt_parse(const opt_def *defs, size_t n, void *target, int argc, char **argv);
void opt_usage(FILE *f, const opt_def *defs, size_t n);

/* The value checker behind opt_parse, opt_defaults and cfg_load (one definition of what each
 * type accepts): parse text as d's type, check d's bounds, store it into target. A flag takes
 * NULL, "1" or "true" (set) and "0" or "false" (clear); a string field keeps the pointer, so
 * text must outlive target's use. On error the field is unchanged and sd_errmsg() names only
 * the problem ("'4x' is not an integer", "0 is outside 1..100"): the caller says where the value
 * came from. */
sd_err opt_set(const opt_def *d, void *target, const char *text);
/* "int", "u64", "float", "string", "bool". */
const char *opt_type_name(opt_type t);
/* d's bounds as text ("1..100", "0..2"); returns 0 (and "") where d has none. */
int opt_bounds_text(const opt_def *d, char *buf, size_t n);
/* Whether arg is an option of defs that consumes the next argument as its value ("--name" or
 * "-x" of a non-flag, without "=value"). For callers that pre-scan argv (cfg_load). */
int opt_takes_value(const opt_def *defs, size_t n, const char *arg);

#endif
