#include "opt.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *opt_type_name(opt_type t)
{
    switch (t) {
    case OPT_INT:
        return "int";
    case OPT_U64:
        return "u64";
    case OPT_FLOAT:
        return "float";
    case OPT_STR:
        return "string";
    case OPT_FLAG:
        return "bool";
    }
    return "?";
}

int opt_bounds_text(const opt_def *d, char *buf, size_t n)
{
    if (d->min > d->max || (d->type != OPT_INT && d->type != OPT_U64 && d->type != OPT_FLOAT)) {
        if (n)
            buf[0] = 0;
        return 0;
    }
    /* Integer bounds are whole numbers by construction; %.0f prints them without an exponent,
     * where %g would turn 1000000 into 1e+06. */
    if (d->type == OPT_FLOAT)
        snprintf(buf, n, "%g..%g", d->min, d->max);
    else
        snprintf(buf, n, "%.0f..%.0f", d->min, d->max);
    return 1;
}

static sd_err out_of_bounds(const opt_def *d, const char *text)
{
    char b[96];
    opt_bounds_text(d, b, sizeof b);
    return sd_fail(SD_ERANGE, "%s is outside %s", text, b);
}

/* The one place where a value's text is parsed, checked against the type and the bounds and
 * stored; the command line, the defaults and the config file (cfg.c) all come through here so
 * that they accept exactly the same values. Messages name the problem only: callers prefix
 * where the value came from. */
sd_err opt_set(const opt_def *d, void *target, const char *text)
{
    char *end;
    char *field = (char *)target + d->offset;
    int bounded = d->min <= d->max;
    errno = 0;
    switch (d->type) {
    case OPT_STR:
        if (!text)
            return sd_fail(SD_EINVAL, "needs a value");
        *(const char **)field = text;
        return SD_OK;
    case OPT_FLAG:
        if (!text || !strcmp(text, "1") || !strcmp(text, "true")) {
            *(int *)field = 1;
            return SD_OK;
        }
        if (!strcmp(text, "0") || !strcmp(text, "false")) {
            *(int *)field = 0;
            return SD_OK;
        }
        return sd_fail(SD_EINVAL, "'%s' is not a boolean (true or false)", text);
    case OPT_INT:
    case OPT_U64: {
        if (!text)
            return sd_fail(SD_EINVAL, "needs a value");
        if (d->type == OPT_U64 && text[0] == '-')
            return sd_fail(SD_EINVAL, "'%s' is not a non-negative integer", text);
        long long v = 0;
        unsigned long long u = 0;
        if (d->type == OPT_INT)
            v = strtoll(text, &end, 0);
        else
            u = strtoull(text, &end, 0);
        if (errno || end == text || *end)
            return sd_fail(SD_EINVAL, "'%s' is not an integer", text);
        double dv = d->type == OPT_INT ? (double)v : (double)u;
        if (bounded && (dv < d->min || dv > d->max))
            return out_of_bounds(d, text);
        if (d->type == OPT_INT) {
            if (v < -2147483647LL || v > 2147483647LL)
                return sd_fail(SD_ERANGE, "%s does not fit an int", text);
            *(int *)field = (int)v;
        } else {
            *(unsigned long long *)field = u;
        }
        return SD_OK;
    }
    case OPT_FLOAT: {
        if (!text)
            return sd_fail(SD_EINVAL, "needs a value");
        double v = strtod(text, &end);
        if (errno || end == text || *end || !isfinite(v))
            return sd_fail(SD_EINVAL, "'%s' is not a number", text);
        if (bounded && (v < d->min || v > d->max))
            return out_of_bounds(d, text);
        *(float *)field = (float)v;
        return SD_OK;
    }
    }
    return sd_fail(SD_EINVAL, "option type %d unknown", (int)d->type);
}

/* opt_set with "option SHOWN: " in front of its message. The message is copied out first:
 * sd_fail formats into the buffer it would be reading. */
static sd_err set_value(const opt_def *d, void *target, const char *text, const char *shown)
{
    sd_err e = opt_set(d, target, text);
    if (e) {
        char problem[512];
        snprintf(problem, sizeof problem, "%s", sd_errmsg());
        return sd_fail(e, "option %s: %s", shown, problem);
    }
    return SD_OK;
}

sd_err opt_defaults(const opt_def *defs, size_t n, void *target)
{
    for (size_t i = 0; i < n; i++) {
        if (!defs[i].dflt)
            continue;
        char shown[80];
        snprintf(shown, sizeof shown, "--%s (default)", defs[i].name);
        sd_err e = set_value(&defs[i], target, defs[i].dflt, shown);
        if (e)
            return e;
    }
    return SD_OK;
}

static const opt_def *find_long(const opt_def *defs, size_t n, const char *name, size_t nl)
{
    for (size_t k = 0; k < n; k++)
        if (strlen(defs[k].name) == nl && !strncmp(defs[k].name, name, nl))
            return &defs[k];
    return NULL;
}

sd_err opt_parse(const opt_def *defs, size_t n, void *target, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return SD_ECANCELED;
        const opt_def *d = NULL;
        int negated = 0;
        if (a[0] == '-' && a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            d = find_long(defs, n, a + 2, nl);
            /* --no-NAME turns a flag off (a flag set in a config file can be undone on the
             * command line); an option literally named "no-..." matches first. */
            if (!d && !eq && nl > 3 && !strncmp(a + 2, "no-", 3)) {
                d = find_long(defs, n, a + 5, nl - 3);
                if (d && d->type != OPT_FLAG)
                    d = NULL;
                negated = d != NULL;
            }
            if (eq)
                val = eq + 1;
        } else if (a[0] == '-' && a[1] && !a[2]) {
            for (size_t k = 0; k < n && !d; k++)
                if (defs[k].short_name == a[1])
                    d = &defs[k];
        } else {
            return sd_fail(SD_EINVAL, "unexpected argument '%s'", a);
        }
        if (!d)
            return sd_fail(SD_EINVAL, "unknown option '%s'", a);
        if (d->type == OPT_FLAG) {
            if (val)
                return sd_fail(SD_EINVAL, "option --%s takes no value", d->name);
            val = negated ? "0" : NULL;
        } else if (!val) {
            if (i + 1 >= argc)
                return sd_fail(SD_EINVAL, "option %s needs a value (%s)", a,
                               d->metavar ? d->metavar : "VALUE");
            val = argv[++i];
        }
        char shown[80];
        snprintf(shown, sizeof shown, "--%s", d->name);
        sd_err e = set_value(d, target, val, shown);
        if (e)
            return e;
    }
    return SD_OK;
}

int opt_takes_value(const opt_def *defs, size_t n, const char *arg)
{
    if (arg[0] != '-' || !arg[1])
        return 0;
    const opt_def *d = NULL;
    if (arg[1] == '-') {
        if (strchr(arg + 2, '='))
            return 0;
        d = find_long(defs, n, arg + 2, strlen(arg + 2));
    } else if (!arg[2]) {
        for (size_t k = 0; k < n && !d; k++)
            if (defs[k].short_name == arg[1])
                d = &defs[k];
    }
    return d && d->type != OPT_FLAG;
}

void opt_usage(FILE *f, const opt_def *defs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char left[64];
        const opt_def *d = &defs[i];
        if (d->short_name)
            snprintf(left, sizeof left, "-%c, --%s%s%s", d->short_name, d->name,
                     d->type == OPT_FLAG ? "" : " ", d->type == OPT_FLAG ? "" : d->metavar);
        else
            snprintf(left, sizeof left, "    --%s%s%s", d->name, d->type == OPT_FLAG ? "" : " ",
                     d->type == OPT_FLAG ? "" : d->metavar);
        fprintf(f, "  %-26s %s", left, d->help);
        if (d->dflt && d->type != OPT_FLAG)
            fprintf(f, " (default %s)", d->dflt);
        fputc('\n', f);
    }
}
