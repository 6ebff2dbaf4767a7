/*
 * Unit tests for the cluster config (scheduler/config.c) and placement
 * (scheduler/placement.c): a catalog of malformed configs, each checked for the
 * exact JSON path and message of every error it must produce (and for no other
 * error), and the placements of good configs on a machine described by hand
 * (4 cores, 2 GPUs), so the results do not depend on the machine running the test.
 *
 * Configs are written as JSON with single quotes (turned into double quotes before
 * writing) to conf/c.json in a temporary folder beside a model repository holding
 * m (versions 1 and 2, aliases production=2, staging=1, broken=7), n (version 1, an
 * aliases.json that is refused) and nover (no version); "../repo" in a config resolves against
 * conf/, never against the current directory, which the tests set to "/".
 */
#include <limits.h>
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

#include "config.h"
#include "placement.h"

static char tmp[256];  /* the test's folder (realpath) */
static char repo[300]; /* tmp/repo */
static struct sched_machine m4; /* cores 0-3, GPUs cuda:0 and cuda:1 */

static void write_file(const char *rel, const char *text)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", tmp, rel);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void mkdir_rel(const char *rel)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", tmp, rel);
    assert_int_equal(mkdir(p, 0755), 0);
}

static int setup(void **state)
{
    char t[] = "/tmp/corral-sched-test-XXXXXX", *real;
    if (!mkdtemp(t) || !(real = realpath(t, NULL)) || strlen(real) >= sizeof tmp)
        return -1;
    snprintf(tmp, sizeof tmp, "%s", real);
    free(real);
    snprintf(repo, sizeof repo, "%s/repo", tmp);
    mkdir_rel("repo");
    mkdir_rel("repo/m");
    mkdir_rel("repo/m/1");
    mkdir_rel("repo/m/2");
    mkdir_rel("repo/n");
    mkdir_rel("repo/n/1");
    mkdir_rel("repo/nover");
    mkdir_rel("conf");
    mkdir_rel("conf/sub");
    write_file("repo/m/config.json", "{}");
    write_file("repo/m/1/model.onnx", "x");
    write_file("repo/m/2/model.onnx", "x");
    write_file("repo/n/config.json", "{}");
    write_file("repo/n/1/model.onnx", "x");
    write_file("repo/nover/config.json", "{}");
    write_file("repo/m/aliases.json", "{\"production\": 2, \"staging\": 1, \"broken\": 7}");
    /* Read only where a config names n by an alias. */
    write_file("repo/n/aliases.json", "{\"1\": 1}");
    for (int i = 0; i < 5; i++) {
        char d[64];
        snprintf(d, sizeof d, "repo/r%d", i);
        mkdir_rel(d);
        snprintf(d, sizeof d, "repo/r%d/1", i);
        mkdir_rel(d);
        snprintf(d, sizeof d, "repo/r%d/config.json", i);
        write_file(d, "{}");
        snprintf(d, sizeof d, "repo/r%d/1/model.onnx", i);
        write_file(d, "x");
    }
    write_file("conf/token", "s3cret\n");
    write_file("conf/blank-token", " \n\n");
    char *long_token = malloc(5001);
    if (!long_token)
        return -1;
    memset(long_token, 'a', 5000);
    long_token[5000] = '\0';
    long_token[4096] = '\n'; /* trimming must not hide what follows */
    write_file("conf/long-token", long_token);
    free(long_token);

    sched_machine_init(&m4);
    for (int c = 0; c < 4; c++)
        CPU_SET(c, &m4.cpus);
    m4.n_cpus = 4;
    /* The GPUs come from nvidia-smi -L's own format, MIG lines and all. */
    static char smi[] = "GPU 0: NVIDIA H100 (UUID: GPU-1)\n"
                        "  MIG 1g.10gb Device 0: (UUID: MIG-1)\n"
                        "GPU 1: NVIDIA H100 (UUID: GPU-2)\n";
    FILE *f = fmemopen(smi, strlen(smi), "r");
    if (!f)
        return -1;
    sched_machine_gpus_smi(&m4, f);
    fclose(f);
    /* Nothing below may depend on the current directory. */
    return chdir("/");
}

static int teardown(void **state)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes `json` (single quotes for double) to conf/`rel`, loads and places it. */
static int load_at(const char *rel, const char *json, const struct sched_machine *m,
                   struct sched_config *cfg, struct sched_plan *plan, struct sched_errs *errs)
{
    char *text = strdup(json), path[512];
    assert_non_null(text);
    for (char *p = text; *p; p++)
        if (*p == '\'')
            *p = '"';
    snprintf(path, sizeof path, "conf/%s", rel);
    write_file(path, text);
    free(text);
    snprintf(path, sizeof path, "%s/conf/%s", tmp, rel);
    int rc = sched_config_load(path, cfg, errs);
    memset(plan, 0, sizeof *plan);
    if (m) {
        int prc = sched_place(cfg, m, plan, errs);
        if (!rc)
            rc = prc;
    }
    return rc;
}

static int load(const char *json, const struct sched_machine *m, struct sched_config *cfg,
                struct sched_plan *plan, struct sched_errs *errs)
{
    return load_at("c.json", json, m, cfg, plan, errs);
}

/* The config must be refused with exactly `want` (NULL-terminated), in order. */
static void expect_errors_on(const struct sched_machine *m, const char *json,
                             const char *const *want)
{
    struct sched_config cfg;
    struct sched_plan plan;
    struct sched_errs errs = {0};
    int rc = load(json, m, &cfg, &plan, &errs);
    size_t n = 0;
    while (want[n])
        n++;
    int same = sched_errs_count(&errs) == n && errs.n == n;
    for (size_t i = 0; same && i < n; i++)
        same = strcmp(errs.lines[i], want[i]) == 0;
    if (!same) {
        print_message("config: %s\nwanted %zu errors:\n", json, n);
        for (size_t i = 0; i < n; i++)
            print_message("  %s\n", want[i]);
        print_message("got %zu:\n", sched_errs_count(&errs));
        for (size_t i = 0; i < errs.n; i++)
            print_message("  %s\n", errs.lines[i]);
    }
    assert_true(same);
    assert_int_equal(rc, CORRAL_EINVAL);
    sched_plan_free(&plan);
    sched_config_free(&cfg);
    sched_errs_free(&errs);
}

#define EXPECT(json, ...)                                                                 \
    do {                                                                                  \
        static const char *const want_[] = {__VA_ARGS__, NULL};                           \
        expect_errors_on(&m4, json, want_);                                               \
    } while (0)

/* A valid config: it loads and places without a single error. */
static void expect_ok(const char *json, struct sched_config *cfg, struct sched_plan *plan)
{
    struct sched_errs errs = {0};
    int rc = load(json, &m4, cfg, plan, &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_message("unexpected error: %s\n", errs.lines[i]);
    assert_int_equal(sched_errs_count(&errs), 0);
    assert_int_equal(rc, CORRAL_OK);
    sched_errs_free(&errs);
}

static void assert_cores(const struct sched_replica *r, const char *want)
{
    char got[256];
    sched_cpuset_format(&r->cpus, got, sizeof got);
    assert_string_equal(got, want);
}

/* ---- the catalog of malformed configs ---------------------------------------------- */

static void test_wrong_types(void **state)
{
    EXPECT("{'model_repository': '../repo', 'router': {'threads': '4'}, 'models': []}",
           "router.threads: expected an integer >= 1, got \"4\"");
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1, "
           "'replicas': 'two'}]}",
           "models[0].replicas: expected an integer >= 0, got \"two\"");
    EXPECT("{'model_repository': 5, 'health': [], 'oversubscribe': 'yes', "
           "'models': {'name': 'm'}}",
           "model_repository: expected the path of the model repository directory, got 5",
           "health: expected an object, got []",
           "oversubscribe: expected true or false, got \"yes\"",
           "models: expected a list of at most 256 models {name, version, replicas, devices, "
           "threads}, got {\"name\":\"m\"}");
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1.5, "
           "'replicas': 2.0, 'threads': true}, 7]}",
           "models[0].version: expected an integer >= 1, got 1.5",
           "models[0].replicas: expected an integer >= 0, got 2.0",
           "models[0].threads: expected an integer >= 1, got true",
           "models[1]: expected an object {name, version, replicas, devices, threads}, got 7");
    /* A string is an alias; one of digits alone would read as a number, so is refused. */
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': '2', "
           "'replicas': 1}]}",
           "models[0].version: expected a positive integer or a version alias (1 to 63 letters, "
           "digits, '_', '-' or '.', not all digits), got \"2\"");
}

/* "version": "production" is resolved through the model's aliases.json when loaded. */
static void test_version_alias(void **state)
{
    struct sched_config cfg;
    struct sched_plan plan;
    expect_ok("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 'production', "
              "'replicas': 1}, {'name': 'n', 'version': 1, 'replicas': 1}]}", &cfg, &plan);
    assert_int_equal(cfg.models[0].version, 2);
    assert_string_equal(cfg.models[0].alias, "production");
    assert_string_equal(cfg.models[1].alias, "");
    sched_plan_free(&plan);
    sched_config_free(&cfg);
    expect_ok("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 'staging', "
              "'replicas': 1}]}", &cfg, &plan);
    assert_int_equal(cfg.models[0].version, 1);
    sched_plan_free(&plan);
    sched_config_free(&cfg);

    char w1[1024], w2[1024], w3[1024], w4[1024];
    snprintf(w1, sizeof w1, "models[0].version: no alias 'prod' in %s/m/aliases.json (aliases: "
             "broken, production, staging)", repo);
    snprintf(w2, sizeof w2, "models[1].version: %s/n/aliases.json: alias '1' is all digits, "
             "which would read as a version number (an alias needs a letter, '_', '-' or '.')",
             repo);
    snprintf(w3, sizeof w3, "models[2].version: no alias 'production' in %s/nover/aliases.json "
             "(aliases: none)", repo);
    const char *const want[] = {w1, w2, w3, NULL};
    expect_errors_on(&m4,
                     "{'model_repository': '../repo', 'models': ["
                     "{'name': 'm', 'version': 'prod', 'replicas': 1},"
                     "{'name': 'n', 'version': 'x', 'replicas': 1},"
                     "{'name': 'nover', 'version': 'production', 'replicas': 0}]}",
                     want);
    snprintf(w4, sizeof w4, "models[0].version: alias 'broken' names version 7 of model 'm', "
             "which is not in the repository: %s/m/7/model.onnx does not exist", repo);
    const char *const want2[] = {w4, NULL};
    expect_errors_on(&m4, "{'model_repository': '../repo', 'models': ["
                     "{'name': 'm', 'version': 'broken', 'replicas': 1}]}", want2);
}

static void test_not_an_object_and_not_json(void **state)
{
    char want1[1024], want2[1024];
    snprintf(want1, sizeof want1, "%s/conf/c.json: expected a JSON object {model_repository, "
             "router, admin, health, rollout, models, oversubscribe}, got [1,2]", tmp);
    snprintf(want2, sizeof want2, "%s/conf/c.json: line 1, column 15: unexpected token near "
             "'}'", tmp);
    const char *const w1[] = {want1, NULL}, *const w2[] = {want2, NULL};
    expect_errors_on(&m4, "[1, 2]", w1);
    expect_errors_on(&m4, "{'models': [1,}", w2); /* the 15th character is the '}' */
}

static void test_unknown_keys(void **state)
{
    EXPECT("{'model_repository': '../repo', 'modles': [], 'models': [{'name': 'm', "
           "'version': 1, 'replicas': 1, 'replica': 2}], 'rollout': {'max_surge': 1, "
           "'canary': 10}}",
           "modles: unknown key (expected one of model_repository, router, admin, health, "
           "rollout, models, oversubscribe)",
           "rollout.canary: unknown key (expected one of max_surge, drain_timeout_ms, "
           "soak_ms, canary_percent, ready_timeout_ms)",
           "models[0].replica: unknown key (expected one of name, version, replicas, devices, "
           "threads)");
    /* A key with a newline in it still makes one line. */
    EXPECT("{'model_repository': '../repo', 'models': [], 'admin': {'lis\\nten': 1}}",
           "admin.lis?ten: unknown key (expected one of listen, token_file)");
}

static void test_negative_and_out_of_range(void **state)
{
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 0, "
           "'replicas': -1, 'threads': 0}]}",
           "models[0].version: expected an integer >= 1, got 0",
           "models[0].replicas: expected an integer >= 0, got -1",
           "models[0].threads: expected an integer >= 1, got 0");
    EXPECT("{'model_repository': '../repo', 'models': [], 'health': {'interval_ms': 0, "
           "'timeout_ms': 3600001, 'failure_threshold': -3}, 'rollout': {'max_surge': 0, "
           "'drain_timeout_ms': -1, 'soak_ms': 99999999, 'canary_percent': 101, "
           "'ready_timeout_ms': 0}}",
           "health.interval_ms: expected an integer >= 10, got 0",
           "health.timeout_ms: expected an integer <= 3600000, got 3600001",
           "health.failure_threshold: expected an integer >= 1, got -3",
           "rollout.max_surge: expected an integer >= 1, got 0",
           "rollout.drain_timeout_ms: expected an integer >= 0, got -1",
           "rollout.soak_ms: expected an integer <= 3600000, got 99999999",
           "rollout.canary_percent: expected an integer <= 100, got 101",
           "rollout.ready_timeout_ms: expected an integer >= 1, got 0");
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1, "
           "'replicas': 1025}]}",
           "models[0].replicas: expected an integer <= 1024, got 1025");
}

static void test_missing_keys_and_names(void **state)
{
    EXPECT("{'router': {}}",
           "model_repository: missing (expected the path of the model repository directory)",
           "models: missing (expected a list of {name, version, replicas, devices, threads})");
    EXPECT("{'model_repository': '../repo', 'models': [{'devices': ['cpu']}, "
           "{'name': '../etc', 'version': 1, 'replicas': 1}, "
           "{'name': 'm', 'version': 1, 'replicas': 1}, {'name': 'm', 'version': 2, "
           "'replicas': 1}]}",
           "models[0].name: missing (expected a model name)",
           "models[0].version: missing (expected a positive integer or a version alias)",
           "models[0].replicas: missing (expected an integer >= 0)",
           "models[1].name: expected a model name of 1 to 127 letters, digits, '_', '-' or '.' "
           "(not starting with '.' or '-'), got \"../etc\"",
           "models[3].name: model 'm' is already models[2] (a model is listed once, with the "
           "version that runs)");
}

static void test_missing_model_and_version(void **state)
{
    char w1[1024], w2[1024], w3[1024];
    snprintf(w1, sizeof w1, "models[0].name: no model 'nosuch' in the model repository: "
             "%s/nosuch/config.json does not exist", repo);
    snprintf(w2, sizeof w2, "models[1].version: no version 3 of model 'm': %s/m/3/model.onnx "
             "does not exist", repo);
    snprintf(w3, sizeof w3, "models[2].version: no version 1 of model 'nover': "
             "%s/nover/1/model.onnx does not exist", repo);
    const char *const want[] = {w1, w2, w3, NULL};
    expect_errors_on(&m4,
                     "{'model_repository': '../repo', 'models': ["
                     "{'name': 'nosuch', 'version': 1, 'replicas': 1},"
                     "{'name': 'm', 'version': 3, 'replicas': 1},"
                     "{'name': 'nover', 'version': 1, 'replicas': 0}]}",
                     want);
}

static void test_device_that_does_not_exist(void **state)
{
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1, "
           "'replicas': 1, 'devices': ['cuda:1', 'cuda:2']}]}",
           "models[0].devices[1]: cuda:2 is a device that does not exist (this machine has 2 "
           "GPUs, cuda:0 to cuda:1, per nvidia-smi -L)");
    /* Even when no replica lands on it, and with oversubscribe: it is wrong as written. */
    EXPECT("{'model_repository': '../repo', 'oversubscribe': true, 'models': [{'name': 'm', "
           "'version': 1, 'replicas': 0, 'devices': ['cuda:7', 'cpu:3-4'], 'threads': 2}]}",
           "models[0].devices[0]: cuda:7 is a device that does not exist (this machine has 2 "
           "GPUs, cuda:0 to cuda:1, per nvidia-smi -L)",
           "models[0].devices[1]: cpu:3-4 names cores this process may not use (it may use "
           "cpu:0-3)");
    struct sched_machine none;
    sched_machine_init(&none);
    CPU_SET(0, &none.cpus);
    none.n_cpus = 1;
    sched_machine_gpus_visible(&none, "");
    static const char *const want[] = {
        "models[0].devices[0]: cuda:0 is a device that does not exist (this machine has no "
        "GPU, per CUDA_VISIBLE_DEVICES)", NULL};
    expect_errors_on(&none, "{'model_repository': '../repo', 'models': [{'name': 'm', "
                     "'version': 1, 'replicas': 1, 'devices': ['cuda:0']}]}", want);
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1, "
           "'replicas': 1, 'devices': ['gpu0', 'cpu:2-1', 'cuda:64', 'cpu:01', 3]}]}",
           "models[0].devices[0]: expected \"cpu\", \"cpu:LO-HI\" (LO <= HI <= 1023) or "
           "\"cuda:N\" (N <= 63), got \"gpu0\"",
           "models[0].devices[1]: expected \"cpu\", \"cpu:LO-HI\" (LO <= HI <= 1023) or "
           "\"cuda:N\" (N <= 63), got \"cpu:2-1\"",
           "models[0].devices[2]: expected \"cpu\", \"cpu:LO-HI\" (LO <= HI <= 1023) or "
           "\"cuda:N\" (N <= 63), got \"cuda:64\"",
           "models[0].devices[3]: expected \"cpu\", \"cpu:LO-HI\" (LO <= HI <= 1023) or "
           "\"cuda:N\" (N <= 63), got \"cpu:01\"",
           "models[0].devices[4]: expected \"cpu\", \"cpu:LO-HI\" (LO <= HI <= 1023) or "
           "\"cuda:N\" (N <= 63), got 3");
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1, "
           "'replicas': 1, 'devices': []}]}",
           "models[0].devices: expected a list of 1 to 64 devices (\"cpu\", \"cpu:LO-HI\" or "
           "\"cuda:N\"), got []");
}

static void test_cpu_range_mismatch(void **state)
{
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1, "
           "'replicas': 2, 'threads': 2, 'devices': ['cpu:0-2', 'cpu:3']}]}",
           "models[0].devices[0]: cpu:0-2 has 3 cores but threads is 2 (a fixed core set must "
           "have exactly threads cores)",
           "models[0].devices[1]: cpu:3 has 1 core but threads is 2 (a fixed core set must "
           "have exactly threads cores)");
    /* threads defaults to 1. */
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1, "
           "'replicas': 1, 'devices': ['cpu:0-1']}]}",
           "models[0].devices[0]: cpu:0-1 has 2 cores but threads is 1 (a fixed core set must "
           "have exactly threads cores)");
}

static void test_overlapping_fixed_cores(void **state)
{
    EXPECT("{'model_repository': '../repo', 'models': ["
           "{'name': 'm', 'version': 1, 'replicas': 1, 'threads': 2, 'devices': ['cpu:0-1']},"
           "{'name': 'n', 'version': 1, 'replicas': 1, 'threads': 2, 'devices': ['cpu:1-2']}]}",
           "models[1].devices[0]: cpu:1-2 of replica n#0 overlaps cpu:0-1 of replica m#0 (fixed "
           "core sets must be disjoint; set \"oversubscribe\": true to share)");
    /* Round-robin puts two replicas on one fixed set: reported once, on that entry. */
    EXPECT("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1, "
           "'replicas': 3, 'devices': ['cpu:3']}]}",
           "models[0].devices[0]: cpu:3 of replica m#1 overlaps cpu:3 of replica m#0 (fixed "
           "core sets must be disjoint; set \"oversubscribe\": true to share)");

    struct sched_config cfg;
    struct sched_plan plan;
    expect_ok("{'model_repository': '../repo', 'oversubscribe': true, 'models': ["
              "{'name': 'm', 'version': 1, 'replicas': 1, 'threads': 2, 'devices': ['cpu:0-1']},"
              "{'name': 'n', 'version': 1, 'replicas': 1, 'threads': 2, 'devices': ['cpu:1-2']}]}",
              &cfg, &plan);
    assert_int_equal(plan.n, 2);
    assert_cores(&plan.replicas[0], "cpu:0-1");
    assert_cores(&plan.replicas[1], "cpu:1-2");
    assert_true(plan.replicas[0].shared && plan.replicas[1].shared);
    sched_plan_free(&plan);
    sched_config_free(&cfg);
}

static void test_oversubscription(void **state)
{
    /* 3 replicas x 2 threads = 6 cores on a 4-core machine. */
    const char *cores6 = "{'model_repository': '../repo', %s 'models': [{'name': 'm', "
                         "'version': 1, 'replicas': 3, 'threads': 2}]}";
    char json[512];
    snprintf(json, sizeof json, cores6, "");
    EXPECT(json, "models: the CPU replicas need 6 cores (replicas x threads: m 3 x 2) but this "
           "process may use 4 (cpu:0-3); lower replicas or threads, or set \"oversubscribe\": "
           "true to share cores");
    snprintf(json, sizeof json, cores6, "'oversubscribe': false,");
    EXPECT(json, "models: the CPU replicas need 6 cores (replicas x threads: m 3 x 2) but this "
           "process may use 4 (cpu:0-3); lower replicas or threads, or set \"oversubscribe\": "
           "true to share cores");

    struct sched_config cfg;
    struct sched_plan plan;
    snprintf(json, sizeof json, cores6, "'oversubscribe': true,");
    expect_ok(json, &cfg, &plan);
    assert_int_equal(plan.n, 3);
    assert_int_equal(plan.cpu_threads, 6);
    /* Free cores first, lowest first; the third shares the least used, lowest first. */
    assert_cores(&plan.replicas[0], "cpu:0-1");
    assert_cores(&plan.replicas[1], "cpu:2-3");
    assert_cores(&plan.replicas[2], "cpu:0-1");
    assert_true(plan.replicas[0].shared);
    assert_false(plan.replicas[1].shared);
    assert_true(plan.replicas[2].shared);
    sched_plan_free(&plan);
    sched_config_free(&cfg);

    /* One replica per GPU; a third on two GPUs shares one only when allowed. */
    const char *gpus3 = "{'model_repository': '../repo', %s 'models': [{'name': 'm', "
                        "'version': 1, 'replicas': 3, 'devices': ['cuda:0', 'cuda:1']}]}";
    snprintf(json, sizeof json, gpus3, "");
    EXPECT(json, "models[0].devices[0]: cuda:0 is already given to replica m#0, so replica m#2 "
           "would share it (one replica per GPU; set \"oversubscribe\": true to share)");
    snprintf(json, sizeof json, gpus3, "'oversubscribe': true,");
    expect_ok(json, &cfg, &plan);
    assert_int_equal(plan.n, 3);
    assert_string_equal(plan.replicas[0].cuda_visible, "0");
    assert_string_equal(plan.replicas[1].cuda_visible, "1");
    assert_string_equal(plan.replicas[2].cuda_visible, "0");
    assert_true(plan.replicas[0].shared && plan.replicas[2].shared);
    assert_false(plan.replicas[1].shared);
    assert_int_equal(plan.gpus_used, 2);
    sched_plan_free(&plan);
    sched_config_free(&cfg);

    /* GPU replicas take no cores: 4 CPU threads plus 2 GPU replicas fit. */
    expect_ok("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1, "
              "'replicas': 4, 'threads': 2, 'devices': ['cpu', 'cuda:0', 'cpu', 'cuda:1']}]}",
              &cfg, &plan);
    assert_int_equal(plan.cpu_threads, 4);
    sched_plan_free(&plan);
    sched_config_free(&cfg);
}

static void test_bad_listen(void **state)
{
    EXPECT("{'model_repository': '../repo', 'models': [], 'router': {'listen': 'localhost'}, "
           "'admin': {'listen': '1.2.3.4:70000'}}",
           "router.listen: expected HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:8000, "
           "[::1]:8000), got \"localhost\"",
           "admin.listen: expected HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:8000, "
           "[::1]:8000), got \"1.2.3.4:70000\"");
    EXPECT("{'model_repository': '../repo', 'models': [], 'router': {'listen': '::1:8000'}, "
           "'admin': {'listen': ':8000'}}",
           "router.listen: expected HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:8000, "
           "[::1]:8000), got \"::1:8000\"",
           "admin.listen: expected HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:8000, "
           "[::1]:8000), got \":8000\"");
    EXPECT("{'model_repository': '../repo', 'models': [], 'router': {'listen': 8000}}",
           "router.listen: expected HOST:PORT (e.g. 127.0.0.1:8000), got 8000");
    EXPECT("{'model_repository': '../repo', 'models': [], 'router': {'control_listen': "
           "'127.0.0.1:8000'}}",
           "router.control_listen: 127.0.0.1:8000 takes the same port as router.listen "
           "127.0.0.1:8000");
    EXPECT("{'model_repository': '../repo', 'models': [], 'router': {'control_listen': 'x'}}",
           "router.control_listen: expected HOST:PORT with a port from 0 to 65535 (e.g. "
           "127.0.0.1:8000, [::1]:8000), got \"x\"");
    /* Two listeners on one port: the second could never start. */
    EXPECT("{'model_repository': '../repo', 'models': [], 'router': {'listen': '0.0.0.0:9000', "
           "'rpc_listen': 'tcp://127.0.0.1:9000'}, 'admin': {'listen': '127.0.0.1:9000'}}",
           "admin.listen: 127.0.0.1:9000 takes the same port as router.listen 0.0.0.0:9000",
           "router.rpc_listen: tcp://127.0.0.1:9000 takes the same port as router.listen "
           "0.0.0.0:9000",
           "router.rpc_listen: tcp://127.0.0.1:9000 takes the same port as admin.listen "
           "127.0.0.1:9000");

    struct sched_config cfg;
    struct sched_plan plan;
    expect_ok("{'model_repository': '../repo', 'models': [], 'router': {'listen': "
              "'[::1]:0', 'rpc_listen': 'off', 'threads': 4}, 'admin': {'listen': "
              "'0.0.0.0:9999'}}", &cfg, &plan);
    assert_string_equal(cfg.router.listen.host, "::1");
    assert_int_equal(cfg.router.listen.port, 0);
    assert_true(cfg.router.rpc_off);
    assert_string_equal(cfg.router.rpc_url, "off");
    assert_int_equal(cfg.router.threads, 4);
    assert_string_equal(cfg.admin.listen.host, "0.0.0.0");
    assert_int_equal(cfg.admin.listen.port, 9999);
    assert_string_equal(cfg.router.control.text, "127.0.0.1:8003"); /* the default */
    sched_plan_free(&plan);
    sched_config_free(&cfg);
}

static void test_bad_rpc_listen(void **state)
{
    EXPECT("{'model_repository': '../repo', 'models': [], 'router': {'rpc_listen': "
           "'http://127.0.0.1:8001'}}",
           "router.rpc_listen: expected tcp://HOST:PORT or \"off\" (e.g. tcp://127.0.0.1:8001), "
           "got \"http://127.0.0.1:8001\"");
    EXPECT("{'model_repository': '../repo', 'models': [], 'router': {'rpc_listen': "
           "'tcp://nohost'}}",
           "router.rpc_listen: expected tcp://HOST:PORT or \"off\" (e.g. tcp://127.0.0.1:8001), "
           "got \"tcp://nohost\"");
    EXPECT("{'model_repository': '../repo', 'models': [], 'router': {'rpc_listen': 'on'}}",
           "router.rpc_listen: expected tcp://HOST:PORT or \"off\" (e.g. tcp://127.0.0.1:8001), "
           "got \"on\"");
    EXPECT("{'model_repository': '../repo', 'models': [], 'router': {'rpc_listen': false}}",
           "router.rpc_listen: expected tcp://HOST:PORT or \"off\", got false");
}

static void test_relative_model_repository(void **state)
{
    struct sched_config cfg;
    struct sched_plan plan;
    struct sched_errs errs = {0};
    /* conf/sub/c.json names ../../repo: against its own folder that is tmp/repo; against
     * the current directory ("/") it would not exist. */
    assert_int_equal(load_at("sub/c.json", "{'model_repository': '../../repo', 'models': "
                             "[{'name': 'm', 'version': 2, 'replicas': 1}], 'admin': "
                             "{'token_file': '../token'}}", &m4, &cfg, &plan, &errs),
                     CORRAL_OK);
    assert_int_equal(sched_errs_count(&errs), 0);
    assert_string_equal(cfg.model_repository, repo);
    char want[1024];
    snprintf(want, sizeof want, "%s/conf/sub/../token", tmp);
    assert_string_equal(cfg.admin.token_file, want);
    sched_plan_free(&plan);
    sched_config_free(&cfg);
    sched_errs_free(&errs);

    char w1[1024];
    snprintf(w1, sizeof w1, "model_repository: %s/conf/sub/repo: No such file or directory "
             "(expected a directory; a relative path is resolved against the config file's "
             "folder, %s/conf/sub)", tmp, tmp);
    assert_int_equal(load_at("sub/c.json", "{'model_repository': 'repo', 'models': []}", &m4,
                             &cfg, &plan, &errs), CORRAL_EINVAL);
    assert_int_equal(sched_errs_count(&errs), 1);
    assert_string_equal(errs.lines[0], w1);
    sched_plan_free(&plan);
    sched_config_free(&cfg);
    sched_errs_free(&errs);
}

static void test_token_file(void **state)
{
    char w1[1024], w2[1024], w3[1024];
    snprintf(w1, sizeof w1, "admin.token_file: the token file %s/conf/nope does not exist", tmp);
    snprintf(w3, sizeof w3, "admin.token_file: the token file %s/conf/long-token is over 4096 "
             "bytes", tmp);
    snprintf(w2, sizeof w2, "admin.token_file: the token file %s/conf/blank-token holds no "
             "token (expected one line of text)", tmp);
    const char *const want1[] = {w1, NULL}, *const want2[] = {w2, NULL}, *const want3[] = {
        w3, NULL};
    expect_errors_on(&m4, "{'model_repository': '../repo', 'models': [], 'admin': "
                     "{'token_file': 'nope'}}", want1);
    expect_errors_on(&m4, "{'model_repository': '../repo', 'models': [], 'admin': "
                     "{'token_file': 'blank-token'}}", want2);
    expect_errors_on(&m4, "{'model_repository': '../repo', 'models': [], 'admin': "
                     "{'token_file': 'long-token'}}", want3);
    /* The router's inference token goes through the same checks, named by its own path. */
    char w4[1024];
    snprintf(w4, sizeof w4, "router.token_file: the token file %s/conf/nope does not exist", tmp);
    const char *const want4[] = {w4, NULL};
    expect_errors_on(&m4, "{'model_repository': '../repo', 'models': [], 'router': "
                     "{'token_file': 'nope'}}", want4);
}

static void test_several_errors_at_once(void **state)
{
    char w[1024], wx[1024];
    snprintf(w, sizeof w, "models[1].version: no version 9 of model 'n': %s/n/9/model.onnx "
             "does not exist", repo);
    snprintf(wx, sizeof wx, "models[2].name: no model 'x' in the model repository: "
             "%s/x/config.json does not exist", repo);
    const char *const want[] = {
        "colour: unknown key (expected one of model_repository, router, admin, health, "
        "rollout, models, oversubscribe)",
        "router.listen: expected HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:8000, "
        "[::1]:8000), got \"127.0.0.1\"",
        "health.failure_threshold: expected an integer >= 1, got \"3\"",
        "models[0].replicas: expected an integer >= 0, got \"two\"",
        w,
        "models[2].devices[0]: cpu:0-3 has 4 cores but threads is 1 (a fixed core set must "
        "have exactly threads cores)",
        wx,
        /* Placement still runs for the models that passed, beside the errors above. */
        "models[0].devices[0]: cuda:5 is a device that does not exist (this machine has 2 "
        "GPUs, cuda:0 to cuda:1, per nvidia-smi -L)",
        NULL};
    expect_errors_on(&m4,
                     "{'colour': 'blue', 'model_repository': '../repo', "
                     "'router': {'listen': '127.0.0.1'}, 'health': {'failure_threshold': '3'}, "
                     "'models': [{'name': 'm', 'version': 1, 'replicas': 'two', 'devices': "
                     "['cuda:5']}, {'name': 'n', 'version': 9, 'replicas': 1}, "
                     "{'name': 'x', 'version': 1, 'replicas': 0, 'devices': ['cpu:0-3']}]}",
                     want);
}

static void test_error_lines_are_bounded(void **state)
{
    /* 150 unknown keys: 100 lines kept, all 150 counted. */
    char *json = malloc(8192);
    size_t off = (size_t)snprintf(json, 8192, "{'model_repository': '../repo', 'models': []");
    for (int i = 0; i < 150; i++)
        off += (size_t)snprintf(json + off, 8192 - off, ", 'k%d': 1", i);
    snprintf(json + off, 8192 - off, "}");
    struct sched_config cfg;
    struct sched_plan plan;
    struct sched_errs errs = {0};
    assert_int_equal(load(json, &m4, &cfg, &plan, &errs), CORRAL_EINVAL);
    assert_int_equal(errs.n, SCHED_ERRS_MAX);
    assert_int_equal(sched_errs_count(&errs), 150);
    assert_string_equal(errs.lines[99], "k99: unknown key (expected one of model_repository, "
                        "router, admin, health, rollout, models, oversubscribe)");
    free(json);
    sched_plan_free(&plan);
    sched_config_free(&cfg);
    sched_errs_free(&errs);
}

static void test_large_configs(void **state)
{
    char json[2048];
    size_t off = (size_t)snprintf(json, sizeof json, "{'model_repository': '../repo', "
                                  "'oversubscribe': true, 'models': [");
    for (int i = 0; i < 5; i++)
        off += (size_t)snprintf(json + off, sizeof json - off, "%s{'name': 'r%d', 'version': 1, "
                                "'replicas': 1000}", i ? "," : "", i);
    snprintf(json + off, sizeof json - off, "]}");
    EXPECT(json, "models: 5000 replicas in all; at most 4096");

    /* The most a config may ask for, oversubscribed on a 1024-core machine: placed (and
     * quickly; the test's timeout is the bound). */
    struct sched_machine big;
    struct sched_config cfg;
    struct sched_plan plan;
    struct sched_errs errs = {0};
    sched_machine_init(&big);
    for (int c = 0; c < CPU_SETSIZE; c++)
        CPU_SET(c, &big.cpus);
    big.n_cpus = CPU_SETSIZE;
    off = (size_t)snprintf(json, sizeof json, "{'model_repository': '../repo', "
                           "'oversubscribe': true, 'models': [");
    for (int i = 0; i < 4; i++)
        off += (size_t)snprintf(json + off, sizeof json - off, "%s{'name': 'r%d', 'version': 1, "
                                "'replicas': 1024, 'threads': 1024}", i ? "," : "", i);
    snprintf(json + off, sizeof json - off, "]}");
    assert_int_equal(load(json, &big, &cfg, &plan, &errs), CORRAL_OK);
    assert_int_equal(plan.n, 4096);
    assert_int_equal(plan.cpu_threads, 4096 * 1024);
    assert_int_equal(plan.replicas[4095].n_cpus, 1024);
    sched_plan_free(&plan);
    sched_config_free(&cfg);
    sched_errs_free(&errs);
}

/* ---- good configs ------------------------------------------------------------------- */

static void test_defaults(void **state)
{
    struct sched_config cfg;
    struct sched_plan plan;
    expect_ok("{'model_repository': '../repo', 'models': [{'name': 'm', 'version': 1, "
              "'replicas': 2}]}", &cfg, &plan);
    /* The defaults the issue and docs/operations.md name. */
    assert_string_equal(cfg.router.listen.text, "127.0.0.1:8000");
    assert_string_equal(cfg.router.rpc_url, "tcp://127.0.0.1:8001");
    assert_int_equal(cfg.router.threads, 1);
    assert_string_equal(cfg.admin.listen.text, "127.0.0.1:8002");
    assert_null(cfg.admin.token_file);
    assert_int_equal(cfg.health.interval_ms, 500);
    assert_int_equal(cfg.health.timeout_ms, 500);
    assert_int_equal(cfg.health.failure_threshold, 3);
    assert_int_equal(cfg.rollout.max_surge, 1);
    assert_int_equal(cfg.rollout.drain_timeout_ms, 30000);
    assert_int_equal(cfg.rollout.soak_ms, 2000);
    assert_int_equal(cfg.rollout.canary_percent, 0);
    assert_int_equal(cfg.rollout.ready_timeout_ms, 300000);
    assert_false(cfg.oversubscribe);
    assert_int_equal(cfg.n_models, 1);
    assert_int_equal(cfg.models[0].threads, 1);
    assert_int_equal(cfg.models[0].n_devices, 1);
    assert_int_equal(cfg.models[0].devices[0].kind, SCHED_DEV_CPU);
    assert_int_equal(plan.n, 2);
    assert_cores(&plan.replicas[0], "cpu:0");
    assert_cores(&plan.replicas[1], "cpu:1");
    sched_plan_free(&plan);
    sched_config_free(&cfg);
}

static void test_placement_round_robin(void **state)
{
    struct sched_config cfg;
    struct sched_plan plan;
    /* The fixed set is reserved before any "cpu" replica picks, even one listed first. */
    expect_ok("{'model_repository': '../repo', 'models': ["
              "{'name': 'n', 'version': 1, 'replicas': 1, 'threads': 2},"
              "{'name': 'm', 'version': 2, 'replicas': 3, 'threads': 2, "
              "'devices': ['cuda:1', 'cpu:0-1', 'cuda:0']}]}", &cfg, &plan);
    assert_int_equal(plan.n, 4);
    assert_int_equal(plan.replicas[0].model, 0);
    assert_cores(&plan.replicas[0], "cpu:2-3");
    assert_int_equal(plan.replicas[1].model, 1);
    assert_int_equal(plan.replicas[1].index, 0);
    assert_int_equal(plan.replicas[1].device, 0);
    assert_string_equal(plan.replicas[1].cuda_visible, "1");
    assert_int_equal(plan.replicas[1].n_cpus, 0);
    assert_int_equal(plan.replicas[2].device, 1);
    assert_cores(&plan.replicas[2], "cpu:0-1");
    assert_int_equal(plan.replicas[3].device, 2);
    assert_string_equal(plan.replicas[3].cuda_visible, "0");
    for (size_t i = 0; i < plan.n; i++)
        assert_false(plan.replicas[i].shared);
    assert_int_equal(plan.cpu_threads, 4);
    assert_int_equal(plan.cpu_cores, 4);
    assert_int_equal(plan.gpus_used, 2);
    sched_plan_free(&plan);
    sched_config_free(&cfg);

    /* Cores this process may not use are never picked: a machine of cores 1, 3 and 6. */
    struct sched_machine odd;
    struct sched_errs errs = {0};
    sched_machine_init(&odd);
    CPU_SET(1, &odd.cpus);
    CPU_SET(3, &odd.cpus);
    CPU_SET(6, &odd.cpus);
    odd.n_cpus = 3;
    assert_int_equal(load("{'model_repository': '../repo', 'models': [{'name': 'm', "
                          "'version': 1, 'replicas': 2, 'devices': ['cpu:6', 'cpu'], "
                          "'threads': 1}, {'name': 'n', 'version': 1, 'replicas': 1}]}",
                          &odd, &cfg, &plan, &errs), CORRAL_OK);
    assert_cores(&plan.replicas[0], "cpu:6");
    assert_cores(&plan.replicas[1], "cpu:1");
    assert_cores(&plan.replicas[2], "cpu:3");
    sched_plan_free(&plan);
    sched_config_free(&cfg);
    sched_errs_free(&errs);
}

static void test_machine_gpus(void **state)
{
    struct sched_machine m;
    sched_machine_init(&m);
    /* CUDA reads up to the first entry it cannot use, as here. */
    sched_machine_gpus_visible(&m, "GPU-8a1f-22, 3,x,1");
    assert_int_equal(m.n_gpus, 2);
    assert_string_equal(m.gpus[0], "GPU-8a1f-22");
    assert_string_equal(m.gpus[1], "3");
    sched_machine_gpus_visible(&m, "-1");
    assert_int_equal(m.n_gpus, 0);
    sched_machine_gpus_visible(&m, "");
    assert_int_equal(m.n_gpus, 0);
    assert_string_equal(m.gpu_source, "CUDA_VISIBLE_DEVICES");

    /* A line longer than the reader's buffer counts once, and only at its start. */
    char text[2048];
    memset(text, 'a', sizeof text);
    memcpy(text, "GPU 0: ", 7);
    memcpy(text + 511, "GPU 9: ", 7); /* where the reader's second piece of the line begins */
    memcpy(text + 600, "\nGPU 1: x\nno GPU here\n", 22);
    text[622] = '\0';
    FILE *f = fmemopen(text, strlen(text), "r");
    assert_non_null(f);
    sched_machine_gpus_smi(&m, f);
    fclose(f);
    assert_int_equal(m.n_gpus, 2);
    assert_string_equal(m.gpus[1], "1");
    assert_string_equal(m.gpu_source, "nvidia-smi -L");
}

static void test_cpuset_format(void **state)
{
    cpu_set_t s;
    char buf[64];
    CPU_ZERO(&s);
    int cores[] = {0, 1, 2, 5, 7, 8, 1023};
    for (size_t i = 0; i < sizeof cores / sizeof cores[0]; i++)
        CPU_SET(cores[i], &s);
    sched_cpuset_format(&s, buf, sizeof buf);
    assert_string_equal(buf, "cpu:0-2,5,7-8,1023");
    /* Bounded: a buffer too short is cut, never overrun. */
    sched_cpuset_format(&s, buf, 8);
    assert_int_equal(strlen(buf), 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_not_an_object_and_not_json),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_negative_and_out_of_range),
        cmocka_unit_test(test_missing_keys_and_names),
        cmocka_unit_test(test_missing_model_and_version),
        cmocka_unit_test(test_version_alias),
        cmocka_unit_test(test_device_that_does_not_exist),
        cmocka_unit_test(test_cpu_range_mismatch),
        cmocka_unit_test(test_overlapping_fixed_cores),
        cmocka_unit_test(test_oversubscription),
        cmocka_unit_test(test_bad_listen),
        cmocka_unit_test(test_bad_rpc_listen),
        cmocka_unit_test(test_relative_model_repository),
        cmocka_unit_test(test_token_file),
        cmocka_unit_test(test_several_errors_at_once),
        cmocka_unit_test(test_error_lines_are_bounded),
        cmocka_unit_test(test_large_configs),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_placement_round_robin),
        cmocka_unit_test(test_machine_gpus),
        cmocka_unit_test(test_cpuset_format),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
