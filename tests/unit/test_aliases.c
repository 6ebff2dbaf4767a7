/* Unit tests for version aliases: aliases.json parsed, refused, written and read by the replica. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "aliases.h"
#include "model_repo.h"

static char dir[256];

static void write_file(const char *rel, const char *text, size_t len)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
}

static void mkdirs(const char *rel)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    mkdir(p, 0755);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/corral-aliases-test-%d", (int)getpid());
    mkdir(dir, 0755);
    mkdirs("m");
    mkdirs("m/1");
    mkdirs("m/2");
    write_file("m/1/model.onnx", "x", 1);
    write_file("m/2/model.onnx", "x", 1);
    static const char cfg[] =
        "{\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[-1,4]}],"
        "\"outputs\":[{\"name\":\"y\",\"datatype\":\"FP32\",\"shape\":[-1,2]}]}";
    write_file("m/config.json", cfg, sizeof cfg - 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Parses `text`; on failure the message must hold `want`. */
static int parse(const char *text, size_t len, struct model_aliases *a, const char *want)
{
    struct cerr e = {0};
    int rc = aliases_parse(text, len, "m/aliases.json", a, &e);
    if (want) {
        if (rc == 0 || !strstr(e.msg, want))
            fail_msg("expected an error holding \"%s\", got rc %d \"%s\"", want, rc, e.msg);
        assert_int_equal(a->n, 0);
    } else if (rc) {
        fail_msg("unexpected error: %s", e.msg);
    }
    return rc;
}
#define PARSE(s, a, want) parse((s), sizeof(s) - 1, (a), (want))

static void test_parse_good(void **state)
{
    (void)state;
    struct model_aliases a;
    PARSE("{\"staging\": 3, \"production\": 2, \"v1.rc-2_b\": 999999999}", &a, NULL);
    assert_int_equal(a.n, 3);
    /* Sorted by name. */
    assert_string_equal(a.items[0].name, "production");
    assert_int_equal(a.items[0].version, 2);
    assert_string_equal(a.items[1].name, "staging");
    assert_int_equal(aliases_find(&a, "v1.rc-2_b")->version, 999999999);
    assert_null(aliases_find(&a, "prod"));
    PARSE("{}", &a, NULL);
    assert_int_equal(a.n, 0);
    char names[64];
    aliases_names(&a, names, sizeof names);
    assert_string_equal(names, "none");
}

static void test_parse_hostile(void **state)
{
    (void)state;
    struct model_aliases a;
    PARSE("[\"production\", 2]", &a, "m/aliases.json: expected an object mapping alias names "
                                     "to versions, e.g. {\"production\": 2}, got a list");
    PARSE("2", &a, "got an integer");
    PARSE("", &a, "m/aliases.json: invalid JSON");
    PARSE("{\"production\": 2", &a, "m/aliases.json: invalid JSON");
    PARSE("{\"42\": 2}", &a, "m/aliases.json: alias '42' is all digits");
    PARSE("{\"007\": 2}", &a, "alias '007' is all digits");
    PARSE("{\"\": 2}", &a, "alias '' is not a valid name");
    PARSE("{\".hidden\": 2}", &a, "alias '.hidden' is not a valid name");
    PARSE("{\"a/b\": 2}", &a, "alias 'a/b' is not a valid name");
    PARSE("{\"prod uction\": 2}", &a, "not a valid name");
    PARSE("{\"production\": -2}", &a, "m/aliases.json: alias 'production' must name a version "
                                      "(an integer from 1 to 999999999), got an integer out of range");
    PARSE("{\"production\": 0}", &a, "alias 'production' must name a version");
    PARSE("{\"production\": 1000000000}", &a, "got an integer out of range");
    PARSE("{\"production\": 2.5}", &a, "got a fractional number");
    PARSE("{\"production\": 2.0}", &a, "got a fractional number");
    PARSE("{\"production\": \"2\"}", &a, "got a string");
    PARSE("{\"production\": null}", &a, "got null");
    PARSE("{\"production\": 99999999999999999999999}", &a, "invalid JSON");
    PARSE("{\"production\": 2, \"production\": 3}", &a, "duplicate");
    PARSE("{\"a\\u0000b\": 2}", &a, "invalid JSON");
    PARSE("{\"st\xc3\x28ging\": 2}", &a, "m/aliases.json: not valid UTF-8");
    PARSE("{\"staging\": 2}\xff", &a, "not valid UTF-8");
    /* A name one byte too long. */
    char longname[ALIAS_NAME_MAX + 32];
    memset(longname, 'a', ALIAS_NAME_MAX);
    longname[ALIAS_NAME_MAX] = '\0';
    char text[ALIAS_NAME_MAX + 64];
    snprintf(text, sizeof text, "{\"%s\": 1}", longname);
    parse(text, strlen(text), &a, "is not a valid name");
    longname[ALIAS_NAME_MAX - 1] = '\0';
    snprintf(text, sizeof text, "{\"%s\": 1}", longname);
    parse(text, strlen(text), &a, NULL);
    /* Too many aliases. */
    char many[ALIASES_MAX * 16 + 64];
    size_t off = (size_t)snprintf(many, sizeof many, "{");
    for (int i = 0; i <= ALIASES_MAX; i++)
        off += (size_t)snprintf(many + off, sizeof many - off, "%s\"a%d\": 1", i ? "," : "", i);
    snprintf(many + off, sizeof many - off, "}");
    parse(many, strlen(many), &a, "65 aliases, more than 64");
}

/* A file over the limit is refused before it is parsed, whatever it holds. */
static void test_huge_file(void **state)
{
    (void)state;
    size_t n = ALIASES_FILE_MAX + 100;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, ' ', n);
    memcpy(big, "{\"production\": 2}", 17);
    write_file("m/aliases.json", big, n);
    char mdir[300];
    snprintf(mdir, sizeof mdir, "%s/m", dir);
    struct model_aliases a;
    struct cerr e = {0};
    assert_int_equal(aliases_load(mdir, &a, &e), CORRAL_ETOOLARGE);
    assert_non_null(strstr(e.msg, "/m/aliases.json: larger than the 65536 bytes"));
    assert_int_equal(aliases_parse(big, n, "x", &a, &e), CORRAL_ETOOLARGE);
    /* Exactly at the limit is read. */
    write_file("m/aliases.json", big, ALIASES_FILE_MAX);
    assert_int_equal(aliases_load(mdir, &a, &e), 0);
    assert_int_equal(a.n, 1);
    free(big);
    unlink(strcat(mdir, "/aliases.json"));
}

static void test_set_remove(void **state)
{
    (void)state;
    struct model_aliases a = {0};
    struct cerr e = {0};
    assert_int_equal(aliases_set(&a, "staging", 3, &e), 0);
    assert_int_equal(aliases_set(&a, "production", 2, &e), 0);
    assert_int_equal(aliases_set(&a, "production", 1, &e), 0);
    assert_int_equal(a.n, 2);
    assert_int_equal(aliases_find(&a, "production")->version, 1);
    assert_int_equal(aliases_set(&a, "12", 1, &e), CORRAL_EINVAL);
    assert_string_equal(e.msg, "alias '12' is all digits, which would read as a version number "
                               "(an alias needs a letter, '_', '-' or '.')");
    assert_int_equal(aliases_set(&a, "x", 0, &e), CORRAL_EINVAL);
    assert_int_equal(aliases_remove(&a, "prod", &e), CORRAL_ENOTFOUND);
    assert_string_equal(e.msg, "no alias 'prod' (aliases: production, staging)");
    assert_int_equal(aliases_remove(&a, "production", &e), 0);
    assert_int_equal(a.n, 1);
    assert_string_equal(a.items[0].name, "staging");
}

/* The file written is the whole new content, and nothing is left beside it. */
static void test_save_atomic(void **state)
{
    (void)state;
    char mdir[300], path[400];
    snprintf(mdir, sizeof mdir, "%s/m", dir);
    snprintf(path, sizeof path, "%s/aliases.json", mdir);
    write_file("m/aliases.json", "{\"old\": 1}", 10);
    struct model_aliases a = {0}, b;
    struct cerr e = {0};
    assert_int_equal(aliases_set(&a, "staging", 2, &e), 0);
    assert_int_equal(aliases_set(&a, "production", 1, &e), 0);
    assert_int_equal(aliases_save(mdir, &a, &e), 0);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char buf[256];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    assert_string_equal(buf, "{\n  \"production\": 1,\n  \"staging\": 2\n}\n");
    assert_int_equal(aliases_load(mdir, &b, &e), 0);
    assert_int_equal(b.n, 2);
    DIR *d = opendir(mdir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, "tmp"))
            fail_msg("temporary file %s left behind", de->d_name);
    closedir(d);
    /* A directory that cannot be written leaves the old file as it was. */
    assert_int_not_equal(aliases_save("/nonexistent-corral-dir", &a, &e), 0);
    assert_non_null(strstr(e.msg, "cannot create /nonexistent-corral-dir/.aliases.json.tmp."));
    unlink(path);
}

/* The replica keeps the aliases of the version it loads, and only those. */
static void test_replica_reads_aliases(void **state)
{
    (void)state;
    static const char text[] = "{\"production\": 2, \"staging\": 1, \"canary\": 2}";
    write_file("m/aliases.json", text, sizeof text - 1);
    struct model_config cfg;
    struct cerr e = {0};
    assert_int_equal(model_repo_load(dir, "m", 2, &cfg, &e), 0);
    assert_int_equal(cfg.n_aliases, 2);
    assert_string_equal(cfg.aliases[0], "canary");
    assert_string_equal(cfg.aliases[1], "production");
    assert_true(model_version_matches(&cfg, ""));
    assert_true(model_version_matches(&cfg, "2"));
    assert_true(model_version_matches(&cfg, "production"));
    assert_false(model_version_matches(&cfg, "staging"));
    assert_false(model_version_matches(&cfg, "1"));
    model_config_free(&cfg);
    assert_int_equal(model_repo_load(dir, "m", 0, &cfg, &e), 0);
    assert_int_equal(cfg.version, 2);
    assert_int_equal(cfg.n_aliases, 2);
    model_config_free(&cfg);
    /* A broken file stops the replica with the file and key named. */
    write_file("m/aliases.json", "{\"production\": \"two\"}", 21);
    assert_int_not_equal(model_repo_load(dir, "m", 1, &cfg, &e), 0);
    assert_non_null(strstr(e.msg, "/m/aliases.json: alias 'production' must name a version"));
    char p[400];
    snprintf(p, sizeof p, "%s/m/aliases.json", dir);
    unlink(p);
    /* No file: no aliases. */
    assert_int_equal(model_repo_load(dir, "m", 1, &cfg, &e), 0);
    assert_int_equal(cfg.n_aliases, 0);
    assert_false(model_version_matches(&cfg, "production"));
    model_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_hostile),
        cmocka_unit_test(test_huge_file),
        cmocka_unit_test(test_set_remove),
        cmocka_unit_test(test_save_atomic),
        cmocka_unit_test(test_replica_reads_aliases),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
