/* URL routing of the router's OIP endpoints. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "http.h"
#include "oip.h"

static void expect_route(const char *path, enum oip_route_kind kind, const char *model,
                         const char *version)
{
    struct oip_route rt;
    oip_route_parse(path, &rt);
    if (rt.kind != kind)
        fail_msg("%s: kind %d, expected %d", path, rt.kind, kind);
    assert_string_equal(rt.model, model);
    assert_string_equal(rt.version, version);
}

static void test_routes(void **state)
{
    expect_route("/v2", OIP_SERVER_META, "", "");
    expect_route("/v2/health/live", OIP_HEALTH_LIVE, "", "");
    expect_route("/v2/health/ready", OIP_HEALTH_READY, "", "");
    expect_route("/v2/models/digits", OIP_MODEL_META, "digits", "");
    expect_route("/v2/models/digits/ready", OIP_MODEL_READY, "digits", "");
    expect_route("/v2/models/digits/infer", OIP_MODEL_INFER, "digits", "");
    expect_route("/v2/models/digits/versions/3", OIP_MODEL_META, "digits", "3");
    expect_route("/v2/models/digits/versions/3/ready", OIP_MODEL_READY, "digits", "3");
    expect_route("/v2/models/digits/versions/3/infer", OIP_MODEL_INFER, "digits", "3");
    expect_route("/v2/models/digits/stats", OIP_MODEL_STATS, "digits", "");
    expect_route("/v2/models/digits/versions/2/stats", OIP_MODEL_STATS, "digits", "2");
    expect_route("/v2/models/stats", OIP_ALL_STATS, "", "");
    expect_route("/metrics", OIP_METRICS, "", "");
    expect_route("/v2/corral/replicas", OIP_REPLICAS, "", "");
    expect_route("/v2/models/digits/config", OIP_MODEL_CONFIG, "digits", "");
    expect_route("/v2/models/digits/versions/2/config", OIP_MODEL_CONFIG, "digits", "2");
    expect_route("/v2/models/config", OIP_MODEL_META, "config", "");
    expect_route("/v2/models/config/config", OIP_MODEL_CONFIG, "config", "");
    expect_route("/v2/repository/index", OIP_REPO_INDEX, "", "");
    expect_route("/v2/repository/models/digits/load", OIP_REPO_CONTROL, "digits", "");
    expect_route("/v2/repository/models/digits/unload", OIP_REPO_CONTROL, "digits", "");
    expect_route("/v1/models/digits", OIP_V1_MODEL, "digits", "");
    expect_route("/v1/models/digits:predict", OIP_V1_PREDICT, "digits", "");
    expect_route("/v1/models/a:b:predict", OIP_V1_PREDICT, "a:b", "");
    /* A model may be called "versions" or "ready"; position decides. */
    expect_route("/v2/models/ready", OIP_MODEL_META, "ready", "");
    expect_route("/v2/models/versions/infer", OIP_MODEL_INFER, "versions", "");

    const char *none[] = {"/", "", "/v1", "/v2/", "/v2/health", "/v2/health/dead",
                          "/v2/health/live/x", "/v2/models", "/v2/models/", "/v2/models//infer",
                          "/v2/models/m/infer/", "/v2/models/m/versions", "/v2/models/m/versions/",
                          "/v2/models/m/versions/1/infer/x", "/v2/models/m/stats/x",
                          "/v2/models/m/predict", "v2/health/live", "/V2/health/live",
                          "/v1/models/:predict", "/v1/models/m:explain", "/v1/models",
                          "/metrics/x", "/v2/corral", "/v2/corral/x", "/v2/models/m/config/x",
                          "/v2/models/m/versions/1/config/x", "/v2/repository",
                          "/v2/repository/index/x", "/v2/repository/models/m",
                          "/v2/repository/models/m/reload", "/v2/repository/models/load",
                          "/v2/repository/models//load"};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
        expect_route(none[i], OIP_NOT_FOUND, "", "");

    char longname[400];
    memset(longname, 'a', sizeof longname);
    memcpy(longname, "/v2/models/", 11);
    longname[sizeof longname - 1] = '\0';
    expect_route(longname, OIP_NOT_FOUND, "", "");
}

static void test_methods(void **state)
{
    struct oip_route rt;
    oip_route_parse("/v2/health/live", &rt);
    assert_true(oip_route_allows(&rt, "GET"));
    assert_true(oip_route_allows(&rt, "HEAD"));
    assert_false(oip_route_allows(&rt, "POST"));
    assert_false(oip_route_allows(&rt, "GE"));
    oip_route_parse("/v2/models/m/infer", &rt);
    assert_true(oip_route_allows(&rt, "POST"));
    assert_false(oip_route_allows(&rt, "GET"));
    assert_string_equal(rt.allow, "POST");
    oip_route_parse("/v2/models/m/config", &rt);
    assert_true(oip_route_allows(&rt, "GET"));
    assert_false(oip_route_allows(&rt, "POST"));
    /* Triton's repository index is a POST (its body may filter on readiness). */
    oip_route_parse("/v2/repository/index", &rt);
    assert_true(oip_route_allows(&rt, "POST"));
    assert_false(oip_route_allows(&rt, "GET"));
    oip_route_parse("/v2/repository/models/m/load", &rt);
    assert_true(oip_route_allows(&rt, "POST"));
    assert_false(oip_route_allows(&rt, "GET"));
    oip_route_parse("/nope", &rt);
    assert_false(oip_route_allows(&rt, "GET"));
}

static void test_split_target(void **state)
{
    char path[64];
    const char *q = NULL;
    assert_int_equal(http_split_target("/v2/models/a%20b/infer?x=1", path, sizeof path, &q), 0);
    assert_string_equal(path, "/v2/models/a b/infer");
    assert_string_equal(q, "x=1");
    assert_int_equal(http_split_target("http://host:8000/v2?y", path, sizeof path, &q), 0);
    assert_string_equal(path, "/v2");
    assert_string_equal(q, "y");
    assert_int_equal(http_split_target("http://host:8000", path, sizeof path, &q), 0);
    assert_string_equal(path, "/");
    assert_int_equal(http_split_target("/a#frag", path, sizeof path, &q), 0);
    assert_string_equal(path, "/a");
    assert_string_equal(q, "");
    assert_int_equal(http_split_target("*", path, sizeof path, &q), -1);
    assert_int_equal(http_split_target("/a%2", path, sizeof path, &q), -1);
    assert_int_equal(http_split_target("/a%zz", path, sizeof path, &q), -1);
    assert_int_equal(http_split_target("/a%00b", path, sizeof path, &q), -1);
    assert_int_equal(http_split_target("/0123456789", path, 8, &q), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_split_target),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
