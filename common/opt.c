#include "opt.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static sd_err set_value(const opt_def *d, void *target, const char *text, const char *shown)
{
    char *end;
    char *field = (char *)target + d->offset;
    int bounded = d->min <= d->max;
    errno = 0;
    switch (d->type) {
    case OPT_STR:
        *(const char **)field = text;
        return SD_OK;
    case OPT_FLAG:
        *(int *)field = 1;
        return SD_OK;
    case OPT_INT:
    case OPT_U64: {
        if (d->type == OPT_U64 && text[0] == '-')
            return sd_fail(SD_EINVAL, "option %s: '%s' is not a non-negative integer", shown, text);
        long long v = 0;
        unsigned long long u = 0;
        if (d->type == OPT_INT)
            v = strtoll(text, &end, 0);
        else
            u = strtoull(text, &end, 0);
        if (errno || end == text || *end)
            return sd_fail(SD_EINVAL, "option %s: '%s' is not an integer", shown, text);
        double dv = d->type == OPT_INT ? (double)v : (double)u;
        if (bounded && (dv < d->min || dv > d->max))
            return sd_fail(SD_ERANGE, "option %s: %s is outside %.0f..%.0f", shown, text, d->min,
                           d->max);
        if (d->type == OPT_INT) {
            if (v < -2147483647LL || v > 2147483647LL)
                return sd_fail(SD_ERANGE, "option %s: %s does not fit an int", shown, text);
            *(int *)field = (int)v;
        } else {
            *(unsigned long long *)field = u;
        }
        return SD_OK;
    }
    case OPT_FLOAT: {
        double v = strtod(text, &end);
        if (errno || end == text || *end || !isfinite(v))
            return sd_fail(SD_EINVAL, "option %s: '%s' is not a number", shown, text);
        if (bounded && (v < d->min || v > d->max))
            return sd_fail(SD_ERANGE, "option %s: %s is outside %g..%g", shown, text, d->min,
                           d->max);
        *(float *)field = (float)v;
        return SD_OK;
    }
    }
    return SD_EINVAL;
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

sd_err opt_parse(const opt_def *defs, size_t n, void *target, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return SD_ECANCELED;
        const opt_def *d = NULL;
        size_t nl = 0;
        if (a[0] == '-' && a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            for (size_t k = 0; k < n && !d; k++)
                if (strlen(defs[k].name) == nl && !strncmp(defs[k].name, a + 2, nl))
                    d = &defs[k];
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
