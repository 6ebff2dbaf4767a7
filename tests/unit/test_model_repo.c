/* Unit tests for reading model repositories: config.json validation and version choice. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "model_repo.h"

static char repo[256];

static void write_file(const char *rel, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", repo, rel);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void mkdirs(const char *rel)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", repo, rel);
    mkdir(p, 0755);
}

static const char *good_cfg =
    "{\"name\":\"m\",\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[-1,4]}],"
    "\"outputs\":[{\"name\":\"y\",\"datatype\":\"FP32\",\"shape\":[-1,2]}],"
    "\"labels\":\"labels.txt\",\"parity\":{\"atol\":0.001}}";

static int setup(void **state)
{
    snprintf(repo, sizeof repo, "/tmp/corral-repo-test-%d", (int)getpid());
    mkdir(repo, 0755);
    mkdirs("m");
    mkdirs("m/1");
    mkdirs("m/2");
    mkdirs("m/10");
    mkdirs("m/010");
    mkdirs("m/3");
    write_file("m/1/model.onnx", "x");
    write_file("m/2/model.onnx", "x");
    write_file("m/3/model.onnx", "x");
    write_file("m/010/model.onnx", "x");
    /* m/10 has no model.onnx and must not be chosen. */
    write_file("m/labels.txt", "cat\ndog\r\n");
    write_file("m/config.json", good_cfg);
    return 0;
}

static int teardown(void **state)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", repo);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_highest_version_and_fields(void **state)
{
    struct model_config c;
    struct cerr e = {0};
    assert_int_equal(model_repo_load(repo, "m", 0, &c, &e), CORRAL_OK);
    assert_int_equal(c.version, 3);
    assert_string_equal(c.version_str, "3");
    assert_int_equal(c.n_inputs, 1);
    assert_string_equal(c.inputs[0].name, "x");
    assert_int_equal(c.inputs[0].dtype, DT_FP32);
    assert_int_equal(c.inputs[0].dims[0], -1);
    assert_int_equal(c.inputs[0].dims[1], 4);
    assert_int_equal(c.n_labels, 2);
    assert_string_equal(c.labels[1], "dog");
    assert_true(c.parity_atol == 0.001);
    assert_non_null(strstr(c.model_path, "m/3/model.onnx"));
    model_config_free(&c);
    assert_int_equal(model_repo_load(repo, "m", 2, &c, &e), CORRAL_OK);
    assert_int_equal(c.version, 2);
    model_config_free(&c);
}

static void test_missing_things(void **state)
{
    struct model_config c;
    struct cerr e = {0};
    assert_int_equal(model_repo_load(repo, "m", 7, &c, &e), CORRAL_ENOTFOUND);
    assert_non_null(strstr(e.msg, "version 7"));
    assert_int_equal(model_repo_load(repo, "nosuch", 0, &c, &e), CORRAL_ENOTFOUND);
    assert_int_equal(model_repo_load(repo, "../m", 0, &c, &e), CORRAL_EINVAL);
}

static void expect_bad(const char *cfg, const char *word)
{
    struct model_config c;
    struct cerr e = {0};
    write_file("m/config.json", cfg);
    int rc = model_repo_load(repo, "m", 0, &c, &e);
    assert_int_not_equal(rc, CORRAL_OK);
    if (!strstr(e.msg, word))
        fail_msg("message '%s' lacks '%s'", e.msg, word);
    write_file("m/config.json", good_cfg);
}

static void test_bad_configs(void **state)
{
    expect_bad("{", "config.json");
    expect_bad("[]", "object");
    expect_bad("{\"inputs\":[]}", "inputs");
    expect_bad("{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP99\",\"shape\":[1]}],"
               "\"outputs\":[{\"name\":\"y\",\"datatype\":\"FP32\",\"shape\":[1]}]}",
               "datatype");
    expect_bad("{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[1,-2]}],"
               "\"outputs\":[{\"name\":\"y\",\"datatype\":\"FP32\",\"shape\":[1]}]}",
               "shape[1]");
    expect_bad("{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[1,1,1,1,1,1,1,1,1]}],"
               "\"outputs\":[{\"name\":\"y\",\"datatype\":\"FP32\",\"shape\":[1]}]}",
               "at most");
    expect_bad("{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[1]}],"
               "\"outputs\":[{\"name\":\"y\",\"datatype\":\"FP32\",\"shape\":[1]}],"
               "\"labels\":\"../../etc/passwd\"}",
               "labels");
    expect_bad("{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[1]}],"
               "\"outputs\":[{\"name\":\"y\",\"datatype\":\"FP32\",\"shape\":[1]}],"
               "\"parity\":{\"atol\":-1}}",
               "parity");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_highest_version_and_fields),
        cmocka_unit_test(test_missing_things),
        cmocka_unit_test(test_bad_configs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
