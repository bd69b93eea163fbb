/* Option tables: defaults, both spellings, bounds, and clear errors naming the option. */
#include <stddef.h>
#include <string.h>

#include "../common/opt.h"
#include "testutil.h"

typedef struct {
    int n, flag;
    float temp;
    const char *path;
    unsigned long long seed;
} t_opts;

#define F(x) offsetof(t_opts, x)
static const opt_def defs[] = {
    {"n-predict", 'n', OPT_INT, F(n), 1, 100, "10", "N", "count"},
    {"temp", 0, OPT_FLOAT, F(temp), 0, 2, "0.5", "T", "temperature"},
    {"model", 'm', OPT_STR, F(path), OPT_NOBOUNDS, NULL, "PATH", "model"},
    {"chat", 0, OPT_FLAG, F(flag), OPT_NOBOUNDS, NULL, NULL, "chat"},
    {"seed", 0, OPT_U64, F(seed), OPT_NOBOUNDS, "7", "S", "seed"},
};
#undef F

static void test_defaults_and_parse(void **state)
{
    t_opts o = {0};
    assert_int_equal(opt_defaults(defs, 5, &o), SD_OK);
    assert_int_equal(o.n, 10);
    assert_true(o.temp == 0.5f);
    assert_true(o.seed == 7);
    assert_null(o.path);
    char *argv[] = {"-n",     "42",     "--temp=1.25", "--model",
                    "x.gguf", "--chat", "--seed",      "18446744073709551615"};
    assert_int_equal(opt_parse(defs, 5, &o, 8, argv), SD_OK);
    assert_int_equal(o.n, 42);
    assert_true(o.temp == 1.25f);
    assert_string_equal(o.path, "x.gguf");
    assert_int_equal(o.flag, 1);
    assert_true(o.seed == 18446744073709551615ull);
}

static void test_errors(void **state)
{
    static const struct {
        const char *argv[3];
        int argc;
        sd_err want;
        const char *msg;
    } cases[] = {
        {{"--bogus"}, 1, SD_EINVAL, "--bogus"},
        {{"-n", "0"}, 2, SD_ERANGE, "--n-predict"},
        {{"-n", "101"}, 2, SD_ERANGE, "outside 1..100"},
        {{"-n", "4x"}, 2, SD_EINVAL, "'4x' is not an integer"},
        {{"--temp", "abc"}, 2, SD_EINVAL, "'abc' is not a number"},
        {{"--temp", "nan"}, 2, SD_EINVAL, "--temp"},
        {{"--temp", "3"}, 2, SD_ERANGE, "--temp"},
        {{"--model"}, 1, SD_EINVAL, "needs a value"},
        {{"--chat=1"}, 1, SD_EINVAL, "takes no value"},
        {{"--seed", "-1"}, 2, SD_EINVAL, "--seed"},
        {{"stray"}, 1, SD_EINVAL, "unexpected argument 'stray'"},
        {{"-n", "99999999999"}, 2, SD_ERANGE, "--n-predict"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        t_opts o = {0};
        opt_defaults(defs, 5, &o);
        assert_int_equal(opt_parse(defs, 5, &o, cases[i].argc, (char **)cases[i].argv),
                         cases[i].want);
        if (!strstr(sd_errmsg(), cases[i].msg))
            fail_msg("case %zu: message '%s' lacks '%s'", i, sd_errmsg(), cases[i].msg);
    }
    t_opts o = {0};
    char *help[] = {"--help"};
    assert_int_equal(opt_parse(defs, 5, &o, 1, help), SD_ECANCELED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_parse),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
