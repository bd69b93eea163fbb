#include "cfg.h"

#include <errno.h>
#include <libconfig.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The strings read from a config file: libconfig's own copies die with config_destroy, so each
 * one a target field points at is duplicated here and lives until cfg_file_free. */
struct cfg_file {
    char **str;
    size_t n, cap;
};

void cfg_file_free(cfg_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++)
        free(f->str[i]);
    free(f->str);
    free(f);
}

static char *keep_string(cfg_file *f, const char *s)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? 2 * f->cap : 8;
        char **p = realloc(f->str, cap * sizeof *p);
        if (!p)
            return NULL;
        f->str = p;
        f->cap = cap;
    }
    char *c = strdup(s);
    if (c)
        f->str[f->n++] = c;
    return c;
}

/* The file key of an option: its name with '-' written '_' (libconfig names may contain '-',
 * but '_' is what every libconfig user expects). */
static void file_key(const char *name, char *buf, size_t n)
{
    size_t i = 0;
    for (; name[i] && i + 1 < n; i++)
        buf[i] = name[i] == '-' ? '_' : name[i];
    buf[i] = 0;
}

static const opt_def *find_key(const opt_def *defs, size_t n, const char *key)
{
    char k[128];
    for (size_t i = 0; i < n; i++) {
        file_key(defs[i].name, k, sizeof k);
        if (!strcmp(k, key))
            return &defs[i];
    }
    return NULL;
}

/* Edit distance with a cap, for "did you mean" on a misspelt key. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return (size_t)-1;
    size_t row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static sd_err unknown_key(const opt_def *defs, size_t n, const char *file, int line,
                          const char *key)
{
    char k[128], best[128] = "";
    size_t best_d = 3; /* suggest only close spellings */
    for (size_t i = 0; i < n; i++) {
        file_key(defs[i].name, k, sizeof k);
        if (!strcmp(defs[i].name, key))
            return sd_fail(SD_EINVAL, "%s:%d: %s: unknown key (write it %s)", file, line, key, k);
        size_t dist = edit_distance(k, key);
        if (dist < best_d) {
            best_d = dist;
            snprintf(best, sizeof best, "%s", k);
        }
    }
    if (best[0])
        return sd_fail(SD_EINVAL, "%s:%d: %s: unknown key (did you mean %s?)", file, line, key,
                       best);
    return sd_fail(SD_EINVAL, "%s:%d: %s: unknown key", file, line, key);
}

static const char *setting_kind(int type)
{
    switch (type) {
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a float";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    }
    return "an unknown type";
}

static const char *expected_kind(opt_type t)
{
    switch (t) {
    case OPT_INT:
        return "an integer";
    case OPT_U64:
        return "a non-negative integer";
    case OPT_FLOAT:
        return "a number";
    case OPT_STR:
        return "a string";
    case OPT_FLAG:
        return "a boolean (true or false)";
    }
    return "?";
}

/* libconfig 1.5 reads an integer literal without the L suffix into 32 bits and drops the rest
 * without a word (5000000000 becomes 705032704, 0xffffffff becomes -1). Read the literal back
 * from the source line and refuse a value that did not survive. Where the literal cannot be
 * found unambiguously (a key inside a string, a setting spanning lines) the check passes: it
 * must never reject a value libconfig read correctly. */
static sd_err check_int_literal(const char *file, int line, const char *key, long long got)
{
    FILE *fp = fopen(file, "r");
    if (!fp)
        return SD_OK;
    char buf[4096];
    int ln = 0;
    const char *hit = NULL;
    while (fgets(buf, sizeof buf, fp))
        if (++ln == line)
            break;
    fclose(fp);
    if (ln != line)
        return SD_OK;
    size_t kl = strlen(key);
    for (const char *p = strstr(buf, key); p; p = strstr(p + 1, key)) {
        int before_ok =
            p == buf || !(p[-1] == '_' || p[-1] == '-' || (p[-1] >= '0' && p[-1] <= '9') ||
                          ((p[-1] | 32) >= 'a' && (p[-1] | 32) <= 'z'));
        const char *q = p + kl;
        while (*q == ' ' || *q == '\t')
            q++;
        if (before_ok && (*q == '=' || *q == ':')) {
            if (hit)
                return SD_OK; /* twice on one line: cannot tell which */
            hit = q + 1;
        }
    }
    if (!hit)
        return SD_OK;
    while (*hit == ' ' || *hit == '\t')
        hit++;
    const char *digits = hit + (*hit == '-' || *hit == '+');
    int hex = digits[0] == '0' && (digits[1] | 32) == 'x';
    char *end;
    errno = 0;
    long long v = strtoll(hit, &end, hex ? 16 : 10);
    if (end == hit || (*end | 32) == 'l')
        return SD_OK;
    if (errno == ERANGE || v != got) {
        int n = (int)(end - hit);
        return sd_fail(SD_ERANGE,
                       "%s:%d: %s: %.*s does not fit a 32-bit libconfig integer (write %.*sL)",
                       file, line, key, n, hit, n, hit);
    }
    return SD_OK;
}

/* One setting of the file into its field. The value goes through opt_set as text, so the file
 * accepts exactly what the command line accepts; integers print exactly and floats in the
 * shortest form that reads back to the same double, so the text is also what the user wrote
 * (0.1 stays "0.1" in a bounds message). */
static sd_err apply_setting(const opt_def *d, config_setting_t *s, void *target, cfg_file *keep,
                            const char *file, int line, const char *key)
{
    int type = config_setting_type(s);
    char text[64];
    const char *val = text;
    int ok = 0;
    switch (d->type) {
    case OPT_INT:
    case OPT_U64:
        if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64) {
            snprintf(text, sizeof text, "%lld", (long long)config_setting_get_int64(s));
            ok = 1;
        }
        break;
    case OPT_FLOAT:
        if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64) {
            snprintf(text, sizeof text, "%lld", (long long)config_setting_get_int64(s));
            ok = 1;
        } else if (type == CONFIG_TYPE_FLOAT) {
            double v = config_setting_get_float(s);
            snprintf(text, sizeof text, "%.15g", v);
            if (strtod(text, NULL) != v)
                snprintf(text, sizeof text, "%.17g", v);
            ok = 1;
        }
        break;
    case OPT_STR:
        if (type == CONFIG_TYPE_STRING) {
            val = keep_string(keep, config_setting_get_string(s));
            if (!val)
                return sd_fail(SD_ENOMEM, "%s:%d: %s: out of memory", file, line, key);
            ok = 1;
        }
        break;
    case OPT_FLAG:
        if (type == CONFIG_TYPE_BOOL) {
            val = config_setting_get_bool(s) ? "1" : "0";
            ok = 1;
        }
        break;
    }
    if (!ok)
        return sd_fail(SD_EINVAL, "%s:%d: %s: expected %s, got %s", file, line, key,
                       expected_kind(d->type), setting_kind(type));
    if (type == CONFIG_TYPE_INT) {
        sd_err e = check_int_literal(file, line, key, config_setting_get_int64(s));
        if (e)
            return e;
    }
    sd_err e = opt_set(d, target, val);
    if (e) {
        char problem[512];
        snprintf(problem, sizeof problem, "%s", sd_errmsg());
        return sd_fail(e, "%s:%d: %s: %s", file, line, key, problem);
    }
    return SD_OK;
}

static sd_err load_file(const opt_def *defs, size_t n, void *target, const char *path,
                        cfg_file *keep)
{
    /* libconfig reports an unreadable file as a bare "file I/O error": open it ourselves first
     * so the message says why. */
    FILE *probe = fopen(path, "r");
    if (!probe)
        return sd_fail(SD_EIO, "%s: cannot open config file: %s", path, strerror(errno));
    fclose(probe);

    config_t c;
    config_init(&c);
    sd_err e = SD_OK;
    if (config_read_file(&c, path) != CONFIG_TRUE) {
        const char *ef = config_error_file(&c) ? config_error_file(&c) : path;
        if (config_error_type(&c) == CONFIG_ERR_PARSE)
            e = sd_fail(SD_EPROTO, "%s:%d: %s", ef, config_error_line(&c), config_error_text(&c));
        else
            e = sd_fail(SD_EIO, "%s: %s", ef, config_error_text(&c));
        config_destroy(&c);
        return e;
    }
    config_setting_t *root = config_root_setting(&c);
    int count = root ? config_setting_length(root) : 0;
    for (int i = 0; i < count && !e; i++) {
        config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
        const char *key = config_setting_name(s);
        const char *sf = config_setting_source_file(s) ? config_setting_source_file(s) : path;
        int line = config_setting_source_line(s);
        const opt_def *d = key ? find_key(defs, n, key) : NULL;
        if (!d)
            e = unknown_key(defs, n, sf, line, key ? key : "?");
        else
            e = apply_setting(d, s, target, keep, sf, line, key);
    }
    config_destroy(&c);
    return e;
}

sd_err cfg_load(const opt_def *defs, size_t n, void *target, int argc, char **argv, cfg_file **keep)
{
    *keep = NULL;
    if (find_key(defs, n, "config"))
        return sd_fail(SD_EINVAL, "option table: 'config' is reserved for --config FILE");
    sd_err e = opt_defaults(defs, n, target);
    if (e)
        return e;

    /* Pull --config out of argv (opt_parse does not know it), skipping the values of options
     * that take one so that "--name --config" means what opt_parse will make of it. */
    char **rest = malloc((size_t)(argc > 0 ? argc : 1) * sizeof *rest);
    if (!rest)
        return sd_fail(SD_ENOMEM, "out of memory");
    int nrest = 0;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *p = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            free(rest);
            return SD_ECANCELED;
        }
        if (!strcmp(a, "--config")) {
            if (i + 1 >= argc) {
                free(rest);
                return sd_fail(SD_EINVAL, "option --config needs a value (FILE)");
            }
            p = argv[++i];
        } else if (!strncmp(a, "--config=", 9)) {
            p = a + 9;
        } else {
            rest[nrest++] = argv[i];
            if (opt_takes_value(defs, n, a) && i + 1 < argc)
                rest[nrest++] = argv[++i];
            continue;
        }
        if (path || !p[0]) {
            free(rest);
            if (path)
                return sd_fail(SD_EINVAL, "option --config given twice ('%s' and '%s')", path, p);
            return sd_fail(SD_EINVAL, "option --config: empty file name");
        }
        path = p;
    }

    cfg_file *f = calloc(1, sizeof *f);
    if (!f) {
        free(rest);
        return sd_fail(SD_ENOMEM, "out of memory");
    }
    if (path)
        e = load_file(defs, n, target, path, f);
    if (!e)
        e = opt_parse(defs, n, target, nrest, rest);
    free(rest);
    if (e) {
        cfg_file_free(f);
        return e;
    }
    *keep = f;
    return SD_OK;
}

static const char *default_text(const opt_def *d)
{
    if (d->type == OPT_FLAG)
        return d->dflt && strcmp(d->dflt, "0") && strcmp(d->dflt, "false") ? "true" : "false";
    return d->dflt ? d->dflt : "none";
}

void cfg_usage(FILE *f, const char *prog, const opt_def *defs, size_t n)
{
    fprintf(f, "usage: %s [--config FILE] [--key value ...]\n\n", prog);
    fprintf(f, "Every option is also a key of the --config file (libconfig syntax, '-' written "
               "'_': key = value;).\nThe command line overrides the file, the file the "
               "defaults.\n\n");
    fprintf(f, "  %-30s %s\n", "--config FILE", "read settings from FILE");
    fprintf(f, "  %-30s %s\n", "-h, --help", "print this help and exit");
    for (size_t i = 0; i < n; i++) {
        const opt_def *d = &defs[i];
        char left[96], name[80], bounds[96];
        if (d->type == OPT_FLAG)
            snprintf(name, sizeof name, "--[no-]%s", d->name);
        else
            snprintf(name, sizeof name, "--%s %s", d->name, d->metavar ? d->metavar : "VALUE");
        if (d->short_name)
            snprintf(left, sizeof left, "-%c, %s", d->short_name, name);
        else
            snprintf(left, sizeof left, "%s", name);
        fprintf(f, "  %-30s %s (%s", left, d->help ? d->help : "", opt_type_name(d->type));
        if (opt_bounds_text(d, bounds, sizeof bounds))
            fprintf(f, " %s", bounds);
        fprintf(f, ", default %s)\n", default_text(d));
    }
}

/* Table cells: a '|' would end the cell, a newline the row. */
static void md_cell(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '|')
            fputs("\\|", f);
        else if (*s == '\n')
            fputc(' ', f);
        else
            fputc(*s, f);
    }
}

void cfg_write_markdown(FILE *f, const char *title, const opt_def *defs, size_t n)
{
    if (title)
        fprintf(f, "## %s\n\n", title);
    fprintf(f, "| key | command line | type | default | bounds | description |\n");
    fprintf(f, "|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < n; i++) {
        const opt_def *d = &defs[i];
        char key[128], bounds[96];
        file_key(d->name, key, sizeof key);
        fprintf(f, "| `%s` | ", key);
        if (d->short_name)
            fprintf(f, "`-%c`, ", d->short_name);
        fprintf(f, "`--%s", d->type == OPT_FLAG ? "[no-]" : "");
        md_cell(f, d->name);
        if (d->type != OPT_FLAG) {
            fputc(' ', f);
            md_cell(f, d->metavar ? d->metavar : "VALUE");
        }
        fprintf(f, "` | %s | ", opt_type_name(d->type));
        if (d->type == OPT_FLAG || d->dflt) {
            fputc('`', f);
            md_cell(f, default_text(d));
            fputc('`', f);
        } else {
            fputs("none", f);
        }
        fprintf(f, " | %s | ", opt_bounds_text(d, bounds, sizeof bounds) ? bounds : "");
        md_cell(f, d->help);
        fputs(" |\n", f);
    }
    fputc('\n', f);
}
