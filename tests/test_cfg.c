/* Config tables: defaults < --config FILE < command line; every error in a file names
 * "file:line: key: problem" exactly; libconfig's syntax errors name file and line; strings from
 * the file outlive cfg_load; bounds and types on every option type; --help; the usage text and
 * the Markdown reference. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/cfg.h"
#include "testutil.h"

typedef struct {
    int sessions, delta, verbose, pack;
    unsigned long long seed;
    float temp, ratio;
    const char *name, *model;
} t_cfg;

#define F(x) offsetof(t_cfg, x)
static const opt_def defs[] = {
    {"max-sessions", 's', OPT_INT, F(sessions), 1, 1024, "64", "N", "sessions held at once"},
    {"delta", 0, OPT_INT, F(delta), OPT_NOBOUNDS, "0", "N", "an unbounded int"},
    {"seed", 0, OPT_U64, F(seed), 0, 1e12, "7", "S", "sampling seed"},
    {"temp", 0, OPT_FLOAT, F(temp), 0, 2, "0.5", "T", "temperature"},
    {"ratio", 0, OPT_FLOAT, F(ratio), -1, 1, "0", "R", "a | in the help"},
    {"name", 0, OPT_STR, F(name), OPT_NOBOUNDS, "node", "NAME", "node name"},
    {"model-path", 'm', OPT_STR, F(model), OPT_NOBOUNDS, NULL, "PATH", "model file"},
    {"verbose", 0, OPT_FLAG, F(verbose), OPT_NOBOUNDS, NULL, NULL, "log more"},
    {"pack", 0, OPT_FLAG, F(pack), OPT_NOBOUNDS, "1", NULL, "pack weights"},
};
#undef F
#define N_DEFS (sizeof defs / sizeof defs[0])

/* A fresh temp file with the given text; the path lives in a static ring of buffers. */
static const char *write_tmp(const char *text)
{
    static char paths[8][64];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 64, "/tmp/test_cfg_XXXXXX");
    int fd = mkstemp(p);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

/* cfg_load with "--config PATH" followed by the extra arguments. */
static sd_err load(t_cfg *c, cfg_file **keep, const char *path, int argc, const char **extra)
{
    const char *argv[16];
    int n = 0;
    if (path) {
        argv[n++] = "--config";
        argv[n++] = path;
    }
    for (int i = 0; i < argc; i++)
        argv[n++] = extra[i];
    memset(c, 0, sizeof *c);
    return cfg_load(defs, N_DEFS, c, n, (char **)argv, keep);
}

static void test_defaults(void **state)
{
    t_cfg c;
    cfg_file *keep = (cfg_file *)1;
    assert_int_equal(load(&c, &keep, NULL, 0, NULL), SD_OK);
    assert_non_null(keep);
    assert_int_equal(c.sessions, 64);
    assert_true(c.seed == 7);
    assert_true(c.temp == 0.5f);
    assert_string_equal(c.name, "node");
    assert_null(c.model);
    assert_int_equal(c.verbose, 0);
    assert_int_equal(c.pack, 1);
    cfg_file_free(keep);
    cfg_file_free(NULL);
}

static void test_file_values(void **state)
{
    /* No ';' after some values: libconfig accepts that. ':' works as '=' too. */
    const char *path = write_tmp("# a comment\n"
                                 "max_sessions = 0x3\n"
                                 "delta = -16;\n"
                                 "seed = 123456789012L;\n"
                                 "temp = 1.25;\n"
                                 "ratio : -1;\n"
                                 "name = \"edge-7\";\n"
                                 "model_path = \"/m/x.gguf\";\n"
                                 "verbose = true;\n"
                                 "pack = false;\n");
    t_cfg c;
    cfg_file *keep;
    if (load(&c, &keep, path, 0, NULL))
        fail_msg("%s", sd_errmsg());
    assert_int_equal(c.sessions, 3);
    assert_int_equal(c.delta, -16);
    assert_true(c.seed == 123456789012ull);
    assert_true(c.temp == 1.25f);
    assert_true(c.ratio == -1.0f);
    assert_string_equal(c.name, "edge-7");
    assert_string_equal(c.model, "/m/x.gguf");
    assert_int_equal(c.verbose, 1);
    assert_int_equal(c.pack, 0);
    cfg_file_free(keep);
    unlink(path);
}

static void test_cli_overrides_file(void **state)
{
    const char *path = write_tmp("max_sessions = 3;\ntemp = 1.5;\nname = \"file\";\n"
                                 "verbose = true;\npack = true;\n");
    /* The command line wins wherever --config stands in it. */
    const char *argv[] = {"--max-sessions=5", "--name", "cli", "--no-verbose",
                          "--config",         path,     "-m",  "p.gguf"};
    t_cfg c;
    cfg_file *keep;
    memset(&c, 0, sizeof c);
    assert_int_equal(cfg_load(defs, N_DEFS, &c, 8, (char **)argv, &keep), SD_OK);
    assert_int_equal(c.sessions, 5);
    assert_true(c.temp == 1.5f); /* from the file */
    assert_string_equal(c.name, "cli");
    assert_string_equal(c.model, "p.gguf");
    assert_int_equal(c.verbose, 0);
    assert_int_equal(c.pack, 1);
    cfg_file_free(keep);

    const char *eq[] = {"--temp", "0.25"};
    assert_int_equal(load(&c, &keep, path, 2, eq), SD_OK);
    assert_true(c.temp == 0.25f);
    cfg_file_free(keep);
    unlink(path);
}

/* Each error in a file, with its exact message. The expected text is "PATH:LINE: " + rest. */
static void test_file_errors(void **state)
{
    static const struct {
        const char *text;
        sd_err want;
        int line;
        const char *rest;
    } cases[] = {
        {"max_sessions = 3;\nbogus = 1;\n", SD_EINVAL, 2, "bogus: unknown key"},
        {"max_sesions = 3;\n", SD_EINVAL, 1,
         "max_sesions: unknown key (did you mean max_sessions?)"},
        {"\nmax-sessions = 3;\n", SD_EINVAL, 2,
         "max-sessions: unknown key (write it max_sessions)"},
        {"config = \"x\";\n", SD_EINVAL, 1, "config: unknown key"},
        /* wrong types */
        {"max_sessions = \"3\";\n", SD_EINVAL, 1,
         "max_sessions: expected an integer, got a string"},
        {"max_sessions = 3.0;\n", SD_EINVAL, 1, "max_sessions: expected an integer, got a float"},
        {"max_sessions = true;\n", SD_EINVAL, 1,
         "max_sessions: expected an integer, got a boolean"},
        {"seed = 1.5;\n", SD_EINVAL, 1, "seed: expected a non-negative integer, got a float"},
        {"temp = \"hot\";\n", SD_EINVAL, 1, "temp: expected a number, got a string"},
        {"temp = false;\n", SD_EINVAL, 1, "temp: expected a number, got a boolean"},
        {"name = 5;\n", SD_EINVAL, 1, "name: expected a string, got an integer"},
        {"verbose = 1;\n", SD_EINVAL, 1,
         "verbose: expected a boolean (true or false), got an integer"},
        {"verbose = \"yes\";\n", SD_EINVAL, 1,
         "verbose: expected a boolean (true or false), got a string"},
        {"name = { a = 1; };\n", SD_EINVAL, 1, "name: expected a string, got a group"},
        {"max_sessions = [1, 2];\n", SD_EINVAL, 1,
         "max_sessions: expected an integer, got an array"},
        {"temp = (1.0);\n", SD_EINVAL, 1, "temp: expected a number, got a list"},
        /* bounds on every numeric type */
        {"max_sessions = 0;\n", SD_ERANGE, 1, "max_sessions: 0 is outside 1..1024"},
        {"# c\n\n   max_sessions = 1025\n", SD_ERANGE, 3, "max_sessions: 1025 is outside 1..1024"},
        {"delta = 5000000000L;\n", SD_ERANGE, 1, "delta: 5000000000 does not fit an int"},
        {"delta = 5000000000;\n", SD_ERANGE, 1,
         "delta: 5000000000 does not fit a 32-bit libconfig integer (write 5000000000L)"},
        {"seed = 0xffffffff;\n", SD_ERANGE, 1,
         "seed: 0xffffffff does not fit a 32-bit libconfig integer (write 0xffffffffL)"},
        {"seed = -1;\n", SD_EINVAL, 1, "seed: '-1' is not a non-negative integer"},
        {"seed = 1000000000001L;\n", SD_ERANGE, 1,
         "seed: 1000000000001 is outside 0..1000000000000"},
        {"temp = -0.1;\n", SD_ERANGE, 1, "temp: -0.1 is outside 0..2"},
        {"temp = 3;\n", SD_ERANGE, 1, "temp: 3 is outside 0..2"},
        {"temp = 1.0;\nratio = 1.0000001;\n", SD_ERANGE, 2, "ratio: 1.0000001 is outside -1..1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_tmp(cases[i].text);
        char want[512];
        snprintf(want, sizeof want, "%s:%d: %s", path, cases[i].line, cases[i].rest);
        t_cfg c;
        cfg_file *keep = (cfg_file *)1;
        sd_err e = load(&c, &keep, path, 0, NULL);
        if (e != cases[i].want || strcmp(sd_errmsg(), want))
            fail_msg("case %zu: got %s '%s', want %s '%s'", i, sd_strerror(e), sd_errmsg(),
                     sd_strerror(cases[i].want), want);
        assert_null(keep);
        unlink(path);
    }
}

static void test_syntax_and_io_errors(void **state)
{
    static const struct {
        const char *text;
        int line;
    } cases[] = {
        {"max_sessions = ;\n", 1},
        {"temp = 1.0;\nname = \"x\"\nmax_sessions = = 3;\n", 3},
        {"max_sessions = 3;\nmax_sessions = 4;\n", 2}, /* libconfig: duplicate setting name */
        {"a b c\n", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_tmp(cases[i].text);
        char want[512];
        snprintf(want, sizeof want, "%s:%d: ", path, cases[i].line);
        t_cfg c;
        cfg_file *keep;
        assert_int_equal(load(&c, &keep, path, 0, NULL), SD_EPROTO);
        if (strncmp(sd_errmsg(), want, strlen(want)) || strlen(sd_errmsg()) <= strlen(want))
            fail_msg("case %zu: '%s' does not start with '%s' and a message", i, sd_errmsg(), want);
        unlink(path);
    }
    t_cfg c;
    cfg_file *keep;
    assert_int_equal(load(&c, &keep, "/nonexistent/specd.cfg", 0, NULL), SD_EIO);
    assert_string_equal(
        sd_errmsg(), "/nonexistent/specd.cfg: cannot open config file: No such file or directory");
}

static void test_cli_errors_and_help(void **state)
{
    static const struct {
        const char *argv[4];
        int argc;
        sd_err want;
        const char *msg;
    } cases[] = {
        {{"--help"}, 1, SD_ECANCELED, NULL},
        {{"-s", "3", "-h"}, 3, SD_ECANCELED, NULL},
        /* --help wins over a config file that would fail */
        {{"--config", "/nonexistent.cfg", "--help"}, 3, SD_ECANCELED, NULL},
        {{"--config"}, 1, SD_EINVAL, "option --config needs a value (FILE)"},
        {{"--config="}, 1, SD_EINVAL, "option --config: empty file name"},
        {{"--config", "a", "--config=b"},
         3,
         SD_EINVAL,
         "option --config given twice ('a' and 'b')"},
        {{"--max-sessions", "0"}, 2, SD_ERANGE, "option --max-sessions: 0 is outside 1..1024"},
        {{"--seed", "1000000000001"},
         2,
         SD_ERANGE,
         "option --seed: 1000000000001 is outside 0..1000000000000"},
        {{"--temp=2.5"}, 1, SD_ERANGE, "option --temp: 2.5 is outside 0..2"},
        {{"--delta", "x"}, 2, SD_EINVAL, "option --delta: 'x' is not an integer"},
        {{"--no-temp"}, 1, SD_EINVAL, "unknown option '--no-temp'"},
        {{"--verbose=1"}, 1, SD_EINVAL, "option --verbose takes no value"},
        {{"--bogus"}, 1, SD_EINVAL, "unknown option '--bogus'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        t_cfg c;
        cfg_file *keep = (cfg_file *)1;
        sd_errclear();
        sd_err e = cfg_load(defs, N_DEFS, &c, cases[i].argc, (char **)cases[i].argv, &keep);
        if (e != cases[i].want || (cases[i].msg && strcmp(sd_errmsg(), cases[i].msg)))
            fail_msg("case %zu: got %s '%s', want %s '%s'", i, sd_strerror(e), sd_errmsg(),
                     sd_strerror(cases[i].want), cases[i].msg ? cases[i].msg : "");
        assert_null(keep);
    }
    /* An option's value that looks like --config is that option's value, as opt_parse reads it. */
    const char *argv[] = {"--name", "--config"};
    t_cfg c;
    cfg_file *keep;
    assert_int_equal(cfg_load(defs, N_DEFS, &c, 2, (char **)argv, &keep), SD_OK);
    assert_string_equal(c.name, "--config");
    cfg_file_free(keep);

    static const opt_def bad[] = {
        {"config", 0, OPT_STR, 0, OPT_NOBOUNDS, NULL, "F", "clash"},
    };
    assert_int_equal(cfg_load(bad, 1, &c, 0, NULL, &keep), SD_EINVAL);
    assert_non_null(strstr(sd_errmsg(), "reserved"));
}

/* The strings must be copies: libconfig frees its own in config_destroy. Refill the heap with
 * blocks of the same size afterwards, so a dangling pointer reads garbage even without ASan. */
static void test_strings_survive(void **state)
{
    char text[600], want[260];
    memset(want, 'q', 255);
    want[255] = 0;
    snprintf(text, sizeof text, "name = \"%s\";\nmodel_path = \"%s\";\n", want, "m.gguf");
    const char *path = write_tmp(text);
    t_cfg c;
    cfg_file *keep;
    assert_int_equal(load(&c, &keep, path, 0, NULL), SD_OK);
    void *junk[64];
    for (int i = 0; i < 64; i++) {
        junk[i] = malloc(256);
        memset(junk[i], 'X', 256);
    }
    assert_string_equal(c.name, want);
    assert_string_equal(c.model, "m.gguf");
    for (int i = 0; i < 64; i++)
        free(junk[i]);
    cfg_file_free(keep);
    unlink(path);
}

/* Random values around the bounds of each numeric type, written to a file and given on the
 * command line: accepted exactly when inside, stored as the text reads. */
static void test_random_bounds(void **state)
{
    tu_rng r;
    tu_rng_init(&r, tu_seed());
    for (int it = 0; it < 200; it++) {
        int which = (int)tu_below(&r, 3);
        char text[128], arg[64];
        int inside;
        double want;
        const char *key, *flag;
        if (which == 0) {
            long long v = (long long)tu_below(&r, 1200) - 100;
            key = "max_sessions", flag = "--max-sessions";
            snprintf(arg, sizeof arg, "%lld", v);
            inside = v >= 1 && v <= 1024;
            want = (double)v;
        } else if (which == 1) {
            long long v = (long long)(tu_next(&r) % 2000000000000ull) - 100;
            key = "seed", flag = "--seed";
            snprintf(arg, sizeof arg, "%lld", v);
            inside = v >= 0 && v <= 1000000000000ll;
            want = (double)v;
        } else {
            double v = tu_uniform(&r) * 3.0 - 0.5;
            key = "temp", flag = "--temp";
            snprintf(arg, sizeof arg, "%.6f", v);
            want = strtod(arg, NULL);
            inside = want >= 0 && want <= 2;
        }
        snprintf(text, sizeof text, "%s = %s%s;\n", key, arg, which == 1 ? "L" : "");
        const char *path = write_tmp(text);
        for (int via_cli = 0; via_cli < 2; via_cli++) {
            t_cfg c;
            cfg_file *keep = NULL;
            const char *argv[] = {flag, arg};
            sd_err e = via_cli ? load(&c, &keep, NULL, 2, argv) : load(&c, &keep, path, 0, NULL);
            if (inside != (e == SD_OK))
                fail_msg("%s %s via %s: %s '%s'", key, arg, via_cli ? "cli" : "file",
                         sd_strerror(e), sd_errmsg());
            if (!inside) {
                assert_true(e == SD_ERANGE || (which == 1 && e == SD_EINVAL));
                continue;
            }
            if (which == 0)
                assert_true(c.sessions == (int)want);
            else if (which == 1)
                assert_true(c.seed == (unsigned long long)want);
            else
                assert_true(c.temp == (float)want);
            cfg_file_free(keep);
        }
        unlink(path);
    }
}

static char *capture(void (*fn)(FILE *))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    fn(f);
    fclose(f);
    return buf;
}

static void usage_to(FILE *f)
{
    cfg_usage(f, "specd-test", defs, N_DEFS);
}
static void markdown_to(FILE *f)
{
    cfg_write_markdown(f, "test daemon", defs, N_DEFS);
}

static void test_usage_and_markdown(void **state)
{
    static const char *const in_usage[] = {
        "usage: specd-test [--config FILE] [--key value ...]\n",
        "  -s, --max-sessions N           sessions held at once (int 1..1024, default 64)\n",
        "  --seed S                       sampling seed (u64 0..1000000000000, default 7)\n",
        "  --temp T                       temperature (float 0..2, default 0.5)\n",
        "  --name NAME                    node name (string, default node)\n",
        "  -m, --model-path PATH          model file (string, default none)\n",
        "  --[no-]verbose                 log more (bool, default false)\n",
        "  --[no-]pack                    pack weights (bool, default true)\n",
        "  --config FILE ",
    };
    char *u = capture(usage_to);
    for (size_t i = 0; i < sizeof in_usage / sizeof in_usage[0]; i++)
        if (!strstr(u, in_usage[i]))
            fail_msg("usage lacks '%s':\n%s", in_usage[i], u);
    free(u);

    static const char *const in_md[] = {
        "## test daemon\n\n| key | command line | type | default | bounds | description |\n"
        "|---|---|---|---|---|---|\n",
        "| `max_sessions` | `-s`, `--max-sessions N` | int | `64` | 1..1024 | sessions held at "
        "once |\n",
        "| `model_path` | `-m`, `--model-path PATH` | string | none |  | model file |\n",
        "| `ratio` | `--ratio R` | float | `0` | -1..1 | a \\| in the help |\n",
        "| `pack` | `--[no-]pack` | bool | `true` |  | pack weights |\n",
    };
    char *m = capture(markdown_to);
    for (size_t i = 0; i < sizeof in_md / sizeof in_md[0]; i++)
        if (!strstr(m, in_md[i]))
            fail_msg("markdown lacks '%s':\n%s", in_md[i], m);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_file_values),
        cmocka_unit_test(test_cli_overrides_file),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_syntax_and_io_errors),
        cmocka_unit_test(test_cli_errors_and_help),
        cmocka_unit_test(test_strings_survive),
        cmocka_unit_test(test_random_bounds),
        cmocka_unit_test(test_usage_and_markdown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
